"""`resmtnet train` through the command: a LUNA16-shaped folder (small phantoms as .mhd with LUNA16's names)
trains and is scored end to end by `resmtnet evaluate`; a two-process gloo torchrun run ends with one set of
weights in both processes; each training option travels into the checkpoint and the export (one export
test calibrates on generated phantoms instead of the folder)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from resmtnet.cli import main
from resmtnet.datasets import Luna16Source
from resmtnet.inference import TTA_FLIPS
from resmtnet.model_io import load_model, read_checkpoint
from resmtnet.nodules import NODULES_CSV_COLUMNS, Nodule, write_nodules_csv
from test_datasets import make_luna16_folder


@pytest.fixture(scope="module")
def luna(tmp_path_factory):
    root = tmp_path_factory.mktemp("luna16-train")
    return root, make_luna16_folder(root, seeds=(31, 32, 33))


def _train_args(root, out, cache, *extra, steps=2):
    return ["train", "-o", str(out), "--data", "luna16", "--data-dir", str(root),
            "--annotations", str(root / "annotations.csv"), "--candidates", str(root / "candidates.csv"),
            "--cache", str(cache), "--epochs", "1", "--steps-per-epoch", str(steps), "--batch-size", "1",
            "--patch", "32", "--tiny", "--spacing", "3", "--workers", "1", "--no-progress", "--device", "cpu",
            "--threads", "1", *extra]


def _init_args(root, out, cache, checkpoint, *extra):
    """`_train_args` for fine-tuning from ``checkpoint``: no --tiny, no --spacing (both come from it)."""
    a = _train_args(root, out, cache)
    i = a.index("--spacing")
    return [x for x in a[:i] + a[i + 2:] if x != "--tiny"] + ["--init", str(checkpoint), *extra]


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
    from resmtnet.pipeline import detect_ct

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
    from resmtnet.cli import main

    out = sys.argv[1]
    rc = main(sys.argv[2:])
    torch.save({"final": {k: v.detach().cpu() for k, v in recorded["module"].state_dict().items()},
                "initial": recorded["initial"], "world": os.environ["WORLD_SIZE"]},
               os.path.join(out, "rank%s.pt" % os.environ["RANK"]))
    sys.exit(rc)
""")


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="this torch has no gloo backend for torch.distributed")
def test_two_process_gloo_torchrun_ends_with_identical_weights(luna, tmp_path):
    root, _ = luna
    out = tmp_path / "ddp"
    out.mkdir()
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(worker), str(out), *_train_args(root, out, tmp_path / "cache", steps=3)]
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
    ck = read_checkpoint(out / "last.pt")
    for k, v in r0["final"].items():
        assert torch.equal(ck["state_dict"][k].to(v.dtype), v), k
    # each rank built its share of the case cache
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3


def test_export_writes_a_release_checkpoint_with_a_calibrated_threshold(luna, tmp_path, capsys):
    """`train --export`: the best weights without optimizer state, a threshold found on the validation
    cases with test-time augmentation, and a provenance that says how — the path the shipped file took."""
    root, _ = luna
    run, export = tmp_path / "run", tmp_path / "release" / "model.pt"
    assert main(_train_args(root, run, tmp_path / "cache", "--fold", "0", "--export", str(export),
                            "--export-fp-rate", "2", "--val-min-diameter", "5", "--min-lung-share", "0.4")) == 0
    printed = capsys.readouterr().out
    assert f"exported {export}" in printed
    ck = read_checkpoint(export)
    assert "optimizer" not in ck and set(ck["state_dict"]) == set(read_checkpoint(run / "last.pt")["state_dict"])
    cal = ck["provenance"]["threshold_calibration"]
    assert cal["fp_per_scan_target"] == 2.0 and cal["tta"] is True and cal["min_diameter_mm"] == 5.0
    assert cal["min_lung_share"] == 0.4 == ck["provenance"]["data"]["val_min_lung_share"]
    assert ck["provenance"]["train_config"]["min_lung_share"] == 0.4
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


