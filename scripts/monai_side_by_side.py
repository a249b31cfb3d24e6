#!/usr/bin/env python3
"""Time MONAI's lung_nodule_ct_detection bundle (RetinaNet) on a CT as a whole process, side by side with
`resmtnet detect`: wall time and peak resident memory of each, the same way.

MONAI runs in its own virtual environment, which this script makes (``--venv``, default ``.monai-venv``):
``pip install monai==MONAI_VERSION torch===TORCH_VERSION torchvision==TORCHVISION_VERSION SimpleITK nibabel``:
the registry's own torch build (with CUDA, about 4 GB with its libraries; it runs on a CPU as well), as
MONAI's RetinaNet needs torchvision, whose registry build loads only with that torch, not with the
CPU-only build this project installs; nibabel for MONAI's orientation and spacing transforms. It is never a
dependency of the project.

What runs is the bundle's published inference configuration (configs/inference.json of the model zoo's
models/lung_nodule_ct_detection), rebuilt here with MONAI's own classes: the scan read (SimpleITK here, in
LPS, turned to RAS as the bundle's ITK reader does), Orientationd RAS, Spacingd to 0.703125 x 0.703125 x
1.25 mm, ScaleIntensityRanged -1024..300 HU to 0..1 with clipping; ResNet-50 3-D backbone (first
convolution 7x7x7, strides 2, 2, 1) with a feature pyramid on its layers 1 and 2, RetinaNet with one
class and three anchors per place, anchors of 6x8x4, 8x6x5 and 10x10x6 voxels on feature-map scales 1, 2
and 4, size divisible by 16x16x8; the detector's box selection (score 0.02, top 1000 per level, NMS 0.22,
300 detections) and its sliding-window inference (512x512x192 windows, overlap 0.25, one window at a time,
results gathered on the CPU) where the image is larger than one window, in automatic mixed precision on
CUDA; then the bundle's post-processing (boxes clipped to the image, to world coordinates, to centre and
size).

THE WEIGHTS ARE RANDOM (seeded): the bundle's trained weights cannot be downloaded here. The run measures
the detector's cost only (time and memory), not its findings; the boxes it prints mean nothing.

  python scripts/monai_side_by_side.py ../shared/data/LIDC-IDRI-0001/dicom --resmtnet --json side.json

``--resmtnet`` also times ``resmtnet detect SCAN -o TMP`` (this checkout's .venv, or ``--resmtnet-cmd``)
the same way, after MONAI; ``--rounds N`` repeats the pair, interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MONAI_VERSION = "1.6.1"
TORCH_VERSION = "2.13.0"
TORCHVISION_VERSION = "0.28.0"  # the release made for that torch
ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------------
# The parent: the environment, the child processes, the numbers


def make_venv(venv: Path) -> Path:
    """The MONAI environment (made once, reused while it holds the pinned versions); its python."""
    python = venv / "bin" / "python"
    # ``===``: exactly that version, not a local build of it (such as a CPU-only +cpu wheel found on disk)
    want = (f"monai=={MONAI_VERSION} torch==={TORCH_VERSION} torchvision=={TORCHVISION_VERSION} "
            "SimpleITK nibabel numpy")
    stamp = venv / "side-by-side.pins"
    if python.exists() and stamp.exists() and stamp.read_text() == want:
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # torch alone first, so that MONAI's requirements cannot pull another build of it
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, f"torch==={TORCH_VERSION}", f"torchvision=={TORCHVISION_VERSION}"], check=True)
    subprocess.run([*pip, *want.split()], check=True)
    stamp.write_text(want)
    return python


def timed(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Run ``cmd`` as a child process: its wall time and its peak RSS (the largest process it ran)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate()
    wall = time.perf_counter() - start
    # the children's peak as the kernel keeps it (kB on Linux): the largest of all children waited for so
    # far, so each run is measured in a fresh parent (see run_once)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    if proc.returncode != 0:
        sys.stderr.write(out)
        raise SystemExit(f"{cmd[0]} failed (exit {proc.returncode})")
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(peak_mb, 1), "output_tail": out[-2000:]}


def run_once(cmd: list[str], threads: int) -> dict:
    """``timed(cmd)`` in a fresh python process of its own, so that the peak RSS is this command's alone."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    probe = ("import json, sys; sys.path.insert(0, sys.argv[1]); import monai_side_by_side as m; "
             "print(json.dumps(m.timed(json.loads(sys.argv[2]), None)))")
    res = subprocess.run([sys.executable, "-c", probe, str(Path(__file__).parent), json.dumps(cmd)],
                         env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stdout + res.stderr)
        raise SystemExit(f"the timed run failed: {' '.join(cmd)}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scan", help="CT volume file or DICOM series folder")
    p.add_argument("--venv", default=str(ROOT / ".monai-venv"), help="MONAI's environment (made if missing)")
    p.add_argument("--threads", type=int, default=2, help="torch threads in each process (default 2)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where MONAI's detector runs")
    p.add_argument("--resmtnet", action="store_true", help="also time `resmtnet detect` on the scan, the same way")
    p.add_argument("--resmtnet-cmd", default=str(ROOT / ".venv" / "bin" / "resmtnet"),
                   help="the resmtnet command (default: this checkout's .venv)")
    p.add_argument("--rounds", type=int, default=1, help="repeat (MONAI, resmtnet) this many times, interleaved")
    p.add_argument("--json", help="write the numbers here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.scan, args.device, args.threads)

    python = make_venv(Path(args.venv))
    monai_cmd = [str(python), str(Path(__file__).resolve()), "--child", "--device", args.device,
                 "--threads", str(args.threads), str(args.scan)]
    pins = f"monai=={MONAI_VERSION} torch=={TORCH_VERSION} torchvision=={TORCHVISION_VERSION}"
    results: dict = {"scan": str(args.scan), "monai": pins,
                     "weights": "random (cost only)", "threads": args.threads, "load_before": os.getloadavg(),
                     "runs": []}
    for _ in range(args.rounds):
        r = run_once(monai_cmd, args.threads)
        print(f"MONAI lung_nodule_ct_detection: {r['wall_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
        results["runs"].append({"run": "monai", **r})
        if args.resmtnet:
            out = tempfile.mkdtemp(prefix="side-by-side-")
            try:
                r = run_once([args.resmtnet_cmd, "detect", str(args.scan), "-o", out, "--quiet"], args.threads)
            finally:
                shutil.rmtree(out, ignore_errors=True)
            print(f"resmtnet detect: {r['wall_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
            results["runs"].append({"run": "resmtnet", **r})
    results["load_after"] = os.getloadavg()
    print(f"load average before {results['load_before'][0]:.2f}, after {results['load_after'][0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


# ----------------------------------------------------------------------------------------------------------
# The child, in MONAI's environment: the bundle's inference, as its configuration sets it up


def read_ras(path: str):
    """The scan as MONAI's ITK reader gives it with ``affine_lps_to_ras``: a channel-first MetaTensor in
    (x, y, z) index order with its RAS affine."""
    import numpy as np
    import SimpleITK as sitk
    import torch
    from monai.data import MetaTensor

    p = Path(path)
    if p.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(p)))
        img = reader.Execute()
    else:
        img = sitk.ReadImage(str(p))
    arr = sitk.GetArrayFromImage(img).astype(np.float32).transpose(2, 1, 0)  # (x, y, z)
    direction = np.asarray(img.GetDirection(), float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(img.GetSpacing(), float)[None, :]
    affine[:3, 3] = img.GetOrigin()
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(arr))[None], affine=torch.as_tensor(affine),
                      meta={"filename_or_obj": str(p)})


def build_detector(device):
    """The bundle's network_def, anchor_generator, detector and detector_ops."""
    import torch
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.networks.retinanet_network import RetinaNet, resnet_fpn_feature_extractor
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
    from monai.networks.nets import resnet

    torch.manual_seed(0)  # random weights: the trained ones cannot be downloaded here
    backbone = resnet.resnet50(spatial_dims=3, n_input_channels=1, conv1_t_stride=[2, 2, 1], conv1_t_size=[7, 7, 7])
    features = resnet_fpn_feature_extractor(backbone, 3, False, [1, 2], None)
    net = RetinaNet(spatial_dims=3, num_classes=1, num_anchors=3, feature_extractor=features,
                    size_divisible=[16, 16, 8]).to(device)
    anchors = AnchorGeneratorWithAnchorShape(feature_map_scales=[1, 2, 4],
                                             base_anchor_shapes=[[6, 8, 4], [8, 6, 5], [10, 10, 6]])
    det = RetinaNetDetector(network=net, anchor_generator=anchors, debug=False)
    det.set_target_keys(box_key="box", label_key="label")
    det.set_box_selector_parameters(score_thresh=0.02, topk_candidates_per_level=1000, nms_thresh=0.22,
                                    detections_per_img=300)
    det.set_sliding_window_inferer(roi_size=[512, 512, 192], overlap=0.25, sw_batch_size=1, mode="constant",
                                   device="cpu")
    det.eval()
    return det


def child(scan: str, device_name: str, threads: int) -> int:
    import numpy as np
    import torch
    from monai.apps.detection.transforms.dictionary import AffineBoxToWorldCoordinated, ClipBoxToImaged, ConvertBoxModed
    from monai.transforms import Compose, EnsureTyped, Orientationd, ScaleIntensityRanged, Spacingd

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    device = torch.device(device_name)
    pre = Compose([
        Orientationd(keys="image", axcodes="RAS"),
        Spacingd(keys="image", pixdim=[0.703125, 0.703125, 1.25]),
        ScaleIntensityRanged(keys="image", a_min=-1024.0, a_max=300.0, b_min=0.0, b_max=1.0, clip=True),
        EnsureTyped(keys="image"),
    ])
    data = pre({"image": read_ras(scan)})
    t_pre = time.perf_counter()
    det = build_detector(device)
    image = data["image"].to(device)
    # the bundle's inferer: a sliding window only where the image is larger than one window
    use_inferer = image[0].numel() >= int(np.prod([512, 512, 192]))
    with torch.no_grad(), torch.autocast(device_type="cuda", enabled=device.type == "cuda"):
        pred = det([image], use_inferer=use_inferer)[0]
    t_net = time.perf_counter()
    post = Compose([
        ClipBoxToImaged(box_keys="box", label_keys="label", box_ref_image_keys="image", remove_empty=True),
        AffineBoxToWorldCoordinated(box_keys="box", box_ref_image_keys="image", affine_lps_to_ras=True),
        ConvertBoxModed(box_keys="box", src_mode="xyzxyz", dst_mode="cccwhd"),
    ])
    boxes = post({**{k: v.cpu() for k, v in pred.items()}, "image": data["image"]})
    print(json.dumps({"image_shape": list(data["image"].shape), "sliding_window": bool(use_inferer),
                      "boxes": int(len(boxes["box"])), "preprocess_s": round(t_pre - t0, 2),
                      "detector_s": round(t_net - t_pre, 2), "device": str(device)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
