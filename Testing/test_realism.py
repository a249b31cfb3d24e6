"""The realism check (issue 2 item 5) on the real LIDC-IDRI-0001 scan and small phantoms: the command
writes realism.json and a real PNG, prints the numbers, and the phantoms' lung HU median lies within
60 HU of the real scan's (an acceptance point of the foundation issue)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "LIDC-IDRI-0001"
needs_real = pytest.mark.skipif(not (REAL / "dicom").is_dir(), reason=f"real CT not found at {REAL}")


@pytest.fixture(scope="module")
def realism_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("realism")
    proc = subprocess.run(
        [sys.executable, "-m", "resmtnet.cli.cli", "realism", "--real", str(REAL / "dicom"), "--phantoms", "2",
         "--seed", "2026", "--small", "-o", str(out)],
        capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600,
        env=dict(os.environ, MPLBACKEND="Agg"))
    return proc, out


@needs_real
def test_realism_command_writes_report_and_picture(realism_run):
    proc, out = realism_run
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["realism.json", "realism.png"]
    report = json.loads((out / "realism.json").read_text())
    assert len(report["phantoms"]) == 2
    # the printed table carries the same numbers as the file
    assert f"{report['real']['lung_hu_median']:.0f}" in proc.stdout
    assert "lung HU median difference" in proc.stdout
    assert f"{report['lung_hu_median_difference']:+.1f} HU" in proc.stdout
    # a PNG a person can open: the signature, then decodable pixels that are not blank
    png = (out / "realism.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(out / "realism.png") as im:
        im.verify()
    with Image.open(out / "realism.png") as im:
        pixels = np.asarray(im.convert("L"))
    assert pixels.shape[0] > 400 and pixels.shape[1] > 800
    assert pixels.std() > 20


@needs_real
def test_realism_numbers_are_sane_and_medians_close(realism_run):
    proc, out = realism_run
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "realism.json").read_text())
    real = report["real"]
    # the real scan: its annotation was found and its nodule left out of the vessel density
    assert real["nodule_annotations"] and real["nodule_voxels_excluded"] > 1000
    assert -950 < real["lung_hu_median"] < -750
    assert 2.0 < real["lung_litres"] < 8.0
    assert 0.05 < real["lung_fraction"] < 0.6
    assert 0.0 < real["vessel_density"] < 0.3
    edges = np.asarray(report["histogram_edges_hu"])
    for name, hist in report["histograms"].items():
        assert len(hist) == len(edges) - 1
        assert abs(float(np.sum(np.asarray(hist) * np.diff(edges))) - 1.0) < 1e-6, name
    for p in report["phantoms"]:
        assert p["nodule_voxels_excluded"] >= 0 and 0.0 < p["vessel_density"] < 0.5
        assert 0.05 < p["lung_fraction"] < 0.6
        # acceptance (issue 2): each phantom's lung HU median within 60 HU of the real scan's
        assert abs(p["lung_hu_median"] - real["lung_hu_median"]) <= 60.0, (p["name"], p["lung_hu_median"],
                                                                           real["lung_hu_median"])
    assert report["acceptance"]["lung_hu_median_within_tolerance"]


@needs_real
def test_realism_from_a_phantom_folder(tmp_path):
    from resmtnet.data.phantom import write_phantom_set
    from resmtnet.evaluate.realism import compare_realism

    write_phantom_set(tmp_path / "set", 1, seed=5, masks=True, small=True)
    report = compare_realism(REAL / "dicom", tmp_path / "out", phantom_dir=tmp_path / "set")
    (p,) = report["phantoms"]
    assert p["name"] == "phantom-s5-0000"
    assert p["nodule_voxels_excluded"] > 0  # its labels file was found and used
    assert (tmp_path / "out" / "realism.png").stat().st_size > 10_000
    assert not [f for f in (tmp_path / "out").iterdir() if f.name.startswith(".tmp")]
