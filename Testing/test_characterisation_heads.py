"""The nodule type and margin heads: their outputs, their labels (phantoms, LIDC ratings) through the targets,
old checkpoints without them, the Nodule fields they fill, and a heads-only run of `resmtnet train` that leaves
every other weight of its starting checkpoint as it was."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest_slicer import *  # noqa: F403  (the fixture untrained_checkpoint)
from resmtnet.cli.cli import main
from resmtnet.cli.train_cli import tiny_model_config
from resmtnet.data.datasets import PhantomFolderSource, TrainCaseCache
from resmtnet.data.lidc import margin_from_ratings
from resmtnet.data.phantom import MARGINS, NODULE_TYPES, generate_phantom, write_phantom_set
from resmtnet.detect.pipeline import detect_ct
from resmtnet.model.model import CHARACTERISATION_MODULES, MARGIN_CLASSES, TYPE_CLASSES, ModelConfig, ResMTNet
from resmtnet.model.model_io import load_model, read_checkpoint, save_checkpoint
from resmtnet.model.targets import UNLABELLED, class_indices, encode
from resmtnet.train.training import multitask_losses

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.toml"
HEADS_RECIPE = REPO / "configs" / "characterisation.toml"


def _tiny(heads: bool) -> ModelConfig:
    cfg = tiny_model_config(3.0)
    cfg.characterisation_heads = heads
    return cfg


def test_the_heads_speak_the_phantoms_vocabulary():
    assert list(TYPE_CLASSES) == NODULE_TYPES and list(MARGIN_CLASSES) == MARGINS


def test_heads_add_outputs_and_weights_beside_an_unchanged_network():
    torch.manual_seed(0)
    plain = ResMTNet(_tiny(False))
    torch.manual_seed(0)
    with_heads = ResMTNet(_tiny(True))
    x = torch.randn(2, 1, 32, 32, 32)
    out, out_heads = plain(x), with_heads(x)
    assert set(out) == {"center", "offset", "log_diameter", "malignancy"}
    assert out_heads["nodule_type"].shape == (2, len(TYPE_CLASSES), 8, 8, 8)
    assert out_heads["margin"].shape == (2, len(MARGIN_CLASSES), 8, 8, 8)
    # the heads are built last: the other weights are initialised as before, and give the same outputs
    extra = {k for k in with_heads.state_dict() if k.split(".")[0] in CHARACTERISATION_MODULES}
    assert set(with_heads.state_dict()) - extra == set(plain.state_dict()) and extra
    for k, v in plain.state_dict().items():
        assert torch.equal(v, with_heads.state_dict()[k]), k
    for k in out:
        assert torch.equal(out[k], out_heads[k]), k


def test_type_and_margin_labels_reach_the_cells_malignancy_is_taught_on():
    types = class_indices(["part-solid", None, "spiculated"], TYPE_CLASSES)
    assert types.tolist() == [1, UNLABELLED, UNLABELLED]
    centres = np.array([[18.0, 18.0, 18.0], [50.0, 50.0, 50.0]])
    t = encode((16, 16, 16), centres, np.array([12.0, 9.0]), np.array([4, 0]), 4, 1.5,
               class_indices(["calcified", None], TYPE_CLASSES), class_indices(["spiculated", None], MARGIN_CLASSES))
    labelled = t.nodule_type != UNLABELLED
    assert labelled.any() and np.array_equal(labelled, t.malig_mask > 0)  # the first nodule's cells only
    assert set(t.nodule_type[labelled].tolist()) == {3} and set(t.margin[labelled].tolist()) == {2}
    assert t.nodule_type[tuple(np.round((centres[1] - 1.5) / 4).astype(int))] == UNLABELLED
    # cross-entropy where labelled: a confident right answer costs ~0, the wrong one a lot
    t_torch = {k: torch.from_numpy(np.asarray(v))[None] for k, v in vars(t).items()}
    logits = torch.zeros(1, 4, 16, 16, 16)
    logits[:, 3] = 20.0
    base = {"center": torch.zeros(1, 1, 16, 16, 16), "offset": torch.zeros(1, 3, 16, 16, 16),
            "log_diameter": torch.zeros(1, 1, 16, 16, 16), "malignancy": torch.zeros(1, 1, 16, 16, 16),
            "margin": torch.zeros(1, 3, 16, 16, 16)}
    right = multitask_losses({**base, "nodule_type": logits}, t_torch)
    wrong = multitask_losses({**base, "nodule_type": logits.roll(1, dims=1)}, t_torch)
    assert float(right["type"]) < 1e-6 < 10 < float(wrong["type"])
    assert float(right["margin"]) == pytest.approx(np.log(3), rel=1e-5)


@pytest.mark.parametrize("spiculation, lobulation, margin", [
    (None, 4, None), (1, 1, "smooth"), (2, 2, "smooth"), (1, 3, "lobulated"), (3, 1, "spiculated"),
    (5, 5, "spiculated")])
def test_lidc_margin_from_the_readers_spiculation_and_lobulation(spiculation, lobulation, margin):
    assert margin_from_ratings(spiculation, lobulation) == margin


def test_phantom_types_and_margins_travel_into_cached_training_cases(tmp_path):
    write_phantom_set(tmp_path / "set", 1, seed=5, small=True)
    cached = TrainCaseCache(PhantomFolderSource(tmp_path / "set"), tmp_path / "cache", 3.0)
    case = cached.load()[0]
    truths = PhantomFolderSource(tmp_path / "set").truths(case.case_id)
    assert [TYPE_CLASSES[i] for i in case.nodule_types] == [t.nodule_type for t in truths]
    assert [MARGIN_CLASSES[i] for i in case.margins] == [t.margin for t in truths]


@pytest.fixture(scope="module")
def small_phantom():
    return generate_phantom(3, small=True)


def test_a_checkpoint_without_heads_loads_and_detects_as_before(untrained_checkpoint, small_phantom):
    model = load_model(untrained_checkpoint)
    assert not model.config.characterisation_heads
    det = detect_ct(small_phantom.ct, model=model, device="cpu", tta=False, max_findings=3)
    assert det.nodules
    for n in det.nodules:
        assert (n.nodule_type, n.margin, n.type_probabilities, n.margin_probabilities) == ("solid", "unknown", {}, {})


def test_a_model_with_heads_gives_each_finding_its_type_and_margin(tmp_path, untrained_checkpoint, small_phantom):
    ck = read_checkpoint(untrained_checkpoint)
    cfg = ModelConfig.from_dict({**ck["config"], "characterisation_heads": True})
    torch.manual_seed(1)
    net = ResMTNet(cfg)
    net.load_state_dict(ck["state_dict"], strict=False)  # the untrained detector, with heads of its own
    save_checkpoint(tmp_path / "heads.pt", net)
    det = detect_ct(small_phantom.ct, model=load_model(tmp_path / "heads.pt"), device="cpu", tta=True,
                    max_findings=3)
    assert det.nodules
    for n in det.nodules:
        assert list(n.type_probabilities) == list(TYPE_CLASSES)
        assert list(n.margin_probabilities) == list(MARGIN_CLASSES)
        assert sum(n.type_probabilities.values()) == pytest.approx(1.0, abs=1e-3)
        assert sum(n.margin_probabilities.values()) == pytest.approx(1.0, abs=1e-3)
        assert n.nodule_type == max(n.type_probabilities, key=n.type_probabilities.get)
        assert n.margin == max(n.margin_probabilities, key=n.margin_probabilities.get)


def test_a_heads_only_run_changes_nothing_but_the_heads(tmp_path, capsys):
    """The heads-only recipe's settings on the tiny network: `resmtnet train --init` from a checkpoint without
    heads adds them, trains them alone, and exports with the starting file's threshold and metrics."""
    write_phantom_set(tmp_path / "set", 2, seed=5, small=True)
    torch.manual_seed(0)
    start = tmp_path / "start.pt"
    save_checkpoint(start, ResMTNet(_tiny(False)), decode={"threshold": 0.4321, "tta_flips": [[], [2]]},
                    metrics={"calibration": {"cpm": 0.5}})
    assert HEADS_RECIPE.is_file()
    args = ["train", "-o", str(tmp_path / "run"), "--config", str(HEADS_RECIPE), "--data", "phantom-folder",
            "--data-dir", str(tmp_path / "set"), "--cache", str(tmp_path / "cache"), "--workers", "1",
            "--no-progress", "--device", "cpu", "--init", str(start), "--export", str(tmp_path / "export.pt"),
            "--set", "train.epochs=1", "--set", "train.steps_per_epoch=3", "--set", "train.patch=32",
            "--set", "train.batch_size=2", "--set", "train.threads=1"]
    assert main(args) == 0
    record = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    assert {"type", "margin"} <= set(record["loss"])
    before = read_checkpoint(start)["state_dict"]
    after = read_checkpoint(tmp_path / "export.pt")
    heads = {k for k in after["state_dict"] if k.split(".")[0] in CHARACTERISATION_MODULES}
    assert heads and set(after["state_dict"]) - heads == set(before)
    for k, v in before.items():
        assert torch.equal(v, after["state_dict"][k]), k
    torch.manual_seed(0)  # the heads as the run started them: every one of them moved
    fresh = ResMTNet(_tiny(True)).state_dict()
    assert all(not torch.equal(fresh[k], after["state_dict"][k]) for k in heads if k.endswith("weight"))
    assert after["decode"] == {"threshold": 0.4321, "tta_flips": [[], [2]]}
    assert after["metrics"] == {"calibration": {"cpm": 0.5}}
    assert after["config"]["characterisation_heads"] is True


def test_balanced_accuracy_weighs_each_true_class_alike():
    from resmtnet.evaluate.characterisation import confusion

    pairs = [("solid", "solid")] * 8 + [("calcified", "solid"), ("calcified", "calcified")]
    c = confusion(pairs, TYPE_CLASSES)
    assert c["matrix"][0] == [8, 0, 0, 0] and c["matrix"][3] == [1, 0, 0, 1]
    assert c["recall"] == {"solid": 1.0, "part-solid": None, "ground-glass": None, "calcified": 0.5}
    assert c["balanced_accuracy"] == pytest.approx(0.75)  # not the 0.9 of plain accuracy
    assert confusion([], MARGIN_CLASSES)["balanced_accuracy"] is None
