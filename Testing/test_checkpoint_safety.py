"""Checkpoints are read without running code: a pickle payload is refused by every way a checkpoint comes in
(read_checkpoint, load_model, a training resume, the commands' --model and --init) and never runs; what a
checkpoint holds beyond tensors round-trips as plain values; a checkpoint that does not fit its network or
has an impossible threshold is one clear error."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from resmtnet.cli.cli import main
from resmtnet.cli.train_cli import tiny_model_config
from resmtnet.data.training_data import TrainCase
from resmtnet.model.model import ModelConfig, ResMTNet
from resmtnet.model.model_io import FORMAT, load_model, read_checkpoint, save_checkpoint, shipped_model_path
from resmtnet.train.training import TrainConfig, train
from resmtnet.util.errors import ResMTNetError


class _CreatesFile:
    """Unpickling this creates ``marker``: what a hostile checkpoint could do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def write_malicious(path: Path, kind: str) -> Path:
    """A file that looks like a Res-MTNet checkpoint and creates ``<path>.pwned`` when unpickled."""
    payload = {"format": FORMAT, "config": {}, "state_dict": {}, "hook": _CreatesFile(marker_of(path))}
    if kind == "torch":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    return path


def marker_of(path: Path) -> Path:
    return path.with_name(path.name + ".pwned")


def test_the_payload_really_runs_when_unpickled_unsafely(tmp_path):
    """The test's own premise: without weights_only the payload creates its file."""
    evil = write_malicious(tmp_path / "evil.pt", "torch")
    torch.load(evil, weights_only=False)
    assert marker_of(evil).exists()


@pytest.mark.parametrize("kind", ["torch", "pickle"])
def test_read_checkpoint_refuses_a_payload_without_running_it(tmp_path, kind):
    evil = write_malicious(tmp_path / f"evil-{kind}.pt", kind)
    with pytest.raises(ResMTNetError, match=r"refused: the file holds Python objects other than tensors") as e:
        read_checkpoint(evil)
    assert "\n" not in str(e.value) and str(evil) in str(e.value)
    assert not marker_of(evil).exists()
    with pytest.raises(ResMTNetError, match="refused"):
        load_model(evil)
    assert not marker_of(evil).exists()


@pytest.mark.parametrize("argv", [
    ["detect", "{ct}", "-o", "{tmp}/out", "--model", "{evil}", "--no-slicer-files"],
    ["evaluate", "--phantoms", "1", "--model", "{evil}", "-o", "{tmp}/out"],
    ["train", "-o", "{tmp}/out", "--init", "{evil}", "--set", "data.phantoms=1", "--epochs", "1"],
], ids=["detect", "evaluate", "train-init"])
@pytest.mark.parametrize("kind", ["torch", "pickle"])
def test_commands_refuse_a_payload_before_any_work(tmp_path, capsys, argv, kind):
    evil = write_malicious(tmp_path / "evil.pt", kind)
    ct = tmp_path / "ct.nrrd"  # never read: the model is loaded first
    args = [a.format(tmp=tmp_path, evil=evil, ct=ct) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refused" in err and str(evil) in err
    assert not marker_of(evil).exists()
    assert not (tmp_path / "out").exists()


def _case(seed: int) -> TrainCase:
    rng = np.random.default_rng(seed)
    img = rng.normal(-850, 60, (40, 40, 40)).astype(np.int16)
    img[16:22, 16:22, 16:22] = 30
    return TrainCase(f"synthetic-{seed}", img, np.zeros(3), 3.0, np.array([[18.5, 18.5, 18.5]], np.float32),
                     np.array([18.0], np.float32), np.array([3], np.int16), np.zeros((0, 3), np.float32))


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"patch": 32, "batch_size": 1, "epochs": 1, "steps_per_epoch": 2, "threads": 1, **kw})


@pytest.mark.parametrize("kind", ["torch", "pickle"])
def test_a_training_resume_refuses_a_payload_in_last_pt(tmp_path, kind):
    run = tmp_path / "run"
    run.mkdir()
    write_malicious(run / "last.pt", kind)
    with pytest.raises(ResMTNetError, match="refused"):
        train([_case(0)], run, _cfg(), tiny_model_config(3.0), resume=True, device="cpu", log=lambda s: None,
              progress_bar=False)
    assert not marker_of(run / "last.pt").exists()


def test_a_training_resume_reads_its_own_state_with_weights_only(tmp_path):
    """Optimizer, loss weights, history and mined negatives (NumPy arrays when saved) come back."""
    logs: list[str] = []
    last = train([_case(0)], tmp_path, _cfg(), tiny_model_config(3.0), resume=False, device="cpu",
                 log=logs.append, progress_bar=False)
    ck = torch.load(last, map_location="cpu", weights_only=True)
    assert ck["train_state"]["epoch"] == 1 and ck["train_state"]["optimizer"]["state"]
    train([_case(0)], tmp_path, _cfg(epochs=2), tiny_model_config(3.0), resume=True, device="cpu",
          log=logs.append, progress_bar=False)
    assert any(line.startswith(f"resumed from {last} at epoch 1") for line in logs)
    assert read_checkpoint(last)["train_state"]["epoch"] == 2


