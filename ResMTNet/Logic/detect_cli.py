"""Find pulmonary nodules in a CT (a volume file SimpleITK reads, or a DICOM series folder).

Writes to OUTDIR, whole or not at all: nodules.csv (LUNA16 columns, LPS mm, + diameter, malignancy,
volume, Lung-RADS size category if solid), report.json, overview.png, and the Slicer files nodules.mrk.json,
nodules.seg.nrrd and scene.mrb (one click in Slicer) with views.png, the scene as Slicer's views draw it.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="CT volume (.nrrd, .nii[.gz], .mhd, .mha) or DICOM series folder")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--model", help="checkpoint file (default: the shipped weights)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threshold", type=float, help="finding probability threshold (default: the model's)")
    p.add_argument("--max-findings", type=int, help="keep at most N findings (most probable first)")
    p.add_argument("--min-diameter", type=float, default=0.0, help="drop findings smaller than this (mm)")
    p.add_argument("--color-by", default="malignancy", choices=["malignancy", "size"],
                   help="colour of fiducials and segments in the Slicer files")
    p.add_argument("--no-slicer-files", action="store_true", help="skip nodules.mrk.json, .seg.nrrd and .mrb")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="test-time augmentation: also run the network on the scan's mirror images and average "
                        "(default; the passes the model's threshold was calibrated with: all seven mirror images "
                        "for the shipped weights, about 8x the network time, fewer false findings); --no-tta is "
                        "the fast path")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def run(args: argparse.Namespace) -> int:
    import importlib.util

    from tqdm import tqdm

    from .ctio import read_ct
    from .errors import InputError, ResMTNetError
    from .outputs import write_detection_outputs
    from .pipeline import detect_ct

    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise InputError(f"--threshold {args.threshold}: must lie in [0, 1]")
    if args.max_findings is not None and args.max_findings < 0:
        raise InputError("--max-findings must be >= 0")
    if not args.no_slicer_files and importlib.util.find_spec("slicer") is None:
        # say so before minutes of detection, not after: the Slicer files need Slicer's MRML (slicer-core)
        raise ResMTNetError("the Slicer files (.mrk.json, .seg.nrrd, .mrb) need slicer-core, which is not "
                            "installed here: install it (requirements.txt) or pass --no-slicer-files")
    ct = read_ct(args.input)
    bar = None if args.quiet else tqdm(total=100, desc="detect", unit="%", dynamic_ncols=True,
                                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")

    def progress(fraction: float, message: str) -> None:
        if bar is not None:
            bar.n = round(100 * fraction)
            bar.set_postfix_str(message)

    try:
        det = detect_ct(ct, model=args.model, device=args.device, threshold=args.threshold,
                        min_diameter_mm=args.min_diameter, max_findings=args.max_findings, progress=progress,
                        tta=args.tta)
    finally:
        if bar is not None:
            bar.close()
    files = write_detection_outputs(ct, det, args.out, slicer_files=not args.no_slicer_files,
                                    color_by=args.color_by)
    print(f"{len(det.nodules)} nodule(s) in {ct.seriesuid or args.input} "
          f"({det.info['timings_s']['total']:.1f} s on {det.info['device']})")
    for n in det.nodules:
        x, y, z = n.center_lps
        print(f"  N{n.number}: ({x:.1f}, {y:.1f}, {z:.1f}) LPS mm  p={n.probability:.2f}  {n.diameter_mm:.1f} mm  "
              f"malignancy {100 * n.malignancy:.0f}%  Lung-RADS {n.lung_rads} by size if solid", file=sys.stdout)
    print("wrote " + ", ".join(sorted(files)) + f" to {args.out}")
    return 0
