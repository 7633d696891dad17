//! Xception (full size, seeded random weights) throughput on one device:
//! a stage-2 training step (everything trains, BatchNorm frozen, Adam, BCE;
//! the same step as `train::recipe`) and inference, in images per second.
//!
//!     cargo run --release --features cuda --example gpu_bench -- --device cuda:0
//!
//! Args: --device cpu|cuda:N (default cuda:0), --batch 32, --size 150,
//! --iters 10, --warmup 3, --workload stage2|infer|both (default both),
//! --tf32 (cuBLAS f32 matmuls on TF32 tensor cores), --no-event-tracking
//! (cudarc's per-tensor CUDA events off; safe with one thread and stream).
//! Prints one JSON line per workload (stdout); progress goes to stderr.
//! TUNESERVE_PROFILE=wall CUDA_LAUNCH_BLOCKING=1 adds a per-layer-kind time
//! table of the timed steps (stderr).

use std::time::Instant;

use candle_core::{Device, Tensor};
use tuneserve::model::{Backbone, BackboneKind, Head, Precision, SeededInit, Variant};
use tuneserve::train::{adam::Adam, finetune_step};

struct Args {
    device: String,
    batch: usize,
    size: usize,
    iters: usize,
    warmup: usize,
    workload: String,
    tf32: bool,
    no_events: bool,
}

fn args() -> Args {
    let mut a = Args { device: "cuda:0".into(), batch: 32, size: 150, iters: 10, warmup: 3, workload: "both".into(), tf32: false, no_events: false };
    let mut v: Vec<String> = std::env::args().skip(1).collect();
    v.retain(|f| match f.as_str() {
        "--tf32" => {
            a.tf32 = true;
            false
        }
        "--no-event-tracking" => {
            a.no_events = true;
            false
        }
        _ => true,
    });
    for p in v.chunks(2) {
        let val = p.get(1).cloned().unwrap_or_default();
        match p[0].as_str() {
            "--device" => a.device = val,
            "--batch" => a.batch = val.parse().expect("--batch"),
            "--size" => a.size = val.parse().expect("--size"),
            "--iters" => a.iters = val.parse().expect("--iters"),
            "--warmup" => a.warmup = val.parse().expect("--warmup"),
            "--workload" => a.workload = val,
            o => panic!("unknown argument {o}"),
        }
    }
    a
}

fn device(s: &str) -> candle_core::Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0),
        _ => Device::new_cuda(s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).expect("--device cpu|cuda:N")),
    }
}

/// Runs `step` warmup + iters times (synchronising after each) and reports seconds per step.
fn time(dev: &Device, warmup: usize, iters: usize, mut step: impl FnMut() -> candle_core::Result<()>) -> candle_core::Result<Vec<f64>> {
    for i in 0..warmup {
        let t = Instant::now();
        step()?;
        dev.synchronize()?;
        eprintln!("  warmup {i}: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    }
    let _ = tuneserve::model::profile::take(); // profile the timed steps only
    let mut times = Vec::new();
    for _ in 0..iters {
        let t = Instant::now();
        step()?;
        dev.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(times)
}

fn report(a: &Args, dev_name: &str, workload: &str, times: &[f64]) {
    // TUNESERVE_PROFILE=wall (with CUDA_LAUNCH_BLOCKING=1 on a GPU, so that
    // each op's time includes its kernels): where the time went, per layer kind.
    for (k, n, s) in tuneserve::model::profile::take() {
        eprintln!("  profile {workload} {k:<24} {n:>6} {:>9.1} ms", s * 1e3);
    }
    let mut s = times.to_vec();
    s.sort_by(f64::total_cmp);
    let median = s[s.len() / 2];
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    println!(
        "{{\"engine\":\"tuneserve\",\"model\":\"xception\",\"device\":\"{dev_name}\",\"workload\":\"{workload}\",\"batch\":{},\"size\":{},\"iters\":{},\"median_ms\":{:.2},\"mean_ms\":{:.2},\"img_per_s\":{:.1}}}",
        a.batch,
        a.size,
        s.len(),
        median * 1e3,
        mean * 1e3,
        a.batch as f64 / median
    );
}

fn main() -> candle_core::Result<()> {
    let a = args();
    let dev = device(&a.device)?;
    if a.tf32 {
        // cuBLAS f32 matmuls on TF32 tensor cores (what cuDNN convolutions do by default in PyTorch).
        candle_core::cuda::set_gemm_reduced_precision_f32(true);
    }
    #[cfg(feature = "cuda")]
    if a.no_events {
        if let Device::Cuda(c) = &dev {
            // SAFETY: one thread, one stream: nothing to synchronise across streams.
            unsafe { c.disable_event_tracking() };
        }
    }
    let dev_name = format!("{:?}{}{}", dev.location(), if a.tf32 { " tf32" } else { "" }, if a.no_events { " no-events" } else { "" });
    eprintln!("device: {dev_name}");
    let t = Instant::now();
    let bb = Backbone::build(BackboneKind::Xception, Variant::Full, &SeededInit { seed: 0, device: dev.clone() }, true, Precision::F32, &dev)?;
    let head = Head::init(bb.feature_dim(), 1, 0.2, 0, &dev)?;
    eprintln!("built Xception in {:.1}s", t.elapsed().as_secs_f64());
    let x = Tensor::rand(0f32, 1.0, (a.batch, a.size, a.size, 3), &dev)?.affine(2.0, -1.0)?;
    let labels: Vec<u32> = (0..a.batch as u32).map(|i| i % 2).collect();

    if a.workload == "infer" || a.workload == "both" {
        eprintln!("inference, batch {} at {}x{}", a.batch, a.size, a.size);
        let times = time(&dev, a.warmup, a.iters, || {
            let f = bb.features(&x)?;
            head.forward(&f)?;
            Ok(())
        })?;
        report(&a, &dev_name, "infer", &times);
    }
    if a.workload == "stage2" || a.workload == "both" {
        eprintln!("stage-2 training step, batch {} at {}x{}", a.batch, a.size, a.size);
        let mut opt = Adam::new(1e-5);
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
        let mut last_loss = 0.0;
        let x_planar = x.permute((3, 0, 1, 2))?.contiguous()?;
        let times = time(&dev, a.warmup, a.iters, || {
            let (l, _) = finetune_step(&bb, &head, &mut opt, x_planar.clone(), &labels, &mut rng)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            last_loss = l;
            Ok(())
        })?;
        eprintln!("  last loss {last_loss:.4}");
        report(&a, &dev_name, "stage2", &times);
    }
    Ok(())
}
