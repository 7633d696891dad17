# syntax=docker/dockerfile:1
#
# tuneserve images.
#   docker build -t tuneserve .                                   CPU image (target "runtime", the default)
#   docker build -t tuneserve:cuda --target runtime-cuda \
#                --build-arg CUDA_COMPUTE_CAP=90 .                GPU image (H100: 90, A100: 80, L4: 89)
#
# Both run as uid 10001 with their state in the /data volume, listen on
# 0.0.0.0:8080, and fetch the pretrained weights at first start (see
# docker/entrypoint.sh and docs/containers.md). scripts/check-containers.sh
# runs the same build and start scripts outside Docker in CI.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm
ARG CUDA_VERSION=12.6.3
ARG CUDA_UBUNTU=ubuntu24.04

# ---------------------------------------------------------------- toolchain
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS toolchain

# ---------------------------------------------------------------- CPU build
FROM toolchain AS builder
# nasm: libjpeg-turbo's SIMD JPEG decoder (same pixels as without, ~1.5x faster).
RUN apt-get update \
 && apt-get install -y --no-install-recommends nasm \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /build
# Dependencies first, against a stub crate: this layer is rebuilt only when
# Cargo.toml or Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src \
 && echo 'fn main() {}' > src/main.rs \
 && : > src/lib.rs \
 && cargo build --release --locked \
 && cargo clean --release --locked -p tuneserve \
 && rm -rf src
COPY . .
RUN docker/build.sh /out

# --------------------------------------------------------------- CUDA build
FROM nvidia/cuda:${CUDA_VERSION}-devel-${CUDA_UBUNTU} AS builder-cuda
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential binutils ca-certificates pkg-config nasm \
 && rm -rf /var/lib/apt/lists/*
# The Rust toolchain of the CPU build (glibc 2.36; Ubuntu 24.04 has 2.39).
COPY --from=toolchain /usr/local/rustup /usr/local/rustup
COPY --from=toolchain /usr/local/cargo /usr/local/cargo
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH
# No GPU is visible during `docker build`: the kernels' target must be given.
ARG CUDA_COMPUTE_CAP=80
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} \
    CARGO_FEATURES=cuda
WORKDIR /build
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src \
 && echo 'fn main() {}' > src/main.rs \
 && : > src/lib.rs \
 && cargo build --release --locked --features "$CARGO_FEATURES" \
 && cargo clean --release --locked -p tuneserve \
 && rm -rf src
COPY . .
RUN docker/build.sh /out

# ------------------------------------------------------------- CUDA runtime
FROM nvidia/cuda:${CUDA_VERSION}-runtime-${CUDA_UBUNTU} AS runtime-cuda
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tuneserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin tuneserve \
 && mkdir -p /data \
 && chown 10001:10001 /data
COPY --from=builder-cuda /out/tuneserve /usr/local/bin/tuneserve
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/docker-entrypoint.sh
COPY --chmod=0755 docker/healthcheck.sh /usr/local/bin/docker-healthcheck.sh
ENV TUNESERVE_BIND=0.0.0.0:8080 \
    TUNESERVE_DATA_DIR=/data \
    TUNESERVE_LOG=info \
    TUNESERVE_DEVICE=cuda \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
VOLUME ["/data"]
EXPOSE 8080
USER 10001:10001
WORKDIR /data
# The start period covers a first start that downloads and converts the weights.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5m --retries=3 \
  CMD ["/usr/local/bin/docker-healthcheck.sh"]
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["serve"]

# -------------------------------------------------------------- CPU runtime
# Last stage: what a plain `docker build .` produces.
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# OpenBLAS: CPU matrix products ~20% faster than without it (src/ops/blas.rs).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libopenblas0-pthread \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tuneserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin tuneserve \
 && mkdir -p /data \
 && chown 10001:10001 /data
COPY --from=builder /out/tuneserve /usr/local/bin/tuneserve
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/docker-entrypoint.sh
COPY --chmod=0755 docker/healthcheck.sh /usr/local/bin/docker-healthcheck.sh
ENV TUNESERVE_BIND=0.0.0.0:8080 \
    TUNESERVE_DATA_DIR=/data \
    TUNESERVE_LOG=info \
    TUNESERVE_DEVICE=cpu
VOLUME ["/data"]
EXPOSE 8080
USER 10001:10001
WORKDIR /data
# The start period covers a first start that downloads and converts the weights.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5m --retries=3 \
  CMD ["/usr/local/bin/docker-healthcheck.sh"]
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["serve"]
