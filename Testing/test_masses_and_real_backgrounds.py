"""Masses in phantoms and synthetic lesions in real lungs: the training data issue 30 asks for."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from resmtnet.data.phantom import (
    MASS_DIAMETER_RANGE_MM,
    MASS_LOCATIONS,
    NODULE_RENDERER_VERSION,
    PHANTOM_MIXES,
    generate_phantom,
    insert_lesions,
)
from resmtnet.data.real_backgrounds import RealBackgroundCases, case_folders, make_case
from resmtnet.io.ctio import write_volume
from resmtnet.io.luna16_csv import ReferenceNodule, write_annotations
from scipy import ndimage


def test_the_screening_and_thick_mixes_draw_what_they_drew_before_masses_existed():
    """The evaluation set and every cached training case depend on it: the same seed, the same voxels. A change
    to how nodules are drawn changes these hashes and must come with a new NODULE_RENDERER_VERSION (the cache key
    of every cached case); version 2 redrew ground glass (seed 456's thick phantom holds some)."""
    assert NODULE_RENDERER_VERSION == 2
    ph = generate_phantom(123, small=True)
    assert hashlib.sha1(ph.ct.array.tobytes()).hexdigest()[:16] == "bc1276be53e20629"
    assert hashlib.sha1(ph.labels.tobytes()).hexdigest()[:16] == "447a446f049515ec"
    assert not any(n.cavitating or n.location in MASS_LOCATIONS for n in ph.nodules)
    assert hashlib.sha1(generate_phantom(456, small=True, mix="thick").ct.array.tobytes()).hexdigest()[:16] \
        == "53aedc682532b048"
    assert PHANTOM_MIXES["screening"].masses == PHANTOM_MIXES["thick"].masses == (0, 0)


@pytest.fixture(scope="module")
def mass_phantom():
    """Seed 3 of the masses mix: a cavitating hilar mass and a 55 mm one against the chest wall."""
    return generate_phantom(3, mix="masses", max_nodules=8)


@pytest.mark.slow  # a full-size phantom
def test_masses_are_30_to_80_mm_centred_on_what_was_drawn_and_reach_beyond_the_lung(mass_phantom):
    ph = mass_phantom
    masses = [(i, n) for i, n in enumerate(ph.nodules) if n.location in MASS_LOCATIONS]
    assert 1 <= len(masses) <= 2 and len(ph.nodules) > len(masses)  # screening nodules beside them
    ct = ph.ct
    D = np.asarray(ct.direction).reshape(3, 3) * np.asarray(ct.spacing)
    air = ct.array < -900
    for i, n in masses:
        lo, hi = MASS_DIAMETER_RANGE_MM
        assert lo - 5 <= n.diameter_mm <= hi + 5  # its equivalent sphere as drawn (lobes and clipping move it)
        assert n.malignancy >= 4 and n.nodule_type == "solid"
        own = ph.labels == i + 1
        centroid = np.asarray(ct.origin) + D @ np.asarray(ndimage.center_of_mass(own))[::-1]
        assert np.linalg.norm(centroid - np.asarray(n.center_lps)) < 1.5
        # abuts or invades what lies beyond the lung: soft tissue of the wall or mediastinum touches it
        rim = ndimage.binary_dilation(own, iterations=3) & ~own
        assert (rim & ~ph.lung_mask & (ct.array > -200)).sum() > 50
        assert 0.55 <= n.lung_share < 1.0  # a lung mass (training teaches it), reaching beyond the lung
        if n.cavitating:  # air inside the mass, away from its edge
            assert (air & ndimage.binary_erosion(own, iterations=2)).sum() > 20
    assert any(n.cavitating for _, n in masses)


def _phantom_case_folder(root, name: str, seed: int):
    """A small phantom written as a real case folder (a volume and its annotations.csv)."""
    ph = generate_phantom(seed, small=True, max_nodules=1)
    folder = root / name
    folder.mkdir(parents=True)
    write_volume(ph.ct, folder / "ct.nrrd", integer=True)
    write_annotations(folder / "annotations.csv",
                      [ReferenceNodule(ph.ct.seriesuid, n.center_lps, n.diameter_mm) for n in ph.nodules])
    return ph


def test_lesions_inserted_into_a_scan_lie_in_its_lungs_clear_of_its_own_lesion_and_change_nothing_else(tmp_path):
    ph = _phantom_case_folder(tmp_path, "case-a", 21)
    case = make_case("a", tmp_path / "case-a", 3.0, 5, nodules=3, masses=(0, 0))
    again = make_case("a", tmp_path / "case-a", 3.0, 5, nodules=3, masses=(0, 0))
    np.testing.assert_array_equal(case.image, again.image)  # deterministic from the seed
    known = len(ph.nodules)
    assert len(case.diameters) > known
    assert list(case.malignancy[:known]) == [5] * known and list(case.nodule_types[:known]) == [-1] * known
    assert (case.nodule_types[known:] >= 0).all()
    # the case's own lesion stays where the truth says, as a positive
    origin, sp = np.asarray(case.origin), case.spacing
    own = (np.asarray(ph.nodules[0].center_lps) - origin)[::-1] / sp
    np.testing.assert_allclose(case.centers[0], own, atol=1e-3)
    for c, d in zip(case.centers[known:], case.diameters[known:]):
        gap = np.linalg.norm((c - own) * sp) - d / 2 - ph.nodules[0].diameter_mm / 2
        assert gap >= 15.0 - sp  # the clearance, within a voxel of rendering
    # the image changed near the inserted lesions only
    plain = make_case("a", tmp_path / "case-a", 3.0, 5, nodules=0, masses=(0, 0))
    changed = np.argwhere(np.abs(case.image.astype(int) - plain.image) > 0)
    near = np.min([np.linalg.norm((changed - c) * sp, axis=1) - d for c, d in
                   zip(case.centers[known:], case.diameters[known:])], axis=0)
    assert changed.size and near.max() < 6.0
    # in the lung: mostly aerated around their centres before insertion
    for c in case.centers[known:]:
        z, y, x = np.round(c).astype(int)
        assert plain.image[z, y, x] < -400 or plain.image[max(z - 1, 0):z + 2, y - 1:y + 2, x - 1:x + 2].min() < -400


def test_real_background_cases_leave_the_held_out_case_unread_and_cache_what_they_make(tmp_path):
    _phantom_case_folder(tmp_path / "cases", "train-me", 21)
    _phantom_case_folder(tmp_path / "cases", "4D-Lung-113_HM10395", 22)  # the default held-out name
    assert [f.name for f in case_folders(tmp_path / "cases")] == ["train-me"]
    src = RealBackgroundCases(tmp_path / "cache", tmp_path / "cases", 2, 11000, 3.0, nodules=1, masses=(0, 0))
    assert [cid for cid, _, _ in src.items] == ["real-train-me-s11000-00", "real-train-me-s11000-01"]
    src.ensure()
    a, b = src.load()
    assert not np.array_equal(a.image, b.image)  # each copy its own lesions
    with pytest.raises(ValueError, match="no real case outside the held-out ones"):
        case_folders(tmp_path / "cases", holdout=("train-me", "4D-Lung-113_HM10395"))
    with pytest.raises(ValueError, match="no such folder"):
        case_folders(tmp_path / "nowhere")


def test_a_mass_inserted_into_a_lung_abuts_its_edge_and_is_sized_as_drawn():
    """On a plain box lung (air in soft tissue) the masses sit against the edge, sized as their label."""
    hu = np.full((70, 90, 120), 40.0, np.float32)
    lung = np.zeros(hu.shape, bool)
    lung[5:65, 10:80, 8:55] = lung[5:65, 10:80, 65:112] = True
    hu[lung] = -850.0
    out, lesions = insert_lesions(np.random.default_rng(4), hu, lung, np.zeros(3), 1.5, np.zeros((0, 3)),
                                  np.zeros(0), nodules=0, masses=(1, 1))
    [m] = lesions
    assert m.nodule.location in ("mediastinal", "chest wall")
    assert MASS_DIAMETER_RANGE_MM[0] - 5 <= m.nodule.diameter_mm <= MASS_DIAMETER_RANGE_MM[1] + 5
    z, y, x = np.round(m.center_vox).astype(int)
    assert out[z, y, x] > -300  # tissue where lung was
    assert m.nodule.lung_share < 1.0


@pytest.mark.slow  # reads and masks a real CT
def test_lesions_inserted_into_lidc_idri_0001_lie_in_its_lungs_clear_of_the_readers_nodule(lidc_dir):
    case = make_case("lidc", lidc_dir, 1.5, 3, nodules=4, masses=(1, 1))
    readers = case.centers[0]
    assert case.malignancy[0] == 5 and len(case.diameters) >= 4
    for c, d in zip(case.centers[1:], case.diameters[1:]):
        assert np.linalg.norm((c - readers) * 1.5) - d / 2 - case.diameters[0] / 2 >= 13.5
        assert 2.5 <= d <= 90


def test_a_window_centred_on_a_mass_holds_it_whole():
    from resmtnet.data.training_data import TrainCase
    from resmtnet.model.model import ModelConfig
    from resmtnet.train.training import PatchSampler, TrainConfig

    case = TrainCase("m", np.full((120, 120, 120), -850, np.int16), np.zeros(3), 1.5,
                     centers=np.array([[60.0, 60.0, 60.0]], np.float32), diameters=np.array([75.0], np.float32),
                     malignancy=np.array([5], np.int16), negatives=np.zeros((0, 3), np.float32))
    sampler = PatchSampler([case], TrainConfig(positive_fraction=1.0), ModelConfig(spacing_mm=1.5), 0)
    for _ in range(50):
        _patch, centres, diameters, *_ = sampler.sample()
        [c], [d] = centres, diameters  # in window voxels and window mm (64 voxels of 1.5 mm)
        r = d / 2 / 1.5
        assert np.all(c - r >= -1.0) and np.all(c + r <= 65.0), (c, r)  # whole, to the rounding of its window
        assert d * 1.4 <= 64 * 1.5 + 1.5
