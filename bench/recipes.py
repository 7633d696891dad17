#!/usr/bin/env python3
"""Accuracy of a training recipe over several seeds: validation and photos from another source.

    python3 bench/recipes.py --recipe standard --seeds 0 1 2 3 4 --work runs --ood OOD_DIR
    python3 bench/recipes.py --recipe notebook --seeds 0 1 2 3 4 --work runs --ood OOD_DIR

Each seed runs `tuneserve train` with the recipe's defaults (nothing else set) on the seed data, then
`tuneserve predict` with the published model on the photos of bench/ood/photos.tsv under OOD_DIR/cat and
OOD_DIR/dog (photos from a different source than the training data; they never choose settings). Prints per-seed rows
and mean ± spread (half the range), wall time per run included, and writes WORK/<recipe>.json.
Paths default to $TUNESERVE_FIXTURES (../shared).
"""

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import time

FX = os.environ.get("TUNESERVE_FIXTURES", "../shared")


def ood_photos(root, manifest):
    """The photos listed in `manifest` (bench/ood/photos.tsv), each checked against its SHA-256."""
    photos = []
    with open(manifest) as f:
        for row in csv.DictReader(f, delimiter="\t"):
            path = os.path.join(root, row["class"], row["file"])
            if not os.path.isfile(path):
                sys.exit(f"missing: {path} (see bench/ood/README.md)")
            with open(path, "rb") as img:
                if hashlib.sha256(img.read()).hexdigest() != row["sha256"]:
                    sys.exit(f"not the listed photo: {path}")
            photos.append((path, row["class"]))
    return photos


def predict(a, out, photos):
    """Label per photo from the run's published model (folder names map to classes by prefix)."""
    got = {}
    for i in range(0, len(photos), 200):
        chunk = [p for p, _ in photos[i:i + 200]]
        r = subprocess.run([a.bin, "predict", "--checkpoint", out, "--keep-going"] + chunk, check=True, capture_output=True, text=True)
        for line in r.stdout.splitlines():
            row = json.loads(line)
            got[row["path"]] = row["label"]
    per_class = {}
    for path, label in photos:
        right = got.get(path, "").startswith(label)
        n, k = per_class.get(label, (0, 0))
        per_class[label] = (n + 1, k + right)
    total = sum(k for _, k in per_class.values()) / sum(n for n, _ in per_class.values())
    balanced = sum(k / n for n, k in per_class.values()) / len(per_class)
    return total, balanced, per_class


def spread(xs):
    return f"{sum(xs) / len(xs):.4f} ± {(max(xs) - min(xs)) / 2:.4f}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="standard")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--work", required=True, help="folder for the runs' outputs")
    p.add_argument("--ood", help="folder with cat/ and dog/ photos from another source (bench/ood/README.md)")
    p.add_argument("--ood-manifest", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "ood", "photos.tsv"))
    p.add_argument("--data", default=os.path.join(FX, "datasets/cats_and_dogs_filtered.zip"))
    p.add_argument("--weights", default=os.path.join(FX, "weights/xception_weights_tf_dim_ordering_tf_kernels_notop.h5"))
    p.add_argument("--bin", default="target/release/tuneserve")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `tuneserve train` options")
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True)
    photos = ood_photos(a.ood, a.ood_manifest) if a.ood else []
    rows = []
    for seed in a.seeds:
        out = os.path.join(a.work, f"{a.recipe}-s{seed}")
        summary_file = out + ".summary.json"
        if not os.path.exists(summary_file):
            cmd = [a.bin, "train", "--data", a.data, "--weights", a.weights, "--out", out, "--recipe", a.recipe,
                   "--seed", str(seed), "--json-events"] + a.extra
            print(" ".join(cmd), flush=True)
            t0 = time.time()
            with open(out + ".events.log", "w") as log:
                r = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=log, text=True)
            summary = json.loads(r.stdout)
            summary["wall_s"] = time.time() - t0
            with open(summary_file, "w") as f:
                json.dump(summary, f)
        with open(summary_file) as f:
            summary = json.load(f)
        row = {"seed": seed, "val_acc": summary["validation"]["accuracy"], "val_loss": summary["validation"]["loss"],
               "best": summary["best_checkpoint"], "wall_s": summary["wall_s"]}
        if photos:
            row["ood_acc"], row["ood_balanced"], row["ood_per_class"] = predict(a, out, photos)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nrecipe {a.recipe}, seeds {a.seeds}")
    print(f"validation accuracy {spread([r['val_acc'] for r in rows])}, loss {spread([r['val_loss'] for r in rows])}")
    if photos:
        print(f"other-source photos ({len(photos)}): accuracy {spread([r['ood_acc'] for r in rows])}, "
              f"balanced {spread([r['ood_balanced'] for r in rows])}")
    print(f"wall time per run {spread([r['wall_s'] for r in rows])} s")
    with open(os.path.join(a.work, f"{a.recipe}.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
