"""LIDC-IDRI reader annotations: the readers' XML → nodules in world mm.

An LIDC-IDRI case holds up to four radiologists' reads. Each reader marked *nodules >= 3 mm* (outlined
slice by slice, with characteristics such as malignancy and texture rated 1–5), *nodules < 3 mm* (one
point) and *non-nodules* (one point). This module

1. parses the XML (:func:`read_lidc_xml`) into each reader's marks in pixel coordinates;
2. places them in the CT (:func:`place_marks`): each ROI's slice is found by its SOPInstanceUID (or, failing
   that, its imageZposition) among the series' slices, and pixel (x = column, y = row) becomes LPS mm through
   the geometry ``resmtnet.io.ctio.read_ct`` gives the series. A mark's volume is the sum over its ROIs of the
   polygon area (shoelace) times the slice spacing (exclusion ROIs subtract); its centre is the
   volume-weighted mean of the polygons' centroids; its diameter is that of the sphere of equal volume;
3. groups the readers' >= 3 mm marks into nodules (:func:`cluster_marks`): two marks of *different* readers
   belong together when their outlines share a voxel or one's centre lies within the other's equivalent
   radius; a cluster never holds two marks of one reader;
4. takes the consensus (:func:`consensus`): centre = mean of the readers' centres, diameter = mean of their
   equivalent diameters (how ``annotations.json`` beside the test case was made), malignancy = median of
   the ratings, texture → solid / part-solid / ground-glass, calcification → calcified.

Ratings: a median halfway between two ratings (e.g. 2.5 from [2, 3]) rounds *toward 3*, so a vote split
between "uncertain" and a class stays uncertain. Malignancy labels: 4–5 malignant, 1–2 benign, 3 uncertain.
Texture (LIDC: 1 non-solid/GGO, 2 non-solid/mixed, 3 part-solid, 4 solid/mixed, 5 solid): 1–2
ground-glass, 3 part-solid, 4–5 solid. Calcification (1–5 a pattern, 6 absent): a median below 6 makes
the nodule "calcified", whatever its texture. Margin (:func:`margin_from_ratings`), from the medians of
spiculation and lobulation (LIDC: 1 none … 5 marked): spiculation 3 or more "spiculated", else lobulation 3
or more "lobulated", else "smooth"; spiculation wins where both are marked, as it does in Lung-RADS (4X)
and in the Brock model. Unknown where a nodule has no spiculation rating.
"""

from __future__ import annotations

import math
import re
import statistics
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.ctio import CTVolume
from ..io.luna16_csv import rounded_rating
from ..util.errors import InputError

CHARACTERISTICS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin", "lobulation",
                   "spiculation", "texture", "malignancy")
READ_MESSAGE_TAG = "LidcReadMessage"
_NOT_DICOM = {".xml", ".json", ".csv", ".md", ".txt", ".nrrd", ".mhd", ".raw", ".npy", ".png", ".zip"}


# ---------------------------------------------------------------- the XML


@dataclass
class Roi:
    """One outline (or point) on one slice, pixel coordinates ``points`` (n, 2) as (x = column, y = row)."""

    sop_uid: str
    z_position: float | None
    inclusion: bool
    points: np.ndarray


@dataclass
class ReaderMark:
    """One reader's mark of a nodule (``unblindedReadNodule``): outlines and characteristic ratings."""

    reader: str
    mark_id: str
    rois: list[Roi]
    characteristics: dict[str, int] = field(default_factory=dict)
    order: int = 0  # position of the reader's session in the XML

    @property
    def is_outlined(self) -> bool:
        """A nodule >= 3 mm: outlined by a polygon on some slice (a nodule < 3 mm is one point)."""
        return any(len(r.points) >= 3 for r in self.rois)


@dataclass
class PointMark:
    """A reader's one-point mark: a nodule < 3 mm or a non-nodule (``kind``)."""

    reader: str
    mark_id: str
    kind: str  # "small-nodule" | "non-nodule"
    sop_uid: str
    z_position: float | None
    point: tuple[float, float]


