"""Reading CTs: the real LIDC-IDRI-0001 series with its geometry, the same volume re-written in every
format, phantoms round-tripped with each direction matrix, and every kind of bad input, each with its
own message (directly and through the command line, which must exit non-zero and write nothing)."""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from resmtnet.io.ctio import CTVolume, read_ct, write_volume
from resmtnet.util.errors import InputError
from scipy import ndimage

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "LIDC-IDRI-0001"
needs_real = pytest.mark.skipif(not (REAL / "dicom").is_dir(), reason=f"real CT not found at {REAL}")


@pytest.fixture(scope="module")
def real():
    """(CT read from the DICOM folder, annotated nodule centre LPS, seriesuid of the annotation)."""
    with open(REAL / "annotations.csv", newline="") as f:
        row = next(csv.DictReader(f))
    centre = np.array([float(row[k]) for k in ("coordX", "coordY", "coordZ")])
    return read_ct(REAL / "dicom"), centre, row["seriesuid"]


def voxel_of(ct: CTVolume, lps) -> tuple[int, int, int]:
    """(z, y, x) index of the voxel holding world point ``lps``."""
    return tuple(int(v) for v in np.round(ct.world_to_index(lps))[::-1])


@needs_real
def test_real_series_geometry_and_nodule_density(real):
    ct, centre, uid = real
    assert ct.array.dtype == np.float32 and ct.array.shape == (133, 512, 512)
    assert ct.seriesuid == uid
    np.testing.assert_allclose(ct.spacing, (0.703125, 0.703125, 2.5), atol=1e-4)
    np.testing.assert_allclose(ct.direction_matrix, np.eye(3), atol=1e-6)
    # HU, not raw stored values: air around the patient near -1000, padding below the field -2048
    assert -1030 < np.median(ct.array[60, 5:40, 200:300]) < -970
    # the annotated nodule centre sits on nodule density, and so does its immediate neighbourhood
    z, y, x = voxel_of(ct, centre)
    assert ct.array[z, y, x] > -300
    assert np.median(ct.array[z - 1:z + 2, y - 2:y + 3, x - 2:x + 3]) > -300
    # index <-> world is a true inverse
    np.testing.assert_allclose(ct.index_to_world(ct.world_to_index(centre)), centre, atol=1e-6)


@needs_real
@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha", ".mhd"])
def test_real_rewritten_lands_on_same_voxel(real, tmp_path, suffix):
    ct, centre, uid = real
    path = tmp_path / f"{uid}{suffix}"
    write_volume(ct, path, compress=suffix == ".nii.gz")
    again = read_ct(path)
    assert again.seriesuid == uid
    assert voxel_of(again, centre) == voxel_of(ct, centre)
    np.testing.assert_allclose(again.world_to_index(centre), ct.world_to_index(centre), atol=1e-3)
    np.testing.assert_allclose(again.spacing, ct.spacing, atol=1e-5)
    np.testing.assert_allclose(again.origin, ct.origin, atol=1e-4)
    np.testing.assert_allclose(again.direction, ct.direction, atol=1e-6)
    assert np.array_equal(again.array, ct.array)
    # written whole: nothing temporary left beside it
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def _directions():
    from resmtnet.data.phantom import DIRECTIONS

    return DIRECTIONS


@pytest.mark.parametrize("k", range(5))
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_phantom_round_trip_keeps_nodule_positions(tmp_path, k, suffix):
    from resmtnet.data.phantom import generate_phantom

    directions = _directions()
    if k >= len(directions):
        pytest.skip(f"the phantom has {len(directions)} direction matrices")
    direction = directions[k]
    ph = generate_phantom(300 + k, small=True, direction=direction)
    assert ph.nodules
    labels = CTVolume(ph.labels.astype(np.float32), ph.ct.spacing, ph.ct.origin, ph.ct.direction, "labels",
                      source="")
    write_volume(ph.ct, tmp_path / f"ct{suffix}")
    write_volume(labels, tmp_path / f"labels{suffix}")
    ct = read_ct(tmp_path / f"ct{suffix}")
    lab = read_ct(tmp_path / f"labels{suffix}", hu=False)
    np.testing.assert_allclose(ct.direction, direction, atol=1e-6)
    np.testing.assert_allclose(ct.array, ph.ct.array)
    for i, nod in enumerate(ph.nodules):
        # the annotated centre maps to the same continuous index before and after the disk
        np.testing.assert_allclose(ct.world_to_index(nod.center_lps), ph.ct.world_to_index(nod.center_lps),
                                   atol=1e-3)
        # ... and that voxel is the nodule in the image read back
        assert lab.array[voxel_of(lab, nod.center_lps)] == i + 1
        # the nodule's own voxels are where they were, in world mm, and around the annotation (within
        # a voxel: discretisation, lobulated or spiculated outlines and the pleura move the centroid)
        before = ph.ct.index_to_world(np.array(ndimage.center_of_mass(ph.labels == i + 1))[::-1])
        centroid = np.array(ndimage.center_of_mass(lab.array == i + 1))[::-1]
        np.testing.assert_allclose(lab.index_to_world(centroid), before, atol=1e-3)
        assert np.all(np.abs(lab.world_to_index(nod.center_lps) - centroid) <= 1.0), nod


