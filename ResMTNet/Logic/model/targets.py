"""Target coding and decoding for the centre-map detector: nodules ↔ output-cell maps.

Output cell ``k`` (stride ``s``) covers model-grid voxels ``[k*s, (k+1)*s)``; its centre is the voxel
position ``k*s + (s-1)/2``. A nodule at voxel position ``v`` lies at cell coordinate
``u = (v - (s-1)/2) / s``: its centre cell is ``round(u)`` and its offset target ``u - round(u)``.
Decoding inverts exactly that, so encode → decode gives the centre back (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# probability-of-malignancy target per LIDC rating: 4-5 malignant, 1-2 benign, 3 (indeterminate) a soft 0.5,
# so the many indeterminate nodules still teach the head without pulling it either way; 0 = unrated
RATING_TARGET = {1: 0.0, 2: 0.0, 3: 0.5, 4: 1.0, 5: 1.0}
#: the class index of a nodule whose type or margin is unknown; cross-entropy ignores its cells
UNLABELLED = -1


def class_indices(names: Sequence[str | None], classes: Sequence[str]) -> np.ndarray:
    """(N,) int8: each name's index in ``classes``; :data:`UNLABELLED` for None or a name not among them."""
    return np.array([classes.index(n) if n in classes else UNLABELLED for n in names], np.int8).reshape(-1)


@dataclass
class Targets:
    heat: np.ndarray  # (Z, Y, X) float32 in [0, 1], exactly 1 at centre cells
    offset: np.ndarray  # (3, Z, Y, X) float32, cells from the cell to the centre
    offset_mask: np.ndarray  # (Z, Y, X) float32, 1 at centre cells
    log_diameter: np.ndarray  # (Z, Y, X) float32
    size_mask: np.ndarray  # (Z, Y, X) float32, centre cells and their neighbours inside the nodule
    malignant: np.ndarray  # (Z, Y, X) float32, RATING_TARGET of the rating
    malig_mask: np.ndarray  # (Z, Y, X) float32, where the nodule has a rating (1-5)
    # (Z, Y, X) int64 class index (TYPE_CLASSES / MARGIN_CLASSES) where malignancy is taught (the centre cell and
    # its neighbours inside the nodule), UNLABELLED elsewhere and where the nodule's class is unknown
    nodule_type: np.ndarray
    margin: np.ndarray


def voxel_to_cell(v: np.ndarray, stride: int) -> np.ndarray:
    return (np.asarray(v, np.float64) - (stride - 1) / 2.0) / stride


def cell_to_voxel(u: np.ndarray, stride: int) -> np.ndarray:
    return np.asarray(u, np.float64) * stride + (stride - 1) / 2.0


def encode(shape_cells: tuple[int, int, int], centers_vox: np.ndarray, diameters_mm: np.ndarray,
           ratings: np.ndarray, stride: int, spacing_mm: float, nodule_types: np.ndarray | None = None,
           margins: np.ndarray | None = None) -> Targets:
    """Targets on a grid of ``shape_cells`` for nodules at voxel positions ``centers_vox`` (N, 3) z, y, x.

    The centre offset is taught on each nodule's centre cell only. ``nodule_types`` and ``margins``: (N,) class
    indices (:func:`class_indices`; None: all unknown).
    """
    Z, Y, X = shape_cells
    heat = np.zeros(shape_cells, np.float32)
    offset = np.zeros((3,) + tuple(shape_cells), np.float32)
    offset_mask = np.zeros(shape_cells, np.float32)
    logd = np.zeros(shape_cells, np.float32)
    size_mask = np.zeros(shape_cells, np.float32)
    malignant = np.zeros(shape_cells, np.float32)
    malig_mask = np.zeros(shape_cells, np.float32)
    type_map = np.full(shape_cells, UNLABELLED, np.int64)
    margin_map = np.full(shape_cells, UNLABELLED, np.int64)
    n = len(diameters_mm)
    nodule_types = np.full(n, UNLABELLED) if nodule_types is None else np.asarray(nodule_types).reshape(-1)
    margins = np.full(n, UNLABELLED) if margins is None else np.asarray(margins).reshape(-1)
    zz, yy, xx = np.meshgrid(np.arange(Z), np.arange(Y), np.arange(X), indexing="ij")
    order = np.argsort(-np.asarray(diameters_mm))  # small nodules written last win shared cells
    for i in order:
        u = voxel_to_cell(centers_vox[i], stride)
        k = np.round(u).astype(int)
        if np.any(k < 0) or np.any(k >= np.array(shape_cells)):
            continue
        radius_cells = diameters_mm[i] / 2.0 / (spacing_mm * stride)
        sigma = max(0.5, 0.4 * radius_cells)
        d2 = (zz - u[0]) ** 2 + (yy - u[1]) ** 2 + (xx - u[2]) ** 2
        np.maximum(heat, np.exp(-d2 / (2 * sigma * sigma)).astype(np.float32), out=heat)
        heat[tuple(k)] = 1.0
        near = ((np.abs(zz - k[0]) <= 1) & (np.abs(yy - k[1]) <= 1) & (np.abs(xx - k[2]) <= 1)
                & (d2 <= max(radius_cells, 1.0) ** 2))
        near[tuple(k)] = True
        offset[:, k[0], k[1], k[2]] = u - k
        offset_mask[tuple(k)] = 1.0
        logd[near] = np.log(max(diameters_mm[i], 1.0))
        size_mask[near] = 1.0
        r = int(ratings[i])
        if r in RATING_TARGET:
            malignant[near] = RATING_TARGET[r]
            malig_mask[near] = 1.0
        else:
            malig_mask[near] = 0.0
        type_map[near] = int(nodule_types[i])  # UNLABELLED where unknown: a larger neighbour's label is not this one's
        margin_map[near] = int(margins[i])
    return Targets(heat, offset, offset_mask, logd, size_mask, malignant, malig_mask, type_map, margin_map)


