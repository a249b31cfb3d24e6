#!/usr/bin/env python
"""The README's picture of ``resmtnet view``: the page as headless Chromium shows it.

    python scripts/viewer_screenshot.py DETECT_OUTDIR [-o ViewerScreenshot.png] [--row N]

Starts ``resmtnet view DETECT_OUTDIR --port 0`` (127.0.0.1 only), opens the page in Debian's ``chromium`` through
``chromedriver`` (selenium), waits until the four views are drawn, clicks row N of the findings table (default 1:
the views stay on N1, as the page opens), saves the window as a PNG (palette-reduced where needed to stay under
500 KB) and stops the server. Needs requirements.txt's packages and ``apt-get install chromium chromium-driver``.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "ViewerScreenshot.png"
WINDOW = (1400, 800)
MAX_BYTES = 500_000
START_TIMEOUT_S = 300
DRAW_TIMEOUT_S = 120


def start_viewer(detect_dir: Path) -> tuple[subprocess.Popen, str]:
    """``resmtnet view`` in its own process group, and the address it printed once it serves."""
    process = subprocess.Popen([sys.executable, "-m", "resmtnet.cli.cli", "view", str(detect_dir), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready:
            match = re.search(r"http://127\.0\.0\.1:\d+/", process.stdout.readline())
            if match:
                return process, match.group(0)
    stop(process)
    raise SystemExit(f"resmtnet view did not start: {process.stderr.read()[-500:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


def chromium() -> object:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        raise SystemExit("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={WINDOW[0]},{WINDOW[1]}", "--proxy-server=direct://", "--proxy-bypass-list=*"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def views_drawn(browser: object) -> bool:
    """The four views' images are on the page and none is a flat colour."""
    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.by import By

    shot = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("L"), dtype=np.float32)
    boxes = [e.rect for e in browser.find_elements(By.CSS_SELECTOR, "img.image-display-area")]
    boxes = [r for r in boxes if r["width"] > 50 and r["height"] > 50]
    return len(boxes) == 4 and all(
        shot[int(r["y"]):int(r["y"] + r["height"]), int(r["x"]):int(r["x"] + r["width"])].std() > 10 for r in boxes)


def screenshot(detect_dir: Path, out: Path, row: int = 1) -> Path:
    from PIL import Image
    from selenium.webdriver.common.by import By

    process, url = start_viewer(detect_dir)
    browser = chromium()
    try:
        browser.get(url)
        deadline = time.monotonic() + DRAW_TIMEOUT_S
        while not views_drawn(browser):
            if time.monotonic() > deadline:
                raise SystemExit("the page's views were not drawn in time")
            time.sleep(1)
        rows = browser.find_elements(By.CSS_SELECTOR, "#findings tr.finding-row")
        if row > 1 and len(rows) >= row:
            status = browser.find_element(By.ID, "slice-status").text
            rows[row - 1].click()
            while browser.find_element(By.ID, "slice-status").text == status and time.monotonic() < deadline:
                time.sleep(0.5)
        time.sleep(3)  # the views' last frame after the click
        image = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    finally:
        browser.quit()
        stop(process)
    tmp = out.with_name(out.name + ".tmp")
    image.save(tmp, format="PNG", optimize=True)
    for colours in (256, 128, 64):  # too large in full colour: a palette (octree keeps the legend's small swatches)
        if tmp.stat().st_size <= MAX_BYTES:
            break
        image.quantize(colours, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
            tmp, format="PNG", optimize=True)
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("detect_dir", type=Path, help="a folder `resmtnet detect` wrote")
    parser.add_argument("-o", "--output", type=Path, default=OUTPUT)
    parser.add_argument("--row", type=int, default=1, help="the findings table's row to click (default 1)")
    args = parser.parse_args(argv)
    out = screenshot(args.detect_dir, args.output, args.row)
    print(f"wrote {out} ({out.stat().st_size // 1000} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
