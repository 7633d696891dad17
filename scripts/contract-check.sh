#!/usr/bin/env bash
# Contract check: runs schemathesis against a live tuneserve and fails on any
# response that breaks the OpenAPI document it serves (5xx, undocumented status
# codes, wrong content types, bodies that do not match their schemas).
#
#   scripts/contract-check.sh [path/to/tuneserve]     (default target/release/tuneserve)
#
# It starts `tuneserve serve` on a free loopback port with a fresh data dir and
# an API key, uploads a small synthetic 2-class dataset, trains a tiny model
# (so models, checkpoints and predictions exist), then runs schemathesis's
# examples, coverage, fuzzing and stateful phases. Needs python3 (with venv)
# and network access to PyPI the first time (schemathesis is installed into
# target/contract-venv).
#
# Environment knobs: CONTRACT_MAX_EXAMPLES (per operation, default 40),
# CONTRACT_MAX_TIME (seconds, whole schemathesis run, default 180),
# CONTRACT_SEED (fixed seed, default random), CONTRACT_PHASES (default
# examples,coverage,fuzzing,stateful), CONTRACT_REPORTS (schemathesis
# report formats, default junit), CONTRACT_REPORT_DIR (default
# target/contract-report), CONTRACT_DATABASE_URL (an empty PostgreSQL database
# for the run, e.g. postgres://tuneserve:tuneserve@127.0.0.1:5432/contract;
# default: SQLite in the throw-away data dir).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$(realpath -m "${1:-$ROOT/target/release/tuneserve}")"
cd "$ROOT"

SCHEMATHESIS_VERSION="4.32.5"
VENV="$ROOT/target/contract-venv"
KEY="contract-check-key"
MAX_EXAMPLES="${CONTRACT_MAX_EXAMPLES:-40}"
MAX_TIME="${CONTRACT_MAX_TIME:-180}"
REPORT_DIR="${CONTRACT_REPORT_DIR:-target/contract-report}"

if [[ ! -x "$BIN" ]]; then
  echo "contract-check: no tuneserve binary at $BIN (cargo build --release --bin tuneserve)" >&2
  exit 2
fi

# 1. schemathesis, pinned, in a venv under target/.
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
PY="$VENV/bin/python"

# 2. A server on a free port with a throw-away data dir.
WORK="$(mktemp -d -t tuneserve-contract.XXXXXX)"
PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
BASE="http://127.0.0.1:$PORT"
SERVER_PID=""
JANITOR_PID=""
cleanup() {
  if [[ -n "$JANITOR_PID" ]]; then kill "$JANITOR_PID" 2>/dev/null || true; fi
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

DB_ARGS=()
if [[ -n "${CONTRACT_DATABASE_URL:-}" ]]; then DB_ARGS=(--database-url "$CONTRACT_DATABASE_URL"); fi
TUNESERVE_LOG="${TUNESERVE_LOG:-warn}" "$BIN" serve --bind "127.0.0.1:$PORT" --data-dir "$WORK/data" \
  --api-key "$KEY" --progress-every 1 --shutdown-grace-secs 5 "${DB_ARGS[@]}" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

# 3. Fixtures (dataset, trained tiny model) through the API, stdlib only.
if ! "$PY" - "$BASE" "$KEY" "$WORK" <<'EOF'
import io, json, random, struct, sys, time, urllib.error, urllib.request, zipfile, zlib

base, key, work = sys.argv[1], sys.argv[2], sys.argv[3]
auth = {"Authorization": f"Bearer {key}"}

def call(method, path, body=None, headers=None, timeout=30):
    req = urllib.request.Request(base + path, data=body, method=method, headers={**auth, **(headers or {})})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read() or b"null")

deadline = time.time() + 60
while True:
    try:
        with urllib.request.urlopen(base + "/health", timeout=2) as r:
            if r.status == 200:
                break
    except OSError:
        pass
    if time.time() > deadline:
        sys.exit("the server did not answer /health within 60 s")
    time.sleep(0.2)

