"""The LUNA16 CSV owner: what its writer writes its reader reads back, and what it refuses, naming the line."""

from __future__ import annotations

from pathlib import Path

import pytest
from resmtnet.io.luna16_csv import (
    ANNOTATION_COLUMNS,
    PHANTOM_ANNOTATION_COLUMNS,
    ReferenceNodule,
    annotation_columns,
    annotations_by_scan,
    read_annotations,
    read_negatives,
    rounded_rating,
    write_annotations,
)
from resmtnet.util.errors import InputError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_an_annotations_file_written_is_read_back_with_every_column(tmp_path):
    nodules = [ReferenceNodule("A", (1.23456, -2.0, 300.5), 8.1234, 3, "solid", 0.9876, "spiculated", "pleural"),
               ReferenceNodule("A", (0.0, 0.0, 0.0), 4.0, 2.5, "ground-glass", 1.0, "smooth", "parenchyma"),
               ReferenceNodule("B", (5.0, 6.0, 7.0), 12.0)]
    path = write_annotations(tmp_path / "annotations.csv", nodules)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == ",".join(PHANTOM_ANNOTATION_COLUMNS)
    assert lines[1] == "A,1.235,-2.000,300.500,8.123,3,solid,spiculated,pleural,0.988"
    assert lines[2].split(",")[5] == "2.5" and lines[3] == "B,5.000,6.000,7.000,12.000,,,,,1.000"
    back = annotations_by_scan(path)
    assert list(back) == ["A", "B"] and len(back["A"]) == 2
    first, second = back["A"]
    assert first.center_lps == (1.235, -2.0, 300.5) and first.diameter_mm == 8.123
    assert (first.malignancy_rating, first.nodule_type, first.margin, first.location, first.lung_share) == (
        3.0, "solid", "spiculated", "pleural", 0.988)
    assert second.malignancy_rating == 2.5  # a median rating stays what the readers said
    assert back["B"][0] == ReferenceNodule("B", (5.0, 6.0, 7.0), 12.0)
    assert annotation_columns(path) == list(PHANTOM_ANNOTATION_COLUMNS)

    plain = write_annotations(tmp_path / "plain.csv", nodules[:1], ANNOTATION_COLUMNS)
    assert plain.read_text(encoding="utf-8").splitlines() == ["seriesuid,coordX,coordY,coordZ,diameter_mm",
                                                              "A,1.235,-2.000,300.500,8.123"]
    assert read_annotations(plain)[0].lung_share == 1.0  # readers mark lung nodules
    with pytest.raises(ValueError, match="must start with"):
        write_annotations(tmp_path / "bad.csv", nodules, ("seriesuid", "probability"))


@pytest.mark.parametrize(("cells", "message"), [
    ("1,2,3,-4,,", "line 3: diameter_mm -4 is impossible"),
    ("1,2,3,4,6,", "line 3: malignancy 6 is impossible"),
    ("1,2,3,4,2,1.5", "line 3: lung_share 1.5 is impossible"),
    ("1,x,3,4,2,", "line 3: coordY is not a number"),
])
def test_an_impossible_annotation_is_refused_naming_file_and_line(tmp_path, cells, message):
    path = tmp_path / "annotations.csv"
    path.write_text(f"seriesuid,coordX,coordY,coordZ,diameter_mm,malignancy,lung_share\nS,0,0,0,5,,\nS,{cells}\n",
                    encoding="utf-8")
    with pytest.raises(InputError, match=message) as caught:
        read_annotations(path)
    assert str(path) in str(caught.value)


def test_excluded_marks_may_have_no_size_and_a_missing_column_is_named(tmp_path):
    path = tmp_path / "annotations_excluded.csv"
    path.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\nS,1,2,3,-1\n", encoding="utf-8")
    (mark,) = read_annotations(path, excluded=True)
    assert mark.excluded and mark.radius_mm == 5.0  # the LUNA16 script's 10 mm
    path.write_text("seriesuid,coordX,coordY,coordZ\nS,1,2,3\n", encoding="utf-8")
    with pytest.raises(InputError, match="lacks column"):
        read_annotations(path)


def test_half_way_ratings_round_toward_uncertain():
    assert [rounded_rating(r) for r in (None, 1.0, 1.5, 2.5, 3.0, 3.5, 4.5, 5)] == [None, 1, 2, 3, 3, 3, 4, 5]


def test_candidates_give_the_class_0_points_of_the_wanted_scans(tmp_path):
    path = tmp_path / "candidates.csv"
    path.write_text("seriesuid,coordX,coordY,coordZ,class\nA,1,2,3,0\nA,4,5,6,1\nB,7,8,9,0.0\nC,0,0,0,0\n",
                    encoding="utf-8")
    assert read_negatives(path, wanted=["A", "B"]) == {"A": [(1.0, 2.0, 3.0)], "B": [(7.0, 8.0, 9.0)]}
    assert set(read_negatives(path)) == {"A", "B", "C"}


def test_the_real_scans_annotations_read_as_reference_nodules():
    files = sorted(DATA.glob("*/annotations.csv"))
    if not files:
        pytest.skip(f"no real CT annotations in {DATA}")
    for f in files:
        marks = read_annotations(f)
        assert marks and all(m.diameter_mm > 0 and m.seriesuid and not m.excluded for m in marks), f
    lidc = DATA / "LIDC-IDRI-0001" / "annotations.csv"
    if lidc.is_file():
        (nodule,) = read_annotations(lidc)
        assert round(nodule.diameter_mm, 2) == 23.35 and nodule.malignancy_rating is None
