"""Detection over many CTs into one output tree: one sub-folder per scan, a summary, and a failures file.

``resmtnet detect`` runs a batch when given several inputs, ``--batch`` (each folder given holds one scan
per entry) or ``--inputs-from FILE``. Each scan's files form a set in its own sub-folder
(:mod:`.fileset`); the tree's root holds ``nodules.csv`` (every finding of every scan, the per-scan columns
plus ``scan``, the sub-folder) and ``failures.csv`` (``input,reason``: one row per scan that failed), both
published as one set when the batch ends. A scan that fails is recorded and the batch goes on; the model
is loaded once, before the first scan is detected.
"""

from __future__ import annotations

import csv
import io
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..detect.nodules import NODULES_CSV_COLUMNS
from ..io.ctio import VOLUME_SUFFIXES
from ..util.errors import InputError, OutputError, ResMTNetError

SUMMARY_FILE = "nodules.csv"
FAILURES_FILE = "failures.csv"
SUMMARY_COLUMNS = NODULES_CSV_COLUMNS + ["scan"]
FAILURES_COLUMNS = ["input", "reason"]
_UNSAFE = re.compile(r"[\x00-\x1f/\\:*?\"<>|]+")
MAX_NAME = 100


@dataclass(frozen=True)
class Scan:
    """One CT of a batch: what is read (a volume file or a DICOM series folder) and its sub-folder's name."""

    input: Path
    name: str


@dataclass
class BatchResult:
    """What a batch did, scan by scan (sub-folder names), and which inputs failed and why."""

    detected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    nodules: int = 0

    @property
    def exit_status(self) -> int:
        """0: every scan has its results; 1: some failed; 2: every one failed."""
        if not self.failed:
            return 0
        return 2 if not (self.detected or self.skipped) else 1


def read_input_list(path: str | Path) -> list[Path]:
    """The inputs a list file names: one path a line, relative to the current folder; blank lines and lines
    starting with ``#`` skipped."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{p}: input list file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: input list file could not be read as text ({e})") from None
    return [Path(line.strip()) for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def scans_in_folder(folder: Path) -> list[tuple[Path, str]]:
    """The scans a folder of series holds, by name, each with the name its sub-folder gets: each volume file
    in it (named after the file), and each sub-folder (named after it): a DICOM series folder, or the
    volume files directly inside it (several: each one scan, named sub-folder-file). Hidden entries are
    skipped, and so are files that are not volumes (a README, a .raw beside its .mhd)."""
    if not folder.is_dir():
        raise InputError(f"{folder}: --batch needs folders of scans; this is not a folder")
    scans: list[tuple[Path, str]] = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            volumes = sorted(p for p in entry.iterdir() if p.is_file() and _is_volume(p))
            if len(volumes) > 1:
                scans += [(v, f"{entry.name}-{_stem(v)}") for v in volumes]
            else:
                scans.append((volumes[0] if volumes else entry, entry.name))
        elif _is_volume(entry):
            scans.append((entry, _stem(entry)))
    return scans


def collect_scans(inputs: Iterable[str | Path], *, batch_folders: bool = False,
                  inputs_from: str | Path | None = None) -> list[Scan]:
    """The scans of a batch, in the order given, each with a unique sub-folder name.

    ``batch_folders``: each folder among ``inputs`` is a folder of series (:func:`scans_in_folder`);
    otherwise a folder is one scan (a DICOM series folder). ``inputs_from``: a list file
    (:func:`read_input_list`) whose entries follow ``inputs``.
    """
    paths = [Path(p) for p in inputs]
    if inputs_from is not None:
        paths += read_input_list(inputs_from)
    found: list[tuple[Path, str]] = []
    for p in paths:
        found += scans_in_folder(p) if batch_folders and p.is_dir() else [(p, _stem(p))]
    if not found:
        raise InputError("no scans to detect in: " + (", ".join(map(str, paths)) or "(no input given)"))
    return [Scan(p, name) for (p, _), name in zip(found, _unique_names([n for _, n in found]), strict=True)]


def _is_volume(p: Path) -> bool:
    return p.name.lower().endswith(VOLUME_SUFFIXES)


def _stem(p: Path) -> str:
    """A volume file's name without its extension; a folder's name (also for ``.``)."""
    name = p.name or p.resolve().name
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _unique_names(wanted: list[str]) -> list[str]:
    """Names safe on every file system, unique among themselves without regard to case (as on macOS and
    Windows) and distinct from the tree's own files: a repeated name gets -2, -3 ... in input order."""
    taken = {SUMMARY_FILE.casefold(), FAILURES_FILE.casefold()}
    names = []
    for want in wanted:
        base = _UNSAFE.sub("_", want).strip(" .")[:MAX_NAME] or "scan"
        name, k = base, 1
        while name.casefold() in taken:
            k += 1
            name = f"{base}-{k}"
        taken.add(name.casefold())
        names.append(name)
    return names


