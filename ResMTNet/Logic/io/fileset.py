"""A set of files published into a folder as one: a reader finds the previous set or the new one, never a mix.

People and Slicer open the files by their plain names directly in the output folder, so where the file
system has symbolic links (POSIX), each set lives in a hidden folder of its own and the names are links:

    OUTDIR/.resmtnet/set-<id>/        the set's files and its manifest ``.resmtnet-set.json`` (each file's
                                      name, size and SHA-256)
    OUTDIR/.resmtnet/current          -> set-<id>   (the one link that changes)
    OUTDIR/nodules.csv                -> .resmtnet/current/nodules.csv   (fixed: a link's text never changes)
    OUTDIR/.resmtnet-set.json         -> .resmtnet/current/.resmtnet-set.json

Publishing a set (each change named to :data:`STEP_HOOK` first):

1. **Stage.** Every file is written into a hidden staging folder inside the output folder
   (``.resmtnet-staging-*``: the same file system, so an output folder that is a mount point works), then
   the manifest, all flushed to disk; the staging folder is renamed to ``.resmtnet/set-<id>`` ("set folder").
2. **Links.** The links the new set needs that are missing are made, the manifest's first ("link NAME").
   Until the switch they point at names the current set lacks, so they open nothing.
3. **Switch.** A temporary link to the new set folder ("new current") is renamed over ``.resmtnet/current``
   ("switch"): the one atomic step that decides. Every name now opens the new set's file.
4. **Clean up.** The links of names the new set lacks (dangling now) are removed ("unlink NAME"), then the
   previous set folder ("remove old set").

So a reader, at every instant, opens each name from one set only, and every name of the old set (before
the switch) or of the new one (after it) opens. A folder of plain files from an earlier version (listed by
a plain manifest, or among ``replaces``) is first turned into such a set without a moment where a name is
missing or changes content: the files are hard-linked (copied where that fails) into a set folder
("legacy set"), ``current`` is pointed at it ("legacy current"), and each plain file is replaced by its link
with one rename ("link NAME"), the manifest's first.

Where symbolic links can't be made (Windows without the privilege, FAT/exFAT disks, some SMB mounts) a
journal is used instead: after staging, the journal ``.resmtnet-publish.json`` is renamed into place
("commit"), the old manifest removed, the files renamed into the folder one by one, the earlier set's other
files removed, the new manifest renamed in last, then the journal and the staging folder removed. Killed
between the commit and the end, the folder holds a mix that is marked as one (no manifest, a journal),
which :func:`recover` finishes.

:func:`recover` removes what a killed publish left: dangling links into ``.resmtnet/current/``, set folders
other than the current one, staging folders of writers that are gone; it finishes a half-done migration
and a journal. Every new set first calls it, and so may a reader. Ctrl-C and SIGTERM are held off while
the output folder changes, so only a hard kill (SIGKILL, power loss) leaves anything for it. Files in the
folder that no set named, and other folders, are never touched.

Writers hold an advisory lock (``flock``) on their staging folder while they live, and on the output
folder while they publish, so two processes don't publish at once and recovery never removes the staging
folder of a live writer. Where ``fcntl`` is missing (Windows) there is no lock: recovery then treats every
staging folder but its own process's as left over.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import os
import secrets
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..util.atomic import TMP_PREFIX, atomic_write

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

MANIFEST = ".resmtnet-set.json"
JOURNAL = ".resmtnet-publish.json"
STAGING_PREFIX = ".resmtnet-staging-"
SET_FORMAT = "resmtnet-set/1"
TREE = ".resmtnet"  # the folder inside the output folder that holds the sets and the link ``current``
CURRENT = "current"
SET_PREFIX = "set-"
LINK_TMP_PREFIX = ".resmtnet-link-"  # a link made beside a name, then renamed over it

#: Called with a step's name just before each change a publish makes to the output folder. With links:
#: "legacy set", "legacy current", "link NAME" (migration of plain files), "set folder", "link NAME",
#: "new current", "switch", "unlink NAME", "remove NAME", "remove old set". With the journal: "commit",
#: "remove manifest", "move NAME", "remove NAME", "manifest", "journal", "staging". Tests set it to kill
#: the process at each step in turn; it is None otherwise.
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
            if not self._committed:  # once committed, the publish owns the staging folder
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
            if _links_work(self.outdir):
                self._committed = True  # from here the staging folder becomes a set folder or is removed
                _publish_linked(self.outdir, self.path, names, self.replaces)
            else:
                self._publish_journaled(names)
        return names

    def _publish_journaled(self, names: list[str]) -> None:
        """Where links can't be made: commit a journal, then move the files in (see the module's docstring)."""
        assert self.path is not None
        drop = (_listed_files(self.outdir) | {n for n in self.replaces if (self.outdir / n).exists()}) - set(names)
        journal = {"staging": self.path.name, "files": names, "remove": sorted(drop)}
        _step("commit")
        atomic_write(self.outdir / JOURNAL, lambda tmp: _write_synced(tmp, json.dumps(journal, indent=1)))
        self._committed = True
        try:
            _fsync_dir(self.outdir)
            _finish(self.outdir, journal)
            _recover_tree(self.outdir)  # a linked set this one replaced: its folder and links go
        except OSError as e:
            raise UnfinishedPublish(e.errno, e.strerror or str(e), e.filename) from e


class UnfinishedPublish(OSError):
    """Publishing failed after the commit: the new set is decided, and the next :func:`recover` (every new
    set starts with one) puts it in place."""


def read_set(outdir: str | Path, *, verify: bool = False) -> dict[str, Any] | None:
    """The manifest of ``outdir``'s complete set, or None where it holds none (or a publish is unfinished).

    Complete: the manifest is present, no journal is, and every file it lists opens by its name in ``outdir``
    (through the links into the current set) with its size (``verify``: and its SHA-256).
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
    done += _recover_tree(outdir)
    return done


