"""The training loop's numerics: the precision it picks, runs that repeat exactly, and a loss that breaks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from resmtnet.cli.train_cli import tiny_model_config
from resmtnet.data.training_data import TrainCase
from resmtnet.model.model_io import read_checkpoint
from resmtnet.train.training import MIN_BF16_FEATURE_VOXELS, TrainConfig, train, training_precision
from resmtnet.util.errors import NonFiniteLossError
from resmtnet.util.runtime import cpu_has_native_bf16


def _case(seed: int) -> TrainCase:
    rng = np.random.default_rng(seed)
    img = rng.normal(-850, 60, (40, 40, 40)).astype(np.int16)
    img[16:22, 16:22, 16:22] = 30  # a nodule
    img[6:8, 26:28, 4:36] = 40  # a vessel
    return TrainCase(f"synthetic-{seed}", img, np.zeros(3), 3.0, np.array([[18.5, 18.5, 18.5]], np.float32),
                     np.array([18.0], np.float32), np.array([3], np.int16), np.zeros((0, 3), np.float32))


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"patch": 32, "batch_size": 1, "epochs": 1, "steps_per_epoch": 3, "threads": 1, **kw})


def test_cpu_training_precision_avoids_bfloat16_where_the_deepest_maps_are_tiny():
    mcfg = tiny_model_config(3.0)  # four stride-2 stages: the deepest maps are patch / 16 a side
    cpu = torch.device("cpu")
    assert training_precision(cpu, _cfg(amp=False), mcfg)[0] == torch.float32
    small, note = training_precision(cpu, _cfg(patch=32), mcfg)
    assert small == torch.float32
    big = training_precision(cpu, _cfg(patch=16 * MIN_BF16_FEATURE_VOXELS), mcfg)[0]
    if cpu_has_native_bf16():
        assert "2 voxel" in note and big == torch.bfloat16
    else:
        assert big == torch.float32


def test_a_small_window_run_repeats_weight_for_weight(tmp_path):
    """Two runs with one seed end with identical, finite weights. Without the precision rule, bfloat16 weight
    gradients of the 2-voxel-deep maps would come from uninitialised memory: garbage, different every run."""
    cases = [_case(0), _case(1)]
    states = []
    for run in ("a", "b"):
        last = train(cases, tmp_path / run, _cfg(), tiny_model_config(3.0), resume=False, device="cpu",
                     log=lambda line: None, progress_bar=False)
        states.append(read_checkpoint(last)["state_dict"])
    for k, v in states[0].items():
        assert torch.isfinite(v.float()).all(), k
        assert torch.equal(v, states[1][k]), k


def test_a_diverging_run_stops_with_a_clear_error_and_writes_no_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step \d+: the loss is (nan|inf)"):
        train([_case(0)], tmp_path / "run", _cfg(lr=1e35, steps_per_epoch=6), tiny_model_config(3.0),
              resume=False, device="cpu", log=lambda line: None, progress_bar=False)
    assert not (tmp_path / "run" / "last.pt").exists()
