"""The bad-input corpus: every input, option and place a user can get wrong, made on the fly, run through the
``resmtnet`` command in this process, each asserting its exit status, its message and what is left on disk.

One :class:`Case` per row of :data:`CASES`: how to build the input in an empty folder (and the command line
to run on it), the exit status, a fragment (a regular expression) of what stderr must say, and the files the
output folder must hold afterwards. A refusal must leave the case's folder exactly as it was built: no
output folder, no temporary folder beside it, no file changed. A run that goes through must add exactly the
files named and nothing else. Other checks (DICOM geometry, publishing) join by adding rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import subprocess
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest_slicer import *  # noqa: F403  (the fixtures phantom, untrained_checkpoint)
from resmtnet.cli.cli import main
from resmtnet.io.ctio import CTVolume, write_volume
from resmtnet.io.fileset import MANIFEST, TREE
from resmtnet.model.model import ModelConfig, ResMTNet
from resmtnet.model.model_io import FORMAT, save_checkpoint

OUT = "out"  # every case writes (or must not write) here, inside its own folder
DETECTED = (MANIFEST, "nodules.csv", "overview.png", "report.json")  # a set without the Slicer files
VIEWS = "views.png"  # written with the Slicer files where VTK can render offscreen (report.json says why not)
SLICER_FILES = ("nodules.mrk.json", "nodules.seg.nrrd", "scene.mrb", VIEWS)
EVALUATED = ("froc.json", "froc.png")


class Kit:
    """What a case's builder may use: its folder, fixtures made on demand, clean-up after the run."""

    def __init__(self, folder: Path, request: pytest.FixtureRequest, stack: ExitStack):
        self.dir = folder
        self.out = str(folder / OUT)
        self._request = request
        self.stack = stack

    @property
    def model(self) -> str:
        """A tiny untrained checkpoint that reports findings anywhere: for runs that must go through."""
        return str(self._request.getfixturevalue("untrained_checkpoint"))

    @property
    def phantom_ct(self) -> CTVolume:
        return self._request.getfixturevalue("phantom").ct


@dataclass(frozen=True)
class Case:
    """One row of the corpus."""

    name: str
    build: Callable[[Kit], list[str]]  # makes the input inside kit.dir and returns the command line
    status: int = 2
    message: str = ""  # a regular expression stderr must match
    left: tuple[str, ...] = ()  # the files the output folder holds afterwards (refusals: no folder at all)
    check: Callable[[Kit, str], None] | None = None  # further assertions (the kit, stderr)
    skip: Callable[[], str | None] = field(default=lambda: None)  # a reason to skip here, or None


# ---------------------------------------------------------------------------------------------------------
# Inputs


def _volume(path: Path, array: np.ndarray, spacing=(0.8, 0.8, 2.0)) -> Path:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing[: img.GetDimension()])
    sitk.WriteImage(img, str(path))
    return path


def _noise(shape=(20, 32, 32), dtype=np.float32) -> np.ndarray:
    """A small volume in HU: air to soft tissue."""
    return np.random.default_rng(0).normal(-500, 300, shape).clip(-1024, 3000).astype(dtype)


def _bad_file(name: str, make: Callable[[Path], object]) -> Callable[[Kit], list[str]]:
    """A builder for ``detect`` on one file made by ``make(path)``."""
    def build(kit: Kit) -> list[str]:
        path = kit.dir / name
        make(path)
        return ["detect", str(path), "-o", kit.out]
    return build


def _with_nan(path: Path) -> None:
    a = _noise()
    a[5, 6, 7] = np.nan
    _volume(path, a)


def _with_inf(path: Path) -> None:
    a = _noise()
    a[1, 2, 3] = np.inf
    _volume(path, a)


def _four_d(path: Path) -> None:
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(_noise())] * 3), str(path))


def _colour(path: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 32, 32, 3), np.uint8), isVector=True), str(path))


def _mhd_without_data(path: Path) -> None:
    _volume(path, _noise(dtype=np.int16))
    path.with_suffix(".raw").unlink()


def _mhd_with_short_data(path: Path) -> None:
    _volume(path, _noise(dtype=np.int16))
    raw = path.with_suffix(".raw")
    raw.write_bytes(raw.read_bytes()[:1000])


def _nhdr_with_short_data(path: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(_noise(dtype=np.int16)), str(path), False)  # header + raw data file
    raw = path.with_suffix(".raw")
    raw.write_bytes(raw.read_bytes()[:1000])


