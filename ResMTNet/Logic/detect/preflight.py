"""Checks made before any work starts, so that a run that cannot finish fails in a second, not after detection.

Each check raises :class:`~resmtnet.util.errors.ResMTNetError` (one line naming the problem; the CLI turns it into
exit status 2) and leaves nothing behind on disk.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import tempfile
from pathlib import Path

from ..util.errors import InputError, ResMTNetError

#: Refuse an output place with less free space than this: the smallest set of outputs (csv, report, overview)
#: is far below it, a full set with the Slicer files of a large scan can come close.
MIN_FREE_BYTES = 64 * 1024 * 1024


def check_output_dir(path: str | Path, min_free_bytes: int = MIN_FREE_BYTES) -> Path:
    """Check that ``path`` can become (or already is) a folder this process can write into; return it.

    Refuses an output that is a file, a parent on the way that is a file, a place where nothing can be
    created (read-only file system, no permission: probed by creating and removing a hidden folder, which
    holds for root too) and a file system with less than ``min_free_bytes`` free. Creates nothing that stays.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ResMTNetError(f"{out}: the output folder is an existing file")
    place = out
    while not place.exists():
        if place.parent == place:
            break
        place = place.parent
    if place.exists() and not place.is_dir():
        raise ResMTNetError(f"{out}: cannot create the output folder: {place} is a file")
    try:
        probe = tempfile.mkdtemp(prefix=".resmtnet-probe-", dir=place)
    except OSError as e:
        reason = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                  errno.EPERM: "not permitted", errno.ENOSPC: "no space left"}.get(e.errno, e.strerror or str(e))
        raise ResMTNetError(f"{out}: cannot write the output there: {reason} ({place})") from None
    os.rmdir(probe)
    free = shutil.disk_usage(place).free
    if free < min_free_bytes:
        raise ResMTNetError(f"{out}: only {free / 2**20:.0f} MiB free on its file system; the outputs need up "
                            f"to {min_free_bytes / 2**20:.0f} MiB")
    return out


def check_number(option: str, value: float | None, *, low: float | None = None, high: float | None = None) -> None:
    """Refuse a NaN, infinite or out-of-range number given as ``option`` (None: not given, nothing to check)."""
    if value is None:
        return
    inside = (low is None or value >= low) and (high is None or value <= high)
    if not math.isfinite(value) or not inside:
        if low is not None and high is not None:
            want = f"must lie in [{low:g}, {high:g}]"
        elif low is not None:
            want = f"must be a finite number >= {low:g}"
        else:
            want = f"must be a finite number <= {high:g}"
        raise InputError(f"{option} {value:g}: {want}")


def check_detect_options(threshold: float | None, max_findings: int | None, min_diameter: float | None) -> None:
    """The numeric options of ``resmtnet detect``."""
    check_number("--threshold", threshold, low=0.0, high=1.0)
    check_number("--max-findings", max_findings, low=0)
    check_number("--min-diameter", min_diameter, low=0.0)


def check_dicom_out(inputs: list[str], dicom_out: str | Path, out: str | Path, *, batch: bool) -> None:
    """``detect --dicom-out DIR``: one DICOM series folder as the input, and DIR a writable folder of its own.

    A batch is refused (DICOM outputs are made per series: run detect once for each); a volume file is
    refused (a SEG and SR reference the source DICOM slices, which only a DICOM input has). Whether the series'
    frames are its slices (no resampling) is known once its headers are read, before the detection too.
    """
    if batch or len(inputs) != 1:
        raise InputError("--dicom-out works on one DICOM series: run detect once for each series of a batch")
    source = Path(inputs[0])
    if source.exists() and not source.is_dir():
        raise InputError(f"{source}: DICOM outputs (--dicom-out) need a DICOM series folder as the input, "
                         "not a volume file")
    if Path(dicom_out).resolve() == Path(out).resolve():
        raise ResMTNetError(f"{dicom_out}: --dicom-out needs a folder other than the output folder (-o)")
    check_output_dir(dicom_out)
