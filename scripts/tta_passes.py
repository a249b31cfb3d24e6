"""What each test-time augmentation pass adds, and which window: the network run once per pass and window
policy, the maps stored, then sets of passes scored offline (docs/evaluation.md, *Choosing the passes and the window*).

Three steps, each one command (phantoms made beforehand with ``resmtnet.data.phantom.write_phantom_set``, as
``resmtnet evaluate --phantoms`` makes them, or cached as training cases with ``PhantomCases``)::

    # 1. maps: every pass (the eight of TTA_FLIPS) with the old tiling (128³, 32 overlap) and the one window
    python scripts/tta_passes.py maps --phantoms DIR/phantoms --out MAPS/val          # evaluate-style phantoms
    python scripts/tta_passes.py maps --cases CACHE --seed 5000 --n 40 --out MAPS/cal  # calibration cases
    # 2. score sets of passes as `resmtnet evaluate --phantoms` does (LUNA16 FROC, nodules >= 4 mm in the lung)
    python scripts/tta_passes.py score --phantoms DIR/phantoms --maps MAPS/val [--settings ...] [--bootstrap 1000]
    # 3. the export's threshold for a setting (1 FP/scan on the calibration cases, as train/validation.calibrate)
    python scripts/tta_passes.py calibrate --cases CACHE --seed 5000 --n 40 --maps MAPS/cal [--settings ...]
    # the network's seconds per setting on a CT (one pass of each policy, interleaved rounds)
    python scripts/tta_passes.py time --ct ../shared/data/LIDC-IDRI-0001/dicom --rounds 3

A setting is ``POLICY:PASSES``: POLICY ``tiles`` (128³ windows, 32 overlap: detection's default,
:data:`resmtnet.model.inference.WINDOW`) or ``window`` (:data:`ONE_WINDOW`: one window over the model grid);
PASSES a name of :data:`SUBSETS`. Each pass is stored as its own maps (flipped back), so a set of passes is
their mean, as ``predict_volume`` averages them (the same sum, in the same order).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from resmtnet.model.inference import TTA_FLIPS, WINDOW, predict_volume

#: the largest one window compared: LIDC-IDRI-0001 and every phantom fit (docs/benchmarks.md, *The network's window*)
ONE_WINDOW = 224
#: the window policies compared: (window side, overlap); ``tiles`` is detection's default
POLICIES = {"tiles": (WINDOW, 32), "window": (ONE_WINDOW, 32)}
#: the sets of passes compared (indices into TTA_FLIPS, in its order)
SUBSETS = {
    "1": [()],
    "2x": [(), (2,)],  # the scan and its left-right mirror image
    "2p": [(), (0, 1, 2)],  # the scan and its point reflection
    "4": [(), (2,), (1,), (0,)],  # the scan and its three single-axis mirror images
    "8": list(TTA_FLIPS),
}


def _name(axes: tuple[int, ...]) -> str:
    return "f" + "".join(str(a) for a in axes) if axes else "f"


def _run_passes(net, hu: np.ndarray, device: torch.device, policies: list[str]
                ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    maps: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for policy in policies:
        window, overlap = POLICIES[policy]
        for axes in TTA_FLIPS:
            t = time.perf_counter()
            out = predict_volume(net, hu, device, window=window, overlap=overlap, batch_size=1, flips=(axes,))
            seconds[f"{policy}/{_name(axes)}"] = time.perf_counter() - t
            for k, v in out.items():
                maps[f"{policy}/{_name(axes)}/{k}"] = v.numpy()
    return maps, seconds


def cmd_maps(a: argparse.Namespace) -> None:
    from resmtnet.detect.lungmask import LungMask
    from resmtnet.detect.pipeline import LUNG_MARGIN_MM, _near_lung
    from resmtnet.io.ctio import read_ct
    from resmtnet.io.orientation import canonical_ct
    from resmtnet.model.model_io import load_model
    from resmtnet.model.prepare import index_bounds_to_world, to_model_grid, world_bounds

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu")
    model = load_model(a.model, device)
    k, n = (int(v) for v in a.part.split("/"))
    for uid, source in _items(a)[k::n]:
        path = out / f"{uid}.npz"  # a set's maps are made once: a run stopped goes on where it stopped
        if path.is_file():
            continue
        t0 = time.perf_counter()
        extra: dict[str, np.ndarray] = {}
        if a.phantoms:  # as detect_ct brings a CT to the model grid
            ct, _ = canonical_ct(read_ct(source))
            lungs = LungMask(ct.array, ct.spacing, direction=ct.direction)
            box = lungs.index_bounds()
            bounds = index_bounds_to_world(*box, ct, LUNG_MARGIN_MM) if box else world_bounds(ct)
            hu, grid = to_model_grid(ct, model.config.spacing_mm, bounds)
            lung_grid, _ = to_model_grid(ct, model.config.spacing_mm, bounds, image=lungs.mask)
            extra = {"near_lung": _near_lung(lung_grid > 0.5, grid), "origin": np.asarray(grid.origin, float),
                     "spacing": np.float64(grid.spacing)}
        else:
            hu = source.image.astype(np.float32)
        maps, seconds = _run_passes(model.net, hu, device, a.policies.split(","))
        np.savez(path.with_suffix(".tmp.npz"), shape=np.array(hu.shape), **extra, **maps)
        path.with_suffix(".tmp.npz").rename(path)
        with open(out / "seconds.jsonl", "a") as f:
            f.write(json.dumps({"uid": uid, "grid": list(hu.shape), **seconds}) + "\n")
        print(f"{uid}: grid {hu.shape}, {time.perf_counter() - t0:.1f} s "
              f"(tiles {sum(v for k, v in seconds.items() if k.startswith('tiles')):.1f} s, "
              f"window {sum(v for k, v in seconds.items() if k.startswith('window')):.1f} s)", flush=True)


def _items(a: argparse.Namespace):
    """(uid, source) of the set: a phantom file, or a cached training case."""
    if a.phantoms:
        from resmtnet.io.luna16_csv import annotations_by_scan

        uids = sorted(annotations_by_scan(Path(a.phantoms) / "annotations.csv"))
        return [(u, Path(a.phantoms) / f"{u}.nrrd") for u in uids]
    from resmtnet.data.training_data import PhantomCases

    cases = PhantomCases(a.cases, a.seed, a.n, 1.5, 8)
    return [(c.case_id, c) for c in cases.load()]


def _mean_maps(z, policy: str, passes: list[tuple[int, ...]]) -> dict[str, torch.Tensor]:
    keys = sorted({k.split("/")[2] for k in z.files if k.startswith(f"{policy}/")})
    total: dict[str, torch.Tensor] | None = None
    for axes in passes:
        out = {k: torch.from_numpy(z[f"{policy}/{_name(axes)}/{k}"]) for k in keys}
        total = out if total is None else {k: total[k] + out[k] for k in out}
    assert total is not None
    return {k: v / len(passes) for k, v in total.items()}


def _settings(a: argparse.Namespace) -> list[tuple[str, str]]:
    return [tuple(s.split(":")) for s in a.settings.split(",")]  # type: ignore[misc]


def cmd_score(a: argparse.Namespace) -> None:
    from resmtnet.data.phantom import MIN_LUNG_SHARE
    from resmtnet.detect.measurement import measure_findings
    from resmtnet.detect.pipeline import peaks_from_maps
    from resmtnet.evaluate.froc import Finding, evaluate
    from resmtnet.evaluate.phantom_eval import PHANTOM_MIN_DIAMETER_MM, phantom_marks
    from resmtnet.io.ctio import read_ct
    from resmtnet.io.luna16_csv import annotations_by_scan
    from resmtnet.io.orientation import canonical_ct
    from resmtnet.model.model_io import load_model
    from resmtnet.model.prepare import ModelGrid

    model = load_model(a.model)
    truths = annotations_by_scan(Path(a.phantoms) / "annotations.csv")
    uids = sorted(truths)
    findings: dict[tuple[str, str], list] = {s: [] for s in _settings(a)}
    marks = []
    for uid in uids:
        ct, _ = canonical_ct(read_ct(Path(a.phantoms) / f"{uid}.nrrd"))
        with np.load(Path(a.maps) / f"{uid}.npz") as z:
            shape = tuple(int(v) for v in z["shape"])
            grid = ModelGrid(origin=z["origin"], spacing=float(z["spacing"]), shape=shape)
            near = z["near_lung"]
            for policy, subset in findings:
                peaks = peaks_from_maps(model, _mean_maps(z, policy, SUBSETS[subset]), shape)
                # detect_ct's decoding at threshold 0, as evaluate --phantoms runs it
                kept = [p for p in peaks
                        if near[tuple(np.clip(np.round(p.position_vox).astype(int), 0, np.array(shape) - 1))]]
                kept.sort(key=lambda p: -p.probability)
                _, nodules = measure_findings(ct, kept, grid)
                findings[(policy, subset)] += [Finding(uid, n.center_lps, n.probability, n.diameter_mm, n.malignancy,
                                                       row=j) for j, n in enumerate(nodules)]
        marks += phantom_marks(truths.get(uid, []), PHANTOM_MIN_DIAMETER_MM, MIN_LUNG_SHARE)
        print(f"scored {uid}", file=sys.stderr, flush=True)
    rows = []
    for (policy, subset), f in findings.items():
        res = evaluate(f, marks, uids, n_bootstrap=a.bootstrap, seed=0)
        rows.append(_row(policy, subset, res))
    _print(rows, a.json)


def _row(policy: str, subset: str, res) -> dict:
    from resmtnet.train.validation import threshold_at

    d = res.to_dict()
    i2 = list(res.fp_rates).index(2.0)
    found2 = round(float(res.sensitivities[i2]) * d["counts"]["nodules"])
    return {"setting": f"{policy}:{subset}", "passes": len(SUBSETS[subset]), "cpm": round(float(res.cpm), 4),
            "cpm_ci95": d["cpm_ci95"], "sens_at_2fp": round(float(res.sensitivities[i2]), 4),
            "found_at_2fp": f"{found2}/{d['counts']['nodules']}",
            "diameter_mae_mm": d["diameter_error"].get("mae_mm"), "malignancy_auc": d["malignancy_auc"].get("auc"),
            "threshold_at_1fp": round(threshold_at(res, 1.0)[0], 4)}


def _print(rows: list[dict], path: str | None) -> None:
    for r in rows:
        print(json.dumps(r), flush=True)
    if path:
        Path(path).write_text(json.dumps(rows, indent=1) + "\n")


def cmd_calibrate(a: argparse.Namespace) -> None:
    from resmtnet.detect.pipeline import peaks_from_maps
    from resmtnet.evaluate.froc import Finding, evaluate
    from resmtnet.model.model_io import load_model
    from resmtnet.model.prepare import ModelGrid
    from resmtnet.train.validation import case_marks, summarize, threshold_at

    model = load_model(a.model)
    cases = [c for _, c in _items(a)]
    findings: dict[tuple[str, str], list] = {s: [] for s in _settings(a)}
    marks = []
    for c in cases:  # as validation.case_findings: the peaks on the case's grid, no lung check, no measuring
        grid = ModelGrid(origin=np.asarray(c.origin, float), spacing=c.spacing, shape=c.image.shape)
        with np.load(Path(a.maps) / f"{c.case_id}.npz") as z:
            for policy, subset in findings:
                peaks = peaks_from_maps(model, _mean_maps(z, policy, SUBSETS[subset]), c.image.shape)
                findings[(policy, subset)] += [
                    Finding(c.case_id, tuple(float(v) for v in grid.voxel_to_world(p.position_vox)), p.probability,
                            p.diameter_mm, p.malignancy, row=i) for i, p in enumerate(peaks)]
        marks += case_marks(c, a.min_diameter, a.min_lung_share)
    rows = []
    for (policy, subset), f in findings.items():
        res = evaluate(f, marks, [c.case_id for c in cases], n_bootstrap=0)
        thr, at = threshold_at(res, a.fp_rate)
        rows.append({"setting": f"{policy}:{subset}", "threshold": round(thr, 4), **at, **summarize(res)})
    _print(rows, a.json)


def cmd_time(a: argparse.Namespace) -> None:
    """One pass of each policy on a CT's model grid, ``--rounds`` times interleaved (tiles, window, tiles, …):
    the median seconds of a pass, and the settings' network seconds (passes × a pass)."""
    import os

    from resmtnet.detect.lungmask import LungMask
    from resmtnet.detect.pipeline import LUNG_MARGIN_MM
    from resmtnet.io.ctio import read_ct
    from resmtnet.io.orientation import canonical_ct
    from resmtnet.model.model_io import load_model
    from resmtnet.model.prepare import index_bounds_to_world, to_model_grid

    device = torch.device("cpu")
    model = load_model(a.model, device)
    ct, _ = canonical_ct(read_ct(a.ct, int16=True))
    lungs = LungMask(ct.array, ct.spacing, direction=ct.direction)
    hu, _ = to_model_grid(ct, model.config.spacing_mm, index_bounds_to_world(*lungs.index_bounds(), ct, LUNG_MARGIN_MM))
    predict_volume(model.net, hu, device, window=POLICIES["window"][0])  # warm-up (oneDNN's first-call setup)
    seconds: dict[str, list[float]] = {p: [] for p in POLICIES}
    for _ in range(a.rounds):
        for policy, (window, overlap) in POLICIES.items():
            t = time.perf_counter()
            predict_volume(model.net, hu, device, window=window, overlap=overlap, batch_size=1)
            seconds[policy].append(time.perf_counter() - t)
    per_pass = {p: float(np.median(v)) for p, v in seconds.items()}
    print(json.dumps({"grid": list(hu.shape), "load_average": os.getloadavg(),
                      "pass_seconds": {p: [round(x, 2) for x in v] for p, v in seconds.items()},
                      "settings_seconds": {f"{p}:{k}": round(per_pass[p] * len(v), 2)
                                           for p in POLICIES for k, v in SUBSETS.items()}}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    all_settings = ",".join(f"{po}:{s}" for po in POLICIES for s in SUBSETS)
    for name in ("maps", "score", "calibrate", "time"):
        q = sub.add_parser(name)
        q.add_argument("--phantoms", help="a phantom set's folder (its annotations.csv and .nrrd files)")
        q.add_argument("--cases", help="a PhantomCases cache folder (with --seed, --n)")
        q.add_argument("--seed", type=int, default=5000)
        q.add_argument("--n", type=int, default=40)
        q.add_argument("--model", default=None, help="checkpoint (default: the shipped one)")
        q.add_argument("--maps", help="the maps folder (score, calibrate)")
        q.add_argument("--out", help="where maps go (maps)")
        q.add_argument("--settings", default=all_settings, help="POLICY:PASSES,… (default: every pair)")
        q.add_argument("--bootstrap", type=int, default=0, help="bootstrap samples for the CIs (score)")
        q.add_argument("--fp-rate", type=float, default=1.0, help="false positives per scan (calibrate)")
        q.add_argument("--min-diameter", type=float, default=4.0)
        q.add_argument("--min-lung-share", type=float, default=0.5)
        q.add_argument("--json", help="also write the rows here")
        q.add_argument("--policies", default=",".join(POLICIES), help="the window policies to run (maps)")
        q.add_argument("--part", default="0/1", help="K/N: every Nth item from the Kth (maps: N processes at once)")
        q.add_argument("--ct", help="a CT to time the passes on (time)")
        q.add_argument("--rounds", type=int, default=3, help="interleaved rounds (time)")
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    {"maps": cmd_maps, "score": cmd_score, "calibrate": cmd_calibrate, "time": cmd_time}[a.cmd](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
