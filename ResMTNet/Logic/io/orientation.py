"""One voxel order for every scan: axes reordered and reversed to lie nearest L, P, S (ITK's identity direction).

Parts of detection work in index space: the lung mask averages blocks counted from voxel 0 and works slice by
slice along the third axis, and the crop and the model grid start from the mask's first voxel. The same scan
stored in another voxel order (x and z reversed, axes permuted: the same world geometry) would give other
findings. Detection therefore first brings every CT to one order, the permutation and reversal of its axes
whose direction lies nearest the identity (LPS, as DICOM has it). That is exact and lossless: the canonical
array is a numpy view of the input's voxels (nothing copied or interpolated), and a label map made on it is
a view of one in the input's own order. Directions that are not a pure permutation (an oblique scan) keep
their small rotation: the model grid is resampled from them as before.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from itertools import permutations

import numpy as np

from .ctio import CTVolume


@dataclass(frozen=True)
class AxisOrder:
    """How a canonical volume's axes come from the input's, in ITK's x, y, z order: canonical axis ``a`` is
    input axis ``source[a]``, run backwards where ``reversed_axes[a]``."""

    source: tuple[int, int, int] = (0, 1, 2)
    reversed_axes: tuple[bool, bool, bool] = (False, False, False)

    @property
    def is_identity(self) -> bool:
        return self.source == (0, 1, 2) and not any(self.reversed_axes)

    def view(self, array_zyx: np.ndarray) -> np.ndarray:
        """The canonical view of an array (z, y, x) in the input's voxel order; writing to it writes the input's
        array (how a label map made on the canonical grid lands on the input's)."""
        # numpy axis 2 - a holds ITK axis a
        out = np.transpose(array_zyx, [2 - self.source[2 - k] for k in range(3)])
        flips = tuple(2 - a for a in range(3) if self.reversed_axes[a])
        return np.flip(out, axis=flips) if flips else out

    def to_dict(self) -> dict:
        return {"source_axes_xyz": list(self.source), "reversed_xyz": list(self.reversed_axes)}


def canonical_order(direction: tuple[float, ...] | np.ndarray) -> AxisOrder:
    """The axis order whose direction lies nearest the identity: the permutation with the largest sum of
    absolute diagonal cosines, each axis reversed where it points against its world axis."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)  # column j: the world direction of index axis j
    best = max(permutations(range(3)), key=lambda p: sum(abs(d[a, p[a]]) for a in range(3)))
    return AxisOrder(source=tuple(int(p) for p in best), reversed_axes=tuple(bool(d[a, best[a]] < 0) for a in range(3)))


def canonical_ct(ct: CTVolume) -> tuple[CTVolume, AxisOrder]:
    """``ct`` in the canonical voxel order (its array a view of ct's voxels) and the order that took it there;
    ``ct`` itself where it is in that order already."""
    order = canonical_order(ct.direction)
    if order.is_identity:
        return ct, order
    d = ct.direction_matrix
    n = np.array(ct.shape_xyz)
    sign = np.where(order.reversed_axes, -1.0, 1.0)
    direction = d[:, list(order.source)] * sign
    first = np.zeros(3)  # the input index of the canonical voxel (0, 0, 0)
    for a, src in enumerate(order.source):
        if order.reversed_axes[a]:
            first[src] = n[src] - 1
    return dataclasses.replace(
        ct, array=order.view(ct.array), spacing=tuple(float(ct.spacing[s]) for s in order.source),
        origin=tuple(float(v) for v in ct.index_to_world(first)),
        direction=tuple(float(v) for v in direction.ravel())), order
