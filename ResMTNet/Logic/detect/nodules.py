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

NODULES_CSV_COLUMNS = [*SUBMISSION_COLUMNS, "diameter_mm", "malignancy", "volume_mm3", "lung_rads"]


def lung_rads_size_category(diameter_mm: float) -> str:
    """Lung-RADS (v2022) category of a solid nodule on a baseline scan, from its mean diameter.

    < 6 mm: 2, 6 to < 8 mm: 3, 8 to < 15 mm: 4A, >= 15 mm: 4B.
    """
    if diameter_mm < 6.0:
        return "2"
    if diameter_mm < 8.0:
        return "3"
    if diameter_mm < 15.0:
        return "4A"
    return "4B"


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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lung_rads(self) -> str:
        return lung_rads_size_category(self.diameter_mm)

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
        """What a reader sees beside the finding, e.g. ``N1 · 25.0 mm · p 0.96 · malignant 51 %``: number, diameter
        to 0.1 mm (Lung-RADS cut-offs are 6, 8 and 15 mm), detection probability, predicted malignancy."""
        return (f"{self.name} · {self.diameter_mm:.1f} mm · p {self.probability:.2f} · "
                f"malignant {100 * self.malignancy:.0f} %")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["center_lps"] = [float(v) for v in self.center_lps]
        d["lung_rads"] = self.lung_rads
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Nodule:
        keys = {"number", "center_lps", "probability", "diameter_mm", "malignancy", "volume_mm3",
                "nodule_type", "margin", "type_probabilities", "margin_probabilities", "solid_component_mm", "extra"}
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
    """Write ``nodules.csv``: LUNA16 submission columns first, then size, malignancy and Lung-RADS."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(NODULES_CSV_COLUMNS)
        for n in nodules:
            x, y, z = n.center_lps
            w.writerow([seriesuid, f"{x:.3f}", f"{y:.3f}", f"{z:.3f}", f"{n.probability:.5f}",
                        f"{n.diameter_mm:.2f}", f"{n.malignancy:.4f}", f"{n.volume_mm3:.1f}", n.lung_rads])
