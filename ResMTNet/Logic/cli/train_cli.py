"""Train Res-MTNet from a recipe file: synthetic phantoms (default), a LUNA16 folder, LIDC-IDRI series, or a
phantom folder.

The recipe (:mod:`resmtnet.train.recipe`, ``--config``, changed by ``--set``) holds every setting that makes the
network; the flags here say where the data and the run are. Cases are resampled once onto the model's grid
and cached (``--cache``); checkpoints land in ``-o`` after every epoch (``last.pt``, and ``best.pt`` by the
validation CPM), with the stage's recipe beside them (``config.toml``), and a run resumes from ``last.pt``
by itself. A recipe with a ``[finetune]`` stage trains ``OUT/base`` then ``OUT/finetune`` from the first
stage's export. One process here; for several GPUs or nodes start the same command under ``torchrun``
(DistributedDataParallel, NCCL on GPUs, gloo on CPUs).
"""

from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from .cli import add_device_option

if TYPE_CHECKING:
    import torch

    from ..model.model_io import LoadedModel
    from ..train.recipe import Recipe


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", required=True, help="run folder (checkpoints, log.jsonl, config.toml)")
    p.add_argument("--config", metavar="RECIPE.toml",
                   help="the training recipe (e.g. configs/shipped.toml; default: the built-in defaults)")
    p.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE", dest="settings",
                   help="change one recipe setting, e.g. --set data.phantoms=20 (repeatable; finetune.TABLE.KEY "
                        "for a recipe's fine-tune stage)")
    p.add_argument("--data", choices=["phantoms", "phantom-folder", "luna16", "lidc"],
                   help="training data (data.source; default: phantoms generated on the fly and cached)")
    p.add_argument("--data-dir", help="folder of the data set (phantom-folder, luna16: the .mhd folder, lidc)")
    p.add_argument("--annotations", help="LUNA16 annotations.csv")
    p.add_argument("--candidates", help="LUNA16 candidates.csv (hard negatives), optional")
    p.add_argument("--fold", type=int, default=None, help="ten-fold split by patient: validate on this fold (0-9)")
    p.add_argument("--epochs", type=int, help="epochs of the (first) stage (train.epochs)")
    p.add_argument("--init", metavar="CHECKPOINT",
                   help="fine-tune: start from this checkpoint's weights (e.g. the shipped model); the network "
                        "and its grid spacing come from the checkpoint")
    p.add_argument("--export", metavar="PATH",
                   help="after training, write the release checkpoint (best by validation, no optimizer state) "
                        "to PATH with its finding threshold calibrated as the recipe's [export] says")
    add_device_option(p)
    p.add_argument("--cache", default="cache/phantoms", help="case cache folder")
    p.add_argument("--workers", type=int, default=2, help="processes that generate/resample cases")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUT/last.pt exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")


def tiny_model_config(spacing: float):
    """The very small network of ``configs/tiny.toml``, for tests that build one without the command."""
    from ..model.model import ModelConfig

    return ModelConfig(stem_channels=8, stage_channels=(8, 16, 16, 24), blocks_per_stage=(0, 1, 1, 1),
                       pyramid_channels=16, head_channels=8, spacing_mm=spacing)


