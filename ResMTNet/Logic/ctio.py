"""Reading a chest CT: any volume SimpleITK reads, or a DICOM series folder.

Voxels come back as float32 Hounsfield units in a (z, y, x) array; geometry (spacing, origin,
direction, ITK's x, y, z order) is kept whole, so ``world = origin + direction @ (index * spacing)``
in LPS millimetres, as ITK and LUNA16 have it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError

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


def list_dicom_series(folder: str | Path) -> list[tuple[str, int]]:
    """(SeriesInstanceUID, number of files) for each series in ``folder``, largest first."""
    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(folder)) or ()
    series = [(sid, len(reader.GetGDCMSeriesFileNames(str(folder), sid))) for sid in ids]
    return sorted(series, key=lambda s: -s[1])


def _read_dicom_folder(folder: Path) -> tuple[sitk.Image, str]:
    series = list_dicom_series(folder)
    if not series:
        raise InputError(f"{folder}: folder holds no DICOM series (and no volume file was given)")
    sid, _count = series[0]
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        img = reader.Execute()
    except RuntimeError as e:
        raise InputError(f"{folder}: DICOM series {sid} could not be read: {_first_line(e)}") from e
    if len(series) > 1:
        listing = ", ".join(f"{s} ({n} files)" for s, n in series)
        import warnings

        warnings.warn(f"{folder}: {len(series)} DICOM series found: {listing}; reading the one with the most "
                      f"slices, {sid}", stacklevel=3)
    return img, sid


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__


def read_ct(path: str | Path) -> CTVolume:
    """Read a CT volume file or DICOM series folder; raise :class:`InputError` for anything unusable."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if p.is_dir():
        img, sid = _read_dicom_folder(p)
    else:
        if p.stat().st_size == 0:
            raise InputError(f"{p}: file is empty")
        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(p))
            reader.ReadImageInformation()
            img = reader.Execute()
        except RuntimeError as e:
            raise InputError(f"{p}: not an image SimpleITK can read ({_first_line(e)})") from e
        sid = _series_uid_from_file(p, img)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{p}: has {img.GetNumberOfComponentsPerPixel()} components per voxel; a CT has one")
    if img.GetDimension() != 3:
        raise InputError(f"{p}: is a {img.GetDimension()}-D image; a CT volume must be 3-D")
    size = img.GetSize()
    if min(size) < MIN_VOXELS_PER_AXIS:
        raise InputError(f"{p}: size {size} is too small for a CT volume (at least {MIN_VOXELS_PER_AXIS} voxels "
                         "along each axis)")
    spacing = img.GetSpacing()
    if any(not np.isfinite(s) or s < MIN_SPACING_MM or s > MAX_SPACING_MM for s in spacing):
        raise InputError(f"{p}: voxel spacing {tuple(round(s, 4) for s in spacing)} mm is absurd for a CT "
                         f"(each must lie in {MIN_SPACING_MM}–{MAX_SPACING_MM} mm)")
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    if not np.isfinite(direction).all() or abs(abs(np.linalg.det(direction)) - 1) > 1e-3:
        raise InputError(f"{p}: direction matrix is not a rotation: {img.GetDirection()}")
    vol = CTVolume.from_sitk(img, seriesuid=sid, source=str(p))
    a = vol.array
    if not np.isfinite(a).all():
        raise InputError(f"{p}: holds NaN or infinite voxel values")
    lo, hi = float(a.min()), float(a.max())
    if hi - lo < 1e-3:
        raise InputError(f"{p}: is empty or constant (every voxel is {lo:g})")
    return vol


def _series_uid_from_file(p: Path, img: sitk.Image) -> str:
    for key in ("0020|000e", "SeriesInstanceUID", "seriesuid"):
        if img.HasMetaDataKey(key):
            return img.GetMetaData(key).strip()
    name = p.name
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


def write_volume(vol: CTVolume, path: str | Path, compress: bool = True) -> None:
    """Write a volume atomically (to a temporary name, then renamed)."""
    path = Path(path)
    if path.suffix.lower() == ".mhd":  # header + .raw pair: the header names its data file, write in place
        sitk.WriteImage(vol.to_sitk(), str(path), compress)
        return
    tmp = path.with_name(".tmp-" + path.name)
    sitk.WriteImage(vol.to_sitk(), str(tmp), compress)
    os.replace(tmp, path)
