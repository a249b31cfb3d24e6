"""Fixtures for the Slicer-side tests: a slicer-core scene set up like Slicer's, and a small phantom.

Imported by the test modules that use them (``from conftest_slicer import ...``); Testing/conftest.py
belongs to the whole suite.
"""

from __future__ import annotations

import functools
import subprocess
import sys

import pytest

__all__ = ["offscreen_rendering", "phantom", "phantom_truth", "slicer_app", "untrained_checkpoint"]

# A direction with swapped in-plane axes and a flipped slice axis: a transposed or mis-signed
# conversion between LPS and RAS, or between (z, y, x) and (x, y, z), cannot pass unnoticed.
PHANTOM_DIRECTION = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
PHANTOM_SEED = 0  # three nodules of different malignancy ratings in the small phantom



def segment_centre_ras(segment):
    """The centre (RAS mm) of a segment's voxels, placed by the segment's own binary-labelmap geometry."""
    import numpy as np
    import vtk
    from vtk.util import numpy_support

    image = segment.GetRepresentation("Binary labelmap")
    x0, x1, y0, y1, z0, z1 = image.GetExtent()
    voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(
        z1 - z0 + 1, y1 - y0 + 1, x1 - x0 + 1)
    zyx = np.argwhere(voxels == segment.GetLabelValue()).mean(axis=0) + [z0, y0, x0]
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(3)]) @ np.append(zyx[::-1], 1.0)


@pytest.fixture
def slicer_app():
    """A fresh slicer-core scene with Slicer's module logics registered."""
    from resmtnet.scene.slicer_app import create_slicer_core_app

    return create_slicer_core_app()


@functools.cache
def _small_phantom():
    """The small phantom, made once for the whole test process (about two seconds) with its arrays read-only, so
    that a test that changed it in place would fail there instead of passing its change on to other modules."""
    from resmtnet.data.phantom import generate_phantom

    made = generate_phantom(PHANTOM_SEED, small=True, direction=PHANTOM_DIRECTION)
    for array in (made.ct.array, made.labels, made.lung_mask):
        array.setflags(write=False)
    return made


@pytest.fixture(scope="module")
def phantom():
    """A small phantom, shared read-only by every test that takes it (a test that needs to change it makes a copy)."""
    return _small_phantom()


@pytest.fixture
def phantom_truth(phantom):
    """The phantom's truth nodules and masks as the core's Detection (a fresh copy for each test)."""
    from resmtnet.scene.selftest import phantom_detection

    return phantom_detection(phantom, seriesuid="phantom-s0")


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory):
    """A tiny, untrained Res-MTNet checkpoint whose centre head says "maybe" everywhere: the detector
    then reports findings (with masks) on any CT, which is what plumbing tests need. Not a model."""
    torch = pytest.importorskip("torch")
    from resmtnet.model.model import ModelConfig, ResMTNet
    from resmtnet.model.model_io import save_checkpoint

    torch.manual_seed(0)
    config = ModelConfig(stem_channels=8, stage_channels=(8, 8, 8, 8), blocks_per_stage=(0, 1, 1, 1),
                         pyramid_channels=8, head_channels=8, center_prior=0.5)
    path = tmp_path_factory.mktemp("model") / "untrained.pt"
    save_checkpoint(path, ResMTNet(config), provenance={"purpose": "tests only, untrained"})
    return path


_RENDER_PROBE = """
import vtk
window = vtk.vtkRenderWindow()
window.SetOffScreenRendering(1)
window.AddRenderer(vtk.vtkRenderer())
window.SetSize(8, 8)
window.Render()
print("rendered")
"""


@pytest.fixture(scope="session")
def offscreen_rendering():
    """Skips the test where VTK cannot render offscreen (no EGL/OSMesa); probed in a child process, since VTK may
    abort rather than raise."""
    run = subprocess.run([sys.executable, "-c", _RENDER_PROBE], capture_output=True, text=True, timeout=120)
    if run.returncode != 0 or "rendered" not in run.stdout:
        pytest.skip(f"VTK cannot render offscreen here: {run.stderr.strip()[-300:]}")
