"""DICOM outputs (``detect --dicom-out``): the SEG and the TID 1500 SR, read back with highdicom and pydicom.

A tiny synthetic chest (Testing/synthetic_chest.py) is written as a DICOM series with pydicom, with a patient
and a study; its detection is made by hand (two nodules with masks, one without a voxel) or by the tiny
untrained checkpoint through the command. What is checked: the segments and their labels and codes, each
segment frame's source slice (SOPInstanceUID) and pixels against the label map, the SR's measurements against
nodules.csv, the references to the segments and the source slices, the copied patient and study identity, and
the refusals (a volume file, a batch, a resampled series). LIDC-IDRI-0001 runs the shipped model (slow; skipped
where the shared data is absent), and is checked by dciodvfy where dicom3tools is installed.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from conftest_slicer import *  # noqa: F403  (the fixture untrained_checkpoint)
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from resmtnet.cli.cli import main as cli_main
from resmtnet.detect.nodules import Detection, Nodule, write_nodules_csv
from resmtnet.detect.pipeline import detect_ct
from resmtnet.io.ctio import CTVolume, read_ct
from resmtnet.io.fileset import read_set
from resmtnet.model.model_io import load_model
from resmtnet.report.dicom_export import (
    DISCLAIMER,
    LUNG_RADS_CATEGORY,
    SEG_FILE,
    SR_FILE,
    read_source_series,
    write_dicom_outputs,
)
from resmtnet.util.errors import InputError
from synthetic_chest import tiny_chest, tiny_detection

IDENTITY = dict(PatientID="RESMTNET-34", PatientName="Phantom^Tiny^Chest", PatientBirthDate="19500102",
                PatientSex="F", StudyDate="20260315", StudyTime="093000", AccessionNumber="ACC3401", StudyID="S34",
                ReferringPhysicianName="Doctor^Referring")
STUDY_KEYS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
              "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName")


def write_series(ct: CTVolume, folder: Path, z_mm: list[float] | None = None, study_date: str | None = None) -> Path:
    """``ct`` as a series of axial CT slices (files named out of order); ``z_mm``: each slice's distance from the
    first along z (default: evenly ``ct.spacing[2]`` apart); ``study_date``: StudyDate (YYYYMMDD), none if None."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    nz = ct.array.shape[0]
    z_mm = z_mm if z_mm is not None else [k * ct.spacing[2] for k in range(nz)]
    for k in range(nz):
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        for key, value in IDENTITY.items():
            setattr(ds, key, value)
        ds.Modality, ds.SeriesNumber, ds.Manufacturer = "CT", 3, "synthetic"
        if study_date is not None:
            ds.StudyDate = study_date
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in np.array(ct.origin) + [0.0, 0.0, z_mm[k]]]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = [f"{ct.spacing[1]}", f"{ct.spacing[0]}"]
        ds.SliceThickness = f"{ct.spacing[2]}"
        ds.Rows, ds.Columns = ct.array.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
        ds.PixelData = np.round(ct.array[k] + 1024).astype("<i2").tobytes()
        ds.save_as(folder / f"{(k * 7) % nz:03d}.dcm", enforce_file_format=True)  # names not in slice order
    return folder


@pytest.fixture
def chest_series(tmp_path) -> Path:
    ct = tiny_chest(34)
    ct.origin = tuple(round(v, 2) for v in ct.origin)  # as a header's decimal string holds it
    return write_series(ct, tmp_path / "series")


def three_nodules(ct: CTVolume) -> Detection:
    """:func:`tiny_detection`'s nodule in the left lung, a second in the right lung (other sizes, Lung-RADS 3),
    and a third whose mask lost every voxel to the first (it gets no segment)."""
    det = tiny_detection(ct)
    z, y, x = np.ogrid[tuple(slice(0, s) for s in ct.array.shape)]
    second = ((x - 33.5) ** 2 + (y - 20.5) ** 2 + (z - 14.0) ** 2 <= 1.2 ** 2) & (det.labels == 0)
    det.labels[second] = 2
    centre = ct.index_to_world(np.array([33.5, 20.5, 14.0]))
    det.nodules.append(Nodule(number=2, center_lps=tuple(float(v) for v in centre), probability=0.7,
                              diameter_mm=6.5, malignancy=0.05, volume_mm3=float(second.sum()) * 27.0))
    det.nodules.append(Nodule(number=3, center_lps=det.nodules[0].center_lps, probability=0.4, diameter_mm=4.0,
                              malignancy=0.2, volume_mm3=0.0))
    return det


def source_headers(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]


def csv_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {f"N{k}": row for k, row in enumerate(csv.DictReader(f), 1)}


def text_items(items) -> list[str]:
    """Every TEXT value in an SR content tree."""
    found = []
    for item in items:
        if item.ValueType == "TEXT":
            found.append(item.TextValue)
        found += text_items(item.get("ContentSequence", []))
    return found


