"""How close are the phantoms to a real chest CT? Numbers and a picture a person can judge.

For each scan (the real one and every phantom) the same lung mask (:mod:`.lungmask`) is computed and
these are measured inside it:

- the HU histogram of the lungs (-1100 to +200 HU, 10 HU bins, as a density), its median and quartiles;
- the lung volume fraction: lung volume / body volume, both over the slices that hold lung (so that how
  much neck or abdomen a scan covers does not count);
- the vessel density: the fraction of lung voxels above -500 HU, nodules excluded where they are known
  (a phantom's labels; annotations.csv rows for the real scan, as spheres of their diameter + 2 mm).

:func:`compare_realism` puts the phantoms beside the real scan, writes ``realism.json`` and
``realism.png`` (histograms overlaid, bar charts, and an axial slice of each scan with its lung outline).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..detect.lungmask import in_field, segment_chest
from ..io.ctio import VOLUME_SUFFIXES, CTVolume, read_ct
from ..io.luna16_csv import read_annotations
from ..util.errors import InputError

HIST_EDGES = np.arange(-1100.0, 200.0 + 1e-6, 10.0)
VESSEL_HU = -500.0
NODULE_MARGIN_MM = 2.0
#: Acceptance of issue 2: the phantoms' lung HU median within this many HU of the real scan's.
MEDIAN_TOLERANCE_HU = 60.0
WINDOW = (-1200.0, 300.0)  # lung-ish window for the slice views


@dataclass
class ScanStats:
    """What the realism check measures in one scan."""

    name: str
    source: str
    shape_zyx: list[int]
    spacing_xyz: list[float]
    lung_litres: float
    body_litres_lung_slab: float
    lung_fraction: float
    lung_hu_median: float
    lung_hu_q25: float
    lung_hu_q75: float
    lung_hu_mean: float
    vessel_density: float
    nodule_voxels_excluded: int
    histogram: list[float] = field(repr=False)  # density per HU over HIST_EDGES bins

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("histogram")
        return d


@dataclass
class _ScanView:
    """An axial slice through the lungs for the picture."""

    name: str
    image: np.ndarray
    lungs: np.ndarray
    aspect: float


def scan_stats(ct: CTVolume, name: str, *, nodules: np.ndarray | None = None) -> tuple[ScanStats, _ScanView]:
    """Measure one scan. ``nodules``: a boolean (z, y, x) mask of known nodules to leave out of the
    vessel density (they are dense lung voxels that are not vessels)."""
    a = ct.array
    masks = segment_chest(a, ct.spacing, direction=ct.direction)
    field_ = in_field(a)
    lungs = masks.upsample(masks.lungs) & field_
    body = masks.upsample(masks.body) & field_
    voxel_litres = float(np.prod(ct.spacing)) / 1e6
    slab = lungs.any(axis=(1, 2))
    lung_vox = int(lungs.sum())
    body_vox = int(body[slab].sum())
    hu = a[lungs]
    q25, median, q75 = (float(v) for v in np.percentile(hu, [25, 50, 75]))
    counts, _ = np.histogram(hu, bins=HIST_EDGES)
    density = counts / max(counts.sum(), 1) / np.diff(HIST_EDGES)
    excluded = 0
    vessel_pool = lungs
    if nodules is not None and nodules.any():
        grown = _grow(nodules, ct.spacing, NODULE_MARGIN_MM)
        excluded = int((lungs & grown).sum())
        vessel_pool = lungs & ~grown
    vessel_density = float((a[vessel_pool] > VESSEL_HU).mean()) if vessel_pool.any() else 0.0
    stats = ScanStats(
        name=name, source=ct.source, shape_zyx=list(a.shape), spacing_xyz=[float(s) for s in ct.spacing],
        lung_litres=lung_vox * voxel_litres, body_litres_lung_slab=body_vox * voxel_litres,
        lung_fraction=lung_vox / max(body_vox, 1), lung_hu_median=median, lung_hu_q25=q25, lung_hu_q75=q75,
        lung_hu_mean=float(hu.mean()), vessel_density=vessel_density, nodule_voxels_excluded=excluded,
        histogram=[float(v) for v in density])
    return stats, _view(ct, lungs, name)


def _grow(mask: np.ndarray, spacing_xyz, margin_mm: float) -> np.ndarray:
    radius = [max(1, int(round(margin_mm / s))) for s in reversed(tuple(spacing_xyz))]
    box = tuple(slice(max(int(b.start) - r, 0), int(b.stop) + r) for b, r in
                zip(ndimage.find_objects(mask.astype(np.uint8))[0], radius, strict=True))
    out = np.zeros_like(mask)
    zz, yy, xx = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    ball = (zz / radius[0]) ** 2 + (yy / radius[1]) ** 2 + (xx / radius[2]) ** 2 <= 1.0
    out[box] = ndimage.binary_dilation(mask[box], structure=ball)
    return out


def _view(ct: CTVolume, lungs: np.ndarray, name: str) -> _ScanView:
    z = int(np.argmax(lungs.sum(axis=(1, 2))))  # the slice with the most lung
    image = ct.array[z]
    m = lungs[z]
    # show it the way a radiologist does: patient's right on the image's left, anterior up
    d = ct.direction_matrix
    if d[0, 0] < 0:
        image, m = image[:, ::-1], m[:, ::-1]
    if d[1, 1] < 0:
        image, m = image[::-1], m[::-1]
    return _ScanView(name=name, image=np.ascontiguousarray(image), lungs=np.ascontiguousarray(m),
                     aspect=ct.spacing[1] / ct.spacing[0])


def nodules_from_annotations(ct: CTVolume, csv_path: str | Path) -> np.ndarray | None:
    """Spheres (the annotated diameter) around the LUNA16 annotations in ``csv_path`` that belong to ``ct``
    (by seriesuid, or by the volume file's stem)."""
    ids = (ct.seriesuid, Path(ct.source).name.split(".")[0])
    marks = [m for m in read_annotations(csv_path) if m.seriesuid in ids]
    if not marks:
        return None
    mask = np.zeros(ct.array.shape, dtype=bool)
    sp = np.asarray(ct.spacing)
    for mark in marks:
        centre = np.asarray(mark.center_lps, dtype=np.float64)
        r_mm = mark.diameter_mm / 2.0
        c = ct.world_to_index(centre)
        lo = np.maximum(np.floor(c - r_mm / sp).astype(int), 0)
        hi = np.minimum(np.ceil(c + r_mm / sp).astype(int) + 1, ct.shape_xyz)
        if np.any(hi <= lo):
            continue
        idx = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"), -1)
        world = ct.index_to_world(idx.reshape(-1, 3).astype(np.float64))
        inside = (np.linalg.norm(world - centre, axis=1) <= r_mm).reshape(idx.shape[:3])  # x, y, z order
        mask[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] |= inside.transpose(2, 1, 0)
    return mask


def _find_annotations(path: Path) -> Path | None:
    """annotations.csv beside a volume file, or in/above a DICOM folder (as in ../shared/data)."""
    for folder in ([path, path.parent] if path.is_dir() else [path.parent]):
        candidate = folder / "annotations.csv"
        if candidate.is_file():
            return candidate
    return None


# ----------------------------------------------------------------------------------------------------------
# Phantom sources


def generated_phantom_stats(n: int, seed: int, *, small: bool = False, progress=None
                            ) -> list[tuple[ScanStats, _ScanView]]:
    from ..data.phantom import generate_phantom, phantom_seed

    out = []
    for i in range(n):
        if progress:
            progress(i / n, f"phantom {i + 1}/{n}: generating")
        ph = generate_phantom(phantom_seed(seed, i), small=small)
        ph.ct.source = f"generated: seed {seed}, index {i}{' (small)' if small else ''}"
        out.append(scan_stats(ph.ct, f"phantom-s{seed}-{i:04d}", nodules=ph.labels > 0))
    return out


def phantom_dir_stats(folder: str | Path, *, limit: int | None = None, progress=None
                      ) -> list[tuple[ScanStats, _ScanView]]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such phantom folder")
    volumes = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES)
                     and ".labels." not in p.name and ".mask" not in p.name and not p.name.startswith("."))
    if not volumes:
        raise InputError(f"{folder}: holds no volume files ({', '.join(VOLUME_SUFFIXES)})")
    volumes = volumes[:limit] if limit else volumes
    annotations = folder / "annotations.csv"
    out = []
    for i, path in enumerate(volumes):
        if progress:
            progress(i / len(volumes), f"phantom {i + 1}/{len(volumes)}: {path.name}")
        ct = read_ct(path)
        nodules = _label_file_mask(path) if _label_file(path) else None
        if nodules is None and annotations.is_file():
            nodules = nodules_from_annotations(ct, annotations)
        out.append(scan_stats(ct, ct.seriesuid or path.name, nodules=nodules))
    return out


