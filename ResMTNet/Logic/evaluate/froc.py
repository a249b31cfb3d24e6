"""The LUNA16 FROC protocol, the CPM, malignancy AUC and diameter error.

Scoring follows the LUNA16 evaluation script (``noduleCADEvaluationLUNA16.py``, Setio et al. 2017),
rule by rule:

- A finding *hits* a reference nodule when its distance to the nodule's centre is less than the
  nodule's radius (``dist**2 < (diameter/2)**2``, world mm; strictly less, as the script has it).
  A mark with a negative diameter (LUNA16's non-nodules in ``annotations_excluded.csv``) gets 10 mm.
- Several hits on one nodule count once, at the highest probability; the other hits are ignored
  (neither true nor false positive). A finding hitting two nodules is a hit on both.
- Findings hitting an excluded (irrelevant) mark and no included nodule are ignored.
- Every other finding is a false positive. FP/scan divides by the number of scans in the series
  list, so scans without any finding (or without any nodule) count.
- The FROC curve has one operating point per distinct probability (as scikit-learn's ``roc_curve``,
  which the script uses): findings with *equal probability enter the curve together*, so a tie of a
  hit and a false positive is a straight segment, never an order-dependent staircase. Missed nodules
  count in the denominator only.
- Sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 FP/scan is the linear interpolation of the curve
  (``numpy.interp`` semantics: where the curve rises vertically at exactly that FP rate, the top of the
  rise counts; beyond the last point the last sensitivity holds). The script samples the interpolated
  curve on a 10 001-point grid and takes the samples within 3e-4 FP/scan of each rate; we evaluate the
  same interpolation at the rates themselves. CPM = mean of the seven.
- Bootstrap: scans drawn with replacement (as many as the series list holds), the curve recomputed on
  each draw; the 95% interval is the script's: sorted values at ``floor(0.025 n)`` and
  ``floor(0.975 n)``. Seeded (``numpy.random.default_rng(seed)``); draws without any nodule are skipped.

Beyond the script: where the script gives NaN because no nodule was detected, sensitivity is 0.
The *best hit* of a nodule (the one whose probability counts, and whose malignancy and diameter
are scored) is the hit with the highest probability; ties go to the hit nearest the nodule's centre,
then to the one listed first.
Malignancy AUC compares the best hits' predicted malignancy for reference ratings >= 4 (malignant)
against <= 2 (benign); ratings strictly between 2 and 4 (3, or a median like 2.5) are left out.
Diameter error is the mean absolute difference between best hit and reference diameters (mm).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.csvio import parse_float as _float
from ..io.csvio import read_csv_rows as _read_csv_rows
from ..io.luna16_csv import SUBMISSION_COLUMNS, ReferenceNodule, optional_float, parse_center, within
from ..util.atomic import atomic_write
from ..util.errors import InputError

FROC_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class Finding:
    """One detector output (a row of a LUNA16 submission CSV); ``row`` is its 0-based position."""

    seriesuid: str
    center: tuple[float, float, float]
    probability: float
    diameter_mm: float | None = None
    malignancy: float | None = None
    row: int = 0


@dataclass
class NoduleOutcome:
    """What became of one included nodule: its best hit (None when missed) and how many hits it had."""

    mark: ReferenceNodule
    best: Finding | None
    n_hits: int

    @property
    def detected(self) -> bool:
        return self.best is not None


@dataclass
class FrocEntries:
    """The script's FROC vectors: one entry per detected or missed nodule and per false positive.

    ``is_nodule`` (GT list), ``probability`` (prob list; -inf for missed nodules), ``counted`` (not in the
    script's exclude list: False only for missed nodules) and ``scan`` (index into the series list).
    """

    is_nodule: np.ndarray
    probability: np.ndarray
    counted: np.ndarray
    scan: np.ndarray
    n_scans: int


@dataclass
class MatchResult:
    entries: FrocEntries
    nodules: list[NoduleOutcome]
    false_positives: list[Finding]
    ignored_on_excluded: list[Finding]
    duplicate_hits: int
    findings_outside_series: int


@dataclass
class FrocCurve:
    fps: np.ndarray          # false positives per scan at each operating point
    sensitivity: np.ndarray  # fraction of all nodules detected at each operating point
    thresholds: np.ndarray   # probability threshold (>=) of each operating point; +inf for the origin


@dataclass
class EvaluationResult:
    """Every number of one evaluation; :meth:`to_dict` is the JSON written beside the plot."""

    series: list[str]
    curve: FrocCurve
    fp_rates: tuple[float, ...]
    sensitivities: np.ndarray
    cpm: float
    match: MatchResult
    bootstrap_samples: int = 0
    bootstrap_seed: int = 0
    bootstrap_used: int = 0
    sensitivity_ci95: np.ndarray | None = None  # (7, 2)
    cpm_ci95: tuple[float, float] | None = None
    bootstrap_band: dict[str, np.ndarray] | None = None  # fps grid, mean, lower, upper
    malignancy_auc: dict[str, Any] = field(default_factory=dict)
    diameter_error: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        m = self.match
        detected = sum(1 for n in m.nodules if n.detected)
        d: dict[str, Any] = {
            "protocol": "LUNA16 FROC (noduleCADEvaluationLUNA16.py rules)",
            "cpm": _num(self.cpm),
            "cpm_ci95": None if self.cpm_ci95 is None else [_num(v) for v in self.cpm_ci95],
            "fp_rates": list(self.fp_rates),
            "sensitivities": [_num(v) for v in self.sensitivities],
            "sensitivity_ci95": None if self.sensitivity_ci95 is None
            else [[_num(a), _num(b)] for a, b in self.sensitivity_ci95],
            "bootstrap": {"samples": self.bootstrap_samples, "seed": self.bootstrap_seed,
                          "used": self.bootstrap_used, "confidence": 0.95},
            "counts": {
                "scans": len(self.series),
                "nodules": len(m.nodules),
                "detected_nodules": detected,
                "missed_nodules": len(m.nodules) - detected,
                "false_positives": len(m.false_positives),
                "ignored_on_excluded_marks": len(m.ignored_on_excluded),
                "duplicate_hits_ignored": m.duplicate_hits,
                "findings_outside_series_list": m.findings_outside_series,
                "sensitivity_at_all_findings": _num(detected / len(m.nodules)) if m.nodules else None,
                "false_positives_per_scan_at_all_findings": len(m.false_positives) / max(1, len(self.series)),
            },
            "malignancy_auc": self.malignancy_auc,
            "diameter_error": self.diameter_error,
            "curve": {"fps": [_num(v) for v in self.curve.fps],
                      "sensitivity": [_num(v) for v in self.curve.sensitivity],
                      "threshold": [_num(v) for v in self.curve.thresholds]},
            "nodules": [
                {"seriesuid": n.mark.seriesuid, "center": list(n.mark.center_lps),
                 "diameter_mm": n.mark.diameter_mm,
                 "malignancy_rating": n.mark.malignancy_rating, "detected": n.detected, "hits": n.n_hits,
                 "probability": None if n.best is None else n.best.probability,
                 "predicted_diameter_mm": None if n.best is None else n.best.diameter_mm,
                 "predicted_malignancy": None if n.best is None else n.best.malignancy}
                for n in m.nodules
            ],
            "series": list(self.series),
        }
        if self.bootstrap_band is not None:
            d["bootstrap_band"] = {k: [_num(x) for x in v] for k, v in self.bootstrap_band.items()}
        return d


def _num(v: Any) -> float | None:
    """JSON-safe float: NaN and infinities become None."""
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


# ---------------------------------------------------------------- reading the CSVs


def read_predictions_csv(path: str | Path) -> list[Finding]:
    """Read a LUNA16 submission: ``seriesuid,coordX,coordY,coordZ,probability`` (+diameter_mm, malignancy).

    Probabilities and malignancy must lie in [0, 1], diameters be >= 0: anything else is refused."""
    rows = _read_csv_rows(path, SUBMISSION_COLUMNS, "predictions CSV")
    out = []
    for i, r in enumerate(rows):
        line = i + 2
        out.append(Finding(
            seriesuid=r["seriesuid"].strip(),
            center=parse_center(r, path, line),
            probability=within(_float(r, "probability", path, line), "probability", path, line, 0.0, 1.0),
            diameter_mm=within(optional_float(r, "diameter_mm", path, line), "diameter_mm", path, line, 0.0),
            malignancy=within(optional_float(r, "malignancy", path, line), "malignancy", path, line, 0.0, 1.0),
            row=i,
        ))
    return out


def read_predictions(path: str | Path) -> list[Finding]:
    """A predictions CSV, or a folder: every ``nodules.csv`` below it (``resmtnet detect`` output folders),
    joined in path order."""
    p = Path(path)
    if not p.is_dir():
        return read_predictions_csv(p)
    files = sorted(f for f in p.rglob("nodules.csv") if f.is_file())
    if not files:
        raise InputError(f"{p}: folder holds no nodules.csv (the output of `resmtnet detect`)")
    out: list[Finding] = []
    for f in files:
        for x in read_predictions_csv(f):
            out.append(Finding(x.seriesuid, x.center, x.probability, x.diameter_mm, x.malignancy, row=len(out)))
    return out


def read_series_list(path: str | Path) -> list[str]:
    """Read a list of scan ids (LUNA16's ``seriesuids.csv``: one id a line, no header; a
    ``seriesuid`` header and further columns are tolerated). Order kept, duplicates dropped."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: series list file not found")
    with open(p, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r and r[0].strip()]
    if rows and rows[0][0].strip().lower() in ("seriesuid", "series_uid", "seriesinstanceuid"):
        rows = rows[1:]
    series = list(dict.fromkeys(r[0].strip() for r in rows))
    if not series:
        raise InputError(f"{p}: series list holds no scan ids")
    return series


