"""The ground-glass and part-solid nodules of a phantom set, measured the way docs/phantoms.md (*Ground glass*)
reports them: one JSON line per nodule of at least 6 mm in the lung.

    python scripts/ground_glass_profile.py --seed 7 -n 20

glass_median / glass_sd: the nodule's label voxels under -300 HU (its glass); lung_around: the median of the
lung 4-7 mm outside it; edge_10_90_mm: the 10-90 % rise of the median radial profile (0.5 mm shells, glass and
lung voxels only); dense_in_label: label voxels above -300 HU (vessels and walls it keeps, a solid core).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from resmtnet.data.phantom import MIN_LUNG_SHARE, generate_phantom, phantom_seed

GLASS_TYPES = ("ground-glass", "part-solid")
DENSE_HU = -300.0


def edge_width_mm(sub: np.ndarray, dist: np.ndarray, radius: float, inside: float, outside: float) -> float:
    """The 10-90 % width of the median radial profile from ``inside`` to ``outside`` (NaN where it never falls)."""
    shells = np.arange(0.0, radius + 6.0, 0.5)
    profile = []
    for r in shells:
        ring = (dist >= r) & (dist < r + 0.5) & (sub < DENSE_HU)
        profile.append(float(np.median(sub[ring])) if ring.any() else np.nan)
    level = (np.array(profile) - outside) / (inside - outside)
    below90, below10 = np.flatnonzero(level < 0.9), np.flatnonzero(level < 0.1)
    if not len(below90) or not len(below10):
        return float("nan")
    return float(shells[below10[0]] - shells[below90[0]])


def measure(seed: int, index: int) -> list[dict]:
    ph = generate_phantom(phantom_seed(seed, index))
    hu = ph.ct.array.astype(np.float32)
    spacing = np.asarray(ph.ct.spacing, float)[::-1]  # z, y, x
    rows = []
    for k, nod in enumerate(ph.nodules):
        if nod.nodule_type not in GLASS_TYPES or nod.diameter_mm < 6 or nod.lung_share < MIN_LUNG_SHARE:
            continue
        label = ph.labels == k + 1
        idx = np.argwhere(label)
        if len(idx) < 10:
            continue
        lo, hi = np.maximum(idx.min(0) - 12, 0), idx.max(0) + 13
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        sub, own = hu[box], label[box]
        grid = np.indices(sub.shape).reshape(3, -1).T
        dist = np.sqrt((((grid - (idx.mean(0) - lo)) * spacing) ** 2).sum(1)).reshape(sub.shape)
        radius = nod.diameter_mm / 2
        glass = own & (sub < DENSE_HU)
        inside = float(np.median(sub[glass])) if glass.any() else float("nan")
        outside = float(np.median(sub[(dist > radius + 4) & (dist < radius + 7) & (sub < -500)]))
        rows.append({"phantom": index, "nodule": k, "type": nod.nodule_type, "diameter_mm": round(nod.diameter_mm, 1),
                     "slice_mm": float(ph.ct.spacing[2]), "glass_median": round(inside),
                     "glass_sd": round(float(sub[glass].std())) if glass.any() else None,
                     "lung_around": round(outside),
                     "edge_10_90_mm": edge_width_mm(sub, dist, radius, inside, outside),
                     "dense_in_label": int((own & (sub > DENSE_HU)).sum())})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7, help="the phantom set's seed (default 7: the test set)")
    ap.add_argument("-n", type=int, default=20, help="phantoms (default 20)")
    args = ap.parse_args()
    for i in range(args.n):
        for row in measure(args.seed, i):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
