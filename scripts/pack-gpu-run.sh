#!/usr/bin/env bash
# Packs the CUDA test binary and the GPU examples (benchmark, recipe) to run on
# a remote GPU host whose CUDA is newer than the toolkit they were built with
# (e.g. built with Debian's CUDA 11.8 on a CPU-only machine, run on a host with
# CUDA 12 or 13): strips them, points them at unversioned libcublas.so /
# libcurand.so with weak symbol versions (see elf-weak-versions.py), and adds
# libcudart.so.11.0 (candle-kernels links it) and the PyTorch peer script.
#
#   scripts/pack-gpu-run.sh OUT_DIR      # after scripts/check-cuda-build.sh
#
# On the GPU machine: unpack, symlink lib/libcublas.so and lib/libcurand.so to
# the machine's libcublas.so.N / libcurand.so.N, put lib/ on LD_LIBRARY_PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: pack-gpu-run.sh OUT_DIR}
T=${CARGO_TARGET_DIR:-target-cuda}/release
tmp=$(mktemp -d)
test_bin=$(ls -t "$T"/deps/cuda_ops-* | grep -v '\.d$' | head -1)
strip -o "$tmp/cuda_ops" "$test_bin"
for e in gpu_bench gpu_recipe; do strip -o "$tmp/$e" "$T/examples/$e"; done
for b in "$tmp"/cuda_ops "$tmp"/gpu_bench "$tmp"/gpu_recipe; do
    args=()
    for s in $(objdump -T "$b" | grep -E '\((libcublas|libcurand)' | awk '{print $NF}'); do
        args+=(--clear-symbol-version "$s")
    done
    patchelf "${args[@]}" --replace-needed libcublas.so.11 libcublas.so --replace-needed libcurand.so.10 libcurand.so "$b"
    python3 scripts/elf-weak-versions.py "$b" libcublas libcurand
done
cp -L "$(ldconfig -p | grep -o '/[^ ]*/libcudart.so.11.0' | head -1)" "$tmp/libcudart.so.11.0"
cp bench/peers/gpu_torch.py "$tmp/"
mkdir -p "$out"
tar -C "$tmp" -cf - . | xz -T2 -1 > "$out/gpu-bins.tar.xz"
rm -rf "$tmp"
ls -la "$out/gpu-bins.tar.xz"
