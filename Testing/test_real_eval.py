"""`resmtnet evaluate --real`: cases found, truth read (rows and RT structure sets), findings ranked and judged."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from resmtnet.cli.cli import main
from resmtnet.data.phantom import generate_phantom
from resmtnet.evaluate.real_eval import find_cases, read_truth
from resmtnet.evaluate.rtstruct import find_rtstructs, roi_mask
from resmtnet.io.ctio import CTVolume, read_ct, write_volume
from resmtnet.util.errors import InputError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"


def write_sphere_rtstruct(path: Path, ct: CTVolume, rois: dict[str, tuple[np.ndarray, float]]) -> None:
    """An RT structure set whose ROIs are spheres (centre LPS, radius mm) outlined, as a clinic does, by one
    closed 48-point polygon on each axial plane of ``ct`` that cuts them."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = RT_STRUCTURE_SET_STORAGE, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.StructureSetROISequence, ds.ROIContourSequence = Sequence(), Sequence()
    planes = ct.index_to_world(np.array([[0.0, 0.0, k] for k in range(ct.array.shape[0])]))[:, 2]
    angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    for number, (name, (centre, radius)) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName = number, name
        ds.StructureSetROISequence.append(roi)
        contours = Sequence()
        for z in planes:
            r = radius**2 - (z - centre[2]) ** 2
            if r <= 0:
                continue
            c = Dataset()
            c.ContourGeometricType = "CLOSED_PLANAR"
            pts = np.c_[centre[0] + np.sqrt(r) * np.cos(angles), centre[1] + np.sqrt(r) * np.sin(angles),
                        np.full(len(angles), z)]
            c.NumberOfContourPoints = len(pts)
            c.ContourData = [f"{v:.4f}" for v in pts.ravel()]
            contours.append(c)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ContourSequence = contours
        ds.ROIContourSequence.append(item)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)


@pytest.fixture(scope="module")
def phantom_ct():
    return generate_phantom(0, small=True).ct


def test_an_rt_structure_is_filled_on_the_ct_grid_however_the_ct_is_stored(tmp_path, phantom_ct):
    """A 30 mm sphere outlined plane by plane comes back with its centre and equivalent diameter (partial
    planes at its poles: within 4 %), its longest axial diameter that of its largest plane, also on the same CT
    stored with its axes permuted; an ROI the file lacks is named in the error."""
    centre = phantom_ct.index_to_world(np.array(phantom_ct.shape_xyz) / 2.0)
    path = tmp_path / "rtstruct" / "rs.dcm"
    write_sphere_rtstruct(path, phantom_ct, {"GTV": (centre, 15.0)})
    assert find_rtstructs(tmp_path) == [path]
    permuted = CTVolume.from_sitk(sitk.PermuteAxes(phantom_ct.to_sitk(), [2, 0, 1]))
    for ct in (phantom_ct, permuted):
        m = roi_mask(path, "GTV", ct)
        assert np.linalg.norm(np.subtract(m.centre_lps, centre)) < 0.5, m
        assert m.equivalent_diameter_mm == pytest.approx(30.0, rel=0.04), m
        assert m.longest_axial_mm == pytest.approx(30.0, abs=2 * max(ct.spacing)), m
    with pytest.raises(InputError, match="no ROI named 'Tumour'.*GTV"):
        roi_mask(path, "Tumour", phantom_ct)


