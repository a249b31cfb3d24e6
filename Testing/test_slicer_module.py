"""The Slicer module as Slicer runs it: Slicer's own base classes on slicer-core, each case in a fresh
interpreter (Testing/slicer_harness.py), the panel driven by its buttons.

Skips only where ``../shared/slicer`` (the extract of Slicer's Python base classes) is absent. The model is
the tiny untrained checkpoint (it reports findings with masks on any CT, which is all the plumbing needs),
except in the module's self-test, which runs the shipped weights.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest_slicer import *  # noqa: F403  (the fixture untrained_checkpoint)
from conftest_slicer import PHANTOM_DIRECTION

HARNESS = Path(__file__).with_name("slicer_harness.py")
REPO = Path(__file__).resolve().parents[1]
SHARED_SLICER = REPO.parent / "shared" / "slicer"

# each case runs the module in a fresh interpreter: the whole module belongs to the slow set
pytestmark = [pytest.mark.skipif(not (SHARED_SLICER / "Base" / "Python" / "slicer").is_dir(),
                                 reason=f"Slicer's Python base classes not found at {SHARED_SLICER}"),
              pytest.mark.slow]


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """Two small phantoms as NRRD files, loaded by the harness as a user loads a file."""
    from resmtnet.data.phantom import generate_phantom
    from resmtnet.io.ctio import write_volume

    folder = tmp_path_factory.mktemp("volumes")
    paths = []
    for seed in (1, 2):
        path = folder / f"phantom{seed}.nrrd"
        write_volume(generate_phantom(seed, small=True, direction=PHANTOM_DIRECTION).ct, path)
        paths.append(path)
    return paths


def run_harness(scenario: str, volumes=(), checkpoint=None, timeout=300, extra=()) -> dict:
    """One scenario in a fresh interpreter; what it measured."""
    cmd = [sys.executable, str(HARNESS), scenario, *extra]
    for path in volumes:
        cmd += ["--volume", str(path)]
    if checkpoint is not None:
        cmd += ["--checkpoint", str(checkpoint)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, f"{scenario} failed:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    lines = [line for line in run.stdout.splitlines() if line.startswith("HARNESS ")]
    assert len(lines) == 1, run.stdout
    return json.loads(lines[0].removeprefix("HARNESS "))


def test_apply_works_in_a_fresh_session(volumes, untrained_checkpoint):
    """Widget set up, volume picked, Apply, progress shown, nodes made: with nothing of the core imported
    beforehand, and neither torch nor the detector in Slicer's process."""
    result = run_harness("apply", volumes[:1], untrained_checkpoint)
    assert result["nodules"] > 0 and len(result["markups"]) == result["nodules"]
    assert result["largest_stall_s"] < 0.5, result  # loosely: the benchmark reports it


def test_follow_up_mode_pairs_the_volume_with_its_prior_in_a_table_and_lines(volumes, untrained_checkpoint):
    """The same CT as its own prior: every finding paired with itself, a line of (about) zero length each."""
    result = run_harness("followup", volumes[:1], untrained_checkpoint)
    assert result["nodules"] > 0 and result["statuses"] == ["matched"] * result["nodules"]
    assert result["lines"] == result["nodules"] and max(result["line_lengths_mm"]) < 1.0
    assert f"Follow-up: {result['nodules']} paired (0 uncertain), 0 new, 0 resolved." in result["status"], result
    assert "No study dates (DICOM): no doubling times." in result["status"], result


