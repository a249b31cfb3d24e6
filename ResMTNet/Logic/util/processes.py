"""Worker processes for the CPU-heavy preparation steps (phantoms, case caches).

The pools start their workers fresh ("spawn"), not as forks of the calling process. A process that has
run torch holds its OpenMP / intra-op thread pools; a forked child inherits their locks in whatever state
they were, and its first parallel operation can wait forever. That is what happened when
``resmtnet evaluate --phantoms`` loaded its model before generating the phantoms. A fresh start costs a
second or two per worker, once per pool. Workers are short-lived, so they keep freed memory
(:mod:`.allocator`): phantom generation runs about a quarter faster.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from .allocator import keep_freed_memory


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` freshly started processes, safe to open after torch has run."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=keep_freed_memory)