def _folder(kit: Kit, name: str) -> Path:
    (kit.dir / name).mkdir()
    return kit.dir / name


def _dicom_series(folder: Path, uid: str, array: np.ndarray, spacing=(0.8, 0.8, 2.0), intercept: float = 0.0,
                  origin=(-100.0, -120.0, 50.0)) -> None:
    """A CT series, one file per slice (z, y, x array of stored values), with the tags a reader sorts by."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(array.shape[0]):
        img = sitk.GetImageFromArray(array[k: k + 1].astype(np.int16))
        img.SetSpacing(spacing)
        pos = (origin[0], origin[1], origin[2] + k * spacing[2])
        img.SetOrigin(pos)
        tags = {"0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{uid}.{k + 1}",
                "0020|000d": "1.2.826.0.1.3680043.2.1125.1", "0020|000e": uid, "0020|0013": str(k + 1),
                "0020|0032": "\\".join(f"{p:.3f}" for p in pos), "0020|0037": "1\\0\\0\\0\\1\\0",
                "0018|0050": str(spacing[2]), "0028|1052": f"{intercept:g}", "0028|1053": "1"}
        for tag, value in tags.items():
            img.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{uid}-{k:03d}.dcm"))
        writer.Execute(img)


def _dicom_without_rescale(kit: Kit) -> list[str]:
    stored = (_noise((10, 24, 20)) + 1024).clip(0, 4095)  # the scanner's stored values, intercept left at 0
    _dicom_series(kit.dir / "dicom", "1.2.826.0.1.3680043.2.1125.77", stored, intercept=0.0)
    return ["detect", str(kit.dir / "dicom"), "-o", kit.out]


def _folder_of_volumes(kit: Kit) -> list[str]:
    _volume(_folder(kit, "volumes") / "a.nrrd", _noise())
    return ["detect", str(kit.dir / "volumes"), "-o", kit.out]


# ---------------------------------------------------------------------------------------------------------
# Options, output places and models (the input is never read: each is checked first)


def _options(*extra: str) -> Callable[[Kit], list[str]]:
    """``detect`` on a CT that is not there, with ``extra`` options: the option must be refused first."""
    def build(kit: Kit) -> list[str]:
        return ["detect", str(kit.dir / "scan.nrrd"), "-o", kit.out, "--no-slicer-files", *extra]
    return build


def _out_is_a_file(kit: Kit) -> list[str]:
    (kit.dir / OUT).write_text("an earlier result\n")
    return _options()(kit)


def _parent_is_a_file(kit: Kit) -> list[str]:
    (kit.dir / "results").write_text("not a folder\n")
    return ["detect", str(kit.dir / "scan.nrrd"), "-o", str(kit.dir / "results" / "case1"), "--no-slicer-files"]


def _mount(kit: Kit, *args: str) -> Path:
    """Mount something (``mount`` arguments before the target) at a fresh folder; unmounted after the case."""
    target = _folder(kit, "mnt")
    proc = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount here ({proc.stderr.strip() or proc.returncode}): as root, a read-only or "
                    "full place can only be made by a mount, and file permissions do not bind root")
    kit.stack.callback(subprocess.run, ["umount", str(target)], check=True)
    return target


def _read_only_place(kit: Kit) -> list[str]:
    if os.geteuid() != 0:  # permissions bind everyone but root
        place = _folder(kit, "locked")
        place.chmod(0o555)
        kit.stack.callback(place.chmod, 0o755)
    else:
        source = _folder(kit, "source")
        place = _mount(kit, "--bind", "-o", "ro", str(source))
    return ["detect", str(kit.dir / "scan.nrrd"), "-o", str(place / "results"), "--no-slicer-files"]


def _full_place(kit: Kit) -> list[str]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    place = _mount(kit, "-t", "tmpfs", "-o", "size=1m", "tmpfs")
    return ["detect", str(kit.dir / "scan.nrrd"), "-o", str(place / "results"), "--no-slicer-files"]


class _CreatesFile:
    """Unpickling this creates ``marker``: what a hostile checkpoint could do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _model(make: Callable[[Path], object]) -> Callable[[Kit], list[str]]:
    """``detect --model FILE`` (FILE made by ``make``) on a CT that is not there: the model is refused first."""
    def build(kit: Kit) -> list[str]:
        path = kit.dir / "model.pt"
        make(path)
        return _options("--model", str(path))(kit)
    return build