def run_batch(scans: list[Scan], outdir: str | Path, *, read: Callable[[Path], Any],
              detect: Callable[[Any, Path, Callable[[str], None]], int], prepare: Callable[[], None] = lambda: None,
              resume: bool = False, quiet: bool = False) -> BatchResult:
    """For each scan: ``volume = read(scan.input)``, then ``detect(volume, scan_outdir, progress)``, which
    writes the scan's set and returns its number of findings.

    ``prepare()`` runs once, after the first scan was read and before it is detected (loading the model);
    its errors stop the batch. A scan whose ``read`` or ``detect`` raises is recorded as failed and the batch
    goes on; Ctrl-C and SIGTERM stop it (the scan being written keeps its previous set). ``resume``: scans
    whose sub-folder already holds a complete set made from the same input are skipped. The summary and
    failures files are written at the end, from every scan with a complete set in this batch (skipped
    ones included).
    """
    from tqdm import tqdm

    from ..io.fileset import read_set, recover
    from .outputs import input_key

    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():  # said once, not once per scan
        raise OutputError(f"{outdir}: could not write the results: it exists and is not a folder")
    result = BatchResult()
    prepared = False
    bar = None if quiet else tqdm(total=len(scans), desc="scans", unit="scan", dynamic_ncols=True)

    def progress(message: str) -> None:
        if bar is not None:
            bar.set_postfix_str(message)

    try:
        for scan in scans:
            sub = outdir / scan.name
            progress(scan.name)
            if resume and sub.is_dir():
                recover(sub)
                manifest = read_set(sub)
                if manifest is not None and manifest.get("input") == input_key(scan.input):
                    result.skipped.append(scan.name)
                    if bar is not None:
                        bar.update(1)
                    continue
            try:
                volume = read(scan.input)
            except Exception as e:  # a scan that fails in any way never stops the others
                _record_failure(result, scan, e, bar)
            else:
                if not prepared:  # outside the per-scan handler: a model that does not load stops the batch
                    prepare()
                    prepared = True
                try:
                    result.nodules += detect(volume, sub, lambda m, name=scan.name: progress(f"{name}: {m}"))
                    result.detected.append(scan.name)
                except Exception as e:
                    _record_failure(result, scan, e, bar)
                del volume  # free before the next scan is read
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    done = set(result.detected) | set(result.skipped)
    write_tree_files(outdir, [s for s in scans if s.name in done], result.failed)
    return result


def _record_failure(result: BatchResult, scan: Scan, e: Exception, bar: Any) -> None:
    reason = _reason(scan.input, e)
    result.failed.append((str(scan.input), reason))
    line = f"resmtnet detect: {scan.input}: {reason}"
    if bar is not None:
        bar.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr)


def _reason(source: Path, e: Exception) -> str:
    """Why a scan failed, in one line, without the input's path where the message starts with it."""
    text = str(e) if isinstance(e, ResMTNetError) else f"unexpected error: {type(e).__name__}: {e}"
    text = " ".join(text.split())
    prefix = f"{source}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def write_tree_files(outdir: Path, complete: list[Scan], failed: list[tuple[str, str]]) -> None:
    """Publish the tree's ``nodules.csv`` (every finding of the ``complete`` scans, read back from their own
    nodules.csv) and ``failures.csv`` together, as the root's set."""
    from ..io.fileset import StagedSet
    from .outputs import CSV_FILE, describe_output_error

    try:
        summary = io.StringIO()
        writer = csv.writer(summary)
        writer.writerow(SUMMARY_COLUMNS)
        for scan in complete:
            for row in _read_rows(outdir / scan.name / CSV_FILE):
                writer.writerow([row.get(c, "") for c in NODULES_CSV_COLUMNS] + [scan.name])
        failures = io.StringIO()
        writer = csv.writer(failures)
        writer.writerow(FAILURES_COLUMNS)
        writer.writerows(failed)
        with StagedSet(outdir, replaces=(SUMMARY_FILE, FAILURES_FILE)) as stage:
            assert stage.path is not None
            (stage.path / SUMMARY_FILE).write_text(summary.getvalue(), encoding="utf-8", newline="")
            (stage.path / FAILURES_FILE).write_text(failures.getvalue(), encoding="utf-8", newline="")
            stage.publish({"batch": {"scans": len(complete) + len(failed), "failed": len(failed)}})
    except OSError as e:
        raise OutputError(describe_output_error(outdir, e)) from e


def _read_rows(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
