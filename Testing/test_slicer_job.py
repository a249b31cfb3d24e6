"""The detection's child process as the Slicer module drives it (resmtnet.job.slicer_job), without Slicer:
real child processes, real files."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest_slicer import *  # noqa: F403  (the fixtures phantom, untrained_checkpoint)
from resmtnet.job.slicer_job import WORKER_SCRIPT, DetectionProcess, describe_exit


def wait(job, timeout_s=120.0):
    """Every message until the job's last; the last one is (kind, payload)."""
    messages = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        messages += job.drain()
        if messages and messages[-1][0] in ("done", "error", "cancelled"):
            return messages
        time.sleep(0.01)
    raise AssertionError(f"the job did not end within {timeout_s} s: {messages}")


def test_progress_then_the_detection_with_its_masks(phantom, untrained_checkpoint):
    job = DetectionProcess(phantom.ct, sys.executable, model=str(untrained_checkpoint), device="cpu", tta=False)
    job.start()
    messages = wait(job)
    kind, detection = messages[-1]
    assert kind == "done", messages[-1]
    fractions = [payload[0] for kind, payload in messages if kind == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    texts = {payload[1] for kind, payload in messages if kind == "progress"}
    assert {"finding the lungs", "running Res-MTNet on CPU"} <= texts
    assert detection.labels.shape == phantom.ct.array.shape and detection.labels.dtype == np.uint16
    assert detection.nodules and sorted(np.unique(detection.labels))[1:] == [n.number for n in detection.nodules]
    assert np.allclose(detection.spacing, phantom.ct.spacing) and np.allclose(detection.direction, phantom.ct.direction)
    assert not os.path.exists(job.tempDir)


def test_an_input_the_core_refuses_is_its_one_line_message(phantom):
    constant = dataclasses.replace(phantom.ct, array=np.full_like(phantom.ct.array, -1000.0))
    job = DetectionProcess(constant, sys.executable, device="cpu", tta=False)
    job.start()
    kind, (message, details) = wait(job)[-1]
    assert kind == "error" and "constant" in message and "Traceback" not in message
    assert not os.path.exists(job.tempDir)


def test_a_killed_child_is_an_error_that_says_so(phantom, untrained_checkpoint):
    job = DetectionProcess(phantom.ct, sys.executable, model=str(untrained_checkpoint), device="cpu", tta=True)
    job.start()
    messages = []
    deadline = time.monotonic() + 120
    while not any(kind == "progress" and "Res-MTNet" in payload[1] for kind, payload in messages):
        messages += job.drain()
        assert not any(kind in ("done", "error") for kind, _ in messages), messages
        assert time.monotonic() < deadline, messages
        time.sleep(0.01)
    os.kill(job.pid, signal.SIGKILL)
    kind, (message, _details) = wait(job)[-1]
    assert kind == "error" and message == describe_exit(-signal.SIGKILL)
    assert "SIGKILL" in message and "out of memory" in message
    assert not os.path.exists(job.tempDir)


def test_cancel_before_the_child_starts_starts_none(phantom):
    job = DetectionProcess(phantom.ct, sys.executable, device="cpu")
    job.cancel()
    job.start()
    assert wait(job)[-1] == ("cancelled", None)
    assert job.pid is None and not os.path.exists(job.tempDir)


def test_exit_descriptions():
    assert describe_exit(3) == "the detection process ended with exit status 3"
    assert describe_exit(-signal.SIGSEGV) == "the detection process was killed by SIGSEGV"


def test_the_worker_script_loads_the_core_from_the_folder_above_its_own(tmp_path, phantom):
    """As inside Slicer, where the core is not installed: run as a script, the worker uses the core's folder
    (the one above its own) as the package ``resmtnet`` and does not put its own folder's modules on the path
    as top-level modules."""
    from resmtnet.io.ctio import write_volume

    copy = tmp_path / "ResMTNet" / "Logic"
    shutil.copytree(WORKER_SCRIPT.parents[1], copy, ignore=shutil.ignore_patterns("__pycache__"))
    own = copy / WORKER_SCRIPT.parent.name
    ct = tmp_path / "constant.nrrd"
    write_volume(dataclasses.replace(phantom.ct, array=np.full_like(phantom.ct.array, 40.0)), ct)
    script = textwrap.dedent(f"""
        import runpy, sys
        sys.argv = ["slicer_worker.py", {str(ct)!r}, {str(tmp_path / "out")!r}]
        sys.path.insert(0, {str(own)!r})  # as Python does for a script: its folder first on the path
        try:
            runpy.run_path({str(own / "slicer_worker.py")!r}, run_name="__main__")
        except SystemExit as e:
            print("exit", e.code)
        print("core", sys.modules["resmtnet"].__file__)
        print("own folder on the path", {str(own)!r} in sys.path)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = run.stdout.splitlines()
    assert "@resmtnet error" in run.stdout and "constant" in run.stdout, run.stdout + run.stderr
    assert "exit 2" in lines and f"core {copy / '__init__.py'}" in lines, lines
    assert "own folder on the path False" in lines, lines


@pytest.mark.slow
def test_follow_up_mode_detects_both_scans_and_pairs_each_finding(phantom, untrained_checkpoint):
    """The panel's follow-up mode: the prior scan is the same scan, so every finding pairs with itself."""
    job = DetectionProcess(phantom.ct, sys.executable, model=str(untrained_checkpoint), device="cpu", tta=False,
                           prior_ct=phantom.ct, interval_days=90.0)
    job.start()
    messages = wait(job, timeout_s=240.0)
    kind, detection = messages[-1]
    assert kind == "done", messages[-1]
    texts = [payload[1] for kind, payload in messages if kind == "progress"]
    assert any(t.startswith("prior scan: ") for t in texts) and any(t.startswith("current scan: ") for t in texts)
    fractions = [payload[0] for kind, payload in messages if kind == "progress"]
    assert fractions == sorted(fractions)
    followup = detection.info["followup"]
    assert followup["interval_days"] == 90.0 and len(followup["prior_nodules"]) == len(detection.nodules) > 0
    pairs = followup["pairs"]
    assert [p["status"] for p in pairs] == ["matched"] * len(detection.nodules)
    assert [p["current_number"] for p in pairs] == [n.number for n in detection.nodules]
    for p in pairs:
        assert p["prior_number"] == p["current_number"] and p["distance_mm"] < 1.0
        assert abs(p["diameter_change_mm"]) < 1e-6 and p["volume_doubling_time_days"] is None
    assert not os.path.exists(job.tempDir)


@pytest.mark.slow
def test_dicom_outputs_on_the_series_the_volume_came_from(tmp_path, untrained_checkpoint):
    """The panel's "DICOM SEG + SR to folder": the CT as the scene holds it (voxels and series UID), the folder
    of its DICOM series; the SEG and SR reference that series' slices and carry one segment per finding."""
    import pydicom
    from resmtnet.io.ctio import read_ct
    from synthetic_chest import tiny_chest
    from test_dicom_export import write_series

    chest = tiny_chest(34)
    chest.origin = tuple(round(v, 2) for v in chest.origin)
    folder = write_series(chest, tmp_path / "series")
    ct = read_ct(folder)
    job = DetectionProcess(ct, sys.executable, model=str(untrained_checkpoint), device="cpu", tta=False,
                           dicom_out=str(tmp_path / "dicom"), dicom_source=str(folder))
    job.start()
    kind, detection = wait(job)[-1]
    assert kind == "done", detection
    assert detection.info["dicom_out"]["files"] == ["nodules-seg.dcm", "nodules-sr.dcm"]
    seg = pydicom.dcmread(tmp_path / "dicom" / "nodules-seg.dcm")
    sources = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in folder.iterdir()}
    assert len(seg.SegmentSequence) == len([n for n in detection.nodules if (detection.labels == n.number).any()])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.seriesuid
    assert {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} <= sources
    sr = pydicom.dcmread(tmp_path / "dicom" / "nodules-sr.dcm")
    assert sr.StudyInstanceUID == seg.StudyInstanceUID == pydicom.dcmread(next(folder.iterdir())).StudyInstanceUID


def test_dicom_outputs_for_a_volume_not_from_dicom_are_refused_before_the_work(phantom, tmp_path):
    job = DetectionProcess(phantom.ct, sys.executable, device="cpu", dicom_out=str(tmp_path / "dicom"))
    job.start()
    kind, (message, _details) = wait(job)[-1]
    assert kind == "error" and message == ("DICOM outputs need a volume loaded from DICOM "
                                           "(its series files were not found)")
    assert not (tmp_path / "dicom").exists()
