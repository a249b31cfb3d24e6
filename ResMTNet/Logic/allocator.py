"""Keeping freed memory in the process, for the ``resmtnet`` commands (glibc only).

The network allocates and frees the same large buffers (activations, gradients, windows of tens of MB)
at every step. By default glibc hands blocks that large straight back to the kernel (``munmap``) and
asks for them again on the next step, and every page of a fresh block faults in, zero-filled: training
spent about a third of its time in the kernel, and detection a sixth (numbers in the README). Serving
large blocks from the heap and not trimming it keeps those pages mapped between steps. Results are the
same bit for bit: only where memory comes from changes.

The cost is that memory freed late in a run stays with the process until it exits, so this is for the
short-lived command-line processes only. The Slicer module does not call it: Slicer lives on after a
detection and should give the memory back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt(3) parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: blocks up to this size come from the heap, not from their own mapping (mallopt takes an int)
HEAP_BLOCKS_UP_TO = 2**31 - 1
#: free memory at the top of the heap is returned to the kernel only beyond this (never, in practice)
TRIM_ABOVE = 2**31 - 1


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to reuse freed large blocks instead of unmapping them. True when it took effect.

    A no-op (False) where the C library is not glibc (macOS, Windows, musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc: its mallopt, if any, means other things
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_BLOCKS_UP_TO)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_ABOVE))
