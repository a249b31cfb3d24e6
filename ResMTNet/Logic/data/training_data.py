"""Training cases on the model's grid, cached on disk so that no epoch resamples a CT twice.

A *case* is one CT already on the canonical grid (:mod:`resmtnet.model.prepare`), cropped to the lungs, with
its nodules in voxel coordinates of that grid. Cases come from phantoms here; the LUNA16 / LIDC-IDRI
case sources in :mod:`resmtnet.data.datasets` feed the same cache through :func:`case_from_ct`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from ..io.ctio import CTVolume
from ..model.prepare import mask_bounds, to_model_grid
from ..util.atomic import atomic_write

CROP_MARGIN_MM = 15.0


@dataclass
class TrainCase:
    case_id: str
    image: np.ndarray  # int16 HU (z, y, x) on the model grid
    origin: np.ndarray  # (x, y, z) mm of voxel (0, 0, 0)
    spacing: float
    centers: np.ndarray  # (N, 3) z, y, x voxel positions on this grid
    diameters: np.ndarray  # (N,) mm
    malignancy: np.ndarray  # (N,) rating 1-5, 0 when unknown (LUNA16)
    negatives: np.ndarray  # (M, 3) z, y, x voxel positions of known non-nodules (hard negatives)
    # (N,) share of each nodule drawn in aerated lung (phantoms: PhantomNodule.lung_share); 1 for real truth
    lung_share: np.ndarray | None = field(default=None)
    # (N,) each nodule's type and margin as class indices of resmtnet.model.model.TYPE_CLASSES / MARGIN_CLASSES,
    # -1 where unknown (LUNA16; LIDC nodules without the ratings; cases cached before they were kept)
    nodule_types: np.ndarray | None = field(default=None)
    margins: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        if self.lung_share is None:
            self.lung_share = np.ones(len(self.diameters), np.float32)
        if self.nodule_types is None:
            self.nodule_types = np.full(len(self.diameters), -1, np.int8)
        if self.margins is None:
            self.margins = np.full(len(self.diameters), -1, np.int8)

    def in_lung(self, min_share: float) -> np.ndarray:
        """(N,) bool: the nodules with at least ``min_share`` of themselves in the lung. A phantom nodule drawn
        mostly outside it (in the chest wall or mediastinum: under :data:`resmtnet.data.phantom.MIN_LUNG_SHARE`) is
        no lung nodule: training does not teach it as one (``TrainConfig.min_lung_share``), and validation
        scores it as an excluded mark, as ``evaluate --phantoms`` does. 0 keeps every nodule."""
        return np.asarray(self.lung_share) >= min_share

    def save(self, path: Path) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, image=self.image, origin=self.origin, spacing=self.spacing, centers=self.centers,
                         diameters=self.diameters, malignancy=self.malignancy, negatives=self.negatives,
                         lung_share=self.lung_share, nodule_types=self.nodule_types, margins=self.margins)

        atomic_write(path, write)

    @classmethod
    def load(cls, path: Path, case_id: str) -> TrainCase:
        with np.load(path) as z:
            return cls(case_id=case_id, image=z["image"], origin=z["origin"], spacing=float(z["spacing"]),
                       centers=z["centers"], diameters=z["diameters"], malignancy=z["malignancy"],
                       negatives=z["negatives"], lung_share=z["lung_share"] if "lung_share" in z.files else None,
                       nodule_types=z["nodule_types"] if "nodule_types" in z.files else None,
                       margins=z["margins"] if "margins" in z.files else None)


def case_from_ct(case_id: str, ct: CTVolume, centers_lps: np.ndarray, diameters: np.ndarray,
                 malignancy: np.ndarray, spacing: float, lung_mask: np.ndarray | None = None,
                 negatives_lps: np.ndarray | None = None, lung_share: np.ndarray | None = None,
                 nodule_types: Sequence[str | None] | None = None, margins: Sequence[str | None] | None = None
                 ) -> TrainCase:
    """Resample a CT with its nodules onto the model grid, cropped to the lungs (+ margin) when known.

    ``nodule_types`` and ``margins``: each nodule's type and margin by name (None where unknown)."""
    from ..model.model import MARGIN_CLASSES, TYPE_CLASSES
    from ..model.targets import class_indices

    bounds = mask_bounds(lung_mask, ct, CROP_MARGIN_MM) if lung_mask is not None else None
    arr, grid = to_model_grid(ct, spacing, bounds)
    c = grid.world_to_voxel(np.asarray(centers_lps, float).reshape(-1, 3))
    neg = grid.world_to_voxel(np.asarray(negatives_lps, float).reshape(-1, 3)) if negatives_lps is not None \
        else np.zeros((0, 3))
    return TrainCase(case_id=case_id, image=np.clip(np.round(arr), -32768, 32767).astype(np.int16),
                     origin=grid.origin, spacing=spacing, centers=c.astype(np.float32),
                     diameters=np.asarray(diameters, np.float32).reshape(-1),
                     malignancy=np.asarray(malignancy, np.int16).reshape(-1), negatives=neg.astype(np.float32),
                     lung_share=None if lung_share is None else np.asarray(lung_share, np.float32).reshape(-1),
                     nodule_types=None if nodule_types is None else class_indices(nodule_types, TYPE_CLASSES),
                     margins=None if margins is None else class_indices(margins, MARGIN_CLASSES))


