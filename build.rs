//! With the `cuda` feature, compiles `src/ops/cuda/ops.cu` to PTX with nvcc
//! (loaded at run time by `ops::cuda`). Without it, does nothing.
//!
//! Env: `NVCC` (default `$CUDA_HOME/bin/nvcc` or `nvcc`), `CUDA_COMPUTE_CAP`
//! (default 80; the driver JIT-compiles the PTX for newer GPUs).

use std::{env, path::PathBuf, process::Command};

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CARGO_FEATURE_CUDA");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let src = "src/ops/cuda/ops.cu";
    println!("cargo::rerun-if-changed={src}");
    println!("cargo::rerun-if-env-changed=NVCC");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let nvcc = env::var("NVCC").ok().or_else(|| env::var("CUDA_HOME").ok().map(|h| format!("{h}/bin/nvcc"))).unwrap_or_else(|| "nvcc".into());
    let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into()).replace('.', "");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("tuneserve_ops.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "--fmad=false", "-std=c++14"])
        .arg(format!("-arch=compute_{cap}"))
        .arg("-o")
        .arg(&out)
        .arg(src)
        .status()
        .unwrap_or_else(|e| panic!("cuda feature: cannot run {nvcc}: {e} (install the CUDA toolkit or set NVCC)"));
    assert!(status.success(), "nvcc failed on {src}");
}
