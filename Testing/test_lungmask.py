"""Lung mask on the real LIDC-IDRI-0001 CT, on variants of it that real scans produce (padding outside
a circular field, airways and lungs leaving the top slice, lungs cut by the field's edge), on
phantoms against their true lung mask, and on volumes that are not chests."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from resmtnet.detect.lungmask import lung_bbox, lung_mask, segment_chest
from resmtnet.util.errors import NoLungsError
from scipy import ndimage

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "LIDC-IDRI-0001"
needs_real = pytest.mark.skipif(not (REAL / "dicom").is_dir(), reason=f"real CT not found at {REAL}")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


@pytest.fixture(scope="module")
def real():
    """(CT, its lung mask, the annotated nodule's voxel index z, y, x)."""
    from resmtnet.io.ctio import read_ct

    ct = read_ct(REAL / "dicom")
    with open(REAL / "annotations.csv", newline="") as f:
        row = next(csv.DictReader(f))
    centre = [float(row[k]) for k in ("coordX", "coordY", "coordZ")]
    nodule_zyx = tuple(int(v) for v in np.round(ct.world_to_index(centre))[::-1])
    return ct, lung_mask(ct.array, ct.spacing, direction=ct.direction), nodule_zyx


@needs_real
def test_real_lungs_plausible_with_nodule_inside(real):
    ct, mask, nodule = real
    assert mask.shape == ct.array.shape and mask.dtype == bool
    litres = mask.sum() * np.prod(ct.spacing) / 1e6
    assert 2.0 < litres < 8.0, litres
    # the annotated 23 mm nodule is attached to the posterior chest wall: the closing must take it in
    assert mask[nodule]
    # both lungs: each side of the body's midline holds at least a litre
    mid = ct.array.shape[2] // 2
    for side in (mask[:, :, :mid], mask[:, :, mid:]):
        assert side.sum() * np.prod(ct.spacing) / 1e6 > 1.0
    # the top slice is above the lung apices: it shows the trachea (airway air), which is not lung
    assert not mask[-1].any()


@needs_real
def test_real_outside_air_and_padding_excluded(real):
    ct, mask, _ = real
    a = ct.array
    padding = a < -1500  # this scanner writes -2048 outside its circular field of view
    assert padding.any() and not (mask & padding).any()
    # air in the field around the body: in each slice, air joined to the padding or the image border
    air = (a < -900) & ~padding
    outside = np.zeros_like(air)
    for z in range(a.shape[0]):
        labels, _ = ndimage.label(air[z])
        seeds = np.unique(labels[ndimage.binary_dilation(padding[z]) | _frame(a.shape[1:])])
        outside[z] = np.isin(labels, seeds[seeds > 0])
    assert outside.sum() > 1e6  # there is plenty of it around this patient
    assert (mask & outside).sum() < 1e-3 * mask.sum()


def _frame(shape) -> np.ndarray:
    f = np.zeros(shape, dtype=bool)
    f[0, :] = f[-1, :] = f[:, 0] = f[:, -1] = True
    return f


def _circular_field(a: np.ndarray, radius: float, value: float, cy: float, cx: float) -> np.ndarray:
    yy, xx = np.indices(a.shape[1:])
    out = a.copy()
    out[:, (yy - cy) ** 2 + (xx - cx) ** 2 > radius**2] = value
    return out


def _channel_to_outside(a: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """A 10 mm air channel through the right chest wall, from the lung out of the body, over 50
    slices: the lung meets the outside air (as where a lung reaches the edge of a tight field)."""
    out = a.copy()
    for z in range(50, 100):
        lung_x = np.flatnonzero(lungs[z, 297])
        if lung_x.size:
            band = out[z, 290:305, : lung_x[0] + 3]
            band[band > -1500] = -1000.0
    return out


VARIANTS = {
    # scanners pad outside their reconstruction circle; a tighter circle touches the body's sides
    "circle -2048": lambda a, ref: (_circular_field(a, 215, -2048.0, 256, 256), np.s_[:, :, :]),
    "circle -3024": lambda a, ref: (_circular_field(a, 215, -3024.0, 256, 256), np.s_[:, :, :]),
    # a small field off centre cuts through both lungs: they run straight into the padding
    "circle through lungs": lambda a, ref: (_circular_field(a, 160, -3024.0, 290, 256), np.s_[:, :, :]),
    # the trachea, then the lungs themselves, leave the top slice
    "trachea leaves top": lambda a, ref: (a[:118], np.s_[:118, :, :]),
    "lungs leave top": lambda a, ref: (a[:105], np.s_[:105, :, :]),
    # cropped so that one lung, then both, run into the image edge
    "crop through right lung": lambda a, ref: (a[:, :, 170:], np.s_[:, :, 170:]),
    "crop through both lungs": lambda a, ref: (a[:, 100:420, 120:380], np.s_[:, 100:420, 120:380]),
    # the lung joins the outside air through a gap in the chest wall
    "lung open to the outside": lambda a, ref: (_channel_to_outside(a, ref), np.s_[:, :, :]),
}


@needs_real
@pytest.mark.parametrize("name", list(VARIANTS))
def test_real_variants_keep_the_mask(real, name):
    ct, reference, nodule = real
    variant, region = VARIANTS[name](ct.array, reference)
    mask = lung_mask(variant, ct.spacing)
    ref = reference[region]
    in_field = variant > -1500
    assert dice(mask & in_field, ref & in_field) > 0.9
    assert not (mask & ~in_field).any()
    local = tuple(n - (r.start or 0) for n, r in zip(nodule, region, strict=True))
    if all(0 <= i < s for i, s in zip(local, variant.shape, strict=True)) and in_field[local]:
        assert mask[local]


@pytest.mark.parametrize("seed", [11, 12])
def test_phantom_mask_matches_truth(seed):
    from resmtnet.data.phantom import generate_phantom

    ph = generate_phantom(seed, small=True)
    ct = ph.ct
    mask = lung_mask(ct.array, ct.spacing, direction=ct.direction)
    assert dice(mask, ph.lung_mask) > 0.9
    # every nodule is inside, or (one on the pleura, centred on the chest wall's side) within 3 mm
    distance_mm = ndimage.distance_transform_edt(~mask, sampling=tuple(reversed(ct.spacing)))
    for n in ph.nodules:
        idx = tuple(int(v) for v in np.round(ct.world_to_index(n.center_lps))[::-1])
        assert mask[idx] or (n.location == "pleural" and distance_mm[idx] <= 3.0), n


def test_phantom_mask_without_direction_matches_truth():
    from resmtnet.data.phantom import generate_phantom

    ph = generate_phantom(13, small=True)
    assert dice(lung_mask(ph.ct.array, ph.ct.spacing), ph.lung_mask) > 0.9


def test_non_chest_volumes_raise():
    rng = np.random.default_rng(0)
    _, yy, xx = np.indices((40, 200, 200))
    water_cylinder = np.where((yy - 100) ** 2 + (xx - 100) ** 2 < 80**2, 0.0, -1000.0)
    water_cylinder = (water_cylinder + rng.normal(0, 15, water_cylinder.shape)).astype(np.float32)
    with pytest.raises(NoLungsError, match="no lungs found"):
        lung_mask(water_cylinder, (1.0, 1.0, 2.5))
    # a cylinder with a small air pocket (bowel-like gas, 0.1 litre) is still no chest
    gas = water_cylinder.copy()
    gas[10:30, 90:110, 80:120] = -1000.0 + rng.normal(0, 15, (20, 20, 40))
    with pytest.raises(NoLungsError):
        lung_mask(gas, (1.0, 1.0, 2.5))


@needs_real
def test_real_abdomen_slab_raises(real):
    ct, reference, _ = real
    below = int(np.flatnonzero(reference.any(axis=(1, 2)))[0])  # the slab under the lung bases
    assert below >= 10
    with pytest.raises(NoLungsError, match="is this a chest CT"):
        lung_mask(ct.array[:below], ct.spacing)


@needs_real
def test_body_contains_lungs_and_is_larger(real):
    ct, _, _ = real
    masks = segment_chest(ct.array, ct.spacing, direction=ct.direction)
    assert (masks.lungs & ~masks.body).sum() == 0
    fraction = masks.lungs.sum() / masks.body.sum()
    assert 0.05 < fraction < 0.5


def test_lung_bbox_margins_and_clipping():
    m = np.zeros((20, 30, 40), dtype=bool)
    m[5:8, 10:12, 2:30] = True
    assert lung_bbox(m, 0) == (slice(5, 8), slice(10, 12), slice(2, 30))
    assert lung_bbox(m, 3) == (slice(2, 11), slice(7, 15), slice(0, 33))
    assert lung_bbox(m, (1, 0, 20)) == (slice(4, 9), slice(10, 12), slice(0, 40))
    with pytest.raises(NoLungsError):
        lung_bbox(np.zeros_like(m), 2)