def png(w, h, pixel):
    raw = b"".join(b"\x00" + bytes(c for x in range(w) for c in pixel(x, y)) for y in range(h))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))

rng = random.Random(7)
def image(bright):
    lo, hi = (150, 255) if bright else (0, 105)
    stripe = rng.randrange(3, 9)
    def pixel(x, y):
        v = lo + ((x + y) // stripe % 2) * 30 + rng.randrange(hi - lo - 30)
        return (v, min(255, v + rng.randrange(20)), max(0, v - rng.randrange(20)))
    return png(40, 40, pixel)

buf = io.BytesIO()
with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
    for split, n in (("train", 12), ("validation", 4)):
        for cls in ("bright", "dark"):
            for i in range(n):
                z.writestr(f"{split}/{cls}/{i:03}.png", image(cls == "bright"))

open(f"{work}/dataset.zip", "wb").write(buf.getvalue())
_, ds = call("POST", "/v1/datasets?name=contract-check", buf.getvalue(), {"Content-Type": "application/zip"}, 120)
print(f"contract-check: dataset {ds['id']} {ds['counts']}", flush=True)
job_body = {"dataset_id": ds["id"], "variant": "tiny",
            "hyperparameters": {"image_size": 71, "batch_size": 8, "frozen_epochs": 1, "finetune_epochs": 1,
                                "finetune_lr": 1e-4, "patience": 0}}
_, job = call("POST", "/v1/jobs", json.dumps(job_body).encode(), {"Content-Type": "application/json"})
deadline = time.time() + 900
while job["status"] not in ("succeeded", "failed", "cancelled"):
    if time.time() > deadline:
        sys.exit(f"the training job {job['id']} did not finish within 15 minutes")
    time.sleep(1)
    _, job = call("GET", f"/v1/jobs/{job['id']}")
if job["status"] != "succeeded":
    sys.exit(f"the training job {job['id']} ended {job['status']}: {job.get('error')}")
print(f"contract-check: job {job['id']} succeeded, model {job['model_id']}", flush=True)
open(f"{work}/fixture-job", "w").write(job["id"])
EOF
then
  echo "contract-check: could not prepare the fixtures; server log:" >&2
  tail -n 50 "$WORK/server.log" >&2
  exit 1
fi

# 4. A janitor. Jobs that the fuzzer creates are cancelled as soon as they are
# seen: otherwise they would train (up to 2 x 1000 epochs) on the two cores the
# run has, and a live event stream (`?stream=true`) of a queued or running job
# lasts until the job ends, so one request could outlast the whole run. And
# when the fuzzer has deleted every dataset, the fixture dataset is uploaded
# again, so that job creation keeps being exercised past its 404.
"$PY" - "$BASE" "$KEY" "$(cat "$WORK/fixture-job")" "$WORK/dataset.zip" >"$WORK/janitor.log" 2>&1 <<'EOF' &
import json, sys, time, urllib.error, urllib.request
base, key, keep, archive = sys.argv[1:5]
auth = {"Authorization": f"Bearer {key}"}
def get(path):
    with urllib.request.urlopen(urllib.request.Request(base + path, headers=auth), timeout=10) as r:
        return json.load(r)
while True:
    try:
        if not get("/v1/datasets?limit=1")["data"]:
            req = urllib.request.Request(base + "/v1/datasets?name=contract-check", data=open(archive, "rb").read(),
                                         method="POST", headers={**auth, "Content-Type": "application/zip"})
            urllib.request.urlopen(req, timeout=60).close()
        jobs = get("/v1/jobs?limit=100")["data"]
        for j in jobs:
            if j["id"] != keep and j["status"] in ("queued", "running") and not j["cancel_requested"]:
                try:
                    urllib.request.urlopen(urllib.request.Request(
                        f"{base}/v1/jobs/{j['id']}/cancel", method="POST", headers=auth), timeout=10).close()
                except urllib.error.HTTPError:
                    pass  # finished meanwhile (409)
    except Exception as e:  # keep going: the server may be busy
        print(f"janitor: {e}", flush=True)
    time.sleep(0.3)
EOF
JANITOR_PID=$!

# 5. schemathesis.
SEED_ARGS=()
if [[ -n "${CONTRACT_SEED:-}" ]]; then SEED_ARGS=(--seed "$CONTRACT_SEED"); fi
mkdir -p "$REPORT_DIR" target/contract-state
REPORT_DIR="$(cd "$REPORT_DIR" && pwd)"
START=$(date +%s)
set +e
# Through a launcher that serialises ast.parse: hypothesis parses lambdas'
# source from several threads (--workers 2), which trips CPython < 3.12.5's
# thread-unsafe AST conversion ("AST constructor recursion depth mismatch",
# python/cpython#106905) and ends the run with a runtime error.
# Run from target/contract-state, so that schemathesis writes its cache
# (.schemathesis/) there instead of in the repository.
(cd target/contract-state && "$PY" -c '
import ast, sys, threading
_parse, _lock = ast.parse, threading.Lock()
def parse(*args, **kwargs):
    with _lock:
        return _parse(*args, **kwargs)
ast.parse = parse
from schemathesis.cli import schemathesis
sys.argv[0] = "schemathesis"
sys.exit(schemathesis())
' run "$BASE/openapi.json" \
  --header "Authorization: Bearer $KEY" \
  --phases "${CONTRACT_PHASES:-examples,coverage,fuzzing,stateful}" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "$MAX_EXAMPLES" \
  --max-time "$MAX_TIME" \
  --workers 2 \
  --request-timeout 60 \
  --suppress-health-check too_slow,filter_too_much \
  --generation-database none \
  --no-color \
  --report "${CONTRACT_REPORTS:-junit}" --report-dir "$REPORT_DIR" \
  "${SEED_ARGS[@]}") 2>&1 | tee "$WORK/schemathesis.log"
RC=${PIPESTATUS[0]}
set -e
END=$(date +%s)

# What the server answered, per operation and status (from its own metrics).
"$PY" - "$BASE" "$KEY" <<'EOF' || true
import collections, re, sys, urllib.request
base, key = sys.argv[1:3]
req = urllib.request.Request(base + "/metrics", headers={"Authorization": f"Bearer {key}"})
text = urllib.request.urlopen(req, timeout=10).read().decode()
rows = collections.defaultdict(dict)
for m in re.finditer(r'^tuneserve_http_requests_total\{(.*)\} (\d+)$', text, re.M):
    labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
    rows[(labels.get("route", "?"), labels.get("method", "?"))][labels.get("status", "?")] = int(m.group(2))
print("contract-check: responses per operation (status: count):")
for (route, method), by in sorted(rows.items()):
    if set(by) == {"405"}:
        continue  # schemathesis trying methods a route does not have
    print(f"  {method:6} {route:34} " + "  ".join(f"{k}: {v}" for k, v in sorted(by.items())))
EOF

if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  echo "contract-check: the server died during the run; its log:" >&2
  tail -n 50 "$WORK/server.log" >&2
  RC=1
fi
if grep -qE 'panicked at|thread .* panicked' "$WORK/server.log"; then
  echo "contract-check: the server panicked during the run:" >&2
  grep -E -A5 'panicked at' "$WORK/server.log" | head -n 40 >&2
  RC=1
fi
CASES="$(grep -A1 -E '^ *Test cases:' "$WORK/schemathesis.log" | tail -n1 | sed -E 's/^ +//')"
echo "contract-check: $([[ $RC -eq 0 ]] && echo PASSED || echo FAILED) in $((END - START)) s;" \
  "test cases: ${CASES:-unknown}; report in $REPORT_DIR"
exit "$RC"
