"""Scoring a network on cases already on its grid (training's per-epoch validation score).

Uses the LUNA16 FROC of :mod:`resmtnet.evaluate.froc`; the score is the CPM, with sensitivity at 2 false
positives per scan, diameter error and malignancy AUC beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..data.training_data import TrainCase
from ..evaluate.froc import Finding, evaluate
from ..io.luna16_csv import ReferenceNodule
from ..model.model import ResMTNet
from ..model.model_io import LoadedModel


def case_findings(net: ResMTNet, case: TrainCase, device: torch.device, floor: float = 0.05, tta: bool = False
                  ) -> list[Finding]:
    from ..detect.pipeline import find_peaks
    from ..model.inference import TTA_FLIPS
    from ..model.prepare import ModelGrid

    grid = ModelGrid(origin=np.asarray(case.origin, float), spacing=case.spacing, shape=case.image.shape)
    lm = LoadedModel(net, {"decode": {"tta_flips": TTA_FLIPS}}, None)  # detection's default passes (all eight)
    peaks = find_peaks(lm, case.image.astype(np.float32), device, floor=floor, tta=tta)
    return [Finding(case.case_id, tuple(float(v) for v in grid.voxel_to_world(p.position_vox)), p.probability,
                    p.diameter_mm, p.malignancy, row=i) for i, p in enumerate(peaks)]


def case_marks(case: TrainCase, min_diameter_mm: float = 0.0, min_lung_share: float = 0.0) -> list[ReferenceNodule]:
    """The case's nodules as FROC marks; those under ``min_diameter_mm`` or with less than ``min_lung_share``
    of themselves in the lung (:meth:`TrainCase.in_lung`) are excluded marks: a finding on one is neither a
    hit nor a false positive, as LUNA16 treats its irrelevant findings and ``evaluate --phantoms`` these."""
    from ..model.prepare import ModelGrid

    grid = ModelGrid(origin=np.asarray(case.origin, float), spacing=case.spacing, shape=case.image.shape)
    return [ReferenceNodule(case.case_id, tuple(float(v) for v in grid.voxel_to_world(c)), float(d),
                            float(r) if r > 0 else None, excluded=bool(d < min_diameter_mm or not lung))
            for c, d, r, lung in zip(case.centers, case.diameters, case.malignancy, case.in_lung(min_lung_share))]


def _evaluate_cases(net: ResMTNet, cases: Sequence[TrainCase], device: torch.device | str, tta: bool = False,
                    min_diameter_mm: float = 0.0, min_lung_share: float = 0.0):
    """Detect on every case once (``tta``: with test-time augmentation) and score by the LUNA16 FROC
    (no bootstrap); nodules under ``min_diameter_mm`` or ``min_lung_share`` are excluded marks."""
    device = torch.device(device)
    was_training = net.training
    net.eval()
    findings: list[Finding] = []
    marks: list[ReferenceNodule] = []
    for c in cases:
        findings += case_findings(net, c, device, tta=tta)
        marks += case_marks(c, min_diameter_mm, min_lung_share)
    if was_training:
        net.train()
    return evaluate(findings, marks, [c.case_id for c in cases], n_bootstrap=0)


def threshold_at(res, fp_per_scan: float) -> tuple[float, dict[str, float]]:
    """The lowest finding probability that keeps false positives at or below ``fp_per_scan``."""
    fps, sens, thr = res.curve.fps, res.curve.sensitivity, res.curve.thresholds
    ok = np.flatnonzero((fps <= fp_per_scan) & np.isfinite(thr))
    if len(ok) == 0:
        return 0.5, {"fp_per_scan": 0.0, "sensitivity": 0.0}
    i = ok[-1]
    return float(thr[i]), {"fp_per_scan": float(fps[i]), "sensitivity": float(sens[i])}


def summarize(res) -> dict[str, float]:
    """CPM (score), sensitivity at 2 FP/scan, diameter MAE and malignancy AUC of an evaluation."""
    d = res.to_dict()
    return {"score": round(float(res.cpm), 4), "cpm": round(float(res.cpm), 4),
            "sens_at_2fp": round(float(res.sensitivities[list(res.fp_rates).index(2.0)]), 4),
            "diameter_mae_mm": d["diameter_error"].get("mae_mm"), "malignancy_auc": d["malignancy_auc"].get("auc")}


def score_cases(net: ResMTNet, cases: Sequence[TrainCase], device: torch.device | str = "cpu",
                min_diameter_mm: float = 0.0, min_lung_share: float = 0.0) -> dict[str, float]:
    """CPM (score), sensitivity at 2 FP/scan, diameter MAE and malignancy AUC over ``cases``."""
    return summarize(_evaluate_cases(net, cases, device, min_diameter_mm=min_diameter_mm,
                                     min_lung_share=min_lung_share))


def calibrate(net: ResMTNet, cases: Sequence[TrainCase], fp_per_scan: float, device: torch.device | str = "cpu",
              tta: bool = True, min_diameter_mm: float = 0.0, min_lung_share: float = 0.0
              ) -> tuple[float, dict[str, float], dict[str, float]]:
    """Threshold at ``fp_per_scan`` FP/scan, what it gives, and the scores — from one pass over ``cases``.

    ``tta`` should match how detection runs by default (with test-time augmentation): averaging the
    mirrored passes lowers the probabilities a little, so a threshold found without it would let more
    false findings through. The passes are :data:`~resmtnet.model.inference.TTA_FLIPS`; an export records them.
    """
    res = _evaluate_cases(net, cases, device, tta=tta, min_diameter_mm=min_diameter_mm,
                          min_lung_share=min_lung_share)
    thr, at = threshold_at(res, fp_per_scan)
    return thr, at, summarize(res)
