"""Suite-wide fixtures: where the shared real CT lies, and reproducible torch. Every test on the real CT
(``lidc_dir``) is marked ``slow``, as are the training runs: ``pytest -m "not slow"`` is the fast set.

The test process keeps freed memory as the ``resmtnet`` commands do (:mod:`resmtnet.util.allocator`): the
training and detection tests run about a third faster.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from resmtnet.util.allocator import keep_freed_memory

keep_freed_memory()

REPO = Path(__file__).resolve().parents[1]
LIDC_DIR = REPO.parent / "shared" / "data" / "LIDC-IDRI-0001"


@pytest.fixture(scope="session")
def lidc_dir() -> Path:
    """The shared LIDC-IDRI-0001 case (skips the test where the shared data is absent)."""
    if not (LIDC_DIR / "dicom").is_dir():
        pytest.skip(f"shared real CT not found at {LIDC_DIR}")
    return LIDC_DIR


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test on the shared real CT is a slow one: it takes ``lidc_dir`` (directly or through another fixture),
    or it is skipped where the shared data is absent (a ``skipif`` whose reason names that folder)."""
    shared = str(LIDC_DIR.parent)
    for item in items:
        skip_reasons = [str(m.kwargs.get("reason", "")) for m in item.iter_markers("skipif")]
        if "lidc_dir" in getattr(item, "fixturenames", ()) or any(shared in r for r in skip_reasons):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _torch_seed():
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(0)
