"""``resmtnet view``: a real result folder (``resmtnet detect`` on a small phantom) served by the real command and
looked at in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by selenium).

One server for the page tests (marked slow: ``resmtnet detect`` runs first): the page loads, the four views are
drawn, the table lists ``nodules.csv``'s findings, a click on row 2 moves the slice views to N2. The error cases run
the command alone: exit status 2, one line.
Skips, saying so, where there is no Chromium, no selenium, no trame-slicer or no offscreen rendering.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest_slicer import offscreen_rendering  # noqa: F401  (fixture)

START_TIMEOUT_S = 180  # the command's start: imports, the scene read into four views (seconds on a busy machine)
PAGE_TIMEOUT_S = 90  # the page's first drawn views
JUMP_TIMEOUT_S = 30  # a click's effect on the status line and the views
WINDOW = (1400, 900)
STATUS_NUMBERS = re.compile(r"sagittal L (-?[\d.]+) · coronal P (-?[\d.]+) · axial S (-?[\d.]+)")

pytestmark = pytest.mark.slow  # each test starts the command's server and a browser: the whole module is slow


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "resmtnet.cli.cli", *args]


def _need_viewer() -> None:
    pytest.importorskip("trame_slicer", reason="trame-slicer is not installed (pip install -r requirements.txt)")


def _chromium() -> tuple[str, str]:
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -r requirements.txt)")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("no Chromium here (Debian: apt-get install chromium chromium-driver; .ci/run installs them)")
    return browser, driver


@pytest.fixture(scope="module")
def result_dir(tmp_path_factory, offscreen_rendering) -> Path:  # noqa: F811
    """What ``resmtnet detect`` writes for a small phantom, found by the shipped model (four findings)."""
    _need_viewer()
    place = tmp_path_factory.mktemp("viewer")
    for args in (("phantom", "-o", str(place / "ct"), "--small", "--workers", "1"),
                 ("detect", str(place / "ct" / "phantom-s0-0000.nrrd"), "-o", str(place / "result"), "--no-tta",
                  "--quiet")):
        run = subprocess.run(_command(*args), capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
    rows = _csv_rows(place / "result")
    assert len(rows) >= 2, f"the phantom needs two findings for the row-2 test; detect found {len(rows)}"
    return place / "result"


def _csv_rows(result: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO((result / "nodules.csv").read_text(encoding="utf-8"))))


def _stop(process: subprocess.Popen) -> None:
    """Stop the server's whole process group: SIGTERM, then SIGKILL if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


