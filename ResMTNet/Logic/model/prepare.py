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
                  interpolator: int = sitk.sitkLinear, image: Source | None = None,
                  device=None) -> tuple[np.ndarray, ModelGrid]:
    """Resample ``ct`` (or ``image``, an array on ct's grid or a function giving boxes of one) onto the
    canonical grid covering ``bounds``, as float32.

    Scanner padding outside the reconstruction circle (-2048, -3024 ...) is set to air first so it
    does not bleed into the body by interpolation. The grid is filled slab by slab from the part of the
    input each slab needs (the same values as one resampling of the whole input).

    ``device`` (a torch device; None: SimpleITK on the CPU): linear interpolation in torch there instead,
    each slab's input box sent in its own type (``image`` may then give torch tensors on that device); the
    same values within float32 rounding (see :func:`_resample_slab_torch`).
    """
    lo, hi = bounds if bounds is not None else world_bounds(ct)
    lo = np.asarray(lo, float)
    hi = np.asarray(hi, float)
    size_xyz = np.maximum(np.floor((hi - lo) / spacing).astype(int) + 1, 1)
    grid = ModelGrid(origin=lo, spacing=float(spacing), shape=tuple(int(s) for s in size_xyz[::-1]))
    if device is not None:
        if interpolator != sitk.sitkLinear:
            raise ValueError("the torch resampling interpolates linearly only")
        return _to_model_grid_torch(ct, grid, image, device), grid
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


def _to_model_grid_torch(ct: CTVolume, grid: ModelGrid, image: Source | None, device) -> np.ndarray:
    """``to_model_grid``'s slabs resampled in torch on ``device``; only the model grid comes back."""
    import torch

    if image is None:
        clip = bool(ct.array.min() < PAD_HU - 24)

        def source(box):
            part = torch.from_numpy(np.ascontiguousarray(ct.array[box])).to(device)
            return part.to(torch.float64).clamp(min=PAD_HU) if clip else part.to(torch.float64)
        default = PAD_HU
    else:
        def source(box):
            part = image(box) if callable(image) else image[box]
            part = part if isinstance(part, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(part))
            return part.to(device=device, dtype=torch.float64)
        default = 0.0
    # model-grid voxel (z, y, x) -> continuous input index (x, y, z): world = origin + (x, y, z) * spacing,
    # index = inverse(direction * diag(spacing)) (world - ct.origin)
    to_index = np.linalg.inv(ct.direction_matrix * np.asarray(ct.spacing, float)[None, :])
    m = torch.tensor(to_index * grid.spacing, dtype=torch.float64, device=device)
    start = torch.tensor(to_index @ (grid.origin - np.asarray(ct.origin, float)), dtype=torch.float64, device=device)
    _, gy, gx = grid.shape
    yy = torch.arange(gy, dtype=torch.float64, device=device)
    xx = torch.arange(gx, dtype=torch.float64, device=device)
    out = np.empty(grid.shape, np.float32)
    for z0 in range(0, grid.shape[0], RESAMPLE_SLAB_PLANES):
        z1 = min(z0 + RESAMPLE_SLAB_PLANES, grid.shape[0])
        box = _input_box(ct, grid, z0, z1)
        if box is None:
            out[z0:z1] = default
            continue
        zz = torch.arange(z0, z1, dtype=torch.float64, device=device)
        xyz = torch.stack(torch.meshgrid(xx, yy, zz, indexing="xy"), dim=-1)  # (y, x, z, 3): model x, y, z
        ijk = (xyz @ m.T + start).permute(2, 0, 1, 3)  # (z, y, x, 3): input index x, y, z
        slab = _resample_slab_torch(source(box), ijk, [b.start for b in box[::-1]], ct.shape_xyz, default)
        out[z0:z1] = slab.to(torch.float32).cpu().numpy()
    return out


def _resample_slab_torch(values, ijk, box_start_xyz, shape_xyz, default: float):
    """Linear interpolation of ``values`` (z, y, x: the input box starting at ``box_start_xyz``) at the
    continuous input indices ``ijk`` (..., 3: x, y, z), as ITK's linear interpolator does it: neighbours
    beyond the box clamped to its edge (grid_sample's border padding), and ``default`` at points outside the
    input's buffer, which is [-0.5, n - 0.5) along each axis. Computed in float64, so the float32 result
    agrees with SimpleITK's (double precision too) to its last bit or so."""
    import torch

    size = torch.tensor(values.shape[::-1], dtype=ijk.dtype, device=ijk.device)  # x, y, z
    rel = ijk - torch.tensor(box_start_xyz, dtype=ijk.dtype, device=ijk.device)
    norm = torch.where(size > 1, rel * 2 / (size - 1).clamp(min=1) - 1, torch.zeros_like(rel))
    result = torch.nn.functional.grid_sample(values[None, None], norm[None], mode="bilinear",
                                             padding_mode="border", align_corners=True)[0, 0]
    inside = torch.ones_like(result, dtype=torch.bool)
    for a in range(3):
        inside &= (ijk[..., a] >= -0.5) & (ijk[..., a] < shape_xyz[a] - 0.5)
    return torch.where(inside, result, torch.full_like(result, default))


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
