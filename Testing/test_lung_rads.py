"""Lung-RADS v2022 baseline categories: each side of every published cut-off, for each nodule type."""

from __future__ import annotations

import pytest
from resmtnet.detect.lung_rads import CATEGORIES, lung_rads, measured_mm
from resmtnet.detect.nodules import Nodule


@pytest.mark.parametrize("diameter, category", [
    (5.9, "2"), (6.0, "3"),     # 6 mm
    (7.9, "3"), (8.0, "4A"),    # 8 mm
    (14.9, "4A"), (15.0, "4B"),  # 15 mm
    (3.0, "2"), (40.0, "4B"),
])
def test_solid_cut_offs(diameter, category):
    assert lung_rads("solid", diameter).category == category


@pytest.mark.parametrize("total, solid, category", [
    (5.9, 5.9, "2"),   # total < 6 mm: 2, whatever the solid part
    (6.0, 5.9, "3"),   # total >= 6 mm, solid < 6 mm
    (12.0, 0.0, "3"),
    (12.0, 6.0, "4A"),  # solid 6 mm
    (12.0, 7.9, "4A"),
    (12.0, 8.0, "4B"),  # solid 8 mm
    (25.0, 20.0, "4B"),
])
def test_part_solid_cut_offs(total, solid, category):
    assert lung_rads("part-solid", total, solid).category == category


def test_part_solid_without_a_measured_solid_component_is_the_least_its_size_allows():
    assert lung_rads("part-solid", 5.9, None).category == "2"
    result = lung_rads("part-solid", 10.0, None)
    assert result.category == "3" and "not measured" in result.rule


@pytest.mark.parametrize("diameter, category", [(29.9, "2"), (30.0, "3"), (5.0, "2"), (45.0, "3")])
def test_ground_glass_cut_off(diameter, category):
    assert lung_rads("ground-glass", diameter).category == category


@pytest.mark.parametrize("diameter", [4.0, 18.0, 40.0])
def test_benign_calcification_is_category_1_at_any_size(diameter):
    assert lung_rads("calcified", diameter, margin="spiculated").category == "1"


@pytest.mark.parametrize("nodule_type, diameter, solid, plain, spiculated", [
    ("solid", 5.9, None, "2", "2"),     # category 2 stays 2: 4X lifts only 3 and 4
    ("solid", 6.0, None, "3", "4X"),
    ("solid", 8.0, None, "4A", "4X"),
    ("solid", 15.0, None, "4B", "4X"),
    ("part-solid", 10.0, 3.0, "3", "4X"),
    ("part-solid", 10.0, 6.5, "4A", "4X"),
    ("ground-glass", 29.9, None, "2", "2"),
    ("ground-glass", 30.0, None, "3", "4X"),
])
def test_spiculation_lifts_categories_3_and_4_to_4x(nodule_type, diameter, solid, plain, spiculated):
    assert lung_rads(nodule_type, diameter, solid, margin="smooth").category == plain
    assert lung_rads(nodule_type, diameter, solid, margin="lobulated").category == plain
    assert lung_rads(nodule_type, diameter, solid, margin="spiculated").category == spiculated


@pytest.mark.parametrize("raw, recorded, category", [
    (5.94, 5.9, "2"),   # recorded to 0.1 mm, as Lung-RADS v2022 measures: 5.94 mm is 5.9 mm
    (5.95, 6.0, "3"),   # and 5.95 mm is 6.0 mm, over the cut-off
    (7.96, 8.0, "4A"),
    (14.949, 14.9, "4A"),
])
def test_size_is_taken_to_one_decimal_place(raw, recorded, category):
    assert measured_mm(raw) == recorded
    assert lung_rads("solid", raw).category == category


def test_part_solid_solid_component_is_taken_to_one_decimal_place():
    assert lung_rads("part-solid", 12.0, 5.95).category == "4A"
    assert lung_rads("part-solid", 12.0, 7.949).category == "4A"


def test_an_unknown_type_is_refused():
    with pytest.raises(ValueError, match="nodule type"):
        lung_rads("cavitary", 10.0)


def test_the_nodule_reports_its_category_and_rule_everywhere():
    """The Nodule's category comes from its type, size, solid component and margin, and to_dict carries the rule
    that gave it (report.json), and every category is one the colour scale knows."""
    n = Nodule(1, (0.0, 0.0, 0.0), 0.9, 11.0, 0.4, nodule_type="part-solid", margin="smooth", solid_component_mm=6.2,
               type_probabilities={"part-solid": 0.7, "solid": 0.3})
    assert n.lung_rads == "4A" and not n.type_assumed and n.type_text == "part-solid"
    d = n.to_dict()
    assert d["lung_rads"] == "4A" and d["lung_rads_rule"] == "part-solid, solid component 6 to < 8 mm"
    assert Nodule.from_dict(d).lung_rads == "4A"
    assert Nodule(2, (0.0, 0.0, 0.0), 0.9, 18.0, 0.1, nodule_type="calcified").lung_rads == "1"
    assert set(CATEGORIES) == {"1", "2", "3", "4A", "4B", "4X"}


def test_a_type_no_head_gave_is_reported_as_assumed():
    """A model without the type head leaves every finding "solid": the rule, the reader's text and report.json
    say that it is an assumption, and the finding's label does not state a type."""
    n = Nodule(1, (0.0, 0.0, 0.0), 0.9, 25.0, 0.5)
    assert n.type_assumed and n.type_text == "solid (assumed)"
    assert n.lung_rads == "4B"
    assert n.lung_rads_result.rule == "solid >= 15 mm (type assumed: the model has no type head)"
    assert n.to_dict()["type_assumed"] is True
    assert n.label == "N1 · 25.0 mm · LR 4B · p 0.90 · malignant 50 %"
