#!/usr/bin/env bash
# Checks that `cargo build --features cuda` compiles (no GPU needed): installs
# Debian bookworm's CUDA toolkit (nvcc 11.8, from the non-free component) when
# nvcc is missing, then builds the library, the CUDA tests and the GPU bench.
#
#   scripts/check-cuda-build.sh            # as root on Debian bookworm (CI image)
#   CUDA_COMPUTE_CAP=80 CARGO_TARGET_DIR=target-cuda scripts/check-cuda-build.sh
#
# CUDA_COMPUTE_CAP defaults to 80: nvcc 11.8 has no compute_90a (which
# candle-kernels asks for when given 90), and the driver JIT-compiles the
# compute_80 PTX for Hopper. Use a separate CARGO_TARGET_DIR: the feature
# changes candle's features, so sharing the CPU build's target dir rebuilds it.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvcc >/dev/null; then
    src=/etc/apt/sources.list.d/debian.sources
    if [ -f "$src" ] && ! grep -q non-free "$src"; then
        sed -i 's/^Components: main$/Components: main contrib non-free non-free-firmware/' "$src"
    fi
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nvidia-cuda-toolkit
fi
nvcc --version | tail -1

export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target-cuda}"
cargo build --release --features cuda --lib --bins --examples
cargo test --release --features cuda --no-run --test cuda_ops
echo "cuda build OK (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP, target $CARGO_TARGET_DIR)"
