"""Training cases from real chest CTs with synthetic lesions inserted into their lungs.

Phantom lungs are smooth; real ones have vessels seen end-on, fissures, scars, the noise and kernel of a real
scanner, and those are where a phantom-trained network finds its false positives. Each real case (a folder
with its CT and its ``annotations.csv``, as ``resmtnet evaluate --real`` reads them) gives ``copies`` training
cases on the model grid: the scan itself with its own lesions kept as positives, and in each copy a few
synthetic nodules of the screening mix and masses of 30-80 mm drawn into its lungs by the phantom generator's
own lesion renderer (:func:`resmtnet.data.phantom.insert_lesions`), clear of the known lesions. Every
inserted lesion is blurred like the scan and carries the scan's own noise, so it is not smoother than the
parenchyma around it.

The known lesions of the shared cases are cancers (the readers' 4-5 rated nodule, the collections' tumours):
each is taught as malignant (rating 5). Held-out cases (``holdout``, by folder name) are never read.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from ..io.ctio import CTVolume
from .phantom import MASS_GENERATOR_VERSION, NODULE_RENDERER_VERSION, insert_lesions
from .training_data import CROP_MARGIN_MM, TrainCase

#: the rating a case's own lesion is taught with (the shared cases' lesions are cancers)
KNOWN_LESION_RATING = 5
#: case folders no real-background run reads unless asked otherwise: the case its results are judged on
DEFAULT_HOLDOUT = ("4D-Lung-113_HM10395",)
TRUTH_FILE = "annotations.csv"


def case_folders(root: str | Path, holdout: Sequence[str] = DEFAULT_HOLDOUT) -> list[Path]:
    """The case folders under ``root`` (each with a ``dicom/`` series folder or one volume file, and an
    ``annotations.csv``), held-out ones left out. A ``ValueError`` names a root with none, and a folder with a
    truth file but no one CT (two volume files: which is the scan?)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder (data.real_backgrounds)")
    truthful = sorted(p for p in root.iterdir() if p.is_dir() and (p / TRUTH_FILE).is_file())
    unclear = [p.name for p in truthful if _ct_path(p) is None]
    if unclear:
        raise ValueError(f"{root}: {', '.join(unclear)} hold {TRUTH_FILE} but no dicom/ folder or one volume "
                         f"file (a case folder holds its CT as a dicom/ series folder or as its only volume file)")
    kept = [p for p in truthful if p.name not in set(holdout)]
    if not kept:
        raise ValueError(f"{root}: holds no real case outside the held-out ones ({', '.join(holdout) or 'none'}): "
                         f"a case is a folder with a dicom/ series folder or one volume file, and {TRUTH_FILE}")
    return kept


def missing_holdouts(root: str | Path, holdout: Sequence[str]) -> list[str]:
    """The held-out names that are no case folder under ``root``: a misspelt one would train on its case."""
    root = Path(root)
    return [h for h in holdout if not (root / h / TRUTH_FILE).is_file()]


def _ct_path(folder: Path) -> Path | None:
    if (folder / "dicom").is_dir():
        return folder / "dicom"
    vols = [p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith((".nrrd", ".mha", ".mhd",
                                                                                    ".nii", ".nii.gz"))]
    return vols[0] if len(vols) == 1 else None


def _read_case(folder: Path) -> tuple[CTVolume, np.ndarray, np.ndarray]:
    """The case's CT in the canonical voxel order, and its lesions: centres (N, 3) LPS mm and diameters."""
    from ..io.ctio import read_ct
    from ..io.luna16_csv import read_annotations
    from ..io.orientation import canonical_ct

    ct, _ = canonical_ct(read_ct(str(_ct_path(folder))))
    rows = read_annotations(folder / TRUTH_FILE)
    centres = np.array([r.center_lps for r in rows], float).reshape(-1, 3)
    return ct, centres, np.array([r.diameter_mm for r in rows], float)


