#!/usr/bin/env python3
"""The benchmark report: runs tuneserve's benchmarks and the Keras / PyTorch
peers back to back on this machine, then /predict under load and a soak with
training running (bench/serve_load.py), and writes a markdown report with
ratios (higher is better for tuneserve) plus an SVG chart. Stdlib only; the
peers and the load script run in the peers' venv (bench/peers/README.md).

  python3 bench/compare.py [--peers-python /work/peers-venv/bin/python]
        [--data ../shared/datasets/cats_and_dogs_filtered.zip]
        [--weights ../shared/weights/xception_weights_tf_dim_ordering_tf_kernels_notop.h5]
        [--out docs/benchmarks.md] [--chart docs/benchmarks.svg]
        [--skip-recipe] [--skip-serve] [--load-seconds 60] [--soak-seconds 600]
"""
import argparse, html, json, os, platform, subprocess, sys, tempfile, time

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


def git_commit():
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(unknown commit)"


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
    ap.add_argument("--chart", default=None, help="SVG chart to write (default: next to --out)")
    ap.add_argument("--skip-serve", action="store_true", help="no /predict load test and soak")
    ap.add_argument("--load-seconds", default="60")
    ap.add_argument("--soak-seconds", default="600")
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

    serve = None
    if not a.skip_serve:
        serve = run_json([a.peers_python, os.path.join(ROOT, "bench/serve_load.py"), "--bin", a.bin, "--data", a.data,
                          "--weights", a.weights, "--duration", a.load_seconds, "--soak", a.soak_seconds, "--iters", a.iters],
                         env=peer_env)
        lv64 = next((l for l in serve["levels"] if l["clients"] == 64), None)
        if lv64:
            k, t, tc = peer("keras", "infer"), peer("torch", "infer"), peer("torch-cl", "infer")
            o = lv64["images_per_second"]
            rows.append(("/predict, 64 HTTP clients, img/s (peers: raw batch-32 model calls, no server)", f"{o:.1f}",
                         f"{k:.1f}" if k else "-", f"{t:.1f}" if t else "-", f"{tc:.1f}" if tc else "-",
                         ratio(o, k), ratio(o, max(filter(None, [t, tc]), default=None))))

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    # The widest SIMD decides the matmul kernels (ours and the peers'); machines
    # of the same name differ here, so the report says which one it ran on.
    flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
    cpu += ", AVX-512" if "avx512f" in flags else ", AVX2 (no AVX-512)" if "avx2" in flags else ""
    head = (f"Machine: {os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}; "
            f"{time.strftime('%Y-%m-%d %H:%M')}. Same machine, same run, 2 threads each.\n\n"
            f"tuneserve's CPU matrix products: {ours_matmul(ours)}.\n\n"
            f"Command: `python3 bench/compare.py {' '.join(sys.argv[1:])}` on tuneserve {git_commit()}.\n\n")
    table = "| workload | tuneserve | Keras/TF | PyTorch eager | PyTorch channels_last | vs Keras | vs best PyTorch |\n|---|---|---|---|---|---|---|\n"
    table += "\n".join("| " + " | ".join(r) + " |" for r in rows) + "\n"
    raw = "\n<details><summary>raw JSON</summary>\n\n```\n" + "\n".join(json.dumps(v) for v in list(ours.values()) + list(peers.values())) + "\n```\n</details>\n"
    report = head + table + (serve_section(serve) if serve else "") + raw
    print(report)
    if a.out:
        chart = a.chart or os.path.splitext(a.out)[0] + ".svg"
        with open(chart, "w") as fh:
            fh.write(svg_chart(rows, serve))
        with open(a.out, "w") as fh:
            fh.write("# Benchmarks\n\n" + f"![chart]({os.path.basename(chart)})\n\n" + report)


def ours_matmul(ours):
    names = {"openblas": "OpenBLAS (loaded at run time)", "gemm-crate": "the gemm crate (no OpenBLAS installed)"}
    kinds = sorted({v["cpu_matmul"] for v in ours.values() if "cpu_matmul" in v})
    return ", ".join(names.get(k, k) for k in kinds) or "?"


