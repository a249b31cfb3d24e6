"""Target coding and decoding: a planted peak comes back at its world position, whatever the axes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from resmtnet.data.phantom import DIRECTIONS, generate_phantom
from resmtnet.io.ctio import CTVolume
from resmtnet.model.prepare import to_model_grid
from resmtnet.model.targets import decode, encode, merge_duplicates


def _outputs_from_targets(t) -> dict[str, torch.Tensor]:
    """What a perfect network would output for these targets."""
    heat = np.clip(t.heat, 1e-6, 1 - 1e-6)
    return {"center": torch.from_numpy(np.log(heat / (1 - heat)))[None, None].float(),
            "offset": torch.from_numpy(t.offset)[None].float(),
            "log_diameter": torch.from_numpy(t.log_diameter)[None, None].float(),
            "malignancy": torch.from_numpy(np.where(t.malignant > 0, 4.0, -4.0))[None, None].float()}


@pytest.mark.parametrize("direction", DIRECTIONS + [(0, 1, 0, 1, 0, 0, 0, 0, -1)])
def test_planted_peak_decodes_to_its_world_position(direction):
    rng = np.random.default_rng(1)
    arr = np.full((40, 50, 60), -800, np.float32)
    ct = CTVolume(arr, (0.8, 0.7, 1.25), (12.0, -30.0, 100.0), tuple(float(v) for v in direction), "t", "test")
    # a world point inside the volume
    idx = np.array([20.3, 27.7, 18.2])  # x, y, z continuous index
    world = ct.index_to_world(idx)
    hu, grid = to_model_grid(ct, 1.5)
    vox = grid.world_to_voxel(world)
    assert np.all(vox > 0) and np.all(vox < np.array(hu.shape))
    shape_cells = tuple(int(np.ceil(s / 16) * 4) for s in hu.shape)
    t = encode(shape_cells, vox[None], np.array([9.0]), np.array([5]), 4, 1.5)
    peaks = decode(_outputs_from_targets(t), 4, threshold=0.5)
    assert len(peaks) == 1
    back = grid.voxel_to_world(peaks[0].position_vox)
    np.testing.assert_allclose(back, world, atol=1e-4)
    assert peaks[0].diameter_mm == pytest.approx(9.0, rel=1e-4)
    assert peaks[0].malignancy > 0.9
    del rng


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_phantom_nodules_are_dense_on_the_model_grid(direction):
    """The canonical grid keeps anatomy in place for every stored orientation."""
    ph = generate_phantom(3, small=True, direction=direction)
    hu, grid = to_model_grid(ph.ct, 1.5)
    for n in ph.nodules:
        if n.diameter_mm < 6 or n.nodule_type == "ground-glass":
            continue
        v = np.round(grid.world_to_voxel(n.center_lps)).astype(int)
        assert hu[tuple(v)] > -500, (n, hu[tuple(v)])


def test_merge_keeps_the_most_probable_of_overlapping_peaks():
    from resmtnet.model.targets import Peak

    a = Peak(np.array([10.0, 10, 10]), 0.9, 12.0, 0.5)
    b = Peak(np.array([12.0, 10, 10]), 0.6, 10.0, 0.5)  # 3 mm away: inside a's sphere
    c = Peak(np.array([30.0, 10, 10]), 0.7, 6.0, 0.5)  # 30 mm away: separate
    kept = merge_duplicates([b, c, a], spacing_mm=1.5)
    assert [p.probability for p in kept] == [0.9, 0.7]


def test_malignancy_targets_follow_the_lidc_rating():
    """4-5 malignant, 1-2 benign, 3 a soft 0.5 that still trains the head, 0 (unrated) masked out."""
    centers = np.array([[6.0, 6, 6], [6.0, 6, 26], [6.0, 26, 6], [6.0, 26, 26], [26.0, 6, 6]])
    t = encode((10, 10, 10), centers, np.full(5, 8.0), np.array([5, 4, 3, 1, 0]), 4, 1.5)
    cells = np.round((centers - 1.5) / 4).astype(int)
    got = [(float(t.malignant[tuple(k)]), float(t.malig_mask[tuple(k)])) for k in cells]
    assert got == [(1.0, 1.0), (1.0, 1.0), (0.5, 1.0), (0.0, 1.0), (0.0, 0.0)]


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1)])
def test_centre_moves_to_the_nodules_own_voxels_but_not_along_a_leak(direction):
    from resmtnet.detect.measurement import grow_mask, refined_centre

    a = np.full((60, 60, 60), -850, np.float32)
    zz, yy, xx = np.mgrid[:60, :60, :60]
    a[(zz - 30) ** 2 + (yy - 30) ** 2 + (xx - 30) ** 2 <= 5 ** 2] = 30  # a 10-voxel nodule at (30, 30, 30)
    ct = CTVolume(a, (0.8, 0.8, 1.0), (10.0, -20.0, 5.0), direction, "s", "synthetic")
    truth = np.asarray(ct.index_to_world(np.array([30.0, 30.0, 30.0])))
    guess = np.asarray(ct.index_to_world(np.array([32.0, 30.0, 30.0])))  # the network 1.6 mm off in x
    box, mask, measured = grow_mask(ct, guess, 9.0)
    assert measured
    assert np.linalg.norm(refined_centre(ct, box, mask, guess, 9.0) - truth) < 0.3
    # a vessel inside the sphere that would drag the centroid more than half the radius: keep the peak
    leak = np.zeros_like(mask)
    leak[:, :, -3:] = True
    moved = refined_centre(ct, box, leak, guess, 9.0)
    assert np.array_equal(moved, guess)
