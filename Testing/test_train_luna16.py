"""`resmtnet train` through the command: a LUNA16-shaped folder (small phantoms as .mhd with LUNA16's names)
trains and is scored end to end by `resmtnet evaluate`; a two-process gloo torchrun run ends with one set of
weights in both processes; the recipe's settings travel into the checkpoint, the export and the run's
config.toml; the export can calibrate on phantoms of its own; bad settings stop before any data is made."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from resmtnet.cli.cli import main
from resmtnet.data.datasets import Luna16Source
from resmtnet.detect.nodules import NODULES_CSV_COLUMNS, Nodule, write_nodules_csv
from resmtnet.model.inference import TTA_FLIPS
from resmtnet.model.model_io import load_model, read_checkpoint
from resmtnet.train.recipe import read_recipe
from test_datasets import make_luna16_folder

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.toml"


@pytest.fixture(scope="module")
def luna(tmp_path_factory):
    root = tmp_path_factory.mktemp("luna16-train")
    return root, make_luna16_folder(root, seeds=(31, 32, 33))


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory) -> Path:
    """A case cache shared by the runs on ``luna`` that are not about building it: the first of them fills it, the
    others read its cases as a second run with the same --cache does. The end-to-end run and the two-process run
    build caches of their own (from nothing; each rank its share)."""
    return tmp_path_factory.mktemp("luna16-cache")


def _train_args(root, out, cache, *extra, steps=2):
    return ["train", "-o", str(out), "--config", str(TINY), "--data", "luna16", "--data-dir", str(root),
            "--annotations", str(root / "annotations.csv"), "--candidates", str(root / "candidates.csv"),
            "--cache", str(cache), "--workers", "1", "--no-progress", "--device", "cpu",
            "--set", f"train.steps_per_epoch={steps}", *extra]


def _init_args(root, out, cache, checkpoint, *extra):
    """`_train_args` for fine-tuning from ``checkpoint`` (a tiny recipe's: its [model] settings are the file's)."""
    return _train_args(root, out, cache, "--init", str(checkpoint), *extra)


def _concat_csv(parts, path):
    with open(path, "w", newline="") as out:
        w = csv.writer(out)
        w.writerow(NODULES_CSV_COLUMNS)
        n = 0
        for p in parts:
            with open(p, newline="") as f:
                rows = list(csv.reader(f))[1:]
            w.writerows(rows)
            n += len(rows)
    return n


@pytest.mark.slow
def test_luna16_folder_trains_and_evaluates_end_to_end(luna, tmp_path, capsys):
    root, phantoms = luna
    run = tmp_path / "run"
    assert main(_train_args(root, run, tmp_path / "cache", "--fold", "0")) == 0
    start = json.loads((run / "log.jsonl").read_text().splitlines()[0])["start"]
    assert start["data"]["source"] == "luna16"
    assert start["train_cases"] + start["val_cases"] == 3 and start["val_cases"] >= 1
    ck = read_checkpoint(run / "last.pt")
    assert ck["provenance"]["data"]["source"] == "luna16"
    assert ck["provenance"]["data"]["val_min_diameter_mm"] == 0.0  # LUNA16's annotations are the reference
    assert ck["provenance"]["command"].startswith("resmtnet train -o ") and "--fold 0" in ck["provenance"]["command"]

    # detect with the trained checkpoint on every scan, one nodules.csv each, joined into a submission
    src = Luna16Source(root, root / "annotations.csv")
    model = load_model(run / "last.pt")
    from resmtnet.detect.pipeline import detect_ct

    parts, truth_parts = [], []
    for uid in src.case_ids():
        ct, truths = src.load(uid)
        det = detect_ct(ct, model=model, device="cpu", threshold=0.0, max_findings=25)
        parts.append(tmp_path / f"{uid}.csv")
        write_nodules_csv(parts[-1], uid, det.nodules)
        # the reference itself as a perfect detector's output, through the same CSV writer
        perfect = [Nodule(number=i + 1, center_lps=t.center_lps, probability=0.9, diameter_mm=t.diameter_mm,
                          malignancy=0.5) for i, t in enumerate(truths)]
        truth_parts.append(tmp_path / f"{uid}.truth.csv")
        write_nodules_csv(truth_parts[-1], uid, perfect)
    n_findings = _concat_csv(parts, tmp_path / "predictions.csv")
    _concat_csv(truth_parts, tmp_path / "perfect.csv")
    (tmp_path / "seriesuids.csv").write_text("\n".join(src.case_ids()) + "\n")
    capsys.readouterr()

    n_nodules = sum(len(p.nodules) for p in phantoms.values())
    assert main(["evaluate", str(tmp_path / "predictions.csv"), str(root / "annotations.csv"),
                 "--series-list", str(tmp_path / "seriesuids.csv"), "-o", str(tmp_path / "eval"),
                 "--bootstrap", "50"]) == 0
    printed = capsys.readouterr().out
    d = json.loads((tmp_path / "eval" / "froc.json").read_text())
    c = d["counts"]
    # the annotations' row for a scan absent from the folder is not counted: the series list rules
    assert c["scans"] == 3 and c["nodules"] == n_nodules
    assert c["false_positives"] + c["ignored_on_excluded_marks"] <= n_findings
    assert c["detected_nodules"] + c["missed_nodules"] == n_nodules
    sens = d["sensitivities"]
    assert all(0 <= s <= 1 for s in sens) and sens == sorted(sens)
    assert d["cpm"] == pytest.approx(np.mean(sens))
    assert f"CPM: {d['cpm']:.4f}" in printed and (tmp_path / "eval" / "froc.png").is_file()

    assert main(["evaluate", str(tmp_path / "perfect.csv"), str(root / "annotations.csv"),
                 "--series-list", str(tmp_path / "seriesuids.csv"), "-o", str(tmp_path / "eval-perfect"),
                 "--bootstrap", "0"]) == 0
    p = json.loads((tmp_path / "eval-perfect" / "froc.json").read_text())
    assert p["cpm"] == 1.0 and p["counts"]["false_positives"] == 0
    assert p["diameter_error"]["mae_mm"] < 0.01  # diameters survive the CSV at 2 decimals


WORKER = textwrap.dedent("""
    import os, sys
    import torch
    from torch.nn.parallel import DistributedDataParallel as _DDP

    recorded = {}

    class RecordingDDP(_DDP):
        # the real DDP; it only keeps a handle on the module it wraps, and its weights at the start
        def __init__(self, module, *args, **kwargs):
            super().__init__(module, *args, **kwargs)
            recorded["module"] = module
            recorded["initial"] = {k: v.detach().clone() for k, v in module.state_dict().items()}

    torch.nn.parallel.DistributedDataParallel = RecordingDDP
    from resmtnet.cli.cli import main

    out = sys.argv[1]
    rc = main(sys.argv[2:])
    torch.save({"final": {k: v.detach().cpu() for k, v in recorded["module"].state_dict().items()},
                "initial": recorded["initial"], "world": os.environ["WORLD_SIZE"]},
               os.path.join(out, "rank%s.pt" % os.environ["RANK"]))
    sys.exit(rc)
