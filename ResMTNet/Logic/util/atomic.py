"""Whole-or-nothing file writes.

Every file the core writes (checkpoints, cached training cases, volumes, plots, results) goes through
:func:`atomic_write`: the content is written beside the target under a unique hidden name, then renamed over
it. A reader sees the old file or the new one, never half of one; a failed write (full disk, an exception in
the writer, Ctrl-C) leaves the target as it was and no temporary file behind; two processes writing the same
target don't share a temporary file. Files that belong together (a detection's results) are published as
one set by :mod:`.fileset`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

TMP_PREFIX = ".tmp-"


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to write the content to a temporary path, then move it to ``path``.

    The temporary name ends with the target's own name, so writers that choose the format by the file's
    extension (SimpleITK's ``.nii.gz``, NumPy's ``.npz``) choose as they would for ``path``. The file gets
    the mode a plain ``open()`` would give it. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a random name the writer creates itself (mkstemp would make it 0600, and fixing that needs the
    # process-wide umask, which another thread could be using)
    tmp = path.with_name(f"{TMP_PREFIX}{secrets.token_hex(8)}-{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