def _malicious_torch(path: Path) -> None:
    torch.save({"format": FORMAT, "hook": _CreatesFile(path.with_name("PWNED"))}, path)


def _malicious_pickle(path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump({"format": FORMAT, "hook": _CreatesFile(path.with_name("PWNED"))}, f, protocol=2)


def _nothing_ran(kit: Kit, err: str) -> None:
    assert not (kit.dir / "PWNED").exists()


def _tiny_net() -> ResMTNet:
    return ResMTNet(ModelConfig(stem_channels=8, stage_channels=(8, 8, 8, 8), blocks_per_stage=(0, 1, 1, 1),
                                pyramid_channels=8, head_channels=8))


def _edited_checkpoint(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        save_checkpoint(path, _tiny_net())
        ck = torch.load(path, weights_only=True)
        edit(ck)
        torch.save(ck, path)
    return make


def _set_threshold(value):
    return _edited_checkpoint(lambda ck: ck["decode"].update(threshold=value))


# ---------------------------------------------------------------------------------------------------------
# Runs that go through, with something to say


def _phantom_run(kit: Kit, path: Path, *extra: str) -> list[str]:
    return ["detect", str(path), "-o", kit.out, "--model", kit.model, "--no-tta", "--quiet", "--max-findings", "2",
            *extra]


def _clean_phantom(kit: Kit) -> list[str]:
    path = kit.dir / "phantom.nrrd"
    write_volume(kit.phantom_ct, path)
    return _phantom_run(kit, path, "--no-slicer-files")


def _thick_phantom(kit: Kit) -> list[str]:
    img = kit.phantom_ct.to_sitk()
    spacing = (img.GetSpacing()[0], img.GetSpacing()[1], 7.0)
    size = [img.GetSize()[0], img.GetSize()[1], int(img.GetSize()[2] * img.GetSpacing()[2] / 7.0)]
    thick = sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), spacing,
                          img.GetDirection(), -1000.0)
    path = kit.dir / "thick.nrrd"
    sitk.WriteImage(sitk.Cast(thick, sitk.sitkInt16), str(path))
    return _phantom_run(kit, path, "--no-slicer-files")


def _nifti_forms_disagree(kit: Kit) -> list[str]:
    path = kit.dir / "scan.nii"
    sitk.WriteImage(sitk.Cast(kit.phantom_ct.to_sitk(), sitk.sitkInt16), str(path))
    header = bytearray(path.read_bytes())
    srow_x = np.frombuffer(bytes(header[280:296]), "<f4").copy()
    srow_x[3] += 200.0  # the sform's x offset 200 mm away from the qform's
    header[280:296] = srow_x.astype("<f4").tobytes()
    path.write_bytes(bytes(header))
    return _phantom_run(kit, path, "--no-slicer-files")


def _several_series(kit: Kit) -> list[str]:
    ct = kit.phantom_ct
    _dicom_series(kit.dir / "dicom", "1.2.826.0.1.3680043.2.1125.50", ct.array, spacing=ct.spacing)
    _dicom_series(kit.dir / "dicom", "1.2.826.0.1.3680043.2.1125.51", _noise((9, 24, 20)), origin=(0.0, 0.0, 0.0))
    return _phantom_run(kit, kit.dir / "dicom", "--no-slicer-files")


def _report_warns(fragment: str, count: int = 1) -> Callable[[Kit, str], None]:
    """report.json keeps the warning the command printed, once; stderr shows it once, as a plain line."""
    def check(kit: Kit, err: str) -> None:
        warnings = json.loads((kit.dir / OUT / "report.json").read_text())["warnings"]
        assert len([w for w in warnings if re.search(fragment, w)]) == count, warnings
        assert len(re.findall(f"^warning: .*{fragment}", err, re.M)) == count, err
        assert "Warning:" not in err and "warnings.warn" not in err  # no raw Python warning
    return check


def _no_warnings(kit: Kit, err: str) -> None:
    assert json.loads((kit.dir / OUT / "report.json").read_text())["warnings"] == []
    assert "warning" not in err.lower()


def _lung_rads_colours(kit: Kit, err: str) -> None:
    markups = json.loads((kit.dir / OUT / "nodules.mrk.json").read_text())
    assert markups["markups"]