@dataclass
class LidcRead:
    """A parsed LIDC XML: the readers' marks for one CT series."""

    path: str
    series_uid: str
    study_uid: str
    readers: list[str]
    marks: list[ReaderMark]
    points: list[PointMark]

    @property
    def nodule_marks(self) -> list[ReaderMark]:
        return [m for m in self.marks if m.is_outlined]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(el: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in el if _local(c.tag) == name]


def _child_text(el: ET.Element, name: str) -> str | None:
    for c in el:
        if _local(c.tag) == name:
            return (c.text or "").strip()
    return None


def _float_or_none(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _points(el: ET.Element, name: str) -> np.ndarray:
    pts = []
    for e in _children(el, name):
        x, y = _float_or_none(_child_text(e, "xCoord")), _float_or_none(_child_text(e, "yCoord"))
        if x is not None and y is not None:
            pts.append((x, y))
    return np.asarray(pts, dtype=np.float64).reshape(-1, 2)


def is_lidc_xml(path: str | Path) -> bool:
    """True for an LIDC CT read message (not the IDRI radiograph reads that share the collection)."""
    try:
        for _event, el in ET.iterparse(str(path), events=("start",)):
            return _local(el.tag) == READ_MESSAGE_TAG
    except (ET.ParseError, OSError):
        return False
    return False


def read_lidc_xml(path: str | Path) -> LidcRead:
    """Parse one LIDC reader XML (``LidcReadMessage``); every reading session is one reader."""
    p = Path(path)
    try:
        root = ET.parse(p).getroot()
    except (ET.ParseError, OSError) as e:
        raise InputError(f"{p}: not a readable LIDC XML file ({e})") from e
    if _local(root.tag) != READ_MESSAGE_TAG:
        raise InputError(f"{p}: not an LIDC CT read (root element {_local(root.tag)!r}, "
                         f"expected {READ_MESSAGE_TAG})")
    header = next((c for c in root if _local(c.tag) == "ResponseHeader"), None)
    series_uid = (_child_text(header, "SeriesInstanceUid") or "") if header is not None else ""
    study_uid = (_child_text(header, "StudyInstanceUID") or "") if header is not None else ""
    readers, marks, points = [], [], []
    for n, session in enumerate(_children(root, "readingSession")):
        reader = _child_text(session, "servicingRadiologistID") or f"reader-{n + 1}"
        if reader in readers:  # anonymised IDs may repeat; keep sessions apart
            reader = f"{reader}#{n + 1}"
        readers.append(reader)
        for nod in _children(session, "unblindedReadNodule"):
            mark_id = _child_text(nod, "noduleID") or f"nodule-{len(marks) + 1}"
            chars: dict[str, int] = {}
            for ch in _children(nod, "characteristics"):
                for c in ch:
                    v = _float_or_none((c.text or "").strip())
                    if v is not None and _local(c.tag) in CHARACTERISTICS:
                        chars[_local(c.tag)] = int(v)
            rois = []
            for roi in _children(nod, "roi"):
                rois.append(Roi(sop_uid=_child_text(roi, "imageSOP_UID") or "",
                                z_position=_float_or_none(_child_text(roi, "imageZposition")),
                                inclusion=(_child_text(roi, "inclusion") or "TRUE").upper() == "TRUE",
                                points=_points(roi, "edgeMap")))
            rois = [r for r in rois if len(r.points)]
            if not rois:
                continue
            m = ReaderMark(reader=reader, mark_id=mark_id, rois=rois, characteristics=chars, order=n)
            if m.is_outlined:
                marks.append(m)
            else:
                first = rois[0]
                points.append(PointMark(reader, mark_id, "small-nodule", first.sop_uid, first.z_position,
                                        tuple(first.points.mean(axis=0))))
        for non in _children(session, "nonNodule"):
            pts = _points(non, "locus")
            if not len(pts):
                continue
            points.append(PointMark(reader, _child_text(non, "nonNoduleID") or "", "non-nodule",
                                    _child_text(non, "imageSOP_UID") or "",
                                    _float_or_none(_child_text(non, "imageZposition")), tuple(pts[0])))
    return LidcRead(path=str(p), series_uid=series_uid, study_uid=study_uid, readers=readers, marks=marks,
                    points=points)


def find_lidc_xml(folder: str | Path) -> list[Path]:
    """Every LIDC CT read XML under ``folder`` (sorted)."""
    return sorted(p for p in Path(folder).rglob("*.xml") if p.is_file() and is_lidc_xml(p))


# ---------------------------------------------------------------- slices of the series


@dataclass
class SliceIndex:
    """Where each DICOM slice of a series sits in the volume: SOPInstanceUID → k, and each k's world z."""

    sop_to_k: dict[str, int]
    z_of_k: np.ndarray

    def k_of(self, sop_uid: str, z_position: float | None) -> int | None:
        if sop_uid and sop_uid in self.sop_to_k:
            return self.sop_to_k[sop_uid]
        if z_position is None or not len(self.z_of_k):
            return None
        k = int(np.argmin(np.abs(self.z_of_k - z_position)))
        step = float(np.median(np.abs(np.diff(self.z_of_k)))) if len(self.z_of_k) > 1 else 1.0
        return k if abs(self.z_of_k[k] - z_position) <= 0.5 * step + 1e-3 else None


def slice_index(ct: CTVolume, dicom_folder: str | Path | None = None,
                series_uid: str | None = None) -> SliceIndex:
    """Map the series' SOPInstanceUIDs to slice indices of ``ct`` by each file's ImagePositionPatient.

    Without a DICOM folder only the z fallback is available.
    """
    import SimpleITK as sitk

    nz = ct.array.shape[0]
    z_of_k = ct.index_to_world(np.c_[np.zeros(nz), np.zeros(nz), np.arange(nz)])[:, 2]
    sop_to_k: dict[str, int] = {}
    if dicom_folder is not None:
        folder = str(dicom_folder)
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder) or ()
        sid = series_uid if series_uid in ids else (ids[0] if ids else None)
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, sid) if sid else ()
        reader = sitk.ImageFileReader()
        for f in files:
            reader.SetFileName(f)
            try:
                reader.ReadImageInformation()
            except RuntimeError:
                continue
            if not (reader.HasMetaDataKey("0008|0018") and reader.HasMetaDataKey("0020|0032")):
                continue
            sop = reader.GetMetaData("0008|0018").strip().rstrip("\x00")
            ipp = np.array([float(v) for v in reader.GetMetaData("0020|0032").split("\\")[:3]])
            ijk = ct.world_to_index(ipp)
            k = int(round(float(ijk[2])))
            if 0 <= k < nz and abs(ijk[2] - k) < 0.25:
                sop_to_k[sop] = k
    return SliceIndex(sop_to_k=sop_to_k, z_of_k=z_of_k)