# ---------------------------------------------------------------- matching


def _hit_order_key(f: Finding, d2: float) -> tuple[float, float, int]:
    return (-f.probability, d2, f.row)


def match_findings(series: list[str], findings: list[Finding], marks: list[ReferenceNodule]) -> MatchResult:
    """Apply the hit rules scan by scan and build the script's FROC vectors (see the module doc)."""
    index = {s: i for i, s in enumerate(series)}
    by_scan_f: dict[str, list[Finding]] = {}
    outside = 0
    for f in findings:
        if f.seriesuid in index:
            by_scan_f.setdefault(f.seriesuid, []).append(f)
        else:
            outside += 1
    by_scan_m: dict[str, list[ReferenceNodule]] = {}
    for m in marks:
        if m.seriesuid in index:
            by_scan_m.setdefault(m.seriesuid, []).append(m)

    is_nodule: list[bool] = []
    prob: list[float] = []
    counted: list[bool] = []
    scan: list[int] = []
    outcomes: list[NoduleOutcome] = []
    false_pos: list[Finding] = []
    ignored: list[Finding] = []
    duplicates = 0
    for s in series:
        fs = by_scan_f.get(s, [])
        ms = by_scan_m.get(s, [])
        centers = np.array([f.center for f in fs], dtype=np.float64).reshape(-1, 3)
        hit_included = np.zeros(len(fs), dtype=bool)
        hit_excluded = np.zeros(len(fs), dtype=bool)
        for m in ms:
            d2 = ((centers - np.asarray(m.center_lps)) ** 2).sum(axis=1)
            hits = np.flatnonzero(d2 < m.radius_mm ** 2)
            if m.excluded:
                hit_excluded[hits] = True
                continue
            hit_included[hits] = True
            best = None
            if len(hits):
                best_i = min(hits, key=lambda i: _hit_order_key(fs[i], float(d2[i])))
                best = fs[best_i]
                duplicates += len(hits) - 1
            outcomes.append(NoduleOutcome(mark=m, best=best, n_hits=len(hits)))
            is_nodule.append(True)
            prob.append(best.probability if best is not None else -np.inf)
            counted.append(best is not None)
            scan.append(index[s])
        for i, f in enumerate(fs):
            if hit_included[i]:
                continue
            if hit_excluded[i]:
                ignored.append(f)
                continue
            false_pos.append(f)
            is_nodule.append(False)
            prob.append(f.probability)
            counted.append(True)
            scan.append(index[s])
    entries = FrocEntries(is_nodule=np.array(is_nodule, dtype=bool),
                          probability=np.array(prob, dtype=np.float64),
                          counted=np.array(counted, dtype=bool), scan=np.array(scan, dtype=np.int64),
                          n_scans=len(series))
    return MatchResult(entries=entries, nodules=outcomes, false_positives=false_pos,
                       ignored_on_excluded=ignored, duplicate_hits=duplicates,
                       findings_outside_series=outside)


