"""Regenerates the Pillow references in this folder (not run by the tests).

    python -m venv /tmp/pilvenv && /tmp/pilvenv/bin/pip install pillow numpy
    /tmp/pilvenv/bin/python tests/data/gen_pil_refs.py tests/data

Made with Pillow 13.0.0. The `pil_hfirst_` files emulate Pillow <= 12.1, which
always ran the horizontal pass first, by resizing the width, then the height. `synth` must stay identical to `synth` in
tests/preprocess.rs: the tests rebuild the input and compare the resize.
"""
import os
import sys

import numpy as np
from PIL import Image


def synth(w, h):
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    ch = [((x * x * 3 + y * 5 + c * 71) ^ (x * y * 13)) & 255 for c in range(3)]
    # a smooth band on the left third so both noise and gradients are covered
    smooth = (x * 255 // max(w - 1, 1) + y) & 255
    ch = [np.where(x < w // 3, (smooth + 40 * c) & 255, v) for c, v in enumerate(ch)]
    return Image.fromarray(np.stack(ch, -1).astype(np.uint8), "RGB")


CASES = [
    ((97, 61), (32, 20)), ((97, 61), (7, 5)), ((97, 61), (160, 100)), ((97, 61), (97, 30)),
    ((97, 61), (40, 61)), ((97, 61), (1, 1)), ((97, 61), (120, 90)), ((97, 61), (301, 3)),
    ((750, 1000), (150, 150)), ((749, 1000), (56, 56)), ((1000, 750), (64, 48)), ((5, 3), (224, 224)), ((250, 500), (60, 60)),
]

# Cases where Pillow 13 goes vertical first, so the legacy order differs.
HFIRST_CASES = [((97, 61), (301, 3)), ((61, 97), (40, 20)), ((250, 500), (60, 60))]


def main(out):
    for (iw, ih), (ow, oh) in CASES:
        im = synth(iw, ih).resize((ow, oh), Image.BILINEAR)
        im.save(os.path.join(out, f"pil_resize_{iw}x{ih}_to_{ow}x{oh}.png"), optimize=True)
    for (iw, ih), (ow, oh) in HFIRST_CASES:
        im = synth(iw, ih).resize((ow, ih), Image.BILINEAR).resize((ow, oh), Image.BILINEAR)
        im.save(os.path.join(out, f"pil_hfirst_resize_{iw}x{ih}_to_{ow}x{oh}.png"), optimize=True)
    # CMYK JPEG (Adobe, inverted, as Pillow and Photoshop write it) and what
    # Pillow's convert('RGB') makes of it.
    y, x = np.mgrid[0:16, 0:24]
    c = np.stack([x * 10, y * 15, (x + y) * 6, (x * y) % 60], -1).astype(np.uint8)
    Image.fromarray(c, "CMYK").save(os.path.join(out, "cmyk.jpg"), quality=95)
    Image.open(os.path.join(out, "cmyk.jpg")).convert("RGB").save(os.path.join(out, "cmyk_pil_rgb.png"))
    # JPEG variants (odd sizes exercise the upsampling edges) and what PIL
    # decodes them to.
    src = synth(45, 31)
    variants = {
        "jpeg_420_progressive": dict(subsampling=2, progressive=True),
        "jpeg_422": dict(subsampling=1),
        "jpeg_444": dict(subsampling=0),
    }
    for name, opts in variants.items():
        src.save(os.path.join(out, f"{name}.jpg"), quality=90, **opts)
    src.convert("L").save(os.path.join(out, "jpeg_gray.jpg"), quality=90)
    for name in [*variants, "jpeg_gray"]:
        im = Image.open(os.path.join(out, f"{name}.jpg")).convert("RGB")
        im.save(os.path.join(out, f"{name}_pil_rgb.png"))


if __name__ == "__main__":
    main(sys.argv[1])
