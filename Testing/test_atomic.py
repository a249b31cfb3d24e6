"""A write that fails part way leaves the old file as it was and no temporary file behind."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch
from resmtnet.data.training_data import TrainCase
from resmtnet.model.model import ModelConfig, ResMTNet
from resmtnet.model.model_io import read_checkpoint, save_checkpoint
from resmtnet.util.atomic import atomic_write


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-"))


def test_atomic_write_replaces_whole_or_keeps_the_old_file(tmp_path):
    target = tmp_path / "sub" / "result.json"
    atomic_write(target, lambda p: p.write_text("first"))
    assert target.read_text() == "first"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # as open() would make it, not mkstemp's 0600

    def fails_half_way(p):
        p.write_text("sec")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, fails_half_way)
    assert target.read_text() == "first" and _leftovers(target.parent) == []

    # the temporary name ends with the target's whole name, so writers that pick a format by it pick the same
    seen = []
    atomic_write(tmp_path / "ct.nii.gz", lambda p: (seen.append(p.name), p.write_bytes(b"x")))
    assert seen[0].startswith(".tmp-") and seen[0].endswith("-ct.nii.gz")


def test_a_training_case_that_fails_to_save_leaves_the_cached_one(tmp_path):
    case = TrainCase("c", np.full((8, 8, 8), -800, np.int16), np.zeros(3), 1.5, np.array([[4.0, 4.0, 4.0]]),
                     np.array([5.0], np.float32), np.array([3.0], np.float32), np.zeros((0, 3)))
    path = tmp_path / "c.npz"
    case.save(path)
    # an object the archive can't pickle fails after part of the archive is written
    broken = TrainCase("c", np.array([lambda: 0], dtype=object), case.origin, case.spacing, case.centers,
                       case.diameters, case.malignancy, case.negatives)
    with pytest.raises(Exception):  # noqa: B017 — pickle raises its own kinds
        broken.save(path)
    again = TrainCase.load(path, "c")
    np.testing.assert_array_equal(again.image, case.image)
    assert _leftovers(tmp_path) == []


def test_a_checkpoint_that_fails_to_save_leaves_the_old_one(tmp_path):
    net = ResMTNet(ModelConfig(stem_channels=8, stage_channels=(8, 8, 8, 8), blocks_per_stage=(0, 1, 1, 1),
                               pyramid_channels=8, head_channels=8))
    path = tmp_path / "model.pt"
    save_checkpoint(path, net, metrics={"epoch": 1})
    with pytest.raises(Exception):  # noqa: B017
        save_checkpoint(path, net, metrics={"epoch": 2}, extra={"unpicklable": lambda: 0})
    assert read_checkpoint(path)["metrics"] == {"epoch": 1}
    assert _leftovers(tmp_path) == []
    key = "encoder.stem.0.weight"
    assert torch.equal(read_checkpoint(path)["state_dict"][key], net.state_dict()[key])