# ---------------------------------------------------------------- the curve


class _CurveOrder:
    """Counted entries sorted by descending probability, grouped into distinct thresholds (computed once,
    reused by every bootstrap draw through per-entry weights)."""

    def __init__(self, entries: FrocEntries):
        self.entries = entries
        keep = np.flatnonzero(entries.counted)
        order = keep[np.argsort(-entries.probability[keep], kind="stable")]
        self.order = order
        p = entries.probability[order]
        # last position of each run of equal probability
        self.group_ends = (np.flatnonzero(np.r_[p[1:] != p[:-1], True]) if len(p)
                           else np.zeros(0, dtype=np.int64))
        self.thresholds = p[self.group_ends] if len(p) else np.zeros(0)

    def curve(self, weights: np.ndarray | None = None) -> FrocCurve:
        e = self.entries
        w = np.ones(len(e.is_nodule)) if weights is None else np.asarray(weights, dtype=np.float64)
        total_nodules = float(w[e.is_nodule].sum())
        wo = w[self.order]
        nod = e.is_nodule[self.order]
        tp = np.cumsum(np.where(nod, wo, 0.0))[self.group_ends] if len(wo) else np.zeros(0)
        fp = np.cumsum(np.where(nod, 0.0, wo))[self.group_ends] if len(wo) else np.zeros(0)
        fps = np.r_[0.0, fp] / e.n_scans
        sens = np.r_[0.0, tp] / total_nodules if total_nodules > 0 else np.full(len(tp) + 1, np.nan)
        return FrocCurve(fps=fps, sensitivity=sens, thresholds=np.r_[np.inf, self.thresholds])