def _label_file(path: Path) -> Path | None:
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if path.name.lower().endswith(suffix):
            candidate = path.with_name(path.name[: -len(suffix)] + ".labels" + suffix)
            return candidate if candidate.is_file() else None
    return None


def _label_file_mask(path: Path) -> np.ndarray | None:
    lab = read_ct(_label_file(path), hu=False)
    return lab.array > 0


# ----------------------------------------------------------------------------------------------------------
# The comparison


def compare_realism(real: str | Path, outdir: str | Path, *, phantoms: int = 2, seed: int = 2026,
                    phantom_dir: str | Path | None = None, small: bool = False,
                    annotations: str | Path | None = None, progress=None) -> dict:
    """Measure the real scan and the phantoms, write ``realism.json`` and ``realism.png`` to ``outdir``
    (whole or not at all) and return the report."""
    real = Path(real)
    ct = read_ct(real)
    ann = Path(annotations) if annotations else _find_annotations(real)
    if progress:
        progress(0.0, f"real scan: {real}")
    real_nodules = nodules_from_annotations(ct, ann) if ann else None
    real_stats, real_view = scan_stats(ct, ct.seriesuid or real.name, nodules=real_nodules)
    del ct

    def sub(fraction: float, message: str) -> None:
        if progress:
            progress(0.2 + 0.7 * fraction, message)

    if phantom_dir is not None:
        measured = phantom_dir_stats(phantom_dir, progress=sub)
    else:
        if phantoms < 1:
            raise InputError("--phantoms must be at least 1")
        measured = generated_phantom_stats(phantoms, seed, small=small, progress=sub)
    report = _report(real_stats, [s for s, _ in measured], ann)
    if progress:
        progress(0.95, "writing realism.json and realism.png")
    _write_outputs(Path(outdir), report, real_stats, measured, real_view)
    return report


