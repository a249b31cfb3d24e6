"""Case sources for training and evaluation beside generated phantoms: LUNA16, LIDC-IDRI, phantom folders.

A *case source* lists cases and loads one as ``(CTVolume, [ReferenceNodule])`` (world LPS mm), with known
non-nodules as hard negatives (:class:`CaseSource`). Sources here:

- :class:`Luna16Source`: LUNA16's ``subset*/<seriesuid>.mhd`` (+ ``.raw``) and ``annotations.csv``
  (``candidates.csv`` class 0 for hard negatives). LUNA16 has no malignancy: ratings are None.
- :class:`LidcSource`: LIDC-IDRI folders, each with a DICOM series and its readers' XML
  (:mod:`resmtnet.data.lidc`): consensus nodules with median malignancy rating and type.
- :class:`PhantomFolderSource`: a folder from :func:`resmtnet.data.phantom.write_phantom_set`.

:func:`ten_fold_split` splits case ids into ten folds by patient (no patient in two folds);
:func:`fold_split` gives the train / validation ids of one fold.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..io.ctio import VOLUME_SUFFIXES, CTVolume, read_ct
from ..io.luna16_csv import Point, ReferenceNodule, annotations_by_scan, read_negatives, rounded_rating
from ..util.errors import InputError


@runtime_checkable
class CaseSource(Protocol):
    """What training and evaluation need from a collection of scans.

    The sources here also offer ``truths(case_id)`` (the nodules without reading the CT),
    ``source_files(case_id)`` (the files a case is made of, for cache keys) and ``patient_of(case_id)``.
    """

    def case_ids(self) -> list[str]: ...

    def load(self, case_id: str) -> tuple[CTVolume, list[ReferenceNodule]]: ...

    def negatives(self, case_id: str) -> list[Point]: ...


# ---------------------------------------------------------------- CSV-annotated volume folders


def _volume_stem(path: Path, suffixes: Iterable[str]) -> str | None:
    name = path.name
    for s in sorted(suffixes, key=len, reverse=True):
        if name.lower().endswith(s):
            return name[: -len(s)]
    return None


def _mhd_data_files(path: Path) -> list[Path]:
    """The data file(s) an .mhd header names (ElementDataFile), for cache fingerprints."""
    if path.suffix.lower() != ".mhd":
        return []
    try:
        with open(path, errors="replace") as f:
            for line in f:
                key, _, value = line.partition("=")
                if key.strip() == "ElementDataFile":
                    value = value.strip()
                    if value.upper() in ("LOCAL",) or value.upper().startswith("LIST"):
                        return []
                    return [path.parent / value]
    except OSError:
        return []
    return []



def _known_case(paths: dict[str, Path], case_id: str, missing: str) -> Path:
    """``paths[case_id]``; a case id the source does not hold is the user's error (``missing``, then the id)."""
    try:
        return paths[case_id]
    except KeyError:
        raise InputError(f"{missing} {case_id!r}") from None

