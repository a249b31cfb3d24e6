"""Keeping freed memory (resmtnet.allocator): large buffers freed and made again cost no page faults.

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
from resmtnet.allocator import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None
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
def test_freed_large_blocks_are_reused_without_page_faults():
    took, faults = _probe("keep")
    assert took == "True"
    assert faults < 0.05, f"{faults:.0%} of the pages faulted in again at best"
    # without it, glibc unmaps each freed buffer and every page of the next one faults in, zero-filled
    _, default_faults = _probe("default")
    assert default_faults > 0.9
