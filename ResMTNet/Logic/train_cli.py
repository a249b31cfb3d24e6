"""Train Res-MTNet on synthetic phantoms (default), a LUNA16 folder, LIDC-IDRI series, or a phantom folder.

Cases are resampled once onto the model's grid and cached (``--cache``); checkpoints land in ``-o``
after every epoch (``last.pt``, and ``best.pt`` by the validation CPM) and a run resumes from
``last.pt`` by itself. One process here; for several GPUs or nodes start the same command under
``torchrun`` (DistributedDataParallel, NCCL on GPUs, gloo on CPUs).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from .phantom import MIN_LUNG_SHARE

if TYPE_CHECKING:
    import torch

    from .model_io import LoadedModel


DEFAULT_SPACING_MM = 1.5


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", required=True, help="run folder (checkpoints, log.jsonl)")
    p.add_argument("--data", default="phantoms", choices=["phantoms", "phantom-folder", "luna16", "lidc"],
                   help="training data (default: phantoms generated on the fly and cached)")
    p.add_argument("--data-dir", help="folder of the data set (phantom-folder, luna16: the .mhd folder, lidc)")
    p.add_argument("--annotations", help="LUNA16 annotations.csv")
    p.add_argument("--candidates", help="LUNA16 candidates.csv (hard negatives), optional")
    p.add_argument("--fold", type=int, default=None, help="ten-fold split by patient: validate on this fold (0-9)")
    p.add_argument("--phantoms", type=int, default=220, help="number of training phantoms (default 220)")
    p.add_argument("--phantom-seed", type=int, default=1000)
    p.add_argument("--subtle-phantoms", type=int, default=0, metavar="N",
                   help="phantoms: N more training phantoms from the 'subtle' nodule mix (small nodules on the "
                        "pleura or a vessel, faint ground-glass); evaluation always uses the screening mix")
    p.add_argument("--subtle-seed", type=int, default=3000, help="seed of the --subtle-phantoms set")
    p.add_argument("--thick-phantoms", type=int, default=0, metavar="N",
                   help="phantoms: N more training phantoms from the 'thick' mix (screening nodules, 3-5 mm "
                        "slices); evaluation always uses the screening mix")
    p.add_argument("--thick-seed", type=int, default=6000, help="seed of the --thick-phantoms set")
    p.add_argument("--val-phantoms", type=int, default=12)
    p.add_argument("--val-seed", type=int, default=2000)
    p.add_argument("--val-every", type=int, default=1, help="validate every N epochs (and after the last)")
    p.add_argument("--val-min-diameter", type=float, default=None, metavar="MM",
                   help="validation and threshold calibration score nodules of at least MM; smaller ones are "
                        "excluded marks (default: 4 on phantoms, as `resmtnet evaluate --phantoms` scores them; "
                        "0 on LUNA16 / LIDC-IDRI, whose annotations are the reference)")
    p.add_argument("--min-lung-share", type=float, default=MIN_LUNG_SHARE, metavar="S",
                   help="nodules with less of themselves in the lung than this (a phantom's lung_share: drawn into "
                        "the chest wall or mediastinum) are not taught as nodules, and validation scores them as "
                        "excluded marks, as `resmtnet evaluate --phantoms` does (default 0.5; 0 teaches every "
                        "nodule, as files trained before 2026-11-27 were)")
    p.add_argument("--max-nodules", type=int, default=8, help="nodules drawn per training phantom (1..N)")
    p.add_argument("--cache", default="cache/phantoms", help="case cache folder")
    p.add_argument("--workers", type=int, default=2, help="processes that generate/resample cases")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--steps-per-epoch", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--patch", type=int, default=64, help="training window edge in voxels (multiple of 16)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--loss-weighting", choices=["fixed", "uncertainty"], default="fixed")
    p.add_argument("--spacing", type=float, default=None,
                   help="model grid spacing in mm (default 1.5; with --init the checkpoint's)")
    p.add_argument("--input-window", action="append", default=[], metavar="LO,HI", type=_hu_window,
                   help="an extra input channel: the CT clipped to this HU window (e.g. a lung window for faint "
                        "ground-glass, written --input-window=-1000,-400: with the '=', or the value reads as an "
                        "option); repeatable; a fresh network only (not with --init)")
    p.add_argument("--blocks", type=_block_counts, default=None, metavar="N,N,N,N",
                   help="residual blocks in each of the encoder's four strided stages (default 0,1,2,2)")
    p.add_argument("--output-stride", type=int, choices=[2, 4], default=None,
                   help="model-grid voxels per cell of the output maps (default 4: 6 mm cells on the 1.5 mm "
                        "grid; 2 resolves small nodules more finely at about twice the cost); with --init the "
                        "checkpoint's, or this one: the pyramid then gains or drops the finest encoder stage")
    p.add_argument("--tiny", action="store_true", help="a very small network (tests, smoke runs)")
    p.add_argument("--init", metavar="CHECKPOINT",
                   help="fine-tune: start from this checkpoint's weights (e.g. the shipped model); the network "
                        "and its grid spacing come from the checkpoint, and --mine-negatives-at may then be 0")
    p.add_argument("--train-heads", type=_head_names, default=(), metavar="HEAD[,HEAD]",
                   help="with --init: train only these task heads (center, offset, size, malignancy); the shared "
                        "encoder, pyramid, head trunk and the other heads keep the checkpoint's weights (e.g. "
                        "size,malignancy re-teaches sizing and leaves the centre and offset maps as they were)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--loader-workers", type=int, default=None,
                   help="processes that cut training windows beside the step (default: 3 when training on a GPU, "
                        "which would otherwise wait for windows; 0 on the CPU, where the step itself is the work)")
    p.add_argument("--mine-negatives-at", type=int, nargs="+", default=[], metavar="EPOCH",
                   help="hard-negative mining: after these epochs run the network over its training cases and "
                        "centre a share of the negative windows on its findings away from every nodule")
    p.add_argument("--mine-floor", type=float, default=0.15, metavar="P",
                   help="mined findings need at least this probability (default 0.15)")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="keep an exponential moving average of the weights with this decay per step (e.g. 0.999; "
                        "default 0: off); validation, mining, the checkpoints and the export use the average")
    p.add_argument("--offset-reach", type=int, default=0, choices=[0, 1],
                   help="cells that learn the centre offset: 0 (default) each nodule's centre cell, 1 the 3x3x3 "
                        "cells around it, so a peak one cell off still gives the centre")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUT/last.pt exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    p.add_argument("--export", metavar="PATH",
                   help="after training, write the release checkpoint (best by validation, no optimizer state) "
                        "to PATH with its finding threshold calibrated on the validation cases "
                        "(or --calibration-phantoms)")
    p.add_argument("--export-fp-rate", type=float, default=1.0,
                   help="false positives per validation scan at the calibrated threshold (default 1)")
    p.add_argument("--calibration-phantoms", type=int, default=0, metavar="N",
                   help="phantoms: calibrate the export's threshold on N phantoms of their own (--calibration-seed) "
                        "instead of the validation phantoms, which also chose the epoch (default 0: validation)")
    p.add_argument("--calibration-seed", type=int, default=5000, help="seed of the --calibration-phantoms set")
    p.add_argument("--while-generating", action="store_true",
                   help="phantoms: don't wait for the whole training pool; each epoch trains on the phantoms "
                        "cached so far (another process, e.g. an earlier train command, fills the cache)")


def _hu_window(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: two HU values, LO,HI (e.g. -1000,-400)") from None
    if not hi > lo:
        raise argparse.ArgumentTypeError(f"{text!r}: HI must exceed LO")
    return lo, hi


def _head_names(text: str) -> tuple[str, ...]:
    from .model import head_modules

    heads = tuple(h.strip() for h in text.split(",") if h.strip())
    try:
        if not heads:
            raise ValueError("no task head named")
        head_modules(heads)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
    return heads


def _block_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: four whole numbers, e.g. 1,1,2,2") from None
    if len(counts) != 4 or min(counts) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: four counts of 0 or more, one per stage (e.g. 1,1,2,2)")
    return counts


def tiny_model_config(spacing: float):
    from .model import ModelConfig

    return ModelConfig(stem_channels=8, stage_channels=(8, 16, 16, 24), blocks_per_stage=(0, 1, 1, 1),
                       pyramid_channels=16, head_channels=8, spacing_mm=spacing)


def _cases_from_source(args, spacing: float):
    """Train/validation cases from a LUNA16 / LIDC / phantom-folder case source, through the cache."""
    from . import datasets
    from .errors import ResMTNetError

    if not args.data_dir:
        raise ResMTNetError(f"--data {args.data} needs --data-dir")
    if args.data == "luna16":
        if not args.annotations:
            raise ResMTNetError("--data luna16 needs --annotations (LUNA16 annotations.csv)")
        source = datasets.Luna16Source(args.data_dir, args.annotations, args.candidates)
    elif args.data == "lidc":
        source = datasets.LidcSource(args.data_dir)
    else:
        source = datasets.PhantomFolderSource(args.data_dir)
    cached = datasets.TrainCaseCache(source, Path(args.cache), spacing)
    ids = source.case_ids()
    if args.fold is not None:
        train_ids, val_ids = datasets.fold_split(ids, args.fold, patient_of=getattr(source, "patient_of", None))
    else:
        train_ids, val_ids = ids, []
    cached.ensure(ids, workers=args.workers, progress=_printer("cases"))
    return cached.load(train_ids), cached.load(val_ids), {"source": args.data, "data_dir": str(args.data_dir),
                                                          "cases": len(train_ids), "val_cases": len(val_ids),
                                                          "fold": args.fold}


def _loader_workers(args: argparse.Namespace, device: torch.device) -> int:
    """``--loader-workers``, or by default 3 on CUDA (a step there takes ~20 ms, cutting a batch of windows
    ~25 ms) and 0 on the CPU (the step takes ~0.3 s: windows cut in the training process cost little)."""
    if args.loader_workers is not None:
        if args.loader_workers < 0:
            from .errors import ResMTNetError

            raise ResMTNetError(f"--loader-workers {args.loader_workers}: must be 0 or more")
        return args.loader_workers
    return 3 if device.type == "cuda" else 0


def _read_init(args: argparse.Namespace) -> LoadedModel | None:
    """The model of ``--init`` (network, weights, provenance), checked against the other options."""
    from .errors import ResMTNetError

    if not args.init:
        if args.train_heads:
            raise ResMTNetError("--train-heads needs --init: the other parts keep a checkpoint's weights")
        return None
    from .model_io import load_model

    if args.tiny:
        raise ResMTNetError("--init and --tiny: the network comes from the checkpoint, leave --tiny out")
    if args.blocks:
        raise ResMTNetError("--init and --blocks: the network comes from the checkpoint, leave --blocks out")
    if args.input_window:
        raise ResMTNetError("--init and --input-window: the network comes from the checkpoint, leave "
                            "--input-window out")
    init = load_model(args.init)
    if args.spacing is not None and abs(float(args.spacing) - init.config.spacing_mm) > 1e-9:
        raise ResMTNetError(f"--spacing {args.spacing}: {args.init} was trained on a "
                            f"{init.config.spacing_mm} mm grid")
    return init


def _printer(what: str):
    def show(done: int, total: int) -> None:
        print(f"{what}: {done}/{total} ready", flush=True)
    return show


def run(args: argparse.Namespace) -> int:
    import torch

    from .errors import ResMTNetError
    from .inference import pick_device
    from .model import ModelConfig, restride_state
    from .model_io import code_version, read_checkpoint
    from .phantom_eval import PHANTOM_MIN_DIAMETER_MM
    from .training import TrainConfig, train
    from .training_data import PhantomCases
    from .validation import score_cases

    if args.patch % 16:
        raise ResMTNetError(f"--patch {args.patch}: must be a multiple of 16")
    first = 0 if args.init else 1  # a fine-tuned network can mine before its first epoch, a fresh one can't
    bad_mining = [e for e in args.mine_negatives_at if not first <= e < args.epochs]
    if bad_mining:
        raise ResMTNetError(f"--mine-negatives-at {bad_mining[0]}: must lie between {first} and --epochs - 1 "
                            f"({args.epochs - 1})")
    if not 0.0 < args.mine_floor < 1.0:
        raise ResMTNetError(f"--mine-floor {args.mine_floor}: must lie between 0 and 1")
    for mix in TRAINING_ONLY_MIXES:
        n_mix = getattr(args, f"{mix}_phantoms")
        if n_mix < 0:
            raise ResMTNetError(f"--{mix}-phantoms {n_mix}: must be 0 or more")
    for mix, (_, seed) in _training_only_sets(args).items():
        if args.data == "phantoms" and seed == args.val_seed:  # the thick mix would train on the same patients
            raise ResMTNetError(f"--{mix}-seed {seed}: --val-seed is the same; validation phantoms must be "
                                "phantoms the run does not train on")
    if not 0.0 <= args.min_lung_share <= 1.0:
        raise ResMTNetError(f"--min-lung-share {args.min_lung_share}: must lie between 0 and 1")
    if not 0.0 <= args.ema < 1.0:
        raise ResMTNetError(f"--ema {args.ema}: must lie between 0 (off) and 1 (e.g. 0.999)")
    _check_calibration_set(args)
    init = _read_init(args)
    last = Path(args.out) / "last.pt"
    if not args.no_resume and last.is_file():
        read_checkpoint(last)  # a checkpoint this run cannot resume from stops it now, not after the data is made
    device = pick_device(args.device)  # an unusable --device stops here, before any data is made
    loader_workers = _loader_workers(args, device)
    spacing = init.config.spacing_mm if init else float(args.spacing or DEFAULT_SPACING_MM)
    rank = int(os.environ.get("RANK", "0"))
    if args.data == "phantoms":
        tr = PhantomCases(args.cache, args.phantom_seed, args.phantoms, spacing, args.max_nodules)
        for mix, (n_mix, seed_mix) in _training_only_sets(args).items():
            tr = tr + PhantomCases(args.cache, seed_mix, n_mix, spacing, args.max_nodules, mix=mix)
        va = PhantomCases(args.cache, args.val_seed, args.val_phantoms, spacing, args.max_nodules)
        ca = PhantomCases(args.cache, args.calibration_seed, args.calibration_phantoms, spacing, args.max_nodules) \
            if args.calibration_phantoms else None
        if rank == 0:
            va.ensure(args.workers, _printer("validation phantoms"))
            if ca is not None:  # made before training, so that a failure shows before the hours of training
                ca.ensure(args.workers, _printer("calibration phantoms"))
            if not args.while_generating:
                tr.ensure(args.workers, _printer("training phantoms"))
        if torch.distributed.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # other ranks wait for rank 0's cache by polling the files it writes
            import time

            while not all(tr.path(cid).exists() for cid, _, _ in tr.items):
                time.sleep(2)
        train_cases, val_cases = tr.load(available_only=args.while_generating), va.load()
        refresh = (lambda: tr.load(available_only=True)) if args.while_generating else None
        data_prov = {"source": "synthetic phantoms (resmtnet.phantom)", "phantom_seed": args.phantom_seed,
                     "phantoms": args.phantoms, "val_seed": args.val_seed, "val_phantoms": args.val_phantoms,
                     "max_nodules": args.max_nodules, "subtle_phantoms": args.subtle_phantoms,
                     "subtle_seed": args.subtle_seed if args.subtle_phantoms else None}
        if args.thick_phantoms:  # runs without thick phantoms keep the provenance they always had
            data_prov.update(thick_phantoms=args.thick_phantoms, thick_seed=args.thick_seed)
        if ca is not None:
            data_prov.update(calibration_seed=args.calibration_seed, calibration_phantoms=args.calibration_phantoms)
    else:
        train_cases, val_cases, data_prov = _cases_from_source(args, spacing)
        refresh = None
        ca = None
    if not train_cases:
        raise ResMTNetError("no training cases")
    init_state = None
    if init:
        mcfg = init.config
        init_state = init.net.state_dict()
        if args.output_stride and args.output_stride != mcfg.output_stride:
            mcfg = replace(mcfg, output_stride=args.output_stride)
            init_state = restride_state(init_state, init.config, mcfg)
    else:
        mcfg = tiny_model_config(spacing) if args.tiny else ModelConfig(spacing_mm=spacing)
        mcfg = replace(mcfg, input_windows=tuple(args.input_window))
        if args.blocks:
            mcfg = replace(mcfg, blocks_per_stage=args.blocks)
        if args.output_stride:
            mcfg = replace(mcfg, output_stride=args.output_stride)
    cfg = TrainConfig(patch=args.patch, batch_size=args.batch_size, epochs=args.epochs,
                      steps_per_epoch=args.steps_per_epoch, lr=args.lr, loss_weighting=args.loss_weighting,
                      seed=args.seed, threads=args.threads, val_every=args.val_every,
                      loader_workers=loader_workers, mine_negatives_at=tuple(sorted(set(args.mine_negatives_at))),
                      mine_floor=args.mine_floor, ema_decay=args.ema, offset_reach=args.offset_reach,
                      min_lung_share=args.min_lung_share, train_heads=args.train_heads)
    min_d = args.val_min_diameter
    if min_d is None:
        min_d = PHANTOM_MIN_DIAMETER_MM if args.data in ("phantoms", "phantom-folder") else 0.0
    data_prov["val_min_diameter_mm"] = min_d
    data_prov["val_min_lung_share"] = args.min_lung_share
    val_fn = (lambda net: score_cases(net, val_cases, next(net.parameters()).device, min_diameter_mm=min_d,
                                      min_lung_share=args.min_lung_share)) if val_cases else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "log.jsonl"

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
    prov = {"code_version": code_version(), "data": data_prov, "command": command_line(args)}
    if init:
        init_prov = init.meta.get("provenance", {})
        prov["init_from"] = {"path": str(args.init),
                             **{k: init_prov.get(k) for k in ("code_version", "command", "data")}}
    last = train(train_cases, out, cfg, mcfg, val_fn=val_fn, provenance=prov,
                 resume=not args.no_resume, device=args.device, log=log, progress_bar=not args.no_progress,
                 refresh=refresh, init_state=init_state)
    if rank == 0:
        best = out / "best.pt"
        print(f"checkpoints: {last}" + (f" and {best}" if best.exists() else ""))
        if args.export:
            cal_cases = ca.load() if ca is not None else (val_cases or train_cases[:8])
            _export(best if best.exists() else last, Path(args.export), cal_cases,
                    args.export_fp_rate, data_prov, command_line(args), min_d, device, args.min_lung_share,
                    calibration_set="calibration phantoms" if ca is not None else "validation")
    return 0


def command_line(args: argparse.Namespace) -> str:
    """The command as it was given (``main(argv)`` records it; ``sys.argv`` is the test runner's there)."""
    import shlex
    import sys

    argv = getattr(args, "argv", None)
    return "resmtnet " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))


