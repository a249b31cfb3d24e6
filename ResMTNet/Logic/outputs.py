"""Writing one detection's files, whole or not at all.

Everything is written into a hidden temporary folder beside the output folder and moved into place
only when every file was written; an error leaves the output folder as it was.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .ctio import CTVolume
from .nodules import Detection, write_nodules_csv

CSV_FILE = "nodules.csv"
REPORT_FILE = "report.json"
OVERVIEW_FILE = "overview.png"
VIEWS_FILE = "views.png"


def geometry(ct: CTVolume) -> dict[str, Any]:
    return {"size_xyz": list(ct.shape_xyz), "spacing_mm": list(ct.spacing), "origin_lps": list(ct.origin),
            "direction": list(ct.direction), "coordinate_system": "LPS"}


def build_report(ct: CTVolume, detection: Detection, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    info = detection.info
    return {
        "resmtnet_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "input": {"path": ct.source, "seriesuid": ct.seriesuid, **geometry(ct),
                  "hu_range": [float(np.min(ct.array)), float(np.max(ct.array))]},
        "model": info.get("model", {}),
        "device": info.get("device"),
        "precision": info.get("precision"),
        "threshold": info.get("threshold"),
        "timings_s": info.get("timings_s", {}),
        "lung_volume_ml": info.get("lung_volume_ml"),
        "candidates_before_threshold": info.get("candidates"),
        "coordinate_system": "LPS world mm (as ITK and LUNA16); Slicer shows RAS = (-x, -y, z)",
        "nodules": [n.to_dict() for n in detection.nodules],
        **(extra or {}),
    }


def write_views(scene: Path, out: Path) -> dict[str, str]:
    """``views.png`` drawn from ``scene`` by Slicer's own views; where offscreen rendering is impossible, a note
    saying why instead (never an error: the detection stands without its picture)."""
    from .views import write_views_png

    why_not = write_views_png(scene, out)
    return {"file": out.name} if why_not is None else {"skipped": why_not}


def write_detection_outputs(ct: CTVolume, detection: Detection, outdir: str | Path, *, slicer_files: bool = True,
                            color_by: str = "malignancy", extra_report: dict[str, Any] | None = None
                            ) -> dict[str, Path]:
    """Write nodules.csv, report.json, overview.png and (with slicer-core) the Slicer files and views.png to
    ``outdir``."""
    from .overview import write_overview

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".resmtnet-detect-", dir=outdir.parent))
    written: dict[str, Path] = {}
    try:
        write_nodules_csv(tmp / CSV_FILE, detection.seriesuid, detection.nodules)
        write_overview(tmp / OVERVIEW_FILE, ct, detection)
        report_extra = dict(extra_report or {})
        if slicer_files:
            from .slicer_outputs import write_scene_files

            files = write_scene_files(ct, detection, tmp, color_by=color_by)
            report_extra["slicer_files"] = {k: p.name for k, p in files.items()}
            report_extra["views"] = write_views(files["scene"], tmp / VIEWS_FILE)
        report = build_report(ct, detection, report_extra)
        with open(tmp / REPORT_FILE, "w") as f:
            json.dump(report, f, indent=1)
        for p in sorted(tmp.iterdir()):
            if p.name.startswith("."):
                continue
            os.replace(p, outdir / p.name)
            written[p.name] = outdir / p.name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written