""")


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="this torch has no gloo backend for torch.distributed")
@pytest.mark.slow
def test_two_process_gloo_torchrun_ends_with_identical_weights(luna, tmp_path, capsys):
    """Under torchrun both ranks end with rank 0's checkpoint's weights. The recipe has a fine-tune stage: the
    command runs both stages in its one process group (the weights checked are the fine-tune's)."""
    root, _ = luna
    out = tmp_path / "ddp"
    out.mkdir()
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    tune = ["--set", "finetune.train.lr=1e-3"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(worker), str(out), *_train_args(root, out, tmp_path / "cache", *tune, steps=3)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert r0["world"] == r1["world"] == "2"
    assert r0["final"].keys() == r1["final"].keys()
    for k in r0["final"]:
        assert torch.equal(r0["final"][k], r1["final"][k]), k
    # the steps did change the weights (each rank drew its own patches; gradients were averaged)
    changed = [k for k in r0["final"] if not torch.equal(r0["final"][k], r0["initial"][k])]
    assert len(changed) > len(r0["final"]) // 2, p.stdout[-3000:] + p.stderr[-3000:]
    # and rank 0's checkpoint holds exactly those weights
    ck = read_checkpoint(out / "finetune" / "last.pt")
    assert ck["provenance"]["init_from"]["path"] == str(out / "base" / "export.pt")
    assert ck["provenance"]["train_config"]["lr"] == 1e-3 and (out / "finetune" / "export.pt").is_file()
    assert read_checkpoint(out / "base" / "last.pt")["provenance"]["train_config"]["lr"] == 2e-3
    for k, v in r0["final"].items():
        assert torch.equal(ck["state_dict"][k].to(v.dtype), v), k
    # each rank built its share of the case cache
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3
    # the same command again (one process): the first stage is done, the fine-tune resumes at its end
    capsys.readouterr()
    assert main(_train_args(root, out, tmp_path / "cache", *tune, steps=3)) == 0
    assert "first stage done" in capsys.readouterr().out
    again = read_checkpoint(out / "finetune" / "last.pt")
    for k, v in ck["state_dict"].items():
        assert torch.equal(again["state_dict"][k], v), k


@pytest.mark.slow
def test_export_writes_a_release_checkpoint_with_a_calibrated_threshold(luna, warm_cache, tmp_path, capsys):
    """`train --export`: the best weights without optimizer state, a threshold found on the validation
    cases with test-time augmentation, and a provenance that says how, the recipe included; the run's
    recipe is written beside it and reads back as the settings it ran with."""
    root, _ = luna
    run, export = tmp_path / "run", tmp_path / "release" / "model.pt"
    assert main(_train_args(root, run, warm_cache, "--fold", "0", "--export", str(export),
                            "--set", "export.fp_rate=2", "--set", "data.val_min_diameter=5",
                            "--set", "train.min_lung_share=0.4", "--set", "train.loader_workers=2")) == 0
    printed = capsys.readouterr().out
    assert f"exported {export}" in printed
    ck = read_checkpoint(export)
    assert "optimizer" not in ck and set(ck["state_dict"]) == set(read_checkpoint(run / "last.pt")["state_dict"])
    cal = ck["provenance"]["threshold_calibration"]
    assert cal["fp_per_scan_target"] == 2.0 and cal["tta"] is True and cal["min_diameter_mm"] == 5.0
    assert cal["min_lung_share"] == 0.4 == ck["provenance"]["data"]["val_min_lung_share"]
    assert ck["provenance"]["train_config"]["min_lung_share"] == 0.4
    assert ck["provenance"]["train_config"]["loader_workers"] == 2  # windows cut by two worker processes
    assert np.isfinite(read_checkpoint(run / "last.pt")["train_state"]["history"][0]["loss"]["total"])
    assert cal["tta_passes"] == len(TTA_FLIPS) == 8
    assert 0.0 <= cal["fp_per_scan"] <= 2.0 and 0.0 <= cal["sensitivity"] <= 1.0
    assert "--export" in ck["provenance"]["command"] and ck["provenance"]["data"]["source"] == "luna16"
    assert set(ck["metrics"]["validation"]) >= {"cpm", "sens_at_2fp"}
    model = load_model(export)
    assert model.threshold == ck["decode"]["threshold"] and 0.0 < model.threshold <= 1.0
    assert model.tta_flips == TTA_FLIPS  # detection runs the passes the threshold was found with
    # the exported network is the trained one, weight for weight
    last = read_checkpoint(run / "best.pt" if (run / "best.pt").exists() else run / "last.pt")["state_dict"]
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, last[k].float()), k
    # config.toml beside the run is the recipe the checkpoint records, and reads back as it
    written, tune = read_recipe(run / "config.toml")
    assert tune is None and written.to_dict() == ck["provenance"]["recipe"]
    assert written.data["fold"] == 0 and written.export["fp_rate"] == 2.0 and written.train["min_lung_share"] == 0.4
    assert written.model["spacing_mm"] == 3.0 == ck["config"]["spacing_mm"]


@pytest.mark.slow
def test_export_can_calibrate_its_threshold_on_phantoms_of_its_own(tmp_path, capsys):
    """`export.calibration_phantoms N`: the export's threshold is found on N phantoms of `calibration_seed`,
    not on the validation phantoms that chose the epoch, and the file says so. The run also trains on a
    thick-slice phantom (`data.thick_phantoms`, as the shipped recipe's fine-tune), which the file names."""
    from resmtnet.data.phantom import MIN_LUNG_SHARE
    from resmtnet.data.training_data import PhantomCases
    from resmtnet.evaluate.phantom_eval import PHANTOM_MIN_DIAMETER_MM
    from resmtnet.train.validation import calibrate

    cache, export = tmp_path / "cache", tmp_path / "model.pt"
    args = ["train", "-o", str(tmp_path / "run"), "--config", str(TINY), "--cache", str(cache), "--workers", "2",
            "--no-progress", "--device", "cpu", "--export", str(export)]
    sets = ["data.phantoms=1", "data.val_phantoms=1", "data.max_nodules=3", "data.thick_phantoms=1",
            "export.calibration_phantoms=1", "export.calibration_seed=5001"]
    assert main(args + [a for kv in sets for a in ("--set", kv)]) == 0
    assert "on 1 calibration phantoms, with TTA" in capsys.readouterr().out
    assert len(list(cache.glob("phantom-thick-s6000-0000-*.npz"))) == 1
    ck = read_checkpoint(export)
    cal = ck["provenance"]["threshold_calibration"]
    assert cal["cases"] == "calibration phantoms" and cal["n_cases"] == 1
    assert ck["provenance"]["data"]["calibration_seed"] == 5001
    assert (ck["provenance"]["data"]["thick_phantoms"], ck["provenance"]["data"]["thick_seed"]) == (1, 6000)
    assert set(ck["metrics"]) == {"calibration"}
    # the threshold is the one those phantoms give, found again here
    model = load_model(export)
    cases = PhantomCases(cache, 5001, 1, 3.0, 3).load()
    thr, _, _ = calibrate(model.net, cases, 1.0, "cpu", tta=True, min_diameter_mm=PHANTOM_MIN_DIAMETER_MM,
                          min_lung_share=MIN_LUNG_SHARE)
    assert model.threshold == round(thr, 4)


@pytest.mark.parametrize("settings, message", [
    (["--set", "export.calibration_phantoms=1"], "needs --export"),
    (["--set", "export.calibration_phantoms=1", "--set", "export.calibration_seed=2000", "--export", "m.pt"],
     "data.val_seed is the same"),
    (["--set", "data.thick_phantoms=1", "--set", "data.thick_seed=2000"], "data.thick_seed 2000: data.val_seed"),
    (["--set", "data.thick_phantoms=-1"], "data.thick_phantoms -1: must be 0 or more"),
    (["--set", "data.mass_phantoms=-1"], "data.mass_phantoms -1: must be 0 or more"),
    (["--set", "data.mass_phantoms=1", "--set", "data.mass_seed=2000"], "data.mass_seed 2000: data.val_seed"),
    (["--set", "data.real_backgrounds=no-such-folder"], "no-such-folder: no such folder"),
    (["--set", "train.patch=40"], "train.patch 40: must be a multiple of 16"),
    (["--set", "train.min_lung_share=1.5"], "train.min_lung_share 1.5"),
    (["--set", "train.loader_workers=-1"], "train.loader_workers -1"),
    (["--set", "train.mine_negatives_at=[0]"], "train.mine_negatives_at 0"),
    (["--set", "model.input_windows=[[-400, -1000]]"], "the upper HU bound must exceed the lower"),
    (["--set", "model.blocks_per_stage=[1, 1, 2]"], "model.blocks_per_stage [1, 1, 2]"),
    (["--set", "train.epochs=two"], "train.epochs: 'two' is no int"),
    (["--set", "train.ema=0.9"], "unknown setting train.ema"),
    (["--set", "train.offset_reach=1"], "unknown setting train.offset_reach"),
    (["--set", "epochs=2"], "write TABLE.KEY=VALUE"),
    (["--set", "train.epochs"], "write TABLE.KEY=VALUE"),
    (["--config", "missing.toml"], "missing.toml: no such recipe file"),
])
def test_settings_that_cannot_work_stop_before_any_data_is_made(tmp_path, capsys, monkeypatch, settings, message):
    monkeypatch.chdir(tmp_path)
    args = ["train", "-o", "run", "--config", str(TINY), "--cache", "cache", "--device", "cpu", "--no-progress"]
    assert main(args + settings) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("settings, message", [
    (["--set", 'data.real_holdout=["4D-Lung-113"]'], "data.real_holdout: 4D-Lung-113 is no case folder of cases"),
    (["--set", "data.real_masses=[2, 1]"], "data.real_masses must be [fewest, most]"),
    (["--set", "data.real_masses=[0, 3]"], "data.real_masses must be [fewest, most]"),
    (["--set", "data.real_holdout=[]", "--set", "data.real_backgrounds=two-volumes"], "two-volumes: case-b hold"),
])
def test_real_background_settings_that_cannot_be_trusted_stop_before_any_data_is_made(tmp_path, capsys, monkeypatch,
                                                                                       settings, message):
    """A held-out case that is not there (a misspelt name would train on the case the run is judged on), a mass
    range that is none, a case folder whose CT is not clear."""
    monkeypatch.chdir(tmp_path)
    for root, names in (("cases", ["4D-Lung-113_HM10395", "case-a"]), ("two-volumes", ["case-b"])):
        for name in names:
            (tmp_path / root / name).mkdir(parents=True)
            (tmp_path / root / name / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n")
            (tmp_path / root / name / "ct.nrrd").write_bytes(b"")
    (tmp_path / "two-volumes" / "case-b" / "mask.nrrd").write_bytes(b"")
    args = ["train", "-o", "run", "--config", str(TINY), "--cache", "cache", "--device", "cpu", "--no-progress",
            "--set", "data.real_backgrounds=cases"]
    assert main(args + settings) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_train_on_cuda_without_a_gpu_stops_before_any_data_is_made(tmp_path, capsys):
    args = ["train", "-o", str(tmp_path / "run"), "--config", str(TINY), "--cache", str(tmp_path / "cache"),
            "--device", "cuda"]
    assert main(args) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_the_shipped_recipe_is_what_the_shipped_weights_record():
    """configs/shipped.toml's fine-tune stage holds the training settings and data the shipped file records,
    its [model] the shipped network, and its first stage the data of the run the file was fine-tuned from."""
    from resmtnet.model.model_io import shipped_model_path
    from resmtnet.train.training import TrainConfig

    first, tune = read_recipe(TINY.parent / "shipped.toml")
    shipped = read_checkpoint(shipped_model_path())
    prov = shipped["provenance"]
    # settings added since the file was made read as their defaults, which are what it was trained with
    recorded = TrainConfig.from_dict(prov["train_config"]).to_dict()
    assert TrainConfig.from_dict({**tune.train, "loader_workers": 0}).to_dict() == recorded
    for stage, data in ((tune, prov["data"]), (first, prov["init_from"]["data"])):
        for key in ("phantom_seed", "phantoms", "val_seed", "val_phantoms", "max_nodules"):
            assert stage.data[key] == data[key], key
        assert stage.export["calibration_phantoms"] == data["calibration_phantoms"]
        assert stage.export["calibration_seed"] == data["calibration_seed"]
    assert (tune.data["thick_phantoms"], tune.data["thick_seed"]) == (prov["data"]["thick_phantoms"],
                                                                      prov["data"]["thick_seed"])
    assert first.data["thick_phantoms"] == 0
    for key in first.model_given:
        assert json.dumps(first.model[key]) == json.dumps(shipped["config"][key]), key
    assert prov["threshold_calibration"]["fp_per_scan_target"] == tune.export["fp_rate"]


@pytest.mark.slow
def test_recipe_model_settings_train_through_the_command_and_travel_in_the_checkpoint(luna, warm_cache, tmp_path,
                                                                                       capsys):
    """`model.input_windows` adds a channel and `model.blocks_per_stage` sets each encoder stage's residual
    blocks; the checkpoint rebuilds that network. With --init, a [model] setting that is not the checkpoint's
    stops before any data is made."""
    root, _ = luna
    run = tmp_path / "run"
    assert main(_train_args(root, run, warm_cache, "--set", "model.input_windows=[[-1000, -400]]",
                            "--set", "model.blocks_per_stage=[1, 0, 2, 1]")) == 0
    assert read_checkpoint(run / "last.pt")["config"]["input_windows"] == [[-1000.0, -400.0]]
    model = load_model(run / "last.pt")
    assert model.config.input_windows == ((-1000.0, -400.0),) and model.net.encoder.stem[0].in_channels == 2
    assert model.config.blocks_per_stage == (1, 0, 2, 1)
    assert [len(stage) - 1 for stage in model.net.encoder.stages] == [1, 0, 2, 1]  # a strided conv, then blocks
    capsys.readouterr()
    assert main(_init_args(root, tmp_path / "bad", tmp_path / "cache2", run / "last.pt")) == 2  # tiny's windows
    assert "model.blocks_per_stage = [0, 1, 1, 1]" in capsys.readouterr().err
    assert not (tmp_path / "cache2").exists() and not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_hard_negative_mining_runs_through_the_command_and_survives_a_resume(luna, warm_cache, tmp_path, capsys):
    """`train.mine_negatives_at`: after that epoch the network's own false findings are mined, logged and kept
    in the checkpoint, so that a resumed run goes on with them."""
    root, _ = luna
    run = tmp_path / "run"
    mine = ("--set", "train.mine_negatives_at=[1]", "--set", "train.mine_floor=0.002")
    assert main(_train_args(root, run, warm_cache, "--epochs", "2", *mine)) == 0
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]  # every line a record
    mined_logs = [x["mined"] for x in lines if "mined" in x]
    assert len(mined_logs) == 1 and mined_logs[0]["after_epoch"] == 1 and mined_logs[0]["cases"] == 3
    assert [x["epoch"] for x in lines if "epoch" in x] == [1, 2]
    state = read_checkpoint(run / "last.pt")["train_state"]
    mined = state["mined_negatives"]
    assert len(mined) == 3 and sum(len(v) for v in mined.values()) == mined_logs[0]["negatives"] > 0
    assert read_checkpoint(run / "last.pt")["provenance"]["train_config"]["mine_negatives_at"] == [1]
    # resumed for a third epoch: nothing is mined again and the mined negatives are carried over
    assert main(_train_args(root, run, warm_cache, "--epochs", "3", *mine)) == 0
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert sum("mined" in x for x in lines) == 1 and [x["epoch"] for x in lines if "epoch" in x] == [1, 2, 3]
    again = read_checkpoint(run / "last.pt")["train_state"]["mined_negatives"]
    assert set(again) == set(mined)
    for k in mined:
        np.testing.assert_array_equal(again[k], mined[k])


@pytest.mark.slow
def test_fine_tuning_starts_from_the_given_checkpoint_and_may_mine_before_its_first_epoch(luna, warm_cache, tmp_path,
                                                                                          capsys):
    """`--init CHECKPOINT`: the network, its grid and its weights come from the checkpoint (with a learning
    rate too small to move them, they come out as they went in); mining may then happen before epoch 1."""
    root, _ = luna
    cache = warm_cache
    base = tmp_path / "base"
    assert main(_train_args(root, base, cache)) == 0
    base_ck = read_checkpoint(base / "last.pt")
    run = tmp_path / "fine"
    assert main(_init_args(root, run, cache, base / "last.pt", "--set", "train.lr=1e-9",
                           "--set", "train.mine_negatives_at=[0]", "--set", "train.mine_floor=0.002")) == 0
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [x["mined"]["after_epoch"] for x in lines if "mined" in x] == [0]
    ck = read_checkpoint(run / "last.pt")
    assert ck["config"] == base_ck["config"] and ck["config"]["spacing_mm"] == 3.0
    assert ck["provenance"]["init_from"]["path"] == str(base / "last.pt")
    assert ck["provenance"]["init_from"]["command"] == base_ck["provenance"]["command"]
    for k, v in ck["state_dict"].items():
        torch.testing.assert_close(v, base_ck["state_dict"][k], atol=1e-5, rtol=0, msg=k)
    capsys.readouterr()
    assert main(_init_args(root, tmp_path / "bad", cache, base / "last.pt", "--set", "model.spacing_mm=2")) == 2
    assert "model.spacing_mm = 2.0" in capsys.readouterr().err
    assert main(_init_args(root, tmp_path / "bad", cache, base / "last.pt", "--set", "model.head_channels=12")) == 2
    assert "has 8" in capsys.readouterr().err
    assert main(_init_args(root, tmp_path / "bad", cache, tmp_path / "missing.pt")) == 2
    assert "missing.pt" in capsys.readouterr().err and not (tmp_path / "bad").exists()
