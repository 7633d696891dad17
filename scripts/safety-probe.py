#!/usr/bin/env python3
"""Checks, over HTTP, what an operator must be able to rely on before exposing a
tuneserve build: keyed reads, browser origins and hosts, public binds without a
key, memory admission, crash loops, upload bounds, the prediction pixel budget.
It drives any build through its CLI and API only, so it also runs against
builds that predate today's flags (to show what they let through).

usage: TUNESERVE_FIXTURES=../shared scripts/safety-probe.py path/to/tuneserve
Prints one line per check: PASS (the safe behaviour) or FAIL (what was seen).
Needs requests and Pillow (pip).
"""
import io, os, signal, socket, subprocess, sys, tempfile, threading, time, zipfile

import requests
from PIL import Image

BIN = sys.argv[1]
results = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def image_bytes(bright, seed, fmt="PNG"):
    img = Image.new("RGB", (40, 40))
    base = 200 if bright else 40
    img.putdata([(max(0, min(255, base + (x * 7 + y * 13 + seed * 31) % 40 - 20)),) * 3 for y in range(40) for x in range(40)])
    b = io.BytesIO()
    img.save(b, fmt)
    return b.getvalue()


def zip_of(entries):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            z.writestr(name, data)
    return b.getvalue()


def two_class(train, val):
    e = []
    for split, n in (("train", train), ("validation", val)):
        for i in range(n):
            e.append((f"{split}/bright/b{i}.png", image_bytes(True, i)))
            e.append((f"{split}/dark/d{i}.jpg", image_bytes(False, i, "JPEG")))
    return e


class Server:
    def __init__(self, data_dir, extra=(), env=None, bind=None):
        self.port = free_port()
        self.bind = bind or f"127.0.0.1:{self.port}"
        self.base = f"http://127.0.0.1:{self.port}"
        self.data_dir, self.extra, self.env = data_dir, list(extra), env
        self.start()

    def start(self):
        env = dict(os.environ)
        env.pop("TUNESERVE_API_KEY", None)
        env.update(self.env or {})
        self.proc = subprocess.Popen(
            [BIN, "serve", "--bind", self.bind, "--data-dir", self.data_dir, "--progress-every", "1", *self.extra],
            env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.data_dir, "server.log"), "ab"))
        for _ in range(300):
            if self.proc.poll() is not None:
                return
            try:
                requests.get(self.base + "/health", timeout=1)
                return
            except requests.RequestException:
                time.sleep(0.1)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def upload(self, entries, headers=None):
        return requests.post(self.base + "/v1/datasets", files={"file": ("d.zip", zip_of(entries))}, headers=headers or {})


def check(item, name, ok, seen):
    results.append((item, name, ok, seen))
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {seen}", flush=True)


def tiny_job(ds, frozen=1, finetune=0):
    return {"dataset_id": ds, "variant": "tiny", "hyperparameters": {"image_size": 71, "batch_size": 8,
            "frozen_epochs": frozen, "finetune_epochs": finetune, "finetune_lr": 1e-4, "patience": 0}}


