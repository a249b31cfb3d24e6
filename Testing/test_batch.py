"""`resmtnet detect` over many scans: one complete set per scan, a summary of every finding, a failures file
naming each bad scan, an exit status saying some failed; `--resume` does no scan twice."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest_slicer import *  # noqa: F403  (the fixture untrained_checkpoint)
from resmtnet.io.ctio import write_volume
from resmtnet.io.fileset import read_set
from resmtnet.report.batch import FAILURES_COLUMNS, SUMMARY_COLUMNS, collect_scans
from resmtnet.report.outputs import CSV_FILE
from synthetic_chest import tiny_chest

#: input (relative to the folder of scans) → the words its reason must hold
BROKEN = {"empty.nii.gz": "empty", "junk.nrrd": "not an image", "flat.nrrd": "2-D",
          "no-lungs.nrrd": "no lungs", "no-dicom": "no DICOM"}


def _write_dicom_series(folder: Path, seed: int) -> None:
    """The tiny chest as a CT series, one file per slice, with the tags a reader sorts slices by."""
    ct = tiny_chest(seed)
    folder.mkdir()
    uid = f"1.2.826.0.1.3680043.2.1125.{700 + seed}"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k, plane in enumerate(ct.array.astype(np.int16)):
        img = sitk.GetImageFromArray(plane[None])
        img.SetSpacing(ct.spacing)
        pos = (ct.origin[0], ct.origin[1], ct.origin[2] + k * ct.spacing[2])
        img.SetOrigin(pos)
        tags = {"0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{uid}.{k + 1}",
                "0020|000d": f"{uid}.0", "0020|000e": uid, "0020|0013": str(k + 1),
                "0020|0032": "\\".join(f"{p:.3f}" for p in pos), "0020|0037": "1\\0\\0\\0\\1\\0",
                "0018|0050": str(ct.spacing[2]), "0028|1052": "0", "0028|1053": "1"}
        for tag, value in tags.items():
            img.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(img)


@pytest.fixture(scope="module")
def folder_of_scans(tmp_path_factory) -> Path:
    """30 scans: 22 volume files, 2 sub-folders holding one volume each, 1 DICOM series sub-folder, and 5
    broken (an empty file, junk, a 2-D image, a scan without lungs, a sub-folder without DICOM); a README."""
    root = tmp_path_factory.mktemp("scans")
    for seed in range(22):
        write_volume(tiny_chest(seed), root / f"chest-{seed:02d}.nrrd")
    for name, seed, suffix in (("patient-a", 30, ".nii.gz"), ("patient-b", 31, ".mha")):
        (root / name).mkdir()
        write_volume(tiny_chest(seed), root / name / f"ct{suffix}")
    _write_dicom_series(root / "series-32", 32)
    (root / "empty.nii.gz").write_bytes(b"")
    (root / "junk.nrrd").write_bytes(b"this is not an image\n" * 40)
    sitk.WriteImage(sitk.Image(64, 64, sitk.sitkInt16), str(root / "flat.nrrd"))
    write_volume(tiny_chest(40, lungs=False), root / "no-lungs.nrrd")
    (root / "no-dicom").mkdir()
    (root / "no-dicom" / "notes.txt").write_text("no images here")
    (root / "README.txt").write_text("not a scan")
    return root


def _detect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resmtnet.cli.cli", "detect", *args], capture_output=True, text=True,
                          encoding="utf-8", timeout=600)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _stamps(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime in ns) of every file under ``folder``'s scan sub-folders: a rewrite changes both."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in folder.glob("*/*") if p.is_file() or p.name.startswith(".")}


@pytest.mark.slow
def test_a_folder_of_30_scans_with_5_broken_ones_and_its_resume(tmp_path, folder_of_scans, untrained_checkpoint):
    out = tmp_path / "out"
    args = ["--batch", str(folder_of_scans), "-o", str(out), "--model", str(untrained_checkpoint), "--no-tta",
            "--max-findings", "1", "--no-slicer-files", "--quiet"]
    res = _detect(*args)
    assert res.returncode == 1, res.stderr  # some failed
    assert "30 scan(s): 25 detected, 0 skipped as complete (--resume), 5 failed" in res.stdout

    # 25 complete sets, one sub-folder per scan, named after its input
    good = [f"chest-{s:02d}" for s in range(22)] + ["patient-a", "patient-b", "series-32"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) == sorted(good)
    for name in good:
        manifest = read_set(out / name, verify=True)
        assert manifest is not None and set(manifest["files"]) == {"nodules.csv", "overview.png", "report.json"}
    assert read_set(out / "patient-a")["input"] == str((folder_of_scans / "patient-a" / "ct.nii.gz").resolve())
    assert read_set(out / "series-32")["seriesuid"] == "1.2.826.0.1.3680043.2.1125.732"

    # 5 rows in the failures file, each naming its input and why; one line each on stderr too
    failures = _rows(out / "failures.csv")
    assert list(failures[0]) == FAILURES_COLUMNS
    assert sorted(Path(r["input"]).name for r in failures) == sorted(BROKEN)
    for r in failures:
        assert BROKEN[Path(r["input"]).name].lower() in r["reason"].lower(), r
        assert f"resmtnet detect: {r['input']}: {r['reason']}" in res.stderr.splitlines()

    # the summary holds every finding of every scan, LUNA16 columns first, with the scan it came from
    summary = _rows(out / "nodules.csv")
    assert list(summary[0]) == SUMMARY_COLUMNS and SUMMARY_COLUMNS[:5] == ["seriesuid", "coordX", "coordY",
                                                                           "coordZ", "probability"]
    per_scan = [(name, row) for name in good for row in _rows(out / name / CSV_FILE)]
    assert len(summary) == len(per_scan) > 0
    for s, (name, row) in zip(summary, per_scan, strict=True):
        assert s["scan"] == name and all(s[c] == row[c] for c in row)

    # --resume: every complete set skipped (its files not rewritten), the broken scans tried again
    before = _stamps(out)
    again = _detect(*args, "--resume")
    assert again.returncode == 1, again.stderr
    assert "30 scan(s): 0 detected, 25 skipped as complete (--resume), 5 failed" in again.stdout
    assert _stamps(out) == before
    assert len(_rows(out / "failures.csv")) == 5 and _rows(out / "nodules.csv") == summary


def test_inputs_from_a_list_names_each_scan_uniquely(tmp_path):
    """A list file: comments and blank lines skipped; two inputs of the same name get distinct folders."""
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        write_volume(tiny_chest(1), tmp_path / sub / "ct.nrrd")
    listing = tmp_path / "scans.txt"
    listing.write_text(f"# two scans\n{tmp_path / 'a' / 'ct.nrrd'}\n\n{tmp_path / 'b' / 'ct.nrrd'}\n")
    scans = collect_scans([], inputs_from=listing)
    assert [(s.input.parent.name, s.name) for s in scans] == [("a", "ct"), ("b", "ct-2")]


@pytest.mark.slow
def test_a_batch_where_every_scan_fails_exits_2(tmp_path):
    (tmp_path / "a.nrrd").write_bytes(b"")
    res = _detect(str(tmp_path / "a.nrrd"), str(tmp_path / "missing.nrrd"), "-o", str(tmp_path / "out"),
                  "--no-slicer-files", "--quiet")
    assert res.returncode == 2, res.stderr
    assert len(_rows(tmp_path / "out" / "failures.csv")) == 2 and _rows(tmp_path / "out" / "nodules.csv") == []