def froc_curve(entries: FrocEntries) -> FrocCurve:
    """The FROC curve of the script's vectors: one operating point per distinct probability, from (0, 0)."""
    return _CurveOrder(entries).curve()


def sensitivity_at(curve: FrocCurve, fp_rates: Iterable[float] = FROC_FP_RATES) -> np.ndarray:
    """Linear interpolation of the curve at the given FP/scan (``numpy.interp`` semantics, see module doc)."""
    fps, sens = curve.fps, curve.sensitivity
    rates = np.asarray(list(fp_rates), dtype=np.float64)
    if not np.isfinite(sens).all():
        return np.full(len(rates), np.nan)
    # Collapse vertical rises (equal FP/scan) into (bottom, top), so that the rule is explicit rather than
    # resting on how numpy's binary search treats repeated x values.
    xs, first = np.unique(fps, return_index=True)
    last = np.r_[first[1:] - 1, len(fps) - 1]
    bottom, top = sens[first], sens[last]
    out = np.empty(len(rates))
    for k, r in enumerate(rates):
        j = int(np.searchsorted(xs, r, side="right")) - 1  # last distinct x <= r
        if j < 0:
            out[k] = bottom[0]
        elif xs[j] == r or j == len(xs) - 1:
            out[k] = top[j]
        else:
            x0, x1 = xs[j], xs[j + 1]
            out[k] = top[j] + (bottom[j + 1] - top[j]) * (r - x0) / (x1 - x0)
    return out


def found_at(result: EvaluationResult, fp_rate: float) -> tuple[float, list[bool]]:
    """The operating point at ``fp_rate`` false positives per scan and what it finds.

    Returns the probability threshold of the curve's last operating point whose false positives per scan
    do not exceed ``fp_rate`` (+inf when even the first false positive is too many), and for each included
    nodule (in ``result.match.nodules``' order) whether its best hit reaches that threshold.
    """
    c = result.curve
    within = np.nonzero(c.fps <= fp_rate)[0]  # the curve's FP/scan never fall as its threshold drops
    thr = float(c.thresholds[within[-1]])
    return thr, [n.best is not None and n.best.probability >= thr for n in result.match.nodules]


def _ci95(values: np.ndarray) -> tuple[float, float]:
    """The script's interval: sorted values at floor(0.025 n) and floor(0.975 n)."""
    v = np.sort(values)
    n = len(v)
    lo = v[int(math.floor(0.025 * n))]
    hi = v[min(n - 1, int(math.floor(0.975 * n)))]
    return float(lo), float(hi)