def test_export_can_calibrate_its_threshold_on_phantoms_of_its_own(tmp_path, capsys):
    """`--calibration-phantoms N`: the export's threshold is found on N phantoms of `--calibration-seed`, not
    on the validation phantoms that chose the epoch, and the file says so. Misuse stops before any data.
    The run also trains on a `--thick-phantoms` phantom, which the file's provenance names."""
    from resmtnet.phantom import MIN_LUNG_SHARE
    from resmtnet.phantom_eval import PHANTOM_MIN_DIAMETER_MM
    from resmtnet.training_data import PhantomCases
    from resmtnet.validation import calibrate

    cache, export = tmp_path / "cache", tmp_path / "model.pt"
    base = ["train", "-o", str(tmp_path / "run"), "--phantoms", "1", "--val-phantoms", "2", "--max-nodules", "3",
            "--cache", str(cache), "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "1", "--patch", "32",
            "--tiny", "--spacing", "3", "--workers", "2", "--no-progress", "--device", "cpu", "--threads", "1"]
    assert main(base + ["--calibration-phantoms", "1"]) == 2  # nothing to calibrate without --export
    assert "needs --export" in capsys.readouterr().err
    assert main(base + ["--calibration-phantoms", "1", "--calibration-seed", "2000", "--export", str(export)]) == 2
    assert "--val-seed is the same" in capsys.readouterr().err
    assert main(base + ["--thick-phantoms", "1", "--calibration-phantoms", "1", "--calibration-seed", "6000",
                        "--export", str(export)]) == 2
    assert "--thick-seed is the same" in capsys.readouterr().err
    assert main(base + ["--thick-phantoms", "-1"]) == 2
    assert "--thick-phantoms -1: must be 0 or more" in capsys.readouterr().err
    assert main(base + ["--thick-phantoms", "1", "--thick-seed", "2000"]) == 2  # the validation patients
    assert "--thick-seed 2000: --val-seed is the same" in capsys.readouterr().err
    assert main(base + ["--train-heads", "size"]) == 2  # the rest of the network would be left untrained
    assert "--train-heads needs --init" in capsys.readouterr().err
    assert not cache.exists()

    # with a thick-slice phantom added to training (its own case id and cache file)
    assert main(base + ["--thick-phantoms", "1", "--calibration-phantoms", "1", "--calibration-seed", "5001",
                        "--export", str(export)]) == 0
    assert len(list(cache.glob("phantom-thick-s6000-0000-*.npz"))) == 1
    assert "on 1 calibration phantoms, with TTA" in capsys.readouterr().out
    ck = read_checkpoint(export)
    cal = ck["provenance"]["threshold_calibration"]
    assert cal["cases"] == "calibration phantoms" and cal["n_cases"] == 1  # not the 2 validation phantoms
    assert ck["provenance"]["data"]["calibration_seed"] == 5001
    assert ck["provenance"]["data"]["calibration_phantoms"] == 1
    assert (ck["provenance"]["data"]["thick_phantoms"], ck["provenance"]["data"]["thick_seed"]) == (1, 6000)
    assert set(ck["metrics"]) == {"calibration"}
    # the threshold is the one those phantoms give, found again here
    model = load_model(export)
    cases = PhantomCases(cache, 5001, 1, 3.0, 3).load()
    thr, _, _ = calibrate(model.net, cases, 1.0, "cpu", tta=True, min_diameter_mm=PHANTOM_MIN_DIAMETER_MM,
                          min_lung_share=MIN_LUNG_SHARE)
    assert model.threshold == round(thr, 4)


def test_windows_cut_by_loader_workers_train_through_the_command(luna, tmp_path, capsys):
    """`--loader-workers N` runs the loop on batches from N processes and records it; a bad N stops at once."""
    root, _ = luna
    run = tmp_path / "run"
    assert main(_train_args(root, run, tmp_path / "cache", "--loader-workers", "2", steps=4)) == 0
    ck = read_checkpoint(run / "last.pt")
    assert ck["provenance"]["train_config"]["loader_workers"] == 2
    loss = ck["train_state"]["history"][0]["loss"]["total"]
    assert np.isfinite(loss) and loss > 0
    capsys.readouterr()
    assert main(_train_args(root, tmp_path / "bad", tmp_path / "cache2", "--loader-workers", "-1")) == 2
    assert "--loader-workers -1" in capsys.readouterr().err
    assert not (tmp_path / "cache2").exists() and not (tmp_path / "bad").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_train_on_cuda_without_a_gpu_stops_before_any_data_is_made(luna, tmp_path, capsys):
    root, _ = luna
    assert main(_train_args(root, tmp_path / "run", tmp_path / "cache", "--device", "cuda")) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_an_input_window_trains_through_the_command_and_travels_in_the_checkpoint(luna, tmp_path, capsys):
    """`--input-window=LO,HI` adds a channel the checkpoint remembers; a reversed window, or one given with
    --init (whose network is fixed), stops before any data is made."""
    root, _ = luna
    run = tmp_path / "run"
    assert main(_train_args(root, run, tmp_path / "cache", "--input-window=-1000,-400")) == 0
    assert read_checkpoint(run / "last.pt")["config"]["input_windows"] == [[-1000.0, -400.0]]
    model = load_model(run / "last.pt")
    assert model.config.input_windows == ((-1000.0, -400.0),) and model.net.encoder.stem[0].in_channels == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(_train_args(root, tmp_path / "bad", tmp_path / "cache2", "--input-window=-400,-1000"))
    assert stop.value.code == 2 and "HI must exceed LO" in capsys.readouterr().err
    assert main(_init_args(root, tmp_path / "bad", tmp_path / "cache2", run / "last.pt",
                           "--input-window=-1000,-400")) == 2
    assert "--init and --input-window" in capsys.readouterr().err
    assert not (tmp_path / "cache2").exists() and not (tmp_path / "bad").exists()