class AnnotatedVolumeFolder:
    """Volumes found anywhere below ``folder`` (case id = file stem) and an annotations CSV by seriesuid."""

    suffixes: tuple[str, ...] = VOLUME_SUFFIXES

    def __init__(self, folder: str | Path, annotations_csv: str | Path,
                 candidates_csv: str | Path | None = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise InputError(f"{self.folder}: no such folder")
        self.annotations_csv = Path(annotations_csv)
        self.candidates_csv = Path(candidates_csv) if candidates_csv is not None else None
        if self.candidates_csv is not None and not self.candidates_csv.is_file():
            raise InputError(f"{self.candidates_csv}: candidates CSV not found")
        self._truth = annotations_by_scan(self.annotations_csv)
        self._paths: dict[str, Path] = {}
        for p in sorted(self.folder.rglob("*")):
            if not p.is_file() or p.name.startswith(".") or ".labels." in p.name:
                continue
            stem = _volume_stem(p, self.suffixes)
            if stem is None:
                continue
            if stem in self._paths:
                raise InputError(f"{self.folder}: two volumes for case {stem}: {self._paths[stem]} and {p}")
            self._paths[stem] = p
        if not self._paths:
            raise InputError(f"{self.folder}: holds no volume ({', '.join(self.suffixes)})")
        self._negatives: dict[str, list[Point]] | None = None

    def case_ids(self) -> list[str]:
        return sorted(self._paths)

    def path_of(self, case_id: str) -> Path:
        return _known_case(self._paths, case_id, f"{self.folder}: no case")

    def truths(self, case_id: str) -> list[ReferenceNodule]:
        self.path_of(case_id)
        return list(self._truth.get(case_id, []))

    def load(self, case_id: str) -> tuple[CTVolume, list[ReferenceNodule]]:
        ct = read_ct(self.path_of(case_id))
        ct.seriesuid = case_id
        return ct, self.truths(case_id)

    def negatives(self, case_id: str) -> list[Point]:
        """Candidates of class 0 (LUNA16 ``candidates.csv``) of this case; none without a candidates file."""
        self.path_of(case_id)
        if self.candidates_csv is None:
            return []
        if self._negatives is None:
            self._negatives = read_negatives(self.candidates_csv, wanted=self._paths)
        return list(self._negatives.get(case_id, []))

    def source_files(self, case_id: str) -> list[Path]:
        path = self.path_of(case_id)
        files = [path] + _mhd_data_files(path) + [self.annotations_csv]
        return files

    def patient_of(self, case_id: str) -> str:
        return case_id


class Luna16Source(AnnotatedVolumeFolder):
    """LUNA16: ``folder`` holds ``subset0`` ... ``subset9`` (or the scans directly) of ``<seriesuid>.mhd``.

    Annotations rows for scans not in the folder are ignored (one may hold a few subsets only).
    LUNA16 does not say which scans share a patient: ``patient_of`` is the scan itself unless a mapping
    ``{seriesuid: patient}`` is given.
    """

    suffixes = (".mhd", ".mha")

    def __init__(self, folder: str | Path, annotations_csv: str | Path,
                 candidates_csv: str | Path | None = None, patients: dict[str, str] | None = None):
        super().__init__(folder, annotations_csv, candidates_csv)
        self.patients = dict(patients or {})

    def patient_of(self, case_id: str) -> str:
        return self.patients.get(case_id, case_id)


class PhantomFolderSource(AnnotatedVolumeFolder):
    """A folder written by :func:`resmtnet.data.phantom.write_phantom_set`: volumes + ``annotations.csv`` with
    ``malignancy`` ratings and ``nodule_type``."""

    def __init__(self, folder: str | Path, annotations_csv: str | Path | None = None):
        folder = Path(folder)
        csv_path = annotations_csv if annotations_csv is not None else folder / "annotations.csv"
        super().__init__(folder, csv_path)


# ---------------------------------------------------------------- LIDC-IDRI


class LidcSource:
    """LIDC-IDRI: every reader XML (``LidcReadMessage``) below ``root`` with its DICOM series (in the XML's
    folder or below it). Case id: the XML's folder relative to ``root``; patient: the ``LIDC-IDRI-NNNN`` in
    that path (else its first folder).

    Truths are the consensus nodules that at least ``min_readers`` readers outlined (LUNA16 took 3);
    negatives are the readers' non-nodule marks lying more than ``negative_clearance_mm`` from every
    nodule mark of any size.
    """

    def __init__(self, root: str | Path, min_readers: int = 1, negative_clearance_mm: float = 10.0):
        from .lidc import find_lidc_xml

        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root}: no such folder")
        self.min_readers = int(min_readers)
        self.negative_clearance_mm = float(negative_clearance_mm)
        self._xml: dict[str, Path] = {}
        for xml in find_lidc_xml(self.root):
            rel = xml.parent.relative_to(self.root).as_posix()
            cid = rel if rel != "." else xml.stem
            if cid in self._xml:
                cid = f"{cid}/{xml.stem}"
            self._xml[cid] = xml
        if not self._xml:
            raise InputError(f"{self.root}: holds no LIDC reader XML (LidcReadMessage)")
        self._cases: dict[str, Any] = {}
        self._dicom_folders: dict[str, Path] = {}

    def case_ids(self) -> list[str]:
        return sorted(self._xml)

    def xml_of(self, case_id: str) -> Path:
        return _known_case(self._xml, case_id, f"{self.root}: no LIDC case")

    def patient_of(self, case_id: str) -> str:
        from .lidc import patient_id_of

        return patient_id_of(case_id) or case_id.split("/")[0]

    def lidc_case(self, case_id: str):
        """The :class:`resmtnet.data.lidc.LidcCase` (reads the CT the first time)."""
        if case_id not in self._cases:
            self.load(case_id)
        return self._cases[case_id]

    def load(self, case_id: str) -> tuple[CTVolume, list[ReferenceNodule]]:
        from .lidc import read_lidc_case

        ct, case = read_lidc_case(self.xml_of(case_id))
        self._cases[case_id] = case
        return ct, self._truths_of(case_id, case)

    def truths(self, case_id: str) -> list[ReferenceNodule]:
        return self._truths_of(case_id, self.lidc_case(case_id))

    def _truths_of(self, case_id: str, case) -> list[ReferenceNodule]:
        return [ReferenceNodule(case_id, center_lps=n.center_lps, diameter_mm=n.diameter_mm,
                                malignancy_rating=n.malignancy_rating, nodule_type=n.nodule_type, margin=n.margin)
                for n in case.accepted(self.min_readers)]

    def negatives(self, case_id: str) -> list[Point]:
        case = self.lidc_case(case_id)
        marks = [m.center_lps for n in case.nodules for m in n.marks] + [p for _r, p in case.small_nodules]
        out = []
        for _reader, p in case.non_nodules:
            if all(np.linalg.norm(np.subtract(p, q)) > self.negative_clearance_mm for q in marks):
                out.append(p)
        return out

    def source_files(self, case_id: str) -> list[Path]:
        from .lidc import dicom_folder_for, read_lidc_xml

        xml = self.xml_of(case_id)
        if case_id not in self._dicom_folders:
            self._dicom_folders[case_id] = dicom_folder_for(xml, read_lidc_xml(xml).series_uid)
        folder = self._dicom_folders[case_id]
        return [xml] + sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() != ".xml")