# --- publishing with links ----------------------------------------------------------------------------------

def _publish_linked(outdir: Path, staging: Path, names: list[str], replaces: frozenset[str]) -> None:
    """Steps 2-4 of the module's docstring (after migrating plain files of an earlier version, if any)."""
    tree = outdir / TREE
    shown = [MANIFEST, *names]  # the manifest's link first: recovery takes a link set as in force by it
    for name in shown:
        if (outdir / name).is_dir() and not (outdir / name).is_symlink():
            shutil.rmtree(staging, ignore_errors=True)
            raise IsADirectoryError(errno.EISDIR, "a folder has the name of a result", str(outdir / name))
    switched = False
    try:
        old = _current_set(outdir)
        if old is None:
            tree.mkdir(exist_ok=True)
            legacy = _legacy_names(outdir, names, replaces)
            if legacy:
                old = _migrate(outdir, legacy)
        new = _new_set_folder(tree)
        os.chmod(staging, stat.S_IMODE(outdir.stat().st_mode))  # readable as the folder is (staging: 0700)
        _step("set folder")
        os.rename(staging, new)
        _fsync_dir(tree)
        for name in shown:
            if not _is_our_link(outdir / name):
                _step(f"link {name}")
                _replace_by_link(outdir, name)
        _fsync_dir(outdir)
        _step("new current")
        tmp = tree / f"{CURRENT}.{new.name}"
        os.symlink(new.name, tmp)
        _step("switch")
        os.replace(tmp, tree / CURRENT)
        switched = True
        _fsync_dir(tree)
    except BaseException:
        if not switched:  # the previous set is still the one shown: take away what this publish added
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(OSError):
                _recover_tree(outdir)
        raise
    # the new set is in place; what is left if this is cut short, the next recovery removes
    with contextlib.suppress(OSError):
        for p in sorted(outdir.iterdir()):
            if p.name not in shown and _is_our_link(p):
                _step(f"unlink {p.name}")
                p.unlink()
            elif p.name in replaces and p.name not in shown and p.is_file() and not p.is_symlink():
                _step(f"remove {p.name}")  # a plain file of an earlier version beside a linked set
                p.unlink()
        if old is not None:
            _step("remove old set")
            shutil.rmtree(old)
        _fsync_dir(outdir)


def _migrate(outdir: Path, legacy: list[str]) -> Path:
    """Turn the plain files ``legacy`` (and a plain manifest) into the current linked set, each name showing
    the same content at every instant; returns the set folder."""
    tree = outdir / TREE
    folder = _new_set_folder(tree)
    _step("legacy set")
    folder.mkdir()
    for name in legacy:
        _link_or_copy(outdir / name, folder / name)
    if (outdir / MANIFEST).is_file() and not (outdir / MANIFEST).is_symlink():
        _link_or_copy(outdir / MANIFEST, folder / MANIFEST)
    else:  # files of a version that wrote no manifest: described as they are
        manifest = {"format": SET_FORMAT, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                    "legacy": True, "files": {n: _describe(folder / n) for n in legacy}}
        _write_synced(folder / MANIFEST, json.dumps(manifest, indent=1))
    _fsync_dir(folder)
    _step("legacy current")
    os.symlink(folder.name, tree / CURRENT)
    _fsync_dir(tree)
    for name in [MANIFEST, *legacy]:
        _step(f"link {name}")
        _replace_by_link(outdir, name)
    _fsync_dir(outdir)
    return folder