def test_block_counts_train_through_the_command_and_travel_in_the_checkpoint(luna, tmp_path, capsys):
    """`--blocks N,N,N,N` sets the residual blocks of each encoder stage; the checkpoint rebuilds that network.
    Counts that are not four whole numbers of 0 or more, or given with --init, stop before any data is made."""
    root, _ = luna
    run = tmp_path / "run"
    assert main(_train_args(root, run, tmp_path / "cache", "--blocks", "1,0,2,1")) == 0
    model = load_model(run / "last.pt")
    assert model.config.blocks_per_stage == (1, 0, 2, 1)
    assert [len(stage) - 1 for stage in model.net.encoder.stages] == [1, 0, 2, 1]  # a strided conv, then blocks
    capsys.readouterr()
    for bad in ("1,1,2", "1,-1,2,2", "a,b,c,d"):
        with pytest.raises(SystemExit) as stop:
            main(_train_args(root, tmp_path / "bad", tmp_path / "cache2", "--blocks", bad))
        assert stop.value.code == 2 and "--blocks" in capsys.readouterr().err
    assert main(_init_args(root, tmp_path / "bad", tmp_path / "cache2", run / "last.pt", "--blocks", "1,1,2,2")) == 2
    assert "--init and --blocks" in capsys.readouterr().err
    assert not (tmp_path / "cache2").exists() and not (tmp_path / "bad").exists()


def test_an_output_stride_trains_through_the_command_fresh_and_from_a_checkpoint(luna, tmp_path, capsys):
    """`--output-stride 2` makes a fresh network with 2-voxel output cells; with --init it re-strides the
    checkpoint's network (its other weights kept, see `restride_state`). Other strides stop at the parser."""
    root, _ = luna
    run4, run2 = tmp_path / "run4", tmp_path / "run2"
    assert main(_train_args(root, run4, tmp_path / "cache")) == 0
    assert load_model(run4 / "last.pt").config.output_stride == 4
    assert main(_init_args(root, run2, tmp_path / "cache", run4 / "last.pt", "--output-stride", "2")) == 0
    fine = load_model(run2 / "last.pt")
    assert fine.config.output_stride == 2 and len(fine.net.pyramid.lateral) == 4
    coarse = load_model(run4 / "last.pt")
    # two Adam steps from the checkpoint move a weight by a few thousandths; a fresh start would be ~0.1 away
    moved = (fine.net.encoder.stem[0].weight - coarse.net.encoder.stem[0].weight).detach().abs().max()
    assert float(moved) < 0.02
    with torch.no_grad():
        x = torch.zeros(1, 1, 32, 32, 32)
        assert fine.net(x)["center"].shape[2:] == (16, 16, 16)
        assert coarse.net(x)["center"].shape[2:] == (8, 8, 8)
    fresh = tmp_path / "fresh2"
    assert main(_train_args(root, fresh, tmp_path / "cache", "--output-stride", "2")) == 0
    assert load_model(fresh / "last.pt").config.output_stride == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(_train_args(root, tmp_path / "bad", tmp_path / "cache2", "--output-stride", "3"))
    assert stop.value.code == 2 and "--output-stride" in capsys.readouterr().err


def test_a_weight_average_trains_through_the_command_and_is_what_the_export_holds(luna, tmp_path, capsys):
    """`--ema DECAY`: the run records it, its checkpoints and its export hold the averaged weights (the
    optimiser's own kept beside them in last.pt); a decay outside [0, 1) stops before any data is made."""
    root, _ = luna
    run, export = tmp_path / "run", tmp_path / "model.pt"
    assert main(_train_args(root, run, tmp_path / "cache", "--fold", "0", "--ema", "0.9", "--export", str(export),
                            steps=3)) == 0
    last = read_checkpoint(run / "last.pt")
    assert last["provenance"]["train_config"]["ema_decay"] == 0.9 and last["train_state"]["ema_updates"] == 3
    online = last["train_state"]["online_state_dict"]
    assert any(not torch.equal(v, online[k]) for k, v in last["state_dict"].items())
    best = read_checkpoint(run / "best.pt" if (run / "best.pt").exists() else run / "last.pt")["state_dict"]
    for k, v in load_model(export).net.state_dict().items():
        assert torch.equal(v, best[k].float()), k
    capsys.readouterr()
    assert main(_train_args(root, tmp_path / "bad", tmp_path / "cache2", "--ema", "1")) == 2
    assert "--ema 1" in capsys.readouterr().err
    assert main(_train_args(root, tmp_path / "bad", tmp_path / "cache2", "--min-lung-share", "1.5")) == 2
    assert "--min-lung-share 1.5" in capsys.readouterr().err
    assert not (tmp_path / "cache2").exists() and not (tmp_path / "bad").exists()


