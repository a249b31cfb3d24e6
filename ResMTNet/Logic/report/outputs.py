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
from ..scene.slicer_process import SlicerProcess, start_slicer_process
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


def write_detection_outputs(ct: CTVolume, detection: Detection, outdir: str | Path, *, slicer_files: bool = True,
                            color_by: str = "malignancy", extra_report: dict[str, Any] | None = None,
                            timings_s: dict[str, float] | None = None,
                            slicer_process: SlicerProcess | str | None = None) -> dict[str, Path]:
    """Write nodules.csv, report.json, overview.png and (with slicer-core) the Slicer files and views.png
    to ``outdir``.

    They replace the folder's previous set as one (:mod:`.fileset`); the manifest records the input they
    were made from (``input``: its resolved path) for ``detect --resume``. An output folder that can't be
    written (read-only, full, a file, under a file) raises :class:`OutputError`; the previous set stays.

    The Slicer files and views.png are written by a child process (:mod:`..scene.slicer_process`) while the
    overview is written here: ``slicer_process``, one started early (:func:`start_slicer_process`: its imports
    and views then overlap the caller's work), else one is started here; it is used once, and ended here
    whatever happens. Where it gives no Slicer files, they are written here.
    report.json's ``timings_s`` holds detection's stages, ``timings_s`` given here (the caller's: start-up,
    reading) and this process's time for each step: ``write_csv``, ``slicer_handoff`` (the CT and detection
    handed to the child), ``write_overview``, ``slicer_files`` (the wait left for the Slicer files, or their writing
    here), ``write_views`` (the wait left for views.png); then the steps inside those, apart: ``slicer_process``, the
    child's (``ready``: its start-up and views set up; ``slicer_scene``, ``write_markups``, ``write_segmentation``,
    ``write_scene``; ``views_scene``, ``views_render``, ``views_png``), or ``slicer_in_process`` where the Slicer
    files were written here. Returns the written files by name.
    """
    import time

    from .overview import write_overview

    outdir = Path(outdir)
    times: dict[str, Any] = dict(timings_s or {})

    def timed(name: str, t0: float) -> float:
        now = time.perf_counter()
        times[name] = round(now - t0, 3)
        return now

    helper = slicer_process
    if slicer_files and helper is None:
        helper = start_slicer_process()  # its imports and views overlap the csv and the handoff at least
    try:
        with StagedSet(outdir, replaces=OUTPUT_FILES) as stage:
            tmp = stage.path
            assert tmp is not None
            report_extra = dict(extra_report or {})
            try:
                t = time.perf_counter()
                write_nodules_csv(tmp / CSV_FILE, detection.seriesuid, detection.nodules)  # first: a full disk says so
                t = timed("write_csv", t)
                if slicer_files and isinstance(helper, SlicerProcess):
                    helper.request(ct, detection, tmp, tmp / VIEWS_FILE, color_by=color_by)
                    t = timed("slicer_handoff", t)
                write_overview(tmp / OVERVIEW_FILE, ct, detection)
                t = timed("write_overview", t)
                if slicer_files:
                    views = _slicer_files(helper, ct, detection, tmp, color_by, times)
                    report_extra["slicer_files"] = {k: Path(p).name for k, p in views.pop("files").items()}
                    t = timed("slicer_files", t)
                    if isinstance(helper, SlicerProcess) and "skipped" not in views:
                        why_not = helper.finish()
                        views = {"file": VIEWS_FILE} if why_not is None else {"skipped": why_not}
                        times.setdefault("slicer_process", {}).update(helper.timings_s)
                        t = timed("write_views", t)
                    helper = None
                    report_extra["views"] = views
            except BaseException:
                # the child writes into the staging folder: it ends before that folder is removed
                if isinstance(helper, SlicerProcess):
                    helper.stop()
                    helper = None
                raise
            report = build_report(ct, detection, report_extra, times)
            with open(tmp / REPORT_FILE, "w", encoding="utf-8") as f:
                json.dump(report, f, indent=1)
            names = stage.publish({"input": input_key(ct.source), "seriesuid": detection.seriesuid})
    except OSError as e:
        raise OutputError(describe_output_error(outdir, e)) from e
    finally:
        if isinstance(helper, SlicerProcess):  # --no-slicer-files with one started, or an error before the with
            helper.stop()
    return {name: outdir / name for name in names}


def _slicer_files(helper: SlicerProcess | str | None, ct: CTVolume, detection: Detection, outdir: Path,
                  color_by: str, times: dict[str, Any]) -> dict[str, Any]:
    """The Slicer files, from ``helper`` where it wrote them, else written here: ``{"files": {kind: path}}``, with
    ``{"skipped": why}`` where views.png won't come. ``times`` receives the steps' seconds."""
    if isinstance(helper, SlicerProcess):
        answer = helper.scene_files()
        if answer is not None:
            times["slicer_process"] = answer.get("timings_s", {})
            return {"files": answer["files"]}
        why_not = helper.why_not()
    else:
        why_not = helper or "the rendering process was not started"
    from ..scene.slicer_outputs import write_scene_files

    # the child is gone (or never was): the files are this process's job, views.png is not to be had
    steps: dict[str, float] = {}
    files = write_scene_files(ct, detection, outdir, color_by=color_by, timings_s=steps)
    times["slicer_in_process"] = steps  # within slicer_files: apart, so that no second counts twice
    return {"files": files, "skipped": why_not}


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
