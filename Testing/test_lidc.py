"""The LIDC reader on the real LIDC-IDRI-0001 case: readers' XML → one nodule as annotations.json has it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from resmtnet.data import lidc
from resmtnet.util.errors import InputError

CASE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "LIDC-IDRI-0001"
XML = CASE / "reader-annotations-lidc.xml"

needs_case = pytest.mark.skipif(not XML.is_file(), reason=f"LIDC-IDRI-0001 not found at {CASE}")


@pytest.fixture(scope="module")
def case():
    return lidc.read_lidc_case(XML)


@needs_case
def test_xml_parses_four_readers_and_their_marks():
    read = lidc.read_lidc_xml(XML)
    assert read.series_uid == json.loads((CASE / "annotations.json").read_text())["seriesuid"]
    assert len(read.readers) == 4
    # each reader outlined exactly one nodule >= 3 mm; the rest are one-point marks
    assert sorted(m.reader for m in read.nodule_marks) == sorted(read.readers)
    assert {p.kind for p in read.points} == {"small-nodule", "non-nodule"}
    assert all(len(r.points) >= 3 for m in read.nodule_marks for r in m.rois)


@needs_case
def test_one_nodule_at_the_annotated_centre_and_size(case):
    ct, c = case
    truth = json.loads((CASE / "annotations.json").read_text())["nodules"]
    assert len(truth) == 1 and len(c.nodules) == 1
    n, t = c.nodules[0], truth[0]
    assert n.n_readers == t["readers"] == 4
    assert np.linalg.norm(np.subtract(n.center_lps, t["centre"])) < 2.0
    assert abs(n.diameter_mm - t["diameter_mm"]) / t["diameter_mm"] < 0.15
    assert sorted(n.malignancy_ratings) == sorted(t["malignancy_ratings"]) == [4, 5, 5, 5]
    assert n.malignancy_rating == 5 and n.malignancy_label == "malignant"
    assert sorted(n.texture_ratings) == sorted(t["texture_ratings"])
    assert n.nodule_type == "solid"  # texture median 5, calcification 6 (absent) for every reader
    # every reader's own outline sits where annotations.json puts that reader's annotation
    for m in n.marks:
        d = min(np.linalg.norm(np.subtract(m.center_lps, a["centre"])) for a in t["annotations"])
        assert d < 1.5
    # and the LUNA16 consensus row lies within the nodule's radius
    with open(CASE / "annotations.csv", newline="") as f:
        row = next(csv.DictReader(f))
    luna = [float(row[k]) for k in ("coordX", "coordY", "coordZ")]
    assert np.linalg.norm(np.subtract(n.center_lps, luna)) < n.diameter_mm / 2
    # the centre lies in the CT, on the nodule: dense tissue at the centre voxel
    i, j, k = np.round(ct.world_to_index(np.array(n.center_lps))).astype(int)
    assert ct.array[k, j, i] > -400


@needs_case
def test_sop_uids_and_z_positions_find_the_same_slices(case):
    ct, _c = case
    read = lidc.read_lidc_xml(XML)
    slices = lidc.slice_index(ct, CASE / "dicom", read.series_uid)
    assert len(slices.sop_to_k) == ct.array.shape[0]
    rois = [r for m in read.nodule_marks for r in m.rois]
    assert rois
    for r in rois:
        assert slices.k_of(r.sop_uid, None) == slices.k_of("", r.z_position)
    # without the DICOM files the z positions alone still place every ROI
    z_only = lidc.slice_index(ct)
    assert not z_only.sop_to_k
    assert all(z_only.k_of(r.sop_uid, r.z_position) is not None for r in rois)


@needs_case
def test_one_point_marks(case):
    _ct, c = case
    assert len(c.small_nodules) > 0 and len(c.non_nodules) > 0
    # one-point marks are placed in the CT's extent
    pts = np.array([p for _r, p in c.small_nodules + c.non_nodules])
    assert np.isfinite(pts).all()
    assert len(c.accepted(min_readers=3)) == 1 and c.accepted(min_readers=5) == []


def test_median_rating_rounds_half_toward_uncertain():
    assert lidc.median_rating([5, 4, 5, 5]) == 5
    assert lidc.median_rating([2, 3]) == 3 and lidc.median_rating([3, 4]) == 3
    assert lidc.median_rating([4, 5]) == 4 and lidc.median_rating([1, 2]) == 2
    assert lidc.median_rating([]) is None
    labels = [lidc.malignancy_label(r) for r in (1, 2, 3, 4, 5)]
    assert labels == ["benign", "benign", "uncertain", "malignant", "malignant"]
    assert lidc.nodule_type_from_ratings(1, 6) == "ground-glass"
    assert lidc.nodule_type_from_ratings(3, 6) == "part-solid"
    assert lidc.nodule_type_from_ratings(4, None) == "solid"
    assert lidc.nodule_type_from_ratings(5, 3) == "calcified"


def test_not_an_lidc_xml(tmp_path):
    p = tmp_path / "other.xml"
    p.write_text("<IdriReadMessage><x/></IdriReadMessage>")
    assert not lidc.is_lidc_xml(p)
    with pytest.raises(InputError, match="not an LIDC CT read"):
        lidc.read_lidc_xml(p)
    (tmp_path / "broken.xml").write_text("<LidcReadMessage>")
    with pytest.raises(InputError, match="not a readable LIDC XML"):
        lidc.read_lidc_xml(tmp_path / "broken.xml")