def test_hard_negative_mining_runs_through_the_command_and_survives_a_resume(luna, tmp_path, capsys):
    """`--mine-negatives-at`: after that epoch the network's own false findings are mined, logged and kept in
    the checkpoint, so that a resumed run goes on with them; an epoch outside the run stops at once."""
    root, _ = luna
    run = tmp_path / "run"
    mine = ("--mine-negatives-at", "1", "--mine-floor", "0.002")
    assert main(_train_args(root, run, tmp_path / "cache", "--epochs", "2", *mine)) == 0
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]  # every line a record
    mined_logs = [x["mined"] for x in lines if "mined" in x]
    assert len(mined_logs) == 1 and mined_logs[0]["after_epoch"] == 1 and mined_logs[0]["cases"] == 3
    assert [x["epoch"] for x in lines if "epoch" in x] == [1, 2]
    state = read_checkpoint(run / "last.pt")["train_state"]
    mined = state["mined_negatives"]
    assert len(mined) == 3 and sum(len(v) for v in mined.values()) == mined_logs[0]["negatives"] > 0
    assert read_checkpoint(run / "last.pt")["provenance"]["train_config"]["mine_negatives_at"] == [1]
    # resumed for a third epoch: nothing is mined again and the mined negatives are carried over
    assert main(_train_args(root, run, tmp_path / "cache", "--epochs", "3", *mine)) == 0
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert sum("mined" in x for x in lines) == 1 and [x["epoch"] for x in lines if "epoch" in x] == [1, 2, 3]
    again = read_checkpoint(run / "last.pt")["train_state"]["mined_negatives"]
    assert set(again) == set(mined)
    for k in mined:
        np.testing.assert_array_equal(again[k], mined[k])
    capsys.readouterr()
    assert main(_train_args(root, tmp_path / "bad", tmp_path / "cache2", "--epochs", "2",
                            "--mine-negatives-at", "2")) == 2
    assert "--mine-negatives-at 2" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_fine_tuning_starts_from_the_given_checkpoint_and_may_mine_before_its_first_epoch(luna, tmp_path, capsys):
    """`--init CHECKPOINT`: the network, its grid and its weights come from the checkpoint (with a learning
    rate too small to move them, they come out as they went in); mining may then happen before epoch 1."""
    root, _ = luna
    cache = tmp_path / "cache"
    base = tmp_path / "base"
    assert main(_train_args(root, base, cache)) == 0
    base_ck = read_checkpoint(base / "last.pt")
    run = tmp_path / "fine"
    assert main(_init_args(root, run, cache, base / "last.pt", "--lr", "1e-9", "--mine-negatives-at", "0",
                           "--mine-floor", "0.002")) == 0
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [x["mined"]["after_epoch"] for x in lines if "mined" in x] == [0]
    ck = read_checkpoint(run / "last.pt")
    assert ck["config"] == base_ck["config"] and ck["config"]["spacing_mm"] == 3.0
    assert ck["provenance"]["init_from"]["path"] == str(base / "last.pt")
    assert ck["provenance"]["init_from"]["command"] == base_ck["provenance"]["command"]
    for k, v in ck["state_dict"].items():
        torch.testing.assert_close(v, base_ck["state_dict"][k], atol=1e-5, rtol=0, msg=k)
    capsys.readouterr()
    assert main(_init_args(root, tmp_path / "bad", cache, base / "last.pt", "--spacing", "2")) == 2
    assert "trained on a 3.0 mm grid" in capsys.readouterr().err
    assert main(_init_args(root, tmp_path / "bad", cache, base / "last.pt", "--tiny")) == 2
    assert "--tiny" in capsys.readouterr().err
    assert main(_init_args(root, tmp_path / "bad", cache, tmp_path / "missing.pt")) == 2
    assert "missing.pt" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    # without --init, mining before the first epoch would mine an untrained network's noise
    assert main(_train_args(root, tmp_path / "bad", cache, "--mine-negatives-at", "0")) == 2
    assert "--mine-negatives-at 0" in capsys.readouterr().err
