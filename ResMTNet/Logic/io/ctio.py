"""Reading a chest CT: any volume SimpleITK reads, or a DICOM series folder.

Voxels come back as float32 Hounsfield units in a (z, y, x) array; geometry (spacing, origin,
direction, ITK's x, y, z order) is kept whole, so ``world = origin + direction @ (index * spacing)``
in LPS millimetres, as ITK and LUNA16 have it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from ..util.atomic import TMP_PREFIX, atomic_write
from ..util.errors import InputError
from .identity import read_identity

if TYPE_CHECKING:
    from .dicom_series import SeriesPlan

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mhd", ".mha")
MIN_SPACING_MM = 0.05
MAX_SPACING_MM = 20.0
MIN_VOXELS_PER_AXIS = 8
#: The lowest value of a chest CT in Hounsfield units is air (-1000) or the scanner's padding below it; a
#: volume whose lowest value lies above this holds something else (raw stored values, an 8-bit export).
MAX_LOWEST_HU = -500.0
#: Slices further apart than this are beyond what the model was checked on (model card: 0.625-5 mm).
THICK_SLICE_MM = 5.0
#: A NIfTI whose qform and sform place a voxel further apart than this (mm) has two geometries.
NIFTI_FORM_TOLERANCE_MM = 1.0


@dataclass
class CTVolume:
    """A CT in memory: ``array`` (z, y, x) HU, float32 (or int16: ``read_ct(..., int16=True)``), and the ITK
    geometry (x, y, z)."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    seriesuid: str
    source: str
    #: What the reader wants the user to know (e.g. which of several DICOM series it read).
    notes: tuple[str, ...] = ()
    #: What the scan is called (DICOM patient ID, series number and description, or the file name);
    #: see :mod:`resmtnet.io.identity`.
    identity: dict[str, str] = field(default_factory=dict)
    #: The DICOM series it was read from (files in z order, slice geometry); None for a volume file.
    dicom: SeriesPlan | None = None

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
    def from_sitk(cls, img: sitk.Image, seriesuid: str = "", source: str = "", int16: bool = False) -> CTVolume:
        """``int16``: voxels that are whole numbers in int16's range as int16, others as float32, each without
        a copy where the image's own pixels allow (what a large CT needs, see :func:`read_ct`)."""
        array = _compact_array(img) if int16 else None
        vol = cls(
            array=sitk.GetArrayFromImage(img).astype(np.float32, copy=False) if array is None else array,
            spacing=tuple(float(s) for s in img.GetSpacing()),
            origin=tuple(float(o) for o in img.GetOrigin()),
            direction=tuple(float(d) for d in img.GetDirection()),
            seriesuid=seriesuid,
            source=source,
        )
        return vol


_INTEGER_PIXELS = (sitk.sitkInt8, sitk.sitkUInt8, sitk.sitkInt16, sitk.sitkUInt16, sitk.sitkInt32, sitk.sitkUInt32,
                   sitk.sitkInt64, sitk.sitkUInt64)


def _compact_array(img: sitk.Image) -> np.ndarray:
    """The voxels as int16 where they are whole numbers within int16's range, else float32, in as little
    memory as they take: integer pixels share the image's buffer (the array keeps the image alive), a
    float32 image's too; floating-point whole numbers are converted slab by slab."""
    pixel = img.GetPixelID()
    if pixel in _INTEGER_PIXELS and pixel != sitk.sitkInt16:
        stats = sitk.MinimumMaximumImageFilter()
        stats.Execute(img)
        fits = -32768 <= stats.GetMinimum() and stats.GetMaximum() <= 32767
        img = sitk.Cast(img, sitk.sitkInt16 if fits else sitk.sitkFloat32)
    elif pixel not in _INTEGER_PIXELS and pixel != sitk.sitkFloat32:
        img = sitk.Cast(img, sitk.sitkFloat32)
    a = np.asarray(_ImageBuffer(img, sitk.GetArrayViewFromImage(img)))
    if a.dtype == np.int16 or not holds_whole_int16(a):
        return a
    out = np.empty(a.shape, np.int16)
    for z0 in range(0, a.shape[0], _SLAB_PLANES):
        out[z0:z0 + _SLAB_PLANES] = a[z0:z0 + _SLAB_PLANES]
    return out


