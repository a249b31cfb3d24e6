"""Building a set of cached case files once: what the training-case and phantom caches share.

Each case is one file, written whole by its builder (:func:`resmtnet.util.atomic.atomic_write`), so a file that
exists is a finished case. :func:`ensure_case_files` builds the missing ones (in worker processes where
asked), reports progress, and under ``torchrun`` has each rank build its share and wait for the others'.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..util.runtime import torchrun_ranks


@dataclass(frozen=True)
class CaseFile:
    """One case of a cache: its file, and how to make it. ``build(path)`` writes the case at ``path``; it runs
    in a worker process where several are built at once, so it must pickle (a module-level function, or a
    ``functools.partial`` of one)."""

    path: Path
    build: Callable[[Path], object]


def ensure_case_files(cases: Sequence[CaseFile], workers: int = 1, progress: Callable[[int, int], None] | None = None,
                      poll_s: float = 2.0) -> None:
    """Build every case whose file is missing, in ``workers`` processes (one case, or ``workers`` 1: in this
    one); ``progress(done, total)`` after each. Under torchrun each rank builds every ``WORLD_SIZE``-th missing
    case from its ``RANK`` on, then waits until the other ranks' files exist too."""
    world, rank, _local = torchrun_ranks()
    missing = [c for c in cases if not c.path.exists()]
    mine = missing[rank::world]
    total = len(cases)
    done = total - len(missing)
    if progress:
        progress(done, total)
    if workers <= 1 or len(mine) <= 1:
        for c in mine:
            c.build(c.path)
            done += 1
            if progress:
                progress(done, total)
    else:
        from ..util.processes import process_pool

        with process_pool(workers) as pool:
            futures = [pool.submit(_build_in_worker, c.build, c.path) for c in mine]
            for f in futures:
                f.result()
                done += 1
                if progress:
                    progress(done, total)
    while world > 1 and not all(c.path.exists() for c in cases):
        time.sleep(poll_s)  # other ranks are still building their share


def _build_in_worker(build: Callable[[Path], object], path: Path) -> None:
    """A case built in a worker process: torch on one thread there (the pool's processes share the cores)."""
    import torch

    torch.set_num_threads(1)
    build(path)
