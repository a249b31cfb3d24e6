"""A DICOM series' slice geometry, checked from the headers before any voxel is read.

ITK's series reader stacks the files it is given as if they were evenly spaced along the slice normal,
starting at the first file's position. Wherever that is not true (a slice missing, two at one position, a
spacing that changes, a gantry tilt, a localizer among the slices) every position it reports past the fault
is silently wrong. So each file's header is read first (pydicom, the pixel data left on disk), each slice's
ImagePositionPatient is projected on the slice normal (the cross product of ImageOrientationPatient's row and
column cosines), and the series is either

- read as ITK stacks it (the slices are evenly spaced along the normal, within ``OFF_GRID_MM``),
- read and then resampled onto an even, orthogonal grid from the slices' true positions (uneven spacing,
  gantry tilt), with a note saying so,
- read without slices that do not belong to the volume (localizers, other sizes, a stray orientation,
  exact duplicate files, an unreadable file at either end), with a note saying so, or
- refused with an :class:`InputError` naming the problem and the slices (file names, instance numbers,
  positions along the normal): another modality than CT, mixed orientations, two different slices at one
  position, gaps (missing, unreadable, truncated or pixel-less slices inside the series), no geometry.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from scipy import ndimage

from ..util.errors import InputError

#: Two slices closer than this along the normal are at the same position.
SAME_POSITION_MM = 0.01
#: A step between consecutive slices more than this times the median step is a gap (slices missing).
GAP_FACTOR = 1.5
#: A slice further than this from where an even stack along the normal puts it: the series is resampled.
OFF_GRID_MM = 0.2
#: Direction cosines that agree within this are one orientation.
ORIENTATION_TOLERANCE = 1e-3
#: At most this many slices of another size or orientation are left out as localizers; more is a mixed series.
MAX_STRAY_SLICES = 3
#: Element values larger than this stay on disk while headers are read (the pixel data, mostly).
_DEFER_BYTES = 4096
_PIXEL_DATA = 0x7FE00010
_SHOWN = 3  # files named in one message before "..."


@dataclass(eq=False)
class SliceHeader:
    """What one file of a series says about its slice; ``problem`` says why its pixels cannot be read."""

    path: Path
    sop_uid: str = ""
    instance: int | None = None
    modality: str | None = None
    image_type: tuple[str, ...] = ()
    size: tuple[int, int] | None = None  # (Rows, Columns)
    position: np.ndarray | None = None  # ImagePositionPatient, LPS mm
    orientation: np.ndarray | None = None  # ImageOrientationPatient: row cosine, then column cosine
    pixel_spacing: tuple[float, float] | None = None  # (between rows, between columns) mm
    frames: int = 1
    problem: str | None = None

    @property
    def name(self) -> str:
        return self.path.name + (f" (instance {self.instance})" if self.instance is not None else "")


@dataclass
class SeriesPlan:
    """The slices to read, in order along the normal, and where they really are."""

    files: list[str]
    notes: list[str] = field(default_factory=list)
    #: The series' SeriesInstanceUID (as the caller gave it to :func:`plan_series`).
    series_uid: str = ""
    #: ImagePositionPatient of each file in ``files`` (n, 3), LPS mm; None when the geometry was not checked.
    positions: np.ndarray | None = None
    row: np.ndarray | None = None
    col: np.ndarray | None = None
    #: True: the slices are an even stack along the normal, as ITK assumes. False: resample (see notes).
    even: bool = True
    #: Where the slices step when that is not along their normal (a gantry tilt): the resampled grid's z axis.
    table_axis: np.ndarray | None = None
    #: About the resampled grid's step along its z axis, mm.
    grid_step: float | None = None

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.row, self.col)
        return n / np.linalg.norm(n)


def read_slice_header(path: str | Path) -> SliceHeader:
    """One file's header, with what is wrong with its pixel data (absent, truncated, short), if anything."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on odd values; what matters is checked below
            ds = pydicom.dcmread(path, defer_size=_DEFER_BYTES)
            h = _header_fields(path, ds)
            h.problem = _pixel_problem(path, ds, h)
    except Exception as e:  # any failure to parse a file means the same here: unreadable
        return SliceHeader(path=path, problem=f"not readable as DICOM ({type(e).__name__}: {e})")
    return h