# ---------------------------------------------------------------- folds


def ten_fold_split(case_ids: Iterable[str], patient_of: Callable[[str], str] | None = None, seed: int = 0,
                   n_folds: int = 10) -> list[list[str]]:
    """Split case ids into ``n_folds`` folds by patient: all cases of a patient land in one fold.

    Patients are shuffled with ``seed`` and each goes to the fold holding the fewest cases so far (the
    first such fold on a tie), so folds differ in size by at most one patient's cases. Deterministic.
    """
    if n_folds < 2:
        raise ValueError("n_folds must be at least 2")
    ids = list(dict.fromkeys(case_ids))
    groups: dict[str, list[str]] = {}
    for cid in ids:
        groups.setdefault(patient_of(cid) if patient_of else cid, []).append(cid)
    patients = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(patients))
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    for i in order:
        target = min(range(n_folds), key=lambda f: (len(folds[f]), f))
        folds[target].extend(groups[patients[i]])
    return [sorted(f) for f in folds]


def fold_split(case_ids: Iterable[str], fold: int, patient_of: Callable[[str], str] | None = None,
               seed: int = 0, n_folds: int = 10) -> tuple[list[str], list[str]]:
    """(train ids, validation ids) for ``fold`` (0 ... n_folds-1) of :func:`ten_fold_split`."""
    if not 0 <= fold < n_folds:
        raise InputError(f"fold must be in 0..{n_folds - 1}, not {fold}")
    folds = ten_fold_split(case_ids, patient_of, seed, n_folds)
    val = folds[fold]
    train = sorted(c for i, f in enumerate(folds) if i != fold for c in f)
    return train, val


# ---------------------------------------------------------------- source fingerprints


def _fingerprint(files: Iterable[Path]) -> list[list[Any]]:
    out = []
    for p in files:
        st = Path(p).stat()
        out.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    return out


# ---------------------------------------------------------------- training cases for resmtnet.train.training


#: The format of a cached training case, part of its cache key: 2 cases carry each nodule's lung_share, 3 its
#: type and margin.
TRAIN_CACHE_FORMAT = 3


