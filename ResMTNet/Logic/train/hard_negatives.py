"""Hard-negative mining: the network's own false findings on its training cases, as places to train on.

The false findings that decide the 2 FP/scan point are few and particular (vessels seen end-on, airway
walls, dots on the pleura). Negative windows drawn at random, or on any dense structure in the lungs,
seldom land on exactly those. Part-way through training, the network is run over its own training
cases and its findings away from every nodule become the cases' ``negatives``; from then on a share of
the negative windows is centred on them (bootstrapping, as in the LUNA16 false-positive-reduction
systems). The nodules themselves are never negatives: a finding counts only when it lies clear of every
nodule's sphere, small ones included.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch

from ..data.training_data import TrainCase
from ..model.model import ResMTNet

# a finding is a false one when its centre lies further than this from every nodule's surface (mm)
CLEAR_OF_NODULE_MM = 1.5
# nodules smaller than this count as this large: their predicted centres scatter more than their radius
MIN_NODULE_RADIUS_MM = 3.0


def false_findings(net: ResMTNet, case: TrainCase, device: torch.device | str, floor: float) -> np.ndarray:
    """Centres (voxel z, y, x on the case's grid) of the network's findings of probability ``floor`` or more
    that lie clear of every nodule, (M, 3) float32, most probable first."""
    from ..detect.pipeline import find_peaks
    from ..model.model_io import LoadedModel

    peaks = find_peaks(LoadedModel(net, {}, None), case.image.astype(np.float32), torch.device(device), floor=floor)
    pos = np.array([p.position_vox for p in peaks], float).reshape(-1, 3)
    radius = np.maximum(np.asarray(case.diameters, float) / 2.0, MIN_NODULE_RADIUS_MM) + CLEAR_OF_NODULE_MM
    centers = np.asarray(case.centers, float).reshape(-1, 3)
    d_mm = np.linalg.norm((pos[:, None, :] - centers[None, :, :]) * case.spacing, axis=2)  # (peaks, nodules)
    return pos[np.all(d_mm > radius, axis=1)].astype(np.float32)


def mine_false_findings(net: ResMTNet, cases: Sequence[TrainCase], device: torch.device | str, floor: float,
                        progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """:func:`false_findings` of every case, by case id (the network is left in the mode it was in)."""
    was_training = net.training
    net.eval()
    mined = {}
    try:
        for k, c in enumerate(cases):
            mined[c.case_id] = false_findings(net, c, device, floor)
            if progress is not None:
                progress(k + 1, len(cases))
    finally:
        if was_training:
            net.train()
    return mined


def with_negatives(cases: Sequence[TrainCase], mined: Mapping[str, np.ndarray]) -> list[TrainCase]:
    """Copies of ``cases`` whose negatives are their own (e.g. LUNA16 candidates) and the mined ones."""
    out = []
    for c in cases:
        extra = mined.get(c.case_id)
        if extra is None or len(extra) == 0:
            out.append(c)
        else:
            out.append(replace(c, negatives=np.concatenate([c.negatives.reshape(-1, 3),
                                                            np.asarray(extra, np.float32).reshape(-1, 3)])))
    return out
