"""Time each detection stage and measure peak memory on a CT, on the CPU and, where present, on CUDA.

Not a test: numbers for people. Each device runs the whole detection ``--repeat`` times after one
warm-up run; the table shows the median time of each stage, and peak memory (process RSS; CUDA
memory allocated by torch on the GPU).
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="CT volume file or DICOM series folder")
    p.add_argument("--model", help="checkpoint (default: the shipped weights)")
    p.add_argument("--device", default="all", choices=["all", "cpu", "cuda"],
                   help="all: CPU, and CUDA where available (default)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per device after one warm-up (default 3)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="time detection with (default) or without test-time augmentation (see detect)")
    p.add_argument("--json", dest="json_out", help="also write the numbers to this JSON file")


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def run(args: argparse.Namespace) -> int:
    import os
    import platform
    import statistics
    import time

    import torch

    from .ctio import read_ct
    from .model_io import load_model
    from .pipeline import detect_ct

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ct = read_ct(args.input)
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
        detect_ct(ct, model=model, device=dev, tta=args.tta)  # warm-up
        runs = []
        for _ in range(max(1, args.repeat)):
            det = detect_ct(ct, model=model, device=dev, tta=args.tta)
            runs.append(det.info["timings_s"])
        stages = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
        entry = {"stages_s": stages, "end_to_end_s": round(stages["total"] + read_s, 3),
                 "findings": len(det.nodules), "precision": det.info["precision"],
                 "peak_rss_mb": round(_peak_rss_mb(), 1)}
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
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=1)
    return 0
