#!/usr/bin/env python3
"""How training scales with the dataset: memory and speed of each phase.

Makes synthetic datasets of distinct photos from the seed's cats & dogs zip
(random crop of 70-100% of each side, random mirror, JPEG re-encoded at quality
80-95; two thirds train, one third validation), then runs `tuneserve train` on
each with events as JSON lines and samples its resident memory every 0.1 s.
Reports per dataset size: pixel-cache build time and img/s, feature-pass img/s,
stage-2 img/s, and the peak RSS of each phase (cache, features, stage 1,
stage 2). A second run on the same output folder shows the cache being reused.

  python3 bench/datasets.py --zip ../shared/datasets/cats_and_dogs_filtered.zip \\
      --sizes 2000 20000 100000 --variant tiny --work /tmp/ds-bench --out bench-datasets.json

`--variant full --weights W` measures the real Xception (slow: ~30 img/s in the
feature pass on 2 cores); with `--compare-bench` it also runs `tuneserve bench`
(synthetic input, same batch) in the same run, to show whether data loading
is hidden.

Needs Pillow (pip install pillow). Requires: a release build of tuneserve.
"""

import argparse
import io
import json
import multiprocessing as mp
import os
import random
import subprocess
import sys
import threading
import time
import zipfile


def make_one(args):
    src_bytes, dst, seed = args
    from PIL import Image

    rng = random.Random(seed)
    img = Image.open(io.BytesIO(src_bytes)).convert("RGB")
    w, h = img.size
    cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    img = img.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    img.save(dst, "JPEG", quality=rng.randint(80, 95))


def make_dataset(zip_path, n, root):
    """`root/{train,validation}/{cats,dogs}/*.jpg`, n images in all."""
    marker = os.path.join(root, ".complete")
    if os.path.exists(marker):
        return
    z = zipfile.ZipFile(zip_path)
    photos = {}
    for name in z.namelist():
        if name.lower().endswith(".jpg"):
            cls = "cats" if "/cats/" in name else "dogs"
            photos.setdefault(cls, []).append(name)
    jobs = []
    for i in range(n):
        cls = "cats" if i % 2 == 0 else "dogs"
        split = "validation" if i % 3 == 2 else "train"
        src = photos[cls][(i // 2) % len(photos[cls])]
        d = os.path.join(root, split, cls)
        os.makedirs(d, exist_ok=True)
        jobs.append((src, os.path.join(d, f"{i:06d}.jpg"), i))
    cache = {}
    with mp.Pool(os.cpu_count()) as pool:
        batch = []
        for src, dst, seed in jobs:
            if src not in cache:
                cache[src] = z.read(src)
            batch.append((cache[src], dst, seed))
            if len(batch) == 512:
                pool.map(make_one, batch)
                batch = []
        pool.map(make_one, batch)
    open(marker, "w").close()


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_train(exe, data, out, args):
    cmd = [exe, "train", "--data", data, "--out", out, "--variant", args.variant, "--json-events", "--recipe", "notebook",
           "--frozen-epochs", "1", "--finetune-epochs", "1", "--patience", "0",
           "--batch-size", str(args.batch), "--checkpoint-minutes", "0"]
    if args.weights:
        cmd += ["--weights", args.weights]
    if os.path.isdir(out):
        cmd.append("--resume")
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    phase = ["cache"]
    peaks = {}
    stamps = {}  # phase -> (first time, last time, first step, last step)
    messages = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            r = rss_mib(p.pid)
            if r is not None:
                peaks[phase[0]] = max(peaks.get(phase[0], 0), r)
            time.sleep(args.sample_ms / 1000)

    threading.Thread(target=sample, daemon=True).start()
    for line in p.stderr:
        now = time.time() - t0
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        kind = ev.get("type")
        if kind == "progress":
            stage = {"features": "features", "frozen": "stage1", "finetune": "stage2"}[ev["stage"]]
            phase[0] = stage
            first = stamps.get(stage)
            stamps[stage] = (first[0] if first else now, now, first[2] if first else ev["step"], ev["step"])
        elif kind == "epoch" and ev["stage"] == "frozen":
            phase[0] = "stage1"
        elif kind == "message":
            messages.append(ev["text"])
    p.wait()
    done.set()
    if p.returncode != 0:
        sys.exit(f"train failed ({p.returncode}): {' '.join(cmd)}")
    rate = {}
    for stage, (a, b, s0, s1) in stamps.items():
        if b > a and s1 > s0:
            rate[stage] = round((s1 - s0) * args.batch / (b - a), 1)
    return {"seconds": round(time.time() - t0, 1), "peak_rss_mib": {k: round(v) for k, v in peaks.items()},
            "img_per_s": rate, "messages": [m for m in messages if m.startswith(("pixel cache", "feature pass"))]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zip", required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000, 100000])
    ap.add_argument("--variant", default="tiny", choices=["tiny", "full"])
    ap.add_argument("--weights")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--work", default="/tmp/tuneserve-datasets-bench")
    ap.add_argument("--exe", default="target/release/tuneserve")
    ap.add_argument("--compare-bench", action="store_true")
    ap.add_argument("--sample-ms", type=float, default=100, help="RSS sampling interval")
    ap.add_argument("--out")
    args = ap.parse_args()
    results = []
    for n in args.sizes:
        data = os.path.join(args.work, f"data-{n}")
        t = time.time()
        make_dataset(args.zip, n, data)
        made = round(time.time() - t, 1)
        out = os.path.join(args.work, f"run-{n}-{args.variant}")
        subprocess.run(["rm", "-rf", out], check=True)
        first = run_train(args.exe, data, out, args)
        # Same dataset and size again: the pixel cache is reused, nothing decoded.
        again_out = out + "-again"
        subprocess.run(["rm", "-rf", again_out], check=True)
        os.makedirs(again_out)
        subprocess.run(["cp", "-r", os.path.join(out, "pixel-cache"), again_out], check=True)
        again = run_train(args.exe, data, again_out, args)
        r = {"images": n, "dataset_made_s": made, "first": first, "second": again}
        print(json.dumps(r), flush=True)
        results.append(r)
    if args.compare_bench:
        for w in ("infer", "stage2"):
            cmd = [args.exe, "bench", "--workload", w, "--batch", str(args.batch), "--iters", "4", "--warmup", "1"]
            if args.weights:
                cmd += ["--weights", args.weights]
            line = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            print(line, flush=True)
            results.append({"bench": json.loads(line)})
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
