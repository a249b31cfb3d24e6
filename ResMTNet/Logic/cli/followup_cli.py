"""Compare a current scan's nodules with a prior scan's: registration, matching, growth, doubling time, Lung-RADS.

PRIOR and CURRENT are each a CT (volume file or DICOM series folder: detection runs on it) or a folder of
``resmtnet detect`` results (its report.json names the CT it was made from, which is read again for the
registration). Writes to OUTDIR, as one set: followup.csv (one row per pair, new or resolved nodule) and
followup.json (the same, the dates and the registration) and followup.png (each pair side by side, prior |
current, with its change). Study dates come from the DICOM headers, or from
--prior-date / --current-date (which win); without both, no volume doubling time.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
from pathlib import Path

from .cli import add_device_option

CSV_FILE = "followup.csv"
JSON_FILE = "followup.json"
PICTURE_FILE = "followup.png"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prior", metavar="PRIOR", help="the earlier scan, or a folder of its detect results")
    p.add_argument("current", metavar="CURRENT", help="the later scan, or a folder of its detect results")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--prior-date", type=_date, help="the prior study's date, YYYY-MM-DD (default: its DICOM StudyDate)")
    p.add_argument("--current-date", type=_date, help="the current study's date, YYYY-MM-DD (default: DICOM)")
    p.add_argument("--model", help="checkpoint file for scans given as CTs (default: the shipped weights)")
    add_device_option(p)
    p.add_argument("--threshold", type=float, help="finding probability threshold (default: the model's)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="test-time augmentation for scans given as CTs (as detect)")


def _date(text: str) -> _dt.date:
    try:
        return _dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD") from None


def _study_date(ct) -> _dt.date | None:
    """The StudyDate of the DICOM series ``ct`` was read from (None for a volume file or no date)."""
    from ..io.identity import parse_dicom_date

    return parse_dicom_date(ct.identity.get("study_date"))


def _side(path: str, args: argparse.Namespace, model_holder: dict):
    """(CT, nodules, where they came from) of one side: a detect results folder, or a scan detected here."""
    from ..detect.nodules import Nodule
    from ..io.ctio import read_ct
    from ..io.fileset import read_set
    from ..util.errors import InputError

    p = Path(path)
    manifest = read_set(p) if p.is_dir() else None
    if manifest is not None and (p / "report.json").is_file():
        report = json.loads((p / "report.json").read_text())
        source = manifest.get("input") or report.get("input", {}).get("path", "")  # the manifest's is resolved
        if not source or not Path(source).exists():
            raise InputError(f"{p}: its report.json names the CT {source or '(none)'}, which is not there: "
                             "the registration needs it")
        return read_ct(source), [Nodule.from_dict(d) for d in report["nodules"]], f"detect results in {p}"
    from ..detect.pipeline import detect_ct
    from ..model.model_io import load_model
    from ..util.runtime import pick_device

    ct = read_ct(p)
    if "model" not in model_holder:
        model_holder["model"] = load_model(args.model, pick_device(args.device))
    det = detect_ct(ct, model=model_holder["model"], device=args.device, threshold=args.threshold, tta=args.tta)
    return ct, det.nodules, f"detected in {p}"


def run(args: argparse.Namespace) -> int:
    from .. import __version__
    from ..detect.preflight import check_output_dir
    from ..io.fileset import StagedSet
    from ..report.followup import CSV_COLUMNS, compare, csv_rows, register_scans, study_interval_days
    from ..report.outputs import describe_output_error
    from ..util.errors import InputError, OutputError

    check_output_dir(args.out)
    if args.prior_date and args.current_date and args.current_date < args.prior_date:
        raise InputError(f"--current-date {args.current_date} lies before --prior-date {args.prior_date}")
    models: dict = {}
    prior_ct, prior, prior_from = _side(args.prior, args, models)
    current_ct, current, current_from = _side(args.current, args, models)
    prior_date = args.prior_date or _study_date(prior_ct)
    current_date = args.current_date or _study_date(current_ct)
    days = study_interval_days(prior_date, current_date)
    if days is not None and days < 0:
        raise InputError(f"{args.current}: its study date {current_date} lies before the prior's, {prior_date}: "
                         "swap PRIOR and CURRENT, or give the dates")
    registration = register_scans(prior_ct, current_ct)
    pairs = compare(prior, current, registration, days)
    result = {
        "resmtnet_version": __version__,
        "prior": {"input": prior_ct.source, "seriesuid": prior_ct.seriesuid, "nodules": prior_from,
                  "study_date": prior_date.isoformat() if prior_date else None},
        "current": {"input": current_ct.source, "seriesuid": current_ct.seriesuid, "nodules": current_from,
                    "study_date": current_date.isoformat() if current_date else None},
        "interval_days": days,
        "registration": registration.describe(),
        "coordinate_system": "LPS world mm; current_center_in_prior_lps: the current centre mapped into the prior",
        "lung_rads_note": "Lung-RADS v2022 follow-up categories by the solid-nodule rules (growth rules for "
                          "other types are not applied); research use only",
        "pairs": [r.to_dict() for r in pairs],
    }
    out = Path(args.out)
    try:
        with StagedSet(out, replaces=(CSV_FILE, JSON_FILE, PICTURE_FILE)) as stage:
            assert stage.path is not None
            import csv

            with open(stage.path / CSV_FILE, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(CSV_COLUMNS)
                w.writerows(csv_rows(pairs))
            (stage.path / JSON_FILE).write_text(json.dumps(result, indent=1))
            from ..report.followup_overview import write_followup_overview

            write_followup_overview(stage.path / PICTURE_FILE, prior_ct, prior, current_ct, current, pairs,
                                    registration, days)
            stage.publish({"prior": str(Path(args.prior).resolve()), "current": str(Path(args.current).resolve())})
    except OSError as e:
        raise OutputError(describe_output_error(out, e)) from e
    counts = {s: sum(r.status == s for r in pairs) for s in ("matched", "new", "resolved")}
    print(f"{counts['matched']} matched ({sum(r.uncertain for r in pairs if r.status == 'matched')} uncertain), "
          f"{counts['new']} new, {counts['resolved']} resolved; interval "
          f"{'unknown (no dates)' if days is None else f'{days:.0f} days'}")
    for r in pairs:
        what = {"matched": f"N{r.prior_number} -> N{r.current_number}", "new": f"new N{r.current_number}",
                "resolved": f"resolved N{r.prior_number}"}[r.status]
        size = (f"{r.prior_diameter_mm:.1f} -> {r.current_diameter_mm:.1f} mm" if r.status == "matched"
                else f"{(r.current_diameter_mm or r.prior_diameter_mm):.1f} mm")
        vdt = f", VDT {r.volume_doubling_time_days:.0f} d" if r.volume_doubling_time_days else ""
        flag = "  UNCERTAIN: " + "; ".join(r.reasons) if r.uncertain else ""
        print(f"  {what}: {size}{vdt}, Lung-RADS {r.lung_rads or '-'}{flag}")
    print(f"wrote {CSV_FILE}, {JSON_FILE}, {PICTURE_FILE} to {out}")
    return 0
