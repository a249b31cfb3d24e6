"""Generate synthetic chest CT phantoms: volumes + ``annotations.csv`` in LUNA16 columns (LPS world mm)
plus each nodule's malignancy rating (1-5), type, margin, location and lung share (the share of it drawn in
aerated lung: under 0.5 it sits in the wall or mediastinum, and the phantom evaluation leaves it out);
optional per-nodule label masks.
Seeded and reproducible: the same ``--seed`` gives the same files.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("-n", "--count", type=int, default=1, help="number of phantoms (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the set (default 0)")
    p.add_argument("--format", default="nrrd", choices=["nrrd", "mhd", "nii.gz", "mha"], help="volume format")
    p.add_argument("--masks", action="store_true", help="also write PHANTOM.labels.FORMAT (label i = nodule i)")
    p.add_argument("--small", action="store_true", help="small, coarse phantoms (about 1.5-2 mm voxels; tests)")
    p.add_argument("--mix", default="screening", choices=["screening", "thick", "masses"],
                   help="what is drawn: the screening mix of every evaluation set (default), its nodules on 3-5 mm "
                        "slices (thick), or one or two 30-80 mm masses beside them (masses)")
    p.add_argument("--workers", type=int, default=2, help="processes (default 2)")


def run(args: argparse.Namespace) -> int:
    import time

    from tqdm import tqdm

    from ..data.phantom import write_phantom_set
    from ..util.errors import InputError

    if args.count < 1:
        raise InputError("--count must be at least 1")
    t0 = time.perf_counter()
    with tqdm(total=args.count, desc="phantoms", unit="CT", dynamic_ncols=True) as bar:
        def progress(fraction: float, message: str) -> None:
            bar.update(round(fraction * args.count) - bar.n)

        paths = write_phantom_set(args.out, args.count, args.seed, masks=args.masks, fmt=args.format,
                                  small=args.small, workers=max(1, args.workers), progress=progress, mix=args.mix)
    print(f"{len(paths)} phantom(s) in {args.out} ({time.perf_counter() - t0:.1f} s); annotations: "
          f"{args.out}/annotations.csv")
    return 0
