"""scripts/monai_side_by_side.py: MONAI's detector timed as a whole process, in its own environment.

Making that environment installs MONAI and the registry's torch (several GB), so the run itself is tested
only where one is already made (``RESMTNET_MONAI_VENV``, for example the script's ``.monai-venv``), on a
tiny CT; its help is checked everywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "monai_side_by_side.py"
VENV = os.environ.get("RESMTNET_MONAI_VENV", "")


def test_help_says_the_weights_are_random_and_names_the_pins():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    assert "THE WEIGHTS ARE RANDOM" in out and "cost only" in out
    assert "monai==MONAI_VERSION" in out and "own virtual environment" in out


@pytest.mark.slow
@pytest.mark.skipif(not (VENV and (Path(VENV) / "side-by-side.pins").exists()),
                    reason="no MONAI environment made (set RESMTNET_MONAI_VENV to one the script made)")
def test_times_the_bundle_on_a_tiny_ct(tmp_path):
    import SimpleITK as sitk

    # already on the bundle's grid (0.703125 x 0.703125 x 1.25 mm), so it stays tiny: 48 x 48 x 32 voxels
    a = np.full((32, 48, 48), -1000, np.int16)
    a[4:28, 6:42, 6:42] = 40
    a[8:24, 12:36, 10:22] = -850
    img = sitk.GetImageFromArray(a)
    img.SetSpacing((0.703125, 0.703125, 1.25))
    sitk.WriteImage(img, str(tmp_path / "tiny.nrrd"))
    res = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "tiny.nrrd"), "--venv", VENV,
                          "--json", str(tmp_path / "side.json")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    side = json.loads((tmp_path / "side.json").read_text())
    (run,) = side["runs"]
    assert run["run"] == "monai" and run["wall_s"] > 0 and run["peak_rss_mb"] > 100
    child = json.loads(run["output_tail"].strip().splitlines()[-1])
    assert child["image_shape"] == [1, 48, 48, 32]  # RAS, x y z
    assert child["sliding_window"] is False  # smaller than one 512 x 512 x 192 window
