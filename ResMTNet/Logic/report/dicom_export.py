"""Results back into the archive: a DICOM Segmentation and a TID 1500 Structured Report for a DICOM input.

``nodules-seg.dcm`` (Segmentation, binary): one segment per nodule (Nodule in the lung, SNOMED CT), on the
source series' own frames; each frame names the source slice it lies on (its SOPInstanceUID).
``nodules-sr.dcm`` (Comprehensive 3D SR, TID 1500 measurement report), per nodule, with one tracking
identifier (also the segment's):

- a volumetric ROI group (TID 1411) referencing the nodule's segment and the source slices it covers, with
  its volume (mm3), diameter (mm), malignancy (probability of cancer, 0 to 1) and Lung-RADS category;
- a planar ROI group (TID 1410) whose region is the nodule's centre, a SCOORD3D point in the series'
  frame of reference (geometric purpose: centre).

The report's qualitative evaluations hold the research-use disclaimer (and, with no findings, say so; a
Segmentation can hold no empty segment, so then only the SR is written). Patient and study identity are
copied from the source series by highdicom, never made up.

The headers of the source series are read again here: the files and their order must be exactly the
frames the CT was read from. A series the reader resampled (gantry tilt, uneven spacing) has no source
slice for each frame, so it is refused, as are multi-frame CT files. The two files are published as one
set (:mod:`.fileset`): the folder holds the new SEG and SR, or the previous ones.
"""

from __future__ import annotations

import secrets
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..detect.nodules import Detection, Nodule
from ..io.ctio import CTVolume
from ..util.errors import InputError, OutputError

SEG_FILE = "nodules-seg.dcm"
SR_FILE = "nodules-sr.dcm"
DICOM_FILES = (SEG_FILE, SR_FILE)
SEG_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902
DISCLAIMER = ("Research use only, not for clinical diagnosis: findings of the ResMTNet nodule detector "
              f"(version {__version__}), not reviewed by a physician. Lung-RADS categories follow from each "
              "nodule's mean diameter alone, as for a solid nodule on a baseline scan: the nodule type is not "
              "determined.")
#: A CT whose origin or spacing lies further than this from the source slices' (mm) was not read from them.
_GEOMETRY_TOLERANCE_MM = 0.01
#: Local code values for the Lung-RADS categories (no standard coded value set is known to us).
LOCAL_SCHEME = "99RESMTNET"


@dataclass
class SourceSeries:
    """The source slices of a CT, in the order of its array's z axis, read without their pixels."""

    datasets: list  # pydicom Datasets, one per z index
    series_uid: str
    folder: Path
    #: Random per export: the tracking UIDs of one run's nodules are new, and the same in its SEG and SR.
    run_key: str = field(default_factory=lambda: secrets.token_hex(16))


def read_source_series(source: str | Path, ct: CTVolume) -> SourceSeries:
    """The DICOM slices ``ct`` was read from, one per z index; raises :class:`InputError` where its frames are
    not the source slices (a non-DICOM input, a resampled series, a multi-frame file, another geometry)."""
    import pydicom

    from ..io.ctio import find_dicom_series
    from ..io.dicom_series import plan_series

    folder = Path(source)
    if not folder.is_dir():
        raise InputError(f"{folder}: DICOM outputs (--dicom-out) need a DICOM series folder as the input")
    plan = ct.dicom
    if plan is None or Path(ct.source) != folder or plan.series_uid != ct.seriesuid:  # read elsewhere: look again
        found = [s for s in find_dicom_series(folder) if s.series_uid == ct.seriesuid]
        if not found:
            raise InputError(f"{folder}: the DICOM series {ct.seriesuid} the CT was read from is not found there "
                             "again")
        plan = plan_series(found[0].files, series_uid=ct.seriesuid, label=str(folder), folder=found[0].folder)
    sid = plan.series_uid
    refuse = f"{folder}: no DICOM outputs (--dicom-out) for this series:"
    if plan.positions is None:
        raise InputError(f"{refuse} it is one multi-frame file; DICOM outputs need a series of single slices")
    if not plan.even:
        raise InputError(f"{refuse} its slices were resampled onto a new grid (gantry tilt or uneven spacing), "
                         "so the results' frames are not its slices")
    nz, ny, nx = ct.array.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on odd values of the source; they are copied as they are
        datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in plan.files]
    first = datasets[0]
    step = (plan.positions[-1] - plan.positions[0]) @ plan.normal / max(1, len(plan.files) - 1)
    spacing = (float(first.PixelSpacing[1]), float(first.PixelSpacing[0]), float(step) if nz > 1 else ct.spacing[2])
    if (len(datasets) != nz or (int(first.Rows), int(first.Columns)) != (ny, nx)
            or not np.allclose(ct.origin, plan.positions[0], atol=_GEOMETRY_TOLERANCE_MM)
            or not np.allclose(ct.spacing, spacing, atol=_GEOMETRY_TOLERANCE_MM)):
        raise InputError(f"{refuse} the CT's grid ({nx} x {ny} x {nz} voxels) is not the grid of its "
                         f"{len(datasets)} slices of {first.Columns} x {first.Rows}")
    return SourceSeries(datasets=datasets, series_uid=sid, folder=folder)