def test_phantom_set_annotations_land_on_their_nodules(tmp_path):
    from resmtnet.data.phantom import write_phantom_set

    paths = write_phantom_set(tmp_path, 1, seed=77, masks=True, small=True)
    with open(tmp_path / "annotations.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows
    ct = read_ct(paths[0])
    labels = read_ct(tmp_path / f"{ct.seriesuid}.labels.nrrd", hu=False)
    assert {r["seriesuid"] for r in rows} == {ct.seriesuid}
    for i, row in enumerate(rows):
        lps = [float(row[k]) for k in ("coordX", "coordY", "coordZ")]
        assert labels.array[voxel_of(labels, lps)] == i + 1


@pytest.mark.slow
def test_phantoms_are_generated_in_worker_processes_after_torch_has_run(tmp_path):
    """A process that has run a network then generates phantoms in two workers. Forked workers inherited
    torch's thread-pool locks and hung on their first parallel step (`resmtnet evaluate --phantoms` did,
    loading its model first); the pool now starts them fresh. A hang fails here by the timeout."""
    code = ("import sys, torch\n"
            "from resmtnet.model.model_io import load_model\n"
            "from resmtnet.data.phantom import write_phantom_set\n"
            "load_model().net(torch.zeros(1, 1, 32, 32, 32))\n"
            "paths = write_phantom_set(sys.argv[1], 2, seed=7, workers=2, small=True)\n"
            "print(len(paths))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == "2"
    assert sorted(p.name for p in tmp_path.glob("*.nrrd")) == ["phantom-s7-0000.nrrd", "phantom-s7-0001.nrrd"]


# ----------------------------------------------------------------------------------------------------------
# Bad input: one case per problem, each message naming it


def _volume(path: Path, array: np.ndarray, spacing=(0.8, 0.8, 2.0)) -> Path:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing[: img.GetDimension()])
    sitk.WriteImage(img, str(path))
    return path


def _noise(shape=(20, 32, 32)) -> np.ndarray:
    return np.random.default_rng(0).normal(-500, 300, shape).astype(np.float32)


def _make_bad(kind: str, d: Path) -> Path:
    if kind == "missing":
        return d / "no-such-scan.nrrd"
    if kind == "text file":
        (d / "notes.nrrd").write_text("this is not an image\n")
        return d / "notes.nrrd"
    if kind == "random bytes":
        (d / "scan.bin").write_bytes(np.random.default_rng(1).bytes(4096))
        return d / "scan.bin"
    if kind == "empty file":
        (d / "scan.nii.gz").write_bytes(b"")
        return d / "scan.nii.gz"
    if kind == "2-D image":
        return _volume(d / "slice.nrrd", _noise((64, 64)))
    if kind == "single slice":
        return _volume(d / "one.nrrd", _noise((1, 64, 64)))
    if kind == "4-D image":
        img = sitk.JoinSeries([sitk.GetImageFromArray(_noise())] * 3)
        sitk.WriteImage(img, str(d / "series.nii.gz"))
        return d / "series.nii.gz"
    if kind == "colour image":
        img = sitk.GetImageFromArray(np.zeros((20, 32, 32, 3), np.uint8), isVector=True)
        sitk.WriteImage(img, str(d / "rgb.nrrd"))
        return d / "rgb.nrrd"
    if kind == "all zeros":
        return _volume(d / "zeros.nrrd", np.zeros((20, 32, 32), np.float32))
    if kind == "constant":
        return _volume(d / "air.nrrd", np.full((20, 32, 32), -1000.0, np.float32))
    if kind == "NaN":
        a = _noise()
        a[5, 6, 7] = np.nan
        return _volume(d / "nan.nrrd", a)
    if kind == "spacing too large":
        return _volume(d / "coarse.nrrd", _noise(), spacing=(0.7, 0.7, 100.0))
    if kind == "spacing too small":
        return _volume(d / "fine.nrrd", _noise(), spacing=(0.001, 0.7, 1.0))
    if kind == "missing data file":
        _volume(d / "scan.mhd", _noise())
        (d / "scan.raw").unlink()
        return d / "scan.mhd"
    if kind == "folder without DICOM":
        (d / "empty-folder").mkdir()
        return d / "empty-folder"
    if kind == "folder of volumes":
        (d / "volumes").mkdir()
        _volume(d / "volumes" / "a.nrrd", _noise())
        return d / "volumes"
    raise AssertionError(kind)


BAD = {
    "missing": "no such file or folder",
    "text file": "not an image file",
    "random bytes": "not an image file",
    "empty file": "file is empty",
    "2-D image": "is a 2-D image",
    "single slice": "single slice",
    "4-D image": "is a 4-D image",
    "colour image": "values per voxel",
    "all zeros": "is empty: every voxel is 0",
    "constant": "is constant",
    "NaN": "NaN",
    "spacing too large": "spacing .* absurd",
    "spacing too small": "spacing .* absurd",
    "missing data file": "data file scan.raw, which does not exist",
    "folder without DICOM": "holds no DICOM files",
    "folder of volumes": "holds no DICOM series; it holds volume files \\(a.nrrd\\)",
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_input_has_its_own_message(tmp_path, kind):
    path = _make_bad(kind, tmp_path)
    with pytest.raises(InputError, match=BAD[kind]) as err:
        read_ct(path)
    assert str(path) in str(err.value)  # the message names the input


def test_bad_input_messages_differ(tmp_path):
    messages = {}
    for kind in BAD:
        d = tmp_path / kind.replace(" ", "-")
        d.mkdir()
        path = _make_bad(kind, d)
        with pytest.raises(InputError) as err:
            read_ct(path)
        messages[kind] = str(err.value).replace(str(path), "INPUT")
    same_problem = {("text file", "random bytes"), ("spacing too large", "spacing too small")}
    kinds = list(messages)
    for i, a in enumerate(kinds):
        for b in kinds[i + 1:]:
            if (a, b) not in same_problem:
                assert messages[a] != messages[b], (a, b)


# ----------------------------------------------------------------------------------------------------------
# DICOM folders


def _write_dicom_series(folder: Path, uid: str, n: int, origin=(-100.0, -120.0, 50.0),
                        spacing=(0.8, 0.8, 2.0)) -> None:
    """A small CT series, one file per slice, with the tags a reader sorts slices by."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(n):
        img = sitk.GetImageFromArray(rng.normal(-500, 300, (1, 24, 20)).astype(np.int16))
        img.SetSpacing(spacing)
        pos = (origin[0], origin[1], origin[2] + k * spacing[2])
        img.SetOrigin(pos)
        tags = {"0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{uid}.{k + 1}",
                "0020|000d": "1.2.826.0.1.3680043.2.1125.1", "0020|000e": uid, "0020|0013": str(k + 1),
                "0020|0032": "\\".join(f"{p:.3f}" for p in pos), "0020|0037": "1\\0\\0\\0\\1\\0",
                "0018|0050": str(spacing[2]), "0028|1052": "0", "0028|1053": "1"}
        for tag, value in tags.items():
            img.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{uid}-{k:03d}.dcm"))
        writer.Execute(img)


def test_dicom_folder_with_several_series_reads_largest_and_says_so(tmp_path):
    _write_dicom_series(tmp_path, "1.2.826.0.1.3680043.2.1125.5", 12)
    _write_dicom_series(tmp_path, "1.2.826.0.1.3680043.2.1125.6", 9, origin=(0.0, 0.0, 0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, as a note (the command prints it), not as a Python warning
        ct = read_ct(tmp_path)
    assert len(ct.notes) == 1
    assert re.search(r"2 DICOM series found: .*1125\.5 \(12 files\).*1125\.6 \(9 files\)", ct.notes[0])
    assert ct.seriesuid == "1.2.826.0.1.3680043.2.1125.5"
    assert ct.array.shape == (12, 24, 20)
    np.testing.assert_allclose(ct.origin, (-100.0, -120.0, 50.0), atol=1e-3)
    np.testing.assert_allclose(ct.spacing, (0.8, 0.8, 2.0), atol=1e-4)
    assert ct.notes and "1125.6" in ct.notes[0]


def test_dicom_series_in_a_sub_folder_is_found(tmp_path):
    _write_dicom_series(tmp_path / "patient" / "study" / "series", "1.2.826.0.1.3680043.2.1125.9", 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a single series: no warning
        ct = read_ct(tmp_path)
    assert ct.seriesuid == "1.2.826.0.1.3680043.2.1125.9" and ct.array.shape == (10, 24, 20)


def test_a_dicom_folder_is_looked_through_once_and_the_ct_keeps_its_series(tmp_path):
    """find_dicom_series lists each series with its files; read_ct reads the series it is handed (here the
    smaller one) without looking again, and the CT keeps that series' plan: its files along the normal, its
    uid, and its identity from one of them."""
    from resmtnet.io.ctio import find_dicom_series
    from resmtnet.report.dicom_export import read_source_series

    _write_dicom_series(tmp_path, "1.2.826.0.1.3680043.2.1125.5", 12)
    _write_dicom_series(tmp_path, "1.2.826.0.1.3680043.2.1125.6", 9, origin=(0.0, 0.0, 0.0))
    found = find_dicom_series(tmp_path)
    assert [(s.folder, s.series_uid, len(s.files)) for s in found] == [
        (tmp_path, "1.2.826.0.1.3680043.2.1125.5", 12), (tmp_path, "1.2.826.0.1.3680043.2.1125.6", 9)]
    assert all(Path(f).parent == tmp_path for s in found for f in s.files)
    ct = read_ct(tmp_path, dicom_series=found[1:])
    assert ct.seriesuid == "1.2.826.0.1.3680043.2.1125.6" and ct.array.shape == (9, 24, 20) and not ct.notes
    assert ct.dicom is not None and ct.dicom.series_uid == ct.seriesuid
    assert [Path(f).name for f in ct.dicom.files] == [f"1.2.826.0.1.3680043.2.1125.6-{k:03d}.dcm" for k in range(9)]
    np.testing.assert_allclose(ct.dicom.positions[0], ct.origin, atol=1e-3)
    assert read_source_series(tmp_path, ct).series_uid == ct.seriesuid
    assert read_ct(tmp_path).dicom.series_uid == "1.2.826.0.1.3680043.2.1125.5"
    assert read_ct(_volume(tmp_path / "v.nrrd", _noise())).dicom is None


# ----------------------------------------------------------------------------------------------------------
# Through the command line: a non-zero exit, a message, nothing written


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    # utf-8 named: ITK may switch this process's locale to C, and messages hold non-ASCII characters
    return subprocess.run([sys.executable, "-m", "resmtnet.cli.cli", *args], capture_output=True, text=True,
                          encoding="utf-8", errors="replace", timeout=120, env=env)


CLI_CASES = ["missing", "text file", "2-D image", "constant", "NaN", "spacing too large",
             "folder without DICOM"]


@pytest.mark.parametrize("command", ["detect", "realism"])
@pytest.mark.parametrize("kind", CLI_CASES)
def test_cli_bad_input_exits_non_zero_and_writes_nothing(tmp_path, command, kind):
    if importlib.util.find_spec(f"resmtnet.cli.{command}_cli") is None:
        pytest.skip(f"resmtnet {command} does not exist yet")
    (tmp_path / "in").mkdir()
    path = _make_bad(kind, tmp_path / "in")
    out = tmp_path / "out"
    args = [command, str(path), "-o", str(out)] if command == "detect" else [command, "--real", str(path),
                                                                          "--phantoms", "1", "-o", str(out)]
    proc = _run_cli(*args)
    assert proc.returncode != 0
    assert "error" in proc.stderr and str(path) in proc.stderr
    assert re.search(BAD[kind], proc.stderr)
    assert not out.exists() or not any(out.rglob("*"))