def _report(real: ScanStats, phantoms: list[ScanStats], annotations: Path | None) -> dict:
    keys = ["lung_hu_median", "lung_hu_q25", "lung_hu_q75", "lung_hu_mean", "lung_fraction", "vessel_density",
            "lung_litres"]
    mean = {k: float(np.mean([getattr(p, k) for p in phantoms])) for k in keys}
    diff = {k: mean[k] - getattr(real, k) for k in keys}
    worst = max(abs(p.lung_hu_median - real.lung_hu_median) for p in phantoms)
    return {
        "real": real.summary() | {"nodule_annotations": str(annotations) if annotations else None},
        "phantoms": [p.summary() for p in phantoms],
        "phantom_mean": mean,
        "difference_phantom_mean_minus_real": diff,
        "lung_hu_median_difference": diff["lung_hu_median"],
        "lung_hu_median_worst_abs_difference": worst,
        "acceptance": {
            "lung_hu_median_tolerance_hu": MEDIAN_TOLERANCE_HU,
            "lung_hu_median_within_tolerance": bool(worst <= MEDIAN_TOLERANCE_HU),
        },
        "histogram_edges_hu": [float(e) for e in HIST_EDGES],
        "histograms": {"real": real.histogram, **{p.name: p.histogram for p in phantoms}},
        "definitions": {
            "lung_mask": "resmtnet.detect.lungmask on every scan (the same algorithm for real and phantoms)",
            "lung_fraction": "lung volume / body volume, over the slices that hold lung",
            "vessel_density": f"fraction of lung voxels above {VESSEL_HU:g} HU, known nodules (grown by "
                              f"{NODULE_MARGIN_MM:g} mm) left out",
            "histogram": "density per HU of the lung voxels, 10 HU bins",
        },
    }