# ---------------------------------------------------------------- marks in the CT


@dataclass
class PlacedMark:
    """A reader's >= 3 mm mark in world mm."""

    reader: str
    mark_id: str
    center_lps: tuple[float, float, float]
    volume_mm3: float
    diameter_mm: float  # diameter of the sphere of equal volume
    characteristics: dict[str, int]
    voxels: frozenset[tuple[int, int, int]]  # (k, j, i) inside or on an inclusion outline
    n_rois: int
    order: int = 0  # the reader's session position in the XML


def _polygon_area_centroid(xy: np.ndarray) -> tuple[float, np.ndarray]:
    """Unsigned area (pixel units) and centroid of a closed polygon; degenerate → mean of the points."""
    x, y = xy[:, 0], xy[:, 1]
    x1, y1 = np.roll(x, -1), np.roll(y, -1)
    cross = x * y1 - x1 * y
    a = 0.5 * cross.sum()
    if abs(a) < 1e-9:
        return 0.0, xy.mean(axis=0)
    cx = ((x + x1) * cross).sum() / (6 * a)
    cy = ((y + y1) * cross).sum() / (6 * a)
    return abs(float(a)), np.array([cx, cy])


def _outline_voxels(xy: np.ndarray, k: int) -> set[tuple[int, int, int]]:
    from matplotlib.path import Path as MplPath

    out = {(k, int(round(y)), int(round(x))) for x, y in xy}
    if len(xy) >= 3:
        x0, y0 = np.floor(xy.min(axis=0)).astype(int)
        x1, y1 = np.ceil(xy.max(axis=0)).astype(int)
        gx, gy = np.meshgrid(np.arange(x0, x1 + 1), np.arange(y0, y1 + 1))
        pts = np.c_[gx.ravel(), gy.ravel()]
        inside = MplPath(xy).contains_points(pts)
        out.update((k, int(j), int(i)) for i, j in pts[inside])
    return out