def read_groups(sr_path: Path) -> dict[str, dict]:
    """Per tracking identifier (``Nodule N<k>``): its measurements {meaning: (value, unit)}, Lung-RADS, centre,
    and referenced segment (number, source SOPInstanceUIDs), read with highdicom."""
    sr = hd.sr.srread(sr_path)
    found: dict[str, dict] = {}
    for g in sr.content.get_volumetric_roi_measurement_groups() + sr.content.get_planar_roi_measurement_groups():
        entry = found.setdefault(g.tracking_identifier, {"measurements": {}})
        assert g.finding_type == codes.SCT.Nodule
        assert [s.value for s in g.finding_sites] == [codes.SCT.Lung]
        for m in g.get_measurements():
            entry["measurements"][m.name.meaning] = (m.value, m.unit.value)
        for q in g.get_qualitative_evaluations(name=hd.sr.CodedConcept(*LUNG_RADS_CATEGORY)):
            entry["lung_rads"] = q.value.meaning.removeprefix("Lung-RADS v2022 category ")
        if isinstance(g, hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations):
            ref = g.referenced_segment
            entry["segment"] = (ref.referenced_segment_numbers[0] if hasattr(ref, "referenced_segment_numbers")
                                else None, ref.referenced_sop_instance_uid,
                                [s.referenced_sop_instance_uid for s in ref.source_images_for_segmentation])
        else:
            entry["centre"] = np.asarray(g.roi.value)[0]
            entry["centre_for"] = g.roi.frame_of_reference_uid
    return found


def check_outputs(dicom_dir: Path, csv_path: Path, series_dir: Path, labels: np.ndarray, detection: Detection):
    """Everything the SEG and SR must say about ``detection`` made on the series in ``series_dir``."""
    ct = read_ct(series_dir)
    sources = {h.SOPInstanceUID: h for h in source_headers(series_dir)}
    # the CT's z index k is the slice with the k-th position along z
    by_z = sorted(sources.values(), key=lambda h: float(h.ImagePositionPatient[2]))
    assert len(by_z) == ct.array.shape[0]
    z_of = {h.SOPInstanceUID: k for k, h in enumerate(by_z)}
    first = by_z[0]
    rows = csv_rows(csv_path)
    with_voxels = [n for n in detection.nodules if (labels == n.number).any()]

    seg = hd.seg.segread(dicom_dir / SEG_FILE)
    assert seg.number_of_segments == len(with_voxels)
    for k, n in enumerate(with_voxels, 1):
        d = seg.get_segment_description(k)
        assert d.segment_label == f"N{n.number}"
        assert d.segmented_property_type == codes.SCT.Nodule
        assert d.segmented_property_category == codes.SCT.MorphologicallyAbnormalStructure
        assert [r for r in d.anatomic_regions] == [codes.SCT.Lung]
        assert d.tracking_id == f"Nodule N{n.number}"
    for key in STUDY_KEYS:
        assert str(seg.get(key, "")) == str(first.get(key, "")), key
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    # each frame: which source slice and which segment (pydicom, no highdicom logic), and its pixels
    pixels = seg.pixel_array if seg.NumberOfFrames > 1 else seg.pixel_array[None]
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert int(seg.NumberOfFrames) == sum(int((labels == n.number).any(axis=(1, 2)).sum()) for n in with_voxels)
    for frame, groups in enumerate(seg.PerFrameFunctionalGroupsSequence):
        identification = groups.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        k = int(identification[0].ReferencedSegmentNumber)
        (source,) = groups.DerivationImageSequence[0].SourceImageSequence
        z = z_of[source.ReferencedSOPInstanceUID]
        np.testing.assert_array_equal(groups.PlanePositionSequence[0].ImagePositionPatient,
                                      sources[source.ReferencedSOPInstanceUID].ImagePositionPatient)
        np.testing.assert_array_equal(pixels[frame].astype(bool), labels[z] == with_voxels[k - 1].number)
    # the same through highdicom's reader: the whole label map, slice by source slice
    read = seg.get_pixels_by_source_instance([h.SOPInstanceUID for h in by_z], assert_missing_frames_are_empty=True)
    for k, n in enumerate(with_voxels, 1):
        np.testing.assert_array_equal(read[..., k - 1].astype(bool), labels == n.number)

    sr_ds = pydicom.dcmread(dicom_dir / SR_FILE)
    for key in STUDY_KEYS:
        assert str(sr_ds.get(key, "")) == str(first.get(key, "")), key
    assert DISCLAIMER in text_items(sr_ds.ContentSequence)
    evidence = {s.ReferencedSOPInstanceUID for e in sr_ds.CurrentRequestedProcedureEvidenceSequence
                for series in e.ReferencedSeriesSequence for s in series.ReferencedSOPSequence}
    assert set(sources) | {seg.SOPInstanceUID} == evidence
    groups = read_groups(dicom_dir / SR_FILE)
    assert sorted(groups) == sorted(f"Nodule N{n.number}" for n in detection.nodules)
    for n in detection.nodules:
        g, row = groups[f"Nodule N{n.number}"], rows[f"N{n.number}"]
        m = g["measurements"]
        assert m["Volume"][1] == "mm3" and abs(m["Volume"][0] - float(row["volume_mm3"])) <= 0.05 + 1e-9
        assert m["Diameter"][1] == "mm" and abs(m["Diameter"][0] - float(row["diameter_mm"])) <= 0.005 + 1e-9
        assert abs(m["Probability of cancer"][0] - float(row["malignancy"])) <= 0.00005 + 1e-9
        assert g["lung_rads"] == row["lung_rads"]
        centre = [float(row[c]) for c in ("coordX", "coordY", "coordZ")]
        np.testing.assert_allclose(g["centre"], centre, atol=2e-3)
        assert g["centre_for"] == first.FrameOfReferenceUID
        if n in with_voxels:
            number, seg_uid, slices = g["segment"]
            assert seg_uid == seg.SOPInstanceUID
            assert number in (None, with_voxels.index(n) + 1)
            on = np.flatnonzero((labels == n.number).any(axis=(1, 2)))
            assert sorted(slices) == sorted(by_z[z].SOPInstanceUID for z in on)
        else:
            assert "segment" not in g
    return seg, sr_ds