#: z planes looked at a time where a whole-volume temporary would be too large
_SLAB_PLANES = 32


def holds_whole_int16(a: np.ndarray) -> bool:
    """Whether every value of ``a`` is a whole number within int16's range (looked at slab by slab along the
    first axis: no whole-volume temporary); False for an empty array."""
    if a.size == 0:
        return False
    if np.issubdtype(a.dtype, np.integer):
        return bool(a.min() >= -32768 and a.max() <= 32767)
    for z0 in range(0, a.shape[0], _SLAB_PLANES):
        part = a[z0:z0 + _SLAB_PLANES]
        if not (part.min() >= -32768 and part.max() <= 32767 and np.array_equal(part, np.round(part))):
            return False
    return True


class _ImageBuffer:
    """Exposes an image's pixel buffer to numpy as a writable array that holds on to the image."""

    def __init__(self, img: sitk.Image, view: np.ndarray):
        self.image = img
        self.__array_interface__ = {**view.__array_interface__, "data": (view.__array_interface__["data"][0], False)}


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series found on disk: the folder its files are in, its SeriesInstanceUID and its files (GDCM's
    list, in GDCM's order)."""

    folder: Path
    series_uid: str
    files: tuple[str, ...]


def _series_in(folder: Path) -> list[DicomSeries]:
    with _quiet_itk():
        reader = sitk.ImageSeriesReader()
        ids = reader.GetGDCMSeriesIDs(str(folder)) or ()
        return [DicomSeries(folder, sid, tuple(reader.GetGDCMSeriesFileNames(str(folder), sid))) for sid in ids]


def find_dicom_series(folder: str | Path, max_depth: int = 4) -> list[DicomSeries]:
    """Each DICOM series in ``folder`` or, if it holds none, in its sub-folders (as archives such as TCIA's
    unpack them), the one with the most files first. One look at the folder: pass the result on
    (``read_ct(..., dicom_series=)``) rather than looking again."""
    folder = Path(folder)
    here = sorted(_series_in(folder), key=lambda s: -len(s.files))
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
        found += _series_in(Path(root))
    return sorted(found, key=lambda s: -len(s.files))


class _quiet_itk:
    """Silence ITK's own warnings on stderr (GDCM prints one for every folder without DICOM)."""

    def __enter__(self):
        self._was = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)

    def __exit__(self, *exc):
        sitk.ProcessObject.SetGlobalWarningDisplay(self._was)
        return False


def _read_dicom_folder(folder: Path, series: list[DicomSeries] | None = None
                       ) -> tuple[sitk.Image, list[str], SeriesPlan]:
    from .dicom_series import place_slices, plan_series  # pydicom imported only where DICOM is read

    series = find_dicom_series(folder) if series is None else series
    if not series:
        volumes = sorted(p.name for p in folder.iterdir() if p.is_file() and _is_volume_name(p.name))
        if volumes:
            shown = ", ".join(volumes[:5]) + (" ..." if len(volumes) > 5 else "")
            raise InputError(f"{folder}: folder holds no DICOM series; it holds volume files ({shown}): "
                             "give one of them as the input")
        raise InputError(f"{folder}: folder holds no DICOM files (and no volume file was given)")
    where, sid, count = series[0].folder, series[0].series_uid, len(series[0].files)
    notes = []
    if len(series) > 1:
        listing = "; ".join(f"{s.series_uid} ({len(s.files)} files"
                            f"{'' if s.folder == folder else ', in ' + str(s.folder.relative_to(folder))})"
                            for s in series)
        notes.append(f"{folder}: {len(series)} DICOM series found: {listing}; read the one with the most slices, "
                     f"{sid}")
    # the slice geometry from the headers first: what to read, in which order, and where it really is
    plan = plan_series(series[0].files, series_uid=sid, label=str(folder), folder=where)
    notes += plan.notes
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(plan.files)
    try:
        with _quiet_itk():
            img = reader.Execute()
    except RuntimeError as e:
        raise InputError(f"{folder}: DICOM series {sid} ({count} files) could not be read: "
                         f"{_reason(e)}") from e
    return place_slices(img, plan), notes, plan


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
        short = _short_data_file(p)
        if short:
            raise InputError(f"{p}: {short}")
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