def bootstrap(entries: FrocEntries, n_samples: int, seed: int = 0, fp_rates: Iterable[float] = FROC_FP_RATES,
              band_grid: np.ndarray | None = None) -> dict[str, Any]:
    """Resample scans with replacement ``n_samples`` times; sensitivities, CPM and a curve band per draw."""
    rates = np.asarray(list(fp_rates), dtype=np.float64)
    grid = np.geomspace(rates[0], rates[-1], 97) if band_grid is None else band_grid
    rng = np.random.default_rng(seed)
    order = _CurveOrder(entries)
    n = entries.n_scans
    sens_rows, band_rows = [], []
    for _ in range(n_samples):
        draw = rng.integers(0, n, size=n)
        weights = np.bincount(draw, minlength=n)[entries.scan].astype(np.float64)
        c = order.curve(weights)
        if not np.isfinite(c.sensitivity).all():
            continue  # no nodule in this draw
        both = sensitivity_at(c, np.r_[rates, grid])
        sens_rows.append(both[:len(rates)])
        band_rows.append(both[len(rates):])
    out: dict[str, Any] = {"used": len(sens_rows)}
    if sens_rows:
        s = np.array(sens_rows)
        b = np.array(band_rows)
        out["sensitivity_ci95"] = np.array([_ci95(s[:, k]) for k in range(len(rates))])
        out["cpm_ci95"] = _ci95(s.mean(axis=1))
        out["band"] = {"fps": grid, "mean": b.mean(axis=0),
                       "lower": np.array([_ci95(b[:, k])[0] for k in range(len(grid))]),
                       "upper": np.array([_ci95(b[:, k])[1] for k in range(len(grid))])}
    return out


# ---------------------------------------------------------------- malignancy and size


def roc_auc(scores_pos: Iterable[float], scores_neg: Iterable[float]) -> float:
    """Area under the ROC curve (Mann–Whitney: the chance a positive outscores a negative, ties 1/2)."""
    pos = np.asarray(list(scores_pos), dtype=np.float64)
    neg = np.asarray(list(scores_neg), dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    equal = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * equal) / (len(pos) * len(neg)))


def malignancy_auc(nodules: list[NoduleOutcome]) -> dict[str, Any]:
    """AUC of the best hits' predicted malignancy, ratings >= 4 against <= 2 (see module doc)."""
    pos, neg, left_out, unrated, no_pred = [], [], 0, 0, 0
    for n in nodules:
        if n.best is None:
            continue
        r = n.mark.malignancy_rating
        if r is None:
            unrated += 1
            continue
        if n.best.malignancy is None:
            no_pred += 1
            continue
        if r >= 4:
            pos.append(n.best.malignancy)
        elif r <= 2:
            neg.append(n.best.malignancy)
        else:
            left_out += 1
    auc = roc_auc(pos, neg)
    return {"auc": _num(auc), "malignant": len(pos), "benign": len(neg), "uncertain_left_out": left_out,
            "unrated": unrated, "without_predicted_malignancy": no_pred,
            "rule": "detected nodules only; ratings >= 4 malignant, <= 2 benign, between left out"}


def diameter_error(nodules: list[NoduleOutcome]) -> dict[str, Any]:
    """Mean absolute (and signed) difference of predicted and reference diameter on detected nodules."""
    diffs = [n.best.diameter_mm - n.mark.diameter_mm for n in nodules
             if n.best is not None and n.best.diameter_mm is not None and n.mark.diameter_mm > 0]
    d = np.asarray(diffs, dtype=np.float64)
    return {"mae_mm": _num(np.abs(d).mean()) if len(d) else None,
            "mean_signed_error_mm": _num(d.mean()) if len(d) else None,
            "median_abs_error_mm": _num(np.median(np.abs(d))) if len(d) else None,
            "n": int(len(d)), "rule": "best hit of each detected nodule"}


# ---------------------------------------------------------------- the whole evaluation


