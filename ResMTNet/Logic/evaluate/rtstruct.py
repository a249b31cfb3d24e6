"""Lesions from a DICOM RT structure set: an ROI's planar contours filled on a CT's grid.

A radiotherapy clinic outlines a tumour as closed polygons on the CT's axial planes (ROIContourSequence,
patient coordinates = LPS mm). Each contour is filled on the plane of the CT it lies on (a voxel is inside
where its centre is: even-odd, so a contour inside another is a hole), which gives the lesion's mask and from
it its centre and equivalent-sphere diameter, as a reference for the detector's findings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from ..io.ctio import CTVolume
from ..io.orientation import canonical_ct
from ..util.errors import InputError

#: A contour whose points lie further apart than this (in CT slices) from one plane is not on the CT's planes.
PLANE_TOLERANCE_SLICES = 0.25


@dataclass
class RoiMask:
    """What follows from an ROI filled on a CT's grid: its volume, centre and sizes."""

    name: str
    voxels: int
    volume_mm3: float
    centre_lps: tuple[float, float, float]
    equivalent_diameter_mm: float
    #: the longest distance between two voxel centres of one axial plane of the mask
    longest_axial_mm: float


def is_rtstruct(path: str | Path) -> bool:
    """Whether ``path`` is a DICOM file holding an RT structure set (its header alone is read)."""
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["Modality"])
    except (pydicom.errors.InvalidDicomError, OSError, ValueError):
        return False
    return str(ds.get("Modality", "")) == "RTSTRUCT"


def find_rtstructs(folder: str | Path) -> list[Path]:
    """The RT structure set files directly in ``folder`` or in its ``rtstruct`` sub-folder, sorted by name."""
    folder = Path(folder)
    places = [folder, folder / "rtstruct"]
    files = [p for place in places if place.is_dir() for p in sorted(place.iterdir()) if p.is_file()]
    return [p for p in files if p.suffix.lower() in (".dcm", "") and is_rtstruct(p)]


def roi_names(path: str | Path) -> list[str]:
    ds = _read(path)
    return [str(r.ROIName) for r in ds.get("StructureSetROISequence", [])]


def roi_mask(path: str | Path, name: str, ct: CTVolume) -> RoiMask:
    """ROI ``name`` of the RT structure set at ``path`` filled on ``ct``'s grid; :class:`InputError` where the
    file has no such ROI, its contours are not on the CT's axial planes, or they cover no voxel."""
    ds = _read(path)
    numbers = {str(r.ROIName): int(r.ROINumber) for r in ds.get("StructureSetROISequence", [])}
    if name not in numbers:
        raise InputError(f"{path}: RT structure set has no ROI named {name!r} (it has: {', '.join(numbers)})")
    contours = next((c.get("ContourSequence", []) for c in ds.get("ROIContourSequence", [])
                     if int(c.ReferencedROINumber) == numbers[name]), [])
    canonical, _ = canonical_ct(ct)
    mask = np.zeros(canonical.array.shape, bool)
    for contour in contours:
        if str(contour.get("ContourGeometricType", "CLOSED_PLANAR")) != "CLOSED_PLANAR":
            continue
        points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
        ijk = canonical.world_to_index(points)  # x, y, z
        k = int(round(float(ijk[:, 2].mean())))
        if np.ptp(ijk[:, 2]) > 2 * PLANE_TOLERANCE_SLICES or abs(ijk[:, 2].mean() - k) > PLANE_TOLERANCE_SLICES:
            raise InputError(f"{path}: a contour of ROI {name!r} does not lie on one of the CT's axial planes "
                             "(another CT's structure set, or a CT resampled since)")
        if 0 <= k < mask.shape[0]:
            mask[k] ^= _polygon_pixels(ijk[:, :2], mask.shape[1:])
    voxels = int(mask.sum())
    if not voxels:
        raise InputError(f"{path}: ROI {name!r} covers no voxel of the CT {ct.source}")
    volume = voxels * float(np.prod(canonical.spacing))
    centre = canonical.index_to_world(np.argwhere(mask).mean(axis=0)[::-1])
    return RoiMask(name=name, voxels=voxels, volume_mm3=volume, centre_lps=tuple(float(v) for v in centre),
                   equivalent_diameter_mm=float((6.0 * volume / np.pi) ** (1.0 / 3.0)),
                   longest_axial_mm=_longest_axial(mask, canonical))


def _read(path: str | Path) -> pydicom.Dataset:
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError) as e:
        raise InputError(f"{path}: is not a readable DICOM file ({e})") from e
    if str(ds.get("Modality", "")) != "RTSTRUCT":
        raise InputError(f"{path}: is not an RT structure set (Modality {ds.get('Modality', 'missing')})")
    return ds


def _polygon_pixels(xy: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
    """Pixels (y, x) whose centres lie inside the closed polygon ``xy`` (continuous x, y indices): even-odd."""
    out = np.zeros(shape_yx, bool)
    lo = np.maximum(np.floor(xy.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(xy.max(axis=0)).astype(int) + 1, np.array(shape_yx[::-1]))
    if np.any(hi <= lo):
        return out
    px = np.arange(lo[0], hi[0], dtype=np.float64)[None, :]
    py = np.arange(lo[1], hi[1], dtype=np.float64)[:, None]
    inside = np.zeros((hi[1] - lo[1], hi[0] - lo[0]), bool)
    x0, y0 = xy[:, 0], xy[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for ax, ay, bx, by in zip(x0, y0, x1, y1, strict=True):
        if ay == by:
            continue
        crosses = (ay > py) != (by > py)  # the edge spans this row of pixel centres
        x_at = ax + (py - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (px < x_at)
    out[lo[1]:hi[1], lo[0]:hi[0]] = inside
    return out


def _longest_axial(mask: np.ndarray, ct: CTVolume) -> float:
    """The longest distance (mm) between two voxel centres on one axial plane of ``mask`` (canonical order)."""
    sy, sx = ct.spacing[1], ct.spacing[0]
    longest = 0.0
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        yx = np.argwhere(mask[k]) * [sy, sx]
        if len(yx) > 400:  # the longest chord runs between points of the outline's convex hull
            from scipy.spatial import ConvexHull, QhullError
            try:
                yx = yx[ConvexHull(yx).vertices]
            except QhullError:
                pass
        d = np.sqrt(((yx[:, None, :] - yx[None, :, :]) ** 2).sum(-1))
        longest = max(longest, float(d.max()))
    return longest