def _needs_slicer_core() -> str | None:
    import importlib.util

    return None if importlib.util.find_spec("slicer") else "slicer-core is not installed"


def _needs_no_gpu() -> str | None:
    return "a CUDA device is present" if torch.cuda.is_available() else None


# ---------------------------------------------------------------------------------------------------------
# evaluate


ANNOTATIONS = "seriesuid,coordX,coordY,coordZ,diameter_mm\nscan1,10,20,30,8\nscan2,-40,5,-60,12\n"
PREDICTIONS = "seriesuid,coordX,coordY,coordZ,probability\nscan1,10.5,20,30,0.9\nscan2,0,0,0,0.4\n"


def _evaluate(predictions: str = PREDICTIONS, annotations: str = ANNOTATIONS) -> Callable[[Kit], list[str]]:
    def build(kit: Kit) -> list[str]:
        (kit.dir / "predictions.csv").write_text(predictions)
        (kit.dir / "annotations.csv").write_text(annotations)
        return ["evaluate", str(kit.dir / "predictions.csv"), str(kit.dir / "annotations.csv"), "-o", kit.out,
                "--bootstrap", "0"]
    return build


def _prediction_row(row: str, header: str = "seriesuid,coordX,coordY,coordZ,probability") -> str:
    return f"{header}\nscan1,10.5,20,30,0.9\n{row}\n"


def _froc_warns(kit: Kit, err: str) -> None:
    assert json.loads((kit.dir / OUT / "froc.json").read_text())["warnings"][0].startswith("1 scan(s)")


# ---------------------------------------------------------------------------------------------------------
# The corpus

READ_REFUSALS = [
    Case("missing path", lambda kit: ["detect", str(kit.dir / "no-such-scan.nrrd"), "-o", kit.out],
         message="no such file or folder"),
    Case("text file", _bad_file("notes.nrrd", lambda p: p.write_text("this is not an image\n")),
         message="not an image file SimpleITK can read"),
    Case("random bytes", _bad_file("scan.bin", lambda p: p.write_bytes(np.random.default_rng(1).bytes(4096))),
         message="not an image file SimpleITK can read"),
    Case("empty file", _bad_file("scan.nii.gz", lambda p: p.write_bytes(b"")), message=r"file is empty \(0 bytes\)"),
    Case("2-D image", _bad_file("slice.nrrd", lambda p: _volume(p, _noise((64, 64)))), message="is a 2-D image"),
    Case("single slice", _bad_file("one.nrrd", lambda p: _volume(p, _noise((1, 64, 64)))), message="single slice"),
    Case("too few voxels", _bad_file("tiny.nrrd", lambda p: _volume(p, _noise((20, 4, 32)))),
         message="too small for a CT volume"),
    Case("4-D image", _bad_file("series.nii.gz", _four_d), message="is a 4-D image"),
    Case("colour image", _bad_file("rgb.nrrd", _colour), message="3 values per voxel"),
    Case("all zeros", _bad_file("zeros.nrrd", lambda p: _volume(p, np.zeros((20, 32, 32), np.float32))),
         message="is empty: every voxel is 0"),
    Case("constant", _bad_file("air.nrrd", lambda p: _volume(p, np.full((20, 32, 32), -1000.0, np.float32))),
         message="is constant: every voxel is -1000"),
    Case("NaN", _bad_file("nan.nrrd", _with_nan), message=r"NaN or infinite voxel values \(1 of 20480"),
    Case("infinite value", _bad_file("inf.nrrd", _with_inf), message="NaN or infinite voxel values"),
    Case("spacing too large", _bad_file("coarse.nrrd", lambda p: _volume(p, _noise(), (0.7, 0.7, 100.0))),
         message=r"spacing \(0\.7, 0\.7, 100\.0\) mm is absurd"),
    Case("spacing too small", _bad_file("fine.nrrd", lambda p: _volume(p, _noise(), (0.001, 0.7, 1.0))),
         message="spacing .* is absurd"),
    Case(".mhd without its data file", _bad_file("scan.mhd", _mhd_without_data),
         message="names the data file scan.raw, which does not exist"),
    Case(".mhd with a truncated data file", _bad_file("scan.mhd", _mhd_with_short_data),
         message=r"its data file scan\.raw holds 1000 bytes, fewer than the 40960 its header declares .* truncated"),
    Case(".nhdr with a truncated data file", _bad_file("scan.nhdr", _nhdr_with_short_data),
         message=r"its data file scan\.raw holds 1000 bytes, fewer than the 40960 .* truncated"),
    Case("folder without DICOM", lambda kit: ["detect", str(_folder(kit, "empty")), "-o", kit.out],
         message="holds no DICOM files"),
    Case("folder of volumes", _folder_of_volumes, message=r"holds no DICOM series; it holds volume files \(a\.nrrd\)"),
    Case("8-bit values", _bad_file("export.nrrd", lambda p: _volume(p, (_noise(dtype=np.float32) / 16 + 64)
                                                                    .clip(0, 255).astype(np.uint8))),
         message=r"values are not Hounsfield units: they range from \d+ to \d+.*8-bit image export"),
    Case("stored values without rescale", _bad_file("raw.nrrd", lambda p: _volume(
        p, (_noise() + 1024).clip(0, 4095).astype(np.uint16))),
        message=r"not Hounsfield units: they range from 0 to \d+.*without the rescale intercept"),
    Case("values scaled to [0, 1]", _bad_file("norm.nrrd", lambda p: _volume(p, (_noise() + 1024) / 4096)),
         message=r"not Hounsfield units.*scaled to \[0, 1\]"),
    Case("DICOM without rescale intercept", _dicom_without_rescale,
         message=r"dicom: values are not Hounsfield units"),
]

