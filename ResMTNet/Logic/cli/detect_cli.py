"""Find pulmonary nodules in a CT (a volume file SimpleITK reads, or a DICOM series folder), or in many.

One INPUT: writes to OUTDIR, as one set that replaces the previous one whole: nodules.csv (LUNA16 columns,
LPS mm, + diameter, malignancy, volume, Lung-RADS v2022, type, margin, solid component, Brock probability),
report.json, overview.png, and the Slicer files nodules.mrk.json, nodules.seg.nrrd and scene.mrb (one click in
Slicer) with views.png, the scene as Slicer's views draw it. Several INPUTs, --batch FOLDER (one scan per file
or sub-folder in it) or --inputs-from FILE: a batch, one sub-folder of OUTDIR per scan, OUTDIR/nodules.csv with
every finding and OUTDIR/failures.csv naming each scan that failed and why; exit status 1 when some scans failed,
2 when all did.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..detect.patient_options import add_patient_options, patient_inputs
from .cli import add_device_option


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..scene.slicer_scene import COLOR_BY_CHOICES

    p.add_argument("input", nargs="*", metavar="INPUT",
                   help="CT volume (.nrrd, .nii[.gz], .mhd, .mha) or DICOM series folder; several make a batch")
    p.add_argument("-o", "--out", required=True, help="output folder (a batch: the root of its tree)")
    batch = p.add_argument_group(
        "batch", "several INPUTs, --batch or --inputs-from: one sub-folder of OUT a scan, OUT/nodules.csv with every "
        "finding, OUT/failures.csv with each scan that failed and why")
    batch.add_argument("--batch", action="store_true", help="each INPUT folder holds scans: each volume file in it "
                       "and each sub-folder (a DICOM series, or the volume files inside it) is one")
    batch.add_argument("--inputs-from", metavar="FILE", help="the scans FILE lists, one path a line (relative to the "
                       "current folder; blank lines and lines starting with # skipped)")
    p.add_argument("--resume", action="store_true",
                   help="skip scans whose output folder already holds a complete set made from the same input")
    p.add_argument("--model", help="checkpoint file (default: the shipped weights)")
    add_device_option(p)
    p.add_argument("--threshold", type=float, help="finding probability threshold (default: the model's)")
    p.add_argument("--max-findings", type=int, help="keep at most N findings (most probable first)")
    p.add_argument("--min-diameter", type=float, default=0.0, help="drop findings smaller than this (mm)")
    p.add_argument("--color-by", default="malignancy", choices=COLOR_BY_CHOICES,
                   help="colour of fiducials and segments in the Slicer files: by malignancy (green to red) or by "
                        "Lung-RADS v2022 category (1 to 4X)")
    add_patient_options(p)
    p.add_argument("--no-slicer-files", action="store_true", help="skip nodules.mrk.json, .seg.nrrd and .mrb")
    p.add_argument("--dicom-out", metavar="DIR",
                   help="also write a DICOM Segmentation (one segment per nodule) and a TID 1500 Structured Report "
                        "referencing the source slices into DIR (one DICOM series folder as the input)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="test-time augmentation: also run the network on the scan's mirror images and average "
                        "(default; the passes the model's threshold was calibrated with: all seven mirror images "
                        "for the shipped weights, about 8x the network time, fewer false findings); --no-tta is "
                        "the fast path")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def run(args: argparse.Namespace) -> int:
    import importlib.util

    from ..detect.preflight import check_detect_options, check_dicom_out
    from ..util.errors import InputError, ResMTNetError

    check_detect_options(args.threshold, args.max_findings, args.min_diameter)
    args.patient = patient_inputs(args)
    if not args.no_slicer_files and importlib.util.find_spec("slicer") is None:
        # say so before minutes of detection, not after: the Slicer files need Slicer's MRML (slicer-core)
        raise ResMTNetError("the Slicer files (.mrk.json, .seg.nrrd, .mrb) need slicer-core, which is not "
                            "installed here: install it (requirements.txt) or pass --no-slicer-files")
    if not args.input and args.inputs_from is None:
        raise InputError("no input: give a CT volume or DICOM series folder (or several, or --inputs-from FILE)")
    batch = len(args.input) > 1 or args.batch or args.inputs_from is not None
    if args.dicom_out is not None:
        check_dicom_out(args.input, args.dicom_out, args.out, batch=batch)
    if batch:
        return run_batch(args)
    return run_single(args)


def _detect_options(args: argparse.Namespace) -> dict:
    return {"device": args.device, "threshold": args.threshold, "min_diameter_mm": args.min_diameter,
            "max_findings": args.max_findings, "tta": args.tta, "patient": args.patient}


def _load_model(args: argparse.Namespace):
    """The model, loaded once and before any CT is read: a bad checkpoint stops the run in seconds."""
    from ..model.model_io import load_model
    from ..util.runtime import pick_device

    return load_model(args.model, pick_device(args.device))


def run_single(args: argparse.Namespace) -> int:
    """One CT into OUTDIR itself."""
    import contextlib
    import time

    from tqdm import tqdm

    from ..detect.preflight import check_output_dir
    from ..io.fileset import read_set, recover
    from ..report.dicom_export import read_source_series, write_dicom_outputs
    from ..report.outputs import input_key, write_detection_outputs
    from ..scene.slicer_process import SlicerProcess, start_slicer_process
    from .cli import print_warnings

    t = time.perf_counter()
    times = {"startup": seconds_since_process_start()}  # the interpreter, imports (not torch's), argument parsing
    source = args.input[0]
    check_output_dir(args.out)
    with contextlib.suppress(OSError):  # finish a publish a killed run left; an OUTDIR that can't be written
        recover(args.out)               # is reported when the results are written
    if args.resume:
        if all((read_set(d) or {}).get("input") == input_key(source) for d in (args.out, args.dicom_out) if d):
            print(f"{args.out} already holds the results of {source} (--resume): nothing to do")
            return 0
    # the CT is read on a thread while torch is imported and the model loaded here: the reading is mostly ITK's and
    # GDCM's C++ (the GIL released), torch's import Python's
    reading = _Reading(source)
    from ..detect.pipeline import detect_ct  # torch

    model = _load_model(args)
    now = time.perf_counter()
    times["load_model"], t = round(now - t, 3), now  # with torch's import
    ct = reading.result()  # refused from its header if too large; whole HU as int16
    times["read"] = round(time.perf_counter() - t, 3)  # what reading took beyond the model
    # the child that writes the Slicer files imports slicer-core and sets its views up meanwhile, on the core that
    # finding the lungs (one thread) leaves idle; not earlier, where the reading and torch's import use both
    helper = None if args.no_slicer_files else start_slicer_process()
    try:
        print_warnings(ct.notes)
        series = read_source_series(source, ct) if args.dicom_out is not None else None  # refused before the work
        bar = None if args.quiet else tqdm(total=100, desc="detect", unit="%", dynamic_ncols=True,
                                           bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")

        def progress(fraction: float, message: str) -> None:
            if bar is not None:
                bar.n = round(100 * fraction)
                bar.set_postfix_str(message)

        try:
            det = detect_ct(ct, model=model, progress=progress, **_detect_options(args))
        finally:
            if bar is not None:
                bar.close()
    except BaseException:
        if isinstance(helper, SlicerProcess):
            helper.stop()
        raise
    files = write_detection_outputs(ct, det, args.out, slicer_files=not args.no_slicer_files,
                                    color_by=args.color_by, timings_s=times, slicer_process=helper)
    dicom_files = write_dicom_outputs(series, ct, det, args.dicom_out) if series is not None else {}
    print(f"{len(det.nodules)} nodule(s) in {ct.seriesuid or source} "
          f"({det.info['timings_s']['total']:.1f} s on {det.info['device']})")
    for n in det.nodules:
        x, y, z = n.center_lps
        brock = "n/a" if n.brock_malignancy is None else f"{100 * n.brock_malignancy:.1f}%"
        print(f"  N{n.number}: ({x:.1f}, {y:.1f}, {z:.1f}) LPS mm  p={n.probability:.2f}  {n.diameter_mm:.1f} mm  "
              f"{n.type_text}, {n.margin}  Lung-RADS {n.lung_rads}  malignancy {100 * n.malignancy:.0f}%  "
              f"Brock {brock}", file=sys.stdout)
    defaulted = det.info.get("brock", {}).get("defaulted") or []
    if det.nodules and defaulted:
        print("  Brock: defaults used for " + ", ".join(defaulted).replace("_", " ")
              + " (give --age, --sex, --family-history, --emphysema)")
    print("wrote " + ", ".join(sorted(files)) + f" to {args.out}")
    if dicom_files:
        print("wrote " + ", ".join(sorted(dicom_files)) + f" to {args.dicom_out}")
    return 0


class _Reading:
    """:func:`~resmtnet.io.memory.read_ct_for_detection` on a thread of its own; :meth:`result` waits for the CT
    (or raises what reading raised). A daemon thread: a run stopped meanwhile (an error, Ctrl-C) does not wait."""

    def __init__(self, source: str):
        import threading

        from ..io.memory import read_ct_for_detection  # imported here, not on the thread beside torch's import

        self._read_ct = read_ct_for_detection
        self._source = source
        self._ct: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, name="read-ct", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            self._ct = self._read_ct(self._source)
        except BaseException as e:  # handed to the main thread, raised there
            self._error = e

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._ct


def seconds_since_process_start() -> float | None:
    """Wall seconds since this process started (Linux: /proc), None where that can't be read."""
    import os

    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return round(uptime - started_ticks / os.sysconf("SC_CLK_TCK"), 3)
    except (OSError, ValueError, IndexError):
        return None