def place_mark(mark: ReaderMark, ct: CTVolume, slices: SliceIndex) -> PlacedMark | None:
    """Put one reader's outlined mark into world mm (see the module doc); None if no ROI finds its slice."""
    sx, sy, sz = ct.spacing
    pixel_area = sx * sy
    moment = np.zeros(3)
    volume = 0.0
    voxels: set[tuple[int, int, int]] = set()
    all_points = []
    n = 0
    for roi in mark.rois:
        k = slices.k_of(roi.sop_uid, roi.z_position)
        if k is None:
            warnings.warn(f"{mark.reader}/{mark.mark_id}: ROI on SOP {roi.sop_uid} z={roi.z_position} "
                          "matches no slice of the series; left out", stacklevel=2)
            continue
        n += 1
        area_px, c = _polygon_area_centroid(roi.points)
        vol = area_px * pixel_area * sz * (1.0 if roi.inclusion else -1.0)
        world_c = ct.index_to_world(np.array([c[0], c[1], k]))
        moment += vol * world_c
        volume += vol
        all_points.append(ct.index_to_world(np.c_[roi.points, np.full(len(roi.points), k)]))
        if roi.inclusion:
            voxels |= _outline_voxels(roi.points, k)
    if n == 0:
        return None
    if volume > 1e-6:
        center = moment / volume
    else:
        center = np.concatenate(all_points).mean(axis=0)
        volume = 0.0
    diameter = (6.0 * volume / math.pi) ** (1.0 / 3.0)
    return PlacedMark(reader=mark.reader, mark_id=mark.mark_id, center_lps=tuple(float(v) for v in center),
                      volume_mm3=float(volume), diameter_mm=float(diameter),
                      characteristics=dict(mark.characteristics), voxels=frozenset(voxels), n_rois=n,
                      order=mark.order)


def place_point(mark: PointMark, ct: CTVolume, slices: SliceIndex) -> tuple[float, float, float] | None:
    k = slices.k_of(mark.sop_uid, mark.z_position)
    if k is None:
        return None
    w = ct.index_to_world(np.array([mark.point[0], mark.point[1], k]))
    return (float(w[0]), float(w[1]), float(w[2]))


# ---------------------------------------------------------------- grouping readers' marks


def _linked(a: PlacedMark, b: PlacedMark) -> bool:
    if a.voxels & b.voxels:
        return True
    d = float(np.linalg.norm(np.subtract(a.center_lps, b.center_lps)))
    return d <= max(a.diameter_mm, b.diameter_mm) / 2.0


def cluster_marks(marks: list[PlacedMark]) -> list[list[PlacedMark]]:
    """Group marks of different readers that outline the same nodule (see the module doc).

    Deterministic: marks are taken largest first; each joins the nearest linked cluster that has no mark of
    its reader yet; clusters that are linked and share no reader are then merged.
    """
    order = sorted(marks, key=lambda m: (-m.volume_mm3, m.reader, m.mark_id))
    clusters: list[list[PlacedMark]] = []
    for m in order:
        best, best_d = None, math.inf
        for c in clusters:
            if any(o.reader == m.reader for o in c) or not any(_linked(m, o) for o in c):
                continue
            d = float(np.linalg.norm(np.subtract(m.center_lps, _mean_center(c))))
            if d < best_d:
                best, best_d = c, d
        if best is None:
            clusters.append([m])
        else:
            best.append(m)
    merged = True
    while merged:
        merged = False
        for i in range(len(clusters)):
            for j in range(i + 1, len(clusters)):
                a, b = clusters[i], clusters[j]
                if {m.reader for m in a} & {m.reader for m in b}:
                    continue
                if any(_linked(x, y) for x in a for y in b):
                    clusters[i] = a + b
                    del clusters[j]
                    merged = True
                    break
            if merged:
                break
    return clusters


