"""Lung-RADS v2022 category of one nodule on a baseline (first) screening CT.

Source: ACR Lung-RADS v2022 (released November 2022), as summarised by Christensen J. et al., "ACR Lung-RADS
v2022: Assessment Categories and Management Recommendations", CHEST 2024;165(3):738-753, whose size cut-offs
for a baseline scan are those of v1.1 (ACR Lung-RADS v1.1 table, e.g. NCBI Bookshelf NBK568579, Appendix A
Table 2), v2022 adding juxtapleural nodules to the benign-morphology rule and 4X for suspicious features:

=============  ======================================================================  ========
type           baseline rule (mean diameter to 0.1 mm)                                  category
=============  ======================================================================  ========
calcified      benign calcification (complete, central, popcorn, concentric rings)     1
solid          < 6 mm                                                                  2
solid          6 to < 8 mm                                                             3
solid          8 to < 15 mm                                                            4A
solid          >= 15 mm                                                                4B
part-solid     total < 6 mm                                                            2
part-solid     total >= 6 mm, solid component < 6 mm                                   3
part-solid     total >= 6 mm, solid component 6 to < 8 mm                              4A
part-solid     total >= 6 mm, solid component >= 8 mm                                  4B
ground-glass   < 30 mm                                                                 2
ground-glass   >= 30 mm                                                                3
any            category 3, 4A or 4B with spiculation (a suspicious feature)             4X
=============  ======================================================================  ========

Not applied here, because the detector does not know it: priors (new, growing or stable nodules: every scan is
read as a baseline), juxtapleural and perifissural benign morphology (solid, smooth, < 10 mm, attached to the
pleura or a fissure: category 2; no fissures or nodule-to-pleura contact are found), airway nodules, atypical
cysts, and suspicious features other than spiculation. "calcified" is the type head's class for a benign
calcification pattern; a calcified nodule is category 1 whatever its size.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Every category this module gives, lowest to highest concern (the colour scale's order).
CATEGORIES = ("1", "2", "3", "4A", "4B", "4X")

#: What each category means here, in a few words (legends, the README's table).
CATEGORY_TEXT = {
    "1": "benign calcification",
    "2": "benign appearance",
    "3": "probably benign",
    "4A": "suspicious",
    "4B": "very suspicious",
    "4X": "3/4 with spiculation",
}

NODULE_TYPES = ("solid", "part-solid", "ground-glass", "calcified")


@dataclass(frozen=True)
class LungRads:
    """A category and the rule that gave it (e.g. ``solid 8 to < 15 mm``)."""

    category: str
    rule: str


def measured_mm(diameter_mm: float) -> float:
    """A diameter as Lung-RADS v2022 records it: the mean diameter to one decimal place (5.96 mm is 6.0 mm)."""
    return round(float(diameter_mm) + 1e-9, 1)  # 1e-9: 5.95 stored as 5.9499999 still rounds up


def lung_rads(nodule_type: str, diameter_mm: float, solid_component_mm: float | None = None,
              margin: str = "unknown") -> LungRads:
    """The Lung-RADS v2022 baseline category of a nodule (see the module's table).

    ``diameter_mm``: the nodule's mean diameter; ``solid_component_mm``: the mean diameter of a part-solid
    nodule's solid component (None: not measured, then a part-solid nodule of 6 mm or more is category 3, the
    least its total size allows, and the rule says so); ``margin``: ``spiculated`` lifts 3, 4A and 4B to 4X.
    """
    if nodule_type not in NODULE_TYPES:
        raise ValueError(f"nodule type must be one of {NODULE_TYPES}, not {nodule_type!r}")
    size = measured_mm(diameter_mm)
    if nodule_type == "calcified":
        return LungRads("1", "benign calcification")
    if nodule_type == "solid":
        base = _solid(size)
    elif nodule_type == "ground-glass":
        base = LungRads("2", "ground-glass < 30 mm") if size < 30.0 else LungRads("3", "ground-glass >= 30 mm")
    else:
        base = _part_solid(size, solid_component_mm)
    if margin == "spiculated" and base.category in ("3", "4A", "4B"):
        return LungRads("4X", f"{base.rule}, spiculated ({base.category} with a suspicious feature)")
    return base


def _solid(size: float) -> LungRads:
    if size < 6.0:
        return LungRads("2", "solid < 6 mm")
    if size < 8.0:
        return LungRads("3", "solid 6 to < 8 mm")
    if size < 15.0:
        return LungRads("4A", "solid 8 to < 15 mm")
    return LungRads("4B", "solid >= 15 mm")


def _part_solid(size: float, solid_component_mm: float | None) -> LungRads:
    if size < 6.0:
        return LungRads("2", "part-solid < 6 mm total")
    if solid_component_mm is None:
        return LungRads("3", "part-solid >= 6 mm total, solid component not measured")
    solid = measured_mm(solid_component_mm)
    if solid < 6.0:
        return LungRads("3", "part-solid >= 6 mm total, solid component < 6 mm")
    if solid < 8.0:
        return LungRads("4A", "part-solid, solid component 6 to < 8 mm")
    return LungRads("4B", "part-solid, solid component >= 8 mm")
