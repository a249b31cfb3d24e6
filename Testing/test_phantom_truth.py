"""Phantom truth: a nodule the generator drew outside the lung is marked as such, and not scored."""

from __future__ import annotations

import numpy as np
import pytest
from resmtnet.data import phantom
from resmtnet.data.phantom import MIN_LUNG_SHARE, generate_phantom, phantom_seed
from resmtnet.evaluate.phantom_eval import count_outside_lung, phantom_marks
from resmtnet.io.luna16_csv import ReferenceNodule, annotations_by_scan
from scipy import ndimage


@pytest.mark.slow
def test_a_nodule_drawn_into_the_mediastinum_has_no_lung_share():
    """Validation phantom 18 of seed 2000: its 4.3 mm "pleural" nodule was placed in the mediastinum (the
    detector never finds it); the other four sit in the lung. Checked against the finished CT on its own
    terms: the tissue in a 2 mm shell around each nodule is mostly aerated lung, except around that one."""
    ph = generate_phantom(phantom_seed(2000, 18))
    spacing_zyx = np.array(ph.ct.spacing)[::-1]
    reach = np.ceil(2.0 / spacing_zyx).astype(int)
    box = np.ones(tuple(2 * reach + 1), bool)
    outside = []
    for label, (where, nod) in enumerate(zip(ndimage.find_objects(ph.labels), ph.nodules, strict=True), start=1):
        assert 0.0 <= nod.lung_share <= 1.0
        near = tuple(slice(max(s.start - r, 0), s.stop + r) for s, r in zip(where, reach, strict=True))
        labels = ph.labels[near]
        shell = ndimage.binary_dilation(labels == label, structure=box) & (labels == 0)
        aerated = float((ph.ct.array[near][shell] < phantom.AERATED_HU).mean())
        if nod.lung_share < MIN_LUNG_SHARE:
            outside.append(nod)
            assert aerated < 0.5
        else:
            assert aerated > 0.6
    assert [(round(n.diameter_mm, 1), n.location) for n in outside] == [(4.3, "pleural")]
    assert outside[0].lung_share == 0.0


def test_measuring_the_lung_share_leaves_the_phantom_as_it_was(monkeypatch):
    """The share is read off the image, not drawn: the same seed gives the same CT and nodules without it."""
    measured = generate_phantom(11, small=True, max_nodules=6)
    monkeypatch.setattr(phantom, "_lung_share", lambda *args: 1.0)
    unmeasured = generate_phantom(11, small=True, max_nodules=6)
    np.testing.assert_array_equal(measured.ct.array, unmeasured.ct.array)
    np.testing.assert_array_equal(measured.labels, unmeasured.labels)
    assert [n.center_lps for n in measured.nodules] == [n.center_lps for n in unmeasured.nodules]
    assert len(measured.nodules) >= 1 and all(0.0 <= n.lung_share <= 1.0 for n in measured.nodules)


def test_phantom_marks_leave_out_small_nodules_and_nodules_outside_the_lung(tmp_path):
    truths = [ReferenceNodule("S", (0.0, 0, 0), 8.0, 2, lung_share=0.97),
              ReferenceNodule("S", (50.0, 0, 0), 5.5, 3, lung_share=0.30),
              ReferenceNodule("S", (90.0, 0, 0), 3.0, 1, lung_share=1.0)]
    marks = phantom_marks(truths, 4.0, MIN_LUNG_SHARE)
    assert [(m.excluded, m.diameter_mm) for m in marks] == [(False, 8.0), (True, 5.5), (True, 3.0)]
    assert [m.excluded for m in phantom_marks(truths, 4.0, 0.0)] == [False, False, True]
    csv_path = tmp_path / "annotations.csv"
    csv_path.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm,malignancy,nodule_type,margin,location,"
                        "lung_share\n"
                        "S,0,0,0,8,2,solid,smooth,pleural,0.970\n"
                        "S,50,0,0,5.5,3,part-solid,smooth,pleural,0.300\n"
                        "S,90,0,0,3,1,solid,smooth,parenchyma,1.000\n"
                        "T,0,0,0,2,1,solid,smooth,pleural,0.000\n")
    assert {uid: [t.lung_share for t in ts] for uid, ts in annotations_by_scan(csv_path).items()} == {
        "S": [0.97, 0.3, 1.0], "T": [0.0]}
    assert count_outside_lung(csv_path) == 1  # the 2 mm one is out on its size already
    assert count_outside_lung(csv_path, min_diameter_mm=0.0) == 2
