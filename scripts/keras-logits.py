#!/usr/bin/env python3
"""Open a tuneserve Keras export with keras.models.load_model and print its
logits as JSON.

usage: keras-logits.py MODEL.keras INPUT.f32 BATCH HEIGHT WIDTH [WEIGHTS.weights.h5]

INPUT.f32 holds the images as little-endian float32, (batch, height, width, 3),
resized and scaled as for the model (Xception x / 127.5 - 1, MobileNetV2 x / 255).
With WEIGHTS, those are loaded into the model (`model.load_weights`) first.
Any Keras 3 backend works (KERAS_BACKEND; the tests use jax).
"""
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
import keras  # noqa: E402
import numpy as np  # noqa: E402


def main() -> None:
    model_path, data, b, h, w = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    x = np.fromfile(data, dtype="<f4").reshape(b, h, w, 3)
    model = keras.models.load_model(model_path, compile=False)
    if len(sys.argv) > 6:
        model.load_weights(sys.argv[6])
    logits = np.asarray(model(x, training=False))
    json.dump({"logits": logits.tolist(), "layers": len(model.layers), "keras": keras.__version__}, sys.stdout)


if __name__ == "__main__":
    main()
