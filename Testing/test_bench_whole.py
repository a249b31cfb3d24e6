"""``resmtnet bench --whole``: the real ``resmtnet detect`` in a child process, timed stage by stage from the
timings its report.json records, with the wall time and peak RSS the parent measures."""

from __future__ import annotations

import json

import pytest
from conftest_slicer import *  # noqa: F403  (the fixture untrained_checkpoint)
from resmtnet.cli.bench_cli import CHILD_STEPS, WHOLE_STAGES
from resmtnet.cli.cli import main
from resmtnet.io.ctio import write_volume
from synthetic_chest import tiny_chest


@pytest.mark.slow
def test_whole_command_stages_add_up_to_the_wall_time(tmp_path, untrained_checkpoint):
    scan = tmp_path / "chest.nrrd"
    write_volume(tiny_chest(0), scan)
    numbers = tmp_path / "whole.json"
    assert main(["bench", str(scan), "--whole", "--model", str(untrained_checkpoint), "--no-tta", "--warmup", "0",
                 "--repeat", "2", "--json", str(numbers)]) == 0
    result = json.loads(numbers.read_text())
    assert "--no-tta" in result["command"] and str(scan) in result["command"]
    assert len(result["runs"]) == 2
    for run in result["runs"]:
        stages = run["stages_s"]
        assert list(stages) == list(WHOLE_STAGES)  # every stage, in the order the command runs them
        assert all(v >= -0.01 for v in stages.values()), stages  # -0.01: the report's rounding
        # reading runs beside the model's loading: "read" is what it took beyond, nothing where it finished first
        assert stages["startup"] > 0 and stages["read"] >= 0 and stages["inference"] > 0
        assert sum(stages.values()) == pytest.approx(run["wall_s"], abs=0.02)
        assert 50 < run["peak_rss_mb"] < 8000  # the child's, not this process's: measured, not guessed
        child = run["child_steps_s"]  # the Slicer files' child: every step, where it rendered (else none)
        assert set(child) in (set(), set(CHILD_STEPS)) and all(v >= 0 for v in child.values()), child
    assert result["peak_rss_mb_max"] == max(r["peak_rss_mb"] for r in result["runs"])
    assert result["findings"] >= 1  # the untrained checkpoint says "maybe" everywhere


def test_a_failing_command_is_one_error_naming_it(tmp_path, untrained_checkpoint, capsys):
    assert main(["bench", str(tmp_path / "missing.nrrd"), "--whole", "--model", str(untrained_checkpoint),
                 "--warmup", "0", "--repeat", "1"]) == 2
    err = capsys.readouterr().err
    assert "resmtnet detect" in err and "missing.nrrd" in err and len(err.strip().splitlines()) == 1