def _mean_center(marks: list[PlacedMark]) -> np.ndarray:
    return np.mean([m.center_lps for m in marks], axis=0)


# ---------------------------------------------------------------- consensus


def median_rating(ratings: list[int]) -> int | None:
    """Median of 1–5 ratings; a half-way median rounds toward 3 (see the module doc)."""
    if not ratings:
        return None
    return rounded_rating(statistics.median(ratings))


def malignancy_label(rating: int | None) -> str | None:
    if rating is None:
        return None
    return "malignant" if rating >= 4 else "benign" if rating <= 2 else "uncertain"


def nodule_type_from_ratings(texture: int | None, calcification: int | None) -> str | None:
    if calcification is not None and calcification < 6:
        return "calcified"
    if texture is None:
        return None
    return "ground-glass" if texture <= 2 else "part-solid" if texture == 3 else "solid"


def margin_from_ratings(spiculation: int | None, lobulation: int | None) -> str | None:
    """The margin class (smooth, lobulated, spiculated) from median spiculation and lobulation ratings (module doc)."""
    if spiculation is None:
        return None
    if spiculation >= 3:
        return "spiculated"
    return "lobulated" if lobulation is not None and lobulation >= 3 else "smooth"


@dataclass
class LidcNodule:
    """A nodule >= 3 mm as the readers agree on it (centre LPS mm, equivalent diameter mm)."""

    center_lps: tuple[float, float, float]
    diameter_mm: float
    volume_mm3: float
    marks: list[PlacedMark]
    malignancy_ratings: list[int]
    malignancy_median: float | None
    malignancy_rating: int | None
    malignancy_label: str | None
    texture_ratings: list[int]
    nodule_type: str | None
    margin: str | None = None  # smooth | lobulated | spiculated (margin_from_ratings)

    @property
    def n_readers(self) -> int:
        return len(self.marks)

    def to_dict(self) -> dict[str, Any]:
        return {"center_lps": list(self.center_lps), "diameter_mm": self.diameter_mm,
                "volume_mm3": self.volume_mm3, "readers": self.n_readers,
                "malignancy_ratings": self.malignancy_ratings, "malignancy_median": self.malignancy_median,
                "malignancy_rating": self.malignancy_rating, "malignancy_label": self.malignancy_label,
                "texture_ratings": self.texture_ratings, "nodule_type": self.nodule_type, "margin": self.margin,
                "marks": [{"reader": m.reader, "mark_id": m.mark_id, "center_lps": list(m.center_lps),
                           "volume_mm3": m.volume_mm3, "diameter_mm": m.diameter_mm,
                           "characteristics": m.characteristics} for m in self.marks]}


def consensus(cluster: list[PlacedMark]) -> LidcNodule:
    """One nodule from its readers' marks (see the module doc)."""
    marks = sorted(cluster, key=lambda m: (m.order, m.reader, m.mark_id))
    center = _mean_center(marks)
    mal = [m.characteristics["malignancy"] for m in marks if "malignancy" in m.characteristics]
    tex = [m.characteristics["texture"] for m in marks if "texture" in m.characteristics]
    calc = [m.characteristics["calcification"] for m in marks if "calcification" in m.characteristics]
    spic = [m.characteristics["spiculation"] for m in marks if "spiculation" in m.characteristics]
    lobe = [m.characteristics["lobulation"] for m in marks if "lobulation" in m.characteristics]
    rating = median_rating(mal)
    return LidcNodule(
        center_lps=tuple(float(v) for v in center),
        diameter_mm=float(np.mean([m.diameter_mm for m in marks])),
        volume_mm3=float(np.mean([m.volume_mm3 for m in marks])),
        marks=marks,
        malignancy_ratings=mal,
        malignancy_median=float(statistics.median(mal)) if mal else None,
        malignancy_rating=rating,
        malignancy_label=malignancy_label(rating),
        texture_ratings=tex,
        nodule_type=nodule_type_from_ratings(median_rating(tex), median_rating(calc)),
        margin=margin_from_ratings(median_rating(spic), median_rating(lobe)),
    )


