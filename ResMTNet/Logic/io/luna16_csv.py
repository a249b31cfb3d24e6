"""The LUNA16 CSV tables: their columns, the reference-nodule record, and its one reader and one writer.

LUNA16 (Setio et al. 2017) keeps its reference in ``annotations.csv`` (``seriesuid, coordX, coordY, coordZ,
diameter_mm``; world LPS mm), non-nodules in ``annotations_excluded.csv`` (same columns, diameter -1 when
unknown) and candidates in ``candidates.csv`` (``class`` 1 nodule, 0 not). Submissions have ``probability``
in place of the diameter. The project adds optional columns to the annotations: ``malignancy`` (reader rating
1-5; a median of several readers may be fractional), ``nodule_type``, ``margin``, ``location`` and
``lung_share`` (a phantom set's, :mod:`resmtnet.data.phantom`). Every module reads and writes these tables here.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..util.atomic import atomic_write
from ..util.errors import InputError
from .csvio import parse_float, read_csv_rows

Point = tuple[float, float, float]

CENTER_COLUMNS = ("coordX", "coordY", "coordZ")
ANNOTATION_COLUMNS = ("seriesuid", *CENTER_COLUMNS, "diameter_mm")
CANDIDATE_COLUMNS = ("seriesuid", *CENTER_COLUMNS, "class")
SUBMISSION_COLUMNS = ("seriesuid", *CENTER_COLUMNS, "probability")
#: the optional annotation columns this project adds, in the order a phantom set writes them
EXTRA_ANNOTATION_COLUMNS = ("malignancy", "nodule_type", "margin", "location", "lung_share")
PHANTOM_ANNOTATION_COLUMNS = ANNOTATION_COLUMNS + EXTRA_ANNOTATION_COLUMNS


@dataclass(frozen=True)
class ReferenceNodule:
    """One reference mark of a scan: a nodule, or an excluded (irrelevant) finding LUNA16's FROC ignores.

    Centre in LPS mm; diameter in mm (an excluded mark may have -1: size unknown). ``malignancy_rating``:
    reader rating 1-5, kept as the CSV gives it (a median like 2.5 stays 2.5: the malignancy AUC leaves
    ratings between 2 and 4 out, and rounding would move 2.5 to benign); None where unknown (LUNA16).
    ``nodule_type`` (solid, part-solid, ground-glass, calcified), ``margin`` and ``location``: None where
    unknown. ``lung_share``: the share of it drawn in aerated lung (a phantom's; 1 elsewhere: readers mark
    lung nodules).
    """

    seriesuid: str
    center_lps: Point
    diameter_mm: float
    malignancy_rating: float | None = None
    nodule_type: str | None = None
    lung_share: float = 1.0
    margin: str | None = None
    location: str | None = None
    excluded: bool = False

    @property
    def radius_mm(self) -> float:
        """Half the diameter; the LUNA16 script's 10 mm for a mark without one (diameter < 0)."""
        d = self.diameter_mm if self.diameter_mm >= 0 else EXCLUDED_DEFAULT_DIAMETER_MM
        return d / 2.0


EXCLUDED_DEFAULT_DIAMETER_MM = 10.0  # the LUNA16 script's size for marks without one (diameter < 0)


def rounded_rating(rating: float | None) -> int | None:
    """A whole rating 1-5 for a fractional one (a median of readers' ratings): half-way rounds toward 3, so a
    vote split between "uncertain" and a class stays uncertain (2.5 -> 3, 3.5 -> 3)."""
    if rating is None:
        return None
    if float(rating).is_integer():
        return int(rating)
    return int(math.ceil(rating)) if rating < 3 else int(math.floor(rating))


def parse_center(row: dict[str, str], path: str | Path, line: int) -> Point:
    """A row's ``coordX, coordY, coordZ`` (LPS mm); InputError naming the file and line."""
    return tuple(parse_float(row, k, path, line) for k in CENTER_COLUMNS)  # type: ignore[return-value]


def optional_float(row: dict[str, str], key: str, path: str | Path, line: int) -> float | None:
    """A number, or None where the cell is absent, empty or says nan / none / na."""
    text = (row.get(key) or "").strip()
    if text == "" or text.lower() in ("nan", "none", "na"):
        return None
    return parse_float(row, key, path, line)