def _header_fields(path: Path, ds: pydicom.Dataset) -> SliceHeader:
    def floats(keyword: str, n: int) -> np.ndarray | None:
        v = ds.get(keyword)
        if v is None or len(v) != n:
            return None
        a = np.array([float(x) for x in v], dtype=np.float64)
        return a if np.isfinite(a).all() else None

    instance = ds.get("InstanceNumber")
    spacing = floats("PixelSpacing", 2)
    rows, cols = ds.get("Rows"), ds.get("Columns")
    image_type = ds.get("ImageType") or ()
    return SliceHeader(
        path=path,
        sop_uid=str(ds.get("SOPInstanceUID", "")).strip(),
        instance=int(instance) if instance not in (None, "") else None,
        modality=(str(ds.get("Modality", "")).strip().upper() or None),
        image_type=tuple(str(t).strip().upper() for t in ([image_type] if isinstance(image_type, str)
                                                           else image_type)),
        size=(int(rows), int(cols)) if rows and cols else None,
        position=floats("ImagePositionPatient", 3),
        orientation=floats("ImageOrientationPatient", 6),
        pixel_spacing=tuple(spacing) if spacing is not None else None,
        frames=int(ds.get("NumberOfFrames") or 1),
    )


def _pixel_problem(path: Path, ds: pydicom.Dataset, h: SliceHeader) -> str | None:
    if _PIXEL_DATA not in ds:
        return "has no pixel data (none, or the file is cut short)"
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed:
        return None  # encapsulated: pydicom found its end delimiter (a cut file has no PixelData left)
    try:
        el = ds.get_item(_PIXEL_DATA, keep_deferred=True)  # its length and offset, its bytes left on disk
    except TypeError:  # pydicom 2 (as some Slicer versions bundle): reads the bytes, their length still tells
        el = ds.get_item(_PIXEL_DATA)
    if el.value is None:  # deferred: the length its header gives, and where in the file the bytes start
        have = el.length
        missing = el.value_tell + el.length - path.stat().st_size
        if missing > 0:
            return f"pixel data truncated (the file ends {missing} bytes short)"
    elif isinstance(el.value, (bytes, bytearray)):
        have = len(el.value)
    else:
        return None
    bits = int(ds.get("BitsAllocated") or 0)
    if h.size and bits >= 8:
        needed = h.size[0] * h.size[1] * int(ds.get("SamplesPerPixel") or 1) * (bits // 8) * h.frames
        if have < needed:
            return f"pixel data truncated ({have} bytes; {h.size[0]} x {h.size[1]} pixels need {needed})"
    return None


def _stray_slices(folder: Path, listed: set[Path], series_uid: str) -> list[SliceHeader]:
    """Files in ``folder`` that claim to belong to the series but that GDCM left out of it (it drops a
    truncated or pixel-less file without a word: the series then has a hole nobody sees)."""
    strays = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        p = Path(entry.path)
        if not entry.is_file() or p.resolve() in listed or entry.name.upper() == "DICOMDIR":
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                uid = str(pydicom.dcmread(p, stop_before_pixels=True).get("SeriesInstanceUID", "")).strip()
        except Exception:  # not DICOM at all (a README, an archive): not part of the series
            continue
        if uid == series_uid:
            h = read_slice_header(p)
            h.problem = h.problem or "left out of the series by GDCM (unreadable pixel data)"
            strays.append(h)
    return strays


def _names(headers: Sequence[SliceHeader], positions: dict[int, float] | None = None) -> str:
    def one(h: SliceHeader) -> str:
        at = positions.get(id(h)) if positions else None
        return h.name + (f" at {at:.2f} mm" if at is not None else "")

    shown = ", ".join(one(h) for h in headers[:_SHOWN])
    return shown + (f" and {len(headers) - _SHOWN} more" if len(headers) > _SHOWN else "")


def _same_orientation(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.max(np.abs(a - b)) <= ORIENTATION_TOLERANCE)


def _fmt_orientation(o: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in o + 0.0) + ")"


def plan_series(files: Sequence[str | Path], series_uid: str = "", label: str = "",
                folder: str | Path | None = None) -> SeriesPlan:
    """Check the slice geometry of one series from its files' headers.

    ``files``: the series' files (GDCM's list); ``folder``: where to look for files of the same series
    that GDCM left out (truncated, pixel-less); ``label``: what error messages start with (the input).
    Returns the files to read, ordered along the slice normal, and the notes for the user; raises
    :class:`InputError` where the positions cannot be made right.
    """
    prefix = f"{label}: " if label else ""

    def refuse(message: str) -> InputError:
        return InputError(f"{prefix}DICOM series {message}")

    headers = [read_slice_header(f) for f in files]
    if folder is not None and series_uid:
        headers += _stray_slices(Path(folder), {Path(f).resolve() for f in files}, series_uid)
    notes: list[str] = []
    broken = [h for h in headers if h.problem]
    slices = [h for h in headers if not h.problem]
    if not slices:
        raise refuse(f"has no readable slice: {'; '.join(f'{h.name}: {h.problem}' for h in broken[:_SHOWN])}")

    # modality: CT only
    other = [h for h in slices if h.modality not in (None, "CT")]
    if other:
        kinds = ", ".join(sorted({h.modality for h in other}))
        raise refuse(f"is Modality {kinds}, not CT ({len(other)} of {len(slices)} slices: {_names(other)}): "
                     "ResMTNet reads CT only")
    if any(h.modality is None for h in slices):
        notes.append(f"the DICOM series has no Modality in {sum(h.modality is None for h in slices)} of "
                     f"{len(slices)} slices: read as CT")

    # a single file, e.g. an enhanced multi-frame CT: ITK reads it whole; nothing to order
    if len(slices) == 1 and not broken:
        return SeriesPlan(files=[str(slices[0].path)], notes=notes, series_uid=series_uid)
    if any(h.frames > 1 for h in slices):
        raise refuse(f"mixes {len(slices)} files with multi-frame ones ({_names([h for h in slices if h.frames > 1])})"
                     ": give one multi-frame file, or a series of single slices")

    # localizers and slices that are not part of the volume
    localizers = [h for h in slices if "LOCALIZER" in h.image_type]
    if localizers:
        notes.append(f"left out {len(localizers)} localizer slice(s) of the DICOM series (ImageType LOCALIZER): "
                     f"{_names(localizers)}")
        slices = [h for h in slices if "LOCALIZER" not in h.image_type]
        if not slices:
            raise refuse(f"holds only localizer slices ({_names(localizers)}): there is no volume to read")
    no_geometry = [h for h in slices if h.position is None or h.orientation is None or h.size is None]
    if no_geometry:
        raise refuse(f"has slice(s) without ImagePositionPatient, ImageOrientationPatient or Rows/Columns: "
                     f"{_names(no_geometry)}; slice positions cannot be known")
    sizes = Counter(h.size for h in slices)
    main_size, n_main = sizes.most_common(1)[0]
    odd = [h for h in slices if h.size != main_size]
    if n_main * 2 <= len(slices) or len(odd) > MAX_STRAY_SLICES:
        raise refuse(f"mixes slice sizes ({', '.join(f'{n} of {r} x {c}' for (r, c), n in sizes.items())}; "
                     f"other than {main_size[0]} x {main_size[1]}: {_names(odd)}): it is not one volume")
    if odd:
        notes.append(f"left out {len(odd)} slice(s) of another size than the series' {main_size[0]} x "
                     f"{main_size[1]} (localizers?): {_names(odd)}")
        slices = [h for h in slices if h.size == main_size]
    groups: list[list[SliceHeader]] = []
    for h in slices:
        for g in groups:
            if _same_orientation(g[0].orientation, h.orientation):
                g.append(h)
                break
        else:
            groups.append([h])
    groups.sort(key=len, reverse=True)
    strays = [h for g in groups[1:] for h in g]
    if strays and (len(groups[0]) * 2 <= len(slices) or len(strays) > MAX_STRAY_SLICES):
        listing = "; ".join(f"{len(g)} slices {_fmt_orientation(g[0].orientation)} ({_names(g)})"
                            for g in groups[:3])
        raise refuse(f"mixes slice orientations (ImageOrientationPatient): {listing}: it is not one volume")
    if strays:
        notes.append(f"left out {len(strays)} slice(s) of another orientation than the series' "
                     f"{_fmt_orientation(groups[0][0].orientation)} (localizers?): {_names(strays)}")
        slices = groups[0]
    spacings = {h.pixel_spacing for h in slices if h.pixel_spacing is not None}
    if spacings and (np.ptp(np.array(sorted(spacings)), axis=0) > 1e-4 * np.max(list(spacings))).any():
        raise refuse(f"mixes pixel spacings ({', '.join(f'{r:g} x {c:g} mm' for r, c in sorted(spacings))}): "
                     "it is not one volume")

    # order along the normal
    row, col = (v / np.linalg.norm(v) for v in (slices[0].orientation[:3], slices[0].orientation[3:]))
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    slices.sort(key=lambda h: (float(h.position @ normal), h.path.name))
    along = {id(h): float(h.position @ normal) for h in slices + [b for b in broken if b.position is not None]}
    d = np.array([along[id(h)] for h in slices])

    # two slices at one position: exact copies of one file are dropped, anything else is refused
    keep: list[SliceHeader] = [slices[0]]
    copies: list[SliceHeader] = []
    clashes: list[list[SliceHeader]] = []
    for h, step in zip(slices[1:], np.diff(d)):
        if step < SAME_POSITION_MM:
            if h.sop_uid and h.sop_uid == keep[-1].sop_uid:
                copies.append(h)
                continue
            if clashes and clashes[-1][-1] is keep[-1]:
                clashes[-1].append(h)
            else:
                clashes.append([keep[-1], h])
        keep.append(h)
    if clashes:
        listing = "; ".join(f"{' and '.join(h.name for h in c)} at {along[id(c[0])]:.2f} mm" for c in clashes[:_SHOWN])
        more = f" and {len(clashes) - _SHOWN} more places" if len(clashes) > _SHOWN else ""
        raise refuse(f"has two or more different slices at the same position (along the slice normal): "
                     f"{listing}{more}: remove the wrong ones")
    if copies:
        notes.append(f"left out {len(copies)} duplicate file(s) of the DICOM series (same SOPInstanceUID and "
                     f"position as another file): {_names(copies)}")
    slices = keep
    d = np.array([along[id(h)] for h in slices])
    if len(slices) < 2:
        if broken:
            raise refuse(f"has one readable slice; the others are unreadable: "
                         f"{'; '.join(f'{h.name}: {h.problem}' for h in broken[:_SHOWN])}")
        return SeriesPlan(files=[str(slices[0].path)], notes=notes, series_uid=series_uid)

    # gaps: a missing or unreadable slice leaves a step far larger than the others
    steps = np.diff(d)
    usual = float(np.median(steps))
    gaps = np.flatnonzero(steps > GAP_FACTOR * usual)
    if len(gaps):
        listing = "; ".join(f"{steps[k]:.2f} mm between {slices[k].name} at {d[k]:.2f} mm and "
                            f"{slices[k + 1].name} at {d[k + 1]:.2f} mm" for k in gaps[:_SHOWN])
        more = f" and {len(gaps) - _SHOWN} more" if len(gaps) > _SHOWN else ""
        why = (f"; left out as unreadable: {'; '.join(f'{_names([h], along)}: {h.problem}' for h in broken[:_SHOWN])}"
               if broken else "")
        raise refuse(f"has a gap in its slice positions (along the slice normal; missing slices?) where slices are "
                     f"{usual:.2f} mm apart: "
                     f"{listing}{more}{why}; read as one stack, every position past it would be wrong")
    if broken:  # no gap: the file was at an end, or a second file at a position another slice holds
        notes.append(f"left out {len(broken)} unreadable file(s) of the DICOM series (the others leave no gap: "
                     f"positions unaffected): "
                     f"{'; '.join(f'{_names([h], along)}: {h.problem}' for h in broken[:_SHOWN])}")

    # where an even stack along the normal (ITK's reading) would put each slice, and where it is
    positions = np.array([h.position for h in slices])
    even = positions[0] + np.outer(np.arange(len(slices)), (d[-1] - d[0]) / (len(slices) - 1) * normal)
    off = positions - even
    off_normal = np.abs(off @ normal)
    off_plane = np.linalg.norm(off - np.outer(off @ normal, normal), axis=1)
    plan = SeriesPlan(files=[str(h.path) for h in slices], notes=notes, series_uid=series_uid, positions=positions,
                      row=row, col=col)
    if max(off_normal.max(), off_plane.max()) <= OFF_GRID_MM:
        return plan
    plan.even = False
    axis = positions[-1] - positions[0]
    if off_plane.max() > OFF_GRID_MM:
        plan.table_axis = axis / np.linalg.norm(axis)
    # the grid keeps the finest step between slices (a few slices very close together do not blow it up)
    table_steps = np.diff(np.sort(positions @ (normal if plan.table_axis is None else plan.table_axis)))
    plan.grid_step = float(max(table_steps.min(), np.median(table_steps) / 2))
    if plan.table_axis is not None:
        tilt = float(np.degrees(np.arccos(np.clip(abs(axis @ normal) / np.linalg.norm(axis), -1, 1))))
        notes.append(f"the DICOM series' slices do not step along their normal (gantry tilt {tilt:.1f}°: slices "
                     f"up to {off_plane.max():.1f} mm off an orthogonal stack): resampled onto an orthogonal "
                     f"grid along the table axis, about {plan.grid_step:.2f} mm apart (linear interpolation)")
    if off_normal.max() > OFF_GRID_MM:
        changes = [k for k in range(1, len(steps)) if abs(steps[k] - steps[k - 1]) > OFF_GRID_MM / 2]
        where = "; ".join(f"{steps[k - 1]:.2f} to {steps[k]:.2f} mm after {slices[k].name} at {d[k]:.2f} mm"
                          for k in changes[:_SHOWN])
        notes.append(f"the DICOM series' slice spacing is uneven ({steps.min():.2f}–{steps.max():.2f} mm"
                     f"{'; it changes from ' + where if where else ''}): resampled onto an even grid of about "
                     f"{plan.grid_step:.2f} mm (linear interpolation)")
    return plan


def place_slices(img: sitk.Image, plan: SeriesPlan) -> sitk.Image:
    """The image ITK read from ``plan.files``, with each voxel where its slice really is.

    An even stack keeps ITK's voxels (its geometry checked against the headers'); an uneven or tilted one
    is resampled (linear) onto an orthogonal grid with the slices' in-plane spacing, along the normal (or the
    table axis, for a tilt) at about the finest step between slices, covering every slice; voxels no slice
    covers take the series' lowest value (the scanner's padding, or air)."""
    if plan.positions is None or img.GetDimension() != 3 or img.GetSize()[2] != len(plan.files):
        return img
    n = len(plan.files)
    normal = plan.normal
    d = plan.positions @ normal
    if plan.even:
        step = (d[-1] - d[0]) / (n - 1)
        spacing = (*img.GetSpacing()[:2], step)
        direction = tuple(np.column_stack([plan.row, plan.col, normal]).ravel())
        origin = tuple(plan.positions[0])
        if (not np.allclose(img.GetSpacing(), spacing, atol=1e-4) or not np.allclose(img.GetOrigin(), origin, atol=1e-4)
                or not np.allclose(img.GetDirection(), direction, atol=1e-6)):
            img.SetSpacing(spacing)
            img.SetOrigin(origin)
            img.SetDirection(direction)
        return img
    return _resample(sitk.GetArrayViewFromImage(img).astype(np.float32), img.GetSpacing()[:2], plan)


def _resample(stack: np.ndarray, pixel_xy: Sequence[float], plan: SeriesPlan) -> sitk.Image:
    p = plan.positions
    row, col, normal = plan.row, plan.col, plan.normal
    d = p @ normal
    n = len(d)
    e3 = normal if plan.table_axis is None else plan.table_axis
    e1 = row - (row @ e3) * e3
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(e3, e1)
    frame = np.column_stack([e1, e2, e3])
    # every slice's corners in the new frame: the grid covers them all
    ny, nx = stack.shape[1:]
    corners = np.array([p[k] + a * (nx - 1) * pixel_xy[0] * row + b * (ny - 1) * pixel_xy[1] * col
                        for k in range(n) for a in (0, 1) for b in (0, 1)]) @ frame
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    extent3 = hi[2] - lo[2]  # a whole number of steps of about grid_step: the first and last slice on the grid
    spacing = np.array([pixel_xy[0], pixel_xy[1], extent3 / max(1, round(extent3 / plan.grid_step))])
    size = np.floor((hi - lo) / spacing + 1e-6).astype(int) + 1
    origin = frame @ lo
    fill = float(stack.min())
    out = np.empty((size[2], size[1], size[0]), dtype=np.float32)
    jj, ii = np.meshgrid(np.arange(size[1]), np.arange(size[0]), indexing="ij")
    plane = origin + (ii[..., None] * spacing[0]) * e1 + (jj[..., None] * spacing[1]) * e2
    # a point's coordinates along the normal, the column and the row cosines, for the first output slice;
    # each later one adds a constant, and each input slice's origin projects the same way
    plane_n, plane_c, plane_r = plane @ normal, plane @ col, plane @ row
    del plane
    slice_c, slice_r = p @ col, p @ row
    eps = 1e-4
    for z in range(size[2]):
        shift = (z * spacing[2]) * e3
        dn = plane_n + shift @ normal
        kf = np.interp(dn, d, np.arange(n))
        kf[(dn < d[0] - eps) | (dn > d[-1] + eps)] = -10.0  # outside every slice
        k0 = np.clip(np.floor(kf).astype(int), 0, n - 2)
        w = kf - k0
        # the slice plane at this depth (interpolated between its neighbours) and the point within it
        j = (plane_c + shift @ col - (slice_c[k0] * (1 - w) + slice_c[k0 + 1] * w)) / pixel_xy[1]
        i = (plane_r + shift @ row - (slice_r[k0] * (1 - w) + slice_r[k0 + 1] * w)) / pixel_xy[0]
        coords = np.stack([kf, j, i])
        for axis_k, top in enumerate((n - 1, ny - 1, nx - 1)):  # on an edge up to rounding: on the edge
            c = coords[axis_k]
            c[(c < 0) & (c > -eps)] = 0.0
            c[(c > top) & (c < top + eps)] = top
        out[z] = ndimage.map_coordinates(stack, coords, order=1, mode="constant", cval=fill)
    img = sitk.GetImageFromArray(out)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    img.SetDirection(tuple(float(v) for v in frame.ravel()))
    return img
