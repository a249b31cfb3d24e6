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
