"""scripts/pictures.py: the screenshot and the Sample Data thumbnail, drawn by Slicer's own views.

Rendering needs an offscreen OpenGL (Mesa's EGL or OSMesa on a machine without a display); where VTK cannot
render offscreen the tests skip and say so. The screenshot is drawn from the scene files ``resmtnet detect``
writes, here for a small phantom's true nodules (no model needed), in a fresh process as the script runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest_slicer import *  # noqa: F403  (the fixtures phantom, phantom_truth)
from matplotlib.image import imread

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "pictures.py"
ICON = REPO / "ResMTNet" / "Resources" / "Icons" / "ResMTNetChestPhantom.png"

_PROBE = """
import vtk
window = vtk.vtkRenderWindow()
window.SetOffScreenRendering(1)
window.AddRenderer(vtk.vtkRenderer())
window.SetSize(8, 8)
window.Render()
print("rendered")
"""


@pytest.fixture(scope="module")
def offscreen_rendering():
    run = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    if run.returncode != 0 or "rendered" not in run.stdout:
        pytest.skip(f"VTK cannot render offscreen here: {run.stderr.strip()[-300:]}")


def _run(*args: str) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                         cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    return run


def test_sample_icon_is_what_the_script_draws(offscreen_rendering, tmp_path):
    out = tmp_path / "icon.png"
    _run("sample-icon", "-o", str(out))
    drawn, committed = _rgb(out), _rgb(ICON)
    assert drawn.shape == committed.shape == (160, 160, 3)
    gray = drawn.mean(axis=2)
    assert (gray < 40).mean() > 0.1 and (gray > 180).mean() > 0.05  # air and lungs dark, body and bone bright
    assert np.abs(drawn - committed).mean() < 3.0, "the committed thumbnail is not what the script draws now"


def test_screenshot_shows_the_scene_detect_writes(offscreen_rendering, phantom, phantom_truth, tmp_path):
    from resmtnet.slicer_outputs import write_scene_files

    write_scene_files(phantom.ct, phantom_truth, tmp_path / "detect")
    out = tmp_path / "shot.png"
    _run("screenshot", str(tmp_path / "detect"), "-o", str(out), "--size", "200")
    image = _rgb(out)
    assert image.shape == (200, 3 * 200 + 2 * 4, 3)
    axial, coronal, three_d = image[:, :200], image[:, 204:404], image[:, 408:]
    for view in (axial, coronal):
        gray = view.mean(axis=2)
        assert (gray < 90).mean() > 0.05 and (gray > 150).mean() > 0.05, "no CT in a slice view"
    # the top finding's colour (fiducial and segment) is drawn in the axial view, and segments in 3-D
    r, g, b = (np.array(c) * 255 for c in _top_finding_color(tmp_path / "detect"))
    for view in (axial, three_d):
        near = np.abs(view - np.array([r, g, b])).max(axis=2) < 40
        assert near.sum() > 10, "the top finding is not drawn"


def _rgb(path: Path) -> np.ndarray:
    """A PNG's pixels as (height, width, 3) integers 0-255."""
    return np.round(imread(path)[:, :, :3] * 255).astype(np.int16)


def _top_finding_color(detect_dir: Path) -> tuple[float, float, float]:
    import json

    first = json.loads((detect_dir / "nodules.mrk.json").read_text())["markups"][0]  # N1, the most probable
    return tuple(first["display"]["selectedColor"])
