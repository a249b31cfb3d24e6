"""Time each detection stage and measure peak memory on a CT, on the CPU and, where present, on CUDA.

Not a test: numbers for people. Each device runs the whole detection ``--repeat`` times after
``--warmup`` runs; the table shows the median time of each stage, and peak memory (process RSS, the
whole process: reading, detection and, with ``--outputs``, writing every file as ``resmtnet detect``
does; CUDA memory allocated by torch on the GPU). ``--resize`` benchmarks a larger (or smaller) copy of
the input, made in a child process first, so that making it does not count: how the memory bound is
measured (``resmtnet bench SCAN --resize 1024x1024x800 --device cpu --warmup 0 --repeat 1 --outputs``).

``--whole`` times the command as a user runs it instead: ``resmtnet detect`` in a child process, each run from
the start of the process to its exit, stage by stage as the run's report.json records them (start-up and
imports, loading the model, reading, detection's stages, each file written; the Slicer files' child process's
steps apart), with the peak RSS of the largest process (the command, or its Slicer files' child).
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="CT volume file or DICOM series folder")
    p.add_argument("--model", help="checkpoint (default: the shipped weights)")
    p.add_argument("--device", default="all", choices=["all", "cpu", "cuda"],
                   help="all: CPU, and CUDA where available (default)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per device after the warm-up (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per device first (default 1)")
    p.add_argument("--resize", metavar="XxYxZ",
                   help="benchmark the input resampled to this many voxels over the same extent (e.g. "
                        "1024x1024x800), written to a temporary file by a child process first")
    p.add_argument("--outputs", action="store_true",
                   help="also write every output file, as `resmtnet detect` does (timed once; sizes shown)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="time detection with (default) or without test-time augmentation (see detect)")
    p.add_argument("--whole", action="store_true",
                   help="time the whole `resmtnet detect` command in a child process, stage by stage (its "
                        "report.json's timings), wall time and peak RSS; --model, --tta and --device pass on to it")
    p.add_argument("--json", dest="json_out", help="also write the numbers to this JSON file")


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def parse_size(text: str) -> tuple[int, int, int]:
    """``"1024x1024x800"`` → (1024, 1024, 800), voxels along x, y, z."""
    from ..util.errors import InputError

    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise InputError(f"--resize {text}: give three voxel counts, x by y by z, such as 1024x1024x800")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def write_resized(source: str, size_xyz: tuple[int, int, int], path: str) -> None:
    """Write ``source`` resampled (linearly) to ``size_xyz`` voxels over the same extent, as an uncompressed
    NRRD (int16 where its voxels are whole HU). Memory: the source plus the result."""
    import numpy as np
    import SimpleITK as sitk

    from ..io.ctio import read_ct

    ct = read_ct(source, int16=True)
    img = sitk.GetImageFromArray(ct.array)
    img.SetSpacing(ct.spacing)
    img.SetOrigin(ct.origin)
    img.SetDirection(ct.direction)
    extent = np.array(ct.shape_xyz) * np.array(ct.spacing)
    spacing = extent / np.array(size_xyz)
    # voxel centres spread evenly over the same extent: the first half a new voxel inside the old edge
    origin = np.asarray(ct.origin) + ct.direction_matrix @ ((spacing - np.array(ct.spacing)) / 2)
    ref = sitk.Image([int(n) for n in size_xyz], img.GetPixelID())
    ref.SetSpacing(tuple(float(s) for s in spacing))
    ref.SetOrigin(tuple(float(o) for o in origin))
    ref.SetDirection(ct.direction)
    del ct
    out = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, -1024.0, img.GetPixelID())
    del img
    out.SetMetaData("seriesuid", "resized-" + "x".join(str(n) for n in size_xyz))
    sitk.WriteImage(out, path, False)


def _resized_copy(source: str, size_xyz: tuple[int, int, int], folder: str) -> str:
    """The path of ``source`` resized (:func:`write_resized`), made in a child process so that its memory
    is not this process's."""
    import multiprocessing
    from pathlib import Path

    from ..util.errors import ResMTNetError

    path = str(Path(folder) / ("resized-" + "x".join(str(n) for n in size_xyz) + ".nrrd"))
    child = multiprocessing.get_context("spawn").Process(target=write_resized, args=(source, size_xyz, path))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise ResMTNetError(f"could not write {source} resized to {size_xyz} (exit status {child.exitcode})")
    return path


