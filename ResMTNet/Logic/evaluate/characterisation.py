"""How well the type and margin heads name the nodules a detection finds: confusion matrices and balanced accuracy.

Each scored nodule (an included FROC mark of at least ``min_diameter_mm`` whose type or margin is known) is
judged by its best hit (the most probable finding within its radius, LUNA16's rule) where that finding is at or
above the operating threshold, i.e. one a user is shown; nodules without such a finding are counted as not
found and left out of the accuracy. Balanced accuracy: the mean over the true classes present of the share
named right (recall), so a head that calls everything "solid" scores 1/4 on four types, not 55 %.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..model.model import MARGIN_CLASSES, TYPE_CLASSES
from .froc import EvaluationResult

#: the smallest nodule the characterisation is scored on (issue 31: Lung-RADS types nodules of 6 mm and more)
CHARACTERISATION_MIN_DIAMETER_MM = 6.0


def confusion(pairs: Sequence[tuple[str, str]], classes: Sequence[str]) -> dict[str, Any]:
    """The confusion matrix (rows: true class, columns: predicted, in ``classes`` order), per-class recall and
    the balanced accuracy (None where no pair is given) of (true, predicted) pairs."""
    matrix = [[sum(1 for t, p in pairs if t == tc and p == pc) for pc in classes] for tc in classes]
    recall = {c: (row[i] / sum(row) if sum(row) else None) for i, (c, row) in enumerate(zip(classes, matrix))}
    present = [r for r in recall.values() if r is not None]
    return {"classes": list(classes), "matrix": matrix, "recall": recall, "n": len(pairs),
            "balanced_accuracy": sum(present) / len(present) if present else None}


def score_characterisation(result: EvaluationResult, nodules_by_scan: Mapping[str, Sequence[Any]],
                           threshold: float, min_diameter_mm: float = CHARACTERISATION_MIN_DIAMETER_MM
                           ) -> dict[str, Any]:
    """Type and margin confusion on the included nodules of ``result`` of at least ``min_diameter_mm``.

    ``nodules_by_scan``: each scan's detected :class:`~resmtnet.detect.nodules.Nodule` list, in the order the
    findings were scored (a finding's ``row``)."""
    types: list[tuple[str, str]] = []
    margins: list[tuple[str, str]] = []
    malignancy: dict[str, list[float]] = {}  # the found nodules' predicted malignancy by true type and margin
    scored = not_found = 0
    for outcome in result.match.nodules:
        mark = outcome.mark
        if mark.excluded or mark.diameter_mm < min_diameter_mm:
            continue
        if mark.nodule_type not in TYPE_CLASSES and mark.margin not in MARGIN_CLASSES:
            continue
        scored += 1
        best = outcome.best
        if best is None or best.probability < threshold:
            not_found += 1
            continue
        nodule = nodules_by_scan[best.seriesuid][best.row]
        if mark.nodule_type in TYPE_CLASSES:
            types.append((mark.nodule_type, nodule.nodule_type))
            malignancy.setdefault(mark.nodule_type, []).append(float(nodule.malignancy))
        if mark.margin in MARGIN_CLASSES:
            margins.append((mark.margin, nodule.margin))
            if mark.nodule_type != "calcified":
                malignancy.setdefault(f"{mark.margin} (not calcified)", []).append(float(nodule.malignancy))
    return {"min_diameter_mm": min_diameter_mm, "threshold": threshold, "nodules": scored,
            "not_found_at_threshold": not_found, "type": confusion(types, TYPE_CLASSES),
            "margin": confusion(margins, MARGIN_CLASSES),
            "malignancy_by_truth": {k: {"n": len(v), "mean": sum(v) / len(v), "min": min(v), "max": max(v)}
                                    for k, v in sorted(malignancy.items())}}


def format_characterisation(c: dict[str, Any]) -> str:
    """The lines `resmtnet evaluate --phantoms` prints about the type and margin heads."""
    lines = [f"type and margin of the {c['nodules'] - c['not_found_at_threshold']} found nodules >= "
             f"{c['min_diameter_mm']:g} mm (of {c['nodules']}; found: a hit at probability >= {c['threshold']:.3f}):"]
    for key in ("type", "margin"):
        m = c[key]
        ba = "n/a" if m["balanced_accuracy"] is None else f"{m['balanced_accuracy']:.3f}"
        lines.append(f"  {key}: balanced accuracy {ba} on {m['n']}; rows true, columns predicted "
                     f"({', '.join(m['classes'])})")
        lines += [f"    {cls:>12}: " + " ".join(f"{v:3d}" for v in row) for cls, row in zip(m["classes"], m["matrix"])]
    by_truth = c["malignancy_by_truth"].items()
    lines.append("  predicted malignancy of the found nodules by their true type and margin: " + "; ".join(
        f"{k} {v['mean']:.2f} ({v['min']:.2f}-{v['max']:.2f}, n={v['n']})" for k, v in by_truth))
    return "\n".join(lines)