def _phantom_case(case_id: str, seed: int, spacing: float, max_nodules: int, mix: str = "screening") -> TrainCase:
    from .phantom import generate_phantom

    ph = generate_phantom(seed, max_nodules=max_nodules, mix=mix)
    n = ph.nodules
    return case_from_ct(case_id, ph.ct, np.array([x.center_lps for x in n]).reshape(-1, 3),
                        np.array([x.diameter_mm for x in n]), np.array([x.malignancy for x in n]), spacing,
                        lung_mask=ph.lung_mask, lung_share=np.array([x.lung_share for x in n]),
                        nodule_types=[x.nodule_type for x in n], margins=[x.margin for x in n])


class PhantomCases:
    """Phantoms ``phantom_seed(seed, i)``, i < n, generated once and cached as ``.npz`` in ``cache_dir``.

    ``mix`` names the nodule mix (:data:`resmtnet.data.phantom.PHANTOM_MIXES`); a set of another mix has its own
    case ids and cache files. ``a + b`` is both sets, in that order.
    """

    def __init__(self, cache_dir: str | Path, seed: int, n: int, spacing: float, max_nodules: int = 8,
                 mix: str = "screening"):
        from .phantom import phantom_mix, phantom_seed

        phantom_mix(mix)  # an unknown mix stops here, before anything is generated
        self.cache_dir = Path(cache_dir)
        self.spacing = spacing
        self.max_nodules = max_nodules
        prefix = "phantom" if mix == "screening" else f"phantom-{mix}"
        self.items = [(f"{prefix}-s{seed}-{i:04d}", phantom_seed(seed, i), mix) for i in range(n)]
        from .phantom import NODULE_RENDERER_VERSION

        # v: the format of a cached case (3: cases carry each nodule's lung_share; 4: its type and margin); the
        # screening mix, the one every evaluation set uses, names no mix in its key
        key = {"kind": "phantom", "spacing": spacing, "max_nodules": max_nodules, "v": 4,
               "renderer": NODULE_RENDERER_VERSION}
        if mix != "screening":
            key["mix"] = mix
        if mix == "masses":
            from .phantom import MASS_GENERATOR_VERSION

            key["generator"] = MASS_GENERATOR_VERSION
        tag = hashlib.sha1(json.dumps(key).encode()).hexdigest()[:10]
        self._paths = {cid: self.cache_dir / f"{cid}-{tag}.npz" for cid, _, _ in self.items}

    def __add__(self, other: PhantomCases) -> PhantomCases:
        if (other.cache_dir, other.spacing, other.max_nodules) != (self.cache_dir, self.spacing, self.max_nodules):
            raise ValueError("phantom sets to join must share cache folder, spacing and nodule count")
        both = copy.copy(self)
        both.items = self.items + [it for it in other.items if it[0] not in self._paths]
        both._paths = {**other._paths, **self._paths}
        return both

    def path(self, case_id: str) -> Path:
        return self._paths[case_id]

    def ensure(self, workers: int = 1, progress: Callable[[int, int], None] | None = None) -> None:
        """Generate every missing case (in ``workers`` processes; under torchrun, each rank its share:
        :func:`resmtnet.data.case_files.ensure_case_files`)."""
        from .case_files import CaseFile, ensure_case_files

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        ensure_case_files([CaseFile(self.path(cid), partial(_save_phantom_case, cid, s, self.spacing, self.max_nodules,
                                                            m)) for cid, s, m in self.items], workers, progress)

    def load(self, ids: Sequence[str] | None = None) -> list[TrainCase]:
        wanted = set(ids) if ids is not None else None
        return [TrainCase.load(self.path(cid), cid) for cid, _, _ in self.items if wanted is None or cid in wanted]


def _save_phantom_case(case_id: str, seed: int, spacing: float, max_nodules: int, mix: str, path: Path) -> None:
    _phantom_case(case_id, seed, spacing, max_nodules, mix).save(path)
