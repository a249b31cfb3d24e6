"""Lung mask of a chest CT: fast, threshold and morphology based, robust to what real scans do.

The work happens on a coarse copy of the CT (blocks averaged to about 2 mm), then the mask is
brought back to the input grid. Steps:

1. *Field of view*: voxels below -1500 HU (scanners pad outside their circular field with -2048 or
   -3024) are outside; they are neither air nor body.
2. *Outside air, per axial slice*: dark regions that reach the image border or the padded field are
   candidates for outside air. One counts as outside when most of it lies outside the convex hull of
   the slice's largest body part, so a lung that runs into the image edge (a tight crop, or a body
   wider than the field) stays in: its open side lies on the hull's chord, not beyond it. Regions are
   told apart after a small opening, so a thin gap does not join a lung to the outside air; air beyond
   the hull is always outside, air more than 6 mm inside it never (a lung reaching the skin or the
   field's edge next to outside air keeps its bulk). Working slice by slice also means airways or
   lungs leaving the top or bottom slice change nothing.
3. *Lungs*: 3-D components of the remaining dark voxels, keeping the large ones whose median density
   is that of lung rather than of pure gas (bowel, stomach, trachea alone, outside pockets).
4. *Airways*: the trachea and main bronchi are followed slice by slice from the lung apex (dark
   < -950 HU, stopping where they leak into parenchyma) and cut out, with their wall's rim.
5. *Closing and filling, one lung at a time* (two touching lungs are first cut apart along the
   junction): a closing of 15 mm puts nodules attached to the chest wall inside the mask, and hole
   filling (per slice and in 3-D, up to 40 mm holes) puts vessels and nodules in the parenchyma
   inside, without ever filling the mediastinum between the lungs.

Arrays are (z, y, x); spacings are given in ITK's x, y, z order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from ..util.errors import NoLungsError

#: Coarse grid step the mask is computed on (mm).
WORK_SPACING_MM = 2.0
#: Below this a voxel is padding outside the scanner's field of view, not air (air is about -1000 HU).
PADDING_HU = -1500.0
#: Air and lung vs soft tissue, on the block-averaged image.
AIR_HU = -500.0
#: Airway lumen (trachea, bronchi): darker than parenchyma (about -850 HU) after block averaging.
AIRWAY_HU = -950.0
#: A dark component whose median is below this is gas (bowel, stomach, outside air), not lung.
GAS_MEDIAN_HU = -975.0
#: A candidate component is kept as lung if at least this fraction of the largest one.
MIN_COMPONENT_FRACTION = 0.1
#: Below this total the CT holds no plausible lung.
MIN_LUNG_LITRES = 0.3
#: Closing radius (mm): nodules up to about twice this, stuck to the chest wall, end up inside.
CLOSING_MM = 15.0
#: Largest hole filled inside a lung: per axial slice (mm²) and in 3-D (mm³), a 40 mm nodule.
MAX_HOLE_MM2 = np.pi * 20.0**2
MAX_HOLE_MM3 = 4.0 / 3.0 * np.pi * 20.0**3
#: Air passages narrower than about twice this (mm) do not join two air regions when deciding what is
#: outside: a lung cut by the image edge may touch the outside air there through a thin gap.
THIN_PART_MM = 4.0
#: Air more than this deep inside the body's convex hull is never outside air (chest walls are thicker).
DEEP_INSIDE_MM = 6.0
#: An air region reaching the image border is outside air when more than this fraction of it lies
#: outside the convex hull of the slice's body.
OUTSIDE_HULL_FRACTION = 0.5

_FACES_2D = ndimage.generate_binary_structure(2, 1)
_FACES_3D = ndimage.generate_binary_structure(3, 1)


@dataclass
class ChestMasks:
    """Lung and body masks on the coarse working grid (z, y, x) and how that grid maps to the input."""

    lungs: np.ndarray
    body: np.ndarray
    airways: np.ndarray
    factors_zyx: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    input_shape: tuple[int, int, int]
    #: how many input voxels of each coarse voxel's block lie inside the field of view
    field_voxels: np.ndarray | None = None

    def upsample(self, mask: np.ndarray) -> np.ndarray:
        """A coarse-grid mask back on the input grid (nearest neighbour)."""
        out = mask
        for axis, f in enumerate(self.factors_zyx):
            if f > 1:
                out = np.repeat(out, f, axis=axis)
        z, y, x = self.input_shape
        return np.ascontiguousarray(out[:z, :y, :x])

    def upsample_box(self, mask: np.ndarray, box: tuple[slice, slice, slice]) -> np.ndarray:
        """``upsample(mask)[box]`` without the whole input-grid mask: input voxel i lies in coarse voxel
        i // factor along each axis."""
        coarse, keep = [], []
        for b, n, f in zip(box, self.input_shape, self.factors_zyx, strict=True):
            start, stop, _ = b.indices(n)
            c0 = start // f
            coarse.append(slice(c0, max(stop - 1, start) // f + 1))
            keep.append(slice(start - c0 * f, start - c0 * f + max(stop - start, 0)))
        out = mask[tuple(coarse)]
        for axis, f in enumerate(self.factors_zyx):
            if f > 1:
                out = np.repeat(out, f, axis=axis)
        return out[tuple(keep)]


#: Input z planes handled at a time where the whole input grid would be too large to hold at once.
SLAB_PLANES = 32


class LungMask:
    """The lung mask on the input grid, computed box by box (coarse lungs, nearest neighbour, inside the
    field of view), so that a large CT never holds a whole-volume mask or float copy.

    ``mask(box)`` equals ``lung_mask(...)[box]``; the whole mask is ``mask()``.
    """

    def __init__(self, array_zyx: np.ndarray, spacing_xyz, *, direction=None, device=None):
        self.array = array_zyx
        self.chest = segment_chest(array_zyx, spacing_xyz, direction=direction, device=device)
        self.shape = tuple(array_zyx.shape)

    def mask(self, box: tuple[slice, slice, slice] | None = None) -> np.ndarray:
        box = box or tuple(slice(0, n) for n in self.shape)
        return self.chest.upsample_box(self.chest.lungs, box) & in_field(self.array[box])

    def mask_on(self, device) -> Callable[[tuple[slice, slice, slice]], Any]:
        """``mask`` as a torch tensor on ``device``, box by box: the coarse lungs go there once, each box's
        voxels (in the input's own type) to tell the field of view."""
        import torch

        lungs = torch.from_numpy(self.chest.lungs).to(device)
        factors = self.chest.factors_zyx

        def box_mask(box: tuple[slice, slice, slice]):
            coarse, keep = [], []
            for b, n, f in zip(box, self.shape, factors, strict=True):
                start, stop, _ = b.indices(n)
                coarse.append(slice(start // f, max(stop - 1, start) // f + 1))
                keep.append(slice(start % f, start % f + max(stop - start, 0)))
            out = lungs[tuple(coarse)]
            for axis, f in enumerate(factors):
                if f > 1:
                    out = out.repeat_interleave(f, dim=axis)
            field = torch.from_numpy(np.ascontiguousarray(self.array[box])).to(device) >= PADDING_HU
            return out[tuple(keep)] & field
        return box_mask

    def voxel_count(self) -> int:
        """Lung voxels on the input grid: each coarse lung voxel counts its block's voxels in the field."""
        return int(self.chest.field_voxels[self.chest.lungs].sum())

    def index_bounds(self) -> tuple[np.ndarray, np.ndarray] | None:
        """First and last (inclusive) lung voxel index along each axis (z, y, x); None without lungs.

        The coarse mask's box says where to look; planes are then tried inwards from each of its faces
        until one holds a lung voxel in the field (the first one, but where padding lies at the edge)."""
        lo, hi = np.zeros(3, int), np.zeros(3, int)
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            coarse = np.flatnonzero(self.chest.lungs.any(axis=other))
            if coarse.size == 0:
                return None
            f, n = self.chest.factors_zyx[axis], self.shape[axis]
            first, last = int(coarse[0]) * f, min((int(coarse[-1]) + 1) * f, n) - 1
            found = next((i for i in range(first, last + 1) if self._plane_has_lung(axis, i)), None)
            if found is None:
                return None
            lo[axis] = found
            hi[axis] = next(i for i in range(last, found - 1, -1) if self._plane_has_lung(axis, i))
        return lo, hi

    def _plane_has_lung(self, axis: int, index: int) -> bool:
        box = tuple(slice(index, index + 1) if a == axis else slice(0, n) for a, n in enumerate(self.shape))
        return bool(self.mask(box).any())


def lung_mask(array_zyx: np.ndarray, spacing_xyz, *, direction=None) -> np.ndarray:
    """Boolean lung mask (z, y, x) of a CT in HU, on the input grid.

    ``direction`` (ITK's 9-tuple) is optional: it tells which end of the z axis is superior, where
    the trachea is looked for first; without it both ends are tried.
    Raises :class:`NoLungsError` when the volume holds no plausible lung.
    """
    masks = segment_chest(array_zyx, spacing_xyz, direction=direction)
    return masks.upsample(masks.lungs) & in_field(array_zyx)


def body_mask(array_zyx: np.ndarray, spacing_xyz, *, direction=None) -> np.ndarray:
    """Boolean body mask (z, y, x) on the input grid: everything inside the skin, lungs included."""
    masks = segment_chest(array_zyx, spacing_xyz, direction=direction)
    return masks.upsample(masks.body) & in_field(array_zyx)


def in_field(array_zyx: np.ndarray) -> np.ndarray:
    """Voxels inside the scanner's field of view (not padding such as -2048 or -3024)."""
    return np.asarray(array_zyx) >= PADDING_HU


def lung_bbox(mask: np.ndarray, margin_vox=0) -> tuple[slice, slice, slice]:
    """Bounding box of ``mask`` as (z, y, x) slices, grown by ``margin_vox`` (an int or one per axis,
    z, y, x) and clipped to the array."""
    margins = np.broadcast_to(np.asarray(margin_vox, dtype=int), (mask.ndim,))
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        if hit.size == 0:
            raise NoLungsError("the lung mask is empty: no lungs to crop to")
        lo = max(int(hit[0]) - int(margins[axis]), 0)
        hi = min(int(hit[-1]) + 1 + int(margins[axis]), mask.shape[axis])
        box.append(slice(lo, hi))
    return tuple(box)


def segment_chest(array_zyx: np.ndarray, spacing_xyz, *, direction=None, device=None) -> ChestMasks:
    """Lungs, body and airways on the coarse working grid; see the module docstring for the steps.

    ``device`` (a torch device, or None for numpy): where the block averages of the input are taken, the
    only pass over the full-resolution voxels; the rest works on the coarse grid, on the CPU."""
    a = np.asarray(array_zyx)
    if a.ndim != 3:
        raise ValueError(f"lung_mask needs a 3-D (z, y, x) array, got shape {a.shape}")
    spacing_zyx = tuple(float(s) for s in reversed(tuple(spacing_xyz)))
    factors = tuple(max(1, int(round(WORK_SPACING_MM / s))) for s in spacing_zyx)
    hu, beyond_fov, field_voxels = (_block_average(a, factors) if device is None
                                    else block_average_torch(a, factors, device))
    work_spacing = tuple(s * f for s, f in zip(spacing_zyx, factors, strict=True))
    voxel_litres = float(np.prod(work_spacing)) / 1e6

    air = (hu < AIR_HU) & ~beyond_fov
    tissue = ~air & ~beyond_fov
    outside = np.zeros_like(air)
    body = np.zeros_like(air)
    thin = _disk(THIN_PART_MM / min(work_spacing[1:]))
    deep_px = DEEP_INSIDE_MM / min(work_spacing[1:])
    for z in range(hu.shape[0]):
        outside[z], body[z] = _outside_air_slice(air[z], tissue[z], beyond_fov[z], thin, deep_px)

    lungs = _select_lungs(air & ~outside, hu, voxel_litres)
    lung_litres = float(lungs.sum()) * voxel_litres
    if lung_litres < MIN_LUNG_LITRES:
        raise NoLungsError(
            f"no lungs found: only {lung_litres:.2f} litres of lung-density air inside the body, where a "
            f"chest CT shows at least {MIN_LUNG_LITRES} litres (is this a chest CT?)")

    superior_last = _superior_is_last(direction)
    airways = _track_airways(hu, lungs, work_spacing, superior_last)
    # the airway lumen plus its wall's partial-volume rim, which would otherwise join the two lungs
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = _FACES_2D
    airways = ndimage.binary_dilation(airways, structure=in_plane, iterations=2) & lungs
    lungs &= ~airways
    separate, cut = _split_left_right(lungs)
    lungs = (_close_and_fill_each(separate, work_spacing) | cut) & ~airways
    body |= lungs
    return ChestMasks(lungs=lungs, body=body, airways=airways, factors_zyx=factors,
                      spacing_zyx=work_spacing, input_shape=a.shape, field_voxels=field_voxels)


# ----------------------------------------------------------------------------------------------------------
# Steps


def _block_average(a: np.ndarray, factors: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block means of ``a`` (padding clipped to air first), which blocks are mostly padding, and how many
    voxels of each block lie in the field of view.

    Works through slabs of whole blocks along z, so that no float copy of a large input is ever made;
    the edge blocks are padded by repeating the edge voxels (and their field counts hold real voxels only).
    int16 input (as detection reads scans) is summed in int32 by strided additions, which is exact and gives
    the same float32 means as the float reduction (the sums of fewer than 512 int16 values are exact in
    float32, in any order); other input is averaged in float32 as before.
    """
    fz, fy, fx = factors
    n = fz * fy * fx
    whole = a.dtype in (np.int8, np.int16) and n * 32768 < 2**24
    nz = -(-a.shape[0] // fz)
    hu, padding, field = [], [], []
    step = max(1, SLAB_PLANES // fz)
    for bz in range(0, nz, step):
        slab = a[bz * fz:min((bz + step) * fz, a.shape[0])]
        inside = slab >= PADDING_HU
        pads = [(0, (-m) % f) for m, f in zip(slab.shape, factors, strict=True)]
        if any(p[1] for p in pads):
            slab = np.pad(slab, pads, mode="edge")
            inside = np.pad(inside, pads)
        field.append(_block_sum(inside, factors))
        if whole:
            padding.append(2 * _block_sum(slab < PADDING_HU, factors) > n)
            sums = _block_sum(np.maximum(slab, -1024), factors).astype(np.float32)
            # the division np.mean makes: float32 sums by an intp count, in float64, rounded to float32
            hu.append(np.true_divide(sums, np.intp(n), out=sums, casting="unsafe"))
            continue
        z, y, x = (m // f for m, f in zip(slab.shape, factors, strict=True))
        padding.append((slab < PADDING_HU).reshape(z, fz, y, fy, x, fx).mean(axis=(1, 3, 5), dtype=np.float32)
                       > 0.5)
        clipped = np.maximum(slab, np.float32(-1024.0), dtype=np.float32)
        hu.append(clipped.reshape(z, fz, y, fy, x, fx).mean(axis=(1, 3, 5), dtype=np.float32))
    return np.concatenate(hu), np.concatenate(padding), np.concatenate(field)


def block_average_torch(a: np.ndarray, factors: tuple[int, int, int], device) -> tuple[np.ndarray, np.ndarray,
                                                                                         np.ndarray]:
    """``_block_average`` in torch on ``device``: each slab of whole blocks goes there in the input's own type
    (int16 as detection reads scans), is summed there exactly (int64) and averaged in float64, and only the
    coarse grid comes back. For int16 input that is the numpy path's result bit for bit (the same exact
    sums, divided alike); float input is summed in float64 instead of float32 (within 1e-3 HU of it)."""
    import torch

    fz, fy, fx = factors
    n = fz * fy * fx
    nz = -(-a.shape[0] // fz)
    hu, padding, field = [], [], []
    step = max(1, SLAB_PLANES // fz)
    idx = [None, torch.arange(-(-a.shape[1] // fy) * fy, device=device),
           torch.arange(-(-a.shape[2] // fx) * fx, device=device)]
    for bz in range(0, nz, step):
        host = np.ascontiguousarray(a[bz * fz:min((bz + step) * fz, a.shape[0])])
        slab = torch.from_numpy(host).to(device)
        idx[0] = torch.arange(-(-host.shape[0] // fz) * fz, device=device)
        # edge blocks: the edge voxels repeated (their field counts hold real voxels only)
        real = [i < m for i, m in zip(idx, host.shape, strict=True)]
        for axis, (i, m) in enumerate(zip(idx, host.shape, strict=True)):
            slab = slab.index_select(axis, i.clamp(max=m - 1))

        def sums(t):  # block sums by strided additions, exact: int64 for whole numbers, float64 otherwise
            out = t.to(torch.float64 if t.is_floating_point() else torch.int64)
            for axis, f in enumerate(factors):
                if f > 1:
                    parts = [out[(slice(None),) * axis + (slice(i, None, f),)] for i in range(f)]
                    out = parts[0].clone()
                    for part in parts[1:]:
                        out += part
            return out
        inside = (slab >= PADDING_HU) & real[0][:, None, None] & real[1][None, :, None] & real[2][None, None, :]
        field.append(sums(inside).to(torch.int32).cpu().numpy())
        padding.append((2 * sums(slab < PADDING_HU) > n).cpu().numpy())
        clipped = slab.clamp(min=-1024)
        total = sums(clipped).to(torch.float64)
        hu.append((total / n).to(torch.float32).cpu().numpy())
    return np.concatenate(hu), np.concatenate(padding), np.concatenate(field)


def _block_sum(x: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Sums (int32) of the blocks of ``factors`` voxels of ``x`` (bool or integer, shape a multiple of
    ``factors``): one strided addition per block offset and axis, much faster than a reduction over a
    six-dimensional view."""
    out = x
    for axis, f in enumerate(factors):
        if f > 1:
            parts = [out[(slice(None),) * axis + (slice(i, None, f),)] for i in range(f)]
            acc = parts[0].astype(np.int32)
            for part in parts[1:]:
                acc += part
            out = acc
    return out if out is not x else x.astype(np.int32)


def _outside_air_slice(air: np.ndarray, tissue: np.ndarray, beyond_fov: np.ndarray, thin: np.ndarray,
                       deep_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Outside-air and body masks of one axial slice.

    Air at the image border or the padded field is outside when most of it lies outside the convex
    hull of the slice's largest body part, and the part of it beyond the hull is outside in any case;
    other air (lungs, bowel gas) is inside. Regions are told apart after an opening with footprint
    ``thin``, so that a narrow gap (a lung cut by the image edge next to the outside air) does not join
    them; the thin air the opening took away is outside beyond the hull and otherwise follows the
    nearest region.
    """
    hull = _largest_part_hull(tissue)
    opened = ndimage.binary_opening(air, structure=thin)
    outside = _outside_regions(opened, hull, beyond_fov, reach=thin, deep_px=deep_px)
    thin_air = air & ~opened
    if thin_air.any():
        if opened.any():
            # only thin air inside the hull needs its nearest region (beyond the hull it is outside anyway)
            ask = thin_air if hull is None else thin_air & hull
            near = _nearest_value(opened, outside, np.argwhere(ask))
            if near is None:
                _, (iy, ix) = ndimage.distance_transform_edt(~opened, return_indices=True)
                outside |= thin_air & outside[iy, ix]
            else:
                outside[ask] |= near
        else:
            outside |= thin_air
        if hull is not None:
            outside |= thin_air & ~hull
    return outside, _body_slice(outside, beyond_fov)


#: How far (pixels) the nearest feature is looked for around a pixel before a whole-slice distance transform.
_NEAR_PX = 8
_NEAR_OFFSETS = np.array([(dy, dx) for dy in range(-_NEAR_PX, _NEAR_PX + 1) for dx in range(-_NEAR_PX, _NEAR_PX + 1)
                          if dy * dy + dx * dx <= _NEAR_PX**2])
_NEAR_D2 = (_NEAR_OFFSETS**2).sum(axis=1)
_NEAR_OFFSETS, _NEAR_D2 = _NEAR_OFFSETS[np.argsort(_NEAR_D2, kind="stable")], np.sort(_NEAR_D2)


def _gather(image: np.ndarray, points: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``image`` at each point (rows) plus each offset (columns); False beyond the image."""
    yy = points[:, :1] + offsets[None, :, 0]
    xx = points[:, 1:] + offsets[None, :, 1]
    ok = (yy >= 0) & (yy < image.shape[0]) & (xx >= 0) & (xx < image.shape[1])
    return image[np.clip(yy, 0, image.shape[0] - 1), np.clip(xx, 0, image.shape[1] - 1)] & ok


def _nearest_value(features: np.ndarray, values: np.ndarray, points: np.ndarray) -> np.ndarray | None:
    """``values`` at the nearest ``features`` pixel of each of ``points`` (N, 2), as the feature transform
    (``distance_transform_edt(~features, return_indices=True)``) finds it, without the whole-slice transform:
    looked up in a disk around each point, or among all feature pixels for a point with none in the disk.
    None where the nearest features (tied in distance) disagree, where the transform's choice among them
    would decide; ``features`` must hold a pixel."""
    if points.size == 0:
        return np.zeros(0, dtype=bool)
    hits = _gather(features, points, _NEAR_OFFSETS)
    vals = _gather(values, points, _NEAR_OFFSETS)
    d2 = _NEAR_D2[np.argmax(hits, axis=1)]  # offsets are sorted by distance: the first hit is a nearest one
    nearest = hits & (_NEAR_D2[None, :] == d2[:, None])
    yes, no = (nearest & vals).any(axis=1), (nearest & ~vals).any(axis=1)
    far = ~hits.any(axis=1)
    if far.any():
        # a nearest feature pixel has a non-feature 4-neighbour in the slice (else the one towards the point
        # would be nearer): only those are measured
        where = np.argwhere(features & ~ndimage.binary_erosion(features, structure=_FACES_2D, border_value=1))
        d2 = ((points[far, None, :] - where[None, :, :]) ** 2).sum(axis=2)
        nearest = d2 == d2.min(axis=1, keepdims=True)
        at = values[where[:, 0], where[:, 1]]
        yes[far], no[far] = (nearest & at).any(axis=1), (nearest & ~at).any(axis=1)
    return None if (yes & no).any() else yes


def _outside_regions(air: np.ndarray, hull: np.ndarray | None, beyond_fov: np.ndarray, reach: np.ndarray,
                     deep_px: float) -> np.ndarray:
    """Air regions at the edge (within ``reach`` of the image border or the padding) that lie mostly
    outside the body's convex hull ``hull`` (less their parts more than ``deep_px`` inside it), and the
    parts of the others that lie beyond it."""
    labels, n = ndimage.label(air, structure=_FACES_2D)
    if n == 0:
        return np.zeros_like(air)
    edge = np.zeros_like(air)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    edge |= beyond_fov
    edge = ndimage.binary_dilation(edge, structure=reach)
    touching = np.unique(labels[edge & air])
    touching = touching[touching > 0]
    if touching.size == 0:
        return np.zeros_like(air)
    at_edge = _label_set(labels, n, touching)
    if hull is None:
        return at_edge
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    beyond_hull = np.bincount(labels.ravel(), weights=(~hull).ravel(), minlength=n + 1)
    frac = beyond_hull[touching] / np.maximum(sizes[touching], 1)
    mostly_beyond = _label_set(labels, n, touching[frac > OUTSIDE_HULL_FRACTION])
    # ... except what lies deep inside the body: a lung that reaches the skin somewhere (or the field's
    # edge next to outside air) joins the outside air there, but stays inside the body's hull
    return (mostly_beyond & ~_deep_inside(hull, mostly_beyond & hull, deep_px)) | (at_edge & ~hull)


def _deep_inside(hull: np.ndarray, where: np.ndarray, deep_px: float) -> np.ndarray:
    """``distance_transform_edt(hull) > deep_px`` at the pixels ``where`` (False elsewhere): no pixel
    outside the hull within ``deep_px``, looked for in a disk around each pixel asked about."""
    if hull.all():  # no pixel outside the hull at all: what the transform gives then
        return ndimage.distance_transform_edt(hull) > deep_px
    r = int(np.floor(deep_px))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    keep = np.sqrt((dy * dy + dx * dx).astype(np.float64)) <= deep_px  # the transform's distances, compared alike
    disk = np.stack([dy[keep], dx[keep]], axis=1)
    deep = np.zeros_like(hull)
    points = np.argwhere(where)
    if points.size:
        deep[where] = ~_gather(~hull, points, disk).any(axis=1)
    return deep


def _label_set(labels: np.ndarray, n: int, chosen) -> np.ndarray:
    """``np.isin(labels, chosen)`` for labels 0..n, by a lookup table (no sorting)."""
    table = np.zeros(n + 1, dtype=bool)
    table[np.asarray(chosen, dtype=np.intp)] = True
    return table[labels]


def _disk(radius_px: float) -> np.ndarray:
    r = max(1, int(round(radius_px)))
    yy, xx = np.ogrid[-r:r + 1, -r:r + 1]
    return yy**2 + xx**2 <= radius_px**2 + 0.5


def _body_slice(outside: np.ndarray, beyond_fov: np.ndarray) -> np.ndarray:
    """Inside the skin: the largest region of the field that is not outside air (the couch and
    other things not joined to the patient fall away)."""
    labels, n = ndimage.label(~outside & ~beyond_fov, structure=_FACES_2D)
    if n == 0:
        return np.zeros_like(outside)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _largest_part_hull(tissue: np.ndarray) -> np.ndarray | None:
    """Convex hull (filled) of the largest connected tissue region of a slice, or None if too small."""
    labels, n = ndimage.label(tissue, structure=_FACES_2D)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    biggest = int(np.argmax(sizes))
    if sizes[biggest] < 0.02 * tissue.size:
        return None
    box = ndimage.find_objects(labels, max_label=biggest)[biggest - 1]
    part = labels[box] == biggest  # outside its box there is none of it: erosion's border is alike
    rim = part & ~ndimage.binary_erosion(part, structure=_FACES_2D)
    pts = (np.argwhere(rim) + [box[0].start, box[1].start]).astype(np.float64)
    try:
        hull = ConvexHull(pts)
    except (QhullError, ValueError):
        return None
    # the half-planes are tested on the part's box with a margin; only where the hull (its tolerance at a
    # sharp corner) reaches that margin's edge inside the slice is the whole slice tested
    h, w = tissue.shape
    y0, y1 = max(box[0].start - 4, 0), min(box[0].stop + 4, h)
    x0, x1 = max(box[1].start - 4, 0), min(box[1].stop + 4, w)
    inside = _half_planes(hull.equations, y0, y1, x0, x1)
    edges = [(y0 > 0, inside[0]), (y1 < h, inside[-1]), (x0 > 0, inside[:, 0]), (x1 < w, inside[:, -1])]
    if any(inner and edge.any() for inner, edge in edges):
        return _half_planes(hull.equations, 0, h, 0, w)
    out = np.zeros(tissue.shape, dtype=bool)
    out[y0:y1, x0:x1] = inside
    return out


def _half_planes(equations: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Pixels (y0..y1-1, x0..x1-1) within 0.75 pixel of every half-plane ``ny y + nx x + off <= 0``."""
    yy = np.arange(y0, y1, dtype=np.float64)[:, None]
    xx = np.arange(x0, x1, dtype=np.float64)[None, :]
    inside = np.ones((y1 - y0, x1 - x0), dtype=bool)
    plane = np.empty(inside.shape)
    for ny, nx, off in equations:
        np.add(ny * yy, nx * xx, out=plane)
        plane += off
        inside &= plane <= 0.75
    return inside


def _select_lungs(candidates: np.ndarray, hu: np.ndarray, voxel_litres: float) -> np.ndarray:
    """Large dark 3-D components of lung density (not pure gas)."""
    labels, n = ndimage.label(candidates, structure=_FACES_3D)
    if n == 0:
        return np.zeros_like(candidates)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    order = order[sizes[order] > 0][:12]
    keep = []
    for lab in order:
        if sizes[lab] * voxel_litres < 0.02:  # 20 ml: nothing smaller is a lung
            break
        if float(np.median(hu[labels == lab])) < GAS_MEDIAN_HU:
            continue
        keep.append(int(lab))
    if not keep:
        return np.zeros_like(candidates)
    largest = sizes[keep[0]]
    keep = [lab for lab in keep if sizes[lab] >= MIN_COMPONENT_FRACTION * largest]
    return _label_set(labels, n, keep)


def _superior_is_last(direction) -> bool | None:
    """True when the last z index is the superior end (LPS +z), None when unknown."""
    if direction is None:
        return None
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    kz = d[2, 2]  # world z per index-z step (LPS: + is superior)
    if abs(kz) < 0.5:
        return None
    return bool(kz > 0)


def _track_airways(hu: np.ndarray, lungs: np.ndarray, spacing_zyx: tuple[float, float, float],
                   superior_last: bool | None) -> np.ndarray:
    """Trachea and main bronchi inside the lung candidates, followed from the apex slice by slice.

    Without ``superior_last`` both ends are tried and the one where a trachea-like seed exists wins.
    """
    ends = [superior_last] if superior_last is not None else [True, False]
    best = np.zeros_like(lungs)
    for last in ends:
        found = _track_from(hu, lungs, spacing_zyx, last)
        if found.sum() > best.sum():
            best = found
    return best


def _track_from(hu: np.ndarray, lungs: np.ndarray, spacing_zyx: tuple[float, float, float],
                superior_last: bool) -> np.ndarray:
    dark = (hu < AIRWAY_HU) & lungs
    pixel_cm2 = spacing_zyx[1] * spacing_zyx[2] / 100.0
    zs = np.flatnonzero(lungs.any(axis=(1, 2)))
    if zs.size == 0:
        return np.zeros_like(lungs)
    order = list(range(zs[-1], zs[0] - 1, -1)) if superior_last else list(range(zs[0], zs[-1] + 1))
    airways = np.zeros_like(lungs)
    search = max(1, int(round(50.0 / spacing_zyx[0])))  # look for the trachea within 5 cm of the top
    seed_at = None
    for i, z in enumerate(order[:search]):
        seed = _trachea_seed(dark[z], lungs[z], pixel_cm2)
        if seed is not None:
            airways[z] = seed
            seed_at = i
            break
    if seed_at is None:
        return airways
    recent = [airways[order[seed_at]]]  # the last few airway sections: bridges a slice where it fades
    max_area = 8.0 / pixel_cm2  # no airway section is larger than ~8 cm²
    min_parent = 1.0 / pixel_cm2  # growth is judged against at least 1 cm²
    for z in order[seed_at + 1:]:
        labels, n = ndimage.label(dark[z], structure=_FACES_2D)
        if n == 0:
            break
        near_prev = ndimage.binary_dilation(np.logical_or.reduce(recent), structure=_FACES_2D)
        hits = np.unique(labels[near_prev & (labels > 0)])
        if hits.size == 0:
            break
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        cur = np.zeros_like(dark[z])
        for h in hits:
            part = labels == h
            around = ndimage.binary_dilation(part, structure=_FACES_2D, iterations=2)
            parent = max(int(r[around].sum()) for r in recent)
            # a branch that suddenly grows has leaked into parenchyma: drop it, follow the others
            if sizes[h] <= max(3 * parent, min_parent) and sizes[h] <= max_area:
                cur |= part
        if not cur.any():
            break
        airways[z] = cur
        recent = (recent + [cur])[-3:]
    return airways


def _trachea_seed(dark: np.ndarray, lungs: np.ndarray, pixel_cm2: float) -> np.ndarray | None:
    """A compact dark region of trachea size (0.4–6 cm²) between the lungs' left and right extent."""
    labels, n = ndimage.label(dark, structure=_FACES_2D)
    if n == 0:
        return None
    xs = np.flatnonzero(lungs.any(axis=0))
    width = xs[-1] - xs[0] + 1
    best, best_dist = None, None
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        region = labels[sl] == lab
        area_cm2 = region.sum() * pixel_cm2
        if not 0.4 <= area_cm2 <= 6.0:
            continue
        box_fill = region.mean()
        h, w = region.shape
        if box_fill < 0.5 or max(h, w) > 2.5 * min(h, w):
            continue
        cx = (sl[1].start + sl[1].stop) / 2.0
        dist = abs(cx - (xs[0] + xs[-1]) / 2.0) / width
        if dist > 0.2:
            continue
        if best_dist is None or dist < best_dist:
            best, best_dist = labels == lab, dist
    return best


def _split_left_right(lungs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut two lungs that touch (anterior or posterior junction) apart along, in each slice, the
    column with the fewest lung voxels in the middle band. Returns the cut mask and the voxels cut
    away (to be put back at the end). A mask already in two parts, or a single lung, is left whole."""
    labels, n = ndimage.label(lungs, structure=_FACES_3D)
    cut = np.zeros_like(lungs)
    if n == 0:
        return lungs, cut
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    big = np.flatnonzero(sizes >= MIN_COMPONENT_FRACTION * sizes.max())
    if big.size != 1:
        return lungs, cut
    xs = np.flatnonzero(lungs.any(axis=(0, 1)))
    lo, hi = xs[0], xs[-1] + 1
    band = slice(lo + int(0.35 * (hi - lo)), lo + int(np.ceil(0.65 * (hi - lo))))
    columns = lungs[:, :, band].sum(axis=1)  # (z, x in the band): lung voxels per column
    if columns.shape[1] > 0:
        for z in np.flatnonzero(lungs.any(axis=(1, 2)) & (columns.min(axis=1) > 0)):
            x = band.start + int(np.argmin(columns[z]))
            cut[z, :, max(x - 1, 0): x + 2] = lungs[z, :, max(x - 1, 0): x + 2]
    parts, m = ndimage.label(lungs & ~cut, structure=_FACES_3D)
    part_sizes = np.bincount(parts.ravel())
    part_sizes[0] = 0
    if m < 2 or np.sort(part_sizes)[-2] < MIN_COMPONENT_FRACTION * part_sizes.max():
        return lungs, np.zeros_like(lungs)  # one lung only, or the cut did not part them
    return lungs & ~cut, cut


def _close_and_fill_each(lungs: np.ndarray, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """Close and fill each lung on its own, so the gap between the lungs (the mediastinum) is never
    bridged and filled; a single merged lung is treated as one."""
    labels, n = ndimage.label(lungs, structure=_FACES_3D)
    out = np.zeros_like(lungs)
    if n == 0:
        return out
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    pad = [int(np.ceil(CLOSING_MM / s)) + 2 for s in spacing_zyx]
    for lab, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None or sizes[lab] < MIN_COMPONENT_FRACTION * sizes.max():
            continue
        grown = tuple(slice(max(b.start - p, 0), min(b.stop + p, n_)) for b, p, n_ in
                      zip(box, pad, lungs.shape, strict=True))
        one = labels[grown] == lab
        one = _fill_holes(_close(one, spacing_zyx, CLOSING_MM), spacing_zyx)
        out[grown] |= one
    return out


def _close(mask: np.ndarray, spacing_zyx: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    """Morphological closing with a ball of ``radius_mm``, by distance transforms, edge-padded so that
    a lung running into the volume's border is not eaten there."""
    sp = np.asarray(spacing_zyx)
    pad = [int(np.ceil(radius_mm / s)) + 1 for s in sp]
    m = np.pad(mask, [(p, p) for p in pad], mode="edge")
    if not m.any():
        return mask
    # Both distance transforms on the mask's box grown by ``pad``: it holds every mask voxel and every voxel
    # within the radius of one, and its outer faces (inside m) lie beyond the radius, so each transform
    # gives there what it gives on the whole of m, on fewer voxels.
    box = tuple(slice(max(b.start - p, 0), min(b.stop + p, n)) for b, p, n in
                zip(ndimage.find_objects(m.astype(np.uint8))[0], pad, m.shape, strict=True))
    grown = ndimage.distance_transform_edt(~m[box], sampling=sp) <= radius_mm
    closed = np.zeros_like(m)
    closed[box] = ndimage.distance_transform_edt(grown, sampling=sp) > radius_mm
    return closed[tuple(slice(p, p + n) for p, n in zip(pad, mask.shape, strict=True))] | mask


def _fill_holes(mask: np.ndarray, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """Holes filled in each axial slice and then in 3-D, up to the size of the largest nodule (about
    40 mm across): a nodule or vessel inside a lung is filled, the gap between two touching lungs is
    not."""
    pixel_mm2 = spacing_zyx[1] * spacing_zyx[2]
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = _FACES_2D
    padded = np.pad(mask, [(1, 1), (0, 0), (0, 0)])  # so the first and last slices are filled too
    holes = ndimage.binary_fill_holes(padded, structure=in_plane)[1:-1] & ~mask
    out = mask | _small_parts(holes, in_plane, MAX_HOLE_MM2 / pixel_mm2)
    holes = ndimage.binary_fill_holes(out, structure=_FACES_3D) & ~out
    return out | _small_parts(holes, _FACES_3D, MAX_HOLE_MM3 / float(np.prod(spacing_zyx)))


def _small_parts(mask: np.ndarray, structure: np.ndarray, max_voxels: float) -> np.ndarray:
    labels, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    small = sizes <= max_voxels
    small[0] = False
    return small[labels]
