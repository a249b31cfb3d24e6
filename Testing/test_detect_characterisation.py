"""`resmtnet detect` with the patient's Brock inputs: nodules.csv and report.json carry the characterisation,
the Lung-RADS category and the Brock probability, and say which inputs were defaulted. The tiny untrained model
(plumbing only: its findings are not nodules) on the tiny synthetic chest, so each run takes seconds."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from conftest_slicer import *  # noqa: F403  (the fixture untrained_checkpoint)
from resmtnet.detect.brock import PatientInputs, brock_probability
from resmtnet.detect.lung_rads import lung_rads
from resmtnet.detect.nodules import NODULES_CSV_COLUMNS
from resmtnet.io.ctio import write_volume
from synthetic_chest import tiny_chest


@pytest.fixture(scope="module")
def chest_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("chest") / "chest.nrrd"
    write_volume(tiny_chest(3), path)
    return path


def _detect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resmtnet.cli.cli", "detect", *args], capture_output=True, text=True,
                          encoding="utf-8", timeout=300)


def _run(chest_file, out, checkpoint, *patient: str) -> tuple[list[dict[str, str]], dict]:
    res = _detect(str(chest_file), "-o", str(out), "--model", str(checkpoint), "--no-tta", "--threshold", "0.0",
                  "--max-findings", "3", "--no-slicer-files", "--quiet", *patient)
    assert res.returncode == 0, res.stderr
    with open(out / "nodules.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == NODULES_CSV_COLUMNS
        rows = list(reader)
    return rows, json.loads((out / "report.json").read_text(encoding="utf-8"))


def test_patient_inputs_reach_the_brock_probability_and_the_defaults_are_named(tmp_path, chest_file,
                                                                              untrained_checkpoint):
    rows, report = _run(chest_file, tmp_path / "given", untrained_checkpoint, "--age", "70", "--sex", "F",
                        "--family-history")
    assert rows, "the untrained model reports findings at threshold 0"
    brock = report["brock"]
    assert brock["inputs"] == {"age": 70.0, "sex": "F", "family_history": True, "emphysema": False}
    assert brock["defaulted"] == ["emphysema"]
    count = brock["nodule_count"]
    assert count >= len(rows)  # every finding at or above the threshold, not only the three kept
    patient = PatientInputs(age=70, sex="F", family_history=True)
    for row, nodule in zip(rows, report["nodules"], strict=True):
        # the CSV row and report.json agree, and the Brock value follows from the recorded features
        assert row["nodule_type"] == nodule["nodule_type"] and row["margin"] == nodule["margin"]
        assert row["lung_rads"] == nodule["lung_rads"] == lung_rads(
            nodule["nodule_type"], nodule["diameter_mm"], nodule["solid_component_mm"], nodule["margin"]).category
        assert nodule["lung_rads_rule"]
        assert row["upper_lobe"] in ("true", "false")
        expected = brock_probability(nodule["diameter_mm"], nodule["nodule_type"], nodule["margin"] == "spiculated",
                                     nodule["upper_lobe"], count, patient)
        if expected is None:
            assert row["brock_malignancy"] == "" and nodule["brock_malignancy"] is None
        else:
            assert float(row["brock_malignancy"]) == pytest.approx(expected, abs=5e-5)
            assert nodule["brock_malignancy"] == pytest.approx(expected)
        assert float(row["malignancy"]) == pytest.approx(nodule["malignancy"], abs=5e-5)  # the network's, beside

    # the same scan with no inputs: all four defaulted, and the probabilities those of the reference patient
    rows_default, report_default = _run(chest_file, tmp_path / "default", untrained_checkpoint)
    assert report_default["brock"]["defaulted"] == ["age", "sex", "family_history", "emphysema"]
    for given, default in zip(rows, rows_default, strict=True):
        if given["brock_malignancy"]:
            assert float(given["brock_malignancy"]) > float(default["brock_malignancy"])  # older, female, family


@pytest.mark.parametrize("args, message", [
    (["--age", "-4"], "--age -4: must lie in [1, 120]"),
    (["--sex", "female"], "invalid choice: 'female'"),
])
def test_bad_patient_inputs_are_refused_with_nothing_written(tmp_path, chest_file, untrained_checkpoint, args,
                                                             message):
    out = tmp_path / "out"
    res = _detect(str(chest_file), "-o", str(out), "--model", str(untrained_checkpoint), "--no-slicer-files",
                  "--quiet", *args)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert not out.exists()


@pytest.mark.parametrize("patient", [PatientInputs(), PatientInputs(age=71.5, sex="M", family_history=False,
                                                                    emphysema=True),
                                     PatientInputs(sex="F", family_history=True)])
def test_the_slicer_worker_gets_the_patient_inputs_the_panel_gave(patient):
    """The job runner writes the inputs as options (cli.patient_arguments); the worker's parser reads the same
    inputs back, the ones not given still not given (so its report names them as defaulted)."""
    from resmtnet.detect.patient_options import patient_arguments, patient_inputs
    from resmtnet.job.slicer_worker import build_parser

    args = build_parser().parse_args(["in.nrrd", "out", *patient_arguments(patient)])
    assert patient_inputs(args) == patient