def _write_outputs(outdir: Path, report: dict, real: ScanStats, measured, real_view: _ScanView) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=outdir, prefix=".tmp-realism-") as tmp:
        tmp = Path(tmp)
        (tmp / "realism.json").write_text(json.dumps(report, indent=2) + "\n")
        plot_realism(tmp / "realism.png", real, [s for s, _ in measured], [real_view] + [v for _, v in measured])
        for name in ("realism.png", "realism.json"):
            os.replace(tmp / name, outdir / name)


def plot_realism(path: str | Path, real: ScanStats, phantoms: list[ScanStats], views: list[_ScanView]) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    centres = 0.5 * (HIST_EDGES[:-1] + HIST_EDGES[1:])
    shown_views = views[:4]
    fig = plt.figure(figsize=(16, 10), constrained_layout=True)
    grid = fig.add_gridspec(2, max(4, len(shown_views)))
    ax = fig.add_subplot(grid[0, :2])
    ax.plot(centres, real.histogram, color="black", lw=2.5, label=f"real: {real.name[-24:]}")
    colours = plt.cm.tab10(np.arange(len(phantoms)) % 10)
    for p, c in zip(phantoms, colours, strict=True):
        ax.plot(centres, p.histogram, color=c, lw=1.2, alpha=0.8, label=p.name)
    ax.axvline(real.lung_hu_median, color="black", ls="--", lw=1)
    for p, c in zip(phantoms, colours, strict=True):
        ax.axvline(p.lung_hu_median, color=c, ls=":", lw=1)
    ax.set_xlabel("HU inside the lung mask")
    ax.set_ylabel("density")
    ax.set_title(f"Lung HU histograms (dashed/dotted: medians; real {real.lung_hu_median:.0f} HU)")
    ax.legend(fontsize=8)

    names = ["real"] + [p.name.replace("phantom-", "ph-")[-14:] for p in phantoms]
    bar_colours = ["black"] + list(colours)
    for col, (key, title, scale) in enumerate([
            ("lung_fraction", "Lung volume / body volume", 1.0),
            ("vessel_density", f"Vessel density (lung voxels > {VESSEL_HU:g} HU)", 100.0)], start=2):
        axb = fig.add_subplot(grid[0, col])
        values = [getattr(real, key) * scale] + [getattr(p, key) * scale for p in phantoms]
        axb.bar(range(len(values)), values, color=bar_colours)
        axb.set_xticks(range(len(values)), names, rotation=45, ha="right", fontsize=8)
        axb.set_title(title + (" (%)" if scale == 100.0 else ""), fontsize=10)
        for i, v in enumerate(values):
            axb.text(i, v, f"{v:.2f}" if scale == 1.0 else f"{v:.1f}", ha="center", va="bottom", fontsize=8)

    for col, view in enumerate(shown_views):
        axv = fig.add_subplot(grid[1, col])
        axv.imshow(view.image, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], aspect=view.aspect)
        if view.lungs.any():
            axv.contour(view.lungs, levels=[0.5], colors="red", linewidths=0.8)
        axv.set_title(view.name[-30:], fontsize=9)
        axv.axis("off")
    fig.suptitle("ResMTNet realism check: phantoms beside a real chest CT (lung mask in red)")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def format_report(report: dict) -> str:
    """The numbers as a small table for the terminal."""
    rows = [("scan", "lung HU median", "q25..q75", "lung L", "lung/body", "vessels %")]
    for s in [report["real"]] + report["phantoms"]:
        rows.append((s["name"][-28:], f"{s['lung_hu_median']:.0f}", f"{s['lung_hu_q25']:.0f}..{s['lung_hu_q75']:.0f}",
                     f"{s['lung_litres']:.2f}", f"{s['lung_fraction']:.3f}", f"{100 * s['vessel_density']:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    d = report["difference_phantom_mean_minus_real"]
    acc = report["acceptance"]
    lines += [
        "",
        f"lung HU median difference (phantom mean - real): {d['lung_hu_median']:+.1f} HU; worst phantom "
        f"{report['lung_hu_median_worst_abs_difference']:.1f} HU "
        f"({'within' if acc['lung_hu_median_within_tolerance'] else 'OUTSIDE'} "
        f"{acc['lung_hu_median_tolerance_hu']:g} HU)",
        f"lung fraction difference: {d['lung_fraction']:+.3f}; vessel density difference: "
        f"{100 * d['vessel_density']:+.2f} points",
    ]
    return "\n".join(lines)

