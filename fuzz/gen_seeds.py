#!/usr/bin/env python3
"""Writes the fuzzers' starting corpus into fuzz/seeds/<target>/: small real
images in every format the service decodes (incl. EXIF orientation, palette,
16-bit, interlaced, animated, grayscale, CMYK) and small datasets as zip, tar
and tar.gz in both layouts (class folders; train/validation). Needs Pillow.
The seeds are committed; rerun only to change them."""
import io, os, tarfile, zipfile

from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))


def img(mode, size, fmt, **kw):
    im = Image.new(mode, size)
    # a gradient, so encoders produce non-trivial data
    px = im.load()
    for y in range(size[1]):
        for x in range(size[0]):
            v = (x * 37 + y * 11) % 256
            px[x, y] = {"RGB": (v, 255 - v, (v * 3) % 256), "RGBA": (v, 0, 255 - v, v), "L": v,
                        "P": v % 16, "I;16": v * 200, "CMYK": (v, 0, 255 - v, 10), "LA": (v, 128)}[mode]
    if mode == "P":
        im.putpalette([i % 256 for i in range(768)])
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def images():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    return {
        "baseline.jpg": img("RGB", (12, 9), "JPEG", quality=80),
        "progressive.jpg": img("RGB", (17, 13), "JPEG", progressive=True),
        "gray.jpg": img("L", (8, 8), "JPEG"),
        "cmyk.jpg": img("CMYK", (8, 8), "JPEG"),
        "subsampled.jpg": img("RGB", (15, 7), "JPEG", subsampling=2),
        "exif-rotated.jpg": img("RGB", (10, 6), "JPEG", exif=exif.tobytes()),
        "rgb.png": img("RGB", (9, 7), "PNG"),
        "rgba.png": img("RGBA", (7, 9), "PNG"),
        "palette.png": img("P", (8, 8), "PNG"),
        "gray16.png": img("I;16", (6, 6), "PNG"),
        "gray-alpha.png": img("LA", (10, 10), "PNG"),
        "lossy.webp": img("RGB", (16, 16), "WEBP", quality=50),
        "lossless.webp": img("RGBA", (8, 8), "WEBP", lossless=True),
        "rgb.bmp": img("RGB", (5, 3), "BMP"),
        "anim.gif": anim_gif(),
    }


def anim_gif():
    frames = [Image.new("P", (6, 6), i) for i in range(3)]
    b = io.BytesIO()
    frames[0].save(b, "GIF", save_all=True, append_images=frames[1:], duration=10, loop=0)
    return b.getvalue()


def dataset_files(layout):
    ims = images()
    small = [ims["baseline.jpg"], ims["rgb.png"], ims["lossy.webp"]]
    files = {}
    for cls in ("cats", "dogs"):
        for i, data in enumerate(small):
            ext = ["jpg", "png", "webp"][i]
            if layout == "split":
                files[f"data/train/{cls}/{i}.{ext}"] = data
                files[f"data/validation/{cls}/{i}.{ext}"] = data
            else:
                files[f"{cls}/{i}.{ext}"] = data
    files["data/train/cats/notes.txt" if layout == "split" else "cats/notes.txt"] = b"not an image"
    return files


def write_zip(files):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return b.getvalue()


def write_tar(files, mode):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode=mode, format=tarfile.GNU_FORMAT) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return b.getvalue()


def main():
    out = {"image": {}, "ingest": {}}
    for name, data in images().items():
        # the image target reads two size bytes first
        out["image"][name] = bytes([149, 149]) + data
    for layout in ("flat", "split"):
        files = dataset_files(layout)
        out["ingest"][f"{layout}.zip"] = write_zip(files)
        out["ingest"][f"{layout}.tar"] = write_tar(files, "w")
        out["ingest"][f"{layout}.tar.gz"] = write_tar(files, "w:gz")
    for target, seeds in out.items():
        d = os.path.join(HERE, "seeds", target)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, name), "wb") as fh:
                fh.write(data)
        print(target, len(seeds), "seeds", sum(map(len, seeds.values())), "bytes")


if __name__ == "__main__":
    main()