def evaluate(findings: list[Finding], marks: list[ReferenceNodule], series: list[str], *, n_bootstrap: int = 1000,
             seed: int = 0, fp_rates: Iterable[float] = FROC_FP_RATES) -> EvaluationResult:
    """Score ``findings`` against ``marks`` (included and excluded) over the scans in ``series``."""
    series = list(dict.fromkeys(series))
    if not series:
        raise InputError("no scans to evaluate: the series list is empty")
    rates = tuple(float(r) for r in fp_rates)
    match = match_findings(series, findings, marks)
    if not match.nodules:
        raise InputError(f"the annotations hold no (included) nodule in the {len(series)} scan(s) evaluated; "
                         "sensitivity is undefined")
    curve = froc_curve(match.entries)
    sens = sensitivity_at(curve, rates)
    result = EvaluationResult(series=series, curve=curve, fp_rates=rates, sensitivities=sens,
                              cpm=float(np.mean(sens)), match=match, bootstrap_samples=int(n_bootstrap),
                              bootstrap_seed=int(seed))
    if n_bootstrap > 0:
        bs = bootstrap(match.entries, n_bootstrap, seed, rates)
        result.bootstrap_used = bs["used"]
        if bs["used"]:
            result.sensitivity_ci95 = bs["sensitivity_ci95"]
            result.cpm_ci95 = bs["cpm_ci95"]
            result.bootstrap_band = bs["band"]
    result.malignancy_auc = malignancy_auc(match.nodules)
    result.diameter_error = diameter_error(match.nodules)
    return result


def unannotated_series(findings: list[Finding], marks: list[ReferenceNodule], series: list[str]) -> list[str]:
    """Scans scored and named by the findings that no annotation row (included or excluded) names.

    LUNA16 lists no row for a scan without nodules, so such a scan is legitimate; many of them usually mean
    that predictions and annotations are about different scans."""
    annotated = {m.seriesuid for m in marks}
    scored = set(series)
    return [s for s in dict.fromkeys(f.seriesuid for f in findings) if s in scored and s not in annotated]


def default_series(marks: list[ReferenceNodule], findings: list[Finding], include_findings: bool = True) -> list[str]:
    """Scans named by the reference marks (included and excluded), then, optionally, by the findings."""
    s = [m.seriesuid for m in marks]
    if include_findings:
        s += [f.seriesuid for f in findings]
    return list(dict.fromkeys(s))


# ---------------------------------------------------------------- writing


def plot_froc(result: EvaluationResult, path: str | Path, title: str = "FROC") -> None:
    """FROC plot (log FP/scan axis from 1/8 to 8), bootstrap band, the seven operating points."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    c = result.curve
    lo, hi = result.fp_rates[0], result.fp_rates[-1]
    if result.bootstrap_band is not None:
        b = result.bootstrap_band
        ax.fill_between(b["fps"], b["lower"], b["upper"], color="tab:blue", alpha=0.2,
                        label="95% bootstrap interval")
    # the curve as numpy.interp draws it, extended flat to the right edge
    xs = np.r_[c.fps, max(hi, c.fps[-1] if len(c.fps) else hi)]
    ys = np.r_[c.sensitivity, c.sensitivity[-1] if len(c.sensitivity) else 0.0]
    label = f"CPM {result.cpm:.3f}"
    if result.cpm_ci95 is not None:
        label += f" (95% CI {result.cpm_ci95[0]:.3f}–{result.cpm_ci95[1]:.3f})"
    ax.plot(np.maximum(xs, lo / 2), ys, color="tab:blue", lw=1.8, label=label)
    ax.plot(result.fp_rates, result.sensitivities, "o", color="tab:red", ms=5, label="1/8 … 8 FP/scan")
    ax.set_xscale("log", base=2)
    ax.set_xlim(lo, hi)
    ax.set_xticks(list(result.fp_rates))
    ax.set_xticklabels(["1/8", "1/4", "1/2", "1", "2", "4", "8"])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("Average number of false positives per scan")
    ax.set_ylabel("Sensitivity")
    ax.set_title(f"{title} ({len(result.series)} scans, {len(result.match.nodules)} nodules)")
    ax.grid(True, which="both", ls=":", alpha=0.6)
    ax.legend(loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))


def write_results(result: EvaluationResult, outdir: str | Path, stem: str = "froc",
                  extra: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``<stem>.json`` (every number) and ``<stem>.png`` (the FROC plot), each whole or not at all."""
    outdir = Path(outdir)
    d = result.to_dict()
    if extra:
        d.update(extra)
    text = json.dumps(d, indent=1)
    json_path, png_path = outdir / f"{stem}.json", outdir / f"{stem}.png"
    plot_froc(result, png_path)

    def _write_json(p: Path) -> None:
        with open(p, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(json_path, _write_json)
    return json_path, png_path
