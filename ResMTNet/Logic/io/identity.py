"""What a scan is called where a reader sees it: the subject hierarchy, node names, picture titles.

From a DICOM series: the patient ID, the study's description and date, the series number and description
(never the patient's name, which is not even read). From a volume file: its file name. The reader
(:func:`read_identity`) fills :attr:`CTVolume.identity <resmtnet.io.ctio.CTVolume.identity>`; :func:`display_names`
turns it into the names shown.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

# DICOM tags read (group|element as ITK names them). The patient's name (0010|0010) is deliberately absent.
DICOM_TAGS = {
    "patient_id": "0010|0020",
    "study_description": "0008|1030",
    "study_date": "0008|0020",
    "series_number": "0020|0011",
    "series_description": "0008|103e",
}
MAX_TEXT = 64  # DICOM LO is 64 characters; longer text is not a name


@dataclass(frozen=True)
class DisplayNames:
    """Names for one scan's patient, study and volume (series) in the scene and in pictures."""

    patient: str
    study: str
    volume: str

    @property
    def title(self) -> str:
        """One line for a picture's title: patient and series."""
        return self.volume if self.patient in self.volume else f"{self.patient} · {self.volume}"


def _clean(text: str) -> str:
    return " ".join(str(text).replace("\x00", " ").split())[:MAX_TEXT]


def dicom_identity(series_file: str | Path) -> dict[str, str]:
    """The identity tags of a DICOM series, read from the header of one of its files."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(series_file))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return {}
    return {key: _clean(reader.GetMetaData(tag)) for key, tag in DICOM_TAGS.items()
            if reader.HasMetaDataKey(tag) and _clean(reader.GetMetaData(tag))}


def read_identity(path: str | Path, series_file: str | Path | None = None) -> dict[str, str]:
    """Identity of the scan read from ``path``: for a series folder, the DICOM tags of ``series_file`` (one file of
    the series read), else the file name."""
    path = Path(path)
    if path.is_dir():
        identity = dicom_identity(series_file) if series_file is not None else {}
        identity.setdefault("file_name", path.name)
        return identity
    return {"file_name": path.name}


def display_names(identity: dict[str, str], fallback: str = "CT") -> DisplayNames:
    """Patient, study and volume names: from DICOM tags where there are some, else from the file name."""
    file_name = identity.get("file_name") or fallback
    patient = identity.get("patient_id") or file_name
    study = " ".join(v for v in (identity.get("study_description"), _date(identity.get("study_date"))) if v)
    number, description = identity.get("series_number"), identity.get("series_description")
    if number or description:
        volume = " ".join(v for v in (f"Series {number}" if number else "", description) if v)
    else:
        volume = file_name
    return DisplayNames(patient=patient, study=study or "Study", volume=volume)


def _date(dicom_date: str | None) -> str:
    """YYYYMMDD as YYYY-MM-DD (anything else as it is)."""
    if dicom_date and len(dicom_date) == 8 and dicom_date.isdigit():
        return f"{dicom_date[:4]}-{dicom_date[4:6]}-{dicom_date[6:]}"
    return dicom_date or ""


def parse_dicom_date(text: str | None) -> _dt.date | None:
    """A DICOM DA value (YYYYMMDD) as a date; None where it is empty or not a date."""
    try:
        return _dt.datetime.strptime((text or "").strip(), "%Y%m%d").date()
    except ValueError:
        return None