def _dir_sizes_mb(folder) -> dict[str, float]:
    from pathlib import Path

    return {p.name: round(p.stat().st_size / 1e6, 2) for p in sorted(Path(folder).iterdir()) if p.is_file()}


def run(args: argparse.Namespace) -> int:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="resmtnet-bench-") as tmp:
        if args.resize:
            size = parse_size(args.resize)
            print(f"writing {args.input} resized to {'x'.join(map(str, size))} voxels ...", flush=True)
            args.input = _resized_copy(args.input, size, tmp)
        return _bench_whole(args, tmp) if args.whole else _bench(args, tmp)


#: report.json's timings in the order the command runs them; ``total`` is detection's own sum
DETECTION_STAGES = ("lungs", "resample", "inference", "decode")
WHOLE_STAGES = ("startup", "load_model", "read", *DETECTION_STAGES, "detection_other", "write_csv", "slicer_handoff",
                "write_overview", "slicer_files", "write_views", "report_publish_exit")
#: the Slicer files' child process (report.json's ``slicer_process``), its steps overlapping the stages above
CHILD_STEPS = ("ready", "slicer_scene", "write_markups", "write_segmentation", "write_scene", "views_scene",
               "views_render", "views_png")


def run_detect_child(detect_args: list[str]) -> tuple[float, float]:
    """Run ``resmtnet detect DETECT_ARGS`` in a child process: (wall seconds from its start to its exit, peak RSS
    in MB of the largest process in it: the command or a child it waited for)."""
    import os
    import subprocess
    import sys
    import time

    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "resmtnet.cli.cli", "detect", *detect_args],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert child.stderr is not None
    stderr = child.stderr.read()  # drained while it runs
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t0
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        from ..util.errors import ResMTNetError

        last = stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise ResMTNetError(f"resmtnet detect {' '.join(detect_args)}: exit status {child.returncode}: {last[0]}")
    return wall, usage.ru_maxrss / 1024.0  # Linux: kB


def whole_stages(timings: dict[str, float], wall_s: float) -> dict[str, float]:
    """One run's stages (:data:`WHOLE_STAGES`) from its report.json ``timings_s`` and its wall time: what
    detection's ``total`` holds beyond its named stages is ``detection_other`` (candidates, masks, measures), what
    the wall time holds beyond every stage is ``report_publish_exit`` (report.json, publishing the set, exit)."""
    stages = {k: float(timings[k]) for k in WHOLE_STAGES if k in timings}
    stages["detection_other"] = float(timings["total"]) - sum(stages.get(k, 0.0) for k in DETECTION_STAGES)
    stages["report_publish_exit"] = wall_s - sum(stages.values())
    return {k: round(stages[k], 3) for k in WHOLE_STAGES if k in stages}


