"""Reading a chest CT: any volume SimpleITK reads, or a DICOM series folder.

Voxels come back as float32 Hounsfield units in a (z, y, x) array; geometry (spacing, origin,
direction, ITK's x, y, z order) is kept whole, so ``world = origin + direction @ (index * spacing)``
in LPS millimetres, as ITK and LUNA16 have it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .atomic import TMP_PREFIX, atomic_write
from .errors import InputError
from .identity import read_identity

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mhd", ".mha")
MIN_SPACING_MM = 0.05
MAX_SPACING_MM = 20.0
MIN_VOXELS_PER_AXIS = 8


@dataclass
class CTVolume:
    """A CT in memory: ``array`` (z, y, x) float32 HU and the ITK geometry (x, y, z)."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    seriesuid: str
    source: str
    #: What the reader wants the user to know (e.g. which of several DICOM series it read).
    notes: tuple[str, ...] = ()
    #: What the scan is called (DICOM patient ID, series number and description, or the file name);
    #: see :mod:`resmtnet.identity`.
    identity: dict[str, str] = field(default_factory=dict)

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        z, y, x = self.array.shape
        return (x, y, z)

    def to_sitk(self) -> sitk.Image:
        img = sitk.GetImageFromArray(self.array)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    def index_to_world(self, ijk_xyz: np.ndarray) -> np.ndarray:
        """Continuous indices (..., 3) in x, y, z order → LPS world mm (..., 3)."""
        ijk = np.asarray(ijk_xyz, dtype=np.float64)
        return np.asarray(self.origin) + (ijk * np.asarray(self.spacing)) @ self.direction_matrix.T

    def world_to_index(self, lps: np.ndarray) -> np.ndarray:
        """LPS world mm (..., 3) → continuous indices (..., 3) in x, y, z order."""
        p = np.asarray(lps, dtype=np.float64) - np.asarray(self.origin)
        return (p @ np.linalg.inv(self.direction_matrix).T) / np.asarray(self.spacing)

    @classmethod
    def from_sitk(cls, img: sitk.Image, seriesuid: str = "", source: str = "") -> CTVolume:
        vol = cls(
            array=sitk.GetArrayFromImage(img).astype(np.float32, copy=False),
            spacing=tuple(float(s) for s in img.GetSpacing()),
            origin=tuple(float(o) for o in img.GetOrigin()),
            direction=tuple(float(d) for d in img.GetDirection()),
            seriesuid=seriesuid,
            source=source,
        )
        return vol


class SeveralSeriesWarning(UserWarning):
    """A DICOM folder held more than one series; the one with the most slices was read."""


def list_dicom_series(folder: str | Path) -> list[tuple[str, int]]:
    """(SeriesInstanceUID, number of files) for each series directly in ``folder``, largest first."""
    with _quiet_itk():
        reader = sitk.ImageSeriesReader()
        ids = reader.GetGDCMSeriesIDs(str(folder)) or ()
        series = [(sid, len(reader.GetGDCMSeriesFileNames(str(folder), sid))) for sid in ids]
    return sorted(series, key=lambda s: -s[1])


def _find_dicom_series(folder: Path, max_depth: int = 4) -> list[tuple[Path, str, int]]:
    """(folder, SeriesInstanceUID, files) for each series in ``folder`` or, if it holds none, in its
    sub-folders (as archives such as TCIA's unpack them), largest first."""
    here = [(folder, sid, n) for sid, n in list_dicom_series(folder)]
    if here:
        return here
    found = []
    base_depth = len(folder.parts)
    for root, dirs, _files in os.walk(folder):
        dirs.sort()
        if len(Path(root).parts) - base_depth >= max_depth:
            dirs[:] = []
        if Path(root) == folder:
            continue
        found += [(Path(root), sid, n) for sid, n in list_dicom_series(root)]
    return sorted(found, key=lambda s: -s[2])


