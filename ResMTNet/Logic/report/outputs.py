"""Writing one detection's files as one set: the previous set or the new one, never a mix.

The files are written into a staging folder inside the output folder and published together
(:mod:`.fileset`: a set folder under ``.resmtnet/``, the names links into it, one rename switches sets); an
error or Ctrl-C while writing leaves the output folder's previous set as it was, and an output folder that
can't be written becomes one clear :class:`~.errors.OutputError`.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..detect.nodules import Detection, write_nodules_csv
from ..io.ctio import CTVolume
from ..io.fileset import StagedSet, UnfinishedPublish
from ..scene.slicer_outputs import MARKUPS_FILE, SCENE_FILE, SEGMENTATION_FILE
from ..util.errors import OutputError

CSV_FILE = "nodules.csv"
REPORT_FILE = "report.json"
OVERVIEW_FILE = "overview.png"
VIEWS_FILE = "views.png"
#: every file a detection writes: a new set drops those of the previous one it doesn't write again (the
#: Slicer files after a --no-slicer-files run), also where an older version wrote them without a manifest
OUTPUT_FILES = (CSV_FILE, REPORT_FILE, OVERVIEW_FILE, MARKUPS_FILE, SEGMENTATION_FILE, SCENE_FILE, VIEWS_FILE)


def geometry(ct: CTVolume) -> dict[str, Any]:
    return {"size_xyz": list(ct.shape_xyz), "spacing_mm": list(ct.spacing), "origin_lps": list(ct.origin),
            "direction": list(ct.direction), "coordinate_system": "LPS"}


def build_report(ct: CTVolume, detection: Detection, extra: dict[str, Any] | None = None,
                 timings_s: dict[str, float] | None = None) -> dict[str, Any]:
    """The report's content; ``timings_s``: the command's other stages (start-up, reading, each file written),
    reported after detection's own."""
    info = detection.info
    return {
        "resmtnet_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "input": {"path": ct.source, "seriesuid": ct.seriesuid, **geometry(ct),
                  "hu_range": [float(np.min(ct.array)), float(np.max(ct.array))]},
        "warnings": list(dict.fromkeys(ct.notes)),  # what the reader found doubtful, as the command printed it
        "model": info.get("model", {}),
        "device": info.get("device"),
        "precision": info.get("precision"),
        "threshold": info.get("threshold"),
        "timings_s": {**info.get("timings_s", {}), **(timings_s or {})},
        "lung_volume_ml": info.get("lung_volume_ml"),
        "candidates_before_threshold": info.get("candidates"),
        "coordinate_system": "LPS world mm (as ITK and LUNA16); Slicer shows RAS = (-x, -y, z)",
        "nodules": [n.to_dict() for n in detection.nodules],
        # the Brock (PanCan) inputs as used (defaults where not given: "defaulted" names them), beside the network's
        # malignancy, never instead of it
        "brock": info.get("brock"),
        "lung_rads_note": "Lung-RADS v2022, baseline rules: no prior scan is compared; juxtapleural/perifissural "
                          "benign morphology is not assessed; 4X from spiculation only; research use only",
        **(extra or {}),
    }


def start_views(out: Path) -> Any:
    """Start rendering ``views.png`` (:class:`.views.ViewsRendering`), or why it could not start."""
    from ..scene.views import ViewsRendering

    try:
        return ViewsRendering(out)
    except OSError as e:
        return f"the rendering process could not start: {e}"


def finish_views(rendering: Any) -> dict[str, str]:
    """``{"file": "views.png"}`` once ``rendering`` (:func:`start_views`) wrote it; where offscreen rendering is
    impossible, a note saying why instead (never an error: the detection stands without its picture)."""
    if isinstance(rendering, str):
        return {"skipped": rendering}
    why_not = rendering.finish()
    return {"file": rendering.out.name} if why_not is None else {"skipped": why_not}


