"""Follow-up: a current scan's nodules against a prior scan's, after registering the two scans' lungs.

1. **Register** (SimpleITK): the prior CT onto the current one, rigid first, then affine, by Mattes mutual
   information over the current scan's lungs (their mask grown by a margin; the whole scan where no lungs are
   found), at about 2.5 mm. The transform maps a point of the current scan to where it lay in the prior one.
2. **Match**: each current centre, mapped into the prior scan, is paired with the prior nodule nearest to it
   (one-to-one, least total distance) where it lies within :func:`match_gate` of it. A pair is *uncertain*
   (flagged, with the reasons, never dropped or forced) when it lies far for its size, when another nodule is
   nearly as close, or when its diameter more than doubled or halved. Unpaired current nodules are *new*,
   unpaired prior ones *resolved*.
3. **Change**: diameter and volume change, volume doubling time ``VDT = t * ln 2 / ln(V1 / V0)`` (days, from
   the two study dates; none without dates or without growth), and the Lung-RADS v2022 category with the
   growth rule: growing means the mean diameter grew by more than 1.5 mm (Lung-RADS asks it within 12 months;
   a longer interval is said in the rule). The follow-up categories use the solid-nodule rules whatever the type.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..detect.lung_rads import lung_rads
from ..detect.nodules import Nodule
from ..io.ctio import CTVolume

#: Lung-RADS v2022: growth is an increase in mean diameter of more than this (mm) within 12 months.
GROWTH_MM = 1.5
GROWTH_INTERVAL_DAYS = 365
#: Lung-RADS v2022: a category 3 or 4 nodule unchanged for at least this long is category 2.
STABLE_DAYS = 91
#: Pairs further apart than this (mm, after registration) are not the same nodule, whatever their size.
MIN_GATE_MM = 10.0
REGISTRATION_SPACING_MM = 2.5


@dataclass
class Registration:
    """Current → prior: ``transform`` maps a point (LPS mm) of the current scan to the prior scan."""

    transform: sitk.Transform
    metric: float
    lungs_used: bool

    def to_prior(self, lps: tuple[float, float, float] | np.ndarray) -> np.ndarray:
        return np.asarray(self.transform.TransformPoint(tuple(float(v) for v in lps)))

    def describe(self) -> dict[str, Any]:
        affine = self.transform.GetNthTransform(self.transform.GetNumberOfTransforms() - 1) \
            if isinstance(self.transform, sitk.CompositeTransform) else self.transform
        return {"kind": "affine (rigid, then affine), Mattes mutual information",
                "maps": "current scan LPS mm -> prior scan LPS mm",
                "parameters": list(affine.GetParameters()), "fixed_parameters": list(affine.GetFixedParameters()),
                "final_metric": self.metric, "region": "lungs (mask grown 10 mm)" if self.lungs_used else "whole scan"}


@dataclass
class Pair:
    """One row of the follow-up table: a matched pair, a new nodule (no prior) or a resolved one (no current)."""

    status: str  # "matched", "new" or "resolved"
    prior_number: int | None
    current_number: int | None
    prior_center_lps: list[float] | None
    current_center_lps: list[float] | None
    current_center_in_prior_lps: list[float] | None
    distance_mm: float | None
    prior_diameter_mm: float | None
    current_diameter_mm: float | None
    diameter_change_mm: float | None
    prior_volume_mm3: float | None
    current_volume_mm3: float | None
    volume_change_percent: float | None
    volume_doubling_time_days: float | None
    growing: bool | None
    lung_rads: str | None
    lung_rads_rule: str
    uncertain: bool = False
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _lung_region(img: sitk.Image) -> sitk.Image | None:
    """The lungs of ``img`` (a CT, coarse grid) grown by 10 mm, as a mask on its grid; None where none are found."""
    from scipy import ndimage

    from ..detect.lungmask import lung_mask

    try:
        lungs = lung_mask(sitk.GetArrayViewFromImage(img).astype(np.float32), img.GetSpacing(),
                          direction=img.GetDirection())
    except Exception:  # any failure of the lung finder: register the whole scan instead
        return None
    if lungs.sum() == 0:
        return None
    reach = np.maximum(np.round(10.0 / np.asarray(img.GetSpacing()[::-1])).astype(int), 1)
    grown = ndimage.binary_dilation(lungs, structure=np.ones(tuple(2 * reach + 1), bool))
    mask = sitk.GetImageFromArray(grown.astype(np.uint8))
    mask.CopyInformation(img)
    return mask


def _coarse(img: sitk.Image, spacing_mm: float) -> sitk.Image:
    """``img`` as float32 HU clipped to [-1000, 400], resampled (linear) to about ``spacing_mm``."""
    img = sitk.Clamp(sitk.Cast(img, sitk.sitkFloat32), lowerBound=-1000, upperBound=400)
    size = [max(8, int(round(n * s / spacing_mm))) for n, s in zip(img.GetSize(), img.GetSpacing())]
    spacing = [n * s / m for n, s, m in zip(img.GetSize(), img.GetSpacing(), size)]
    return sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), spacing, img.GetDirection(),
                         -1000.0, sitk.sitkFloat32)


def register_scans(prior: CTVolume, current: CTVolume) -> Registration:
    """Register ``prior`` (moving) onto ``current`` (fixed): rigid, then affine, over the current lungs."""
    fixed = _coarse(current.to_sitk(), REGISTRATION_SPACING_MM)
    moving = _coarse(prior.to_sitk(), REGISTRATION_SPACING_MM)
    mask = _lung_region(fixed)

    def method(transform: sitk.Transform, iterations: int) -> sitk.ImageRegistrationMethod:
        r = sitk.ImageRegistrationMethod()
        r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=48)
        r.SetMetricSamplingStrategy(r.REGULAR)
        r.SetMetricSamplingPercentage(0.1, seed=1)
        if mask is not None:
            r.SetMetricFixedMask(mask)
        r.SetInterpolator(sitk.sitkLinear)
        r.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=iterations,
                                                   relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8)
        r.SetOptimizerScalesFromPhysicalShift()
        r.SetShrinkFactorsPerLevel([2, 1])
        r.SetSmoothingSigmasPerLevel([2.0, 1.0])
        r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        r.SetInitialTransform(transform, inPlace=True)
        return r

    rigid = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                              sitk.CenteredTransformInitializerFilter.MOMENTS)
    method(rigid, 200).Execute(fixed, moving)
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    affine.SetCenter(rigid.GetCenter())
    final = method(affine, 200)
    final.Execute(fixed, moving)
    return Registration(transform=affine, metric=float(final.GetMetricValue()), lungs_used=mask is not None)


def match_gate(prior_diameter_mm: float, current_diameter_mm: float) -> float:
    """How far apart (mm, after registration) two findings may lie and still be one nodule."""
    return max(MIN_GATE_MM, max(prior_diameter_mm, current_diameter_mm))


def volume_doubling_time(v0: float, v1: float, days: float | None) -> float | None:
    """Days for the volume to double, from ``v0`` to ``v1`` in ``days``; None without growth or interval."""
    if days is None or days <= 0 or v0 <= 0 or v1 <= v0:
        return None
    return float(days * math.log(2.0) / math.log(v1 / v0))


def followup_category(current_mm: float, prior_mm: float | None, days: float | None) -> tuple[str, bool | None, str]:
    """Lung-RADS v2022 category of a solid nodule on a follow-up scan: (category, growing, the rule applied)."""
    if prior_mm is None:
        if current_mm < 4.0:
            return "2", None, "new, < 4 mm"
        if current_mm < 6.0:
            return "3", None, "new, 4 to < 6 mm"
        if current_mm < 8.0:
            return "4A", None, "new, 6 to < 8 mm"
        return "4B", None, "new, >= 8 mm"
    growth = current_mm - prior_mm
    growing = growth > GROWTH_MM
    if growing:
        late = days is not None and days > GROWTH_INTERVAL_DAYS
        when = f" (over {days:.0f} days: Lung-RADS asks it within 12 months)" if late else ""
        if current_mm < 8.0:
            return "4A", True, f"growing by {growth:.1f} mm > {GROWTH_MM} mm, < 8 mm{when}"
        return "4B", True, f"growing by {growth:.1f} mm > {GROWTH_MM} mm, >= 8 mm{when}"
    baseline = lung_rads("solid", current_mm).category  # the follow-up rules here are those of solid nodules
    if baseline != "2" and days is not None and days >= STABLE_DAYS:
        return "2", False, f"category {baseline} by size, unchanged for {days:.0f} days (>= 3 months)"
    return baseline, False, f"not growing: category by size ({current_mm:.1f} mm)"


def study_interval_days(prior_date: _dt.date | None, current_date: _dt.date | None) -> float | None:
    if prior_date is None or current_date is None:
        return None
    return float((current_date - prior_date).days)


def compare(prior: list[Nodule], current: list[Nodule], registration: Registration, days: float | None
            ) -> list[Pair]:
    """The follow-up table: matched pairs (current order), then new, then resolved nodules."""
    from scipy.optimize import linear_sum_assignment

    mapped = [registration.to_prior(n.center_lps) for n in current]
    pc = np.array([n.center_lps for n in prior], dtype=float).reshape(-1, 3)
    dist = np.array([[float(np.linalg.norm(m - p)) for p in pc] for m in mapped]).reshape(len(current), len(prior))
    gate = np.array([[match_gate(p.diameter_mm, c.diameter_mm) for p in prior] for c in current]).reshape(dist.shape)
    cost = np.where(dist <= gate, dist, 1e6)
    rows, cols = linear_sum_assignment(cost) if cost.size else (np.array([], int), np.array([], int))
    pairs: list[Pair] = []
    paired_prior: set[int] = set()
    paired_current: set[int] = set()
    for i, j in zip(rows, cols):
        if cost[i, j] >= 1e6:
            continue
        paired_prior.add(int(j))
        paired_current.add(int(i))
        c, p, d = current[i], prior[j], float(dist[i, j])
        reasons = []
        if d > max(5.0, 0.5 * max(p.diameter_mm, c.diameter_mm)):
            reasons.append(f"centres {d:.1f} mm apart after registration, far for the nodules' size")
        others = np.concatenate([np.delete(dist[i], j), np.delete(dist[:, j], i)])
        if others.size and others.min() <= d + 3.0 and others.min() <= gate[i, j]:
            reasons.append(f"another nodule lies {others.min():.1f} mm away, nearly as close as the pair's {d:.1f} mm")
        ratio = c.diameter_mm / p.diameter_mm if p.diameter_mm > 0 else math.inf
        if ratio > 2.0 or ratio < 0.5:
            reasons.append(f"diameter changed from {p.diameter_mm:.1f} to {c.diameter_mm:.1f} mm (more than 2x)")
        category, growing, rule = followup_category(c.diameter_mm, p.diameter_mm, days)
        pairs.append(Pair(
            status="matched", prior_number=p.number, current_number=c.number, prior_center_lps=list(p.center_lps),
            current_center_lps=list(c.center_lps), current_center_in_prior_lps=[float(v) for v in mapped[i]],
            distance_mm=d, prior_diameter_mm=p.diameter_mm, current_diameter_mm=c.diameter_mm,
            diameter_change_mm=c.diameter_mm - p.diameter_mm, prior_volume_mm3=p.volume_mm3,
            current_volume_mm3=c.volume_mm3,
            volume_change_percent=(100.0 * (c.volume_mm3 / p.volume_mm3 - 1.0) if p.volume_mm3 > 0 else None),
            volume_doubling_time_days=volume_doubling_time(p.volume_mm3, c.volume_mm3, days), growing=growing,
            lung_rads=category, lung_rads_rule=rule, uncertain=bool(reasons), reasons=reasons))
    pairs.sort(key=lambda r: r.current_number or 0)
    for i, c in enumerate(current):
        if i in paired_current:
            continue
        category, _, rule = followup_category(c.diameter_mm, None, days)
        near = [f"prior N{prior[j].number} lies {dist[i, j]:.1f} mm away, beyond the gate of {gate[i, j]:.1f} mm"
                for j in range(len(prior)) if dist[i, j] <= 2 * gate[i, j]]
        pairs.append(Pair(
            status="new", prior_number=None, current_number=c.number, prior_center_lps=None,
            current_center_lps=list(c.center_lps), current_center_in_prior_lps=[float(v) for v in mapped[i]],
            distance_mm=None, prior_diameter_mm=None, current_diameter_mm=c.diameter_mm, diameter_change_mm=None,
            prior_volume_mm3=None, current_volume_mm3=c.volume_mm3, volume_change_percent=None,
            volume_doubling_time_days=None, growing=None, lung_rads=category, lung_rads_rule=rule,
            uncertain=bool(near), reasons=near))
    for j, p in enumerate(prior):
        if j in paired_prior:
            continue
        near = [f"current N{current[i].number} lies {dist[i, j]:.1f} mm away, beyond the gate of {gate[i, j]:.1f} mm"
                for i in range(len(current)) if dist[i, j] <= 2 * gate[i, j]]
        pairs.append(Pair(
            status="resolved", prior_number=p.number, current_number=None, prior_center_lps=list(p.center_lps),
            current_center_lps=None, current_center_in_prior_lps=None, distance_mm=None,
            prior_diameter_mm=p.diameter_mm, current_diameter_mm=None, diameter_change_mm=None,
            prior_volume_mm3=p.volume_mm3, current_volume_mm3=None, volume_change_percent=None,
            volume_doubling_time_days=None, growing=None, lung_rads=None, lung_rads_rule="no longer seen",
            uncertain=bool(near), reasons=near))
    return pairs


CSV_COLUMNS = ["status", "prior_number", "current_number", "distance_mm", "prior_diameter_mm", "current_diameter_mm",
               "diameter_change_mm", "prior_volume_mm3", "current_volume_mm3", "volume_change_percent",
               "volume_doubling_time_days", "growing", "lung_rads", "lung_rads_rule", "uncertain", "reasons",
               "prior_x", "prior_y", "prior_z", "current_x", "current_y", "current_z"]


def csv_rows(pairs: list[Pair]) -> list[list[str]]:
    def num(v: float | None, digits: int) -> str:
        return "" if v is None else f"{v:.{digits}f}"

    def xyz(c: list[float] | None) -> list[str]:
        return ["", "", ""] if c is None else [f"{v:.2f}" for v in c]

    return [[r.status, "" if r.prior_number is None else f"N{r.prior_number}",
             "" if r.current_number is None else f"N{r.current_number}", num(r.distance_mm, 2),
             num(r.prior_diameter_mm, 2), num(r.current_diameter_mm, 2), num(r.diameter_change_mm, 2),
             num(r.prior_volume_mm3, 1), num(r.current_volume_mm3, 1), num(r.volume_change_percent, 1),
             num(r.volume_doubling_time_days, 0), "" if r.growing is None else str(r.growing).lower(),
             r.lung_rads or "", r.lung_rads_rule, str(r.uncertain).lower(), "; ".join(r.reasons),
             *xyz(r.prior_center_lps), *xyz(r.current_center_lps)] for r in pairs]