class _quiet_itk:
    """Silence ITK's own warnings on stderr (GDCM prints one for every folder without DICOM)."""

    def __enter__(self):
        self._was = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)

    def __exit__(self, *exc):
        sitk.ProcessObject.SetGlobalWarningDisplay(self._was)
        return False


def _read_dicom_folder(folder: Path) -> tuple[sitk.Image, str, list[str]]:
    series = _find_dicom_series(folder)
    if not series:
        volumes = sorted(p.name for p in folder.iterdir() if p.is_file() and _is_volume_name(p.name))
        if volumes:
            shown = ", ".join(volumes[:5]) + (" ..." if len(volumes) > 5 else "")
            raise InputError(f"{folder}: folder holds no DICOM series; it holds volume files ({shown}): "
                             "give one of them as the input")
        raise InputError(f"{folder}: folder holds no DICOM files (and no volume file was given)")
    where, sid, count = series[0]
    notes = []
    if len(series) > 1:
        listing = "; ".join(f"{s} ({n} files{'' if d == folder else ', in ' + str(d.relative_to(folder))})"
                            for d, s, n in series)
        notes.append(f"{len(series)} DICOM series found: {listing}; read the one with the most slices, {sid}")
        warnings.warn(f"{folder}: {notes[-1]}", SeveralSeriesWarning, stacklevel=3)
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(where), sid)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        with _quiet_itk():
            img = reader.Execute()
    except RuntimeError as e:
        raise InputError(f"{folder}: DICOM series {sid} ({count} files) could not be read: "
                         f"{_reason(e)}") from e
    return img, sid, notes


def _is_volume_name(name: str) -> bool:
    return name.lower().endswith(VOLUME_SUFFIXES)


def _reason(e: Exception) -> str:
    """The useful line of an ITK exception."""
    text = str(e)
    if "Unable to determine ImageIO reader" in text:
        return "no image reader recognises its contents"
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("Reason:") or ln.startswith("Description:"):
            return ln.split(":", 1)[1].strip()
    return lines[-1] if lines else type(e).__name__


def _read_file(p: Path) -> tuple[sitk.Image, str]:
    if p.stat().st_size == 0:
        raise InputError(f"{p}: file is empty (0 bytes)")
    if p.name.lower().endswith((".mhd", ".nhdr")):
        missing = _missing_data_file(p)
        if missing:
            raise InputError(f"{p}: its header names the data file {missing}, which does not exist")
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        with _quiet_itk():
            reader.ReadImageInformation()
            img = reader.Execute()
    except RuntimeError as e:
        raise InputError(f"{p}: is not an image file SimpleITK can read ({_reason(e)})") from e
    return img, _series_uid_from_file(p, img)


def _missing_data_file(header: Path) -> str | None:
    """The data file a detached header (.mhd, .nhdr) names, if it is missing."""
    try:
        text = header.read_text(errors="replace")[:20000]
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition("=" if header.suffix.lower() == ".mhd" else ":")
        key = key.strip().lower()
        if sep and key in ("elementdatafile", "data file", "datafile"):
            value = value.strip()
            if value.upper() == "LOCAL" or " " in value or "%" in value:
                return None  # data in the header itself, or a list/pattern of files: let ITK judge
            data = (header.parent / value)
            return None if data.exists() else value
    return None


