#!/usr/bin/env bash
# A Python with onnxruntime, Keras 3 (jax backend) and numpy, pinned, from
# PyPI, for checking exports: scripts/onnx-logits.py, scripts/keras-logits.py
# and tests/export.rs. Idempotent; prints
# the interpreter's path to export as TUNESERVE_TEST_EXPORT_PYTHON on its
# last line.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${TUNESERVE_EXPORT_VENV:-target/export-venv}"
if ! "$VENV/bin/python" -c 'import onnxruntime, numpy, keras, jax' 2>/dev/null; then
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q 'onnxruntime==1.20.1' 'numpy==2.1.3' 'keras==3.6.0' 'jax[cpu]==0.4.35' >&2
fi
echo "$(cd "$VENV/bin" && pwd)/python"
