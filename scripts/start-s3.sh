#!/usr/bin/env bash
# Start a local S3-compatible server (moto in server mode, from PyPI) for the
# tuneserve scale-out tests, on loopback only. Idempotent: installs moto into
# a virtual environment if missing and starts the server if it is not
# answering. Prints the endpoint URL to export as TUNESERVE_TEST_S3_URL on its
# last line.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${TUNESERVE_S3_PORT:-9000}"
VENV="${TUNESERVE_S3_VENV:-target/s3-venv}"
URL="http://127.0.0.1:$PORT"

if [ ! -x "$VENV/bin/moto_server" ]; then
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q 'moto[server]==5.1.*' >&2
fi

if ! curl -fsS -o /dev/null "$URL/moto-api/" 2>/dev/null; then
  mkdir -p target
  nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >target/moto.log 2>&1 &
  for _ in $(seq 1 60); do
    curl -fsS -o /dev/null "$URL/moto-api/" 2>/dev/null && break
    sleep 0.5
  done
  curl -fsS -o /dev/null "$URL/moto-api/" || { echo "moto did not start; see target/moto.log" >&2; exit 1; }
fi
echo "$URL"