def within(value: float | None, key: str, path: str | Path, line: int, low: float, high: float = math.inf
           ) -> float | None:
    """``value`` when it lies in [low, high] (or is None: not given); InputError naming the file and line."""
    if value is not None and not low <= value <= high:
        want = f"[{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
        raise InputError(f"{path}: line {line}: {key} {value:g} is impossible (must be {want})")
    return value


def _text(row: dict[str, str], key: str) -> str | None:
    return (row.get(key) or "").strip() or None


def read_annotations(path: str | Path, excluded: bool = False) -> list[ReferenceNodule]:
    """The marks of a LUNA16 ``annotations.csv`` (``excluded=True``: of ``annotations_excluded.csv``), in file
    order, with the optional columns this project adds. A negative diameter is refused for included nodules
    (excluded marks may have one: LUNA16 writes -1), a rating outside 1-5 or a lung share outside 0-1 always.
    """
    out = []
    for i, r in enumerate(read_csv_rows(path, ANNOTATION_COLUMNS, "annotations CSV")):
        line = i + 2
        diameter = parse_float(r, "diameter_mm", path, line)
        if not excluded:
            within(diameter, "diameter_mm", path, line, 0.0)
        share = within(optional_float(r, "lung_share", path, line), "lung_share", path, line, 0.0, 1.0)
        out.append(ReferenceNodule(
            seriesuid=r["seriesuid"].strip(), center_lps=parse_center(r, path, line), diameter_mm=diameter,
            malignancy_rating=within(optional_float(r, "malignancy", path, line), "malignancy", path, line,
                                     1.0, 5.0),
            nodule_type=_text(r, "nodule_type"), lung_share=1.0 if share is None else share,
            margin=_text(r, "margin"), location=_text(r, "location"), excluded=excluded))
    return out


def annotations_by_scan(path: str | Path) -> dict[str, list[ReferenceNodule]]:
    """:func:`read_annotations` grouped by seriesuid, each scan's marks in file order."""
    out: dict[str, list[ReferenceNodule]] = {}
    for n in read_annotations(path):
        out.setdefault(n.seriesuid, []).append(n)
    return out


def annotation_columns(path: str | Path) -> list[str]:
    """The header of an annotations CSV ([] where the file is absent or has none)."""
    p = Path(path)
    if not p.is_file():
        return []
    with open(p, newline="", encoding="utf-8") as f:
        return [h.strip() for h in (csv.DictReader(f).fieldnames or [])]


def read_negatives(path: str | Path, wanted: Iterable[str] | None = None) -> dict[str, list[Point]]:
    """LUNA16 ``candidates.csv``'s class-0 candidates (known non-nodules) grouped by seriesuid; only the scans
    in ``wanted`` where given."""
    keep = None if wanted is None else set(wanted)
    out: dict[str, list[Point]] = {}
    for i, r in enumerate(read_csv_rows(path, CANDIDATE_COLUMNS, "candidates CSV")):
        sid = r["seriesuid"].strip()
        if (keep is not None and sid not in keep) or r["class"].strip() not in ("0", "0.0"):
            continue
        out.setdefault(sid, []).append(parse_center(r, path, i + 2))
    return out


def _cell(value: float | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def write_annotations(path: str | Path, nodules: Iterable[ReferenceNodule],
                      columns: tuple[str, ...] = PHANTOM_ANNOTATION_COLUMNS) -> Path:
    """Write an annotations CSV (whole or not at all): ``columns`` (LUNA16's first, then any of
    :data:`EXTRA_ANNOTATION_COLUMNS`), millimetres and lung share to 3 decimals, ratings as short as exact
    (3, 2.5), unknown values empty."""
    unknown = [c for c in columns if c not in PHANTOM_ANNOTATION_COLUMNS]
    if tuple(columns[:len(ANNOTATION_COLUMNS)]) != ANNOTATION_COLUMNS or unknown:
        raise ValueError(f"annotation columns must start with {ANNOTATION_COLUMNS} and be known: {columns}")
    rows = []
    for n in nodules:
        x, y, z = n.center_lps
        cells = {"seriesuid": n.seriesuid, "coordX": f"{x:.3f}", "coordY": f"{y:.3f}", "coordZ": f"{z:.3f}",
                 "diameter_mm": f"{n.diameter_mm:.3f}", "malignancy": _cell(n.malignancy_rating),
                 "nodule_type": _cell(n.nodule_type), "margin": _cell(n.margin), "location": _cell(n.location),
                 "lung_share": f"{n.lung_share:.3f}"}
        rows.append([cells[c] for c in columns])

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(columns)
            w.writerows(rows)

    return atomic_write(path, write)
