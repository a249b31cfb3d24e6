"""DICOM series geometry: every case of issue 32's point 2 either refused, naming the problem and the slices,
or read with its positions within 1 mm of the truth and of the intact series'.

Series are written on the fly with pydicom: small CT slices sampled from a world-space phantom (three bright
Gaussian markers at known LPS positions in air), each slice at its own position and orientation, so a tilted
or unevenly spaced series shows what a scanner would have recorded. Positions are checked where it matters:
the world position (``CTVolume.index_to_world``) of each marker's centre as read.
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless
from resmtnet.cli.cli import main as cli_main
from resmtnet.io.ctio import CTVolume, read_ct
from resmtnet.util.errors import InputError
from scipy import ndimage

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LIDC = REAL / "LIDC-IDRI-0001" / "dicom"

MARKERS = np.array([[0.0, 0.0, -20.0], [10.0, -8.0, 15.0], [-12.0, 10.0, 30.0]])  # LPS mm
MARKER_SIGMA_MM = 3.0
ROWS, COLS = 56, 64  # not square: a swapped x/y would show
PIXEL_MM = 0.8
STEP_MM = 2.5
N_SLICES = 40
ORIGIN = np.array([-25.0, -20.0, -50.0])
AXIAL = (np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]))
STUDY_UID = "1.2.826.0.1.3680043.2.1125.32.1"
SERIES_UID = "1.2.826.0.1.3680043.2.1125.32.2"


def phantom_hu(points: np.ndarray) -> np.ndarray:
    """HU at LPS points (..., 3): air with three bright Gaussian markers."""
    r2 = ((points[..., None, :] - MARKERS) ** 2).sum(-1)
    return -1000.0 + 1400.0 * np.exp(-r2 / (2 * MARKER_SIGMA_MM ** 2)).sum(-1)


def intact_slices(n: int = N_SLICES, step: float = STEP_MM) -> list[dict]:
    """One dict per slice: where it is, how it is oriented, and what it holds."""
    return [dict(name=f"slice{k:03d}.dcm", instance=k + 1, sop=f"{SERIES_UID}.{k + 1}",
                 position=ORIGIN + np.array([0.0, 0.0, k * step]), row=AXIAL[0], col=AXIAL[1],
                 rows=ROWS, cols=COLS, modality="CT", image_type=["ORIGINAL", "PRIMARY", "AXIAL"])
            for k in range(n)]


def write_slice(folder: Path, s: dict) -> Path:
    """A CT slice file whose pixels sample the phantom where the slice lies (or at ``s["sample_at"]``)."""
    at = s.get("sample_at", s["position"])
    jj, ii = np.meshgrid(np.arange(s["rows"]), np.arange(s["cols"]), indexing="ij")
    pts = at + (ii[..., None] * PIXEL_MM) * s["row"] + (jj[..., None] * PIXEL_MM) * s["col"]
    stored = np.round(phantom_hu(pts) + 1024).astype("<i2")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = s["sop"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, s["sop"]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY_UID, SERIES_UID
    ds.PatientID, ds.PatientName = "PHANTOM32", "Phantom^Geometry"
    if s["modality"] is not None:
        ds.Modality = s["modality"]
    ds.ImageType = s["image_type"]
    ds.InstanceNumber = s["instance"]
    ds.ImagePositionPatient = [f"{v:.4f}" for v in s["position"]]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*s["row"], *s["col"])]
    ds.PixelSpacing = [f"{PIXEL_MM}", f"{PIXEL_MM}"]
    ds.SliceThickness = f"{STEP_MM}"
    ds.Rows, ds.Columns = s["rows"], s["cols"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    ds.PixelData = stored.tobytes()
    path = folder / s["name"]
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(folder: Path, slices: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for s in slices:
        write_slice(folder, s)
    return folder


def marker_positions(ct: CTVolume) -> np.ndarray:
    """World (LPS mm) centre of each bright blob: intensity-weighted centroid of each connected component."""
    labels, n = ndimage.label(ct.array > -600)
    centres = ndimage.center_of_mass(ct.array + 1000.0, labels, range(1, n + 1))
    return np.array([ct.index_to_world(np.array(c[::-1])) for c in centres]).reshape(-1, 3)


def marker_errors(ct: CTVolume, reference: np.ndarray = MARKERS) -> np.ndarray:
    found = marker_positions(ct)
    assert len(found) == len(reference), f"{len(found)} markers found, {len(reference)} expected"
    return np.array([np.linalg.norm(found - m, axis=1).min() for m in reference])


def assert_same_volume(a: CTVolume, b: CTVolume) -> None:
    np.testing.assert_array_equal(a.array, b.array)
    assert (a.spacing, a.origin, a.direction) == (b.spacing, b.origin, b.direction)


@pytest.fixture
def intact(tmp_path) -> CTVolume:
    return read_ct(write_series(tmp_path / "intact", intact_slices()))


# ----------------------------------------------------------------------------------------------------------
# The intact series and the real ones read exactly as ITK alone reads them


def itk_read(folder: Path) -> CTVolume:
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sitk.ImageSeriesReader.GetGDCMSeriesIDs(
        str(folder))[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return CTVolume.from_sitk(reader.Execute())


def test_intact_series_reads_as_before_with_markers_in_place(intact, tmp_path):
    assert intact.notes == ()
    assert_same_volume(intact, itk_read(tmp_path / "intact"))
    np.testing.assert_allclose(intact.spacing, (PIXEL_MM, PIXEL_MM, STEP_MM), atol=1e-6)
    assert marker_errors(intact).max() < 0.3


@pytest.mark.parametrize("name", ["LIDC-IDRI-0001", "4D-Lung-113_HM10395", "CPTAC-LSCC-C3N-00247",
                                  "NSCLC-Radiogenomics-R01-001"])
@pytest.mark.slow
def test_real_series_read_exactly_as_before_without_notes(name):
    folder = REAL / name / "dicom"
    if not folder.is_dir():
        pytest.skip(f"real CT not found at {folder}")
    ct = read_ct(folder)
    assert ct.notes == ()
    assert_same_volume(ct, itk_read(folder))


def test_unicode_folder_with_junk_files_and_names_out_of_order_reads_as_intact(intact, tmp_path):
    slices = intact_slices()
    for k, s in enumerate(slices):  # file names in the reverse order of the positions
        s["name"] = f"img{len(slices) - k:03d}.dcm"
    folder = write_series(tmp_path / "série ü", slices)
    (folder / "README.txt").write_text("exported series\n")
    (folder / "junk.bin").write_bytes(bytes(range(256)) * 40)
    ct = read_ct(folder)
    assert ct.notes == ()
    assert_same_volume(ct, intact)


def test_compressed_series_passes_the_pixel_data_check(intact, tmp_path):
    folder = write_series(tmp_path / "rle", intact_slices())
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.compress(RLELossless)
        ds.save_as(f)
    ct = read_ct(folder)
    assert ct.notes == ()
    assert_same_volume(ct, intact)


# ----------------------------------------------------------------------------------------------------------
# Handled: read with a note, positions within 1 mm of the truth and of the intact series'


@pytest.mark.parametrize("degrees", [15.0, -15.0])
def test_gantry_tilt_15_degrees_is_resampled_onto_an_orthogonal_grid(intact, tmp_path, degrees):
    t = np.radians(degrees)
    slices = intact_slices()
    for s in slices:  # the planes tilt about x; the table still steps along z
        s["col"] = np.array([0.0, np.cos(t), np.sin(t)])
    ct = read_ct(write_series(tmp_path / "tilt", slices))
    assert any("gantry tilt 15.0°" in n and "resampled onto an orthogonal grid" in n for n in ct.notes), ct.notes
    np.testing.assert_allclose(ct.direction_matrix @ ct.direction_matrix.T, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(ct.direction_matrix, np.eye(3), atol=1e-9)  # table axis z, rows along x
    assert marker_errors(ct).max() < 1.0
    assert marker_errors(ct, marker_positions(intact)).max() < 1.0


def test_spacing_change_from_2_5_to_3_mm_is_resampled_onto_an_even_grid(intact, tmp_path):
    slices = intact_slices(36)
    for k, s in enumerate(slices):
        s["position"] = ORIGIN + np.array([0.0, 0.0, k * 2.5 if k <= 18 else 18 * 2.5 + (k - 18) * 3.0])
    ct = read_ct(write_series(tmp_path / "uneven", slices))
    change = "2.50 to 3.00 mm after slice018.dcm (instance 19) at -5.00 mm"
    assert any("uneven" in n and change in n for n in ct.notes), ct.notes
    assert abs(ct.spacing[2] - 2.5) < 0.05  # the finer of the two steps, evenly over the whole extent
    np.testing.assert_allclose(ct.index_to_world([0, 0, 0]), ORIGIN, atol=1e-6)
    np.testing.assert_allclose(ct.index_to_world([0, 0, ct.array.shape[0] - 1]), slices[-1]["position"],
                               atol=1e-6)
    assert marker_errors(ct).max() < 1.0
    assert marker_errors(ct, marker_positions(intact)).max() < 1.0


def test_localizer_in_the_series_is_left_out(intact, tmp_path):
    folder = write_series(tmp_path / "scout", intact_slices())
    write_slice(folder, dict(name="scout.dcm", instance=0, sop=f"{SERIES_UID}.999", position=ORIGIN,
                             row=np.array([1.0, 0.0, 0.0]), col=np.array([0.0, 0.0, -1.0]), rows=32, cols=COLS,
                             modality="CT", image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    ct = read_ct(folder)
    assert any("localizer" in n and "scout.dcm (instance 0)" in n for n in ct.notes), ct.notes
    assert_same_volume(ct, intact)


@pytest.mark.parametrize("odd", ["size", "orientation"])
def test_a_slice_of_another_size_or_orientation_is_left_out(intact, tmp_path, odd):
    folder = write_series(tmp_path / odd, intact_slices())
    stray = dict(intact_slices()[0], name="stray.dcm", instance=77, sop=f"{SERIES_UID}.77")
    if odd == "size":
        stray["rows"] = 48
    else:
        stray["row"], stray["col"] = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])
    write_slice(folder, stray)
    ct = read_ct(folder)
    assert any(f"another {odd}" in n and "stray.dcm (instance 77)" in n for n in ct.notes), ct.notes
    assert_same_volume(ct, intact)


def test_exact_duplicate_file_is_dropped_with_a_note(intact, tmp_path):
    folder = write_series(tmp_path / "copy", intact_slices())
    shutil.copy(folder / "slice020.dcm", folder / "slice020 copy.dcm")
    ct = read_ct(folder)
    assert any("duplicate" in n and "slice020" in n for n in ct.notes), ct.notes
    assert_same_volume(ct, intact)


def test_unreadable_slice_at_the_end_leaves_positions_unchanged(intact, tmp_path):
    folder = write_series(tmp_path / "end", intact_slices())
    last = folder / f"slice{N_SLICES - 1:03d}.dcm"
    last.write_bytes(last.read_bytes()[:-2000])
    ct = read_ct(folder)
    assert any("unreadable" in n and last.name in n and "truncated" in n for n in ct.notes), ct.notes
    np.testing.assert_array_equal(ct.array, intact.array[:-1])
    assert (ct.spacing, ct.origin, ct.direction) == (intact.spacing, intact.origin, intact.direction)


def test_missing_modality_is_read_as_ct_with_a_note(intact, tmp_path):
    slices = intact_slices()
    for s in slices:
        s["modality"] = None
    ct = read_ct(write_series(tmp_path / "nomod", slices))
    assert any("no Modality" in n for n in ct.notes), ct.notes
    assert_same_volume(ct, intact)


# ----------------------------------------------------------------------------------------------------------
# Refused: one line naming the problem and the slices


def _duplicate_position(folder: Path) -> Path:
    slices = intact_slices()
    wrong = dict(copy.deepcopy(slices[30]), name="misfiled.dcm", instance=99, sop=f"{SERIES_UID}.99",
                 position=slices[20]["position"], sample_at=slices[30]["position"])
    return write_series(folder, slices + [wrong])


def _missing(count: int):
    def make(folder: Path) -> Path:
        return write_series(folder, [s for k, s in enumerate(intact_slices()) if not 15 <= k < 15 + count])
    return make


def _truncated(folder: Path) -> Path:
    write_series(folder, intact_slices())
    f = folder / "slice020.dcm"
    f.write_bytes(f.read_bytes()[:-1500])
    return folder


def _no_pixel_data(folder: Path) -> Path:
    write_series(folder, intact_slices())
    ds = pydicom.dcmread(folder / "slice020.dcm")
    del ds.PixelData
    ds.save_as(folder / "slice020.dcm")
    return folder


def _modality_mr(folder: Path) -> Path:
    slices = intact_slices()
    for s in slices:
        s["modality"] = "MR"
    return write_series(folder, slices)


def _mixed_orientation(folder: Path) -> Path:
    slices = intact_slices()
    for s in slices[::2]:  # every other slice sagittal: two interleaved volumes
        s["row"], s["col"] = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])
    return write_series(folder, slices)


def _mixed_sizes(folder: Path) -> Path:
    slices = intact_slices()
    for s in slices[10:20]:
        s["rows"] = 48
    return write_series(folder, slices)


def _no_position(folder: Path) -> Path:
    write_series(folder, intact_slices())
    ds = pydicom.dcmread(folder / "slice020.dcm")
    del ds.ImagePositionPatient
    ds.save_as(folder / "slice020.dcm")
    return folder


REFUSED = {  # case: (how to make it, what the message must say)
    "duplicate position": (_duplicate_position, [r"different slices at the same position", r"at 0\.00 mm",
                                                 r"slice020\.dcm \(instance 21\)", r"misfiled\.dcm \(instance 99\)"]),
    "ten missing slices": (_missing(10), [r"gap .*27\.50 mm between slice014\.dcm \(instance 15\) at -15\.00 mm "
                                          r"and slice025\.dcm \(instance 26\) at 12\.50 mm"]),
    "one missing slice": (_missing(1), [r"gap .*5\.00 mm between slice014\.dcm \(instance 15\) .* and "
                                        r"slice016\.dcm \(instance 17\)"]),
    "truncated slice": (_truncated, [r"gap .*left out as unreadable: slice020\.dcm \(instance 21\) at 0\.00 mm: "
                                     r"pixel data truncated"]),
    "slice without pixel data": (_no_pixel_data, [r"gap .*slice020\.dcm \(instance 21\) at 0\.00 mm: has no "
                                                  r"pixel data"]),
    "modality MR": (_modality_mr, [r"is Modality MR, not CT \(40 of 40 slices"]),
    "mixed sizes": (_mixed_sizes, [r"mixes slice sizes \(30 of 56 x 64, 10 of 48 x 64; other than 56 x 64: "
                                   r"slice010\.dcm \(instance 11\)"]),
    "slice without position": (_no_position, [r"without ImagePositionPatient.*slice020\.dcm \(instance 21\)"]),
    "mixed orientation": (_mixed_orientation, [r"mixes slice orientations", r"20 slices \(0, 1, 0, 0, 0, -1\)",
                                               r"20 slices \(1, 0, 0, 0, 1, 0\)"]),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_naming_the_problem_and_the_slices(tmp_path, case):
    make, fragments = REFUSED[case]
    folder = make(tmp_path / "series")
    with pytest.raises(InputError) as e:
        read_ct(folder)
    message = str(e.value)
    assert message.startswith(f"{folder}: DICOM series ") and "\n" not in message
    for fragment in fragments:
        assert re.search(fragment, message), (fragment, message)


@pytest.mark.parametrize("case", list(REFUSED))
def test_cli_detect_refuses_with_exit_2_and_writes_nothing(tmp_path, capsys, case):
    """Same shape as Testing/test_bad_input_corpus.py: exit status, message fragment, nothing on disk."""
    make, fragments = REFUSED[case]
    folder = make(tmp_path / "series")
    out = tmp_path / "out"
    status = cli_main(["detect", str(folder), "-o", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2
    assert "error" in err and str(folder) in err
    assert re.search(fragments[0], err), err
    assert not out.exists() or not any(out.rglob("*"))
