"""A set of files published into a folder as one: a reader finds the previous set or the new one, never a mix.

The files stay plain files in the folder the user named (Slicer and people open them there), so the
set can't change in one rename; a journal makes the change one step instead:

1. **Stage.** Every file is written into a hidden staging folder inside the output folder
   (``.resmtnet-staging-*``: the same file system, so an output folder that is a mount point works), with
   the manifest ``.resmtnet-set.json`` (each file's name, size and SHA-256), and flushed to disk.
2. **Commit.** The journal ``.resmtnet-publish.json`` (the staging folder, the files it brings, the files of
   the earlier set it drops) is written under a temporary name and renamed into place: the one atomic
   step that decides. Before it, the folder holds the previous set, untouched; after it, the new one is
   decided and only needs finishing.
3. **Finish** (roll forward, each step safe to repeat): the old manifest is removed, each new file is
   renamed into place, the earlier set's files that the new set lacks are removed, the new manifest is
   renamed in last, then the journal and the staging folder are removed.

:func:`recover` finishes a journal a killed process left (step 3 again) and removes staging folders
whose writer is gone; every new set first calls it, and so may a reader. So, at every moment: where the
manifest is present, the files it lists are the folder's set, whole and from one run; where it is absent
and the journal present, a publish was cut short and :func:`recover` completes it. Ctrl-C and SIGTERM
are held off from the commit to the end of step 3, so only a hard kill (SIGKILL, power loss) can leave a
journal behind. Files in the folder that no set named, and other folders, are never touched.

Writers hold an advisory lock (``flock``) on their staging folder while they live, and on the output
folder while they commit and finish, so two processes don't finish one journal at once and recovery
never removes the staging folder of a live writer. Where ``fcntl`` is missing (Windows) there is no
lock: recovery then treats every staging folder but its own process's as left over.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .atomic import TMP_PREFIX, atomic_write

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

MANIFEST = ".resmtnet-set.json"
JOURNAL = ".resmtnet-publish.json"
STAGING_PREFIX = ".resmtnet-staging-"
SET_FORMAT = "resmtnet-set/1"

#: Called with a step's name just before each change a publish makes to the output folder ("commit",
#: "remove manifest", "move NAME", "remove NAME", "manifest", "journal", "staging"). Tests set it to
#: kill the process at each step in turn; it is None otherwise.
STEP_HOOK: Callable[[str], None] | None = None

_own_staging: set[str] = set()  # staging folders of this process (recovery leaves them alone without flock)


def _step(name: str) -> None:
    if STEP_HOOK is not None:
        STEP_HOOK(name)


class StagedSet:
    """A staging folder inside ``outdir`` to write a new set into; :meth:`publish` makes it the folder's set.

    Use as a context manager: on leaving without a publish (an error, Ctrl-C, SIGTERM) the staging folder
    is removed and the folder keeps its previous set. ``replaces``: file names that belong to sets of this
    kind even where no manifest lists them (outputs of versions that wrote none); those the new set lacks
    are removed when it is published, as are the files the previous manifest lists.
    """

    def __init__(self, outdir: str | Path, *, replaces: Iterable[str] = ()):
        self.outdir = Path(outdir)
        self.replaces = frozenset(replaces)
        self.path: Path | None = None
        self._lock_fd: int | None = None
        self._committed = False

    def __enter__(self) -> StagedSet:
        self.outdir.mkdir(parents=True, exist_ok=True)
        with _locked(self.outdir):  # so no recovery sees the new staging folder before it is locked
            _recover_locked(self.outdir)
            self.path = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.outdir))
            try:
                _own_staging.add(self.path.name)
                self._lock_fd = _lock(self.path, wait=False)
            except BaseException:  # Ctrl-C or SIGTERM right here: __exit__ won't run
                self.__exit__()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.path is not None
        try:
            if not self._committed:  # once committed the journal owns the staging folder
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            _unlock(self._lock_fd)
            _own_staging.discard(self.path.name)

    def publish(self, info: dict[str, Any] | None = None) -> list[str]:
        """Make the staged files the output folder's set; returns their names.

        ``info`` goes into the manifest beside the file list (for example the input the set was made from).
        Files and folders in the staging folder whose names start with a dot are not part of the set.
        """
        assert self.path is not None and not self._committed
        names = sorted(p.name for p in self.path.iterdir() if not p.name.startswith("."))
        if not names:
            raise ValueError("nothing was staged")
        manifest = {"format": SET_FORMAT, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                    **(info or {}), "files": {n: _describe(self.path / n) for n in names}}
        _write_synced(self.path / MANIFEST, json.dumps(manifest, indent=1))
        _fsync_dir(self.path)
        with _signals_held(), _locked(self.outdir):
            _recover_locked(self.outdir)
            drop = (_listed_files(self.outdir) | {n for n in self.replaces if (self.outdir / n).exists()}) - set(names)
            journal = {"staging": self.path.name, "files": names, "remove": sorted(drop)}
            _step("commit")
            atomic_write(self.outdir / JOURNAL, lambda tmp: _write_synced(tmp, json.dumps(journal, indent=1)))
            self._committed = True
            try:
                _fsync_dir(self.outdir)
                _finish(self.outdir, journal)
            except OSError as e:
                raise UnfinishedPublish(e.errno, e.strerror or str(e), e.filename) from e
        return names


class UnfinishedPublish(OSError):
    """Publishing failed after the commit: the new set is decided, and the next :func:`recover` (every new
    set starts with one) puts it in place."""


def read_set(outdir: str | Path, *, verify: bool = False) -> dict[str, Any] | None:
    """The manifest of ``outdir``'s complete set, or None where it holds none (or a publish is unfinished).

    Complete: the manifest is present, no journal is, and every file it lists is there with its size
    (``verify``: and its SHA-256).
    """
    outdir = Path(outdir)
    if (outdir / JOURNAL).exists():
        return None
    try:
        manifest = json.loads((outdir / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        for name, entry in files.items():
            if not _plain_name(name):
                return None
            p = outdir / name
            if not p.is_file() or p.stat().st_size != entry["size"]:
                return None
            if verify and _sha256(p) != entry["sha256"]:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return manifest


def recover(outdir: str | Path) -> list[str]:
    """Finish a publish a killed process left in ``outdir`` and remove leftovers of killed writers.

    Returns what was done, one line each (empty when there was nothing to do).
    """
    outdir = Path(outdir)
    if not outdir.is_dir():
        return []
    with _locked(outdir):
        return _recover_locked(outdir)


def _recover_locked(outdir: Path) -> list[str]:
    done = []
    journal_path = outdir / JOURNAL
    if journal_path.exists():
        try:
            journal = json.loads(journal_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            journal = None  # written by rename, so never half: only a foreign file could be unreadable
        if _valid_journal(journal) and (outdir / journal["staging"]).is_dir():
            _finish(outdir, journal)
            done.append(f"finished the publish of a set a killed run left in {outdir}")
        else:
            journal_path.unlink(missing_ok=True)
    for p in sorted(outdir.iterdir()):
        if p.name.startswith(STAGING_PREFIX) and p.is_dir() and p.name not in _own_staging:
            fd = _lock(p, wait=False)
            if fd is None and fcntl is not None:
                continue  # a live writer's
            shutil.rmtree(p, ignore_errors=True)
            _unlock(fd)
            done.append(f"removed {p.name}, left by a killed run")
        elif p.name.startswith(TMP_PREFIX) and p.name.endswith((JOURNAL, MANIFEST)) and p.is_file():
            p.unlink(missing_ok=True)  # a journal a killed run was writing: that run had not committed
    return done


def _finish(outdir: Path, journal: dict[str, Any]) -> None:
    """Step 3, each step safe to repeat: the staging folder's manifest leaves it last of the set's files, so
    while it is there the set is not yet in place."""
    staging = outdir / journal["staging"]
    new_manifest = staging / MANIFEST
    if new_manifest.exists():
        _step("remove manifest")
        (outdir / MANIFEST).unlink(missing_ok=True)
        for name in journal["files"]:
            if (staging / name).exists():
                _step(f"move {name}")
                os.replace(staging / name, outdir / name)
        for name in journal["remove"]:
            if (outdir / name).is_file():
                _step(f"remove {name}")
                (outdir / name).unlink()
        _step("manifest")
        os.replace(new_manifest, outdir / MANIFEST)
        _fsync_dir(outdir)
    _step("journal")
    (outdir / JOURNAL).unlink(missing_ok=True)
    _step("staging")
    shutil.rmtree(staging, ignore_errors=True)


def _plain_name(name: object) -> bool:
    """A file name directly in the folder: a journal or manifest found on disk reaches nothing else."""
    return isinstance(name, str) and bool(name) and not name.startswith(".") and "/" not in name \
        and "\\" not in name and "\0" not in name


def _valid_journal(journal: object) -> bool:
    if not isinstance(journal, dict):
        return False
    staging, files, remove = journal.get("staging"), journal.get("files"), journal.get("remove")
    return (isinstance(staging, str) and staging.startswith(STAGING_PREFIX) and _plain_name(staging[1:])
            and isinstance(files, list) and isinstance(remove, list)
            and all(_plain_name(n) for n in files + remove))


def _listed_files(outdir: Path) -> set[str]:
    """The names the folder's manifest lists (whether or not they are all there)."""
    try:
        files = json.loads((outdir / MANIFEST).read_text(encoding="utf-8"))["files"]
        return {n for n in files if _plain_name(n)}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _describe(p: Path) -> dict[str, Any]:
    with open(p, "rb") as f:
        os.fsync(f.fileno())
    return {"size": p.stat().st_size, "sha256": _sha256(p)}


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make renames in ``path`` durable (a no-op where folders can't be opened, as on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _lock(path: Path, *, wait: bool) -> int | None:
    """An exclusive flock on the folder ``path``: its descriptor, or None where it is held elsewhere."""
    if fcntl is None:
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        if wait:
            raise
        return None
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = _lock(path, wait=True)
    try:
        yield
    finally:
        _unlock(fd)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block is done, then deliver them (main thread only: elsewhere
    Python can't change handlers, and the signals are delivered to the main thread anyway)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    wanted = [signal.SIGINT] + ([signal.SIGTERM] if hasattr(signal, "SIGTERM") else [])
    # a handler installed outside Python (getsignal → None) can't be put back, so that signal is left as it is
    previous = {s: signal.signal(s, lambda signum, _frame: caught.append(signum))
                for s in wanted if signal.getsignal(s) is not None}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(caught):
            signal.raise_signal(s)