def make_case(case_id: str, folder: Path, spacing: float, seed: int, nodules: int, masses: tuple[int, int]
              ) -> TrainCase:
    """One training case: the real case of ``folder`` on the model grid with ``nodules`` synthetic nodules and
    ``masses`` (fewest, most) masses inserted into its lungs, drawn from ``seed``."""
    from ..detect.lungmask import lung_mask
    from ..model.model import MARGIN_CLASSES, TYPE_CLASSES
    from ..model.prepare import mask_bounds, to_model_grid
    from ..model.targets import class_indices

    ct, centres, diameters = _read_case(folder)
    lungs = lung_mask(ct.array, ct.spacing, direction=ct.direction)
    bounds = mask_bounds(lungs, ct, CROP_MARGIN_MM)
    hu, grid = to_model_grid(ct, spacing, bounds)
    lung_grid, _ = to_model_grid(ct, spacing, bounds, image=lungs.astype(np.float32))
    known_vox = grid.world_to_voxel(centres)
    hu, drawn = insert_lesions(np.random.default_rng(seed), hu, lung_grid > 0.5, grid.origin, spacing,
                               known_vox, diameters, nodules=nodules, masses=masses)
    n_known = len(diameters)
    return TrainCase(
        case_id=case_id, image=np.clip(np.round(hu), -32768, 32767).astype(np.int16), origin=grid.origin,
        spacing=spacing,
        centers=np.concatenate([known_vox, np.array([d.center_vox for d in drawn], float).reshape(-1, 3)])
        .astype(np.float32),
        diameters=np.concatenate([diameters, [d.nodule.diameter_mm for d in drawn]]).astype(np.float32),
        malignancy=np.concatenate([[KNOWN_LESION_RATING] * n_known,
                                   [d.nodule.malignancy for d in drawn]]).astype(np.int16),
        negatives=np.zeros((0, 3), np.float32),
        lung_share=np.concatenate([np.ones(n_known), [d.nodule.lung_share for d in drawn]]).astype(np.float32),
        nodule_types=class_indices([None] * n_known + [d.nodule.nodule_type for d in drawn], TYPE_CLASSES),
        margins=class_indices([None] * n_known + [d.nodule.margin for d in drawn], MARGIN_CLASSES))


class RealBackgroundCases:
    """``copies`` training cases of each real case under ``root`` (held-out ones left out), made once and cached
    as ``.npz`` in ``cache_dir`` (:class:`resmtnet.data.training_data.PhantomCases`'s interface)."""

    def __init__(self, cache_dir: str | Path, root: str | Path, copies: int, seed: int, spacing: float, *,
                 holdout: Sequence[str] = DEFAULT_HOLDOUT, nodules: int = 4, masses: tuple[int, int] = (0, 1)):
        self.cache_dir = Path(cache_dir)
        self.folders = case_folders(root, holdout)
        self.spacing, self.seed, self.nodules, self.masses = spacing, seed, nodules, tuple(masses)
        # each copy's seed from the case's name, so that adding, removing or holding out another case changes nothing
        self.items = [(f"real-{f.name}-s{seed}-{k:02d}", f,
                       int(np.random.SeedSequence([seed, zlib.crc32(f.name.encode()), k]).generate_state(1)[0]))
                      for f in self.folders for k in range(copies)]
        # v: the format of a cached case (2: seeds by case name, masses clear of the case's lesions by their
        # outline); the case's truth file is in the key, so an edited truth rebuilds; so do the renderers' versions
        self._paths = {}
        for cid, f, _ in self.items:
            key = {"kind": "real-background", "spacing": spacing, "nodules": nodules, "masses": list(self.masses),
                   "truth": (f / TRUTH_FILE).read_text(encoding="utf-8"), "v": 2, "renderer": NODULE_RENDERER_VERSION}
            if self.masses[1]:
                key["generator"] = MASS_GENERATOR_VERSION
            self._paths[cid] = self.cache_dir / f"{cid}-{hashlib.sha1(json.dumps(key).encode()).hexdigest()[:10]}.npz"

    def path(self, case_id: str) -> Path:
        return self._paths[case_id]

    def ensure(self, workers: int = 1, progress: Callable[[int, int], None] | None = None) -> None:
        """Make every missing case (in ``workers`` processes)."""
        from .case_files import CaseFile, ensure_case_files

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        ensure_case_files([CaseFile(self.path(cid), partial(_save_case, cid, f, self.spacing, s, self.nodules,
                                                            self.masses)) for cid, f, s in self.items],
                          workers, progress)

    def load(self, ids: Sequence[str] | None = None) -> list[TrainCase]:
        wanted = set(ids) if ids is not None else None
        return [TrainCase.load(self.path(cid), cid) for cid, _, _ in self.items if wanted is None or cid in wanted]


def _save_case(case_id: str, folder: Path, spacing: float, seed: int, nodules: int, masses: tuple[int, int],
               path: Path) -> None:
    make_case(case_id, folder, spacing, seed, nodules, masses).save(path)
