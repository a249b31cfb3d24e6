"""One fixed colour scale for malignancy (green → yellow → red) and one for the Lung-RADS v2022 category (1 to 4X).

Used alike by markups, segments, the table, the overview PNG and the legend.
"""

from __future__ import annotations

from ..detect.lung_rads import CATEGORIES

#: Findings with a detection probability below this line are drawn weaker everywhere they are drawn (fainter
#: marker, label, outline and overview panel): a p = 0.44 finding must not look as sure as a p = 0.96 one.
CONFIDENT_PROBABILITY = 0.5

# Anchor colours (RGB in [0, 1]): low malignancy green, 0.5 yellow, high red.
_MALIGNANCY_ANCHORS = [(0.0, (0.10, 0.75, 0.20)), (0.5, (1.00, 0.85, 0.10)), (1.0, (0.90, 0.10, 0.10))]

#: One colour per Lung-RADS v2022 category (:data:`resmtnet.detect.lung_rads.CATEGORIES`, lowest to highest
#: concern): 1 (benign calcification) blue-green, 2 green, 3 yellow, 4A orange, 4B red, 4X (3 or 4 with
#: spiculation) purple-red.
LUNG_RADS_COLORS: dict[str, tuple[float, float, float]] = dict(zip(CATEGORIES, (
    (0.20, 0.60, 0.80), (0.10, 0.75, 0.20), (1.00, 0.85, 0.10), (1.00, 0.50, 0.05), (0.90, 0.10, 0.10),
    (0.65, 0.05, 0.45)), strict=True))


def malignancy_color(p: float) -> tuple[float, float, float]:
    """RGB in [0, 1] for a malignancy probability on the fixed green–yellow–red scale."""
    p = min(1.0, max(0.0, float(p)))
    for (p0, c0), (p1, c1) in zip(_MALIGNANCY_ANCHORS, _MALIGNANCY_ANCHORS[1:]):
        if p <= p1:
            t = (p - p0) / (p1 - p0)
            return tuple(a + t * (b - a) for a, b in zip(c0, c1))  # type: ignore[return-value]
    return _MALIGNANCY_ANCHORS[-1][1]


def lung_rads_color(category: str) -> tuple[float, float, float]:
    return LUNG_RADS_COLORS[category]
