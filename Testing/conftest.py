"""Suite-wide fixtures: where the shared real CT lies, and reproducible torch.

The test process keeps freed memory as the ``resmtnet`` commands do (:mod:`resmtnet.allocator`): the
training and detection tests run about a third faster.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from resmtnet.allocator import keep_freed_memory

keep_freed_memory()

REPO = Path(__file__).resolve().parents[1]
LIDC_DIR = REPO.parent / "shared" / "data" / "LIDC-IDRI-0001"


@pytest.fixture(scope="session")
def lidc_dir() -> Path:
    """The shared LIDC-IDRI-0001 case (skips the test where the shared data is absent)."""
    if not (LIDC_DIR / "dicom").is_dir():
        pytest.skip(f"shared real CT not found at {LIDC_DIR}")
    return LIDC_DIR


@pytest.fixture(autouse=True)
def _torch_seed():
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(0)