def _check_calibration_set(args: argparse.Namespace) -> None:
    """``--calibration-phantoms``: only with phantoms and ``--export``, and a seed no other set of the run uses."""
    from .errors import ResMTNetError

    n = args.calibration_phantoms
    if n < 0:
        raise ResMTNetError(f"--calibration-phantoms {n}: must be 0 (calibrate on validation) or more")
    if not n:
        return
    if args.data != "phantoms":
        raise ResMTNetError("--calibration-phantoms works with --data phantoms only (other data calibrate on "
                            "their validation fold)")
    if not args.export:
        raise ResMTNetError("--calibration-phantoms calibrates the export's threshold: it needs --export")
    used = {"--phantom-seed": args.phantom_seed, "--val-seed": args.val_seed}
    used.update({f"--{mix}-seed": seed for mix, (_, seed) in _training_only_sets(args).items()})
    for flag, seed in used.items():
        if seed == args.calibration_seed:
            raise ResMTNetError(f"--calibration-seed {seed}: {flag} is the same; the calibration phantoms must be "
                                "phantoms the run does not otherwise see")


#: training-only phantom mixes (:data:`resmtnet.phantom.PHANTOM_MIXES`), each with its --MIX-phantoms and
#: --MIX-seed options
TRAINING_ONLY_MIXES = ("subtle", "thick")


def _training_only_sets(args: argparse.Namespace) -> dict[str, tuple[int, int]]:
    """The training-only mixes this run adds: mix name -> (number of phantoms, seed)."""
    return {mix: (getattr(args, f"{mix}_phantoms"), getattr(args, f"{mix}_seed")) for mix in TRAINING_ONLY_MIXES
            if getattr(args, f"{mix}_phantoms")}


def _export(src: Path, dst: Path, cases, fp_rate: float, data_prov: dict, command: str,
            min_diameter_mm: float = 0.0, device: torch.device | str = "cpu", min_lung_share: float = 0.0,
            calibration_set: str = "validation") -> None:
    from .inference import TTA_FLIPS
    from .model_io import load_model, read_checkpoint, save_checkpoint
    from .validation import calibrate

    model = load_model(src, device)
    tta = True  # calibrate as detection runs by default
    thr, at, metrics = calibrate(model.net, cases, fp_rate, device, tta=tta, min_diameter_mm=min_diameter_mm,
                                 min_lung_share=min_lung_share)
    prov = dict(read_checkpoint(src).get("provenance", {}))
    prov.update({"data": data_prov, "exported_from": str(src),
                 "command": command,
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
