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
        [--mobilenet-weights ../shared/weights/mobilenet_v2_tfhub_dogcat_model.h5]
        [--skip-recipe] [--skip-serve] [--load-seconds 60] [--soak-seconds 600] [--ood OOD_DIR]
"""
import argparse, html, json, os, platform, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


CACHE = {}


def run_json(cmd, env=None, key=None):
    """Runs one benchmark command; results are kept in --cache (under `key`,
    by default the command) so a failed later step does not lose (or
    re-measure) the earlier ones."""
    key = key or " ".join(cmd)
    if key in CACHE:
        return CACHE[key]
    print("$", key, file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    CACHE[key] = json.loads(lines[-1])
    save_cache()
    return CACHE[key]


CACHE_FILE = None


def save_cache():
    if CACHE_FILE:
        with open(CACHE_FILE, "w") as fh:
            json.dump(CACHE, fh)


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
    ap.add_argument("--mobilenet-weights", default=os.path.join(fx, "weights/mobilenet_v2_tfhub_dogcat_model.h5"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip-recipe", action="store_true")
    ap.add_argument("--iters", default="5")
    ap.add_argument("--latency-iters", default="30", help="timed batch-1 forwards per tuneserve latency run (the peers time 30)")
    ap.add_argument("--latency-rounds", default="5", help="interleaved latency runs per contender (batch-1 times swing most with the machine's phase; each run is short)")
    ap.add_argument("--throughput-rounds", default="3", help="interleaved Xception batch-32 inference runs per contender")
    ap.add_argument("--all-peers", action="store_true", help="also PyTorch eager without channels_last")
    ap.add_argument("--cache", default=None, help="JSON file keeping finished measurements between runs")
    ap.add_argument("--chart", default=None, help="SVG chart to write (default: next to --out)")
    ap.add_argument("--skip-serve", action="store_true", help="no /predict load test and soak")
    ap.add_argument("--load-seconds", default="60")
    ap.add_argument("--ood", default=None, help="cat/ and dog/ photos from another source for the reduced-precision accuracy guard (bench/ood/README.md)")
    ap.add_argument("--soak-seconds", default="600")
    a = ap.parse_args()
    global CACHE_FILE
    CACHE_FILE = a.cache
    if a.cache and os.path.exists(a.cache):
        CACHE.update(json.load(open(a.cache)))

    rows = []
    ours = {}
    low = reduced_precision()
    peer_env = dict(os.environ, PYTHONUNBUFFERED="1")
    configs = PEERS + ([("torch", "torch", [])] if a.all_peers else [])

    def ours_cmd(w, model="xception", precision=None, iters=None):
        return ([a.bin, "bench", "--workload", w, "--backbone", BACKBONE[model], "--size", str(dict(MODELS)[model]),
                 "--weights", a.weights if model == "xception" else a.mobilenet_weights, "--iters", iters or a.iters]
                + (["--warmup", "5"] if w == "latency" else []) + (["--precision", precision] if precision else []))

    def peer_cmd(fw, extra, w, model="xception"):
        return [a.peers_python, os.path.join(ROOT, "bench/peers/peers.py"), "--framework", fw,
                "--workload", w, "--model", model, "--size", str(dict(MODELS)[model])] + extra

    # Shared machines drift between fast and slow phases for minutes at a
    # time, so the headline Xception rows (batch-32 inference and batch-1
    # latency) run every contender in interleaved rounds; the median round
    # stands for it and the report lists all rounds.
    def interleaved(w, rounds, metric):
        cmds = {("ours", "f32"): ours_cmd(w, iters=a.latency_iters if w == "latency" else None),
                ("ours", low): ours_cmd(w, precision=low, iters=a.latency_iters if w == "latency" else None)}
        for name, fw, extra in configs:
            cmds[("peer", name)] = peer_cmd(fw, extra, w)
        runs = {k: [] for k in cmds}
        for r in range(int(rounds)):
            for k, cmd in cmds.items():
                try:
                    runs[k].append(run_json(cmd, env=peer_env, key=" ".join(cmd) + f" ({w} round {r + 1})"))
                except subprocess.CalledProcessError as e:
                    print(f"{' '.join(k)} {w} failed: {e.stderr[-500:]}", file=sys.stderr)
        median = {k: sorted(v, key=lambda j: j[metric])[len(v) // 2] for k, v in runs.items() if v}
        return median, runs

    throughput, throughput_runs = interleaved("infer", a.throughput_rounds, "img_per_s")
    latency, latency_runs = interleaved("latency", a.latency_rounds, "median_s")
    ours[("xception", "infer")] = throughput[("ours", "f32")]
    ours[("xception", "latency")] = latency[("ours", "f32")]
    lowp = {"infer": throughput[("ours", low)], "latency": latency[("ours", low)]}
    peers = {}
    for name, _, _ in configs:
        for w, median in [("infer", throughput), ("latency", latency)]:
            if ("peer", name) in median:
                peers[(name, "xception", w)] = median[("peer", name)]

    # The other rows: one run each.
    for model, _ in MODELS:
        for w in ["infer", "stage2"]:
            if (model, w) not in ours:
                ours[(model, w)] = run_json(ours_cmd(w, model))
    for model, _ in MODELS:
        workloads = ["stage1", "stage2"] if model == "xception" else ["infer", "stage2"]
        for name, fw, extra in configs:
            for w in workloads:
                try:
                    peers[(name, model, w)] = run_json(peer_cmd(fw, extra, w, model), env=peer_env)
                except subprocess.CalledProcessError as e:
                    print(f"peer {name} {model} {w} failed: {e.stderr[-500:]}", file=sys.stderr)

    def rounds_note(what, runs, metric, fmt):
        return (f"{what}: " + "; ".join(f"{'tuneserve ' + k[1] if k[0] == 'ours' else PEER_LABEL[k[1]]} "
                                        + ", ".join(fmt(j[metric]) for j in v) for k, v in runs.items()))
    latency_note = ("\nXception 150 batch-32 inference and batch-1 latency: " + str(a.throughput_rounds) + " and "
                    + str(a.latency_rounds) + " interleaved rounds per contender, the median round shown. All rounds. "
                    + rounds_note("Inference, img/s", throughput_runs, "img_per_s", lambda v: f"{v:.1f}") + ". "
                    + rounds_note("Latency, ms", latency_runs, "median_s", lambda v: f"{v * 1e3:.1f}") + ".\n")

    def peer(name, model, w, key="img_per_s"):
        return peers.get((name, model, w), {}).get(key)

    names = [n for n, _, _ in configs]
    torch_names = [n for n in names if n != "keras"]

    def row(label, ours_v, peer_vs, fmt, lower_better=False):
        """One table line: our value, each peer's, and the ratios (>1 = tuneserve better)."""
        def ratio(p):
            if not (ours_v and p):
                return "-"
            return f"{(p / ours_v if lower_better else ours_v / p):.2f}x"
        best = lambda vs: (min if lower_better else max)(filter(None, vs), default=None)
        cells = [fmt(ours_v)] + [fmt(peer_vs[n]) if peer_vs.get(n) else "-" for n in names]
        rows.append((label, *cells, ratio(peer_vs.get("keras")), ratio(best([peer_vs.get(n) for n in torch_names])),
                     ratio(best(list(peer_vs.values())))))

    f1 = lambda v: f"{v:.1f}"
    for model, size in MODELS:
        title = f"{LABEL[model]} {size}"
        for w, what in [("infer", "inference"), ("stage2", "stage 2")]:
            row(f"{title} {what}, img/s (batch 32)", ours[(model, w)]["img_per_s"],
                {n: peer(n, model, w) for n in names}, f1)
        if model == "xception":
            row(f"{title} batch-1 latency, ms (lower is better)", ours[(model, "latency")]["median_s"] * 1e3,
                {n: (peer(n, model, "latency", "median_s") or 0) * 1e3 for n in names}, lambda v: f"{v:.0f}", lower_better=True)
        row(f"{title} stage 2 peak RSS, GiB (lower is better)", ours[(model, "stage2")]["peak_rss_mib"] / 1024,
            {n: (peer(n, model, "stage2", "peak_rss_mib") or 0) / 1024 for n in names}, lambda v: f"{v:.2f}", lower_better=True)
        gflops = ours[(model, "infer")].get("gflop_per_s")
        if gflops:
            # tuneserve counts the network's multiply-adds x 2 per image (`bench`).
            rows.append((f"{title} inference, sustained GFLOP/s (tuneserve)", f"{gflops:.0f}", *["-"] * (len(names) + 3)))

    ran_low = all(v.get("precision") == low for v in lowp.values())
    low_label = f"{low} products (opt-in; peers f32)" if ran_low else f"{low} asked, f32 ran"
    row(f"Xception 150 inference, {low_label}, img/s (batch 32)", lowp["infer"]["img_per_s"],
        {n: peer(n, "xception", "infer") for n in names}, f1)
    row(f"Xception 150 batch-1 latency, {low_label}, ms (lower is better)", lowp["latency"]["median_s"] * 1e3,
        {n: (peer(n, "xception", "latency", "median_s") or 0) * 1e3 for n in names}, lambda v: f"{v:.1f}", lower_better=True)
    guard = None if a.skip_recipe else accuracy_guard(a, low)

    if not a.skip_recipe:
        recipe = timed(f"tuneserve recipe {a.data}", [a.bin, "train", "--data", a.data, "--weights", a.weights, "--out", "{tmp}",
                                                        "--recipe", "notebook", "--frozen-epochs", "20", "--finetune-epochs", "0", "--patience", "0"])
        # Keras with the same algorithm: features of the 3000 photos once (predict), then the head on them.
        keras_recipe = None
        try:
            keras_recipe = timed(f"keras recipe {a.data}", [a.peers_python, os.path.join(ROOT, "bench/peers/accuracy.py"), "features",
                                                            "--work", "{tmp}", "--data", a.data, "--weights", a.weights],
                                 then=[a.peers_python, os.path.join(ROOT, "bench/peers/accuracy.py"), "heads", "--work", "{tmp}",
                                       "--seeds", "0"], env=peer_env)
        except subprocess.CalledProcessError as e:
            print(f"keras recipe failed: {e.stderr[-500:]}", file=sys.stderr)
        row("Stage-1 recipe, features once + 20 head epochs (2000 + 1000 photos), s (lower is better; measured)",
            recipe, {"keras": keras_recipe}, lambda v: f"{v:.0f}", lower_better=True)
        # The literal notebook runs the frozen base every epoch: 2000 training images at the
        # stage-1 step speed plus 1000 validation images at inference speed, 20 times.
        literal = {n: 20 * (2000 / peer(n, "xception", "stage1") + 1000 / peer(n, "xception", "infer"))
                   for n in names if peer(n, "xception", "stage1") and peer(n, "xception", "infer")}
        row("Stage 1 as the notebook literally runs it (base re-run every epoch; peers estimated from their measured step "
            "speeds) against tuneserve's measured recipe, s (lower is better)",
            recipe, literal, lambda v: f"{v:.0f}", lower_better=True)

    serve = None
    if not a.skip_serve:
        serve = run_json([a.peers_python, os.path.join(ROOT, "bench/serve_load.py"), "--bin", a.bin, "--data", a.data,
                          "--weights", a.weights, "--duration", a.load_seconds, "--soak", a.soak_seconds, "--iters", a.iters],
                         env=peer_env)
        lv64 = next((l for l in serve["levels"] if l["clients"] == 64), None)
        if lv64:
            row("/predict, 64 HTTP clients, img/s (peers: raw batch-32 model calls, no server)", lv64["images_per_second"],
                {n: peer(n, "xception", "infer") for n in names}, f1)

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    # The widest SIMD decides the matmul kernels (ours and the peers'); machines
    # of the same name differ here, so the report says which one it ran on.
    flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
    cpu += ", AVX-512" if "avx512f" in flags else ", AVX2 (no AVX-512)" if "avx2" in flags else ""
    head = (f"Machine: {os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}; "
            f"{time.strftime('%Y-%m-%d %H:%M')}. Same machine, same run, 2 threads each.\n\n"
            f"tuneserve's CPU matrix products: {ours_matmul(ours)}. Peers: {peer_versions(peers)}.\n\n"
            f"Command: `python3 bench/compare.py {' '.join(sys.argv[1:])}` on tuneserve {git_commit()}.\n\n")
    table = ("| workload | tuneserve | " + " | ".join(PEER_LABEL[n] for n in names) + " | vs Keras | vs best PyTorch | vs best peer |\n"
             + "|---" * (len(names) + 5) + "|\n")
    table += "\n".join("| " + " | ".join(r) + " |" for r in rows) + "\n"
    raw = ("\n<details><summary>raw JSON</summary>\n\n```\n"
           + "\n".join(json.dumps(v) for v in list(ours.values()) + list(lowp.values()) + list(peers.values())
                        + [j for runs in (throughput_runs, latency_runs) for v in runs.values() for j in v]) + "\n```\n</details>\n")
    report = head + table + latency_note + (guard_section(guard, low, ran_low) if guard else "") + (serve_section(serve) if serve else "") + kept_notes(a.out) + raw
    print(report)
    if a.out:
        chart = a.chart or os.path.splitext(a.out)[0] + ".svg"
        with open(chart, "w") as fh:
            fh.write(svg_chart(rows, serve))
        with open(a.out, "w") as fh:
            fh.write("# Benchmarks\n\n" + f"![chart]({os.path.basename(chart)})\n\n" + report)