def _legacy_names(outdir: Path, names: list[str], replaces: frozenset[str]) -> list[str]:
    """Plain files of an earlier set: listed by a plain manifest, or at a name sets of this kind hold."""
    listed = _listed_files(outdir) if not (outdir / MANIFEST).is_symlink() else set()
    return sorted(n for n in listed | replaces | set(names)
                  if _plain_name(n) and (outdir / n).is_file() and not (outdir / n).is_symlink())


def _recover_tree(outdir: Path) -> list[str]:
    """Remove what a killed linked publish left; finish a migration cut short. Returns what was done."""
    done = []
    for p in sorted(outdir.iterdir()):
        if p.name.startswith(LINK_TMP_PREFIX) and p.is_symlink():
            p.unlink()
    tree = outdir / TREE
    current = _current_set(outdir)
    manifest = outdir / MANIFEST
    if current is None or (manifest.exists() and not _is_our_link(manifest)):
        # no linked set in force (none yet, or a plain set was published over it): links and sets go
        links = [p for p in sorted(outdir.iterdir()) if _is_our_link(p)]
        for p in links:
            p.unlink()
        if tree.is_dir() and not tree.is_symlink():
            removed = _remove_sets(tree, keep=None)
            with contextlib.suppress(OSError):  # only where nothing else is in it
                tree.rmdir()
            if links or removed:
                done.append(f"removed the unused sets and links in {outdir}")
        return done
    for p in _remove_sets(tree, keep=current):
        done.append(f"removed {TREE}/{p}, a set a killed run left")
    if not os.path.lexists(manifest):  # a migration cut short before it linked the manifest
        _replace_by_link(outdir, MANIFEST)
    for p in sorted(outdir.iterdir()):
        if _is_our_link(p) and not p.exists():
            p.unlink()
            done.append(f"removed the link {p.name}, left by a killed run")
        elif p.is_file() and not p.is_symlink() and _same_file(p, current / p.name):
            _replace_by_link(outdir, p.name)  # a migration cut short: the same content, now by its link
            done.append(f"linked {p.name} to its set")
    return done


def _remove_sets(tree: Path, keep: Path | None) -> list[str]:
    """Remove the set folders in ``tree`` but ``keep`` and the temporary links to them (with ``keep`` None, also
    ``current``); returns the names of the set folders removed. Nothing else in ``tree`` is touched."""
    removed = []
    for p in sorted(tree.iterdir()):
        if (p.name == CURRENT and keep is None or p.name.startswith(f"{CURRENT}.")) and p.is_symlink():
            p.unlink()
        elif p.name.startswith(SET_PREFIX) and p != keep and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
            removed.append(p.name)
    return removed


def _current_set(outdir: Path) -> Path | None:
    """The folder ``.resmtnet/current`` points at, where it is one of the sets; else None."""
    try:
        target = os.readlink(outdir / TREE / CURRENT)
    except OSError:
        return None
    folder = outdir / TREE / target
    if not (target.startswith(SET_PREFIX) and _plain_name(target)) or folder.is_symlink() or not folder.is_dir():
        return None
    return folder


def _new_set_folder(tree: Path) -> Path:
    while True:
        folder = tree / f"{SET_PREFIX}{secrets.token_hex(6)}"
        if not os.path.lexists(folder):
            return folder


def _link_text(name: str) -> str:
    return os.path.join(TREE, CURRENT, name)


def _is_our_link(p: Path) -> bool:
    """``p`` is the fixed link of its name into the current set."""
    try:
        return os.readlink(p) == _link_text(p.name)
    except OSError:
        return False


def _replace_by_link(outdir: Path, name: str) -> None:
    """Put the fixed link at ``name`` with one rename (whatever was there shows until that instant)."""
    tmp = outdir / f"{LINK_TMP_PREFIX}{secrets.token_hex(6)}"
    os.symlink(_link_text(name), tmp)
    try:
        os.replace(tmp, outdir / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _links_work(outdir: Path) -> bool:
    """Whether symbolic links can be made in ``outdir`` (not on FAT/exFAT, some SMB mounts, Windows without
    the privilege). A full or read-only disk is an error, not a reason to do without."""
    probe = outdir / f"{LINK_TMP_PREFIX}{secrets.token_hex(6)}"
    try:
        os.symlink(TREE, probe)
    except NotImplementedError:
        return False
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EROFS, getattr(errno, "EDQUOT", -1)):
            raise
        return False
    probe.unlink()
    return True


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return b.is_file() and (os.path.samefile(a, b) or (a.stat().st_size == b.stat().st_size
                                                           and _sha256(a) == _sha256(b)))
    except OSError:
        return False


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
