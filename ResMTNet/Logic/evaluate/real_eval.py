"""`resmtnet evaluate --real`: detection on real CT cases, each finding judged against the case's own lesions.

A case is a folder holding a CT (a ``dicom/`` series folder, or one volume file) and its truth:
``annotations.csv`` with LUNA16 columns (coordX, coordY, coordZ in LPS mm, diameter_mm; seriesuid and a
``source`` column optional), or ``CASE.csv`` in the folder given with ``--truth`` (for a case whose folder
can't be written to). A row whose ``source`` reads ``rtstruct NAME`` is the ROI NAME of the case's RT
structure set (``rtstruct/*.dcm`` or a ``.dcm`` file in the case folder): its centre and equivalent-sphere
diameter come from its contours filled on the CT's grid, the row's own numbers are not used.

A finding hits a lesion when its centre lies within the lesion's radius (LUNA16's rule). Per lesion: the
rank (by probability, 1 = first) of the best finding that hits it, its probability, the distance of its
centre and its size error; per scan: the findings at or above the model's threshold that hit nothing.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..detect.nodules import Nodule
from ..io.ctio import VOLUME_SUFFIXES, CTVolume
from ..util.errors import InputError

TRUTH_FILE = "annotations.csv"
#: Findings kept per case below the threshold too, to say at which rank a missed lesion would come.
RANKED_FINDINGS = 30
#: What issue 30 asks of each case: every lesion among the first three findings, sized within 25 %, at most
#: two other findings at or above the threshold.
ACCEPT_RANK, ACCEPT_SIZE_ERROR, ACCEPT_OTHERS = 3, 0.25, 2


@dataclass
class Lesion:
    name: str
    centre_lps: tuple[float, float, float]
    diameter_mm: float
    #: where centre and size come from: the truth file's row, or an RT structure's mask
    source: str
    longest_axial_mm: float | None = None


@dataclass
class RealCase:
    name: str
    folder: Path
    ct_path: Path
    truth_path: Path


@dataclass
class LesionResult:
    lesion: Lesion
    rank: int | None = None
    probability: float | None = None
    distance_mm: float | None = None
    found_diameter_mm: float | None = None
    size_error: float | None = None  # found / true - 1
    nearest_mm: float | None = None  # the nearest finding's distance, hit or not


@dataclass
class CaseResult:
    case: str
    threshold: float
    lesions: list[LesionResult]
    others_at_threshold: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def meets_issue_30(self) -> bool:
        return len(self.others_at_threshold) <= ACCEPT_OTHERS and all(
            r.rank is not None and r.rank <= ACCEPT_RANK and abs(r.size_error) <= ACCEPT_SIZE_ERROR
            for r in self.lesions)

    def to_dict(self) -> dict[str, Any]:
        return {"case": self.case, "threshold": self.threshold, "seconds": self.seconds,
                "meets_issue_30": self.meets_issue_30,
                "lesions": [{**asdict(r), "lesion": asdict(r.lesion)} for r in self.lesions],
                "others_at_threshold": self.others_at_threshold, "findings": self.findings}


def find_cases(where: str | Path, truth_dir: str | Path | None = None) -> list[RealCase]:
    """The cases of a folder of case folders, of one case folder, or of a text file naming case folders (one a
    line, relative to the file's folder; ``#`` starts a comment). :class:`InputError` for a case without a CT
    or without truth, naming it."""
    where = Path(where)
    if where.is_file():
        lines = [ln.split("#", 1)[0].strip() for ln in where.read_text(encoding="utf-8").splitlines()]
        folders = [where.parent / ln for ln in lines if ln]
        for f in folders:
            if not f.is_dir():
                raise InputError(f"{where}: names {f}, which is not a folder")
    elif where.is_dir():
        folders = [where] if _ct_of(where) else sorted(p for p in where.iterdir() if p.is_dir() and _ct_of(p))
    else:
        raise InputError(f"{where}: no such folder or file")
    if not folders:
        raise InputError(f"{where}: holds no case (a folder with a dicom/ series folder or a volume file)")
    cases = []
    for folder in folders:
        ct = _ct_of(folder)
        if ct is None:
            raise InputError(f"{folder}: holds no CT (a dicom/ series folder or one volume file)")
        own = Path(truth_dir) / f"{folder.name}.csv" if truth_dir else None
        truth = own if own is not None and own.is_file() else folder / TRUTH_FILE
        if not truth.is_file():
            raise InputError(f"{folder}: has no {TRUTH_FILE}" + (f" and {truth_dir} no {folder.name}.csv"
                                                                   if truth_dir else "")
                             + ": write the case's lesions as LUNA16 rows (coordX, coordY, coordZ, diameter_mm)")
        cases.append(RealCase(folder.name, folder, ct, truth))
        read_truth(cases[-1], None)  # a bad truth file is told before any detection
    return cases


def _ct_of(folder: Path) -> Path | None:
    if (folder / "dicom").is_dir():
        return folder / "dicom"
    volumes = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES))
    return volumes[0] if len(volumes) == 1 else None


def read_truth(case: RealCase, ct: CTVolume | None) -> list[Lesion]:
    """The case's lesions; rows naming an RT structure are measured on its mask on ``ct``'s grid. Without a CT
    the file is only checked (the rows' numbers, the RT structures they name), and those rows are left out."""
    from .rtstruct import find_rtstructs, roi_mask, roi_names

    with open(case.truth_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    lesions = []
    files: list | None = None  # the case's RT structure sets and the first one's ROI names, read once
    names: list[str] = []
    for i, row in enumerate(rows, start=1):
        source = (row.get("source") or "").strip()
        if source.lower().startswith("rtstruct "):
            roi = source.split(None, 1)[1].strip()
            if files is None:
                files = find_rtstructs(case.folder)
                names = roi_names(files[0]) if files and ct is None else []
            if not files:
                raise InputError(f"{case.truth_path}: row {i} names RT structure {roi!r}, but {case.folder} holds no "
                                 "RT structure set (rtstruct/*.dcm)")
            if ct is None:
                if roi not in names:
                    raise InputError(f"{case.truth_path}: row {i} names RT structure {roi!r}, which {files[0]} "
                                     f"does not hold (it has: {', '.join(names)})")
                continue
            m = roi_mask(files[0], roi, ct)
            lesions.append(Lesion(roi, m.centre_lps, m.equivalent_diameter_mm, f"{files[0].name} mask",
                                  m.longest_axial_mm))
            continue
        try:
            centre = tuple(float(row[k]) for k in ("coordX", "coordY", "coordZ"))
            diameter = float(row["diameter_mm"])
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{case.truth_path}: row {i} needs numbers in coordX, coordY, coordZ and diameter_mm "
                             f"({e})") from e
        if not all(math.isfinite(v) for v in (*centre, diameter)) or diameter <= 0:
            raise InputError(f"{case.truth_path}: row {i} holds a position or diameter that is not a finite "
                             "positive number")
        lesions.append(Lesion(f"row {i}" + (f" ({source})" if source else ""), centre, diameter, case.truth_path.name))
    if not rows:
        raise InputError(f"{case.truth_path}: holds no lesion")
    return lesions


def score_case(case: str, lesions: list[Lesion], nodules: list[Nodule], threshold: float) -> CaseResult:
    """Each lesion's best hitting finding (``nodules`` in order of probability) and the findings at or above
    ``threshold`` that hit no lesion."""
    ranked = sorted(nodules, key=lambda n: -n.probability)
    centres = np.array([n.center_lps for n in ranked], float).reshape(-1, 3)
    results, hit_any = [], np.zeros(len(ranked), bool)
    for lesion in lesions:
        d = np.linalg.norm(centres - np.asarray(lesion.centre_lps), axis=1)
        hits = d <= lesion.diameter_mm / 2.0
        hit_any |= hits
        r = LesionResult(lesion, nearest_mm=round(float(d.min()), 2) if len(d) else None)
        if hits.any():
            j = int(np.flatnonzero(hits)[0])
            n = ranked[j]
            r.rank, r.probability, r.distance_mm = j + 1, round(n.probability, 4), round(float(d[j]), 2)
            r.found_diameter_mm = round(n.diameter_mm, 2)
            r.size_error = round(n.diameter_mm / lesion.diameter_mm - 1.0, 4)
        results.append(r)
    others = [_finding(j + 1, n) for j, n in enumerate(ranked) if n.probability >= threshold and not hit_any[j]]
    return CaseResult(case, threshold, results, others, [_finding(j + 1, n) for j, n in enumerate(ranked)])


def _finding(rank: int, n: Nodule) -> dict[str, Any]:
    return {"rank": rank, "center_lps": [round(v, 2) for v in n.center_lps], "probability": round(n.probability, 4),
            "diameter_mm": round(n.diameter_mm, 2)}


def evaluate_cases(cases: list[RealCase], *, model, device: str = "auto", tta: bool = True,
                   progress=None) -> list[CaseResult]:
    """Detect each case (its findings ranked down to the network's floor) and score it."""
    import time

    from ..detect.pipeline import detect_ct
    from ..io.memory import read_ct_for_detection

    results = []
    for case in cases:
        if progress is not None:
            progress(f"{case.name}: detecting")
        t = time.perf_counter()
        ct = read_ct_for_detection(case.ct_path)
        lesions = read_truth(case, ct)
        det = detect_ct(ct, model=model, device=device, threshold=0.0, max_findings=RANKED_FINDINGS, tta=tta)
        del ct
        result = score_case(case.name, lesions, det.nodules, model.threshold)
        result.seconds = round(time.perf_counter() - t, 1)
        results.append(result)
    return results


def format_table(results: list[CaseResult]) -> str:
    """The per-lesion table (Markdown) and one line per scan on the findings that hit nothing."""
    lines = ["| case | lesion | truth mm | rank | p | distance mm | found mm | size error |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in results:
        for r in c.lesions:
            truth = f"{r.lesion.diameter_mm:.1f}"
            if r.rank is None:
                near = "" if r.nearest_mm is None else f" (nearest finding {r.nearest_mm:.1f} mm away)"
                lines.append(f"| {c.case} | {r.lesion.name} | {truth} | missed{near} | | | | |")
            else:
                lines.append(f"| {c.case} | {r.lesion.name} | {truth} | {r.rank} | {r.probability:.2f} | "
                             f"{r.distance_mm:.1f} | {r.found_diameter_mm:.1f} | {100 * r.size_error:+.0f} % |")
    lines.append("")
    for c in results:
        shown = ", ".join(f"#{f['rank']} p {f['probability']:.2f} {f['diameter_mm']:.1f} mm"
                          for f in c.others_at_threshold) or "none"
        lines.append(f"- {c.case}: {len(c.others_at_threshold)} finding(s) at p >= {c.threshold:.2f} that hit no "
                     f"lesion ({shown}); issue 30's bar (first {ACCEPT_RANK}, size within "
                     f"{100 * ACCEPT_SIZE_ERROR:.0f} %, at most {ACCEPT_OTHERS} others): "
                     f"{'met' if c.meets_issue_30 else 'not met'}")
    return "\n".join(lines)


def write_results(results: list[CaseResult], outdir: str | Path, extra: dict[str, Any]) -> tuple[Path, Path]:
    """``real.json`` (everything) and ``real.md`` (the table), each written whole or not at all."""
    from ..util.atomic import atomic_write

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    data = {**extra, "cases": [r.to_dict() for r in results]}
    json_path = atomic_write(outdir / "real.json", lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n",
                                                                               encoding="utf-8"))
    md_path = atomic_write(outdir / "real.md", lambda tmp: tmp.write_text(format_table(results) + "\n",
                                                                           encoding="utf-8"))
    return json_path, md_path
