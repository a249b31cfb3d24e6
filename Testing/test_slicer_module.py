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

pytestmark = pytest.mark.skipif(not (SHARED_SLICER / "Base" / "Python" / "slicer").is_dir(),
                                reason=f"Slicer's Python base classes not found at {SHARED_SLICER}")


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


def run_harness(scenario: str, volumes=(), checkpoint=None, timeout=300) -> dict:
    """One scenario in a fresh interpreter; what it measured."""
    cmd = [sys.executable, str(HARNESS), scenario]
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