def _flag_values(args: argparse.Namespace) -> dict:
    """The recipe settings the command's plain flags give."""
    flags = {"data.source": args.data, "data.dir": args.data_dir, "data.annotations": args.annotations,
             "data.candidates": args.candidates, "data.fold": args.fold, "train.epochs": args.epochs}
    return {k: v for k, v in flags.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    from ..train.recipe import read_recipe

    first, tune = read_recipe(args.config, args.settings, _flag_values(args))
    _check_recipe(first, fine_tune=bool(args.init), export=bool(args.export or tune))
    if tune is not None:
        _check_recipe(tune, fine_tune=True, export=True)
    # one process group for the whole command: a second one after the first stage's would meet its leftovers
    with _process_group(args.device):
        return _run_stages(args, first, tune)


def _run_stages(args: argparse.Namespace, first: Recipe, tune: Recipe | None) -> int:
    """The recipe's stage into OUT, or its two stages into OUT/base and OUT/finetune."""
    out = Path(args.out)
    if tune is None:
        return _run_stage(args, first, out, args.init, args.export)
    base_export = out / "base" / "export.pt"
    if args.no_resume or not base_export.is_file():
        _run_stage(args, first, out / "base", args.init, str(base_export))
        _wait_for(base_export)
    else:
        print(f"first stage done: {base_export}", flush=True)
    final_export = args.export or str(out / "finetune" / "export.pt")
    return _run_stage(args, tune, out / "finetune", str(base_export), final_export)


@contextmanager
def _process_group(device: str):
    """Under torchrun (``WORLD_SIZE`` > 1), the process group of the whole command: NCCL on GPUs, gloo on CPUs."""
    import torch

    from ..util.runtime import pick_device, torchrun_ranks

    world, _rank, local = torchrun_ranks()
    if world <= 1 or torch.distributed.is_initialized():
        yield
        return
    dev = pick_device(device, local_rank=local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    torch.distributed.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


def _wait_for(path: Path, poll_s: float = 2.0) -> None:
    """Under torchrun, the other ranks wait for the file rank 0 writes (the first stage's export)."""
    import time

    from ..util.runtime import torchrun_ranks

    if torchrun_ranks()[1] == 0:
        return
    while not path.is_file():
        time.sleep(poll_s)


def _check_recipe(r: Recipe, fine_tune: bool, export: bool) -> None:
    """Settings that cannot work stop the run before any data is made."""
    from ..train.recipe import SOURCES
    from ..util.errors import ResMTNetError

    d, t, e = r.data, r.train, r.export
    if d["source"] not in SOURCES:
        raise ResMTNetError(f"data.source {d['source']!r}: one of {', '.join(SOURCES)}")
    if t["patch"] % 16:
        raise ResMTNetError(f"train.patch {t['patch']}: must be a multiple of 16")
    first = 0 if fine_tune else 1  # a fine-tuned network can mine before its first epoch, a fresh one can't
    bad_mining = [ep for ep in t["mine_negatives_at"] if not first <= ep < t["epochs"]]
    if bad_mining:
        raise ResMTNetError(f"train.mine_negatives_at {bad_mining[0]}: must lie between {first} and "
                            f"train.epochs - 1 ({t['epochs'] - 1})")
    if not 0.0 < t["mine_floor"] < 1.0:
        raise ResMTNetError(f"train.mine_floor {t['mine_floor']}: must lie between 0 and 1")
    if not 0.0 <= t["min_lung_share"] <= 1.0:
        raise ResMTNetError(f"train.min_lung_share {t['min_lung_share']}: must lie between 0 and 1")
    if t["loader_workers"] is not None and t["loader_workers"] < 0:
        raise ResMTNetError(f"train.loader_workers {t['loader_workers']}: must be 0 or more")
    for key in ("thick", "mass"):
        if d[f"{key}_phantoms"] < 0:
            raise ResMTNetError(f"data.{key}_phantoms {d[f'{key}_phantoms']}: must be 0 or more")
    if d["source"] == "phantoms" and d["mass_phantoms"] and d["mass_seed"] == d["val_seed"]:
        raise ResMTNetError(f"data.mass_seed {d['mass_seed']}: data.val_seed is the same; validation phantoms "
                            "must be phantoms the run does not train on")
    if d["source"] == "phantoms" and d["thick_phantoms"] and d["thick_seed"] == d["val_seed"]:
        raise ResMTNetError(f"data.thick_seed {d['thick_seed']}: data.val_seed is the same; validation phantoms "
                            "must be phantoms the run does not train on")
    if not fine_tune:
        from ..model.model import ModelConfig

        mcfg = ModelConfig(**_model_settings(r))
        if len(mcfg.blocks_per_stage) != len(mcfg.stage_channels) or min(mcfg.blocks_per_stage) < 0:
            raise ResMTNetError(f"model.blocks_per_stage {list(mcfg.blocks_per_stage)}: a count of 0 or more "
                                f"for each of the {len(mcfg.stage_channels)} stages")
        for lo, hi in mcfg.input_windows:
            if not hi > lo:
                raise ResMTNetError(f"model.input_windows [{lo}, {hi}]: the upper HU bound must exceed the lower")
    n = e["calibration_phantoms"]
    if n < 0:
        raise ResMTNetError(f"export.calibration_phantoms {n}: must be 0 (calibrate on validation) or more")
    if not n:
        return
    if d["source"] != "phantoms":
        raise ResMTNetError("export.calibration_phantoms works with data.source phantoms only (other data "
                            "calibrate on their validation fold)")
    if not export:
        raise ResMTNetError("export.calibration_phantoms calibrates the export's threshold: it needs --export")
    used = {"data.phantom_seed": d["phantom_seed"], "data.val_seed": d["val_seed"]}
    if d["thick_phantoms"]:
        used["data.thick_seed"] = d["thick_seed"]
    if d["mass_phantoms"]:
        used["data.mass_seed"] = d["mass_seed"]
    for key, seed in used.items():
        if seed == e["calibration_seed"]:
            raise ResMTNetError(f"export.calibration_seed {seed}: {key} is the same; the calibration phantoms "
                                "must be phantoms the run does not otherwise see")


def _real_backgrounds(args, d: dict, spacing: float):
    """The recipe's real-background cases (data.real_backgrounds); a folder without real cases stops the run, and
    so does a held-out name that is no case of it (a misspelt one would train on the case the run is judged on)."""
    from ..data.real_backgrounds import RealBackgroundCases, missing_holdouts
    from ..util.errors import ResMTNetError

    try:
        cases = RealBackgroundCases(args.cache, d["real_backgrounds"], d["real_copies"], d["real_seed"], spacing,
                                    holdout=tuple(d["real_holdout"]), masses=_mass_range(d["real_masses"]))
    except ValueError as e:
        raise ResMTNetError(str(e)) from None
    missing = missing_holdouts(d["real_backgrounds"], d["real_holdout"])
    if missing:
        raise ResMTNetError(f"data.real_holdout: {', '.join(missing)} is no case folder of {d['real_backgrounds']} "
                            "(name the case folders the run is judged on, or [] to hold none out)")
    return cases


def _mass_range(value) -> tuple[int, int]:
    """data.real_masses as (fewest, most): two whole numbers, 0 <= fewest <= most <= 2."""
    from ..util.errors import ResMTNetError

    if (len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            or not 0 <= value[0] <= value[1] <= 2):
        raise ResMTNetError(f"data.real_masses must be [fewest, most] with 0 <= fewest <= most <= 2, not {value}")
    return int(value[0]), int(value[1])


def _model_settings(r: Recipe) -> dict:
    """The recipe's [model] table as ModelConfig arguments."""
    m = dict(r.model)
    m["stage_channels"] = tuple(m["stage_channels"])
    m["blocks_per_stage"] = tuple(m["blocks_per_stage"])
    m["input_windows"] = tuple((float(lo), float(hi)) for lo, hi in m["input_windows"])
    return m


def _cases_from_source(args, r: Recipe, spacing: float):
    """Train/validation cases from a LUNA16 / LIDC / phantom-folder case source, through the cache."""
    from ..data import datasets
    from ..util.errors import ResMTNetError

    d = r.data
    if not d["dir"]:
        raise ResMTNetError(f"--data {d['source']} needs --data-dir")
    if d["source"] == "luna16":
        if not d["annotations"]:
            raise ResMTNetError("--data luna16 needs --annotations (LUNA16 annotations.csv)")
        source = datasets.Luna16Source(d["dir"], d["annotations"], d["candidates"])
    elif d["source"] == "lidc":
        source = datasets.LidcSource(d["dir"])
    else:
        source = datasets.PhantomFolderSource(d["dir"])
    cached = datasets.TrainCaseCache(source, Path(args.cache), spacing)
    ids = source.case_ids()
    if d["fold"] is not None:
        train_ids, val_ids = datasets.fold_split(ids, d["fold"], patient_of=getattr(source, "patient_of", None))
    else:
        train_ids, val_ids = ids, []
    cached.ensure(ids, workers=args.workers, progress=_printer("cases"))
    return cached.load(train_ids), cached.load(val_ids), {"source": d["source"], "data_dir": str(d["dir"]),
                                                          "cases": len(train_ids), "val_cases": len(val_ids),
                                                          "fold": d["fold"]}


def _loader_workers(setting: int | None, device: torch.device) -> int:
    """``train.loader_workers``, or by default 3 on CUDA (a step there takes ~20 ms, cutting a batch of windows
    ~25 ms) and 0 on the CPU (the step takes ~0.3 s: windows cut in the training process cost little)."""
    if setting is not None:
        return setting
    return 3 if device.type == "cuda" else 0


def _read_init(path: str | None, r: Recipe) -> LoadedModel | None:
    """The model to fine-tune (network, weights, provenance); the [model] settings the recipe gives must be its."""
    if not path:
        return None
    from ..model.model_io import load_model
    from ..util.errors import ResMTNetError

    init = load_model(path)
    have = init.config.to_dict()
    for key in r.model_given:
        if key == "characterisation_heads" and r.model[key]:
            continue  # heads added to a network without them (:func:`_network_to_train`)
        if _comparable(key, r.model[key]) != _comparable(key, have[key]):
            raise ResMTNetError(f"model.{key} = {json.dumps(r.model[key])}: {path} has {json.dumps(have[key])}; a "
                                "fine-tune's network is its checkpoint's (leave the setting out)")
    return init


def _network_to_train(init: LoadedModel, r: Recipe):
    """The network a fine-tune trains: its checkpoint's, with the characterisation heads added where the recipe
    asks for them (``model.characterisation_heads = true``) and the checkpoint has none."""
    from dataclasses import replace

    mcfg = init.config
    if "characterisation_heads" in r.model_given and r.model["characterisation_heads"]:
        mcfg = replace(mcfg, characterisation_heads=True)
    return mcfg


def heads_only(trainable, init_path: str | None) -> bool:
    """Whether a run trains nothing but the characterisation heads of a checkpoint: its detection (centres,
    probabilities, sizes) and malignancy are then the checkpoint's, bit for bit."""
    from ..model.model import CHARACTERISATION_MODULES

    return bool(init_path) and bool(trainable) and all(m in CHARACTERISATION_MODULES for m in trainable)


def _comparable(key: str, value):
    """A [model] setting in one form, the recipe's or a checkpoint's (numbers as floats, arrays as lists)."""
    if key == "input_windows":
        return [[float(v) for v in w] for w in value]
    if isinstance(value, list | tuple):
        return [int(v) for v in value]
    return float(value)


def _printer(what: str):
    def show(done: int, total: int) -> None:
        print(f"{what}: {done}/{total} ready", flush=True)
    return show


def _run_stage(args: argparse.Namespace, r: Recipe, out: Path, init_path: str | None, export: str | None) -> int:
    """Train one stage of the recipe into ``out`` (from ``init_path``'s weights when given); export when asked."""

    from ..data.training_data import PhantomCases
    from ..evaluate.phantom_eval import PHANTOM_MIN_DIAMETER_MM
    from ..model.model import ModelConfig
    from ..model.model_io import code_version, read_checkpoint
    from ..train.recipe import MODEL_KEYS, to_toml
    from ..train.training import TrainConfig, train
    from ..train.validation import score_cases
    from ..util.atomic import atomic_write
    from ..util.errors import ResMTNetError
    from ..util.runtime import pick_device, torchrun_ranks

    d = r.data
    init = _read_init(init_path, r)
    last = out / "last.pt"
    if not args.no_resume and last.is_file():
        read_checkpoint(last)  # a checkpoint this run cannot resume from stops it now, not after the data is made
    device = pick_device(args.device)  # an unusable --device stops here, before any data is made
    loader_workers = _loader_workers(r.train["loader_workers"], device)
    spacing = init.config.spacing_mm if init else float(r.model["spacing_mm"])
    rank = torchrun_ranks()[1]
    if d["source"] == "phantoms":
        tr = PhantomCases(args.cache, d["phantom_seed"], d["phantoms"], spacing, d["max_nodules"])
        if d["thick_phantoms"]:
            tr = tr + PhantomCases(args.cache, d["thick_seed"], d["thick_phantoms"], spacing, d["max_nodules"],
                                   mix="thick")
        if d["mass_phantoms"]:
            tr = tr + PhantomCases(args.cache, d["mass_seed"], d["mass_phantoms"], spacing, d["max_nodules"],
                                   mix="masses")
        va = PhantomCases(args.cache, d["val_seed"], d["val_phantoms"], spacing, d["max_nodules"])
        real = _real_backgrounds(args, d, spacing) if d["real_backgrounds"] else None  # a bad folder stops it here
        n_cal = r.export["calibration_phantoms"]
        ca = PhantomCases(args.cache, r.export["calibration_seed"], n_cal, spacing, d["max_nodules"]) \
            if n_cal else None
        shown = rank == 0  # every rank builds its share of each set; rank 0 says how far they are
        va.ensure(args.workers, _printer("validation phantoms") if shown else None)
        if ca is not None:  # made before training, so that a failure shows before the hours of training
            ca.ensure(args.workers, _printer("calibration phantoms") if shown else None)
        tr.ensure(args.workers, _printer("training phantoms") if shown else None)
        train_cases, val_cases = tr.load(), va.load()
        if real is not None:
            real.ensure(args.workers, _printer("real-background cases") if shown else None)
            train_cases += real.load()
        data_prov = {"source": "synthetic phantoms (resmtnet.data.phantom)", "phantom_seed": d["phantom_seed"],
                     "phantoms": d["phantoms"], "val_seed": d["val_seed"], "val_phantoms": d["val_phantoms"],
                     "max_nodules": d["max_nodules"]}
        if d["thick_phantoms"]:
            data_prov.update(thick_phantoms=d["thick_phantoms"], thick_seed=d["thick_seed"])
        if d["mass_phantoms"]:
            data_prov.update(mass_phantoms=d["mass_phantoms"], mass_seed=d["mass_seed"])
        if real is not None:
            data_prov.update(real_backgrounds=[f.name for f in real.folders], real_copies=d["real_copies"],
                             real_seed=d["real_seed"], real_holdout=list(d["real_holdout"]),
                             real_masses=list(real.masses))
        if ca is not None:
            data_prov.update(calibration_seed=r.export["calibration_seed"], calibration_phantoms=n_cal)
    else:
        train_cases, val_cases, data_prov = _cases_from_source(args, r, spacing)
        ca = None
    if not train_cases:
        raise ResMTNetError("no training cases")
    init_state = None
    if init:
        mcfg = _network_to_train(init, r)
        init_state = init.net.state_dict()
    else:
        mcfg = ModelConfig(**_model_settings(r))
    cfg = TrainConfig.from_dict({**r.train, "loader_workers": loader_workers,
                                 "mine_negatives_at": sorted(set(r.train["mine_negatives_at"]))})
    min_lung_share = cfg.min_lung_share
    min_d = d["val_min_diameter"]
    if min_d is None:
        min_d = PHANTOM_MIN_DIAMETER_MM if d["source"] in ("phantoms", "phantom-folder") else 0.0
    data_prov["val_min_diameter_mm"] = min_d
    data_prov["val_min_lung_share"] = min_lung_share
    val_fn = (lambda net: score_cases(net, val_cases, next(net.parameters()).device, min_diameter_mm=min_d,
                                      min_lung_share=min_lung_share)) if val_cases else None
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "log.jsonl"
    # the stage's recipe as it ran: the network's own settings, and the worker count the windows came from
    tables = r.to_dict()
    tables["model"] = {k: v for k, v in mcfg.to_dict().items() if k in MODEL_KEYS}
    tables["train"]["loader_workers"] = loader_workers
    if rank == 0:
        note = "the recipe of this run (resmtnet train --config this file)" + \
            (f"; fine-tuned from {init_path} (train --init): [model] is that checkpoint's network" if init else "")
        text = to_toml(tables, note)
        atomic_write(out / "config.toml", lambda tmp: tmp.write_text(text))

    def log(line: str) -> None:
        print(line, flush=True)
        if rank == 0 and line.startswith("{"):  # the records; notes such as "resumed from ..." only on screen
            with open(log_path, "a") as f:
                f.write(line + "\n")

    if rank == 0:
        log(json.dumps({"start": {"train_cases": len(train_cases), "val_cases": len(val_cases),
                                  "config": cfg.to_dict(), "model": mcfg.to_dict(), "data": data_prov}}))
    # the code that runs is the code imported now: a checkout that moves on during the hours of training must
    # not put its later commit into the checkpoints (save_checkpoint would read HEAD when each one is written)
    prov = {"code_version": code_version(), "data": data_prov, "command": command_line(args), "recipe": tables}
    if init:
        init_prov = init.meta.get("provenance", {})
        # its own lineage too (what it was trained with and from), so a fine-tune of a fine-tune keeps every stage
        prov["init_from"] = {"path": str(init_path),
                             **{k: init_prov.get(k) for k in ("code_version", "command", "data")},
                             **{k: init_prov[k] for k in ("train_config", "init_from") if k in init_prov}}
    last = train(train_cases, out, cfg, mcfg, val_fn=val_fn, provenance=prov,
                 resume=not args.no_resume, device=args.device, log=log, progress_bar=not args.no_progress,
                 init_state=init_state)
    if rank == 0:
        best = out / "best.pt"
        print(f"checkpoints: {last}" + (f" and {best}" if best.exists() else ""))
        if export and heads_only(cfg.trainable, init_path):
            _export_heads(best if best.exists() else last, Path(export), init, data_prov, command_line(args), tables)
        elif export:
            cal_cases = ca.load() if ca is not None else (val_cases or train_cases[:8])
            _export(best if best.exists() else last, Path(export), cal_cases,
                    r.export["fp_rate"], data_prov, command_line(args), min_d, device, min_lung_share,
                    calibration_set="calibration phantoms" if ca is not None else "validation",
                    recipe=tables)
    return 0


def command_line(args: argparse.Namespace) -> str:
    """The command as it was given (``main(argv)`` records it; ``sys.argv`` is the test runner's there)."""
    import shlex
    import sys

    argv = getattr(args, "argv", None)
    return "resmtnet " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))


