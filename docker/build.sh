#!/bin/sh
# The image's build step, shared by the Dockerfile's builder stages and by
# scripts/check-containers.sh (which runs it outside Docker).
#   docker/build.sh OUT_DIR     builds the release binary, installs it as OUT_DIR/tuneserve
# CARGO_FEATURES (e.g. "cuda") is passed to --features; CARGO_TARGET_DIR is honoured.
set -eu
out="${1:?usage: docker/build.sh OUT_DIR}"
features="${CARGO_FEATURES:-}"
cargo build --release --locked ${features:+--features "$features"}
bin="${CARGO_TARGET_DIR:-target}/release/tuneserve"
mkdir -p "$out"
# Line tables are kept by the release profile for local backtraces; the image
# drops them (about 4/5 of the file) and keeps the symbols.
if command -v objcopy >/dev/null 2>&1; then
  objcopy --strip-debug "$bin" "$out/tuneserve.tmp"
else
  cp "$bin" "$out/tuneserve.tmp"
fi
chmod 0755 "$out/tuneserve.tmp"
mv -f "$out/tuneserve.tmp" "$out/tuneserve"
"$out/tuneserve" --version
