"""Suite-wide fixtures: where the shared real CT lies, and reproducible torch. Every test on the real CT
(``lidc_dir``) is marked ``slow``, as are the training runs, the detections with the shipped model on full-size
phantoms, the Slicer module's runs in fresh interpreters, the browser tests and the other tests that take more than
about five seconds: ``pytest -m "not slow"`` is the fast set.

The test process keeps freed memory as the ``resmtnet`` commands do (:mod:`resmtnet.util.allocator`): the
training and detection tests run about a third faster.
"""

from __future__ import annotations

import locale
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


@pytest.fixture(scope="session")
def shipped_model():
    """The shipped weights, loaded once for the session. Tests only read it: ``detect_ct`` leaves it as it was."""
    from resmtnet.model.model_io import load_model

    return load_model()


@pytest.fixture(scope="session")
def lidc_detection(lidc_dir, shipped_model):
    """LIDC-IDRI-0001 as the command reads it (whole HU as int16) and its detection with the shipped weights and
    the default settings (test-time augmentation) on the CPU: ``(ct, detection)``, made once for the session (it
    takes the longest of any one detection in the suite) and shared read-only by the tests that only look at it."""
    from resmtnet.detect.pipeline import detect_ct
    from resmtnet.io.ctio import read_ct

    ct = read_ct(lidc_dir / "dicom", int16=True)
    return ct, detect_ct(ct, model=shipped_model, device="cpu")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test on the shared real CT is a slow one: it takes ``lidc_dir`` (directly or through another fixture),
    or it is skipped where the shared data is absent (a ``skipif`` whose reason names that folder)."""
    shared = str(LIDC_DIR.parent)
    for item in items:
        skip_reasons = [str(m.kwargs.get("reason", "")) for m in item.iter_markers("skipif")]
        if "lidc_dir" in getattr(item, "fixturenames", ()) or any(shared in r for r in skip_reasons):
            item.add_marker(pytest.mark.slow)


#: the process's character set as the environment set it, before any library loaded by a test could change it
ENVIRONMENT_CTYPE = locale.setlocale(locale.LC_CTYPE)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Each test, its fixtures included, starts in the environment's character set. A library loaded by an
    earlier test can set the process locale to plain "C" (seen in whole-suite runs); text read from child
    processes would then be decoded as ASCII, and a progress bar's "█" would fail a later, unrelated test."""
    if locale.setlocale(locale.LC_CTYPE) != ENVIRONMENT_CTYPE:
        locale.setlocale(locale.LC_CTYPE, ENVIRONMENT_CTYPE)


@pytest.fixture(autouse=True)
def _torch_seed_and_threads():
    """Each test starts from torch's seed 0 and leaves torch's thread count as it found it: a training run in this
    process sets the recipe's ``train.threads`` (1 in the tiny recipe), and every later test would otherwise
    compute on one core."""
    try:
        import torch
    except ImportError:
        yield
        return
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
