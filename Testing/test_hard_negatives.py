"""Hard-negative mining: the network's own false findings, clear of every nodule, become training windows."""

from __future__ import annotations

import numpy as np
import torch
from resmtnet.cli.train_cli import tiny_model_config
from resmtnet.data.training_data import TrainCase
from resmtnet.detect.pipeline import find_peaks
from resmtnet.model.model import ModelConfig, ResMTNet
from resmtnet.model.model_io import LoadedModel
from resmtnet.train.hard_negatives import (
    CLEAR_OF_NODULE_MM,
    MIN_NODULE_RADIUS_MM,
    false_findings,
    mine_false_findings,
    with_negatives,
)
from resmtnet.train.training import NEGATIVE_CLEARANCE_MM, PatchSampler, TrainConfig


def _case(seed: int = 0) -> TrainCase:
    rng = np.random.default_rng(seed)
    img = rng.normal(-850, 60, (48, 48, 48)).astype(np.int16)
    img[20:28, 20:28, 20:28] = 30  # a nodule ...
    img[10:12, 30:32, 4:44] = 40  # ... and a vessel
    centers = np.array([[23.5, 23.5, 23.5], [40.0, 8.0, 8.0]], np.float32)  # the second one tiny (2 mm)
    return TrainCase(f"synthetic-{seed}", img, np.zeros(3), 1.5, centers, np.array([12.0, 2.0], np.float32),
                     np.array([4, 2], np.int16), np.zeros((0, 3), np.float32))


def test_false_findings_are_the_peaks_clear_of_every_nodule():
    torch.manual_seed(0)
    net = ResMTNet(tiny_model_config(1.5)).eval()
    case = _case()
    floor = 0.002  # an untrained network: low, so that it finds plenty, near the nodules and away from them
    peaks = find_peaks(LoadedModel(net, {}, None), case.image.astype(np.float32), torch.device("cpu"), floor=floor)
    found = false_findings(net, case, "cpu", floor)
    assert found.dtype == np.float32 and found.shape[1] == 3
    radius = np.maximum(case.diameters / 2, MIN_NODULE_RADIUS_MM) + CLEAR_OF_NODULE_MM
    clear = [p.position_vox for p in peaks
             if np.all(np.linalg.norm((case.centers - p.position_vox) * 1.5, axis=1) > radius)]
    near = len(peaks) - len(clear)
    assert len(clear) > 0 and near > 0, (len(clear), near)  # the test sees both kinds
    np.testing.assert_allclose(found, np.asarray(clear, np.float32).reshape(-1, 3))


def test_mining_covers_every_case_and_leaves_the_network_as_it_was():
    torch.manual_seed(1)
    net = ResMTNet(tiny_model_config(1.5)).train()
    cases = [_case(0), _case(1)]
    seen = []
    mined = mine_false_findings(net, cases, "cpu", 0.002, progress=lambda done, total: seen.append((done, total)))
    assert set(mined) == {c.case_id for c in cases} and net.training
    assert seen == [(1, 2), (2, 2)]
    np.testing.assert_array_equal(mined[cases[0].case_id], false_findings(net.eval(), cases[0], "cpu", 0.002))


def test_negative_windows_centre_on_the_mined_findings():
    """Half the negative windows of a case with negatives sit on one of them (as on LUNA16's candidates)."""
    img = np.full((96, 96, 96), -850, np.int16)
    img[10:16, 10:16, 10:16] = 30  # a nodule, far from the rest
    own, mined_point = np.array([[16.0, 80.0, 80.0]], np.float32), np.array([[80.0, 80.0, 16.0]], np.float32)
    img[80, 80, 16] = 2000  # marks the mined point: a window holds it or not
    case = TrainCase("synthetic", img, np.zeros(3), 1.5, np.array([[12.5, 12.5, 12.5]], np.float32),
                     np.array([9.0], np.float32), np.array([3], np.int16), own)
    (withneg,) = with_negatives([case], {"synthetic": mined_point})
    np.testing.assert_array_equal(withneg.negatives, np.concatenate([own, mined_point]))
    assert with_negatives([case], {})[0] is case and len(case.negatives) == 1  # the original is left alone
    # no windows on dense voxels: the mark is one, and it would be the only one (the nodule is kept clear)
    cfg = TrainConfig(patch=32, positive_fraction=0.0, hard_negative_fraction=0.0, scale_range=(1.0, 1.0))

    def share_holding_the_mark(c: TrainCase, n: int = 800) -> float:
        sampler = PatchSampler([c], cfg, ModelConfig(), seed=0)
        return float(np.mean([sampler.sample()[0].max() >= 2000 for _ in range(n)]))

    # a quarter of the windows: half are drawn on negatives, and the mined point is one of two
    assert 0.2 < share_holding_the_mark(withneg) < 0.33
    assert share_holding_the_mark(case) < 0.06  # without it only the windows drawn anywhere hold it


def test_dense_windows_are_never_centred_near_a_lesion():
    """The nodule is the densest thing in the lung: without the clearance its surface would be a window centre
    taught as background (on a real case, its own cancer and the tissue around it)."""
    case = _case()
    dense = PatchSampler([case], TrainConfig(), ModelConfig(), seed=0)._dense_points(0)
    assert len(dense)  # the vessel is still there
    for c, d in zip(case.centers, case.diameters):
        assert np.linalg.norm((dense - c) * case.spacing, axis=1).min() >= d / 2 + NEGATIVE_CLEARANCE_MM
    img = case.image[::2, ::2, ::2]
    assert (img[10:14, 10:14, 10:14] > -500).any()  # the nodule's voxels are dense: the clearance removed them
