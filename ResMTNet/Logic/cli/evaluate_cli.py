"""Score nodule predictions by the LUNA16 FROC protocol: CPM with a bootstrap 95% interval, the
sensitivity at 1/8 ... 8 false positives per scan, malignancy AUC and diameter error.

PREDICTIONS.csv has LUNA16 submission columns (seriesuid, coordX, coordY, coordZ, probability; LPS mm),
optionally diameter_mm and malignancy (as `resmtnet detect` writes them). ANNOTATIONS.csv has LUNA16
columns (seriesuid, coordX, coordY, coordZ, diameter_mm), optionally malignancy ratings 1-5.
PREDICTIONS may also be a folder of `resmtnet detect` outputs: every nodules.csv below it is read.
Scans counted: those in --series-list (LUNA16's seriesuids.csv), or with --all-series-from-annotations
those named in the annotations (and excluded marks); by default those and the scans named in the
predictions. Scans without any finding still count. Writes froc.json and froc.png to OUTDIR.

With --phantoms N instead of the two files: generates N fresh phantoms (--phantom-seed, never one used
for training), runs the detector on each (--model, default the shipped weights) and scores it, nodules
under --min-diameter counting as excluded marks.

With --real DIR instead: detects each real CT case of DIR (a folder of case folders, one case folder, or a
text file naming case folders) and judges the findings against the case's own lesions (annotations.csv, an
RT structure set's contours; see resmtnet.evaluate.real_eval): per lesion the rank, distance and size error of the
finding that hits it, per scan the findings at or above the threshold that hit nothing. Writes real.json and
real.md (the table) to OUTDIR.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.phantom import MIN_LUNG_SHARE
from ..evaluate.phantom_eval import KIND_COLUMNS, PHANTOM_MIN_DIAMETER_MM
from .cli import add_device_option


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("predictions", metavar="PREDICTIONS.csv", nargs="?",
                        help="detector findings (LUNA16 submission CSV), or a folder: every nodules.csv "
                             "below it (resmtnet detect output folders)")
    parser.add_argument("annotations", metavar="ANNOTATIONS.csv", nargs="?",
                        help="reference nodules (LUNA16 annotations.csv)")
    parser.add_argument("--excluded", metavar="CSV",
                        help="irrelevant marks (LUNA16 annotations_excluded.csv): findings on them ignored")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--series-list", metavar="CSV",
                       help="the scans to score, one seriesuid a line (LUNA16 seriesuids.csv)")
    which.add_argument("--all-series-from-annotations", action="store_true",
                       help="score exactly the scans named in the annotations (and excluded marks)")
    parser.add_argument("-o", "--outdir", metavar="OUTDIR",
                        help="where froc.json and froc.png go (default: 'evaluation' beside PREDICTIONS.csv)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="bootstrap draws over scans for the 95%% intervals (0: none; default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap random seed (default 0)")
    ph = parser.add_argument_group("end to end on fresh phantoms")
    ph.add_argument("--phantoms", type=int, metavar="N", help="generate N phantoms, detect, and score")
    ph.add_argument("--phantom-seed", type=int, default=7, help="seed of that phantom set (default 7)")
    ph.add_argument("--model", help="checkpoint (default: the shipped weights; also for --real)")
    add_device_option(ph)
    ph.add_argument("--min-diameter", type=float, default=PHANTOM_MIN_DIAMETER_MM,
                    help="nodules below this (mm) are excluded marks (default 4)")
    ph.add_argument("--min-lung-share", type=float, default=MIN_LUNG_SHARE, metavar="S",
                    help="nodules with less of themselves in the lung than this (the phantom's lung_share: drawn "
                         "into the chest wall or mediastinum) are excluded marks (default 0.5; 0 scores them all)")
    ph.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                    help="detect with (default) or without test-time augmentation (see resmtnet detect)")
    real = parser.add_argument_group("end to end on real CT cases")
    real.add_argument("--real", metavar="DIR", help="a folder of cases (each: a CT in dicom/ or one volume file, and "
                      "annotations.csv), one case folder, or a text file naming case folders")
    real.add_argument("--truth", metavar="DIR", help="a folder of truth files CASE.csv (LUNA16 rows), used instead "
                      "of a case folder's own annotations.csv")


def run(args: argparse.Namespace) -> int:
    from ..evaluate import froc
    from ..io.luna16_csv import read_annotations
    from ..util.errors import InputError
    from .cli import print_warnings

    if args.bootstrap < 0:
        raise InputError(f"--bootstrap must be 0 or more, not {args.bootstrap}")
    if args.real is not None:
        if args.phantoms is not None or args.predictions or args.annotations:
            raise InputError("--real scores its own detections: give it alone, without PREDICTIONS.csv, "
                             "ANNOTATIONS.csv or --phantoms")
        return _run_on_real_cases(args)
    if args.truth is not None:
        raise InputError("--truth goes with --real")
    if args.phantoms is not None:
        return _run_on_phantoms(args)
    if not args.predictions or not args.annotations:
        raise InputError("give PREDICTIONS.csv and ANNOTATIONS.csv, or --phantoms N")
    findings = froc.read_predictions(args.predictions)
    marks = read_annotations(args.annotations)
    if args.excluded:
        marks += read_annotations(args.excluded, excluded=True)
    if args.series_list:
        series = froc.read_series_list(args.series_list)
        series_from = f"series list {args.series_list}"
    elif args.all_series_from_annotations:
        series = froc.default_series(marks, findings, include_findings=False)
        series_from = "annotations"
    else:
        series = froc.default_series(marks, findings, include_findings=True)
        series_from = "annotations and predictions"
    notes = _unannotated_note(froc.unannotated_series(findings, marks, series), args.annotations)
    print_warnings(notes)
    result = froc.evaluate(findings, marks, series, n_bootstrap=args.bootstrap, seed=args.seed)

    outdir = Path(args.outdir) if args.outdir else Path(args.predictions).resolve().parent / "evaluation"
    extra = {"inputs": {"predictions": str(args.predictions), "annotations": str(args.annotations),
                        "excluded": args.excluded, "series_from": series_from}, "warnings": notes}
    json_path, png_path = froc.write_results(result, outdir, extra=extra)

    print(format_summary(result, series_from))
    print(f"wrote {json_path} and {png_path}")
    return 0


def _unannotated_note(unknown: list[str], annotations: str) -> list[str]:
    """One line about scored prediction scans that the annotations never name (none: no line)."""
    if not unknown:
        return []
    shown = ", ".join(unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
    return [f"{len(unknown)} scan(s) of the predictions have no row in {annotations} ({shown}): scored as scans "
            "without nodules, every finding on them a false positive; check that both files are about the same scans"]


def _run_on_phantoms(args: argparse.Namespace) -> int:
    from ..detect.preflight import check_number
    from ..evaluate import froc
    from ..evaluate.phantom_eval import count_outside_lung, evaluate_on_phantoms, sensitivity_by_kind
    from ..model.model_io import load_model
    from ..util.errors import InputError

    if args.phantoms < 1:
        raise InputError("--phantoms must be at least 1")
    check_number("--min-diameter", args.min_diameter, low=0.0)
    check_number("--min-lung-share", args.min_lung_share, low=0.0, high=1.0)
    outdir = Path(args.outdir or f"evaluation-phantoms-s{args.phantom_seed}")
    model = load_model(args.model)
    detections: dict[str, list] = {}
    result = evaluate_on_phantoms(outdir, args.phantoms, args.phantom_seed, model=model, device=args.device,
                                  min_diameter_mm=args.min_diameter, n_bootstrap=args.bootstrap, tta=args.tta,
                                  progress=lambda m: print(m, flush=True), min_lung_share=args.min_lung_share,
                                  detections=detections)
    annotations = outdir / "phantoms" / "annotations.csv"
    outside = count_outside_lung(annotations, args.min_diameter, args.min_lung_share)
    extra = {"inputs": {"phantoms": args.phantoms, "phantom_seed": args.phantom_seed,
                        "model": args.model or "shipped", "min_diameter_mm": args.min_diameter,
                        "min_lung_share": args.min_lung_share, "excluded_outside_lung": outside,
                        "test_time_augmentation": args.tta, "tta_passes": len(model.tta_flips) if args.tta else 1}}
    by_kind = sensitivity_by_kind(result)
    extra["by_kind"] = by_kind
    characterised = None
    if model.config.characterisation_heads:
        from ..evaluate.characterisation import score_characterisation

        characterised = score_characterisation(result, detections, model.threshold)
        extra["characterisation"] = characterised
    json_path, png_path = froc.write_results(result, outdir, extra=extra)
    print(format_summary(result, f"{args.phantoms} phantoms, seed {args.phantom_seed}; nodules >= "
                                 f"{args.min_diameter:g} mm scored, smaller ones excluded, and {outside} drawn "
                                 f"mostly outside the lungs (lung_share < {args.min_lung_share:g})"))
    print(format_by_kind(by_kind))
    if characterised is not None:
        from ..evaluate.characterisation import format_characterisation

        print(format_characterisation(characterised))
    print(f"wrote {json_path} and {png_path}")
    return 0


def _run_on_real_cases(args: argparse.Namespace) -> int:
    from ..evaluate.real_eval import evaluate_cases, find_cases, format_table, write_results
    from ..model.model_io import load_model

    cases = find_cases(args.real, args.truth)
    outdir = Path(args.outdir or "real-evaluation")
    model = load_model(args.model)  # detect_ct moves it to the device
    results = evaluate_cases(cases, model=model, device=args.device, tta=args.tta,
                             progress=lambda m: print(m, flush=True))
    extra = {"inputs": {"real": str(args.real), "truth": args.truth, "model": args.model or "shipped",
                        "threshold": model.threshold, "test_time_augmentation": args.tta,
                        "tta_passes": len(model.tta_flips) if args.tta else 1},
             "hit": "a finding hits a lesion when its centre lies within the lesion's radius"}
    json_path, md_path = write_results(results, outdir, extra)
    print(format_table(results))
    print(f"wrote {json_path} and {md_path}")
    return 0


def format_summary(result, series_from: str = "") -> str:
    """The lines `resmtnet evaluate` prints."""
    d = result.to_dict()
    c = d["counts"]
    lines = [f"scans: {c['scans']}" + (f" (from {series_from})" if series_from else "")
             + f"   nodules: {c['nodules']}   detected: {c['detected_nodules']}   "
             f"false positives: {c['false_positives']}   ignored (excluded marks): "
             f"{c['ignored_on_excluded_marks']}   duplicate hits ignored: {c['duplicate_hits_ignored']}"]
    if c["findings_outside_series_list"]:
        lines.append(f"note: {c['findings_outside_series_list']} finding(s) on scans outside the series list "
                     "were not scored")
    cpm = f"CPM: {result.cpm:.4f}"
    if result.cpm_ci95 is not None:
        lo, hi = result.cpm_ci95
        cpm += (f"  (95% CI {lo:.4f}-{hi:.4f}, {result.bootstrap_used} bootstrap draws, "
                f"seed {result.bootstrap_seed})")
    lines.append(cpm)
    labels = ["1/8", "1/4", "1/2", "1", "2", "4", "8"]
    for i, (rate, s) in enumerate(zip(result.fp_rates, result.sensitivities, strict=True)):
        label = labels[i] if len(result.fp_rates) == 7 else f"{rate:g}"
        line = f"  sensitivity at {label:>3} FP/scan: {s:.4f}"
        if result.sensitivity_ci95 is not None:
            lo, hi = result.sensitivity_ci95[i]
            line += f"  ({lo:.4f}-{hi:.4f})"
        lines.append(line)
    auc = d["malignancy_auc"]
    if auc.get("auc") is None:
        lines.append(f"malignancy AUC: n/a ({auc['malignant']} malignant and {auc['benign']} benign detected "
                     "nodules with a predicted malignancy)")
    else:
        lines.append(f"malignancy AUC: {auc['auc']:.4f} ({auc['malignant']} malignant vs {auc['benign']} "
                     f"benign, {auc['uncertain_left_out']} rated 3 left out)")
    mae = d["diameter_error"]
    if mae.get("mae_mm") is None:
        lines.append("diameter MAE: n/a (no detected nodule with a predicted diameter)")
    else:
        lines.append(f"diameter MAE: {mae['mae_mm']:.2f} mm over {mae['n']} detected nodules "
                     f"(mean signed error {mae['mean_signed_error_mm']:+.2f} mm)")
    return "\n".join(lines)


def format_by_kind(by_kind: dict) -> str:
    """The lines `resmtnet evaluate --phantoms` prints about which kinds of nodule its 2 FP/scan point finds."""
    thr = by_kind["threshold"]
    at = "no finding qualifies" if thr is None else f"probability >= {thr:.3f}"
    lines = [f"found at {by_kind['fp_rate']:g} FP/scan ({at}):"]
    for column in KIND_COLUMNS:
        cells = ", ".join(f"{kind} {c['found']}/{c['nodules']}" for kind, c in sorted(by_kind[column].items()))
        lines.append(f"  by {column.replace('_', ' ')}: {cells}")
    return "\n".join(lines)
