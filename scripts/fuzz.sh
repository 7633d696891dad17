#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets) for a bounded time each:
#   scripts/fuzz.sh [SECONDS_PER_TARGET=600] [TARGET...]
# Installs cargo-fuzz if missing (needs the nightly toolchain). Starts from the
# committed seeds (fuzz/seeds) plus the corpus kept by earlier runs
# (fuzz/corpus, not committed); logs go to fuzz/logs/<target>.log. A crash
# stops with a non-zero status and leaves its input in fuzz/artifacts/<target>/:
# copy it into tests/fuzz-regressions/<target>/ so tests/fuzz_regressions.rs
# keeps it as a test (docs/fuzzing.md).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs="${1:-600}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(ingest ingest_structured image)

rustup toolchain list | grep -q '^nightly' || { echo "cargo fuzz needs the nightly toolchain (rustup toolchain install nightly)" >&2; exit 1; }
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
# Same dependency versions as the product.
[ -f Cargo.lock ] || cp ../Cargo.lock Cargo.lock

cargo +nightly fuzz build
mkdir -p logs
status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  dirs=("corpus/$t")
  [ -d "seeds/$t" ] && dirs+=("seeds/$t")
  echo "== $t: ${secs}s" >&2
  # -rss_limit_mb: a leak or an unbounded allocation is a finding too.
  if ! cargo +nightly fuzz run "$t" "${dirs[@]}" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 \
      >"logs/$t.log" 2>&1; then
    echo "!! $t found a crash: see fuzz/logs/$t.log and fuzz/artifacts/$t/" >&2
    status=1
  fi
  grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)|^#[0-9]+ +DONE' "logs/$t.log" >&2 || true
done
exit $status
