"""scripts/pictures.py: the screenshot and the Sample Data thumbnail, drawn by Slicer's own views.

Rendering needs an offscreen OpenGL (Mesa's EGL or OSMesa on a machine without a display); where VTK cannot
render offscreen the tests skip and say so. The screenshot is ``views.png`` of the files ``resmtnet detect``
writes, here for a small phantom's true nodules (no model needed), drawn again in a fresh process as the script runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest_slicer import *  # noqa: F403  (the fixtures offscreen_rendering, phantom, phantom_truth)
from matplotlib.image import imread

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "pictures.py"
ICON = REPO / "ResMTNet" / "Resources" / "Icons" / "ResMTNetChestPhantom.png"


def _run(*args: str) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                         cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    return run


@pytest.mark.slow
def test_sample_icon_is_what_the_script_draws(offscreen_rendering, tmp_path):
    out = tmp_path / "icon.png"
    _run("sample-icon", "-o", str(out))
    drawn, committed = _rgb(out), _rgb(ICON)
    assert drawn.shape == committed.shape == (160, 160, 3)
    gray = drawn.mean(axis=2)
    assert (gray < 40).mean() > 0.1 and (gray > 180).mean() > 0.05  # air and lungs dark, body and bone bright
    assert np.abs(drawn - committed).mean() < 3.0, "the committed thumbnail is not what the script draws now"


@pytest.mark.slow
def test_screenshot_is_the_views_png_detect_writes(offscreen_rendering, phantom, phantom_truth, tmp_path):
    from resmtnet.report.outputs import write_detection_outputs
    from resmtnet.scene.views import GAP, VIEW_SIZE, panel_origin

    write_detection_outputs(phantom.ct, phantom_truth, tmp_path / "detect")
    out = tmp_path / "shot.png"
    _run("screenshot", str(tmp_path / "detect"), "-o", str(out))
    image, views = _rgb(out), _rgb(tmp_path / "detect" / "views.png")
    size = VIEW_SIZE
    assert image.shape == views.shape == (2 * size + GAP, 2 * size + GAP, 3)
    assert np.abs(image - views).mean() < 1.0, "the screenshot is not the detection's views.png"
    for index in range(3):  # the slice views show CT (dark lung, bright tissue)
        top, left = panel_origin(index)
        gray = image[top:top + size, left:left + size].mean(axis=2)
        assert (gray < 90).mean() > 0.05 and (gray > 150).mean() > 0.05, "no CT in a slice view"
    # the top finding's colour (marker and segment) is drawn in the axial and 3-D views
    r, g, b = (np.array(c) * 255 for c in _top_finding_color(tmp_path / "detect"))
    for index in (0, 3):
        top, left = panel_origin(index)
        view = image[top:top + size, left:left + size]
        near = np.abs(view - np.array([r, g, b])).max(axis=2) < 40
        assert near.sum() > 10, "the top finding is not drawn"


def _rgb(path: Path) -> np.ndarray:
    """A PNG's pixels as (height, width, 3) integers 0-255."""
    return np.round(imread(path)[:, :, :3] * 255).astype(np.int16)


def _top_finding_color(detect_dir: Path) -> tuple[float, float, float]:
    import json

    first = json.loads((detect_dir / "nodules.mrk.json").read_text())["markups"][0]  # N1, the most probable
    return tuple(first["display"]["selectedColor"])


def test_png_writer_gives_back_every_pixel_with_each_row_filter(tmp_path):
    """views.png's own PNG writer: a picture of flat areas, ramps and noise (rows that each of the five PNG filters
    suits best) read back pixel for pixel by another decoder (matplotlib's), every filter used."""
    import zlib

    from resmtnet.scene.views import png_bytes, write_png

    rng = np.random.default_rng(1)
    picture = np.zeros((60, 37, 3), np.uint8)
    picture[10:20] = 255  # flat rows
    picture[20:30] = (np.arange(37)[None, :, None] * 7 % 256).astype(np.uint8)  # ramps along a row
    picture[30:40] = (np.arange(10)[:, None, None] * 20).astype(np.uint8)  # ramps down the rows
    picture[40:60] = rng.integers(0, 256, (20, 37, 3), dtype=np.uint8)  # noise
    picture[45:50, :20] = (np.add.outer(np.arange(5), np.arange(20))[:, :, None] * 9 % 256).astype(np.uint8)
    write_png(picture, tmp_path / "p.png")
    back = imread(tmp_path / "p.png")
    assert back.shape == picture.shape and (np.round(back * 255).astype(np.uint8) == picture).all()
    data = png_bytes(picture)
    idat = data[data.index(b"IDAT") + 4:data.index(b"IEND") - 8]
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(60, 1 + 37 * 3)
    assert len(set(rows[:, 0].tolist())) >= 3  # several filters chosen, all decoded right above
