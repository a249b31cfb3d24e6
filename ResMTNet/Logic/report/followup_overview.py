"""``followup.png``: each row of the follow-up table as a picture, prior | current, with the change written.

A matched pair shows the prior nodule and the current one side by side, each an axial crop through its own
centre with its outline (the detector's measurement mask, :func:`resmtnet.detect.measurement.grow_mask`). A new
nodule shows the current crop and, on the prior, the place it maps to (nothing there); a resolved one the
prior crop and the place it maps to on the current. Uncertain pairs are titled in orange with "uncertain".
Crops are axial planes of the patient in the radiological view, as in ``overview.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..detect.measurement import grow_mask
from ..detect.nodules import Nodule
from ..io.ctio import CTVolume
from ..util.atomic import atomic_write
from .followup import Pair, Registration
from .overview import CROP_PIXEL_MM, _axial_plane

MAX_ROWS = 12
COLORS = {"matched": "#4fc3f7", "new": "#ffb74d", "resolved": "#9e9e9e", "uncertain": "#ff7043"}


def change_text(pair: Pair) -> str:
    """The row's title: ``N1 12.0 → 14.1 mm · +2.1 mm · VDT 210 d`` (the current number; new and resolved said)."""
    if pair.status == "new":
        return f"N{pair.current_number} new · {pair.current_diameter_mm:.1f} mm"
    if pair.status == "resolved":
        return f"prior N{pair.prior_number} resolved · was {pair.prior_diameter_mm:.1f} mm"
    text = (f"N{pair.current_number} {pair.prior_diameter_mm:.1f} → {pair.current_diameter_mm:.1f} mm · "
            f"{pair.diameter_change_mm:+.1f} mm")
    if pair.volume_doubling_time_days is not None:
        text += f" · VDT {pair.volume_doubling_time_days:.0f} d"
    if pair.prior_number != pair.current_number:
        text += f" (prior N{pair.prior_number})"
    return text


def _outlines(ct: CTVolume, nodules: list[Nodule]) -> np.ndarray:
    """Each nodule's measurement mask on ``ct``'s grid, labelled by its number."""
    labels = np.zeros(ct.array.shape, np.uint16)
    for n in nodules:
        # grown from the diameter detection grew it from (the network's), so the outline is detection's own
        predicted = float(n.extra.get("regressed_diameter_mm", n.diameter_mm))
        box, mask, _measured = grow_mask(ct, np.asarray(n.center_lps, float), predicted)
        region = labels[box]
        region[mask & (region == 0)] = n.number
    return labels


def write_followup_overview(path: str | Path, prior_ct: CTVolume, prior: list[Nodule], current_ct: CTVolume,
                            current: list[Nodule], pairs: list[Pair], registration: Registration,
                            interval_days: float | None) -> None:
    """Write the follow-up picture (PNG) atomically: one row per table row (the first :data:`MAX_ROWS`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = pairs[:MAX_ROWS]
    prior_labels = _outlines(prior_ct, prior) if any(r.prior_number for r in rows) else None
    current_labels = _outlines(current_ct, current) if any(r.current_number for r in rows) else None
    size = {("prior", n.number): n.diameter_mm for n in prior} | {("current", n.number): n.diameter_mm
                                                                  for n in current}
    to_current = registration.transform.GetInverse()
    fig, axes = plt.subplots(max(1, len(rows)), 2, figsize=(6.4, 3.3 * max(1, len(rows))), squeeze=False,
                             facecolor="black")
    for ax in axes.ravel():
        ax.axis("off")
    if not rows:
        axes[0, 0].set_title("no nodule on either scan", color="white", fontsize=10)
    for (left, right), r in zip(axes, rows):
        half = max(20.0, 1.6 * max(r.prior_diameter_mm or 0.0, r.current_diameter_mm or 0.0))
        color = COLORS["uncertain"] if r.uncertain else COLORS[r.status]
        sides = (
            (left, prior_ct, prior_labels, r.prior_number, r.prior_center_lps or r.current_center_in_prior_lps,
             "prior"),
            (right, current_ct, current_labels, r.current_number,
             r.current_center_lps or list(to_current.TransformPoint(tuple(r.prior_center_lps))), "current"),
        )
        for ax, ct, labels, number, centre, side in sides:
            centre = np.asarray(centre, float)
            plane = _axial_plane(ct, ct.array, centre, half, nearest=False)
            ax.imshow(plane, cmap="gray", vmin=-1350, vmax=150, interpolation="bilinear")
            if number is not None and labels is not None:
                m = _axial_plane(ct, labels, centre, half, nearest=True) == number
                if m.any():
                    ax.contour(m.astype(float), levels=[0.5], colors=[color], linewidths=1.5)
                caption = f"{side} N{number} · {size[(side, number)]:.1f} mm"
            else:  # where the nodule of the other scan maps to, its size dotted
                from matplotlib.patches import Circle

                mid = (plane.shape[0] - 1) / 2
                other = r.current_diameter_mm if side == "prior" else r.prior_diameter_mm
                ax.add_patch(Circle((mid, mid), (other or 10.0) / 2 / CROP_PIXEL_MM, fill=False, color=color, lw=1,
                                    ls=":"))
                caption = f"{side}: none here"
            px = 10.0 / CROP_PIXEL_MM
            ax.plot([5, 5 + px], [plane.shape[0] - 8] * 2, color="white", lw=2)
            ax.text(5 + px / 2, plane.shape[0] - 12, "10 mm", color="white", fontsize=7, ha="center", va="bottom")
            ax.text(5, 8, caption, color="white", fontsize=8, va="top",
                    bbox={"facecolor": "black", "alpha": 0.6, "edgecolor": "none", "pad": 2})
        title = change_text(r) + (" · uncertain" if r.uncertain else "")
        left.set_title(title, color=color, fontsize=9, loc="left", x=0.0)
    interval = "interval unknown" if interval_days is None else f"{interval_days:.0f} days"
    more = f" (first {MAX_ROWS} of {len(pairs)})" if len(pairs) > MAX_ROWS else ""
    fig.suptitle(f"ResMTNet follow-up — {interval}{more} — research use only", color="white", fontsize=10)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, facecolor="black", format="png"))
    finally:
        plt.close(fig)
