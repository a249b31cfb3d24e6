"""Preparing a CT for the network: one canonical grid, one intensity scale.

The network always sees the same world: an isotropic grid at the model's spacing with the identity
direction (axes along L, P, S, arrays z, y, x), so scans stored with flipped or permuted axes look the
same to it, and an intensity scale fixed in HU. Positions found on that grid map back to LPS world mm
through :class:`ModelGrid`, which is all the decoding needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .ctio import CTVolume

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


def to_model_grid(ct: CTVolume, spacing: float, bounds: tuple[np.ndarray, np.ndarray] | None = None,
                  interpolator: int = sitk.sitkLinear, image: np.ndarray | None = None) -> tuple[np.ndarray, ModelGrid]:
    """Resample ``ct`` (or ``image``, an array on ct's grid) onto the canonical grid covering ``bounds``.

    Scanner padding outside the reconstruction circle (-2048, -3024 ...) is set to air first so it
    does not bleed into the body by interpolation.
    """
    lo, hi = bounds if bounds is not None else world_bounds(ct)
    lo = np.asarray(lo, float)
    hi = np.asarray(hi, float)
    size_xyz = np.maximum(np.floor((hi - lo) / spacing).astype(int) + 1, 1)
    if image is None:
        arr = np.maximum(ct.array, np.float32(PAD_HU)) if ct.array.min() < PAD_HU - 24 else ct.array
        default = PAD_HU
    else:
        arr = image
        default = 0.0
    src = sitk.GetImageFromArray(arr)
    src.SetSpacing(ct.spacing)
    src.SetOrigin(ct.origin)
    src.SetDirection(ct.direction)
    ref = sitk.Image([int(s) for s in size_xyz], src.GetPixelID())
    ref.SetSpacing((float(spacing),) * 3)
    ref.SetOrigin(tuple(float(v) for v in lo))
    out = sitk.Resample(src, ref, sitk.Transform(), interpolator, default, src.GetPixelID())
    grid = ModelGrid(origin=lo, spacing=float(spacing), shape=tuple(int(s) for s in size_xyz[::-1]))
    return sitk.GetArrayFromImage(out), grid


def normalize_hu(hu: np.ndarray) -> np.ndarray:
    """HU → network input: clipped to [HU_MIN, HU_MAX] and scaled to about [-1, 1]."""
    x = np.clip(hu, HU_MIN, HU_MAX, dtype=np.float32) if hu.dtype == np.float32 else np.clip(
        hu.astype(np.float32), HU_MIN, HU_MAX)
    return (x - (HU_MAX + HU_MIN) / 2) / ((HU_MAX - HU_MIN) / 2)


def mask_bounds(mask: np.ndarray, ct: CTVolume, margin_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """LPS bounding box of a mask on ct's grid, grown by ``margin_mm`` (clipped to the scan)."""
    idx = np.argwhere(mask)
    if len(idx) == 0:
        return world_bounds(ct)
    lo_i, hi_i = idx.min(0)[::-1], idx.max(0)[::-1]  # x, y, z
    corners = np.array([[a, b, c] for a in (lo_i[0], hi_i[0]) for b in (lo_i[1], hi_i[1])
                        for c in (lo_i[2], hi_i[2])], float)
    w = ct.index_to_world(corners)
    blo, bhi = world_bounds(ct)
    return np.maximum(w.min(0) - margin_mm, blo), np.minimum(w.max(0) + margin_mm, bhi)
