#!/usr/bin/env python3
"""Make the README's screenshots from a real run: the cats & dogs archive
uploaded through the page, Xception with the ImageNet weights trained with
the default stage 1 and one stage-2 epoch, then two validation photos
classified through the page.

usage: screenshots.py --bin target/release/tuneserve --data cats_and_dogs_filtered.zip \
           --weights xception_weights_tf_dim_ordering_tf_kernels_notop.h5 [--out docs/screenshots]

Needs Debian's chromium and chromium-driver and `pip install selenium`
(a few minutes of CPU: stage 1 of the real network, one stage-2 epoch).
"""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(driver, js: str, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        v = driver.execute_script("return " + js)
        if v:
            return v
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def set_value(driver, css: str, value: str) -> None:
    e = driver.find_element(By.CSS_SELECTOR, css)
    e.clear()
    e.send_keys(value)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--data", required=True, help="cats_and_dogs_filtered.zip")
    ap.add_argument("--weights", required=True, help="the Keras Xception notop .h5")
    ap.add_argument("--out", default="docs/screenshots")
    ap.add_argument("--finetune-epochs", default="1")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="tuneserve-shots-")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [args.bin, "serve", "--bind", f"127.0.0.1:{port}", "--data-dir", os.path.join(work, "data"),
         "--weights", args.weights],
        stdout=open(os.path.join(work, "server.log"), "w"), stderr=subprocess.STDOUT,
    )
    photos = []
    with zipfile.ZipFile(args.data) as z:
        for name in ["cats_and_dogs_filtered/validation/cats/cat.2003.jpg",
                     "cats_and_dogs_filtered/validation/dogs/dog.2001.jpg"]:
            photos.append(z.extract(name, work))
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1500", "--hide-scrollbars"]:
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(base + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        driver.get(base + "/")
        driver.find_element(By.CSS_SELECTOR, "#dataset-file").send_keys(os.path.abspath(args.data))
        wait(driver, "document.querySelector('#class-table')", 600, "the dataset summary")
        Select(driver.find_element(By.CSS_SELECTOR, "#variant")).select_by_value("full")
        set_value(driver, "#finetune_epochs", args.finetune_epochs)
        driver.find_element(By.CSS_SELECTOR, "#start-job").click()
        started = time.time()
        wait(driver, "['succeeded', 'failed', 'cancelled'].includes(document.querySelector('#live-status').textContent)",
             3600, "the job to end")
        status = driver.execute_script("return document.querySelector('#live-status').textContent")
        print(f"job {status} after {time.time() - started:.0f} s", file=sys.stderr)
        if status != "succeeded":
            raise SystemExit("the job did not succeed; see " + work)
        wait(driver, "!document.querySelector('#confusion').hidden", 60, "the confusion matrix")
        driver.execute_script("window.scrollTo(0, 0)")
        os.makedirs(args.out, exist_ok=True)
        driver.save_screenshot(os.path.join(args.out, "training.png"))

        driver.find_element(By.CSS_SELECTOR, "#predict-files").send_keys("\n".join(os.path.abspath(p) for p in photos))
        wait(driver, "document.querySelectorAll('#predictions .pred-label').length === 2", 120, "two predictions")
        time.sleep(1)
        driver.execute_script("document.querySelector('#predict').scrollIntoView({block: 'end'})")
        driver.save_screenshot(os.path.join(args.out, "prediction.png"))
        labels = driver.execute_script(
            "return [...document.querySelectorAll('#predictions .pred-label')].map(e => e.textContent)")
        print(f"predicted {labels} for {[os.path.basename(p) for p in photos]}", file=sys.stderr)
    finally:
        driver.quit()
        server.terminate()
        server.wait(timeout=120)


if __name__ == "__main__":
    main()
