"""Measuring each finding on the CT itself: its own voxels (a mask grown from the network's centre inside its
predicted sphere), its volume, a size from both the mask and the network, the mask's longest axial diameter and
equivalent-sphere diameter (how masses are sized), a centre the mask refines, and the solid component of a
part-solid nodule (:func:`measure_solid_components`).

:func:`measure_findings` turns the network's findings into the nodule list and its label map; :mod:`.pipeline`
calls it after the network has run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from ..io.ctio import CTVolume
from .nodules import Nodule

if TYPE_CHECKING:
    from ..model.prepare import ModelGrid
    from ..model.targets import Peak


#: findings this large (mm, predicted) are masses: irregular and often elongated, so their mask may grow to
#: MASS_GROWTH times the predicted radius (nodules: 1.25), for the longest axial diameter to be measured whole.
#: 40, not 30: a large nodule on thick slices is over-sized by the network to 30 mm and more (LIDC-IDRI-0001's
#: 23.4 mm nodule on 5 mm slices: 31 mm), and a wider mask there takes in the vessels beside it
MASS_DIAMETER_MM = 40.0
MASS_GROWTH = 1.5


def grow_mask(ct: CTVolume, center_lps: np.ndarray, diameter_mm: float
              ) -> tuple[tuple[slice, ...], np.ndarray, bool]:
    """The nodule's own voxels on ct's grid: dense tissue connected to its centre inside its predicted sphere
    (grown by a quarter; by half for a mass, :data:`MASS_GROWTH`).

    The threshold sits halfway between the nodule's core and the surrounding lung, so part-solid and
    ground-glass nodules keep their hazy part. Falls back to the predicted sphere where nothing dense is
    found (a faint or misplaced finding). Returns the box on ct's grid, the mask in it, and whether the
    mask was measured on the image (False: the sphere fallback).
    """
    sp = np.asarray(ct.spacing)
    c = ct.world_to_index(center_lps)  # x, y, z continuous
    R = max(diameter_mm / 2.0, 1.5)
    grow = MASS_GROWTH if diameter_mm >= MASS_DIAMETER_MM else 1.25  # of the predicted radius
    reach = (grow + 0.05) * R + 2 * sp
    lo = np.maximum(np.floor(c - reach / sp).astype(int), 0)
    hi = np.minimum(np.ceil(c + reach / sp).astype(int) + 1, np.array(ct.shape_xyz))
    box = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    hu = ct.array[box]
    zz, yy, xx = np.meshgrid(*(np.arange(a, b) for a, b in ((lo[2], hi[2]), (lo[1], hi[1]), (lo[0], hi[0]))),
                             indexing="ij")
    d = np.sqrt(((xx - c[0]) * sp[0]) ** 2 + ((yy - c[1]) * sp[1]) ** 2 + ((zz - c[2]) * sp[2]) ** 2)
    sphere = d <= grow * R
    core_vals = hu[d <= max(0.35 * R, float(sp.max()))]
    shell = hu[(d > (grow + 0.05) * R) & (d <= (grow + 0.05) * R + 2 * float(sp.max()))]
    core = float(np.median(core_vals)) if core_vals.size else float(hu.max())
    background = float(np.percentile(shell, 25)) if shell.size else -850.0
    thr = float(np.clip((core + background) / 2.0, -750.0, -250.0))
    dense = (hu > thr) & sphere
    lab, n = ndimage.label(dense)
    if n:
        inner = lab[(d <= max(0.5 * R, float(sp.max()))) & dense]
        if inner.size:
            keep = np.bincount(inner, minlength=n + 1)
            keep[0] = 0
            dense = lab == int(np.argmax(keep))
        else:
            dense = np.zeros_like(dense)
    if dense.sum() < max(1, 0.05 * sphere.sum()):
        return box, d <= R, False
    return box, dense, True


MAX_CENTRE_SHIFT = 0.5  # of the predicted radius: how far the nodule's own mask may move the network's centre


def refined_centre(ct: CTVolume, box: tuple[slice, ...], mask: np.ndarray, centre_lps: np.ndarray,
                   diameter_mm: float) -> np.ndarray:
    """The centroid of the nodule's own voxels where it lies near the network's centre, else that centre.

    The network places the centre to within a cell's offset; a lobulated or spiculated nodule's bulk
    can sit a few mm off. The measured mask knows this image; the cap keeps a mask that leaked into a
    vessel or the chest wall from dragging the finding away. On the test phantoms (seed 7) this turned a
    7.5 mm lobulated nodule that the network placed 3.9 mm off (outside its radius) into a hit.
    """
    if not mask.any():
        return np.asarray(centre_lps, float)
    idx = np.argwhere(mask).mean(axis=0) + np.array([b.start for b in box])  # z, y, x
    centroid = np.asarray(ct.index_to_world(idx[::-1]), float)
    if np.linalg.norm(centroid - centre_lps) > MAX_CENTRE_SHIFT * diameter_mm / 2.0:
        return np.asarray(centre_lps, float)
    return centroid


def equivalent_diameter(volume_mm3: float) -> float:
    """Diameter of the sphere of that volume (how LIDC/LUNA16 reference diameters relate to volumes)."""
    return float((6.0 * volume_mm3 / np.pi) ** (1.0 / 3.0))


def combined_diameter(regressed_mm: float, measured_mm: float | None) -> float:
    """The reported size: the mean of the network's regressed diameter and the nodule's own mask.

    Two independent estimates: the regression head knows nodules as the training data showed them, the
    mask measures this image. Where the images differ from the training data (phantoms → real CT) the
    measurement holds better (LIDC-IDRI-0001: regression 31 mm, mask 23.8 mm, readers 23.4 mm); on the
    validation phantoms the mean costs 0.03 mm of MAE against the regression alone. Without a measured
    mask (sphere fallback) the regression stands alone.
    """
    if measured_mm is None:
        return float(regressed_mm)
    return float(0.5 * (regressed_mm + measured_mm))


def label_map_dtype(count: int) -> type:
    """The smallest label map type that numbers ``count`` nodules."""
    return np.uint8 if count <= np.iinfo(np.uint8).max else np.uint16


def measure_findings(ct: CTVolume, findings: list[Peak], grid: ModelGrid, check: Callable[[], None] | None = None,
                     into: np.ndarray | None = None) -> tuple[np.ndarray, list[Nodule]]:
    """The nodules of ``findings`` (most probable first) measured on ``ct``: the label map on ct's grid (label
    ``i``: nodule ``i``; where two masks touch, the more probable nodule keeps the voxels) and each nodule with
    its volume, its size (:func:`combined_diameter`) and its centre (:func:`refined_centre`). ``check()`` is
    called before each nodule (it raises to stop). ``into``: a zeroed array of ct's shape to write the labels
    into (a view of a label map stored in another voxel order); a new one where None."""
    labels = np.zeros(ct.array.shape, label_map_dtype(len(findings))) if into is None else into
    nodules: list[Nodule] = []
    voxel_mm3 = float(np.prod(ct.spacing))
    for i, p in enumerate(findings, start=1):
        if check is not None:
            check()
        centre = grid.voxel_to_world(p.position_vox)
        box, mask, measured = grow_mask(ct, centre, p.diameter_mm)
        region = labels[box]
        own = mask & (region == 0)  # where two masks touch, the more probable nodule keeps the voxels
        region[own] = i
        volume = float(own.sum()) * voxel_mm3
        measured = measured and volume > 0  # a mask a more probable neighbour took whole measures nothing
        measured_d = equivalent_diameter(volume) if measured else None
        peak_centre = centre
        if measured:
            centre = refined_centre(ct, box, own, peak_centre, p.diameter_mm)
        long_axis = round(longest_axial_diameter(own, ct.spacing), 1) if measured else None
        nodules.append(Nodule(number=i, center_lps=tuple(float(v) for v in centre), probability=p.probability,
                              diameter_mm=combined_diameter(p.diameter_mm, measured_d), malignancy=p.malignancy,
                              volume_mm3=volume, long_axis_mm=long_axis,
                              sphere_diameter_mm=None if measured_d is None else round(measured_d, 1),
                              **characterisation(p),
                              extra={"regressed_diameter_mm": round(p.diameter_mm, 2),
                                     "centre_moved_mm": round(float(np.linalg.norm(centre - peak_centre)), 2)}))
    return labels, nodules


def characterisation(p: Peak) -> dict:
    """The Nodule fields the type and margin heads give a finding: the most probable class of each and every
    class's probability (the heads' softmax at the finding's cell, averaged over the test-time passes as
    logits); nothing for a model without those heads (the Nodule's defaults: type "solid", margin "unknown")."""
    from ..model.model import MARGIN_CLASSES, TYPE_CLASSES

    fields: dict = {}
    if p.type_probabilities is not None:
        probs = {c: round(float(v), 4) for c, v in zip(TYPE_CLASSES, p.type_probabilities)}
        fields.update(nodule_type=TYPE_CLASSES[int(np.argmax(p.type_probabilities))], type_probabilities=probs)
    if p.margin_probabilities is not None:
        probs = {c: round(float(v), 4) for c, v in zip(MARGIN_CLASSES, p.margin_probabilities)}
        fields.update(margin=MARGIN_CLASSES[int(np.argmax(p.margin_probabilities))], margin_probabilities=probs)
    return fields


#: HU at and above which a voxel of a part-solid nodule's mask is solid. Ground glass lies at about -750 to
#: -300 HU, soft tissue near 0 to 60 HU; -300 HU is the usual cut between the two in the measurement literature
#: (e.g. Lee J.H. et al., PLoS One 2018;13:e0205490, which compares -300 with lower thresholds).
SOLID_COMPONENT_HU = -300.0


def solid_component_mm(hu: np.ndarray, mask: np.ndarray, spacing_xyz) -> float:
    """The mean diameter of a nodule's solid component, as Lung-RADS measures a solid component.

    Solid: the mask's voxels at or above :data:`SOLID_COMPONENT_HU`, their largest connected part. Its diameter:
    on the axial slice where that part is largest, the mean of its long axis (the longest calliper width) and
    its short axis (the width perpendicular to the long one), each the extent of the pixel centres along the axis
    plus half a pixel: unbiased on round cores (digital disks of 4 to 12 mm at 0.7 mm pixels, any sub-pixel
    position: mean error +0.03 mm, within -0.3 to +0.2 mm; a whole pixel would add +0.4 mm). ``hu`` and
    ``mask``: (z, y, x) arrays of one box. 0.0 where nothing in the mask is solid.
    """
    solid = np.asarray(mask, bool) & (np.asarray(hu) >= SOLID_COMPONENT_HU)
    lab, n = ndimage.label(solid)
    if n == 0:
        return 0.0
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    sizes[0] = 0
    part = lab == int(np.argmax(sizes))
    z = int(np.argmax(part.sum(axis=(1, 2))))
    return axial_mean_diameter(part[z], (float(spacing_xyz[1]), float(spacing_xyz[0])))


def axial_mean_diameter(region_yx: np.ndarray, spacing_yx: tuple[float, float]) -> float:
    """The mean of the long and short axes of a 2-D region (y, x) in mm (:func:`axial_axes`)."""
    return 0.5 * sum(axial_axes(region_yx, spacing_yx))


def longest_axial_diameter(mask_zyx: np.ndarray, spacing_xyz) -> float:
    """A mask's longest axial diameter (mm), as a mass is measured on CT: the long axis (:func:`axial_axes`) on
    the axial slice where the mask is largest. 0.0 for an empty mask."""
    mask_zyx = np.asarray(mask_zyx, bool)
    if not mask_zyx.any():
        return 0.0
    z = int(np.argmax(mask_zyx.sum(axis=(1, 2))))
    return axial_axes(mask_zyx[z], (float(spacing_xyz[1]), float(spacing_xyz[0])))[0]


def axial_axes(region_yx: np.ndarray, spacing_yx: tuple[float, float]) -> tuple[float, float]:
    """The long and short axes of a 2-D region (y, x) in mm: the long axis the largest calliper width over the
    directions between the region's outermost pixels, the short one its width perpendicular; each the extent of
    the pixel centres along the axis plus half a pixel."""
    pts = np.argwhere(region_yx).astype(float) * np.asarray(spacing_yx)
    if len(pts) == 0:
        return 0.0, 0.0
    hull_pts = _hull_points(pts)
    sy, sx = spacing_yx
    best, axis = -1.0, np.array([0.0, 1.0])
    for i in range(len(hull_pts)):
        d = hull_pts[i + 1:] - hull_pts[i]
        if not len(d):
            continue
        lengths = np.hypot(d[:, 0], d[:, 1])
        j = int(np.argmax(lengths))
        if lengths[j] > best:
            best, axis = float(lengths[j]), d[j] / lengths[j] if lengths[j] > 0 else axis

    def width(u: np.ndarray) -> float:
        proj = pts @ u
        return float(proj.max() - proj.min()) + 0.5 * float(np.hypot(u[0] * sy, u[1] * sx))

    return width(axis), width(np.array([-axis[1], axis[0]]))


def _hull_points(pts: np.ndarray) -> np.ndarray:
    """The convex hull's vertices of 2-D points (all points where they are fewer than three or collinear)."""
    from scipy.spatial import ConvexHull, QhullError

    if len(pts) < 3:
        return pts
    try:
        return pts[ConvexHull(pts).vertices]
    except QhullError:
        return pts


def measure_solid_components(ct: CTVolume, labels: np.ndarray, nodules: list[Nodule]) -> None:
    """Set ``solid_component_mm`` (:func:`solid_component_mm`) of each part-solid nodule from its own voxels:
    label ``n.number`` of ``labels`` (z, y, x, on ct's grid). Other types keep None (no solid component to
    measure: solid and calcified nodules are solid throughout, ground-glass ones have none)."""
    part_solid = [n for n in nodules if n.nodule_type == "part-solid"]
    if not part_solid:
        return
    boxes = ndimage.find_objects(labels)
    for n in part_solid:
        box = boxes[n.number - 1] if n.number - 1 < len(boxes) else None
        if box is None:
            continue  # nothing of its own left (another nodule's mask took its voxels)
        n.solid_component_mm = round(solid_component_mm(ct.array[box], labels[box] == n.number, ct.spacing), 1)