def test_seg_and_sr_of_three_nodules_read_back_right(chest_series, tmp_path):
    ct = read_ct(chest_series)
    det = three_nodules(ct)
    out = tmp_path / "dicom"
    files = write_dicom_outputs(read_source_series(chest_series, ct), ct, det, out)
    assert sorted(files) == [SEG_FILE, SR_FILE]
    assert sorted(read_set(out, verify=True)["files"]) == [SEG_FILE, SR_FILE]
    write_nodules_csv(tmp_path / "nodules.csv", det.seriesuid, det.nodules)
    seg, sr = check_outputs(out, tmp_path / "nodules.csv", chest_series, det.labels, det)
    assert seg.number_of_segments == 2  # N3 has no voxel: no segment, its measurements with its centre
    assert sr.SeriesInstanceUID not in (seg.SeriesInstanceUID, ct.seriesuid)


def test_no_findings_write_a_report_saying_so_and_drop_the_previous_segmentation(chest_series, tmp_path):
    ct = read_ct(chest_series)
    series = read_source_series(chest_series, ct)
    out = tmp_path / "dicom"
    write_dicom_outputs(series, ct, tiny_detection(ct), out)
    assert (out / SEG_FILE).exists()
    empty = Detection(ct.seriesuid, [], np.zeros(ct.array.shape, np.uint16), ct.spacing, ct.origin, ct.direction)
    assert sorted(write_dicom_outputs(series, ct, empty, out)) == [SR_FILE]
    assert not (out / SEG_FILE).exists()  # the set is the new one: no stale segmentation beside the new report
    sr = hd.sr.srread(out / SR_FILE)
    assert sr.content.get_volumetric_roi_measurement_groups() == []
    assert "No pulmonary nodule was found." in text_items(sr.ContentSequence)
    assert DISCLAIMER in text_items(sr.ContentSequence)
    assert sr.PatientID == IDENTITY["PatientID"]


def test_detect_command_writes_seg_and_sr_matching_nodules_csv(chest_series, tmp_path, untrained_checkpoint):
    out, dicom = tmp_path / "out", tmp_path / "dicom"
    status = cli_main(["detect", str(chest_series), "-o", str(out), "--dicom-out", str(dicom), "--model",
                       str(untrained_checkpoint), "--no-tta", "--no-slicer-files", "--max-findings", "3", "--quiet"])
    assert status == 0
    report = json.loads((out / "report.json").read_text())
    nodules = [Nodule.from_dict(d) for d in report["nodules"]]
    assert nodules, "the untrained checkpoint reports findings on any CT"
    # the label map the command had: the same detection again, in this process (the CPU path is deterministic)
    again = detect_ct(read_ct(chest_series), model=load_model(untrained_checkpoint), device="cpu", tta=False,
                      max_findings=3)
    assert [n.to_dict() for n in again.nodules] == [n.to_dict() for n in nodules]
    check_outputs(dicom, out / "nodules.csv", chest_series, again.labels, again)
    assert read_set(dicom)["input"] == str(chest_series.resolve())