OPTION_REFUSALS = [
    Case("--threshold nan", _options("--threshold", "nan"), message=r"--threshold nan: must lie in \[0, 1\]"),
    Case("--threshold 1.5", _options("--threshold", "1.5"), message=r"--threshold 1\.5: must lie in \[0, 1\]"),
    Case("--threshold text", _options("--threshold", "high"), message="argument --threshold: invalid float value"),
    Case("--min-diameter nan", _options("--min-diameter", "nan"),
         message="--min-diameter nan: must be a finite number >= 0"),
    Case("--min-diameter negative", _options("--min-diameter", "-2"),
         message="--min-diameter -2: must be a finite number >= 0"),
    Case("--min-diameter inf", _options("--min-diameter", "inf"),
         message="--min-diameter inf: must be a finite number >= 0"),
    Case("--max-findings negative", _options("--max-findings", "-1"),
         message="--max-findings -1: must be a finite number >= 0"),
    Case("--color-by size", _options("--color-by", "size"),
         message=r"argument --color-by: invalid choice: 'size' \(choose from '?malignancy'?, '?lung-rads'?\)"),
    Case("--device cuda without a GPU", _options("--device", "cuda"), message="no CUDA device is available",
         skip=_needs_no_gpu),
]

PLACE_REFUSALS = [
    Case("output is a file", _out_is_a_file, message="the output folder is an existing file"),
    Case("output's parent is a file", _parent_is_a_file,
         message=r"cannot create the output folder: .*results is a file"),
    Case("output in a read-only place", _read_only_place,
         message="cannot write the output there: (the file system is read-only|permission denied)"),
    Case("output on a full file system", _full_place, message=r"only \d+ MiB free on its file system"),
]

MODEL_REFUSALS = [
    Case("--model missing", _options("--model", "/no/such/model.pt"), message="no such model file"),
    Case("--model not a checkpoint", _model(lambda p: p.write_text("weights\n")),
         message="not a readable Res-MTNet checkpoint"),
    Case("--model of another format", _model(lambda p: torch.save({"format": "other/1"}, p)),
         message="not a Res-MTNet checkpoint \\(format 'other/1'"),
    Case("--model with a pickle payload (torch file)", _model(_malicious_torch),
         message="refused: the file holds Python objects other than tensors", check=_nothing_ran),
    Case("--model with a pickle payload (plain pickle)", _model(_malicious_pickle),
         message="refused: the file holds Python objects other than tensors", check=_nothing_ran),
    Case("--model with a missing weight", _model(_edited_checkpoint(
        lambda ck: ck["state_dict"].pop("encoder.stem.0.weight"))),
        message=r"its weights do not fit .*1 missing \(e\.g\. encoder\.stem\.0\.weight\)"),
    Case("--model with an extra weight", _model(_edited_checkpoint(
        lambda ck: ck["state_dict"].update({"extra.weight": torch.zeros(2)}))),
        message=r"1 unexpected \(e\.g\. extra\.weight\)"),
    Case("--model with a text threshold", _model(_set_threshold("high")),
         message=r"decode\.threshold must be a number in \[0, 1\] \(got 'high'\)"),
    Case("--model with threshold 3", _model(_set_threshold(3.0)),
         message=r"decode\.threshold must be a number in \[0, 1\] \(got 3\.0\)"),
]