@pytest.fixture(scope="module")
def server_url(result_dir, tmp_path_factory):
    """``resmtnet view RESULT --port 0`` running; its printed address."""
    log = tmp_path_factory.mktemp("server") / "stderr.txt"
    with open(log, "w") as stderr:
        process = subprocess.Popen(_command("view", str(result_dir), "--port", "0"), stdout=subprocess.PIPE,
                                   stderr=stderr, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        line = ""
        while time.monotonic() < deadline and process.poll() is None:
            ready, _, _ = select.select([process.stdout], [], [], 1.0)
            if ready:
                line = process.stdout.readline()
                break
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, f"no address printed (got {line!r}); stderr: {log.read_text()[-2000:]}"
        yield match.group(0)
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def browser():
    binary, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={WINDOW[0]},{WINDOW[1]}", "--proxy-server=direct://", "--proxy-bypass-list=*"):
        options.add_argument(arg)
    # Both paths given: selenium's driver manager never looks anything up or downloads
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _screenshot(browser) -> np.ndarray:
    """The page as (height, width, 3) uint8, in CSS pixels (headless Chromium's scale factor is 1)."""
    from PIL import Image

    image = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    return np.asarray(image)


def _view_boxes(browser) -> list[tuple[int, int, int, int]]:
    """The four views' images on the page (top, left, bottom, right), ordered axial, sagittal, coronal, 3-D: rows
    top to bottom, left to right, as the page lays them out."""
    from selenium.webdriver.common.by import By

    boxes = []
    for element in browser.find_elements(By.CSS_SELECTOR, "img.image-display-area"):
        r = element.rect
        if r["width"] > 50 and r["height"] > 50:
            boxes.append((round(r["y"]), round(r["x"]), round(r["y"] + r["height"]), round(r["x"] + r["width"])))
    return sorted(boxes)


def _content(pixels: np.ndarray) -> float:
    """The share of pixels that stand out from their row (a blank view, or a vertical background gradient: 0)."""
    grey = pixels.astype(np.float32).mean(axis=2)
    return float((np.abs(grey - np.median(grey, axis=1, keepdims=True)) > 30).mean())


def _views(browser) -> list[np.ndarray]:
    shot = _screenshot(browser)
    return [shot[t:b, l:r] for t, l, b, r in _view_boxes(browser)]


def _wait(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"{what} within {timeout_s} s")


@pytest.fixture(scope="module")
def page(browser, server_url):
    """The page loaded, its four views drawn."""
    browser.get(server_url)

    def drawn():
        views = _views(browser)
        return len(views) == 4 and all(_content(v) > 0.02 for v in views)

    _wait(drawn, PAGE_TIMEOUT_S, "four drawn views on the page")
    return browser


def _status(browser) -> tuple[float, float, float]:
    from selenium.webdriver.common.by import By

    text = browser.find_element(By.ID, "slice-status").text
    match = STATUS_NUMBERS.search(text)
    assert match, f"status line without the slice positions: {text!r}"
    return tuple(float(v) for v in match.groups())  # type: ignore[return-value]


@pytest.mark.slow  # detect on a phantom, then the browser
def test_page_shows_four_views_legend_and_note(page):
    from selenium.webdriver.common.by import By

    views = _views(page)
    assert len(views) == 4
    for name, view in zip(("axial", "sagittal", "coronal", "3-D"), views):
        assert _content(view) > 0.02, f"the {name} view is blank"
        assert view.std() > 10, f"the {name} view is nearly uniform"
    # Slicer's colour legend drawn in the axial view: its top swatch, 100 % malignant red, is a colour no finding
    # of this phantom has (all are under 50 %)
    red = np.array([230, 25, 26])
    near_red = (np.abs(views[0].astype(int) - red).max(axis=2) < 50).sum()
    assert near_red > 50, "no colour legend in the axial view"
    legend = page.find_element(By.ID, "legend").text
    assert "100 % malignant" in legend and "research use only" in legend
    assert "Research use only" in page.find_element(By.ID, "research-note").text


@pytest.mark.slow  # detect on a phantom, then the browser
def test_page_loads_nothing_from_elsewhere(page, server_url):
    """Everything the page fetched (scripts, styles, fonts, images) came from the viewer itself."""
    urls = page.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls, "no resources recorded"
    elsewhere = [u for u in urls if not u.startswith((server_url, "blob:", "data:", server_url.replace("http", "ws")))]
    assert not elsewhere


@pytest.mark.slow  # detect on a phantom, then the browser
def test_table_lists_the_findings(page, result_dir):
    from selenium.webdriver.common.by import By

    rows = page.find_elements(By.CSS_SELECTOR, "#findings tr.finding-row")
    expected = _csv_rows(result_dir)
    report = json.loads((result_dir / "report.json").read_text(encoding="utf-8"))
    assumed = [n["type_assumed"] for n in report["nodules"]]
    assert len(rows) == len(expected) == len(assumed)
    for number, (row, truth, type_assumed) in enumerate(zip(rows, expected, assumed), start=1):
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        assert cells[1] == f"N{number}"
        position = [float(v) for v in cells[2].split(",")]
        for shown, key in zip(position, ("coordX", "coordY", "coordZ")):
            assert abs(shown - float(truth[key])) <= 0.051
        assert abs(float(cells[3]) - float(truth["diameter_mm"])) <= 0.051
        assert abs(float(cells[4]) - float(truth["probability"])) <= 0.0051
        assert abs(float(cells[5].rstrip(" %")) - 100 * float(truth["malignancy"])) <= 0.51
        shown_type = truth["nodule_type"] + (" (assumed)" if type_assumed else "")
        assert cells[6:8] == [shown_type, truth["lung_rads"]]
        brock = truth["brock_malignancy"]
        assert cells[8] == "n/a" if brock == "" else abs(float(cells[8].rstrip(" %")) - 100 * float(brock)) <= 0.051


@pytest.mark.slow  # detect on a phantom, then the browser
def test_first_view_is_on_n1(page, result_dir):
    n1 = _csv_rows(result_dir)[0]
    for shown, key in zip(_status(page), ("coordX", "coordY", "coordZ")):
        assert abs(shown - float(n1[key])) < 1.0


@pytest.mark.slow  # detect on a phantom, then the browser
def test_click_on_row_2_moves_the_slice_views_to_n2(page, result_dir):
    from selenium.webdriver.common.by import By

    n2 = _csv_rows(result_dir)[1]
    target = tuple(float(n2[k]) for k in ("coordX", "coordY", "coordZ"))
    before = _views(page)
    page.find_elements(By.CSS_SELECTOR, "#findings tr.finding-row")[1].click()
    _wait(lambda: max(abs(s - t) for s, t in zip(_status(page), target)) < 1.0, JUMP_TIMEOUT_S,
          f"the status line at N2 {target}")

    def redrawn():  # each slice view now shows another slice
        after = _views(page)
        return len(after) == 4 and all(np.abs(a.astype(int) - b.astype(int)).mean() > 2
                                       for a, b in zip(after[:3], before[:3]))

    _wait(redrawn, JUMP_TIMEOUT_S, "the three slice views redrawn")


@pytest.mark.slow  # detect on a phantom, then the browser
def test_scrolling_the_axial_view_moves_its_slice_and_the_status_follows(page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By

    before = _status(page)
    axial = page.find_elements(By.CSS_SELECTOR, "img.image-display-area")[0]
    ActionChains(page).move_to_element(axial).perform()
    ActionChains(page).scroll_from_origin(ScrollOrigin.from_element(axial), 0, 120).perform()
    after = _wait(lambda: (s := _status(page)) != before and s, JUMP_TIMEOUT_S, "the status line after a scroll")
    assert after[:2] == before[:2]  # sagittal and coronal planes stay
    assert abs(after[2] - before[2]) >= 0.5  # the axial plane moved by a slice or more


# --------------------------------------------------------------------------------------------------
# Errors: one line, exit status 2, nothing served


def _one_line_error(run: subprocess.CompletedProcess, *needles: str) -> None:
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert run.returncode == 2, run.stderr[-2000:]
    assert len(lines) == 1, run.stderr[-2000:]
    assert lines[0].startswith("resmtnet view: error: ")
    for needle in needles:
        assert needle in lines[0]
    assert "http://" not in run.stdout


def test_port_in_use(tmp_path):
    _need_viewer()
    (tmp_path / "scene.mrb").write_bytes(b"")  # never read: the port is checked first
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(_command("view", str(tmp_path), "--port", str(port)), capture_output=True, text=True,
                             timeout=120)
    _one_line_error(run, f"127.0.0.1:{port}")


def test_folder_without_results(tmp_path):
    (tmp_path / "nodules.csv").write_text("seriesuid,coordX,coordY,coordZ\n", encoding="utf-8")
    run = subprocess.run(_command("view", str(tmp_path), "--port", "0"), capture_output=True, text=True,
                         timeout=120)
    _one_line_error(run, str(tmp_path), "scene.mrb")


def test_scene_that_fails_to_load(tmp_path):
    _need_viewer()
    scene = tmp_path / "broken.mrml"
    scene.write_text("<MRML version='Slicer4.4.0'><Volume id='vtkMRMLScalarVolumeNode1'", encoding="utf-8")
    run = subprocess.run(_command("view", str(scene), "--port", "0"), capture_output=True, text=True, timeout=300)
    _one_line_error(run, str(scene), "not a scene Slicer can open")
