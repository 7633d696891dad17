#!/usr/bin/env python3
"""Runs tuneserve's benchmarks and the Keras / PyTorch peers back to back on
this machine and prints a markdown table with ratios (higher is better for
tuneserve). Stdlib only; the peers run in their own venv (bench/peers/README.md).

  python3 bench/compare.py [--peers-python /work/peers-venv/bin/python]
        [--data ../shared/datasets/cats_and_dogs_filtered.zip]
        [--weights ../shared/weights/xception_weights_tf_dim_ordering_tf_kernels_notop.h5]
        [--out docs/benchmarks.md]
"""
import argparse, json, os, platform, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


CACHE = {}


def run_json(cmd, env=None):
    """Runs one benchmark command; results are kept in --cache so a failed
    later step does not lose (or re-measure) the earlier ones."""
    key = " ".join(cmd)
    if key in CACHE:
        return CACHE[key]
    print("$", key, file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    CACHE[key] = json.loads(lines[-1])
    if CACHE_FILE:
        with open(CACHE_FILE, "w") as fh:
            json.dump(CACHE, fh)
    return CACHE[key]


CACHE_FILE = None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peers-python", default="/work/peers-venv/bin/python")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/tuneserve"))
    fx = os.environ.get("TUNESERVE_FIXTURES", os.path.join(ROOT, "..", "shared"))
    ap.add_argument("--data", default=os.path.join(fx, "datasets/cats_and_dogs_filtered.zip"))
    ap.add_argument("--weights", default=os.path.join(fx, "weights/xception_weights_tf_dim_ordering_tf_kernels_notop.h5"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip-recipe", action="store_true")
    ap.add_argument("--iters", default="5")
    ap.add_argument("--all-peers", action="store_true", help="also PyTorch eager without channels_last")
    ap.add_argument("--cache", default=None, help="JSON file keeping finished measurements between runs")
    a = ap.parse_args()
    global CACHE_FILE
    CACHE_FILE = a.cache
    if a.cache and os.path.exists(a.cache):
        CACHE.update(json.load(open(a.cache)))

    rows = []
    ours = {}
    for w in ["infer", "latency", "stage2"]:
        ours[w] = run_json([a.bin, "bench", "--workload", w, "--weights", a.weights, "--iters", a.iters])
    peers = {}
    peer_env = dict(os.environ, PYTHONUNBUFFERED="1")
    configs = [("keras", []), ("torch", ["--channels-last"])] + ([("torch", [])] if a.all_peers else [])
    for fw, extra in configs:
        name = fw + ("-cl" if extra else "")
        for w in ["infer", "latency", "stage1", "stage2"]:
            try:
                peers[(name, w)] = run_json([a.peers_python, os.path.join(ROOT, "bench/peers/peers.py"),
                                             "--framework", fw, "--workload", w] + extra, env=peer_env)
            except subprocess.CalledProcessError as e:
                print(f"peer {name} {w} failed: {e.stderr[-500:]}", file=sys.stderr)

    def ratio(x, y):
        return f"{x / y:.2f}x" if x and y else "-"

    def peer(name, w, key="img_per_s"):
        return peers.get((name, w), {}).get(key)

    for w, label in [("infer", "Xception 150 inference, img/s (batch 32)"), ("stage2", "Xception 150 stage 2, img/s (batch 32)")]:
        o = ours[w]["img_per_s"]
        k, t, tc = peer("keras", w), peer("torch", w), peer("torch-cl", w)
        rows.append((label, f"{o:.1f}", f"{k:.1f}" if k else "-", f"{t:.1f}" if t else "-", f"{tc:.1f}" if tc else "-", ratio(o, k), ratio(o, max(filter(None, [t, tc]), default=None))))
    lo = ours["latency"]["median_s"] * 1e3
    kl, tl, tcl = [peer(n, "latency", "median_s") for n in ["keras", "torch", "torch-cl"]]
    f = lambda v: f"{v * 1e3:.0f}" if v else "-"
    rows.append(("Xception 150 batch-1 latency, ms", f"{lo:.0f}", f(kl), f(tl), f(tcl),
                 ratio(kl * 1e3, lo) if kl else "-", ratio(min(filter(None, [tl, tcl])) * 1e3, lo) if (tl or tcl) else "-"))
    ro = ours["stage2"]["peak_rss_mib"]
    rk, rt, rtc = [peer(n, "stage2", "peak_rss_mib") for n in ["keras", "torch", "torch-cl"]]
    g = lambda v: f"{v / 1024:.2f}" if v else "-"
    rows.append(("Xception 150 stage 2 peak RSS, GiB (lower is better)", g(ro), g(rk), g(rt), g(rtc), ratio(rk, ro) if rk else "-", ratio(min(filter(None, [rt, rtc])), ro) if (rt or rtc) else "-"))

    if not a.skip_recipe:
        with tempfile.TemporaryDirectory() as d:
            t0 = time.time()
            subprocess.run([a.bin, "train", "--data", a.data, "--weights", a.weights, "--out", d,
                            "--frozen-epochs", "20", "--finetune-epochs", "0", "--patience", "0"],
                           check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            recipe = time.time() - t0
        # Keras's recipe pays the frozen base every epoch: 2000 training images at its stage-1
        # speed plus 1000 validation images at its inference speed, 20 times.
        ks1, ki = peer("keras", "stage1"), peer("keras", "infer")
        keras_recipe = 20 * (2000 / ks1 + 1000 / ki) if ks1 and ki else None
        ts1, ti = peer("torch-cl", "stage1"), peer("torch-cl", "infer")
        torch_recipe = 20 * (2000 / ts1 + 1000 / ti) if ts1 and ti else None
        s = lambda v: f"{v:.0f}" if v else "-"
        rows.append(("Stage-1 recipe (20 epochs, 2000 + 1000 photos), s (lower is better)", s(recipe), s(keras_recipe), "-", s(torch_recipe),
                     ratio(keras_recipe, recipe) if keras_recipe else "-", ratio(torch_recipe, recipe) if torch_recipe else "-"))

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    head = (f"Machine: {os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}; "
            f"{time.strftime('%Y-%m-%d %H:%M')}. Same machine, same run, 2 threads each.\n\n")
    table = "| workload | tuneserve | Keras/TF | PyTorch eager | PyTorch channels_last | vs Keras | vs best PyTorch |\n|---|---|---|---|---|---|---|\n"
    table += "\n".join("| " + " | ".join(r) + " |" for r in rows) + "\n"
    raw = "\n<details><summary>raw JSON</summary>\n\n```\n" + "\n".join(json.dumps(v) for v in list(ours.values()) + list(peers.values())) + "\n```\n</details>\n"
    report = head + table + raw
    print(report)
    if a.out:
        with open(a.out, "w") as fh:
            fh.write("# Benchmarks\n\n" + report)


if __name__ == "__main__":
    main()
