"""The training loop's numerics: the precision it picks, runs that repeat exactly, and a loss that breaks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from resmtnet.errors import NonFiniteLossError
from resmtnet.inference import cpu_has_native_bf16
from resmtnet.model_io import read_checkpoint
from resmtnet.train_cli import tiny_model_config
from resmtnet.training import MIN_BF16_FEATURE_VOXELS, TrainConfig, WeightAverage, train, training_precision
from resmtnet.training_data import TrainCase


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
    """Two runs with one seed end with identical, finite weights. Before the precision rule, bfloat16 weight
    gradients of the 2-voxel-deep maps came from uninitialised memory: garbage, different every run."""
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


def test_a_weight_average_follows_the_network_with_its_ramped_decay():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    average = WeightAverage(net, decay=0.9)
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    average.update(net)  # first update: decay min(0.9, 2/11)
    d = 2 / 11
    assert torch.allclose(average.net.weight, d * start + (1 - d) * net.weight)
    for _ in range(200):
        average.update(net)
    assert average.decay_now() == 0.9
    assert torch.allclose(average.net.weight, net.weight, atol=1e-6)  # converges to weights that stand still


def test_a_run_with_a_weight_average_saves_the_average_and_resumes_exactly(tmp_path):
    """Checkpoints hold the averaged weights, with the optimiser's own beside them; two epochs in one go and
    one epoch, then a resumed second, end with the same weights, the average's and the network's."""
    cases = [_case(0), _case(1)]
    # a pool refreshed every epoch draws each epoch's windows from that epoch's seed, so a resumed run sees
    # the windows a straight run sees (a fixed pool keeps one stream going across epochs)
    quiet = {"device": "cpu", "log": lambda line: None, "progress_bar": False, "refresh": lambda: cases}
    straight = read_checkpoint(train(cases, tmp_path / "a", _cfg(epochs=2, ema_decay=0.9), tiny_model_config(3.0),
                                     resume=False, **quiet))
    train(cases, tmp_path / "b", _cfg(epochs=1, ema_decay=0.9), tiny_model_config(3.0), resume=False, **quiet)
    resumed = read_checkpoint(train(cases, tmp_path / "b", _cfg(epochs=2, ema_decay=0.9), tiny_model_config(3.0),
                                    resume=True, **quiet))
    online = straight["train_state"]["online_state_dict"]
    assert straight["train_state"]["ema_updates"] == resumed["train_state"]["ema_updates"] == 6
    assert any(not torch.equal(v, online[k]) for k, v in straight["state_dict"].items())
    for k, v in straight["state_dict"].items():
        assert torch.equal(v, resumed["state_dict"][k]), k
        assert torch.equal(online[k], resumed["train_state"]["online_state_dict"][k]), k


def test_a_head_only_fine_tune_changes_those_heads_and_nothing_else(tmp_path):
    """`train_heads`: the named heads learn, every other weight stays the starting checkpoint's, so the
    centre and offset maps of a file re-taught to size are exactly those of the file it came from."""
    from resmtnet.model import HEAD_MODULES, ResMTNet

    torch.manual_seed(5)
    start = {k: v.clone() for k, v in ResMTNet(tiny_model_config(3.0)).state_dict().items()}
    last = train([_case(0), _case(1)], tmp_path / "run", _cfg(train_heads=("size", "malignancy")),
                 tiny_model_config(3.0), resume=False, device="cpu", log=lambda line: None, progress_bar=False,
                 init_state=start)
    tuned = read_checkpoint(last)["state_dict"]
    taught = HEAD_MODULES["size"] + HEAD_MODULES["malignancy"]
    for k, v in tuned.items():
        if k.split(".")[0] in taught:
            continue
        assert torch.equal(v, start[k]), k
    assert any(not torch.equal(tuned[k], start[k]) for k in tuned if k.split(".")[0] in HEAD_MODULES["size"])
    with pytest.raises(ValueError, match="unknown task head"):
        train([_case(0)], tmp_path / "bad", _cfg(train_heads=("diameter",)), tiny_model_config(3.0),
              resume=False, device="cpu", log=lambda line: None, progress_bar=False)
