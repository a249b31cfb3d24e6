"""Phantom mixes: evaluation keeps the screening mix; training may add the thick one in its own cache."""

from __future__ import annotations

import numpy as np
import pytest
from resmtnet.data.phantom import PHANTOM_MIXES, generate_phantom
from resmtnet.data.training_data import PhantomCases, TrainCase


def test_the_screening_mix_is_the_default_and_an_unknown_mix_is_refused():
    default = generate_phantom(5, small=True)
    named = generate_phantom(5, small=True, mix="screening")
    np.testing.assert_array_equal(default.ct.array, named.ct.array)
    assert default.nodules == named.nodules
    with pytest.raises(ValueError, match="unknown phantom mix 'hard'"):
        generate_phantom(5, small=True, mix="hard")
    for mix in PHANTOM_MIXES.values():
        assert sum(mix.type_weights) == pytest.approx(1.0) and sum(mix.location_weights) == pytest.approx(1.0)


@pytest.mark.slow  # full-size phantoms
def test_the_thick_mix_draws_the_screening_nodules_through_thick_slices():
    """Same seed, same patient and nodules; only the scanner's slices differ (3-5 mm against 0.625-2.5 mm)."""
    seed = 11
    screening = generate_phantom(seed, max_nodules=2)
    thick = generate_phantom(seed, max_nodules=2, mix="thick")
    assert thick.nodules == screening.nodules
    assert screening.ct.spacing[2] <= 2.5
    assert thick.ct.spacing[2] in PHANTOM_MIXES["thick"].slice_thicknesses_mm
    # fewer, thicker slices over the same body: the z extent is kept within one slice
    extent = [p.ct.spacing[2] * (p.ct.array.shape[0] - 1) for p in (screening, thick)]
    assert abs(extent[0] - extent[1]) <= thick.ct.spacing[2]


@pytest.mark.slow  # full-size phantoms
def test_phantom_sets_of_two_mixes_share_a_cache_without_colliding(tmp_path):
    screening = PhantomCases(tmp_path, 1000, 3, 1.5, 8)
    thick = PhantomCases(tmp_path, 6000, 1, 1.5, 8, mix="thick")
    both = screening + thick
    ids = [cid for cid, _, _ in both.items]
    assert ids == ["phantom-s1000-0000", "phantom-s1000-0001", "phantom-s1000-0002", "phantom-thick-s6000-0000"]
    # the screening set's cache key names no mix, as before mixes existed (v4: cases carry lung_share, type and
    # margin; renderer 2: ground glass keeps the vessels in it)
    assert both.path("phantom-s1000-0000").name == "phantom-s1000-0000-691a1523d8.npz"
    assert both.path("phantom-thick-s6000-0000").name.startswith("phantom-thick-s6000-0000-")
    assert both.path("phantom-thick-s6000-0000").name[-15:] != "691a1523d8.npz"[-15:]
    thick.ensure()
    [case] = thick.load()
    assert isinstance(case, TrainCase) and case.case_id == "phantom-thick-s6000-0000"
    ph = generate_phantom(thick.items[0][1], max_nodules=8, mix="thick")
    assert len(case.centers) == len(ph.nodules) >= 1
    np.testing.assert_allclose(np.sort(case.diameters), np.sort([n.diameter_mm for n in ph.nodules]), rtol=1e-5)
    by_size = np.argsort([n.diameter_mm for n in ph.nodules])  # each nodule keeps its own lung_share
    np.testing.assert_allclose(case.lung_share[np.argsort(case.diameters)],
                               np.array([n.lung_share for n in ph.nodules])[by_size], rtol=1e-6)
    with pytest.raises(ValueError, match="share"):
        screening + PhantomCases(tmp_path, 6000, 1, 1.0, 8, mix="thick")
    with pytest.raises(ValueError, match="unknown phantom mix"):
        PhantomCases(tmp_path, 3000, 1, 1.5, 8, mix="hard")