def _train_resuming_from(make: Callable[[Path], object]) -> Callable[[Kit], list[str]]:
    """``train`` into a folder whose last.pt (made by ``make``) it would resume from."""
    def build(kit: Kit) -> list[str]:
        run = _folder(kit, "run")
        make(run / "last.pt")
        return ["train", "-o", str(run), "--set", "data.phantoms=1", "--epochs", "1", "--cache",
                str(kit.dir / "cache"), "--no-progress"]
    return build


def _payload_in(kit: Kit, make: Callable[[Path], object]) -> str:
    make(kit.dir / "model.pt")
    return str(kit.dir / "model.pt")


OTHER_CHECKPOINT_ENTRIES = [
    Case("train: resume from a last.pt with a pickle payload", _train_resuming_from(_malicious_torch),
         message=r"run/last\.pt: refused: the file holds Python objects", check=_nothing_ran),
    Case("train: resume from a plain pickle last.pt", _train_resuming_from(_malicious_pickle),
         message=r"run/last\.pt: refused", check=_nothing_ran),
    Case("train --init with a pickle payload", lambda kit: [
        "train", "-o", str(kit.dir / "run"), "--init", _payload_in(kit, _malicious_torch), "--set", "data.phantoms=1",
        "--epochs", "1", "--cache", str(kit.dir / "cache")],
        message="model.pt: refused", check=_nothing_ran),
    Case("evaluate --phantoms --model with a pickle payload", lambda kit: [
        "evaluate", "--phantoms", "1", "--model", _payload_in(kit, _malicious_pickle), "-o", kit.out],
        message="model.pt: refused", check=_nothing_ran),
]

EVALUATE_CASES = [
    Case("evaluate: probability 7.5", _evaluate(_prediction_row("scan2,0,0,0,7.5")),
         message=r"predictions\.csv: line 3: probability 7\.5 is impossible \(must be \[0, 1\]\)"),
    Case("evaluate: probability NaN", _evaluate(_prediction_row("scan2,0,0,0,nan")),
         message=r"predictions\.csv: line 3: probability is not finite"),
    Case("evaluate: negative predicted diameter", _evaluate(_prediction_row(
        "scan2,0,0,0,0.5,-3", header="seriesuid,coordX,coordY,coordZ,probability,diameter_mm")),
        message=r"line 3: diameter_mm -3 is impossible \(must be >= 0\)"),
    Case("evaluate: malignancy 1.5", _evaluate(_prediction_row(
        "scan2,0,0,0,0.5,1.5", header="seriesuid,coordX,coordY,coordZ,probability,malignancy")),
        message=r"line 3: malignancy 1\.5 is impossible"),
    Case("evaluate: NaN coordinate", _evaluate(_prediction_row("scan2,nan,0,0,0.5")),
         message=r"line 3: coordX is not finite"),
    Case("evaluate: negative annotated diameter", _evaluate(annotations=ANNOTATIONS + "scan3,1,2,3,-5\n"),
         message=r"annotations\.csv: line 4: diameter_mm -5 is impossible"),
    Case("evaluate: malignancy rating 7", _evaluate(annotations=ANNOTATIONS.replace("diameter_mm\n", "diameter_mm,"
                                                                                     "malignancy\n", 1)
                                                    .replace(",8\n", ",8,7\n").replace(",12\n", ",12,3\n")),
         message=r"line 2: malignancy 7 is impossible \(must be \[1, 5\]\)"),
    Case("evaluate: missing column", _evaluate("seriesuid,coordX,coordY,coordZ\nscan1,1,2,3\n"),
         message="predictions CSV lacks column\\(s\\) probability"),
    Case("evaluate: predictions file missing", lambda kit: ["evaluate", str(kit.dir / "none.csv"),
                                                             str(kit.dir / "none2.csv"), "-o", kit.out],
         message="predictions CSV file not found"),
    Case("evaluate --phantoms --min-diameter nan", lambda kit: ["evaluate", "--phantoms", "1", "--min-diameter",
                                                                "nan", "-o", kit.out],
         message="--min-diameter nan: must be a finite number >= 0"),
    Case("evaluate --phantoms --min-lung-share 2", lambda kit: ["evaluate", "--phantoms", "1", "--min-lung-share",
                                                                "2", "-o", kit.out],
         message=r"--min-lung-share 2: must lie in \[0, 1\]"),
    Case("evaluate: series absent from the annotations", _evaluate(PREDICTIONS + "scan9,1,2,3,0.3\n"),
         status=0, message=r"^warning: 1 scan\(s\) of the predictions have no row in .*annotations\.csv \(scan9\)",
         left=EVALUATED, check=_froc_warns),
]