def main():
    # Item 2a and 3: a keyed server.
    with tempfile.TemporaryDirectory() as d:
        s = Server(d, env={"TUNESERVE_API_KEY": "probe-key-123456", "TUNESERVE_WEIGHTS": os.path.join(os.environ["TUNESERVE_FIXTURES"], "weights", "xception_weights_tf_dim_ordering_tf_kernels_notop.h5")})
        auth = {"Authorization": "Bearer probe-key-123456"}
        r = s.upload(two_class(4, 2), headers=auth)
        ds = r.json()["id"]
        r = requests.post(s.base + "/v1/jobs", headers=auth,
                          json={"dataset_id": ds, "hyperparameters": {"image_size": 1024, "batch_size": 1024}})
        check(2, "image_size 1024 x batch 1024 refused", r.status_code == 422, f"{r.status_code} {r.text[:120]}")
        if r.status_code == 201:
            requests.post(s.base + f"/v1/jobs/{r.json()['id']}/cancel", headers=auth)
        for route in ["/v1/datasets", "/v1/models", f"/v1/datasets/{ds}", "/v1/jobs"]:
            r = requests.get(s.base + route)
            check(3, f"GET {route} without the key", r.status_code == 401, r.status_code)
        r = requests.post(s.base + "/v1/predict", headers={"content-type": "image/png"}, data=image_bytes(True, 0))
        check(3, "POST /v1/predict without the key", r.status_code == 401, r.status_code)
        s.kill()

    # Item 4: keyless, foreign Origin and Host.
    with tempfile.TemporaryDirectory() as d:
        s = Server(d)
        r = s.upload(two_class(3, 0), headers={"Origin": "http://evil.example"})
        check(4, "upload from Origin evil.example", r.status_code == 403, r.status_code)
        r = requests.get(s.base + "/v1/datasets", headers={"Host": "evil.example"})
        check(4, "request with Host evil.example", r.status_code == 403, r.status_code)

        # Item 6: an entry over the 64 MiB cap refuses the archive.
        e = two_class(3, 0)
        e.insert(0, ("train/bright/huge.png", b"\0" * (65 << 20)))
        r = s.upload(e)
        check(6, "zip entry over the per-file cap refuses the archive", r.status_code == 413, f"{r.status_code} {r.text[:100]}")
        # Item 6: concurrent uploads bounded (default 2 -> a third waits with 429).
        big = zip_of([(f"{'a' if i % 2 else 'b'}/{i}.jpg", image_bytes(i % 2 == 0, i, "JPEG")) for i in range(4000)])
        codes = []

        def slow_upload():
            def gen():
                yield big[: len(big) // 2]
                time.sleep(3)
                yield big[len(big) // 2:]
            codes.append(requests.post(s.base + "/v1/datasets", data=gen(), headers={"content-type": "application/zip"}).status_code)

        ts = [threading.Thread(target=slow_upload) for _ in range(2)]
        [t.start() for t in ts]
        time.sleep(1)
        r = requests.post(s.base + "/v1/datasets", data=zip_of(two_class(3, 0)), headers={"content-type": "application/zip"})
        [t.join() for t in ts]
        check(6, "a third concurrent upload gets 429", r.status_code == 429, f"{r.status_code} (slow ones {codes})")
        r = requests.post(s.base + "/v1/datasets", files={"file": ("d.zip", zip_of(two_class(3, 0)))}, data={"name": "x" * (1 << 20)})
        check(6, "a 1 MiB name field refused", r.status_code == 422, r.status_code)

        # Item 7: a request over the pixel budget (default 128 Mpx; 3 x 8000x6000 declared) refused before decoding.
        def png_declaring(w, h):
            import struct, zlib
            def chunk(kind, data):
                return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
            return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
        import base64
        ds = s.upload(two_class(4, 2)).json()["id"]
        job = requests.post(s.base + "/v1/jobs", json=tiny_job(ds, 1, 0)).json()["id"]
        for _ in range(600):
            if requests.get(s.base + f"/v1/jobs/{job}").json()["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.2)
        imgs = [base64.b64encode(png_declaring(8000, 6000)).decode() for _ in range(3)]
        r = requests.post(s.base + "/v1/predict", json={"images": imgs})
        check(7, "3 x 48 Mpx in one request refused by the pixel budget", r.status_code == 413, f"{r.status_code} {r.text[:100]}")
        s.kill()

    # Item 5: public bind without a key.
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        env = dict(os.environ)
        env.pop("TUNESERVE_API_KEY", None)
        p = subprocess.Popen([BIN, "serve", "--bind", f"0.0.0.0:{port}", "--data-dir", d], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(4)
        started = p.poll() is None
        if started:
            p.kill()
            p.wait()
        check(5, "serve --bind 0.0.0.0 without a key refuses to start", not started, "running" if started else f"exit {p.returncode}")

    # Item 2b: a job that kills its process at each start.
    with tempfile.TemporaryDirectory() as d:
        s = Server(d)
        ds = s.upload(two_class(12, 4)).json()["id"]
        job = requests.post(s.base + "/v1/jobs", json=tiny_job(ds, 1, 500)).json()["id"]
        statuses = []
        for death in range(4):
            t0 = time.time()
            st = None
            while time.time() - t0 < 60:
                try:
                    st = requests.get(s.base + f"/v1/jobs/{job}").json()["status"]
                except requests.RequestException:
                    st = None
                if st in ("running", "failed"):
                    break
                time.sleep(0.1)
            statuses.append(st)
            if st != "running":
                break
            s.kill()
            s.start()
        final = requests.get(s.base + f"/v1/jobs/{job}").json()["status"]
        check(2, "a job SIGKILLed at each start ends failed (default 3 attempts)", final == "failed",
              f"statuses seen at each start {statuses}, final {final}")
        s.kill()

    fails = [r for r in results if not r[2]]
    print(f"{len(results) - len(fails)} passed, {len(fails)} failed")


main()
