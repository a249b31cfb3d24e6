"""Scoring a model on fresh phantoms end to end: generate, detect as `resmtnet detect` does, evaluate.

Nodules below ``min_diameter_mm`` become *excluded* marks (as LUNA16 treats nodules under 3 mm and
non-nodules): a finding on one is neither a hit nor a false positive, and they don't count as misses.
So do nodules the generator drew mostly outside the lung (``lung_share`` under
:data:`resmtnet.data.phantom.MIN_LUNG_SHARE`: in the chest wall or mediastinum, which no reader would call a lung
nodule).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.phantom import MIN_LUNG_SHARE
from ..io.luna16_csv import ReferenceNodule, annotation_columns, annotations_by_scan, read_annotations
from .froc import EvaluationResult, Finding, evaluate, found_at

if TYPE_CHECKING:
    from ..model.model_io import LoadedModel

#: the smallest phantom nodule that counts (issue 3's protocol); smaller ones are excluded marks
PHANTOM_MIN_DIAMETER_MM = 4.0


def evaluate_on_phantoms(outdir: str | Path, n: int, seed: int, *, model: str | LoadedModel | None = None,
                         device: str = "auto", min_diameter_mm: float = PHANTOM_MIN_DIAMETER_MM, workers: int = 2,
                         n_bootstrap: int = 1000, tta: bool = True, progress: Callable[[str], None] | None = None,
                         min_lung_share: float = MIN_LUNG_SHARE, detections: dict[str, list] | None = None
                         ) -> EvaluationResult:
    """Generate ``n`` phantoms of ``seed`` under ``outdir/phantoms`` (kept for the next run), detect on each as
    `resmtnet detect` does, and score by the LUNA16 rules. Excluded marks: nodules under ``min_diameter_mm``
    and nodules with less than ``min_lung_share`` of themselves in the lung (0 scores every nodule).
    ``detections``: filled with each phantom's detected nodules (for :mod:`.characterisation`)."""
    from ..data.phantom import write_phantom_set
    from ..detect.nodules import write_nodules_csv
    from ..detect.pipeline import detect_ct
    from ..io.ctio import read_ct
    from ..model.model_io import LoadedModel, load_model

    outdir = Path(outdir)
    phantom_dir = outdir / "phantoms"
    series = [f"phantom-s{seed}-{i:04d}" for i in range(n)]
    if not _set_holds(phantom_dir, series):
        write_phantom_set(phantom_dir, n, seed, workers=workers,
                          progress=(lambda f, m: progress(m)) if progress else None)
    truths = annotations_by_scan(phantom_dir / "annotations.csv")
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    findings: list[Finding] = []
    marks: list[ReferenceNodule] = []
    for i, uid in enumerate(series):
        ct = read_ct(phantom_dir / f"{uid}.nrrd")
        det = detect_ct(ct, model=loaded, device=device, threshold=0.0, tta=tta)
        det_dir = outdir / "detections" / uid
        det_dir.mkdir(parents=True, exist_ok=True)
        write_nodules_csv(det_dir / "nodules.csv", uid, det.nodules)
        if detections is not None:
            detections[uid] = det.nodules
        findings += [Finding(uid, n_.center_lps, n_.probability, n_.diameter_mm, n_.malignancy, row=j)
                     for j, n_ in enumerate(det.nodules)]
        marks += phantom_marks(truths.get(uid, []), min_diameter_mm, min_lung_share)
        if progress:
            progress(f"detected {i + 1}/{n}: {uid} ({len(det.nodules)} findings)")
    return evaluate(findings, marks, series, n_bootstrap=n_bootstrap, seed=0)


def phantom_marks(truths: list[ReferenceNodule], min_diameter_mm: float, min_lung_share: float
                  ) -> list[ReferenceNodule]:
    """A phantom's nodules as FROC marks; excluded: those under ``min_diameter_mm`` and those with less than
    ``min_lung_share`` of themselves in the lung."""
    return [replace(t, excluded=t.diameter_mm < min_diameter_mm or t.lung_share < min_lung_share)
            for t in truths]


def _set_holds(phantom_dir: Path, series: list[str]) -> bool:
    """Whether a phantom set already written there can be scored as ``series``: it has every one of them,
    with their truth, and that truth has ``lung_share`` (a set written before it existed is made again, as
    is one of another seed or of fewer phantoms, whose truth is not these phantoms' own)."""
    annotations = phantom_dir / "annotations.csv"
    if "lung_share" not in annotation_columns(annotations):
        return False
    listed = annotations_by_scan(annotations)  # every phantom has at least one nodule
    return all(uid in listed and (phantom_dir / f"{uid}.nrrd").is_file() for uid in series)


def count_outside_lung(annotations_csv: str | Path, min_diameter_mm: float = PHANTOM_MIN_DIAMETER_MM,
                       min_lung_share: float = MIN_LUNG_SHARE) -> int:
    """How many nodules of at least ``min_diameter_mm`` a phantom set has under ``min_lung_share``."""
    return sum(t.diameter_mm >= min_diameter_mm and t.lung_share < min_lung_share
               for t in read_annotations(annotations_csv))


#: the annotation columns of a phantom set that :func:`sensitivity_by_kind` breaks the result down by
KIND_COLUMNS = ("nodule_type", "location")


def sensitivity_by_kind(result: EvaluationResult, fp_rate: float = 2.0) -> dict[str, Any]:
    """Which kinds of nodule the operating point at ``fp_rate`` FP/scan finds: for each value of the phantom
    annotations' ``nodule_type`` (solid, part-solid, ground-glass, calcified) and ``location`` (parenchyma,
    pleural, vascular), nodules found and nodules scored; ``threshold`` is None where no finding qualifies.
    ``result`` comes from :func:`evaluate_on_phantoms` (its marks carry each nodule's type and location).
    """
    threshold, found = found_at(result, fp_rate)
    out: dict[str, Any] = {"fp_rate": fp_rate, "threshold": threshold if math.isfinite(threshold) else None,
                           **{k: {} for k in KIND_COLUMNS}}
    for nodule, hit in zip(result.match.nodules, found, strict=True):
        for column in KIND_COLUMNS:
            cell = out[column].setdefault(getattr(nodule.mark, column) or "unknown", {"found": 0, "nodules": 0})
            cell["found"] += int(hit)
            cell["nodules"] += 1
    return out