RUNS_WITH_WARNINGS = [
    Case("clean phantom: no warnings", _clean_phantom, status=0, left=DETECTED, check=_no_warnings),
    Case("slices 7 mm apart", _thick_phantom, status=0, left=DETECTED,
         message=r"^warning: .*thick\.nrrd: voxels are 7 mm apart along one axis .*unreliable",
         check=_report_warns("7 mm apart")),
    Case("NIfTI qform and sform 200 mm apart", _nifti_forms_disagree, status=0, left=DETECTED,
         message=r"^warning: .*scan\.nii: the NIfTI header's qform and sform disagree by up to 200\.0 mm; the "
                 r"sform was used", check=_report_warns("qform and sform")),
    Case("folder with two DICOM series", _several_series, status=0, left=DETECTED,
         message=r"^warning: .*dicom: 2 DICOM series found: .*1125\.50 \(\d+ files\).*1125\.51 \(9 files\); read "
                 r"the one with the most slices", check=_report_warns("2 DICOM series found")),
    Case("--color-by lung-rads, Slicer files", lambda kit: _phantom_run(kit, _written_phantom(kit), "--color-by",
                                                                         "lung-rads"),
         status=0, left=DETECTED + SLICER_FILES, check=_lung_rads_colours, skip=_needs_slicer_core),
]


def _written_phantom(kit: Kit) -> Path:
    path = kit.dir / "phantom.nrrd"
    write_volume(kit.phantom_ct, path)
    return path


CASES: list[Case] = READ_REFUSALS + OPTION_REFUSALS + PLACE_REFUSALS + MODEL_REFUSALS + OTHER_CHECKPOINT_ENTRIES \
    + EVALUATE_CASES + RUNS_WITH_WARNINGS


# ---------------------------------------------------------------------------------------------------------
# The runner


def _snapshot(folder: Path) -> dict[str, str | None]:
    """Every path under ``folder`` with a digest of its content (None for folders)."""
    found: dict[str, str | None] = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            found[os.path.relpath(os.path.join(root, d), folder)] = None
        for f in files:
            p = os.path.join(root, f)
            found[os.path.relpath(p, folder)] = hashlib.sha1(Path(p).read_bytes()).hexdigest()
    return found


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        status = main(argv)
    except SystemExit as e:  # argparse refuses an option by exiting
        status = e.code if isinstance(e.code, int) else 2
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_the_corpus_is_large_and_its_names_unique():
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_corpus(case: Case, tmp_path, request, capsys):
    reason = case.skip()
    if reason:
        pytest.skip(reason)
    folder = tmp_path / "case"
    folder.mkdir()
    with ExitStack() as stack:
        kit = Kit(folder, request, stack)
        argv = case.build(kit)
        before = _snapshot(folder)
        status, out, err = _run(argv, capsys)
        after = _snapshot(folder)
        assert status == case.status, f"exit {status}, expected {case.status}; stderr: {err}"
        assert re.search(case.message, err, re.M), f"{case.message!r} not in stderr: {err!r}"
        if case.status == 2:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("resmtnet ") or "usage:" in err, err
            assert after == before, "a refusal changed the case's folder: " + \
                f"{sorted(set(after) ^ set(before))}"
        else:
            tree = os.path.join(OUT, TREE)  # a set's files live in the hidden folder, linked from their names
            added = {p for p in after if p not in before and not p.startswith(tree + os.sep)}
            expected = set(case.left) | ({TREE} if MANIFEST in case.left else set())
            report = folder / OUT / "report.json"
            if VIEWS in expected and json.loads(report.read_text(encoding="utf-8")).get("views", {}).get("skipped"):
                expected.discard(VIEWS)
            assert added == {OUT, *(os.path.join(OUT, f) for f in expected)}, sorted(added)
            assert all(after[p] == h for p, h in before.items()), "a run changed its input"
        if case.check is not None:
            case.check(kit, err)
