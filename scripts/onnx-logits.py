#!/usr/bin/env python3
"""Run a tuneserve ONNX export with onnxruntime and print its logits as JSON.

usage: onnx-logits.py MODEL.onnx INPUT.f32 BATCH HEIGHT WIDTH

INPUT.f32 holds the images as little-endian float32, (batch, height, width, 3),
resized and scaled as the model's metadata says (`scaling`).
"""
import json
import sys

import numpy as np
import onnxruntime as ort


def main() -> None:
    model, data, b, h, w = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    x = np.fromfile(data, dtype="<f4").reshape(b, h, w, 3)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"image": x})
    json.dump({"logits": logits.tolist(), "metadata": session.get_modelmeta().custom_metadata_map}, sys.stdout)


if __name__ == "__main__":
    main()