def write_dicom_outputs(series: SourceSeries, ct: CTVolume, detection: Detection, outdir: str | Path
                        ) -> dict[str, Path]:
    """Write the SEG (when a nodule has voxels) and the SR into ``outdir`` as one set; returns them by name."""
    from ..io.fileset import StagedSet
    from .outputs import describe_output_error, input_key

    if detection.labels is None or detection.labels.shape != ct.array.shape:
        raise ValueError("the detection's label map is not on the CT's grid")
    segmented = segment_numbers(detection)
    seg = build_segmentation(series, detection) if segmented else None
    sr = build_report(series, detection, seg)
    outdir = Path(outdir)
    try:
        with StagedSet(outdir, replaces=DICOM_FILES) as stage:
            assert stage.path is not None
            if seg is not None:
                seg.save_as(stage.path / SEG_FILE, enforce_file_format=True)
            sr.save_as(stage.path / SR_FILE, enforce_file_format=True)
            names = stage.publish({"input": input_key(ct.source), "seriesuid": series.series_uid})
    except OSError as e:
        raise OutputError(describe_output_error(outdir, e)) from e
    return {name: outdir / name for name in names}


def segment_numbers(detection: Detection) -> dict[int, int]:
    """Segment number (1, 2, ... in the nodule list's order) of each nodule number whose label has voxels; a
    nodule without any (its mask all taken by a more probable neighbour) has no segment."""
    present = set(np.unique(detection.labels).tolist()) if detection.labels is not None else set()
    numbers = [n.number for n in detection.nodules if n.number in present]
    return {number: k for k, number in enumerate(numbers, 1)}


def _algorithm():
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.AlgorithmIdentificationSequence(name="ResMTNet", version=__version__,
                                              family=codes.cid7162.ArtificialIntelligence)


def _tracking_uid(series: SourceSeries, nodule: Nodule) -> str:
    """The nodule's UID in its segment and its SR groups."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[series.series_uid, series.run_key, str(nodule.number)])


def build_segmentation(series: SourceSeries, detection: Detection):
    """The Segmentation: one segment per nodule with voxels (:func:`segment_numbers`), labelled ``N<number>``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    numbers = segment_numbers(detection)
    lookup = np.zeros(int(detection.labels.max()) + 1, np.uint16)
    for number, k in numbers.items():
        lookup[number] = k
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=numbers[n.number], segment_label=f"N{n.number}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Nodule,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=_algorithm(),
            tracking_uid=_tracking_uid(series, n), tracking_id=f"Nodule N{n.number}",
            anatomic_regions=[codes.SCT.Lung])
        for n in detection.nodules if n.number in numbers]
    return hd.seg.Segmentation(
        source_images=series.datasets, pixel_array=lookup[detection.labels],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="ResMTNet", manufacturer_model_name="ResMTNet",
        software_versions=__version__, device_serial_number="none", content_label="NODULES",
        content_description="Pulmonary nodules found by ResMTNet (research use only)",
        series_description="ResMTNet nodules (research use)")