def _export_heads(src: Path, dst: Path, init: LoadedModel, data_prov: dict, command: str, recipe: dict) -> None:
    """The release file of a run that trained only the characterisation heads: its threshold, test-time passes
    and detection metrics are the starting checkpoint's, since every weight detection reads is that checkpoint's
    (checked here bit for bit, or nothing is written)."""
    import torch

    from ..model.model_io import load_model, read_checkpoint, save_checkpoint
    from ..util.errors import ResMTNetError

    model = load_model(src)
    trained = model.net.state_dict()
    changed = [k for k, v in init.net.state_dict().items() if not torch.equal(v, trained[k])]
    if changed:
        raise ResMTNetError(f"{src}: {len(changed)} weights of the starting network changed (e.g. {changed[0]}); "
                            "a heads-only export keeps them as they were")
    prov = dict(read_checkpoint(src).get("provenance", {}))
    prov.update({"data": data_prov, "exported_from": str(src), "command": command, "recipe": recipe,
                 "threshold_calibration": init.meta.get("provenance", {}).get("threshold_calibration"),
                 "detection_from": "the starting checkpoint (init_from): its weights, threshold and metrics"})
    save_checkpoint(dst, model.net, provenance=prov, metrics=init.meta.get("metrics", {}),
                    decode=init.meta.get("decode", {}))