MODELS = [("xception", 150), ("mobilenetv2", 160)]
BACKBONE = {"xception": "xception", "mobilenetv2": "mobilenet_v2"}
LABEL = {"xception": "Xception", "mobilenetv2": "MobileNetV2"}
# (name, framework, peers.py flags): the peers a speed-minded user would pick.
PEERS = [("keras", "keras", []), ("torch-cl", "torch", ["--channels-last"]),
         ("torch-compile", "torch", ["--channels-last", "--compile"])]
PEER_LABEL = {"keras": "Keras/TF", "torch-cl": "PyTorch eager (channels_last)",
              "torch-compile": "PyTorch torch.compile (+freezing for inference)", "torch": "PyTorch eager (NCHW)"}


def timed(key, cmd, then=None, env=None):
    """Wall seconds of `cmd` (and `then` after it) in a fresh temporary folder
    ({tmp} in the arguments); kept in --cache like run_json's results."""
    if key in CACHE:
        return CACHE[key]
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        for c in [cmd] + ([then] if then else []):
            c = [x.replace("{tmp}", d) for x in c]
            print("$", " ".join(c), file=sys.stderr, flush=True)
            subprocess.run(c, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        CACHE[key] = time.time() - t0
    save_cache()
    return CACHE[key]


def reduced_precision():
    """The opt-in product format that is faster than f32 on this CPU: bf16
    with AVX-512 BF16, else int16 (16-bit fixed point, AVX2)."""
    with open("/proc/cpuinfo") as f:
        return "bf16" if "avx512_bf16" in f.read().split() else "int16"


def accuracy_guard(a, low):
    """The accuracy guard of `low` products: a stage-1 model trained on the
    seed data (the notebook's 20 head epochs), then its predictions with f32
    and with `low` products for every validation photo and (--ood) every
    photo from another source (bench/ood/README.md). Kept in --cache."""
    key = f"{low} accuracy guard {a.data} {a.ood}"
    if key in CACHE:
        return CACHE[key]
    import zipfile
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "out")
        train = [a.bin, "train", "--data", a.data, "--weights", a.weights, "--out", out, "--recipe", "notebook",
                 "--frozen-epochs", "20", "--finetune-epochs", "0", "--patience", "0", "--device", "cpu"]
        print("$", " ".join(train), file=sys.stderr, flush=True)
        subprocess.run(train, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with zipfile.ZipFile(a.data) as z:
            names = [n for n in z.namelist() if "/validation/" in n and n.lower().endswith((".jpg", ".jpeg", ".png"))]
            z.extractall(os.path.join(d, "val"), members=names)
        sets = {"seed validation": sorted(os.path.join(d, "val", n) for n in names)}
        if a.ood:
            sets["another source"] = sorted(os.path.join(a.ood, c, f) for c in ("cat", "dog") for f in os.listdir(os.path.join(a.ood, c)))
        result = {}
        for name, paths in sets.items():
            # The class is the folder: cats/dogs in the seed data, cat/dog elsewhere.
            truth = {p: os.path.basename(os.path.dirname(p)).rstrip("s") for p in paths}
            labels = {}
            for precision in ["f32", low]:
                cmd = [a.bin, "predict", "--checkpoint", out, "--device", "cpu", "--serving-precision", precision]
                print("$", " ".join(cmd), f"({len(paths)} photos)", file=sys.stderr, flush=True)
                res = subprocess.run(cmd + paths, check=True, capture_output=True, text=True)
                labels[precision] = {l["path"]: l["label"].rstrip("s") for l in map(json.loads, res.stdout.splitlines()) if "label" in l}
            acc = {k: sum(v.get(p) == t for p, t in truth.items()) / len(paths) for k, v in labels.items()}
            same = sum(labels["f32"].get(p) == labels[low].get(p) for p in paths) / len(paths)
            result[name] = {"photos": len(paths), "accuracy_f32": acc["f32"], "accuracy_low": acc[low], "same_label": same}
    CACHE[key] = result
    save_cache()
    return result


def guard_section(guard, low, ran_low):
    ran = "" if ran_low else f" (this CPU does not run {low}: both ran f32)"
    lines = [f"\n{low} accuracy guard{ran}, measured: a stage-1 Xception model (notebook recipe, 20 head epochs on the seed "
             f"data) predicts each set with f32 and with {low} products; the goal is accuracy within 0.2 points.\n",
             f"| photos | count | accuracy f32 | accuracy {low} | difference, points | same label |", "|---|---|---|---|---|---|"]
    for name, g in guard.items():
        lines.append(f"| {name} | {g['photos']} | {100 * g['accuracy_f32']:.1f}% | {100 * g['accuracy_low']:.1f}% | "
                     f"{100 * (g['accuracy_low'] - g['accuracy_f32']):+.1f} | {100 * g['same_label']:.1f}% |")
    return "\n".join(lines) + "\n"


def peer_versions(peers):
    seen = {}
    for v in peers.values():
        for k in ("tf_version", "keras_version", "torch_version", "timm_version"):
            if k in v:
                seen[k.removesuffix("_version")] = v[k]
    return ", ".join(f"{k} {v}" for k, v in seen.items()) or "none ran"


NOTES_BEGIN, NOTES_END = "<!-- notes: kept by bench/compare.py -->", "<!-- /notes -->"


def kept_notes(out):
    """The hand-written sections of an earlier report (between the notes
    markers), carried into the new one."""
    try:
        text = open(out).read() if out else ""
    except OSError:
        return ""
    if NOTES_BEGIN not in text or NOTES_END not in text:
        return ""
    return "\n" + text[text.index(NOTES_BEGIN):text.index(NOTES_END) + len(NOTES_END)] + "\n"


def ours_matmul(ours):
    def name(k):
        if k.startswith("openblas"):
            return "OpenBLAS (loaded at run time), kernels " + k.partition("(")[2].rstrip(")")
        return "the gemm crate (no OpenBLAS installed)" if k == "gemm-crate" else k
    kinds = sorted({v["cpu_matmul"] for v in ours.values() if "cpu_matmul" in v})
    return ", ".join(name(k) for k in kinds) or "?"


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
            ratios.append((r[0].split(",")[0], float(r[-3].rstrip("x"))))
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
