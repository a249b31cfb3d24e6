"""Reading the project's CSV tables (LUNA16 annotations, candidates, predictions) with clear errors."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path

from ..util.errors import InputError


def read_csv_rows(path: str | Path, required: Iterable[str], what: str) -> list[dict[str, str]]:
    """Rows of a CSV with a header (names stripped); InputError when missing, not text or lacking columns."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: {what} file not found")
    try:
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            missing = [c for c in required if c not in header]
            if missing:
                raise InputError(f"{p}: {what} lacks column(s) {', '.join(missing)} "
                                 f"(has: {', '.join(header) or 'no header'})")
            return list(reader)
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: {what} is not a text CSV ({e.reason})") from e


def parse_float(row: dict[str, str], key: str, path: str | Path, line: int) -> float:
    try:
        v = float(row[key])
    except (TypeError, ValueError):
        raise InputError(f"{path}: line {line}: {key} is not a number: {row.get(key)!r}") from None
    if not math.isfinite(v):
        raise InputError(f"{path}: line {line}: {key} is not finite: {row.get(key)!r}")
    return v