def _export(src: Path, dst: Path, cases, fp_rate: float, data_prov: dict, command: str,
            min_diameter_mm: float = 0.0, device: torch.device | str = "cpu", min_lung_share: float = 0.0,
            calibration_set: str = "validation", recipe: dict | None = None) -> None:
    from ..model.inference import TTA_FLIPS
    from ..model.model_io import load_model, read_checkpoint, save_checkpoint
    from ..train.validation import calibrate

    model = load_model(src, device)
    tta = True  # calibrate as detection runs by default
    thr, at, metrics = calibrate(model.net, cases, fp_rate, device, tta=tta, min_diameter_mm=min_diameter_mm,
                                 min_lung_share=min_lung_share)
    prov = dict(read_checkpoint(src).get("provenance", {}))
    prov.update({"data": data_prov, "exported_from": str(src), "command": command, "recipe": recipe,
                 "threshold_calibration": {"fp_per_scan_target": fp_rate, "tta": tta, "tta_passes": len(TTA_FLIPS),
                                           "min_diameter_mm": min_diameter_mm, "min_lung_share": min_lung_share,
                                           "cases": calibration_set, "n_cases": len(cases), **at}})
    # detection must run the passes the threshold was found with, so they travel in the file
    scored_on = "validation" if calibration_set == "validation" else "calibration"
    save_checkpoint(dst, model.net, provenance=prov, metrics={scored_on: metrics},
                    decode={"threshold": round(thr, 4), "tta_flips": [list(f) for f in TTA_FLIPS]})
    print(f"exported {dst} ({dst.stat().st_size / 2 ** 20:.1f} MB): threshold {thr:.3f} "
          f"({at['fp_per_scan']:.2f} FP/scan, sensitivity {at['sensitivity']:.3f} on {len(cases)} "
          f"{'validation cases' if calibration_set == 'validation' else calibration_set}, with TTA); {metrics}")
