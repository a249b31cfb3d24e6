"""Keeping freed memory (resmtnet.util.allocator): large buffers freed and made again cost no page faults.

Each case runs in a fresh interpreter, since the setting lasts for the process (and this test process
already has it, from conftest).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

# A training step in miniature: torch buffers larger than glibc's 32 MB mapping limit, made, filled and
# freed, ten times. Prints the fewest page faults a step took (after the first), as a fraction of the
# buffers' pages.
_PROBE = """
import resource, sys
import torch
from resmtnet.util.allocator import freed_memory_kept, keep_freed_memory
took = keep_freed_memory() if sys.argv[1].startswith("keep") else None
if sys.argv[1] == "keep-then-block":  # as a detection in a command's process does
    with freed_memory_kept():
        pass
sizes = [2**20 * s for s in (64, 48, 96)]
pages = sum(sizes) / resource.getpagesize()
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffers = [torch.ones(n // 4) for n in sizes]
    del buffers
    faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / pages)
print(took, min(faults[1:]))
"""


def _probe(mode: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=120,
                         check=True).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")
@pytest.mark.slow
def test_freed_large_blocks_are_reused_without_page_faults():
    took, faults = _probe("keep")
    assert took == "True"
    assert faults < 0.05, f"{faults:.0%} of the pages faulted in again at best"
    # without it, glibc unmaps each freed buffer and every page of the next one faults in, zero-filled
    _, default_faults = _probe("default")
    assert default_faults > 0.9


# The Slicer module's way: freed memory kept only inside a ``with`` block, given back after it. Prints
# whether it took effect, the page faults of the cycle above inside the block, and how many MB the process
# gave back on leaving it (384 MB were freed inside it).
_SCOPED_PROBE = """
import os, resource, sys
import torch
from resmtnet.util.allocator import freed_memory_kept
sizes = [2**20 * s for s in (64, 48, 96)]
pages = sum(sizes) / resource.getpagesize()

def cycle():
    faults = []
    for _ in range(10):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buffers = [torch.ones(n // 4) for n in sizes]
        del buffers
        faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / pages)
    return min(faults[1:])

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20

with freed_memory_kept() as took:
    inside = cycle()
    peak = [torch.ones(2**20 * 48 // 4) for _ in range(8)]
    del peak
    held_inside = rss_mb()
held_after = rss_mb()
print(took, inside, held_inside - held_after)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")
def test_freed_memory_is_kept_inside_the_block_and_given_back_after_it():
    out = subprocess.run([sys.executable, "-c", _SCOPED_PROBE], capture_output=True, text=True, timeout=120,
                         check=True).stdout.split()
    took, inside, released_mb = out[0], float(out[1]), float(out[2])
    assert took == "True"
    assert inside < 0.05, f"{inside:.0%} of the pages faulted in again inside the block"
    assert released_mb > 300, f"only {released_mb:.0f} of 384 MB freed inside the block went back after it"


@pytest.mark.slow
def test_a_process_that_keeps_freed_memory_for_good_is_left_so_by_a_block():
    """The commands and this test process keep freed memory throughout; a detection's block must not undo it."""
    took, faults = _probe("keep-then-block")
    assert took == "True" and faults < 0.05