def _bench_whole(args: argparse.Namespace, tmp: str) -> int:
    import os
    import platform
    import statistics
    from pathlib import Path

    out = Path(tmp) / "detect-out"
    detect_args = [args.input, "-o", str(out), "--quiet"]
    detect_args += ["--model", args.model] if args.model else []
    detect_args += ["--device", args.device] if args.device != "all" else []
    detect_args += [] if args.tta else ["--no-tta"]
    for _ in range(max(0, args.warmup)):
        run_detect_child(detect_args)
    runs = []
    for _ in range(max(1, args.repeat)):
        wall, rss = run_detect_child(detect_args)
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
        child = report["timings_s"].get("slicer_process") or {}
        runs.append({"wall_s": round(wall, 3), "peak_rss_mb": round(rss, 1),
                     "stages_s": whole_stages(report["timings_s"], wall),
                     "child_steps_s": {k: float(child[k]) for k in CHILD_STEPS if k in child}})
    stages = {k: round(statistics.median(r["stages_s"].get(k, 0.0) for r in runs), 3) for k in WHOLE_STAGES}
    child_steps = {k: round(statistics.median(r["child_steps_s"].get(k, 0.0) for r in runs), 3) for k in CHILD_STEPS}
    results = {"input": args.input, "command": "resmtnet detect " + " ".join(detect_args),
               "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
               "load_average": [round(x, 2) for x in os.getloadavg()], "findings": len(report["nodules"]),
               "device": report["device"], "wall_s_median": round(statistics.median(r["wall_s"] for r in runs), 3),
               "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs), "stages_s_median": stages,
               "child_steps_s_median": child_steps, "runs": runs}
    print(f"{results['command']}: {len(runs)} run(s) on {report['device']}, {os.cpu_count()} CPUs, "
          f"load average {results['load_average'][0]:.1f} at the end")
    width = max(len(k) for k in WHOLE_STAGES)
    for k, v in stages.items():
        print(f"  {k:{width}s} {v:7.2f} s")
    print("  the Slicer files' child process (its steps, within the stages above): "
          + ", ".join(f"{k} {v:.2f}" for k, v in child_steps.items()) + " s")
    print(f"  {'whole command':{width}s} {results['wall_s_median']:7.2f} s (median; runs: "
          + ", ".join(f"{r['wall_s']:.2f}" for r in runs) + f"), peak RSS {results['peak_rss_mb_max']:.0f} MB, "
          f"{results['findings']} finding(s)")
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


def _bench(args: argparse.Namespace, tmp: str) -> int:
    import os
    import platform
    import statistics
    import time
    from pathlib import Path

    import torch

    from ..detect.pipeline import detect_ct
    from ..io.memory import read_ct_for_detection
    from ..model.model_io import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ct = read_ct_for_detection(args.input)
    read_s = time.perf_counter() - t0
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        print("CUDA: not available on this machine; skipped")
        devices.remove("cuda")
    results = {"input": args.input, "size_xyz": list(ct.shape_xyz), "spacing_mm": list(ct.spacing),
               "read_s": round(read_s, 3), "cpu": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count(), "tta": bool(args.tta), "torch_threads": torch.get_num_threads(),
               "torch": torch.__version__,
               "devices": {}}
    for dev in devices:
        model = load_model(args.model, dev)
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(max(0, args.warmup)):
            detect_ct(ct, model=model, device=dev, tta=args.tta)
        runs = []
        for _ in range(max(1, args.repeat)):
            det = detect_ct(ct, model=model, device=dev, tta=args.tta)
            runs.append(det.info["timings_s"])
        stages = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
        entry = {"stages_s": stages, "end_to_end_s": round(stages["total"] + read_s, 3),
                 "findings": len(det.nodules), "precision": det.info["precision"],
                 "peak_rss_mb": round(_peak_rss_mb(), 1)}
        if args.outputs:
            from ..report.outputs import write_detection_outputs

            out = Path(tmp) / f"outputs-{dev}"
            t1 = time.perf_counter()
            write_detection_outputs(ct, det, out)
            entry["outputs_s"] = round(time.perf_counter() - t1, 3)
            entry["output_mb"] = _dir_sizes_mb(out)
            entry["peak_rss_mb"] = round(_peak_rss_mb(), 1)
        if dev == "cuda":
            entry["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
            entry["gpu"] = torch.cuda.get_device_name()
        results["devices"][dev] = entry
    print(f"input {args.input}: {ct.shape_xyz} voxels, spacing {tuple(round(s, 3) for s in ct.spacing)} mm; "
          f"read {read_s:.2f} s; torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for dev, e in results["devices"].items():
        st = e["stages_s"]
        mem = f"peak RSS {e['peak_rss_mb']:.0f} MB" + (f", peak CUDA {e['peak_cuda_mb']:.0f} MB" if "peak_cuda_mb" in e
                                                       else "")
        times = "  ".join(f"{k} {v:.2f} s" for k, v in st.items() if k != "total")
        print(f"{dev.upper():5s} ({e['precision']}) {times}"
              + f"  | detect {st['total']:.2f} s, end-to-end (read + detect) {e['end_to_end_s']:.2f} s | {mem}")
        if "outputs_s" in e:
            files = ", ".join(f"{name} {mb:.1f} MB" for name, mb in e["output_mb"].items())
            print(f"      writing the outputs {e['outputs_s']:.2f} s: {files}")
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0
