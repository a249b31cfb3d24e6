"""``overview.png``: one axial crop per finding, its outline in the malignancy colour, its size, at a glance.

Crops are resampled on axial planes of the patient (L→R across, A→P down, radiological view: the
patient's right on the left of the picture), whatever the axes of the stored volume.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..detect.nodules import Detection
from ..io.ctio import CTVolume
from ..io.identity import display_names
from ..scene.colors import CONFIDENT_PROBABILITY, malignancy_color
from ..util.atomic import atomic_write

CROP_PIXEL_MM = 0.5
MAX_PANELS = 16


def _axial_plane(ct: CTVolume, array: np.ndarray, centre: np.ndarray, half_mm: float, nearest: bool) -> np.ndarray:
    """The axial square of side 2 ``half_mm`` around ``centre`` (LPS mm), resampled from ``array`` (on ct's
    grid) at CROP_PIXEL_MM. Only the part of the array the square reads is turned into an image, so a
    large CT is never copied whole."""
    n = int(round(2 * half_mm / CROP_PIXEL_MM)) + 1
    origin = np.array([centre[0] - half_mm, centre[1] - half_mm, centre[2]], float)
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    default = 0 if nearest else -1000.0
    part, start_xyz = _region(ct, array, origin, origin + np.array([(n - 1) * CROP_PIXEL_MM] * 2 + [0.0]))
    if part is None:
        return np.full((n, n), default, np.uint8 if nearest else np.float32)
    image = sitk.GetImageFromArray(part if nearest else part.astype(np.float32, copy=False))
    image.SetSpacing(ct.spacing)
    image.SetOrigin(tuple(float(v) for v in ct.index_to_world(start_xyz)))
    image.SetDirection(ct.direction)
    ref = sitk.Image([n, n, 1], image.GetPixelID())
    ref.SetSpacing((CROP_PIXEL_MM, CROP_PIXEL_MM, 1.0))
    ref.SetOrigin(tuple(float(v) for v in origin))
    out = sitk.Resample(image, ref, sitk.Transform(), interp, default, image.GetPixelID())
    return sitk.GetArrayFromImage(out)[0]


def _region(ct: CTVolume, array: np.ndarray, lo_lps: np.ndarray, hi_lps: np.ndarray
            ) -> tuple[np.ndarray | None, np.ndarray]:
    """The part of ``array`` (z, y, x, on ct's grid) that interpolation inside the LPS box lo..hi reads, with
    a voxel to spare, and the index (x, y, z) of its first voxel; None where the box misses the scan."""
    corners = np.array([[x, y, z] for x in (lo_lps[0], hi_lps[0]) for y in (lo_lps[1], hi_lps[1])
                        for z in (lo_lps[2], hi_lps[2])], float)
    ijk = ct.world_to_index(corners)
    lo = np.maximum(np.floor(ijk.min(0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(ijk.max(0)).astype(int) + 2, np.array(ct.shape_xyz))
    if np.any(hi <= lo):
        return None, lo
    return np.ascontiguousarray(array[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]), lo.astype(float)


def write_overview(path: str | Path, ct: CTVolume, detection: Detection) -> None:
    """Write the overview figure (PNG) atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodules = detection.nodules[:MAX_PANELS]
    lab = detection.labels
    cols = min(4, max(1, len(nodules)))
    rows = max(1, math.ceil(len(nodules) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.5 * rows), squeeze=False, facecolor="black")
    for ax in axes.ravel():
        ax.axis("off")
    if not nodules:
        lo = ct.index_to_world(np.zeros(3))
        hi = ct.index_to_world(np.array(ct.shape_xyz) - 1)
        centre = (lo + hi) / 2
        plane = _axial_plane(ct, ct.array, centre, 0.5 * float(np.max(np.abs(hi - lo)[:2])), nearest=False)
        axes[0, 0].imshow(plane, cmap="gray", vmin=-1350, vmax=150)
        axes[0, 0].set_title("no nodule found", color="white", fontsize=10)
    for ax, n in zip(axes.ravel(), nodules):
        centre = np.asarray(n.center_lps, float)
        half = max(20.0, 1.6 * n.diameter_mm)
        plane = _axial_plane(ct, ct.array, centre, half, nearest=False)
        ax.imshow(plane, cmap="gray", vmin=-1350, vmax=150, interpolation="bilinear")
        color = malignancy_color(n.malignancy)
        confident = n.probability >= CONFIDENT_PROBABILITY  # weaker findings: dashed outline, fainter title
        if lab is not None:
            m = _axial_plane(ct, lab, centre, half, nearest=True) == n.number
            if m.any():
                ax.contour(m.astype(float), levels=[0.5], colors=[color], linewidths=1.5,
                           linestyles="solid" if confident else "dashed")
        # scale bar: 10 mm
        px = 10.0 / CROP_PIXEL_MM
        ax.plot([5, 5 + px], [plane.shape[0] - 8] * 2, color="white", lw=2)
        ax.text(5 + px / 2, plane.shape[0] - 12, "10 mm", color="white", fontsize=7, ha="center", va="bottom")
        ax.set_title(f"{n.name} · {n.diameter_mm:.1f} mm · p {n.probability:.2f}\n"
                     f"malignant {100 * n.malignancy:.0f} % · z {centre[2]:.1f} mm",
                     color=color, fontsize=9, alpha=1.0 if confident else 0.6)
    names = display_names(ct.identity, fallback=detection.seriesuid or "CT")
    fig.suptitle(f"ResMTNet — {names.title} — {len(detection.nodules)} finding(s) — research use only",
                 color="white", fontsize=10)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, facecolor="black", format="png"))
    finally:
        plt.close(fig)
