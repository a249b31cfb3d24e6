"""The memory bound of detection: a CT is read compactly, and one too large for the bound is refused from its
header, before its voxels are read.

Detection holds the input grid only twice over: the CT's voxels (int16 where they are whole HU, as scanners
store them; float32 otherwise) and the nodules' label map (one byte a voxel, of which only the pages around
the nodules are ever touched). Everything else works box by box or on the lung crop at the model's 1.5 mm
(``lungmask.LungMask``, ``prepare.to_model_grid``, the overview, the Slicer files), so the rest of the peak
(Python, torch, the model, slicer-core, the boxes in flight) is 1-1.5 GB. Measured peaks
(docs/benchmarks.md, *Memory bound*): 1.07 GB for 512 x 512 x 133 int16, 3.2 GB for 1024 x 1024 x 800 int16,
3.5 GB for 1024 x 1024 x 476 float32.

A CT whose voxels would need more than :data:`MAX_VOXEL_BYTES` (counted as in :data:`PEAK_BYTES_PER_VOXEL`)
is refused, which keeps detection within 4 GB: up to 1.0 x 10^9 voxels stored as integers (1024 x 1024 x
950), 0.5 x 10^9 stored as float32.
"""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from ..util.errors import InputError
from .ctio import CTVolume, DicomSeries, find_dicom_series, read_ct

#: Budget for the voxel-sized arrays of a detection (bytes); with the fixed part, within 4 GB.
MAX_VOXEL_BYTES = 3.0e9

#: Bytes counted per input voxel, by how the file stores its voxels (the label byte counted whole, to be safe):
#: int16 voxels (integers shared with the reader's image) and a label; float32 voxels while their int16 copy
#: is made (or float32 kept, and a label); float64 read, then turned into float32 and int16.
PEAK_BYTES_PER_VOXEL = {"integer": 3, "float32": 6, "float64": 12}


def max_voxels(storage: str) -> int:
    """The largest number of voxels detection takes for a CT stored as ``storage`` (see
    :data:`PEAK_BYTES_PER_VOXEL`)."""
    return int(MAX_VOXEL_BYTES // PEAK_BYTES_PER_VOXEL[storage])


def stored_size(path: str | Path, dicom_series: list[DicomSeries] | None = None
                ) -> tuple[tuple[int, ...], str] | None:
    """Size (x, y, z) and storage (a key of :data:`PEAK_BYTES_PER_VOXEL`) of a CT file or DICOM series
    folder, from its header(s) only; None where the headers do not tell (reading the CT then says why).
    ``dicom_series``: what :func:`~resmtnet.io.ctio.find_dicom_series` found in the folder, where it was looked at
    already."""
    from .ctio import _quiet_itk

    p = Path(path)
    try:
        if p.is_dir():
            series = find_dicom_series(p) if dicom_series is None else dicom_series
            if not series:
                return None
            header, count = series[0].files[0], len(series[0].files)
        else:
            header, count = str(p), None
        reader = sitk.ImageFileReader()
        reader.SetFileName(header)
        with _quiet_itk():
            reader.ReadImageInformation()
    except (RuntimeError, OSError, IndexError):
        return None
    size = tuple(int(s) for s in reader.GetSize())
    if count is not None:  # one slice per file
        size = size[:2] + (count,)
    pixel = reader.GetPixelID()
    storage = ("float64" if pixel in (sitk.sitkFloat64, sitk.sitkVectorFloat64) else
               "float32" if pixel in (sitk.sitkFloat32, sitk.sitkVectorFloat32) else "integer")
    return size, storage


def check_fits(path: str | Path, dicom_series: list[DicomSeries] | None = None) -> None:
    """Refuse (:class:`InputError`) a CT too large for detection's memory bound, from its header alone
    (``dicom_series``: as for :func:`stored_size`)."""
    found = stored_size(path, dicom_series)
    if found is None:
        return
    size, storage = found
    voxels = 1
    for n in size:
        voxels *= n
    limit = max_voxels(storage)
    if voxels > limit:
        shown = " x ".join(str(n) for n in size)
        stored = "integers" if storage == "integer" else storage
        raise InputError(
            f"{path}: is too large to detect within 4 GB of memory: {shown} voxels ({voxels / 1e9:.2f} x 10^9, "
            f"stored as {stored}), where detection takes at most {limit / 1e9:.2f} x 10^9; crop it to the chest "
            "or resample it to coarser voxels first")


def read_ct_for_detection(path: str | Path) -> CTVolume:
    """A CT read as detection needs it: refused from its header when too large (:func:`check_fits`), its
    voxels int16 where they are whole HU (``read_ct(..., int16=True)``). A DICOM folder is looked through once,
    for both."""
    p = Path(path)
    series = find_dicom_series(p) if p.is_dir() else None
    check_fits(p, series)
    return read_ct(p, int16=True, dicom_series=series)
