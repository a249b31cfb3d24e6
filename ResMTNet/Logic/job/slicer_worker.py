"""One detection in a process of its own, started by the Slicer module (:mod:`.slicer_job`).

``python slicer_worker.py INPUT.nrrd OUTDIR [--model PATH] [--device D] [--threshold T] [--min-diameter MM]
[--no-tta] [--parent-pid PID] [--prior PRIOR.nrrd [--interval-days DAYS]]
[--dicom-out DIR --dicom-source FOLDER --series-uid UID]``

With ``--dicom-out`` (the panel's "DICOM SEG + SR to folder") INPUT is the DICOM series ``UID`` of FOLDER, as
the scene holds it: the series is checked against INPUT's grid before the work (refused, one line, where its
slices are not INPUT's voxels), and a DICOM SEG and a TID 1500 SR on it go to DIR (:mod:`.dicom_export`).

With ``--prior`` (the panel's follow-up mode) the prior scan is detected too, registered onto INPUT, and its
nodules paired with INPUT's (:mod:`.followup`); the table and the registration go into the result's
``info["followup"]``.

Run as a script, the file loads the core's folder (the one above its own) as the package ``resmtnet`` first:
inside Slicer the core is not pip-installed, and its modules must not become top-level modules (``sys.path[0]``
would be this file's folder).
``python -m resmtnet.job.slicer_worker`` works the same where the core is installed.

What the parent reads:

- stdout, one message a line, each starting with :data:`MESSAGE_PREFIX`: ``progress FRACTION TEXT``,
  ``error TEXT`` (a problem the user can act on, exit status 2; or an unexpected error such as torch's
  out-of-memory, exit status 1, its traceback on stderr), ``done COUNT``. Other lines (warnings, a
  traceback) are the child's log.
- OUTDIR/:data:`RESULT_FILE` (the nodules, geometry and run information, JSON) and OUTDIR/:data:`LABELS_FILE`
  (the nodule masks as a label map on the input's grid), written before ``done``.

A torch out-of-memory, a CUDA fault or a kill ends this process only; the parent turns a death without
``done`` into an error message. With ``--parent-pid`` the child also ends itself within a second of its
parent's death (POSIX), so that a crashed Slicer leaves no detection running.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

MESSAGE_PREFIX = "@resmtnet"
RESULT_FILE = "detection.json"
LABELS_FILE = "labels.nrrd"
EXIT_USER_ERROR = 2
EXIT_PARENT_GONE = 3


def emit(kind: str, text: str = "") -> None:
    """One message to the parent (flushed at once: the parent shows it while this process works on)."""
    sys.stdout.write(f"{MESSAGE_PREFIX} {kind} {text}".rstrip().replace("\r", " ") + "\n")
    sys.stdout.flush()


def build_parser() -> argparse.ArgumentParser:
    from ..detect.patient_options import add_patient_options

    parser = argparse.ArgumentParser(prog="slicer_worker", description="Res-MTNet detection for the Slicer module")
    parser.add_argument("input", help="the CT volume file (NRRD)")
    parser.add_argument("outdir", help="folder for the results")
    parser.add_argument("--model", default=None, help="checkpoint (default: the shipped weights)")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--threshold", type=float, default=None, help="default: the model's")
    parser.add_argument("--min-diameter", type=float, default=0.0)
    parser.add_argument("--no-tta", dest="tta", action="store_false")
    parser.add_argument("--parent-pid", type=int, default=None, help="end when this process has ended (POSIX)")
    parser.add_argument("--prior", default=None, help="follow-up: the prior scan (NRRD) to compare INPUT with")
    parser.add_argument("--interval-days", type=float, default=None, help="follow-up: days from prior to INPUT")
    parser.add_argument("--dicom-out", default=None, help="folder for a DICOM SEG and SR on INPUT's source series")
    parser.add_argument("--dicom-source", default=None, help="with --dicom-out: the folder of INPUT's DICOM series")
    parser.add_argument("--series-uid", default=None, help="with --dicom-out: INPUT's DICOM SeriesInstanceUID")
    add_patient_options(parser)
    return parser


def _watch_parent(pid: int, interval_s: float = 0.5) -> None:
    """End this process soon after process ``pid`` is gone (a daemon thread; POSIX only: Windows'
    ``os.kill`` would terminate the process it is given)."""
    if os.name != "posix":
        return

    def watch() -> None:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(EXIT_PARENT_GONE)
            except PermissionError:
                pass  # it exists, owned by someone else
            time.sleep(interval_s)

    threading.Thread(target=watch, name="parent watch", daemon=True).start()


def detection_to_json(detection: Any) -> dict[str, Any]:
    return {"seriesuid": detection.seriesuid, "nodules": [n.to_dict() for n in detection.nodules],
            "spacing": list(detection.spacing), "origin": list(detection.origin),
            "direction": list(detection.direction), "info": detection.info}


def write_results(detection: Any, outdir: Path) -> None:
    """The label map first, the JSON last: a folder with the JSON holds a whole result."""
    import numpy as np
    import SimpleITK as sitk

    from ..util.atomic import atomic_write

    labels = np.zeros((1, 1, 1), np.uint16) if detection.labels is None else np.asarray(detection.labels, np.uint16)
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing(detection.spacing)
    image.SetOrigin(detection.origin)
    image.SetDirection(detection.direction)
    atomic_write(outdir / LABELS_FILE, lambda tmp: sitk.WriteImage(image, str(tmp), True))
    text = json.dumps(detection_to_json(detection), indent=1)
    atomic_write(outdir / RESULT_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_results(outdir: str | Path) -> Any:
    """The :class:`~resmtnet.detect.nodules.Detection` a worker left in ``outdir``."""
    import numpy as np
    import SimpleITK as sitk

    from ..detect.nodules import Detection, Nodule

    outdir = Path(outdir)
    d = json.loads((outdir / RESULT_FILE).read_text(encoding="utf-8"))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(outdir / LABELS_FILE))).astype(np.uint16, copy=False)
    return Detection(seriesuid=d["seriesuid"], nodules=[Nodule.from_dict(n) for n in d["nodules"]], labels=labels,
                     spacing=tuple(d["spacing"]), origin=tuple(d["origin"]), direction=tuple(d["direction"]),
                     info=d["info"])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.parent_pid:
        _watch_parent(args.parent_pid)

    from ..io.memory import read_ct_for_detection
    from ..util.allocator import keep_freed_memory
    from ..util.errors import ResMTNetError

    keep_freed_memory()  # a short-lived process: freed memory may stay until it ends
    try:
        emit("progress", "0 starting the detector")
        from ..detect.patient_options import patient_inputs
        from ..detect.pipeline import detect_ct

        patient = patient_inputs(args)

        def detect(path: str, start: float, share: float, what: str, ct: Any = None) -> tuple[Any, Any]:
            if ct is None:
                ct = read_ct_for_detection(path)  # as the command reads it: int16, within the memory bound
            return ct, detect_ct(ct, model=args.model, device=args.device, threshold=args.threshold,
                                 min_diameter_mm=args.min_diameter, tta=args.tta, patient=patient,
                                 progress=lambda f, text: emit("progress", f"{start + share * f:.4f} {what}{text}"))

        series = ct = None
        if args.dicom_out is not None:  # refused before the work where the series is not the input's voxels
            from ..detect.preflight import check_output_dir
            from ..report.dicom_export import read_source_series
            from ..util.errors import InputError

            if not args.dicom_source or not args.series_uid:
                raise InputError("DICOM outputs need a volume loaded from DICOM (its series files were not found)")
            ct = read_ct_for_detection(args.input)
            ct.seriesuid, ct.source = args.series_uid, args.dicom_source
            series = read_source_series(args.dicom_source, ct)
            check_output_dir(args.dicom_out)
        if args.prior is None:
            ct, detection = detect(args.input, 0.0, 1.0, "", ct)
        else:
            from ..report.followup import compare, register_scans

            prior_ct, prior = detect(args.prior, 0.0, 0.45, "prior scan: ")
            ct, detection = detect(args.input, 0.45, 0.45, "current scan: ", ct)
            emit("progress", "0.9500 registering the prior scan onto the current one")
            registration = register_scans(prior_ct, ct)
            pairs = compare(prior.nodules, detection.nodules, registration, args.interval_days)
            detection.info["followup"] = {"interval_days": args.interval_days,
                                          "registration": registration.describe(),
                                          "prior_nodules": [n.to_dict() for n in prior.nodules],
                                          "pairs": [r.to_dict() for r in pairs]}
        if series is not None:
            from ..report.dicom_export import write_dicom_outputs

            written = write_dicom_outputs(series, ct, detection, args.dicom_out)
            detection.info["dicom_out"] = {"folder": str(args.dicom_out), "files": sorted(written)}
        write_results(detection, Path(args.outdir))
    except ResMTNetError as e:
        emit("error", str(e))
        return EXIT_USER_ERROR
    except Exception as e:  # torch's out-of-memory, a CUDA error ...: named in the message, traceback in the log
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        emit("error", f"{type(e).__name__}: {e}".splitlines()[0])
        return 1
    emit("done", str(len(detection.nodules)))
    return 0


def _load_package_from_this_folder() -> None:
    """Script mode: register this folder as the package ``resmtnet`` (as the Slicer module does)."""
    import importlib.util

    folder = os.path.dirname(os.path.abspath(__file__))
    here = os.path.dirname(folder)  # the core's root (this file is in its scene/ package)
    if sys.path and os.path.abspath(sys.path[0] or ".") == folder:
        del sys.path[0]  # the core's modules are not top-level modules
    if "resmtnet" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location("resmtnet", os.path.join(here, "__init__.py"),
                                                  submodule_search_locations=[here])
    module = importlib.util.module_from_spec(spec)
    sys.modules["resmtnet"] = module
    spec.loader.exec_module(module)


if __name__ == "__main__":
    import importlib

    if not __package__:
        _load_package_from_this_folder()
    sys.exit(importlib.import_module("resmtnet.job.slicer_worker").main())