def read_ct(path: str | Path) -> CTVolume:
    """Read a CT volume file or DICOM series folder; raise :class:`InputError`, with a message naming
    the problem, for anything that is not a usable CT volume."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    notes: list[str] = []
    if p.is_dir():
        img, sid, notes = _read_dicom_folder(p)
    else:
        img, sid = _read_file(p)
    _check_image(p, img)
    vol = CTVolume.from_sitk(img, seriesuid=sid, source=str(p))
    vol.notes = tuple(notes)
    vol.identity = read_identity(p, sid)
    _check_values(p, vol.array)
    return vol


def _check_image(p: Path, img: sitk.Image) -> None:
    """Shape and geometry checks, before the voxels are looked at."""
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{p}: has {img.GetNumberOfComponentsPerPixel()} values per voxel (a colour or "
                         "vector image); a CT has one")
    size = img.GetSize()
    if img.GetDimension() == 2 or (img.GetDimension() == 3 and sorted(size)[0] == 1):
        raise InputError(f"{p}: is a 2-D image (size {' x '.join(map(str, size))}, a single slice); a CT "
                         "volume must be 3-D")
    if img.GetDimension() != 3:
        raise InputError(f"{p}: is a {img.GetDimension()}-D image (size {' x '.join(map(str, size))}); a CT "
                         "volume must be 3-D")
    if min(size) < MIN_VOXELS_PER_AXIS:
        raise InputError(f"{p}: size {' x '.join(map(str, size))} is too small for a CT volume (at least "
                         f"{MIN_VOXELS_PER_AXIS} voxels along each axis)")
    spacing = img.GetSpacing()
    if any(not np.isfinite(s) or s < MIN_SPACING_MM or s > MAX_SPACING_MM for s in spacing):
        raise InputError(f"{p}: voxel spacing {tuple(round(s, 4) for s in spacing)} mm is absurd for a CT "
                         f"(each must lie in {MIN_SPACING_MM}–{MAX_SPACING_MM} mm)")
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    if not np.isfinite(direction).all() or abs(abs(np.linalg.det(direction)) - 1) > 1e-3:
        raise InputError(f"{p}: direction matrix is not a rotation: {img.GetDirection()}")
    if not np.isfinite(img.GetOrigin()).all():
        raise InputError(f"{p}: origin {img.GetOrigin()} is not a finite position")


def _check_values(p: Path, a: np.ndarray) -> None:
    finite = np.isfinite(a)
    if not finite.all():
        bad = int(a.size - np.count_nonzero(finite))
        raise InputError(f"{p}: holds NaN or infinite voxel values ({bad} of {a.size} voxels)")
    lo, hi = float(a.min()), float(a.max())
    if hi - lo < 1e-3:
        if lo == 0.0:
            raise InputError(f"{p}: is empty: every voxel is 0")
        raise InputError(f"{p}: is constant: every voxel is {lo:g}, there is nothing to see")


def _series_uid_from_file(p: Path, img: sitk.Image) -> str:
    for key in ("0020|000e", "SeriesInstanceUID", "seriesuid"):
        if img.HasMetaDataKey(key):
            return img.GetMetaData(key).strip()
    name = p.name
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


def write_volume(vol: CTVolume, path: str | Path, compress: bool = True, integer: bool | None = None) -> None:
    """Write a volume whole or not at all (under a temporary name, then renamed).

    ``integer``: store as int16 (HU are whole numbers; half the size of float32). ``None`` decides from
    the voxels: int16 when every value is a whole number within int16's range.
    """
    path = Path(path)
    img = vol.to_sitk()
    if integer is None:
        a = vol.array
        integer = bool(a.size and a.min() >= -32768 and a.max() <= 32767 and np.array_equal(a, np.round(a)))
    if integer:
        img = sitk.Cast(img, sitk.sitkInt16)
    if vol.seriesuid:
        img.SetMetaData("seriesuid", vol.seriesuid)  # NRRD and MetaImage keep it; read_ct reads it back
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".mhd":
        # header + data pair: the header names its data file, so write both under their final names
        # in a temporary folder beside, then move the data file first and the header last
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=TMP_PREFIX) as tmp:
            sitk.WriteImage(img, str(Path(tmp) / path.name), compress)
            for f in sorted(Path(tmp).iterdir(), key=lambda f: f.suffix.lower() == ".mhd"):
                shutil.move(str(f), str(path.parent / f.name))
        return
    atomic_write(path, lambda tmp: sitk.WriteImage(img, str(tmp), compress))
