"""The solid component of a part-solid nodule, measured on its mask: phantom nodules of known solid core."""

from __future__ import annotations

import numpy as np
import pytest
from resmtnet.detect.lung_rads import lung_rads
from resmtnet.detect.measurement import (
    SOLID_COMPONENT_HU,
    axial_mean_diameter,
    measure_solid_components,
    solid_component_mm,
)
from resmtnet.detect.nodules import Nodule
from resmtnet.io.ctio import CTVolume

SPACING = (0.7, 0.7, 1.0)  # x, y, z mm: a thin-slice chest CT's
SHAPE = (48, 64, 64)  # z, y, x
CENTRE = np.array([22.4, 22.4, 24.0])  # x, y, z mm


def _part_solid_ct(core_axes_mm: tuple[float, float, float], angle_deg: float = 0.0, total_mm: float = 18.0,
                   ggo_hu: float = -600.0, core_hu: float = 30.0) -> tuple[CTVolume, np.ndarray]:
    """Lung (-850 HU) holding a ground-glass sphere of ``total_mm`` whose solid core is an ellipsoid of full axes
    ``core_axes_mm`` (long in-plane axis turned ``angle_deg`` from x), edges ramped over 1 mm as a scanner blurs
    them. Returns the CT and the nodule's true mask (the sphere)."""
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(SHAPE, SPACING[::-1])), indexing="ij")
    dx, dy, dz = x - CENTRE[0], y - CENTRE[1], z - CENTRE[2]
    r = np.sqrt(dx ** 2 + dy ** 2 + dz ** 2)
    a = np.deg2rad(angle_deg)
    u, v = dx * np.cos(a) + dy * np.sin(a), -dx * np.sin(a) + dy * np.cos(a)
    ax, ay, az = (c / 2.0 for c in core_axes_mm)
    core_r = np.sqrt((u / ax) ** 2 + (v / ay) ** 2 + (dz / az) ** 2)  # 1 on the core's surface
    nodule = np.clip(0.5 + (total_mm / 2.0 - r), 0.0, 1.0)
    core = np.clip(0.5 + (1.0 - core_r) * min(core_axes_mm) / 2.0, 0.0, 1.0)
    hu = -850.0 + nodule * (ggo_hu + 850.0) + core * (core_hu - ggo_hu)
    ct = CTVolume(array=hu.astype(np.float32), spacing=SPACING, origin=(0.0, 0.0, 0.0),
                  direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), seriesuid="phantom", source="test")
    return ct, r <= total_mm / 2.0


@pytest.mark.parametrize("core_axes, angle, expected", [
    ((8.0, 8.0, 8.0), 0.0, 8.0),     # a round 8 mm core
    ((10.0, 6.0, 8.0), 0.0, 8.0),    # long 10 mm, short 6 mm: mean 8 mm
    ((10.0, 6.0, 8.0), 35.0, 8.0),   # the same turned in the axial plane: the callipers follow it
    ((5.0, 5.0, 5.0), 0.0, 5.0),
])
def test_solid_core_of_known_size(core_axes, angle, expected):
    ct, mask = _part_solid_ct(core_axes, angle)
    measured = solid_component_mm(ct.array, mask, ct.spacing)
    assert measured == pytest.approx(expected, abs=0.5)  # under one voxel (0.7 mm) either way


@pytest.mark.parametrize("long_mm, short_mm, angle", [(8.0, 8.0, 0.0), (12.0, 6.0, 0.0), (12.0, 6.0, 30.0),
                                                    (12.0, 6.0, 90.0), (4.0, 4.0, 0.0)])
def test_long_and_short_axes_of_an_axial_ellipse(long_mm, short_mm, angle):
    """An ellipse drawn in pixels (0.6 mm): the mean of its long and short axes, whichever way it is turned."""
    yy, xx = np.mgrid[0:60, 0:60] * 0.6 - 17.9
    a = np.deg2rad(angle)
    u, v = xx * np.cos(a) + yy * np.sin(a), -xx * np.sin(a) + yy * np.cos(a)
    region = (u / (long_mm / 2)) ** 2 + (v / (short_mm / 2)) ** 2 <= 1.0
    assert axial_mean_diameter(region, (0.6, 0.6)) == pytest.approx(0.5 * (long_mm + short_mm), abs=0.3)
    assert axial_mean_diameter(np.zeros((3, 3), bool), (1.0, 1.0)) == 0.0


def test_ground_glass_has_no_solid_component_and_the_threshold_is_the_documented_one():
    ct, mask = _part_solid_ct((8.0, 8.0, 8.0), core_hu=-450.0)  # a denser ground-glass core, still under -300
    assert SOLID_COMPONENT_HU == -300.0
    assert solid_component_mm(ct.array, mask, ct.spacing) == 0.0


def test_measured_on_the_nodule_s_own_mask_only_part_solid_nodules():
    """Through the label map as detection leaves it: the part-solid nodule gets its solid component (and the
    Lung-RADS category it implies), a solid one none."""
    ct, mask = _part_solid_ct((7.0, 7.0, 7.0))
    labels = mask.astype(np.uint8)
    part_solid = Nodule(1, tuple(CENTRE), 0.9, 18.0, 0.5, nodule_type="part-solid")
    solid = Nodule(2, (0.0, 0.0, 0.0), 0.9, 18.0, 0.5, nodule_type="solid")
    measure_solid_components(ct, labels, [part_solid, solid])
    assert part_solid.solid_component_mm == pytest.approx(7.0, abs=0.5)
    assert solid.solid_component_mm is None
    assert part_solid.lung_rads == lung_rads("part-solid", 18.0, part_solid.solid_component_mm).category == "4A"