def write_detection_outputs(ct: CTVolume, detection: Detection, outdir: str | Path, *, slicer_files: bool = True,
                            color_by: str = "malignancy", extra_report: dict[str, Any] | None = None,
                            timings_s: dict[str, float] | None = None) -> dict[str, Path]:
    """Write nodules.csv, report.json, overview.png and (with slicer-core) the Slicer files and views.png
    to ``outdir``.

    They replace the folder's previous set as one (:mod:`.fileset`); the manifest records the input they
    were made from (``input``: its resolved path) for ``detect --resume``. An output folder that can't be
    written (read-only, full, a file, under a file) raises :class:`OutputError`; the previous set stays.
    report.json's ``timings_s`` holds detection's stages, ``timings_s`` given here (the caller's: start-up,
    reading) and the time each file took (``write_*``; views.png renders in a child process, started before the
    Slicer files and drawing while the overview is written: ``write_views`` is the wait after them).
    Returns the written files by name.
    """
    import time

    from .overview import write_overview

    outdir = Path(outdir)
    times = dict(timings_s or {})

    def timed(name: str, t0: float) -> float:
        now = time.perf_counter()
        times[name] = round(now - t0, 3)
        return now

    views = None
    try:
        with StagedSet(outdir, replaces=OUTPUT_FILES) as stage:
            tmp = stage.path
            assert tmp is not None
            report_extra = dict(extra_report or {})
            t = time.perf_counter()
            write_nodules_csv(tmp / CSV_FILE, detection.seriesuid, detection.nodules)  # first: a full disk says so
            t = timed("write_csv", t)
            if slicer_files:
                from ..scene.slicer_outputs import write_scene_files

                # the child sets Slicer's views up while the scene is built and written here
                views = start_views(tmp / VIEWS_FILE)
                files = write_scene_files(ct, detection, tmp, color_by=color_by, timings_s=times)
                report_extra["slicer_files"] = {k: p.name for k, p in files.items()}
                if not isinstance(views, str):
                    views.draw(files["scene"])  # renders while the overview is written
                t = time.perf_counter()
            write_overview(tmp / OVERVIEW_FILE, ct, detection)
            t = timed("write_overview", t)
            if views is not None:
                report_extra["views"], views = finish_views(views), None
                t = timed("write_views", t)
            report = build_report(ct, detection, report_extra, times)
            with open(tmp / REPORT_FILE, "w", encoding="utf-8") as f:
                json.dump(report, f, indent=1)
            names = stage.publish({"input": input_key(ct.source), "seriesuid": detection.seriesuid})
    except OSError as e:
        raise OutputError(describe_output_error(outdir, e)) from e
    finally:
        if views is not None and not isinstance(views, str):  # an error or Ctrl-C before the picture was done
            views.stop()
    return {name: outdir / name for name in names}


def input_key(source: str | Path) -> str:
    """How a set's manifest names its input: the resolved path (empty for a CT that came from no file)."""
    return str(Path(source).resolve()) if str(source) else ""


def describe_output_error(outdir: Path, e: OSError) -> str:
    """One line for an output folder that could not be written, naming it and why."""
    reasons = {errno.ENOSPC: "the disk is full", errno.EROFS: "it is on a read-only file system",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               getattr(errno, "EDQUOT", -2): "the disk quota is exceeded",
               errno.ENOTDIR: "a part of its path is a file", errno.EEXIST: "it exists and is not a folder"}
    reason = reasons.get(e.errno or -1) or e.strerror or str(e)
    name = Path(e.filename).name if e.filename and Path(e.filename) != outdir else ""
    where = f" (at {name})" if name and not name.startswith(".") else ""  # not the hidden staging folder's
    if isinstance(e, UnfinishedPublish):
        return (f"{outdir}: could not put all the new results in place: {reason}{where}; the next run into it "
                "finishes that")
    return f"{outdir}: could not write the results: {reason}{where}; its previous results, if any, are unchanged"