def _phantom_case(folder: Path, seed: int) -> list:
    ph = generate_phantom(seed, small=True)
    folder.mkdir(parents=True)
    write_volume(ph.ct, folder / "ct.nrrd")
    with open(folder / "annotations.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "source"])
        for n in ph.nodules:
            w.writerow([ph.ct.seriesuid, *n.center_lps, n.diameter_mm, "phantom"])
    return ph.nodules


@pytest.mark.slow
def test_evaluate_real_on_a_folder_of_phantom_cases(tmp_path, capsys):
    """Two phantom cases, one of them with an RT structure set for one more lesion: every lesion listed with
    the rank of the first finding that hits it (none before it does), the findings at or above the threshold
    that hit nothing listed per scan, and the RT lesion measured on its contours."""
    cases = tmp_path / "cases"
    truth = {"a": _phantom_case(cases / "a", 0), "b": _phantom_case(cases / "b", 3)}
    ct = read_ct(cases / "b" / "ct.nrrd")
    rt_centre = np.asarray(truth["b"][0].center_lps)  # the phantom's first nodule, outlined a second time
    write_sphere_rtstruct(cases / "b" / "rtstruct" / "rs.dcm", ct, {"Lesion": (rt_centre, 6.0)})
    with open(cases / "b" / "annotations.csv", "a", newline="") as f:
        csv.writer(f).writerow(["", "", "", "", "", "rtstruct Lesion"])
    (cases / "notes").mkdir()  # a folder without a CT is not a case
    out = tmp_path / "out"
    assert main(["evaluate", "--real", str(cases), "--no-tta", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "real.json").read_text())
    assert [c["case"] for c in report["cases"]] == ["a", "b"]
    assert (out / "real.md").read_text().strip() in printed
    threshold = report["inputs"]["threshold"]
    for case in report["cases"]:
        lesions = case["lesions"]
        assert len(lesions) == len(truth[case["case"]]) + (case["case"] == "b")
        findings = case["findings"]
        assert [f["rank"] for f in findings] == list(range(1, len(findings) + 1))
        assert [f["probability"] for f in findings] == sorted((f["probability"] for f in findings), reverse=True)
        hit_any = set()
        for r in lesions:
            radius = r["lesion"]["diameter_mm"] / 2
            d = [np.linalg.norm(np.subtract(f["center_lps"], r["lesion"]["centre_lps"])) for f in findings]
            hits = [i for i, di in enumerate(d) if di <= radius]
            hit_any.update(hits)
            if not hits:
                assert r["rank"] is None
                continue
            assert r["rank"] == hits[0] + 1
            assert r["distance_mm"] == pytest.approx(d[hits[0]], abs=0.02)
            assert r["size_error"] == pytest.approx(
                findings[hits[0]]["diameter_mm"] / r["lesion"]["diameter_mm"] - 1, abs=0.002)
        others = [f["rank"] for i, f in enumerate(findings) if f["probability"] >= threshold and i not in hit_any]
        assert [f["rank"] for f in case["others_at_threshold"]] == others
        # the phantoms' nodules (7-12 mm, inside the lungs) are found by the shipped model
        assert sum(r["rank"] is not None for r in lesions) >= len(lesions) - 1, lesions
    rt = report["cases"][1]["lesions"][-1]["lesion"]
    assert rt["name"] == "Lesion" and rt["source"] == "rs.dcm mask"
    assert np.linalg.norm(np.subtract(rt["centre_lps"], rt_centre)) < 0.5
    assert rt["diameter_mm"] == pytest.approx(12.0, rel=0.1)


def test_evaluate_real_says_what_a_case_lacks(tmp_path, capsys):
    """A case without truth, a truth file with words for numbers or naming an RT structure the case lacks, a list
    naming a missing folder: one line naming the file, before any detection, exit status 2, nothing written."""
    case = tmp_path / "c1"
    case.mkdir()
    write_volume(generate_phantom(1, small=True).ct, case / "ct.nrrd")
    out = tmp_path / "out"
    assert main(["evaluate", "--real", str(case), "-o", str(out)]) == 2
    assert "c1: has no annotations.csv" in capsys.readouterr().err
    truth = tmp_path / "truth"
    truth.mkdir()
    (truth / "c1.csv").write_text("coordX,coordY,coordZ,diameter_mm\n1,2,three,4\n")
    assert main(["evaluate", "--real", str(case), "--truth", str(truth), "-o", str(out)]) == 2
    assert "c1.csv: row 1 needs numbers" in capsys.readouterr().err
    (truth / "c1.csv").write_text("coordX,coordY,coordZ,diameter_mm,source\n,,,,rtstruct GTV\n")
    assert main(["evaluate", "--real", str(case), "--truth", str(truth), "-o", str(out)]) == 2
    assert "c1.csv: row 1 names RT structure 'GTV', but" in capsys.readouterr().err
    listing = tmp_path / "cases.txt"
    listing.write_text("# the cases\nc1\nmissing\n")
    assert main(["evaluate", "--real", str(listing), "-o", str(out)]) == 2
    assert "missing, which is not a folder" in capsys.readouterr().err
    assert not out.exists()
    (truth / "c1.csv").write_text("coordX,coordY,coordZ,diameter_mm\n1,2,3,4\n")
    assert [(c.name, c.truth_path) for c in find_cases(case, truth)] == [("c1", truth / "c1.csv")]


@pytest.mark.skipif(not (SHARED / "4D-Lung-113_HM10395" / "rtstruct").is_dir(),
                    reason=f"shared real CT not found at {SHARED}")
def test_real_rt_structures_agree_with_their_published_sizes():
    """4D-Lung 113_HM10395: the tumour and the nodal mass filled from the clinic's contours have the centres
    and equivalent diameters its README gives from the same contours by another route (contour-point
    centroids, within 2 mm; 68 ml and 6 ml, 50.6 and 23.1 mm)."""
    case = find_cases(SHARED / "4D-Lung-113_HM10395")[0]
    ct = read_ct(case.ct_path, int16=True)
    lesions = {les.name: les for les in read_truth(case, ct)}
    with open(case.truth_path, newline="") as f:
        rows = {r["source"].split()[-1]: r for r in csv.DictReader(f)}
    assert set(lesions) == {"Tumor_c40", "LN_c40"}
    for name, les in lesions.items():
        row = rows[name]
        assert np.linalg.norm(np.subtract(les.centre_lps, [float(row[k]) for k in ("coordX", "coordY", "coordZ")])
                              ) < 2.0, les
        assert les.diameter_mm == pytest.approx(float(row["diameter_mm"]), rel=0.02), les
    assert pydicom.dcmread(find_rtstructs(case.folder)[0]).Modality == "RTSTRUCT"


def test_evaluate_real_on_lidc_ranks_the_readers_nodule_first(lidc_dir, tmp_path):
    """LIDC-IDRI-0001 named in a list file: the readers' nodule is the first finding, within its radius and
    sized within 20 %. Without test-time augmentation (the command passes --tta on to detection as it is, and
    real.json says which ran): that the default detection ranks and sizes it so is checked on the same scan by
    Testing/test_detect.py, from the suite's one default detection of it."""
    listing = tmp_path / "cases.txt"
    listing.write_text(f"{lidc_dir}\n")
    out = tmp_path / "out"
    assert main(["evaluate", "--real", str(listing), "-o", str(out), "--no-tta"]) == 0
    written = json.loads((out / "real.json").read_text())
    assert written["inputs"]["test_time_augmentation"] is False and written["inputs"]["tta_passes"] == 1
    case = written["cases"][0]
    assert case["case"] == "LIDC-IDRI-0001"
    lesion = case["lesions"][0]
    assert lesion["rank"] == 1 and abs(lesion["size_error"]) <= 0.2, lesion
