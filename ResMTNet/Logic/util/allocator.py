"""Keeping freed memory in the process, for the ``resmtnet`` commands (glibc only).

The network allocates and frees the same large buffers (activations, gradients, windows of tens of MB)
at every step. By default glibc hands blocks that large straight back to the kernel (``munmap``) and
asks for them again on the next step, and every page of a fresh block faults in, zero-filled: training
spent about a third of its time in the kernel, and detection a sixth (numbers in docs/benchmarks.md).
Serving large blocks from the heap and not trimming it keeps those pages mapped between steps. Results are the
same bit for bit: only where memory comes from changes.

The cost is that memory freed late in a run stays with the process until it exits. That suits the
short-lived command-line processes (:func:`keep_freed_memory`). Slicer lives on after a detection and
should give the memory back, so its module keeps freed memory only while a detection runs
(:func:`freed_memory_kept`), then restores glibc's limits and hands what was freed back to the kernel.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import sys
import threading
from collections.abc import Iterator

# mallopt(3) parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: blocks up to this size come from the heap, not from their own mapping (mallopt takes an int)
HEAP_BLOCKS_UP_TO = 2**31 - 1
#: free memory at the top of the heap is returned to the kernel only beyond this (never, in practice)
TRIM_ABOVE = 2**31 - 1
#: what :func:`freed_memory_kept` restores: the limits glibc's own adjustment settles at on 64-bit systems
#: once a process has freed a large block (its mapping limit rises to 32 MB, the trim limit to twice that).
#: A limit set through mallopt stays fixed, so the settled values are the closest to the default there are.
DEFAULT_HEAP_BLOCKS_UP_TO = 32 * 2**20
DEFAULT_TRIM_ABOVE = 64 * 2**20


@functools.cache  # looked up once, not at every detection
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc: its mallopt, if any, means other things
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    libc.malloc_trim.restype = ctypes.c_int
    return libc


def _set_limits(libc: ctypes.CDLL, heap_blocks_up_to: int, trim_above: int) -> bool:
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, heap_blocks_up_to)) and bool(libc.mallopt(_M_TRIM_THRESHOLD,
                                                                                       trim_above))


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to reuse freed large blocks instead of unmapping them. True when it took effect.

    A no-op (False) where the C library is not glibc (macOS, Windows, musl).
    """
    global _kept_for_good
    libc = _glibc()
    took = libc is not None and _set_limits(libc, HEAP_BLOCKS_UP_TO, TRIM_ABOVE)
    _kept_for_good = _kept_for_good or took
    return took


_kept_lock = threading.Lock()
_kept_depth = 0
_kept_for_good = False  # keep_freed_memory() was called: blocks leave the setting as it is


@contextlib.contextmanager
def freed_memory_kept() -> Iterator[bool]:
    """Keep freed memory in the process for the duration of a ``with`` block (yields whether it took effect).

    On leaving the outermost block glibc's limits go back to :data:`DEFAULT_HEAP_BLOCKS_UP_TO` and
    :data:`DEFAULT_TRIM_ABOVE` and the memory freed meanwhile is returned to the kernel (``malloc_trim``).
    Blocks may nest and run on several threads: the limits change on the first entry and the last exit.
    In a process that called :func:`keep_freed_memory` (the commands, the test suite) they change nothing.
    """
    global _kept_depth
    libc = _glibc()
    if libc is None:
        yield False
        return
    with _kept_lock:
        took = _set_limits(libc, HEAP_BLOCKS_UP_TO, TRIM_ABOVE) if _kept_depth == 0 and not _kept_for_good \
            else True
        _kept_depth += 1
    try:
        yield took
    finally:
        with _kept_lock:
            _kept_depth -= 1
            if _kept_depth == 0 and not _kept_for_good:
                _set_limits(libc, DEFAULT_HEAP_BLOCKS_UP_TO, DEFAULT_TRIM_ABOVE)
                libc.malloc_trim(0)
