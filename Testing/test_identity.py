"""What a scan is called: DICOM patient ID and series (never the patient's name), else the file name."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from resmtnet.io.ctio import CTVolume, read_ct, write_volume
from resmtnet.io.identity import display_names


def _write_dicom_series(folder, tags):
    """A small CT series, one file per slice, with the given DICOM tags."""
    rng = np.random.default_rng(0)
    volume = sitk.GetImageFromArray(rng.integers(-1000, 400, size=(10, 16, 16)).astype(np.int16))
    volume.SetSpacing((0.8, 0.8, 2.0))
    folder.mkdir()
    for z in range(volume.GetDepth()):
        image = volume[:, :, z]
        for key, value in {**tags, "0020|0013": str(z + 1), "0008|0060": "CT",
                           "0020|0032": f"0\\0\\{2.0 * z}", "0020|0037": "1\\0\\0\\0\\1\\0"}.items():
            image.SetMetaData(key, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"{z:03d}.dcm"))
        writer.Execute(image)


def test_dicom_series_is_named_by_patient_id_and_series_never_the_patients_name(tmp_path):
    tags = {"0010|0010": "Doe^Jane", "0010|0020": "PID-42", "0020|0011": "7", "0008|103e": "Chest 1 mm",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1", "0020|000e": "1.2.826.0.1.3680043.2.1125.2"}
    _write_dicom_series(tmp_path / "dicom", tags)
    ct = read_ct(tmp_path / "dicom")
    assert ct.identity["patient_id"] == "PID-42"
    assert "Doe" not in repr(ct.identity) and "Jane" not in repr(ct.identity)
    names = display_names(ct.identity)
    assert (names.patient, names.volume) == ("PID-42", "Series 7 Chest 1 mm")
    assert "Doe" not in names.title


def test_volume_file_is_named_by_its_file_name(tmp_path):
    ct = CTVolume(np.random.default_rng(1).normal(-500, 300, (10, 12, 14)).astype(np.float32), (1.0, 1.0, 1.0),
                  (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), "uid", "memory")
    write_volume(ct, tmp_path / "chest scan.nrrd")
    names = display_names(read_ct(tmp_path / "chest scan.nrrd").identity)
    assert (names.patient, names.volume) == ("chest scan.nrrd", "chest scan.nrrd")
    assert display_names({}, fallback="1.2.3").volume == "1.2.3"  # a CT from memory: its series UID


def test_real_ct_is_named_by_its_patient_id(lidc_dir):
    names = display_names(read_ct(lidc_dir / "dicom").identity)
    assert names.patient == "LIDC-IDRI-0001" and names.volume.startswith("Series ")
