#!/usr/bin/env python3
"""/predict under load, and a soak with a training job running.

Starts a real `tuneserve serve` (real Xception weights) on a temporary data
directory, trains a model on a slice of the cats & dogs photos through the API
(stage 1, one epoch: enough to publish a model), then:

1. raw: `tuneserve bench --workload infer` (batch 32) with the same binary, for
   the ratio the acceptance asks for;
2. load: `tuneserve loadtest` at 1, 8, 64 and 256 concurrent clients, 60 s
   each, on 150x150 JPEGs made from the validation photos, while /health is
   probed every 50 ms (its p99 per level);
3. soak: a stage-2 job on the whole dataset keeps training while 8 clients
   predict for 10 minutes; the server's RSS is sampled every 10 s.

Prints one JSON object (the levels, the soak, the raw throughput) on its last
line. Needs Pillow (the peers' venv has it: bench/peers/README.md).

  python bench/serve_load.py [--bin target/release/tuneserve] [--data ZIP]
      [--weights H5] [--duration 60] [--soak 600] [--clients 1,8,64,256]
"""
import argparse, io, json, os, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request, zipfile

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def http(method, url, body=None, ctype="application/json"):
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": ctype} if data else {})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read() or b"null")


def multipart(url, field, filename, payload):
    boundary = "tuneserve-bench-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/zip\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()
    return http("POST", url, body, f"multipart/form-data; boundary={boundary}")


def subset_zip(src, per_class_train, per_class_val):
    """The first N photos per class and split, as a zip in the same layout."""
    out = io.BytesIO()
    counts = {}
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as o:
        for n in sorted(z.namelist()):
            parts = n.split("/")
            if len(parts) < 4 or not n.lower().endswith(".jpg"):
                continue
            split, cls = parts[-3], parts[-2]
            limit = per_class_train if split == "train" else per_class_val
            if limit is not None and counts.get((split, cls), 0) >= limit:
                continue
            counts[(split, cls)] = counts.get((split, cls), 0) + 1
            o.writestr(n, z.read(n))
    return out.getvalue()


def jpegs_150(src, into, n=64):
    """n validation photos resized to 150x150 JPEGs (what the load sends)."""
    os.makedirs(into, exist_ok=True)
    with zipfile.ZipFile(src) as z:
        names = [x for x in sorted(z.namelist()) if "/validation/" in x and x.lower().endswith(".jpg")][:n]
        for i, x in enumerate(names):
            im = Image.open(io.BytesIO(z.read(x))).convert("RGB").resize((150, 150), Image.BILINEAR)
            im.save(os.path.join(into, f"{i:03d}.jpg"), quality=90)
    return into


def wait_job(base, job_id, timeout=3600):
    t0 = time.time()
    while time.time() - t0 < timeout:
        j = http("GET", f"{base}/v1/jobs/{job_id}")
        if j["status"] in ("succeeded", "failed", "cancelled"):
            return j
        time.sleep(2)
    raise RuntimeError(f"job {job_id} did not finish")


def loadtest(bin_, base, images, pid, clients, seconds, rss_every=10):
    out = subprocess.run([bin_, "loadtest", "--url", base, "--images", images, "--clients", clients,
                          "--duration-secs", str(seconds), "--server-pid", str(pid), "--rss-every-secs", str(rss_every)],
                         check=True, capture_output=True, text=True)
    return [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]


