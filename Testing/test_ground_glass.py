"""Ground glass as the phantom draws it (issue 30, point 5): a hazy rise in the lung's attenuation that leaves
the vessels in it visible (the Fleischner Society glossary's definition), with a softer edge than a solid
nodule's; a part-solid nodule's core hides what is under it."""

from __future__ import annotations

import numpy as np
import pytest
from resmtnet.data.phantom import (
    GROUND_GLASS_EDGE_MM,
    SOLID_EDGE_MM,
    PhantomNodule,
    Rescan,
    _Grid,
    _render_nodule,
    generate_phantom,
)

LUNG = -870.0
VESSEL = 40.0
STEP = 0.5  # mm: fine enough to see an edge's width


def _lung_with_a_vessel() -> tuple[np.ndarray, _Grid]:
    """A 40 mm cube of lung (0.5 mm voxels, centre at 0) crossed along x by a 3 mm vessel 2 mm off the centre."""
    grid = _Grid(np.array([-20.0, -20.0, -20.0]), np.array([20.0, 20.0, 20.0]), STEP)
    hu = np.full(grid.shape, LUNG, np.float32)
    z, y, _ = grid.coords((slice(0, grid.shape[0]), slice(0, grid.shape[1]), slice(0, grid.shape[2])))
    vessel = np.broadcast_to((y - 2.0) ** 2 + z**2 <= 1.5**2, grid.shape)
    hu[vessel] = VESSEL
    return hu, grid


def _draw(kind: str, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, _Grid]:
    before, grid = _lung_with_a_vessel()
    hu, labels = before.copy(), np.zeros(grid.shape, np.uint16)
    nod = PhantomNodule((0.0, 0.0, 0.0), 16.0, 3, kind, "smooth", "parenchyma")
    _render_nodule(hu, labels, grid, np.random.default_rng(seed), nod, 1)
    return before, hu, labels, grid


def _edge_width_mm(hu: np.ndarray, grid: _Grid, inside: float) -> float:
    """The 10-90 % width of the rise from the lung to ``inside`` along the -x ray from the centre (clear of the
    vessel, which lies at y = 2 mm)."""
    c = grid.shape[0] // 2
    ray = hu[c, c, : c + 1][::-1]  # from the centre outward
    level = (ray - LUNG) / (inside - LUNG)
    r = np.arange(len(ray)) * STEP
    return float(r[np.argmax(level < 0.1)] - r[np.argmax(level < 0.9)])


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_ground_glass_leaves_the_vessel_in_it_and_raises_the_lung_around_it(seed):
    before, hu, labels, grid = _draw("ground-glass", seed)
    lab = labels == 1
    vessel = lab & (before == VESSEL)
    lung = lab & (before == LUNG)
    assert vessel.sum() > 100 and lung.sum() > 1000
    assert np.array_equal(hu[before == VESSEL], before[before == VESSEL])  # nothing denser is hidden by it
    assert -750 <= np.median(hu[lung]) <= -400  # the range pure ground glass is reported in
    # outside the label, only the fading edge changes anything
    z, y, x = grid.coords((slice(0, grid.shape[0]), slice(0, grid.shape[1]), slice(0, grid.shape[2])))
    far = np.sqrt(x**2 + y**2 + z**2) > 8.0 * 1.4 + GROUND_GLASS_EDGE_MM
    assert np.array_equal(hu[far], before[far])


def test_a_solid_nodule_hides_the_vessel_and_its_edge_is_sharper_than_ground_glass():
    before, solid, labels_solid, grid = _draw("solid")
    vessel = (labels_solid == 1) & (before == VESSEL)
    assert np.all(solid[vessel] < 100)  # a solid nodule (0-60 HU) replaces what is under it
    _, glass, labels_glass, _ = _draw("ground-glass")
    inside_glass = float(np.median(glass[(labels_glass == 1) & (before == LUNG)]))
    inside_solid = float(np.median(solid[(labels_solid == 1) & (before == LUNG)]))
    w_glass, w_solid = _edge_width_mm(glass, grid, inside_glass), _edge_width_mm(solid, grid, inside_solid)
    # a linear ramp of width W rises 10-90 % over 0.8 W; the ray samples it every STEP
    assert w_solid <= 0.8 * SOLID_EDGE_MM + STEP < 0.8 * GROUND_GLASS_EDGE_MM - STEP <= w_glass
    assert w_glass <= 0.8 * GROUND_GLASS_EDGE_MM + STEP
    # where the nodule is half drawn, its label, does not depend on how soft its edge is
    assert abs(int((labels_glass == 1).sum()) - int((labels_solid == 1).sum())) < 0.1 * (labels_solid == 1).sum()


def test_a_part_solid_nodule_keeps_its_solid_core_and_its_glass_keeps_the_vessel():
    before, hu, labels, grid = _draw("part-solid")
    c = grid.shape[0] // 2
    assert -50 <= hu[c, c, c] <= 100  # the solid core (0-50 HU) at the centre
    vessel = (labels == 1) & (before == VESSEL)
    assert vessel.sum() > 100 and np.all(hu[vessel] >= VESSEL - 1e-3)


def test_ground_glass_over_a_vessel_in_a_phantom_keeps_the_vessel_as_the_scanner_sees_it():
    """Seed 20 of the small phantoms: its second nodule, 10.8 mm of ground glass, lies on a vessel. Drawn and
    hidden on the same scan (the same noise), the vessel's voxels under the glass keep their attenuation."""
    drawn = generate_phantom(20, small=True, rescan=Rescan())
    hidden = generate_phantom(20, small=True, rescan=Rescan(hidden=(1,)))
    nod = drawn.nodules[1]
    assert nod.nodule_type == "ground-glass"
    lab = drawn.labels == 2
    a, b = drawn.ct.array.astype(float), hidden.ct.array.astype(float)
    vessel = lab & (b > -300)
    lung = lab & (b < -700)
    assert vessel.sum() >= 5 and lung.sum() >= 20
    assert abs(float((a[vessel] - b[vessel]).mean())) < 60  # the glass hid nothing (it hid 230 HU before)
    assert float((a[lung] - b[lung]).mean()) > 150  # and raised the lung under it
