#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine with Rust installed: installs
# the system packages the tests need (as root or through sudo), obtains the
# fixtures (TUNESERVE_FIXTURES when set, otherwise from their public sources
# into target/fixtures), starts PostgreSQL and an S3 test server on loopback,
# then runs `cargo test --release`, the API contract check on SQLite and
# PostgreSQL, and the container checks. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)

need_apt=()
command -v psql >/dev/null && command -v pg_ctlcluster >/dev/null || need_apt+=(postgresql)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
# nasm assembles libjpeg-turbo's SIMD decoder at build time.
command -v nasm >/dev/null || need_apt+=(nasm)
# OpenBLAS for CPU matrix products (loaded at run time; src/ops/blas.rs checks CI has it).
ldconfig -p | grep -q 'libopenblas\.so\.0' || need_apt+=(libopenblas0-pthread)
# promtool checks /metrics (tests/api_ops.rs).
command -v promtool >/dev/null || need_apt+=(prometheus)
# The Python tools (fixtures, S3 server, export checks, contract check) run in venvs.
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
# Wheels go straight into the venvs: a pip cache would double their disk use.
export PIP_NO_CACHE_DIR=1
if [ ${#need_apt[@]} -gt 0 ]; then
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

# Fixtures: the real weights, golden Keras activations, the cats & dogs photos (prints the folder last).
TUNESERVE_FIXTURES="$(scripts/fetch-test-fixtures.py --dataset | tail -n1)"
export TUNESERVE_FIXTURES
# A PostgreSQL on loopback for the database tests (the script prints its URL last).
TUNESERVE_TEST_POSTGRES_URL="$("${sudo[@]}" scripts/start-postgres.sh | tail -n1)"
export TUNESERVE_TEST_POSTGRES_URL
# An S3-compatible server (moto, from PyPI) on loopback for the scale-out test.
TUNESERVE_TEST_S3_URL="$(scripts/start-s3.sh | tail -n1)"
export TUNESERVE_TEST_S3_URL
# onnxruntime and Keras (PyPI) check the exports (tests/export.rs).
TUNESERVE_TEST_EXPORT_PYTHON="$(scripts/export-python.sh | tail -n1)"
export TUNESERVE_TEST_EXPORT_PYTHON

mkdir -p target
# Build first, with the linker's multi-kilobyte command lines cut short so that
# a failure's reason (printed after them) stays readable in a CI log.
df -h . | tail -n1 | awk '{print "disk before the build: " $4 " free of " $2}'
if ! cargo test --release --no-run 2>&1 | cut -c1-400 | tee target/build.log; then
  df -h . | tail -n1 | awk '{print "disk after the failed build: " $4 " free of " $2}'
  exit 1
fi
cargo test --release 2>&1 | tee target/test.log

# The API contract: schemathesis against a live server holding a dataset, a
# finished tiny job and a model, on SQLite and then on PostgreSQL.
cargo build --release --bin tuneserve
bin="${CARGO_TARGET_DIR:-target}/release/tuneserve"
scripts/contract-check.sh "$bin"
contract_db="tuneserve_contract_$$"
psql "$TUNESERVE_TEST_POSTGRES_URL" -qc "CREATE DATABASE $contract_db" >/dev/null
CONTRACT_MAX_TIME=120 CONTRACT_DATABASE_URL="${TUNESERVE_TEST_POSTGRES_URL%/*}/$contract_db" \
  scripts/contract-check.sh "$bin"

# The Dockerfile's build and start steps, outside Docker (no engine needed):
# lint, compose validation, build as the builder stage does, start and hit /health.
scripts/check-containers.sh

passed=$(grep -oE '^test result: ok\. [0-9]+ passed' target/test.log | awk '{s += $4} END {print s + 0}')
echo "tests: ${passed} passed, 0 failed"