_MHD_ELEMENT_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                      "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
                      "MET_DOUBLE": 8}
_NRRD_TYPE_BYTES = {**dict.fromkeys(("char", "signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8",
                                     "uint8_t"), 1),
                    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t",
                                     "ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
                    **dict.fromkeys(("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32",
                                     "uint32_t", "float"), 4),
                    **dict.fromkeys(("longlong", "long long", "int64", "int64_t", "ulonglong", "unsigned long long",
                                     "uint64", "uint64_t", "double"), 8)}


def _header_fields(header: Path, separator: str) -> dict[str, str]:
    lines = header.read_text(errors="replace")[:20000].splitlines()
    return {k.strip().lower(): v.strip() for k, sep, v in (ln.partition(separator) for ln in lines) if sep}


def _short_data_file(header: Path) -> str | None:
    """Why the raw data file of a detached header (.mhd, .nhdr) cannot hold the voxels the header declares, if
    it cannot (compressed data and data in the header itself are left to ITK)."""
    try:
        if header.suffix.lower() == ".mhd":
            fields = _header_fields(header, "=")
            if fields.get("compresseddata", "false").lower() == "true":
                return None  # the compressed size says nothing about the voxel count
            name = fields.get("elementdatafile", "")
            size = [int(v) for v in fields["dimsize"].split()]
            item = _MHD_ELEMENT_BYTES[fields["elementtype"].upper()] * int(fields.get("elementnumberofchannels", "1"))
            skip = int(fields.get("headersize", "0"))
        else:
            fields = _header_fields(header, ":")
            if fields.get("encoding", "").lower() != "raw" or "line skip" in fields:
                return None
            name = fields.get("data file", fields.get("datafile", ""))
            size = [int(v) for v in fields["sizes"].split()]
            item = _NRRD_TYPE_BYTES[" ".join(fields["type"].lower().split())]
            skip = int(fields.get("byte skip", "0"))
        if not name or name.upper() == "LOCAL" or " " in name or "%" in name:
            return None
        have = (header.parent / name).stat().st_size
    except (KeyError, ValueError, OSError):
        return None  # let ITK judge what this check cannot
    need = int(np.prod(size)) * item + max(skip, 0)
    if have < need:
        return (f"its data file {name} holds {have} bytes, fewer than the {need} its header declares "
                f"({' x '.join(map(str, size))} voxels of {item} byte(s)): the file is truncated")
    return None