def build_report(series: SourceSeries, detection: Detection, seg=None):
    """The TID 1500 SR. Per nodule: a volumetric group (its segment, with the measurements) and a planar group
    (its centre); a nodule without a segment has the measurements in its centre's group."""
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["ResMTNet", __version__]), name="ResMTNet", manufacturer_name="ResMTNet",
        model_name="Res-MTNet")
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    numbers = segment_numbers(detection) if seg is not None else {}
    groups = []
    frame_of_reference = str(series.datasets[0].FrameOfReferenceUID)
    for n in detection.nodules:
        tracking = hd.sr.TrackingIdentifier(uid=_tracking_uid(series, n), identifier=f"Nodule N{n.number}")
        common = dict(tracking_identifier=tracking, finding_type=codes.SCT.Nodule,
                      finding_sites=[hd.sr.FindingSite(codes.SCT.Lung)], algorithm_id=_sr_algorithm())
        evaluated = dict(measurements=_measurements(n), qualitative_evaluations=[_lung_rads(n)])
        if n.number in numbers:
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                referenced_segment=_referenced_segment(series, detection, seg, n, numbers[n.number]),
                **evaluated, **common))
            evaluated = {}
        centre = hd.sr.ImageRegion3D(graphic_type=hd.sr.GraphicTypeValues3D.POINT,
                                     graphic_data=np.array([n.center_lps], dtype=np.float64),
                                     frame_of_reference_uid=frame_of_reference)
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            referenced_region=centre, geometric_purpose=codes.DCM.Center, **evaluated, **common))
    if groups:
        report = hd.sr.MeasurementReport(observation_context=context,
                                         procedure_reported=codes.cid100.CTUnspecifiedBodyRegion,
                                         imaging_measurements=groups)
    else:
        report = _report_without_findings(context)
    notes = [DISCLAIMER] if groups else ["No pulmonary nodule was found.", DISCLAIMER]
    report[0].ContentSequence.append(_qualitative_evaluations(notes))
    evidence = list(series.datasets) + ([seg] if seg is not None else [])
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report[0], series_instance_uid=hd.UID(), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="ResMTNet",
        series_description="ResMTNet nodule report (research use)", is_complete=True)
    if groups:  # the local codes (Lung-RADS values) declared, as DICOM asks of a private coding scheme
        scheme = Dataset()
        scheme.CodingSchemeDesignator = LOCAL_SCHEME
        scheme.CodingSchemeName = "ResMTNet local codes"
        scheme.CodingSchemeResponsibleOrganization = "ResMTNet"
        sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


def _referenced_segment(series: SourceSeries, detection: Detection, seg, nodule: Nodule, k: int):
    """Segment ``k`` of ``seg`` with the source slices ``nodule`` lies on (where its label is)."""
    import highdicom as hd

    slices = np.flatnonzero((detection.labels == nodule.number).any(axis=(1, 2)))
    return hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=k,
        source_images=[hd.sr.SourceImageForSegmentation(str(series.datasets[z].SOPClassUID),
                                                         str(series.datasets[z].SOPInstanceUID)) for z in slices])


def _sr_algorithm():
    import highdicom as hd

    return hd.sr.AlgorithmIdentification(name="ResMTNet", version=__version__)


def _measurements(n: Nodule) -> list:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return [hd.sr.Measurement(name=codes.SCT.Volume, value=float(n.volume_mm3), unit=codes.UCUM.CubicMillimeter),
            hd.sr.Measurement(name=codes.SCT.Diameter, value=float(n.diameter_mm), unit=codes.UCUM.Millimeter),
            hd.sr.Measurement(name=codes.DCM.ProbabilityOfCancer, value=float(n.malignancy),
                              unit=codes.UCUM.NoUnits)]


#: The SNOMED CT observable "Lung Imaging Reporting and Data System category".
LUNG_RADS_CATEGORY = ("1362105002", "SCT", "Lung Imaging Reporting and Data System category")


def _lung_rads(n: Nodule):
    import highdicom as hd

    value = hd.sr.CodedConcept(f"LR{n.lung_rads}", LOCAL_SCHEME, f"Lung-RADS v2022 category {n.lung_rads}")
    return hd.sr.QualitativeEvaluation(name=hd.sr.CodedConcept(*LUNG_RADS_CATEGORY), value=value)


def _qualitative_evaluations(texts: list[str]):
    """TID 1500 row 12: the report's qualitative evaluations, here free text."""
    import highdicom as hd
    from pydicom.sequence import Sequence
    from pydicom.sr.codedict import codes

    container = hd.sr.ContainerContentItem(name=hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations"),
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    container.ContentSequence = Sequence([
        hd.sr.TextContentItem(name=codes.DCM.Comment, value=text,
                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        for text in texts])
    return container


def _report_without_findings(context):
    """A TID 1500 report with no imaging measurements (highdicom builds one only with some): made with an
    empty measurement group whose container is then taken out, leaving title, language, observer, procedure."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    placeholder = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="none"))
    report = hd.sr.MeasurementReport(observation_context=context,
                                     procedure_reported=codes.cid100.CTUnspecifiedBodyRegion,
                                     imaging_measurements=[placeholder])
    items = report[0].ContentSequence
    keep = [item for item in items
            if item.ConceptNameCodeSequence[0].CodeValue != codes.DCM.ImagingMeasurements.value]
    items.clear()
    items.extend(keep)
    return report