class HealthProbe:
    """GET /health every 50 ms in a thread while a load level runs: the
    operations endpoint must stay fast however loaded /predict is."""

    def __init__(self, base):
        import threading
        self.base, self.ms, self.errors = base, [], 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            t = time.perf_counter()
            try:
                with urllib.request.urlopen(f"{self.base}/health", timeout=10) as r:
                    r.read()
                self.ms.append(1000 * (time.perf_counter() - t))
            except OSError:
                self.errors += 1
            time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def summary(self):
        ms = sorted(self.ms)
        pick = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))] if ms else None
        return {"health_probes": len(ms), "health_errors": self.errors, "health_ms_p50": pick(0.5), "health_ms_p99": pick(0.99)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/tuneserve"))
    fx = os.environ.get("TUNESERVE_FIXTURES", os.path.join(ROOT, "..", "shared"))
    ap.add_argument("--data", default=os.path.join(fx, "datasets/cats_and_dogs_filtered.zip"))
    ap.add_argument("--weights", default=os.path.join(fx, "weights/xception_weights_tf_dim_ordering_tf_kernels_notop.h5"))
    ap.add_argument("--duration", type=int, default=60)
    ap.add_argument("--soak", type=int, default=600)
    ap.add_argument("--clients", default="1,8,64,256")
    ap.add_argument("--iters", default="5")
    a = ap.parse_args()

    result = {"workload": "serve", "duration_s": a.duration, "soak_s": a.soak}
    raw = subprocess.run([a.bin, "bench", "--workload", "infer", "--weights", a.weights, "--iters", a.iters],
                         check=True, capture_output=True, text=True)
    result["raw_infer"] = json.loads([l for l in raw.stdout.splitlines() if l.startswith("{")][-1])
    log("raw batch-32 inference:", round(result["raw_infer"]["img_per_s"], 1), "img/s")

    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server_log = open(os.path.join(d, "server.log"), "w")
        server = subprocess.Popen([a.bin, "serve", "--bind", f"127.0.0.1:{port}", "--data-dir", os.path.join(d, "data"),
                                   "--weights", a.weights], stdout=subprocess.DEVNULL, stderr=server_log)
        try:
            for _ in range(600):
                try:
                    http("GET", f"{base}/health")
                    break
                except OSError:
                    time.sleep(0.1)
            ds = multipart(f"{base}/v1/datasets", "file", "subset.zip", subset_zip(a.data, 50, 25))
            job = http("POST", f"{base}/v1/jobs", {"dataset_id": ds["id"], "hyperparameters": {
                "recipe": "notebook", "frozen_epochs": 1, "finetune_epochs": 0, "patience": 0}})
            done = wait_job(base, job["id"])
            assert done["status"] == "succeeded", done
            log("model published:", done["model_id"])
            images = jpegs_150(a.data, os.path.join(d, "img150"))

            result["levels"] = []
            for clients in a.clients.split(","):
                with HealthProbe(base) as probe:
                    lv = loadtest(a.bin, base, images, server.pid, clients, a.duration)[0]
                lv.update(probe.summary())
                result["levels"].append(lv)
                log(f"{lv['clients']:>4} clients: {lv['images_per_second']:.1f} img/s, p50 {lv['latency_ms_p50']:.0f} ms, "
                    f"p99 {lv['latency_ms_p99']:.0f} ms, 429s {lv['rejected']}, errors {lv['errors']}; "
                    f"/health p99 {lv['health_ms_p99']:.1f} ms ({lv['health_probes']} probes, {lv['health_errors']} errors)")

            if a.soak > 0:
                full = multipart(f"{base}/v1/datasets", "file", "full.zip", subset_zip(a.data, None, None))
                soak_job = http("POST", f"{base}/v1/jobs", {"dataset_id": full["id"], "hyperparameters": {
                    "recipe": "notebook", "frozen_epochs": 1, "finetune_epochs": 10, "patience": 0}})
                # Let the job get into its stride (features, then stage 2) before measuring.
                t0 = time.time()
                while time.time() - t0 < 900:
                    j = http("GET", f"{base}/v1/jobs/{soak_job['id']}")
                    if j.get("stage") == "finetune" or j["status"] != "running" and j["status"] != "queued":
                        break
                    time.sleep(2)
                j = http("GET", f"{base}/v1/jobs/{soak_job['id']}")
                assert j["status"] == "running", f"the soak's training job is not running: {j}"
                soak = loadtest(a.bin, base, images, server.pid, "8", a.soak)[0]
                j = http("GET", f"{base}/v1/jobs/{soak_job['id']}")
                soak["job_status_at_end"] = j["status"]
                soak["job_stage_at_end"] = j.get("stage")
                soak["job_epoch_at_end"] = j.get("epoch")
                samples = soak["rss_mib_samples"]
                warm = [(t, r) for t, r in samples if t >= 120]  # after two minutes of warm-up
                # RSS swings within every training step (the tape is built and
                # freed), so growth compares levels, not single samples: the
                # median of the first two minutes after warm-up against the
                # median of the last two. The highest sample is reported too.
                first = statistics.median(r for t, r in warm if t < warm[0][0] + 120) if warm else None
                last = statistics.median(r for t, r in warm if t > warm[-1][0] - 120) if warm else None
                peak = max(r for _, r in warm) if warm else None
                soak["rss_mib_after_warmup"] = warm[0][1] if warm else None
                soak["rss_mib_end"] = samples[-1][1] if samples else None
                soak["rss_mib_max_after_warmup"] = peak
                soak["rss_mib_median_first_2min"] = first
                soak["rss_mib_median_last_2min"] = last
                soak["rss_growth_after_warmup"] = last / first - 1 if warm else None
                soak["rss_max_over_first_median"] = peak / first - 1 if warm else None
                http("POST", f"{base}/v1/jobs/{soak_job['id']}/cancel")
                result["soak"] = soak
                log(f"soak: {soak['images_per_second']:.1f} img/s with training running, errors {soak['errors']}, "
                    f"RSS median first 2 min after warm-up {soak['rss_mib_median_first_2min']:.0f} MiB, last 2 min "
                    f"{soak['rss_mib_median_last_2min']:.0f} MiB: growth {100 * soak['rss_growth_after_warmup']:.1f}%; "
                    f"highest sample {soak['rss_mib_max_after_warmup']:.0f} MiB")
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=120)
            except subprocess.TimeoutExpired:
                server.kill()
            result["server_exit_code"] = server.returncode
            server_log.close()
            with open(os.path.join(d, "server.log")) as fh:
                panics = [l for l in fh if "panicked" in l]
            result["server_panics"] = len(panics)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