@dataclass
class Peak:
    position_vox: np.ndarray  # z, y, x continuous voxel position on the model grid
    probability: float
    diameter_mm: float
    malignancy: float
    # softmax of the type / margin heads at the peak's cell, in TYPE_CLASSES / MARGIN_CLASSES order (None: no heads)
    type_probabilities: np.ndarray | None = None
    margin_probabilities: np.ndarray | None = None


def decode(outputs: dict[str, torch.Tensor], stride: int, threshold: float = 0.05, max_peaks: int = 100
           ) -> list[Peak]:
    """Peaks of the centre map (local 3x3x3 maxima above ``threshold``) of one volume (batch size 1)."""
    heat = torch.sigmoid(outputs["center"].float())[0, 0]
    pooled = F.max_pool3d(heat[None, None], 3, 1, 1)[0, 0]
    keep = (heat == pooled) & (heat >= threshold)
    idx = torch.nonzero(keep)
    if len(idx) == 0:
        return []
    probs = heat[keep]
    order = torch.argsort(probs, descending=True)[:max_peaks]
    idx, probs = idx[order], probs[order]
    off = outputs["offset"].float()[0][:, idx[:, 0], idx[:, 1], idx[:, 2]].T
    logd = outputs["log_diameter"].float()[0, 0][idx[:, 0], idx[:, 1], idx[:, 2]]
    mal = torch.sigmoid(outputs["malignancy"].float()[0, 0][idx[:, 0], idx[:, 1], idx[:, 2]])
    cells = idx.double().numpy() + off.clamp(-1.5, 1.5).double().numpy()
    vox = cell_to_voxel(cells, stride)
    classes = {k: torch.softmax(outputs[k].float()[0][:, idx[:, 0], idx[:, 1], idx[:, 2]].T, dim=1).double().numpy()
               for k in ("nodule_type", "margin") if k in outputs}
    return [Peak(vox[i], float(probs[i]), float(np.exp(float(logd[i]))), float(mal[i]),
                 classes["nodule_type"][i] if "nodule_type" in classes else None,
                 classes["margin"][i] if "margin" in classes else None) for i in range(len(idx))]


def merge_duplicates(peaks: list[Peak], spacing_mm: float) -> list[Peak]:
    """Keep the most probable of peaks whose centres lie inside each other's predicted sphere."""
    kept: list[Peak] = []
    for p in sorted(peaks, key=lambda q: -q.probability):
        dup = False
        for k in kept:
            dist_mm = float(np.linalg.norm((p.position_vox - k.position_vox) * spacing_mm))
            if dist_mm < max(k.diameter_mm, p.diameter_mm) / 2.0:
                dup = True
                break
        if not dup:
            kept.append(p)
    return kept