def test_volume_file_input_is_refused_before_the_model_is_loaded(tmp_path):
    volume = tmp_path / "chest.nrrd"
    import SimpleITK as sitk

    sitk.WriteImage(tiny_chest(1).to_sitk(), str(volume))
    out, dicom = tmp_path / "out", tmp_path / "dicom"
    status = cli_main(["detect", str(volume), "-o", str(out), "--dicom-out", str(dicom),
                       "--model", str(tmp_path / "no-such-model.pt"), "--quiet"])
    assert status == 2
    assert not out.exists() and not dicom.exists()


def test_message_for_a_volume_file_is_one_line_naming_it(tmp_path, capsys):
    volume = tmp_path / "chest.nii.gz"
    volume.write_bytes(b"not read")
    assert cli_main(["detect", str(volume), "-o", str(tmp_path / "o"), "--dicom-out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(volume) in err and "DICOM series folder" in err


def test_batch_with_dicom_out_is_refused(chest_series, tmp_path, capsys):
    status = cli_main(["detect", str(chest_series), str(chest_series), "-o", str(tmp_path / "o"),
                       "--dicom-out", str(tmp_path / "d")])
    assert status == 2
    assert "--dicom-out works on one DICOM series" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "d").exists()


def test_resampled_series_is_refused_before_detection(tmp_path, untrained_checkpoint, capsys):
    ct = tiny_chest(35)
    ct.origin = tuple(round(v, 2) for v in ct.origin)
    nz = ct.array.shape[0]
    uneven = [k * 3.0 if k <= 20 else 60.0 + (k - 20) * 2.0 for k in range(nz)]  # 3 mm, then 2 mm apart
    folder = write_series(ct, tmp_path / "uneven", uneven)
    read = read_ct(folder)
    with pytest.raises(InputError, match="resampled onto a new grid"):
        read_source_series(folder, read)
    out, dicom = tmp_path / "out", tmp_path / "dicom"
    status = cli_main(["detect", str(folder), "-o", str(out), "--dicom-out", str(dicom), "--model",
                       str(untrained_checkpoint), "--no-tta", "--no-slicer-files", "--quiet"])
    assert status == 2
    assert "resampled onto a new grid" in capsys.readouterr().err
    assert not dicom.exists() and read_set(out) is None


@pytest.mark.slow
def test_lidc_0001_seg_and_sr_with_the_shipped_model(lidc_dir, tmp_path):
    series = lidc_dir / "dicom"
    out, dicom = tmp_path / "out", tmp_path / "dicom"
    status = cli_main(["detect", str(series), "-o", str(out), "--dicom-out", str(dicom), "--no-tta",
                       "--no-slicer-files", "--quiet"])
    assert status == 0
    report = json.loads((out / "report.json").read_text())
    nodules = [Nodule.from_dict(d) for d in report["nodules"]]
    assert nodules, "the shipped model finds LIDC-IDRI-0001's nodule"
    seg = hd.seg.segread(dicom / SEG_FILE)
    by_z = sorted(source_headers(series), key=lambda h: float(h.ImagePositionPatient[2]))
    stack = seg.get_pixels_by_source_instance([h.SOPInstanceUID for h in by_z], assert_missing_frames_are_empty=True)
    labels = np.zeros(stack.shape[:3], np.uint16)
    for k in range(stack.shape[-1]):
        labels[stack[..., k] > 0] = int(seg.get_segment_description(k + 1).segment_label.removeprefix("N"))
    # the SEG's voxels are the volume the CSV reports, on the CT's grid
    voxel_mm3 = float(np.prod(read_ct(series).spacing))
    for n in nodules:
        assert abs((labels == n.number).sum() * voxel_mm3 - n.volume_mm3) <= 0.05 + 1e-6
    check_outputs(dicom, out / "nodules.csv", series, labels, Detection(report["input"]["seriesuid"], nodules, labels))
    # each segment lies about its nodule's centre: its centroid, placed by the source slices' own positions
    ct = read_ct(series)
    for n in nodules:
        zyx = np.argwhere(labels == n.number).mean(axis=0)
        centroid = ct.index_to_world(zyx[::-1])
        assert np.linalg.norm(centroid - np.array(n.center_lps)) < max(n.diameter_mm / 2, 2 * ct.spacing[2])
    annotated = np.array(json.loads((lidc_dir / "annotations.json").read_text())["nodules"][0]["centre"])
    centres = read_groups(dicom / SR_FILE)
    assert min(np.linalg.norm(g["centre"] - annotated) for g in centres.values()) < 10.0
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dciodvfy (Debian's dicom3tools) is not installed: the SEG and SR were not checked by it")
    for name in (SEG_FILE, SR_FILE):
        result = subprocess.run([dciodvfy, str(dicom / name)], capture_output=True, text=True, timeout=120)
        errors = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.startswith("Error")]
        assert errors == [], f"dciodvfy on {name}: {errors}"
