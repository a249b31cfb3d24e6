"""The Brock (PanCan) probability that a nodule is malignant: McWilliams A. et al., "Probability of cancer in
pulmonary nodules detected on first screening CT", N Engl J Med 2013;369:910-919, the full model with
spiculation (model 2b), developed on the Pan-Canadian Early Detection of Lung Cancer Study.

    logit = -6.7892 + 0.0287 (age - 62) + 0.6011 female + 0.2961 family history of lung cancer
            + 0.2953 emphysema - 5.3854 ((size_mm / 10) ** -0.5 - 1.58113883)
            + {solid 0, part-solid 0.377, ground-glass -0.1276} + 0.6581 upper lobe
            - 0.0824 (nodule count - 4) + 0.7729 spiculation
    probability = 1 / (1 + exp(-logit))

Coefficients checked against the Brock column of Table 2 in Nair V.S. et al., Eur Radiol 2019;29:5367-5377
(PMC6717521), which gives the same slopes with the covariates uncentred and an offset of 0.2761: -6.7892
- 0.0287 * 62 + 5.3854 * 1.58113883 + 0.0824 * 4 = 0.2759, the same model to rounding (1.58113883 is
(4 / 10) ** -0.5: size is centred on 4 mm, age on 62 years, nodule count on 4).

Calcified nodules were excluded from PanCan: the model does not apply to them (None). The patient's inputs are
optional; where absent, the model's reference values stand (age 62, male, no family history, no emphysema)
and the result says which were defaulted. This is a published screening model, reported beside the network's
malignancy and never in its place; research use only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

INTERCEPT = -6.7892
AGE = 0.0287
FEMALE = 0.6011
FAMILY_HISTORY = 0.2961
EMPHYSEMA = 0.2953
SIZE = -5.3854
SIZE_CENTRE = 1.58113883  # (4 mm / 10) ** -0.5
TYPE = {"solid": 0.0, "part-solid": 0.377, "ground-glass": -0.1276}
UPPER_LOBE = 0.6581
NODULE_COUNT = -0.0824
SPICULATION = 0.7729

REFERENCE_AGE = 62.0
REFERENCE_COUNT = 4
#: The ages (years) the model takes: the command, the Slicer worker and the panel all check against this range.
AGE_RANGE_YEARS = (1.0, 120.0)

#: The inputs' reference values, used where the patient's are not given.
DEFAULTS = {"age": REFERENCE_AGE, "sex": "M", "family_history": False, "emphysema": False}


@dataclass(frozen=True)
class PatientInputs:
    """What the Brock model asks about the patient; None: not given (its default stands, and is reported).

    ``sex``: ``"F"`` or ``"M"``; ``family_history``: a first-degree relative with lung cancer; ``emphysema``: on
    the CT, as a reader judges it (the detector does not measure it)."""

    age: float | None = None
    sex: str | None = None
    family_history: bool | None = None
    emphysema: bool | None = None

    def __post_init__(self) -> None:
        if self.sex is not None and self.sex not in ("F", "M"):
            raise ValueError(f"sex must be 'F' or 'M', not {self.sex!r}")
        low, high = AGE_RANGE_YEARS
        if self.age is not None and not (low <= float(self.age) <= high):
            raise ValueError(f"age must be in years ({low:g} to {high:g}), not {self.age!r}")

    def resolved(self) -> dict[str, object]:
        """Every input, the default standing in for each one not given."""
        given = {"age": self.age, "sex": self.sex, "family_history": self.family_history, "emphysema": self.emphysema}
        return {k: (DEFAULTS[k] if v is None else v) for k, v in given.items()}

    def defaulted(self) -> list[str]:
        """The names of the inputs that were not given (their defaults were used)."""
        return [k for k in DEFAULTS if getattr(self, k) is None]

    def describe(self) -> dict[str, object]:
        """For report.json: the values used and which of them are defaults."""
        return {"inputs": self.resolved(), "defaulted": self.defaulted(),
                "model": "Brock (PanCan) full model with spiculation, McWilliams et al. NEJM 2013"}


def brock_logit(size_mm: float, nodule_type: str, spiculated: bool, upper_lobe: bool, nodule_count: int,
                patient: PatientInputs | None = None) -> float:
    """The model's log-odds; ``nodule_type`` one of solid, part-solid, ground-glass."""
    if nodule_type not in TYPE:
        raise ValueError(f"the Brock model covers solid, part-solid and ground-glass nodules, not {nodule_type!r}")
    if size_mm <= 0:
        raise ValueError(f"nodule size must be positive, not {size_mm!r}")
    p = (patient or PatientInputs()).resolved()
    return (INTERCEPT
            + AGE * (float(p["age"]) - REFERENCE_AGE)  # type: ignore[arg-type]
            + FEMALE * (p["sex"] == "F")
            + FAMILY_HISTORY * bool(p["family_history"])
            + EMPHYSEMA * bool(p["emphysema"])
            + SIZE * ((float(size_mm) / 10.0) ** -0.5 - SIZE_CENTRE)
            + TYPE[nodule_type]
            + UPPER_LOBE * bool(upper_lobe)
            + NODULE_COUNT * (int(nodule_count) - REFERENCE_COUNT)
            + SPICULATION * bool(spiculated))


