"""Preparing a CT for the network: one canonical grid, one intensity scale.

The network always sees the same world: an isotropic grid at the model's spacing with the identity
direction (axes along L, P, S, arrays z, y, x), so scans stored with flipped or permuted axes look the
same to it, and an intensity scale fixed in HU. Positions found on that grid map back to LPS world mm
through :class:`ModelGrid`, which is all the decoding needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..io.ctio import CTVolume

HU_MIN = -1200.0
HU_MAX = 600.0
PAD_HU = -1000.0  # what lies outside the scan, and what scanner padding (-2048, -3024) is turned into


@dataclass
class ModelGrid:
    """An axis-aligned grid (identity direction): ``origin`` is the world position of voxel (0, 0, 0)."""

    origin: np.ndarray  # (x, y, z) mm
    spacing: float
    shape: tuple[int, int, int]  # (z, y, x)

    def voxel_to_world(self, zyx: np.ndarray) -> np.ndarray:
        """Continuous voxel positions (..., 3) in z, y, x order → LPS world mm (..., 3) in x, y, z."""
        zyx = np.asarray(zyx, dtype=np.float64)
        return self.origin + zyx[..., ::-1] * self.spacing

    def world_to_voxel(self, lps: np.ndarray) -> np.ndarray:
        """LPS world mm (..., 3) → continuous voxel positions (..., 3) in z, y, x order."""
        xyz = (np.asarray(lps, dtype=np.float64) - self.origin) / self.spacing
        return xyz[..., ::-1]


def world_bounds(ct: CTVolume) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned LPS bounding box (min, max) of the voxel centres of ``ct``."""
    nx, ny, nz = ct.shape_xyz
    corners = np.array([[i, j, k] for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)], float)
    w = ct.index_to_world(corners)
    return w.min(0), w.max(0)


#: Model-grid z planes resampled at a time: the input region one slab needs is all that is ever held as
#: float, so a large CT (int16, say 1024 x 1024 x 800) is never copied whole.
RESAMPLE_SLAB_PLANES = 16

#: An array on ct's grid, or a function giving any box of one (z, y, x slices) as an array.
Source = np.ndarray | Callable[[tuple[slice, slice, slice]], np.ndarray]


def to_model_grid(ct: CTVolume, spacing: float, bounds: tuple[np.ndarray, np.ndarray] | None = None,
                  interpolator: int = sitk.sitkLinear, image: Source | None = None) -> tuple[np.ndarray, ModelGrid]:
    """Resample ``ct`` (or ``image``, an array on ct's grid or a function giving boxes of one) onto the
    canonical grid covering ``bounds``, as float32.

    Scanner padding outside the reconstruction circle (-2048, -3024 ...) is set to air first so it
    does not bleed into the body by interpolation. The grid is filled slab by slab from the part of the
    input each slab needs (the same values as one resampling of the whole input).
    """
    lo, hi = bounds if bounds is not None else world_bounds(ct)
    lo = np.asarray(lo, float)
    hi = np.asarray(hi, float)
    size_xyz = np.maximum(np.floor((hi - lo) / spacing).astype(int) + 1, 1)
    grid = ModelGrid(origin=lo, spacing=float(spacing), shape=tuple(int(s) for s in size_xyz[::-1]))
    if image is None:
        clip = bool(ct.array.min() < PAD_HU - 24)

        def source(box: tuple[slice, slice, slice]) -> np.ndarray:
            part = ct.array[box]
            return np.maximum(part, np.float32(PAD_HU), dtype=np.float32) if clip else part.astype(np.float32)
        default = PAD_HU
    else:
        source = image if callable(image) else (lambda box: np.asarray(image[box], dtype=np.float32))
        default = 0.0
    out = np.empty(grid.shape, np.float32)
    for z0 in range(0, grid.shape[0], RESAMPLE_SLAB_PLANES):
        z1 = min(z0 + RESAMPLE_SLAB_PLANES, grid.shape[0])
        box = _input_box(ct, grid, z0, z1)
        if box is None:  # the slab lies wholly outside the scan
            out[z0:z1] = default
            continue
        src = sitk.GetImageFromArray(np.ascontiguousarray(source(box), dtype=np.float32))
        src.SetSpacing(ct.spacing)
        src.SetOrigin(tuple(float(v) for v in ct.index_to_world(np.array([b.start for b in box[::-1]], float))))
        src.SetDirection(ct.direction)
        ref = sitk.Image([int(size_xyz[0]), int(size_xyz[1]), z1 - z0], sitk.sitkFloat32)
        ref.SetSpacing((float(spacing),) * 3)
        ref.SetOrigin(tuple(float(v) for v in grid.voxel_to_world(np.array([z0, 0, 0], float))))
        res = sitk.Resample(src, ref, sitk.Transform(), interpolator, default, sitk.sitkFloat32)
        out[z0:z1] = sitk.GetArrayViewFromImage(res)
    return out, grid


def _input_box(ct: CTVolume, grid: ModelGrid, z0: int, z1: int) -> tuple[slice, slice, slice] | None:
    """The box (z, y, x slices) of ct's grid that interpolating model-grid planes z0..z1-1 reads, with a
    voxel to spare on each side; None where those planes lie outside the scan."""
    _, gy, gx = grid.shape
    corners = np.array([[z, y, x] for z in (z0, z1 - 1) for y in (0, gy - 1) for x in (0, gx - 1)], float)
    ijk = ct.world_to_index(grid.voxel_to_world(corners))  # x, y, z
    n = np.array(ct.shape_xyz)
    lo = np.maximum(np.floor(ijk.min(0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(ijk.max(0)).astype(int) + 2, n)
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(lo[a]), int(hi[a])) for a in (2, 1, 0))


def normalize_hu(hu: np.ndarray) -> np.ndarray:
    """HU → network input: clipped to [HU_MIN, HU_MAX] and scaled to about [-1, 1]."""
    x = np.clip(hu, HU_MIN, HU_MAX, dtype=np.float32) if hu.dtype == np.float32 else np.clip(
        hu.astype(np.float32), HU_MIN, HU_MAX)
    return (x - (HU_MAX + HU_MIN) / 2) / ((HU_MAX - HU_MIN) / 2)


def mask_bounds(mask: np.ndarray, ct: CTVolume, margin_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """LPS bounding box of a mask on ct's grid, grown by ``margin_mm`` (clipped to the scan)."""
    hit = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    if any(h.size == 0 for h in hit):
        return world_bounds(ct)
    return index_bounds_to_world(np.array([h[0] for h in hit]), np.array([h[-1] for h in hit]), ct, margin_mm)


def index_bounds_to_world(lo_zyx: np.ndarray, hi_zyx: np.ndarray, ct: CTVolume, margin_mm: float
                          ) -> tuple[np.ndarray, np.ndarray]:
    """LPS bounding box of the index box lo..hi (inclusive, z, y, x) on ct's grid, grown by ``margin_mm``
    (clipped to the scan)."""
    lo_i, hi_i = np.asarray(lo_zyx)[::-1], np.asarray(hi_zyx)[::-1]  # x, y, z
    corners = np.array([[a, b, c] for a in (lo_i[0], hi_i[0]) for b in (lo_i[1], hi_i[1])
                        for c in (lo_i[2], hi_i[2])], float)
    w = ct.index_to_world(corners)
    blo, bhi = world_bounds(ct)
    return np.maximum(w.min(0) - margin_mm, blo), np.minimum(w.max(0) + margin_mm, bhi)
