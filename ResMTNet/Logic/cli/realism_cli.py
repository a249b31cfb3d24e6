"""Compare phantoms with a real chest CT: the lungs' HU histogram, lung volume fraction and vessel
density side by side, in realism.json and a picture (realism.png), with the numbers printed.

The phantoms are either generated here (--phantoms N --seed S) or read from a folder written by
`resmtnet phantom` (--phantom-dir DIR, nodules left out of the vessel density through its labels or
annotations.csv). Nodules of the real scan are left out through an annotations.csv found beside it
(or given with --annotations).
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--real", required=True, metavar="CT",
                   help="the real CT: a DICOM series folder or a volume file (.nrrd, .nii.gz, .mha, .mhd)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--phantoms", type=int, default=2, metavar="N",
                        help="generate N phantoms to compare (default 2)")
    source.add_argument("--phantom-dir", metavar="DIR", help="compare the phantoms in DIR instead")
    p.add_argument("--seed", type=int, default=2026, help="seed of the generated phantoms (default 2026)")
    p.add_argument("--small", action="store_true", help="generate small, coarse phantoms (fast; for tests)")
    p.add_argument("--annotations", metavar="CSV",
                   help="LUNA16-style annotations of the real scan (default: annotations.csv beside it)")
    p.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="folder for realism.json and realism.png")


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from ..evaluate.realism import compare_realism, format_report

    def progress(fraction: float, message: str) -> None:
        print(f"[{100 * fraction:3.0f}%] {message}", file=sys.stderr, flush=True)

    report = compare_realism(args.real, args.out, phantoms=args.phantoms, seed=args.seed,
                             phantom_dir=args.phantom_dir, small=args.small, annotations=args.annotations,
                             progress=progress)
    print(format_report(report))
    out = Path(args.out)
    print(f"\nwrote {out / 'realism.json'} and {out / 'realism.png'}")
    return 0