def brock_probability(size_mm: float, nodule_type: str, spiculated: bool, upper_lobe: bool, nodule_count: int,
                      patient: PatientInputs | None = None) -> float | None:
    """The probability of malignancy in [0, 1]; None for a calcified nodule (not in PanCan: not applicable)."""
    if nodule_type == "calcified":
        return None
    return 1.0 / (1.0 + math.exp(-brock_logit(size_mm, nodule_type, spiculated, upper_lobe, nodule_count,
                                               patient)))


#: A nodule counts as in an upper lobe when it lies above this fraction of its lung's craniocaudal extent.
UPPER_LOBE_FRACTION = 0.5


def upper_lobe(lung_mask_zyx: np.ndarray, centre_index_xyz: tuple[float, float, float],
               superior_is_higher_z: bool = True) -> bool | None:
    """Whether a nodule counts as in an upper lobe, from the lung mask's geometry alone (no lobes are segmented).

    The approximation: the nodule's lung is the half of the lung mask on the nodule's side of the mask's
    left-right middle; the nodule is "upper lobe" when it lies in the upper half (:data:`UPPER_LOBE_FRACTION`) of
    that lung's craniocaudal extent. Why this: the upper lobes hold the apex and most of the lung's upper half,
    the lower lobes its base. Where it errs: the oblique fissure runs down towards the front, so an anterior
    nodule a little below the middle is in an upper lobe (or the right middle lobe, which PanCan counts as not
    upper) and a posterior one a little above it may be in a lower lobe. ``lung_mask_zyx``: the lungs on the CT's
    grid (z, y, x), the grid's axes aligned with the patient's (x left-right, z craniocaudal); None when the
    mask is empty.
    """
    mask = np.asarray(lung_mask_zyx, bool)
    xs = np.flatnonzero(mask.any(axis=(0, 1)))
    if xs.size == 0:
        return None
    middle = 0.5 * (xs[0] + xs[-1])
    x = float(centre_index_xyz[0])
    side = mask[:, :, : int(math.floor(middle)) + 1] if x <= middle else mask[:, :, int(math.floor(middle)) + 1:]
    zs = np.flatnonzero(side.any(axis=(1, 2)))
    if zs.size == 0:
        return None
    lo, hi = float(zs[0]), float(zs[-1])
    if hi <= lo:
        return None
    height = (float(centre_index_xyz[2]) - lo) / (hi - lo)
    if not superior_is_higher_z:
        height = 1.0 - height
    return height >= UPPER_LOBE_FRACTION


def score_nodules(nodules: list, ct, lung_mask_zyx: np.ndarray, nodule_count: int,
                  patient: PatientInputs | None = None, mask_factors_zyx: tuple[int, int, int] = (1, 1, 1)) -> None:
    """Set each nodule's ``upper_lobe`` (:func:`upper_lobe`) and ``brock_malignancy`` (None for a calcified one).
    ``lung_mask_zyx``: the lungs on ``ct``'s grid, or on a coarser one whose voxel holds ``mask_factors_zyx``
    of ct's (the lung mask's working grid); ``nodule_count``: the scan's findings at or above the threshold."""
    superior = float(np.asarray(ct.direction, float).reshape(3, 3)[2, 2]) >= 0.0
    scale = np.asarray(mask_factors_zyx, float)[::-1]  # x, y, z
    for n in nodules:
        index = ct.world_to_index(np.asarray(n.center_lps, float)) / scale
        n.upper_lobe = upper_lobe(lung_mask_zyx, tuple(float(v) for v in index), superior_is_higher_z=superior)
        n.brock_malignancy = brock_probability(n.diameter_mm, n.nodule_type, n.margin == "spiculated",
                                               bool(n.upper_lobe), nodule_count, patient)