def serve_section(serve):
    raw = serve["raw_infer"]["img_per_s"]
    out = ["\n## /predict under load\n",
           f"`bench/serve_load.py`: a real `tuneserve serve` with a model trained through the API (Xception, real weights), "
           f"`tuneserve loadtest` sending 150x150 JPEGs, one per request, closed loop, {serve['duration_s']} s per level. "
           f"Raw batch-32 inference of the same binary in the same run: {raw:.1f} img/s.\n",
           "| clients | img/s | vs raw batch 32 | p50 ms | p95 ms | p99 ms | 429s | errors | server RSS MiB before -> after |",
           "|---|---|---|---|---|---|---|---|---|"]
    for l in serve["levels"]:
        rb, ra = l.get("rss_mib_before"), l.get("rss_mib_after")
        out.append(f"| {l['clients']} | {l['images_per_second']:.1f} | {l['images_per_second'] / raw:.2f}x | {l['latency_ms_p50']:.0f} | "
                   f"{l['latency_ms_p95']:.0f} | {l['latency_ms_p99']:.0f} | {l['rejected']} | {l['errors']} | "
                   f"{rb:.0f} -> {ra:.0f} |" if rb and ra else "| - |")
    soak = serve.get("soak")
    if soak:
        g = soak.get("rss_growth_after_warmup")
        out.append(f"\nSoak: {serve['soak_s']} s of 8 clients while a stage-2 training job runs in the same process "
                   f"(job {soak.get('job_status_at_end')} at the end, {soak.get('job_stage_at_end')} epoch {soak.get('job_epoch_at_end')}): "
                   f"{soak['images_per_second']:.1f} img/s, p99 {soak['latency_ms_p99']:.0f} ms, {soak['errors']} errors, "
                   f"{soak['rejected']} 429s. Server RSS after 2 min warm-up: median of the first 2 min "
                   f"{soak['rss_mib_median_first_2min']:.0f} MiB, of the last 2 min {soak['rss_mib_median_last_2min']:.0f} MiB: "
                   f"**growth {100 * g:.1f}%** (target < 5%). RSS swings within each training step, so single samples "
                   f"say less: the highest sample after warm-up was {soak['rss_mib_max_after_warmup']:.0f} MiB "
                   f"({100 * soak['rss_max_over_first_median']:+.1f}% over the first median), the last {soak['rss_mib_end']:.0f} MiB.\n")
        samples = ", ".join(f"{t:.0f}s {r:.0f}" for t, r in soak["rss_mib_samples"])
        out.append(f"RSS samples (s since start, MiB): {samples}\n")
    out.append(f"Server exit code after SIGTERM: {serve.get('server_exit_code')}; panics in its log: {serve.get('server_panics')}.\n")
    return "\n".join(out) + "\n"


def svg_chart(rows, serve):
    """Two panels: tuneserve / Keras per workload, and /predict latency by clients."""
    w, h = 900, 330 if serve else 260
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             '<rect width="100%" height="100%" fill="white"/>',
             '<text x="10" y="20" font-size="14" font-weight="bold">tuneserve vs Keras (same machine, same run; &gt;1 = tuneserve better)</text>']
    ratios = []
    for r in rows:
        try:
            ratios.append((r[0].split(",")[0], float(r[5].rstrip("x"))))
        except (ValueError, IndexError):
            pass
    top, bh, x0, scale = 35, 22, 330, 120
    parts.append(f'<line x1="{x0 + scale}" y1="{top - 5}" x2="{x0 + scale}" y2="{top + bh * len(ratios)}" stroke="#888" stroke-dasharray="4"/>')
    for i, (name, v) in enumerate(ratios):
        y = top + i * bh
        bw = min(v, 3.5) * scale
        color = "#2a9d8f" if v >= 1 else "#e76f51"
        parts.append(f'<text x="{x0 - 6}" y="{y + 14}" text-anchor="end">{html.escape(name[:52])}</text>')
        parts.append(f'<rect x="{x0}" y="{y + 3}" width="{bw:.0f}" height="{bh - 6}" fill="{color}"/>')
        parts.append(f'<text x="{x0 + bw + 4:.0f}" y="{y + 14}">{v:.2f}x</text>')
    if serve:
        levels = serve["levels"]
        px, py, pw, ph = 60, top + bh * len(ratios) + 40, 380, 110
        parts.append(f'<text x="10" y="{py - 12}" font-size="14" font-weight="bold">/predict p50 / p99 latency (ms, log) and img/s by concurrent clients</text>')
        import math
        maxlat = max(l["latency_ms_p99"] for l in levels)
        ly = lambda v: py + ph - ph * math.log10(max(v, 1)) / math.log10(max(maxlat, 10))
        lx = lambda i: px + i * pw / max(len(levels) - 1, 1)
        parts.append(f'<rect x="{px}" y="{py}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/>')
        for key, color in [("latency_ms_p50", "#264653"), ("latency_ms_p99", "#e76f51")]:
            pts = " ".join(f"{lx(i):.0f},{ly(l[key]):.0f}" for i, l in enumerate(levels))
            parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
        for i, l in enumerate(levels):
            parts.append(f'<text x="{lx(i):.0f}" y="{py + ph + 14}" text-anchor="middle">{l["clients"]}</text>')
            parts.append(f'<text x="{lx(i):.0f}" y="{ly(l["latency_ms_p99"]) - 4:.0f}" text-anchor="middle" fill="#e76f51">{l["latency_ms_p99"]:.0f}</text>')
            parts.append(f'<text x="{px + pw + 40}" y="{py + 14 + i * 18}">{l["clients"]} clients: {l["images_per_second"]:.1f} img/s, '
                         f'{l["rejected"]} x 429, {l["errors"]} errors</text>')
        parts.append(f'<text x="{px + pw + 40}" y="{py + 100}" fill="#264653">p50</text><text x="{px + pw + 80}" y="{py + 100}" fill="#e76f51">p99</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    main()
