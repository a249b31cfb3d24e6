"""Masses sized on their own mask (longest axial diameter, equivalent-sphere diameter), and a mass's centre beyond
the lung mask kept where its sphere reaches the lung."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from resmtnet.detect.measurement import longest_axial_diameter, measure_findings
from resmtnet.detect.nodules import NODULES_CSV_COLUMNS, write_nodules_csv
from resmtnet.detect.pipeline import _reaches_lung
from resmtnet.io.ctio import CTVolume
from resmtnet.model.prepare import ModelGrid
from resmtnet.model.targets import Peak

SPACING = (0.8, 0.8, 2.5)  # x, y, z mm: a mass is often seen on thicker slices


def _ellipsoid_ct(axes_mm: tuple[float, float, float], centre_xyz=(60.0, 60.0, 60.0), shape=(49, 150, 150)):
    """Lung (-850 HU) holding a soft-tissue ellipsoid (40 HU) of full axes ``axes_mm`` (x, y, z), edges ramped
    over 1 mm."""
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, SPACING[::-1])), indexing="ij")
    r = np.sqrt(sum(((c - m) / (a / 2.0)) ** 2 for c, m, a in zip((x, y, z), centre_xyz, axes_mm)))
    occ = np.clip(0.5 + (1.0 - r) * min(axes_mm) / 2.0, 0.0, 1.0)
    hu = -850.0 + occ * 890.0
    return CTVolume(array=hu.astype(np.float32), spacing=SPACING, origin=(0.0, 0.0, 0.0),
                    direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), seriesuid="mass", source="test")


@pytest.mark.parametrize("axes_mm", [(60.0, 40.0, 45.0), (35.0, 35.0, 35.0), (75.0, 50.0, 60.0)])
def test_a_mass_is_sized_by_its_longest_axial_diameter_and_its_equivalent_sphere(tmp_path, axes_mm):
    ct = _ellipsoid_ct(axes_mm)
    sphere = float(np.prod(axes_mm)) ** (1 / 3)  # the equivalent-sphere diameter of the ellipsoid
    grid = ModelGrid(origin=np.zeros(3), spacing=1.5, shape=(80, 80, 80))
    # the network's centre and size, both a little off, as they are
    peak = Peak(position_vox=np.array([41.0, 39.0, 41.5]), probability=0.9, diameter_mm=0.9 * sphere,
                malignancy=0.8)
    _, [n] = measure_findings(ct, [peak], grid)
    assert n.long_axis_mm == pytest.approx(max(axes_mm[:2]), abs=2 * SPACING[0])
    assert n.sphere_diameter_mm == pytest.approx(sphere, rel=0.06)
    write_nodules_csv(tmp_path / "nodules.csv", "mass", [n])
    with open(tmp_path / "nodules.csv", newline="") as f:
        [row] = list(csv.DictReader(f))
    assert list(row) == NODULES_CSV_COLUMNS
    assert float(row["long_axis_mm"]) == n.long_axis_mm and float(row["sphere_diameter_mm"]) == n.sphere_diameter_mm


def test_the_longest_axial_diameter_is_taken_on_the_largest_axial_slice():
    mask = np.zeros((5, 40, 40), bool)
    mask[1, 10:30, 15:20] = True  # 20 px long, a small slice
    mask[3, 5:25, 5:35] = True  # 20 x 30 px: the largest slice, its diagonal the long axis
    d = longest_axial_diameter(mask, (1.0, 1.0, 3.0))
    assert d == pytest.approx(np.hypot(19, 29) + 0.5, abs=0.05)
    assert longest_axial_diameter(np.zeros((3, 4, 4), bool), (1, 1, 1)) == 0.0


def test_a_finding_beyond_the_lung_is_kept_only_where_its_own_sphere_reaches_the_lung():
    lung = np.zeros((40, 40, 40), np.float32)
    lung[:, :, :15] = 1.0  # lung up to x = 14; the finding at x = 25: 11 voxels beyond
    v = np.array([20, 20, 25])
    assert not _reaches_lung(lung, v, 10.0)  # a 30 mm nodule (10 voxels radius on a 1.5 mm grid) does not reach
    assert _reaches_lung(lung, v, 11.5)  # a mass does
    assert not _reaches_lung(np.zeros_like(lung), v, 20.0)
    assert not _reaches_lung(lung, v, 0.4)


def test_a_finding_whose_mask_a_more_probable_one_took_whole_is_not_measured():
    """Two findings on one 20 mm nodule: the first keeps the voxels; the second measures nothing (no volume, no
    long axis, no sphere) and is sized by the network alone, not by a mask it does not own."""
    ct = _ellipsoid_ct((20.0, 20.0, 20.0))
    grid = ModelGrid(origin=np.zeros(3), spacing=1.5, shape=(80, 80, 80))
    first = Peak(position_vox=np.array([40.0, 40.0, 40.0]), probability=0.9, diameter_mm=19.0, malignancy=0.6)
    second = Peak(position_vox=np.array([40.0, 40.0, 40.5]), probability=0.5, diameter_mm=8.0, malignancy=0.3)
    labels, (a, b) = measure_findings(ct, [first, second], grid)
    assert a.volume_mm3 > 0 and a.sphere_diameter_mm == pytest.approx(20.0, rel=0.08) and a.long_axis_mm
    assert not (labels == 2).any()
    assert b.volume_mm3 == 0 and b.long_axis_mm is None and b.sphere_diameter_mm is None
    assert b.diameter_mm == pytest.approx(8.0)
