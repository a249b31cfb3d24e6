"""Scoring a model on fresh phantoms end to end: generate, detect as `resmtnet detect` does, evaluate.

Nodules below ``min_diameter_mm`` become *excluded* marks (as LUNA16 treats nodules under 3 mm and
non-nodules): a finding on one is neither a hit nor a false positive, and they don't count as misses.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .froc import EvaluationResult, Finding, Mark, evaluate, found_at

if TYPE_CHECKING:
    from .model_io import LoadedModel

#: the smallest phantom nodule that counts (issue 3's protocol); smaller ones are excluded marks
PHANTOM_MIN_DIAMETER_MM = 4.0


def evaluate_on_phantoms(outdir: str | Path, n: int, seed: int, *, model: str | LoadedModel | None = None,
                         device: str = "auto", min_diameter_mm: float = PHANTOM_MIN_DIAMETER_MM, workers: int = 2,
                         n_bootstrap: int = 1000, tta: bool = True, progress: Callable[[str], None] | None = None
                         ) -> EvaluationResult:
    from .ctio import read_ct
    from .datasets import read_truth_csv
    from .model_io import LoadedModel, load_model
    from .nodules import write_nodules_csv
    from .phantom import write_phantom_set
    from .pipeline import detect_ct

    outdir = Path(outdir)
    phantom_dir = outdir / "phantoms"
    if not (phantom_dir / "annotations.csv").is_file():
        write_phantom_set(phantom_dir, n, seed, workers=workers,
                          progress=(lambda f, m: progress(m)) if progress else None)
    truths = read_truth_csv(phantom_dir / "annotations.csv")
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    findings: list[Finding] = []
    marks: list[Mark] = []
    series = []
    for i in range(n):
        uid = f"phantom-s{seed}-{i:04d}"
        series.append(uid)
        ct = read_ct(phantom_dir / f"{uid}.nrrd")
        det = detect_ct(ct, model=loaded, device=device, threshold=0.0, tta=tta)
        det_dir = outdir / "detections" / uid
        det_dir.mkdir(parents=True, exist_ok=True)
        write_nodules_csv(det_dir / "nodules.csv", uid, det.nodules)
        findings += [Finding(uid, n_.center_lps, n_.probability, n_.diameter_mm, n_.malignancy, row=j)
                     for j, n_ in enumerate(det.nodules)]
        for j, t in enumerate(truths.get(uid, [])):
            marks.append(Mark(uid, tuple(t.center_lps), t.diameter_mm, t.malignancy_rating,
                              excluded=t.diameter_mm < min_diameter_mm, row=j))
        if progress:
            progress(f"detected {i + 1}/{n}: {uid} ({len(det.nodules)} findings)")
    return evaluate(findings, marks, series, n_bootstrap=n_bootstrap, seed=0)


#: the annotation columns of a phantom set that :func:`sensitivity_by_kind` breaks the result down by
KIND_COLUMNS = ("nodule_type", "location")


def sensitivity_by_kind(result: EvaluationResult, annotations_csv: str | Path, fp_rate: float = 2.0
                        ) -> dict[str, Any]:
    """Which kinds of nodule the operating point at ``fp_rate`` FP/scan finds: for each value of the phantom
    annotations' ``nodule_type`` (solid, part-solid, ground-glass, calcified) and ``location`` (parenchyma,
    pleural, vascular), nodules found and nodules scored; ``threshold`` is None where no finding qualifies.
    ``result`` must come from :func:`evaluate_on_phantoms` on that set, whose marks keep each nodule's row
    within its scan.
    """
    rows: dict[str, list[dict[str, str]]] = {}
    with open(annotations_csv, newline="") as f:
        for r in csv.DictReader(f):
            rows.setdefault(r["seriesuid"], []).append(r)
    threshold, found = found_at(result, fp_rate)
    out: dict[str, Any] = {"fp_rate": fp_rate, "threshold": threshold if math.isfinite(threshold) else None,
                           **{k: {} for k in KIND_COLUMNS}}
    for nodule, hit in zip(result.match.nodules, found, strict=True):
        row = rows[nodule.mark.seriesuid][nodule.mark.row]
        for column in KIND_COLUMNS:
            cell = out[column].setdefault(row.get(column) or "unknown", {"found": 0, "nodules": 0})
            cell["found"] += int(hit)
            cell["nodules"] += 1
    return out