# ---------------------------------------------------------------- one case


@dataclass
class LidcCase:
    """The readers' marks of one series, in world mm.

    ``nodules``: every nodule >= 3 mm any reader outlined, largest agreement first (``n_readers`` says how
    many); ``small_nodules`` and ``non_nodules``: the one-point marks, (reader, LPS point).
    """

    series_uid: str
    readers: list[str]
    nodules: list[LidcNodule]
    small_nodules: list[tuple[str, tuple[float, float, float]]]
    non_nodules: list[tuple[str, tuple[float, float, float]]]
    xml_path: str = ""

    def accepted(self, min_readers: int = 1) -> list[LidcNodule]:
        """Nodules outlined by at least ``min_readers`` readers (LUNA16 took 3 of 4)."""
        return [n for n in self.nodules if n.n_readers >= min_readers]


def nodules_from_marks(read: LidcRead, ct: CTVolume, slices: SliceIndex) -> LidcCase:
    placed = [p for p in (place_mark(m, ct, slices) for m in read.nodule_marks) if p is not None]
    nodules = [consensus(c) for c in cluster_marks(placed)]
    nodules.sort(key=lambda n: (-n.n_readers, -n.diameter_mm, n.center_lps))
    small, non = [], []
    for pm in read.points:
        w = place_point(pm, ct, slices)
        if w is not None:
            (small if pm.kind == "small-nodule" else non).append((pm.reader, w))
    return LidcCase(series_uid=read.series_uid, readers=read.readers, nodules=nodules, small_nodules=small,
                    non_nodules=non, xml_path=read.path)


def dicom_folder_for(xml_path: str | Path, series_uid: str = "") -> Path:
    """The DICOM series folder an XML belongs to: its own folder if it holds the series, else the sub-folder
    (searched below the XML's folder) holding the series ``series_uid`` (or any series)."""
    import SimpleITK as sitk

    base = Path(xml_path).parent
    candidates = [base] + sorted(d for d in base.rglob("*") if d.is_dir())
    fallback = None
    for d in candidates:
        if not any(f.is_file() and f.suffix.lower() not in _NOT_DICOM for f in d.iterdir()):
            continue  # GDCM would print a warning for a folder without a series
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d)) or ()
        if series_uid and series_uid in ids:
            return d
        if ids and fallback is None:
            fallback = d
    if fallback is None:
        raise InputError(f"{xml_path}: no DICOM series found in {base} or below it")
    return fallback


def read_lidc_case(xml_path: str | Path, dicom_folder: str | Path | None = None,
                   ct: CTVolume | None = None) -> tuple[CTVolume, LidcCase]:
    """Read an LIDC XML with its DICOM series (found beside or below the XML unless given)."""
    from ..io.ctio import read_ct

    read = read_lidc_xml(xml_path)
    folder = Path(dicom_folder) if dicom_folder is not None else dicom_folder_for(xml_path, read.series_uid)
    if ct is None:
        ct = read_ct(folder)
    if read.series_uid and ct.seriesuid and ct.seriesuid != read.series_uid:
        warnings.warn(f"{xml_path}: XML is for series {read.series_uid}, the CT read from {folder} is "
                      f"{ct.seriesuid}", stacklevel=2)
    slices = slice_index(ct, folder, read.series_uid or None)
    return ct, nodules_from_marks(read, ct, slices)


def patient_id_of(path: str | Path) -> str | None:
    """The LIDC patient id (``LIDC-IDRI-0001``) named in a path, if any."""
    m = re.search(r"LIDC-IDRI-\d{4}", str(path))
    return m.group(0) if m else None
