"""The nodule list: the single hand-off between the detector and everything else.

A :class:`Nodule` is plain data (JSON-serialisable through :meth:`Nodule.to_dict`). World
coordinates are LPS millimetres, as ITK and LUNA16 use them. Masks travel separately, as one label
image on the input CT's grid where label ``i`` is nodule number ``i`` (see :class:`Detection`).
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.luna16_csv import SUBMISSION_COLUMNS
from .lung_rads import LungRads, lung_rads

#: nodules.csv: the LUNA16 submission columns, then size, the network's malignancy, volume, the characterisation
#: (type, margin, solid component), the Lung-RADS v2022 category, the Brock (PanCan) probability, and the two sizes
#: measured on the finding's mask: its longest axial diameter and its equivalent-sphere diameter.
NODULES_CSV_COLUMNS = [*SUBMISSION_COLUMNS, "diameter_mm", "malignancy", "volume_mm3", "lung_rads", "nodule_type",
                       "margin", "solid_component_mm", "brock_malignancy", "upper_lobe", "long_axis_mm",
                       "sphere_diameter_mm"]


@dataclass
class Nodule:
    """One finding. ``center_lps`` in world mm (LPS); ``malignancy`` a probability in [0, 1]."""

    number: int
    center_lps: tuple[float, float, float]
    probability: float
    diameter_mm: float
    malignancy: float
    volume_mm3: float = 0.0
    # characterisation: the type and margin heads' most probable classes and their probabilities (a model
    # without those heads leaves type "solid" and margin "unknown"); the solid component of a part-solid
    # nodule, its mean diameter measured on the nodule's mask
    nodule_type: str = "solid"  # solid | part-solid | ground-glass | calcified
    margin: str = "unknown"  # smooth | lobulated | spiculated | unknown
    type_probabilities: dict[str, float] = field(default_factory=dict)
    margin_probabilities: dict[str, float] = field(default_factory=dict)
    solid_component_mm: float | None = None
    # the Brock (PanCan) model's probability of malignancy (None: calcified, or not scored) and the location it
    # used (upper lobe approximated from the lung mask: resmtnet.detect.brock.upper_lobe; None: not known)
    brock_malignancy: float | None = None
    upper_lobe: bool | None = None
    # measured on the finding's own mask (None where no mask was measured: the predicted sphere stands in): the
    # longest axial diameter (on the axial slice where the mask is largest) and the equivalent-sphere diameter
    # of its volume, as masses are sized
    long_axis_mm: float | None = None
    sphere_diameter_mm: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def type_assumed(self) -> bool:
        """True where no type head gave the type: the nodule is taken as solid, an assumption, not a finding."""
        return not self.type_probabilities

    @property
    def type_text(self) -> str:
        """The type as a reader should see it: ``solid (assumed)`` where :attr:`type_assumed`."""
        return f"{self.nodule_type} (assumed)" if self.type_assumed else self.nodule_type

    @property
    def lung_rads_result(self) -> LungRads:
        """The Lung-RADS v2022 baseline category and its rule, from type, size, solid component and margin; the
        rule says where the type was assumed."""
        result = lung_rads(self.nodule_type, self.diameter_mm, self.solid_component_mm, self.margin)
        if self.type_assumed:
            return LungRads(result.category, f"{result.rule} (type assumed: the model has no type head)")
        return result

    @property
    def lung_rads(self) -> str:
        return self.lung_rads_result.category

    @property
    def center_ras(self) -> tuple[float, float, float]:
        x, y, z = self.center_lps
        return (-x, -y, z)

    @property
    def name(self) -> str:
        """The finding's name, ``N<number>`` (N1 is the most probable)."""
        return f"N{self.number}"

    @property
    def label(self) -> str:
        """What a reader sees beside the finding, e.g. ``N1 · 25.0 mm solid · LR 4X · p 0.96 · malignant 51 %``:
        number, diameter to 0.1 mm (as Lung-RADS measures), type (left out where only assumed), Lung-RADS v2022
        category, detection probability, the network's malignancy."""
        kind = "" if self.type_assumed else f" {self.nodule_type}"
        return (f"{self.name} · {self.diameter_mm:.1f} mm{kind} · LR {self.lung_rads} · "
                f"p {self.probability:.2f} · malignant {100 * self.malignancy:.0f} %")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["center_lps"] = [float(v) for v in self.center_lps]
        result = self.lung_rads_result
        d["lung_rads"] = result.category
        d["lung_rads_rule"] = result.rule
        d["type_assumed"] = self.type_assumed
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Nodule:
        keys = {"number", "center_lps", "probability", "diameter_mm", "malignancy", "volume_mm3",
                "nodule_type", "margin", "type_probabilities", "margin_probabilities", "solid_component_mm",
                "brock_malignancy", "upper_lobe", "long_axis_mm", "sphere_diameter_mm", "extra"}
        kw = {k: v for k, v in d.items() if k in keys}
        kw["center_lps"] = tuple(float(v) for v in kw["center_lps"])
        return cls(**kw)


@dataclass
class Detection:
    """What one run of the detector gives: the nodules and their masks.

    ``labels`` is a uint16 array (z, y, x) on the input CT's grid, label ``n`` = nodule ``number`` n,
    0 = background; ``spacing``/``origin`` are (x, y, z) and ``direction`` a 3x3 row-major matrix,
    exactly the input CT's geometry (ITK convention, LPS).
    """

    seriesuid: str
    nodules: list[Nodule]
    labels: np.ndarray | None = None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1)
    info: dict[str, Any] = field(default_factory=dict)


def write_nodules_csv(path: str | Path, seriesuid: str, nodules: list[Nodule]) -> None:
    """Write ``nodules.csv`` (:data:`NODULES_CSV_COLUMNS`); a value not known (no solid component, no Brock
    probability for a calcified nodule, no upper-lobe call) is an empty cell."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(NODULES_CSV_COLUMNS)
        for n in nodules:
            x, y, z = n.center_lps
            w.writerow([seriesuid, f"{x:.3f}", f"{y:.3f}", f"{z:.3f}", f"{n.probability:.5f}",
                        f"{n.diameter_mm:.2f}", f"{n.malignancy:.4f}", f"{n.volume_mm3:.1f}", n.lung_rads,
                        n.nodule_type, n.margin, _cell(n.solid_component_mm, "{:.1f}"),
                        _cell(n.brock_malignancy, "{:.4f}"), _cell(n.upper_lobe, "{}", str.lower),
                        _cell(n.long_axis_mm, "{:.1f}"), _cell(n.sphere_diameter_mm, "{:.1f}")])


def _cell(value: Any, fmt: str, then=None) -> str:
    if value is None:
        return ""
    text = fmt.format(value)
    return then(text) if then is not None else text