def test_follow_up_mode_takes_the_interval_from_the_two_series_study_dates(tmp_path, untrained_checkpoint):
    """Two volumes loaded from DICOM, a year apart by their StudyDate: the child gets 365 days for the doubling
    times; the plain follow-up above (no DICOM) says it has no study dates."""
    from resmtnet.io.ctio import read_ct, write_volume
    from synthetic_chest import tiny_chest
    from test_dicom_export import write_series

    chest = tiny_chest(34)
    chest.origin = tuple(round(v, 2) for v in chest.origin)
    now = write_series(chest, tmp_path / "now", study_date="20260110")
    before = write_series(chest, tmp_path / "before", study_date="20250110")
    write_volume(read_ct(now), tmp_path / "loaded.nrrd")
    result = run_harness("followup-dates", [tmp_path / "loaded.nrrd"], untrained_checkpoint,
                         extra=["--dicom-series", str(now), "--prior-series", str(before)])
    assert result["interval_days"] == 365.0
    assert "365 days between the study dates." in result["status"], result


def test_dicom_outputs_wait_for_a_folder_and_refuse_a_volume_not_from_dicom(volumes, untrained_checkpoint):
    result = run_harness("dicom-refused", volumes[:1], untrained_checkpoint)
    assert result["waiting"] == [False, "Choose the folder for the DICOM SEG and SR, or untick it"]
    assert result["status"] == "Failed: DICOM outputs need a volume loaded from DICOM (its series files were not found)"
    assert not result["written"] and result["outputs"] == 0, result


def test_dicom_outputs_of_a_volume_loaded_from_dicom(tmp_path, untrained_checkpoint):
    """The panel's "DICOM SEG + SR to folder" on a CT as Slicer's DICOM module loads it: the SEG's segments are
    the scene's findings, and it references the series the volume came from."""
    import pydicom
    from resmtnet.io.ctio import read_ct, write_volume
    from synthetic_chest import tiny_chest
    from test_dicom_export import write_series

    chest = tiny_chest(34)
    chest.origin = tuple(round(v, 2) for v in chest.origin)
    series = write_series(chest, tmp_path / "series")
    ct = read_ct(series)
    write_volume(ct, tmp_path / "loaded.nrrd")  # the voxels the DICOM module puts in the scene
    result = run_harness("dicom", [tmp_path / "loaded.nrrd"], untrained_checkpoint,
                         extra=["--dicom-series", str(series)])
    assert result["written"] == ["nodules-seg.dcm", "nodules-sr.dcm"], result
    assert "DICOM: nodules-seg.dcm, nodules-sr.dcm in" in result["status"]
    seg = pydicom.dcmread(tmp_path / "dicom-out" / "nodules-seg.dcm")
    assert len(seg.SegmentSequence) == result["nodules"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.seriesuid


def test_a_run_on_a_second_volume_leaves_the_first_volumes_outputs_alone(volumes, untrained_checkpoint):
    result = run_harness("second-volume", volumes, untrained_checkpoint)
    assert result["a"]["segmentation"] != result["b"]["segmentation"]
    assert result["b_again"]["segmentation"] == result["b"]["segmentation"]  # B's own outputs are reused


def test_cancel_ends_the_child_at_the_lungs_stage_and_during_inference(volumes, untrained_checkpoint):
    result = run_harness("cancel", volumes[:1], untrained_checkpoint)
    assert result["lungs"]["cancel_to_gone_s"] < 1.0 and result["inference"]["cancel_to_gone_s"] < 1.0


def test_a_killed_child_is_an_error_message_and_leaves_the_scene_as_it_was(volumes, untrained_checkpoint):
    result = run_harness("sigkill", volumes[:1], untrained_checkpoint)
    assert "SIGKILL" in result["status"]


def test_closing_the_scene_during_a_run_cancels_it_quietly(volumes, untrained_checkpoint):
    result = run_harness("close-scene", volumes[:1], untrained_checkpoint)
    assert result["after_close"]["nodules"] > 0


def test_unloading_the_module_during_a_run_stops_the_child(volumes, untrained_checkpoint):
    result = run_harness("cleanup", volumes[:1], untrained_checkpoint)
    assert result["cleanup_to_gone_s"] < 5.0


def test_the_module_self_test_passes():
    """ResMTNet.runTest() as Slicer's self-test runner calls it (shipped weights, child process)."""
    run_harness("selftest", timeout=600)
