"""Detection over a whole CT: canonical voxel order → lungs → model grid → Res-MTNet in windows → peaks →
nodules + masks (measured by :mod:`.measurement`).

:func:`detect_ct` is the one entry point the command line, the benchmark and the Slicer module share, and the
one place a CT is brought to the canonical voxel order (:mod:`resmtnet.io.orientation`), so that a scan gives the
same findings however its voxels are stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage

from ..io.ctio import CTVolume
from ..io.orientation import canonical_ct
from ..model.inference import WINDOW
from ..model.model_io import LoadedModel, load_model
from ..model.prepare import ModelGrid, index_bounds_to_world, to_model_grid, world_bounds
from ..model.targets import Peak, decode, merge_duplicates
from ..util.errors import Cancelled
from .brock import PatientInputs, score_nodules
from .lungmask import LungMask
from .measurement import MASS_DIAMETER_MM, label_map_dtype, measure_findings, measure_solid_components
from .nodules import Detection

LUNG_MARGIN_MM = 15.0
#: peaks this far (mm, along the grid's axes: the mask grown voxel by voxel) outside the lung mask are dropped
#: (nodules on the pleura stay: the mask is closed), unless a mass's own sphere reaches the lung (:func:`_reaches_lung`)
OUTSIDE_LUNG_TOLERANCE_MM = 6.0

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


class _Stages:
    """Per-stage wall-clock times and a progress callback spread over fixed stage weights."""

    WEIGHTS = {"lungs": 0.1, "resample": 0.1, "inference": 0.7, "decode": 0.1}

    def __init__(self, progress: ProgressFn | None, cancel: CancelFn | None):
        self.progress = progress
        self.cancel = cancel
        self.times: dict[str, float] = {}
        self.done = 0.0
        self._t = 0.0
        self._name = ""

    def start(self, name: str, message: str) -> None:
        self.check()
        self._name, self._t = name, time.perf_counter()
        self.report(0.0, message)

    def report(self, fraction: float, message: str) -> None:
        if self.progress is not None:
            self.progress(min(1.0, self.done + self.WEIGHTS[self._name] * fraction), message)

    def end(self) -> None:
        self.times[self._name] = round(time.perf_counter() - self._t, 3)
        self.done += self.WEIGHTS[self._name]

    def check(self) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled("detection cancelled")


def find_peaks(model: LoadedModel, hu_grid: np.ndarray, device, *, window: int = WINDOW, batch_size: int = 2,
               progress: Callable[[float], None] | None = None, cancel: CancelFn | None = None,
               floor: float = 0.05, tta: bool = False) -> list[Peak]:
    """Peaks (model-grid voxel positions) of the network over a volume already on the model grid.

    ``tta``: average the network over the volume and the mirror images the model's threshold was calibrated
    with (``model.tta_flips``: the passes the checkpoint records, four where it records none).
    """
    from ..model.inference import predict_volume

    out = predict_volume(model.net, hu_grid, device, window=window, batch_size=batch_size, progress=progress,
                         cancel=cancel, flips=model.tta_flips if tta else ((),))
    return peaks_from_maps(model, out, hu_grid.shape, floor=floor)


def peaks_from_maps(model: LoadedModel, out: dict, grid_shape: tuple[int, ...], floor: float = 0.05) -> list[Peak]:
    """The peaks of the network's maps ``out`` (:func:`~resmtnet.model.inference.predict_volume`) over a volume of
    ``grid_shape`` on the model grid: decoded, those beyond the volume dropped, duplicates merged."""
    peaks = decode(out, model.config.output_stride, threshold=floor, max_peaks=200)
    shape = np.array(grid_shape)
    peaks = [p for p in peaks if np.all(p.position_vox >= -0.5) and np.all(p.position_vox <= shape - 0.5)]
    return merge_duplicates(peaks, model.config.spacing_mm)


def detect_ct(ct: CTVolume, *, model: LoadedModel | str | None = None, device: str = "auto",
              threshold: float | None = None, min_diameter_mm: float = 0.0, max_findings: int | None = None,
              progress: ProgressFn | None = None, cancel: CancelFn | None = None, window: int = WINDOW,
              batch_size: int | None = None, tta: bool = True, patient: PatientInputs | None = None) -> Detection:
    """Find the nodules of ``ct``. ``progress(fraction, message)``; ``cancel()`` → True stops it.

    ``tta`` (the default): test-time augmentation, the network also run on the scan's mirror images and
    the maps averaged: the passes the checkpoint's threshold was calibrated with (``model.tta_flips``; the
    scan and all seven mirror images for the shipped weights, about eight times the network's time). It
    gives fewer false findings and steadier probabilities (model card); ``tta=False`` is the fast path.

    The lungs, the crop, the model grid and the nodules' masks are found on ``ct`` in the canonical voxel
    order (a view of its voxels); the nodules are in LPS world mm, and the label map is on ``ct``'s own grid,
    in its own voxel order.

    Each nodule is characterised after it is measured: the solid component of a part-solid nodule (on its own
    mask), and the Brock (PanCan) probability from its size, type, margin, upper-lobe location (from the lung
    mask) and the scan's nodule count, with ``patient``'s inputs (absent ones defaulted: ``info["brock"]`` says
    which).
    """
    from ..util.runtime import compute_precision, full_resolution_device, pick_device

    t_all = time.perf_counter()
    dev = pick_device(device)
    if not isinstance(model, LoadedModel):
        model = load_model(model, dev)
    else:
        model.net.to(dev)
    thr = model.threshold if threshold is None else float(threshold)
    if batch_size is None:  # one window at a time on the CPU keeps Cancel quick; GPUs like batches
        batch_size = 4 if dev.type == "cuda" else 1
    st = _Stages(progress, cancel)
    given = ct
    ct, order = canonical_ct(given)

    # Memory: the input grid is only ever held as ct.array (int16 where the scan stores whole HU) and the
    # label map; lungs, bounds and resampling go through it box by box (lungmask.LungMask, to_model_grid).
    # On a GPU the full-resolution passes (the lungs' block averages, the resampling) run there, box by box.
    full_dev = full_resolution_device(dev)
    st.start("lungs", "finding the lungs")
    lungs = LungMask(ct.array, ct.spacing, direction=ct.direction, device=full_dev)
    lung_box = lungs.index_bounds()
    bounds = index_bounds_to_world(*lung_box, ct, LUNG_MARGIN_MM) if lung_box else world_bounds(ct)
    st.end()

    st.start("resample", "resampling to the model grid")
    hu_grid, grid = to_model_grid(ct, model.config.spacing_mm, bounds, device=full_dev)
    lung_grid, _ = to_model_grid(ct, model.config.spacing_mm, bounds, device=full_dev,
                                 image=lungs.mask if full_dev is None else lungs.mask_on(full_dev))
    st.end()

    st.start("inference", f"running Res-MTNet on {dev.type.upper()}")
    peaks = find_peaks(model, hu_grid, dev, window=window, batch_size=batch_size,
                       progress=lambda f: st.report(f, f"running Res-MTNet on {dev.type.upper()}"), cancel=st.check,
                       tta=tta)
    st.end()

    st.start("decode", "measuring nodules")
    near_lung = _near_lung(lung_grid > 0.5, grid)
    findings = []
    for p in peaks:
        if p.probability < thr or p.diameter_mm < min_diameter_mm:
            continue
        v = np.clip(np.round(p.position_vox).astype(int), 0, np.array(hu_grid.shape) - 1)
        if not near_lung[tuple(v)] and not (p.diameter_mm >= MASS_DIAMETER_MM
                                            and _reaches_lung(lung_grid, v, p.diameter_mm / 2 / grid.spacing)):
            continue
        findings.append(p)
    findings.sort(key=lambda p: -p.probability)
    nodule_count = len(findings)  # Brock's count: every finding at or above the threshold, before --max-findings
    if max_findings is not None:
        findings = findings[:max_findings]
    labels = np.zeros(given.array.shape, label_map_dtype(len(findings)))
    # measured on the canonical grid, written through its view of the label map on the given one
    _, nodules = measure_findings(ct, findings, grid, check=st.check, into=order.view(labels))
    measure_solid_components(ct, order.view(labels), nodules)
    patient = patient or PatientInputs()
    score_nodules(nodules, ct, lungs.chest.lungs, nodule_count, patient, mask_factors_zyx=lungs.chest.factors_zyx)
    st.end()
    info: dict[str, Any] = {
        "device": str(dev),
        "precision": str(compute_precision(dev)).removeprefix("torch."),
        # where the lungs' block averages and the resampling ran: torch on the GPU, or numpy/SimpleITK
        "full_resolution": f"torch on {full_dev}" if full_dev is not None else "numpy on cpu",
        "threshold": thr,
        "test_time_augmentation": bool(tta),
        "tta_passes": len(model.tta_flips) if tta else 1,
        "model": model.describe(),
        "timings_s": {**st.times, "total": round(time.perf_counter() - t_all, 3)},
        "model_grid": {"origin": [float(v) for v in grid.origin], "spacing_mm": grid.spacing,
                       "shape_zyx": list(grid.shape)},
        "lung_volume_ml": float(lungs.voxel_count()) * float(np.prod(ct.spacing)) / 1000.0,
        "candidates": len(peaks),
        "voxel_order": order.to_dict(),
        "brock": {**patient.describe(), "nodule_count": nodule_count,
                  "upper_lobe": "approximated: the upper half of the nodule's lung's craniocaudal extent"},
    }
    if progress is not None:
        progress(1.0, f"{len(nodules)} nodule(s) found")
    return Detection(seriesuid=given.seriesuid, nodules=nodules, labels=labels, spacing=given.spacing,
                     origin=given.origin, direction=given.direction, info=info)


def _near_lung(lung: np.ndarray, grid: ModelGrid) -> np.ndarray:
    if not lung.any():
        return np.ones_like(lung)
    it = max(1, int(round(OUTSIDE_LUNG_TOLERANCE_MM / grid.spacing)))
    return ndimage.binary_dilation(lung, iterations=it)


def _reaches_lung(lung: np.ndarray, v: np.ndarray, radius_vox: float) -> bool:
    """Whether lung (``lung`` > 0.5, on the model grid) lies within ``radius_vox`` of voxel ``v``: a finding's own
    sphere reaching the lung. A mass takes the lung it grows into, so the lung mask stops at its edge and a
    5 cm tumour against the mediastinum has its centre 12 mm beyond the mask (4D-Lung-113_HM10395), beyond
    :data:`OUTSIDE_LUNG_TOLERANCE_MM`; its predicted size says how far from the lung a lesion's centre may
    lie. A hull or a wide closing of the mask toward the mediastinum would take in the heart's border and
    the hilar vessels as well, for every finding."""
    r = int(np.ceil(radius_vox))
    if r < 1:
        return False
    lo = np.maximum(v - r, 0)
    hi = np.minimum(v + r + 1, lung.shape)
    box = lung[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] > 0.5
    if not box.any():
        return False
    zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    return bool((box & ((zz - v[0]) ** 2 + (yy - v[1]) ** 2 + (xx - v[2]) ** 2 <= radius_vox ** 2)).any())
