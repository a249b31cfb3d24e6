"""Worker processes for the CPU-heavy preparation steps (phantoms, case caches).

The pools start their workers fresh ("spawn"), not as forks of the calling process. A process that has
run torch holds its OpenMP / intra-op thread pools; a forked child inherits their locks in whatever state
they were, and its first parallel operation can wait forever. That is what happened when
``resmtnet evaluate --phantoms`` loaded its model before generating the phantoms. A fresh start costs a
second or two per worker, once per pool. Workers are short-lived, so they keep freed memory
(:mod:`.allocator`): phantom generation runs about a quarter faster.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor

from .allocator import keep_freed_memory


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` freshly started processes, safe to open after torch has run."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=keep_freed_memory)


def exit_now(code: int) -> None:
    """End this process at once with ``code``, without the interpreter's teardown (every module and object freed
    one by one: torch's, VTK's, 0.6-0.9 s idle): what ``atexit`` was asked to do still runs, and stdout and
    stderr are flushed. For processes whose work is done (the ``resmtnet`` program, its Slicer files' child)."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader that went away, a stream already closed
            stream.flush()
    os._exit(code)