def test_a_resume_into_a_folder_of_another_network_is_one_clear_error(tmp_path):
    train([_case(0)], tmp_path, _cfg(), tiny_model_config(3.0), resume=False, device="cpu", log=lambda s: None,
          progress_bar=False)
    other = ModelConfig(stem_channels=8, stage_channels=(8, 8, 8, 8), blocks_per_stage=(0, 1, 1, 1),
                        pyramid_channels=8, head_channels=8, spacing_mm=3.0)
    with pytest.raises(ResMTNetError, match=r"last\.pt: its weights do not fit") as e:
        train([_case(0)], tmp_path, _cfg(epochs=2), other, resume=True, device="cpu", log=lambda s: None,
              progress_bar=False)
    assert "\n" not in str(e.value)


def test_non_tensor_content_is_saved_as_plain_values(tmp_path):
    state = np.random.RandomState(3).get_state()  # a tuple holding a uint32 array and NumPy scalars
    extra = {"train_state": {"mined_negatives": {"a": np.arange(6, dtype=np.float32).reshape(2, 3)},
                             "rng": state, "score": np.float64(0.5), "where": tmp_path}}
    save_checkpoint(tmp_path / "c.pt", ResMTNet(tiny_model_config(3.0)), extra=extra)
    back = torch.load(tmp_path / "c.pt", map_location="cpu", weights_only=True)["train_state"]
    mined = extra["train_state"]["mined_negatives"]["a"]
    np.testing.assert_array_equal(np.asarray(back["mined_negatives"]["a"]), mined)
    np.testing.assert_array_equal(np.asarray(back["rng"][1]), state[1])
    assert back["rng"][0] == "MT19937" and back["score"] == 0.5 and back["where"] == str(tmp_path)
    restored = np.random.RandomState()
    restored.set_state((back["rng"][0], np.asarray(back["rng"][1]), *back["rng"][2:]))
    assert restored.randint(1 << 30) == np.random.RandomState(3).randint(1 << 30)


def test_content_that_could_not_be_read_back_is_never_saved(tmp_path):
    with pytest.raises(TypeError, match=r"\['provenance'\]\['when'\]: a object cannot be stored"):
        save_checkpoint(tmp_path / "c.pt", ResMTNet(tiny_model_config(3.0)), provenance={"when": object()})
    assert list(tmp_path.iterdir()) == []


def test_the_shipped_weights_load_with_weights_only():
    ck = torch.load(shipped_model_path(), map_location="cpu", weights_only=True)
    assert ck["format"] == FORMAT and 0.0 < ck["decode"]["threshold"] < 1.0
    model = load_model()
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, ck["state_dict"][k].float()), k


def _tiny_checkpoint(path: Path, edit) -> Path:
    save_checkpoint(path, ResMTNet(tiny_model_config(3.0)))
    ck = torch.load(path, weights_only=True)
    edit(ck)
    torch.save(ck, path)
    return path


def _drop_a_weight(ck):
    ck["state_dict"].pop(sorted(ck["state_dict"])[0])


def _add_a_weight(ck):
    ck["state_dict"]["extra.weight"] = torch.zeros(3)


def _reshape_a_weight(ck):
    k = next(k for k, v in ck["state_dict"].items() if v.ndim == 5)
    ck["state_dict"][k] = torch.zeros(1, 1, 1, 1, 1)


def _threshold(value):
    def edit(ck):
        ck["decode"]["threshold"] = value
    return edit


@pytest.mark.parametrize(("edit", "message"), [
    (_drop_a_weight, r"do not fit the network its config describes: 1 missing \(e\.g\. "),
    (_add_a_weight, r"1 unexpected \(e\.g\. extra\.weight\)"),
    (_reshape_a_weight, r"1 of another shape \(e\.g\. .*: \[1, 1, 1, 1, 1\] in the file"),
    (_threshold("high"), r"decode\.threshold must be a number in \[0, 1\] \(got 'high'\)"),
    (_threshold(float("nan")), r"decode\.threshold must be a number in \[0, 1\] \(got nan\)"),
    (_threshold(1.5), r"decode\.threshold must be a number in \[0, 1\] \(got 1\.5\)"),
    (_threshold(None), r"decode\.threshold must be a number in \[0, 1\] \(got None\)"),
    (lambda ck: ck["config"].update(stage_channels="wide"), r"its config does not describe a Res-MTNet"),
    (lambda ck: ck.update(state_dict=[1, 2]), r"its state_dict is not a mapping of names to tensors"),
], ids=["missing", "unexpected", "shape", "threshold-text", "threshold-nan", "threshold-range", "threshold-none",
        "config", "state-dict-type"])
def test_a_checkpoint_that_does_not_fit_is_one_clear_error(tmp_path, edit, message):
    path = _tiny_checkpoint(tmp_path / "bad.pt", edit)
    with pytest.raises(ResMTNetError, match=message) as e:
        load_model(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