def run_batch(args: argparse.Namespace) -> int:
    """Many CTs into a tree under OUTDIR (:mod:`.batch`); the model is loaded once."""
    from collections.abc import Callable
    from pathlib import Path

    from ..detect.pipeline import detect_ct
    from ..detect.preflight import check_output_dir
    from ..io.ctio import CTVolume
    from ..io.memory import read_ct_for_detection
    from ..report.batch import FAILURES_FILE, SUMMARY_FILE, collect_scans
    from ..report.batch import run_batch as run_scans
    from ..report.outputs import write_detection_outputs
    from .cli import print_warnings

    scans = collect_scans(args.input, batch_folders=args.batch, inputs_from=args.inputs_from)
    check_output_dir(args.out)
    model = _load_model(args)

    def read(path: Path) -> CTVolume:
        ct = read_ct_for_detection(path)
        print_warnings(ct.notes)
        return ct

    def detect(ct: CTVolume, outdir: Path, progress: Callable[[str], None]) -> int:
        det = detect_ct(ct, model=model, progress=lambda f, m: progress(f"{100 * f:3.0f}% {m}"),
                        **_detect_options(args))
        write_detection_outputs(ct, det, outdir, slicer_files=not args.no_slicer_files, color_by=args.color_by)
        return len(det.nodules)

    result = run_scans(scans, args.out, read=read, detect=detect, resume=args.resume,
                       quiet=args.quiet)
    out = Path(args.out)
    print(f"{len(scans)} scan(s): {len(result.detected)} detected, {len(result.skipped)} skipped as complete "
          f"(--resume), {len(result.failed)} failed; {result.nodules} nodule(s) in the scans detected")
    print(f"wrote {out / SUMMARY_FILE} (every finding), {out / FAILURES_FILE} and one folder per scan")
    if result.failed:
        print(f"resmtnet detect: {len(result.failed)} of {len(scans)} scan(s) failed: {out / FAILURES_FILE} "
              "says why", file=sys.stderr)
    return result.exit_status