def read_ct(path: str | Path, *, hu: bool = True, int16: bool = False,
            dicom_series: list[DicomSeries] | None = None) -> CTVolume:
    """Read a CT volume file or DICOM series folder; raise :class:`InputError`, with a message naming
    the problem, for anything that is not a usable CT volume.

    ``hu=False`` reads a label map or mask the same way, without requiring Hounsfield units. ``int16``:
    whole-number HU (as scanners store them) as int16 instead of float32: half the memory, and no copy of
    the voxels where the file stores them as integers; what detection of a large CT needs (see
    :mod:`.memory`). ``dicom_series``: what :func:`find_dicom_series` found in the folder ``path``, where the
    caller looked already.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    notes: list[str] = []
    plan = None
    if p.is_dir():
        img, notes, plan = _read_dicom_folder(p, dicom_series)
        sid = plan.series_uid
    else:
        img, sid = _read_file(p)
    _check_image(p, img)
    notes += _thick_slice_notes(p, img) + _nifti_form_notes(p, img)
    vol = CTVolume.from_sitk(img, seriesuid=sid, source=str(p), int16=int16)
    del img
    vol.notes = tuple(notes)
    vol.dicom = plan
    vol.identity = read_identity(p, plan.files[0] if plan is not None else None)
    _check_values(p, vol.array, hu)
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


def _check_values(p: Path, a: np.ndarray, hu: bool = True) -> None:
    if not np.issubdtype(a.dtype, np.integer):  # integers are finite: no whole-volume temporary for them
        finite = np.isfinite(a)
        if not finite.all():
            bad = int(a.size - np.count_nonzero(finite))
            raise InputError(f"{p}: holds NaN or infinite voxel values ({bad} of {a.size} voxels)")
        del finite
    lo, hi = float(a.min()), float(a.max())
    if hi - lo < 1e-3:
        if lo == 0.0:
            raise InputError(f"{p}: is empty: every voxel is 0")
        raise InputError(f"{p}: is constant: every voxel is {lo:g}, there is nothing to see")
    if hu and lo > MAX_LOWEST_HU:
        raise InputError(f"{p}: values are not Hounsfield units: they range from {lo:g} to {hi:g}, but a chest CT "
                         f"in HU holds air and lung near -1000 (nothing here lies below {MAX_LOWEST_HU:g}); "
                         f"{_non_hu_guess(lo, hi)}")


def _non_hu_guess(lo: float, hi: float) -> str:
    """What a volume with no air at -1000 most likely holds."""
    if lo >= 0 and hi <= 1:
        return "it looks like values scaled to [0, 1] (a normalised export), not CT data"
    if lo >= 0 and hi <= 255:
        return "it looks like an 8-bit image export, not CT data"
    if lo >= 0 and hi <= 65535:
        return ("it looks like the scanner's stored values without the rescale intercept (RescaleIntercept, "
                "usually -1024): convert them to HU first")
    return "convert the volume to HU first"


def _thick_slice_notes(p: Path, img: sitk.Image) -> list[str]:
    thickest = max(img.GetSpacing())
    if thickest <= THICK_SLICE_MM:
        return []
    return [f"{p}: voxels are {thickest:g} mm apart along one axis (slices thicker than {THICK_SLICE_MM:g} mm): "
            f"the model was made for 0.625-2.5 mm slices and checked up to {THICK_SLICE_MM:g} mm; findings and "
            "sizes on these slices are unreliable"]


def _nifti_form_notes(p: Path, img: sitk.Image) -> list[str]:
    """A note when a NIfTI's qform and sform (both set) place the volume differently, saying which ITK used."""
    def meta(key: str) -> str:
        return img.GetMetaData(key) if img.HasMetaDataKey(key) else ""

    try:
        if int(meta("qform_code") or 0) <= 0 or int(meta("sform_code") or 0) <= 0:
            return []
        b, c, d = (float(meta(f"quatern_{k}")) for k in "bcd")
        qfac = -1.0 if float(meta("pixdim[0]") or 1) < 0 else 1.0
        pixdim = np.array([float(meta(f"pixdim[{i}]")) for i in (1, 2, 3)])
        qoffset = np.array([float(meta(f"qoffset_{k}")) for k in "xyz"])
        srow = np.array([[float(v) for v in meta(f"srow_{k}").split()] for k in "xyz"])
    except ValueError:
        return []
    a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
    rot = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                    [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                    [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])
    qform = np.c_[rot @ np.diag(pixdim * [1.0, 1.0, qfac]), qoffset]
    sform = srow[:, :4]
    size = np.array(img.GetSize()[:3]) - 1
    corners = np.array([[i, j, k, 1.0] for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])])
    q_ras, s_ras = corners @ qform.T, corners @ sform.T
    apart = float(np.max(np.linalg.norm(q_ras - s_ras, axis=1)))
    if apart <= NIFTI_FORM_TOLERANCE_MM:
        return []
    # ITK's own placement of the same corners, in RAS as NIfTI has it
    itk_ras = np.array([img.TransformContinuousIndexToPhysicalPoint([float(v) for v in c[:3]]) for c in corners])
    itk_ras[:, :2] *= -1
    used = "sform" if np.max(np.linalg.norm(itk_ras - s_ras, axis=1)) <= np.max(
        np.linalg.norm(itk_ras - q_ras, axis=1)) else "qform"
    return [f"{p}: the NIfTI header's qform and sform disagree by up to {apart:.1f} mm; the {used} was used "
            "(ITK's choice): check the positions against the scanner's"]


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
        integer = holds_whole_int16(vol.array)
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