def build_train_case(source: CaseSource, case_id: str, spacing: float, crop_to_lungs: bool = True):
    """A :class:`resmtnet.data.training_data.TrainCase` from one case of a source: the CT resampled once onto the
    model grid (cropped to the lungs + margin when a lung mask is found), nodules and negatives on that
    grid; unknown malignancy (LUNA16) is rating 0."""
    from ..util.errors import NoLungsError
    from .training_data import case_from_ct

    ct, truths = source.load(case_id)
    mask = None
    if crop_to_lungs:
        from ..detect.lungmask import lung_mask

        try:
            mask = lung_mask(ct.array, ct.spacing, direction=ct.direction)
        except NoLungsError as e:
            warnings.warn(f"{case_id}: {e}; training on the whole scan", stacklevel=2)
    centers = np.array([t.center_lps for t in truths], dtype=np.float64).reshape(-1, 3)
    diameters = np.array([t.diameter_mm for t in truths], dtype=np.float64)
    ratings = np.array([rounded_rating(t.malignancy_rating) or 0 for t in truths], dtype=np.int16)
    neg = np.array(source.negatives(case_id), dtype=np.float64).reshape(-1, 3)
    return case_from_ct(case_id, ct, centers, diameters, ratings, float(spacing), lung_mask=mask,
                        negatives_lps=neg, lung_share=np.array([t.lung_share for t in truths], np.float32),
                        nodule_types=[t.nodule_type for t in truths], margins=[t.margin for t in truths])


def _build_train_case_file(source: CaseSource, case_id: str, spacing: float, crop: bool, path: Path) -> None:
    build_train_case(source, case_id, spacing, crop).save(path)


class TrainCaseCache:
    """Training cases of a source on the model grid, built once and kept as ``.npz`` in ``cache_dir``.

    The file name carries a hash of the case id, the source files (paths, sizes, modification times),
    the spacing and the crop setting, so a changed scan or annotation file, or another spacing, is a new
    entry and no epoch resamples a CT twice. Under ``torchrun`` each rank builds its share of the
    missing cases (``RANK``, ``WORLD_SIZE``) and waits for the others' files.
    """

    def __init__(self, source: CaseSource, cache_dir: str | Path, spacing: float, crop_to_lungs: bool = True):
        self.source = source
        self.cache_dir = Path(cache_dir)
        self.spacing = float(spacing)
        self.crop_to_lungs = bool(crop_to_lungs)
        self._paths: dict[str, Path] = {}

    def path(self, case_id: str) -> Path:
        if case_id not in self._paths:
            files = getattr(self.source, "source_files", None)
            fingerprint = _fingerprint(files(case_id)) if files else []
            key = json.dumps({"v": TRAIN_CACHE_FORMAT, "case": case_id, "spacing": self.spacing,
                              "crop": self.crop_to_lungs, "files": fingerprint})
            digest = hashlib.sha1(key.encode()).hexdigest()[:12]
            name = re.sub(r"[^A-Za-z0-9._-]+", "_", case_id)[-80:]
            self._paths[case_id] = self.cache_dir / f"{name}-{digest}.npz"
        return self._paths[case_id]

    def ensure(self, ids: Iterable[str] | None = None, workers: int = 1,
               progress: Callable[[int, int], None] | None = None, poll_s: float = 2.0) -> None:
        """Build every missing case of ``ids`` (default: all), in ``workers`` processes
        (:func:`resmtnet.data.case_files.ensure_case_files`: under torchrun, each rank its share)."""
        from .case_files import CaseFile, ensure_case_files

        ids = list(self.source.case_ids() if ids is None else ids)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        ensure_case_files([CaseFile(self.path(c), partial(_build_train_case_file, self.source, c, self.spacing,
                                                          self.crop_to_lungs)) for c in ids],
                          workers, progress, poll_s)

    def load(self, ids: Iterable[str] | None = None) -> list:
        """The cached :class:`resmtnet.data.training_data.TrainCase` of ``ids`` (building any that are missing)."""
        from .training_data import TrainCase

        ids = list(self.source.case_ids() if ids is None else ids)
        if any(not self.path(c).exists() for c in ids):
            self.ensure(ids)
        return [TrainCase.load(self.path(c), c) for c in ids]
