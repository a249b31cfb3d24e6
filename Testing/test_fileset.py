"""A set of files replaces the folder's previous set as one: killed at any step, every name that opens shows
the old set or the new one, whole; where links can't be made, a journal marks a mix that the next run
finishes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from resmtnet.io.fileset import JOURNAL, MANIFEST, STAGING_PREFIX, TREE, StagedSet, read_set, recover

OLD = {"a.txt": "old a", "b.txt": "old b", "c.txt": "old c"}
NEW = {"a.txt": "new a\n" * 50, "b.txt": "new b", "d.txt": "new d"}
THIRD = {"a.txt": "third a"}
KINDS = ("a.txt", "b.txt", "c.txt", "d.txt")  # names sets of this kind may hold (as a detection's OUTPUT_FILES)
USER_FILE = "my-notes.txt"  # a file no set named: never touched

# Publishes NEW into argv[1]; the hook SIGKILLs the process at the argv[2]-th step (0: never) and prints steps.
# argv[5] "journal": os.symlink raises, as on a FAT disk, so the set is published with the journal.
PUBLISH = textwrap.dedent("""
    import json, os, signal, sys
    import resmtnet.io.fileset as fs
    outdir, kill_at, files, kinds = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
    if sys.argv[5:] == ["journal"]:
        def no_symlinks(*args, **kwargs):
            raise PermissionError(1, "Operation not permitted")
        os.symlink = no_symlinks
    steps = []
    def hook(name):
        steps.append(name)
        print(name, flush=True)
        if len(steps) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    fs.STEP_HOOK = hook
    with fs.StagedSet(outdir, replaces=kinds) as stage:
        for name, text in files.items():
            (stage.path / name).write_text(text)
        stage.publish({"run": "new"})
""")

# Recovers argv[1]; SIGKILLs itself at the argv[2]-th step.
RECOVER = textwrap.dedent("""
    import os, signal, sys
    import resmtnet.io.fileset as fs
    steps = []
    def hook(name):
        steps.append(name)
        if len(steps) == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)
    fs.STEP_HOOK = hook
    fs.recover(sys.argv[1])
""")


def _no_symlinks(*args, **kwargs):
    raise PermissionError(1, "Operation not permitted")  # what os.symlink raises on a FAT disk


def _publish(outdir: Path, files: dict[str, str], run: str) -> None:
    with StagedSet(outdir, replaces=KINDS) as stage:
        for name, text in files.items():
            (stage.path / name).write_text(text)
        stage.publish({"run": run})


def _python(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60)


def _kill_publish_at(outdir: Path, step: int, method: str = "links") -> subprocess.CompletedProcess:
    return _python(PUBLISH, str(outdir), str(step), json.dumps(NEW), json.dumps(KINDS), method)


def _visible(outdir: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in outdir.iterdir() if not p.name.startswith(".")}


def _hidden(outdir: Path) -> set[str]:
    return {p.name for p in outdir.iterdir() if p.name.startswith(".")}


def _old_folder(tmp_path: Path, name: str) -> Path:
    outdir = tmp_path / name
    outdir.mkdir()
    (outdir / USER_FILE).write_text("mine")
    _publish(outdir, OLD, "old")
    return outdir


def _legacy_folder(tmp_path: Path, name: str, monkeypatch) -> Path:
    """Plain files and a plain manifest, as an earlier version (or a disk without links) left them."""
    outdir = tmp_path / name
    outdir.mkdir()
    (outdir / USER_FILE).write_text("mine")
    with monkeypatch.context() as m:
        m.setattr(os, "symlink", _no_symlinks)
        _publish(outdir, OLD, "old")
    assert not any(p.is_symlink() for p in outdir.iterdir()) and _hidden(outdir) == {MANIFEST}
    return outdir


def _is_whole_set(outdir: Path, files: dict[str, str], run: str) -> bool:
    manifest = read_set(outdir, verify=True)
    return (manifest is not None and manifest["run"] == run and set(manifest["files"]) == set(files)
            and _visible(outdir) == {**files, USER_FILE: "mine"})


def _is_clean(outdir: Path) -> bool:
    """A linked set and nothing else: each name a fixed link into it, one set folder, no staging, no journal."""
    tree = outdir / TREE
    names = set(json.loads((outdir / MANIFEST).read_text())["files"]) | {MANIFEST}
    links = {p.name for p in outdir.iterdir() if p.is_symlink()}
    return (_hidden(outdir) == {MANIFEST, TREE} and links == names
            and all(os.readlink(outdir / n) == f"{TREE}/current/{n}" for n in names)
            and {p.name for p in tree.iterdir()} == {"current", os.readlink(tree / "current")})


def _shown(outdir: Path, sets: dict[str, dict[str, str]], unlisted_old: bool = False) -> str:
    """Without recovering: the run whose set the folder shows. Every name that opens must hold that set's
    content and every name of that set must open (its manifest's sizes and SHA-256 matching; ``unlisted_old``:
    the old set has no manifest, or the one made for it when it was turned into a linked set)."""
    opened = {}
    for p in outdir.iterdir():
        if not p.name.startswith(".") and p.name != USER_FILE:
            with contextlib.suppress(FileNotFoundError):  # a link into a set that isn't the current one
                opened[p.name] = p.read_text()
    runs = [run for run, files in sets.items() if opened == files]
    assert len(runs) == 1, f"a mix or an incomplete set: {opened}"
    manifest = read_set(outdir, verify=True)
    if unlisted_old and runs[0] == "old":
        assert manifest is None or manifest.get("legacy") is True and set(manifest["files"]) == set(OLD), manifest
    else:
        assert (manifest or {}).get("run") == (runs[0] if runs[0] != "none" else None), manifest
    assert (outdir / USER_FILE).read_text() == "mine"
    return runs[0]


def test_publishing_replaces_the_previous_set_whole(tmp_path):
    outdir = _old_folder(tmp_path, "out")
    assert _is_whole_set(outdir, OLD, "old") and _is_clean(outdir)
    _publish(outdir, NEW, "new")  # c.txt, of the old set only, goes; the user's file stays
    assert _is_whole_set(outdir, NEW, "new") and _is_clean(outdir)
    assert not (outdir / "c.txt").is_symlink()
    # a file changed behind the manifest's back: the set is no longer whole (verify), or not even by size
    (outdir / "b.txt").write_text("new B")
    assert read_set(outdir) is not None and read_set(outdir, verify=True) is None
    (outdir / "b.txt").write_text("changed")
    assert read_set(outdir) is None


def test_files_an_older_version_wrote_without_a_manifest_are_replaced_too(tmp_path):
    outdir = tmp_path / "out"
    outdir.mkdir()
    for name, text in {**OLD, USER_FILE: "mine"}.items():
        (outdir / name).write_text(text)
    _publish(outdir, NEW, "new")  # c.txt is a name sets of this kind hold: it goes
    assert _is_whole_set(outdir, NEW, "new") and _is_clean(outdir)


def test_an_error_while_staging_leaves_the_previous_set(tmp_path):
    outdir = _old_folder(tmp_path, "out")
    with pytest.raises(OSError, match="No space"), StagedSet(outdir, replaces=KINDS) as stage:
        (stage.path / "a.txt").write_text("half")
        raise OSError(28, "No space left on device")
    assert _is_whole_set(outdir, OLD, "old") and _is_clean(outdir)


LINKED_STEPS = ["set folder", "link d.txt", "new current", "switch", "unlink c.txt",
                "remove old set"]


@pytest.mark.parametrize("start", ["empty", "earlier set", "legacy files", "legacy files without a manifest"])
def test_killed_at_every_step_of_publishing_the_folder_shows_the_old_set_or_the_new(tmp_path, start, monkeypatch):
    """SIGKILL at each step of a publish with links in turn, into an empty folder, one holding a set of other
    files (c.txt goes, d.txt comes), and one holding an earlier version's plain files (with a manifest, or of a
    version that wrote none): every name that opens
    shows one set, whole (before the switch the old one, after it the new one), with no recovery; the next
    recovery leaves the new (or old) set and nothing else."""
    def folder(name: str) -> Path:
        if start == "legacy files":
            return _legacy_folder(tmp_path, name, monkeypatch)
        if start == "legacy files without a manifest":
            (_legacy_folder(tmp_path, name, monkeypatch) / MANIFEST).unlink()
            return tmp_path / name
        if start == "earlier set":
            return _old_folder(tmp_path, name)
        (tmp_path / name).mkdir()
        (tmp_path / name / USER_FILE).write_text("mine")
        return tmp_path / name

    steps = _kill_publish_at(folder("count"), 0).stdout.splitlines()
    if start == "empty":
        assert steps == ["set folder", f"link {MANIFEST}", "link a.txt", "link b.txt", "link d.txt",
                         "new current", "switch"]
    elif start == "earlier set":
        assert steps == LINKED_STEPS
    else:  # the plain files become a linked set first, each name showing the same content throughout
        assert steps == ["legacy set", "legacy current", f"link {MANIFEST}", "link a.txt", "link b.txt",
                         "link c.txt", *LINKED_STEPS]
    old_run = "none" if start == "empty" else "old"
    sets = {"none": {}, "old": OLD, "new": NEW}
    for k in range(1, len(steps) + 1):
        outdir = folder(f"kill-{k}")
        res = _kill_publish_at(outdir, k)
        assert res.returncode == -signal.SIGKILL, (k, res.stderr)
        switched = "switch" in steps[:k - 1]
        unlisted = start == "legacy files without a manifest"
        assert _shown(outdir, sets, unlisted) == ("new" if switched else old_run), (k, steps[k - 1])
        recover(outdir)
        assert _shown(outdir, sets, unlisted) == ("new" if switched else old_run), k
        if start == "legacy files" and f"link {MANIFEST}" not in steps[:k - 1]:  # back to the plain files
            assert _hidden(outdir) == {MANIFEST} and not any(p.is_symlink() for p in outdir.iterdir()), k
        elif unlisted and "legacy current" not in steps[:k - 1]:
            assert _hidden(outdir) == set() and not any(p.is_symlink() for p in outdir.iterdir()), k
        elif start == "empty" and not switched:
            assert _hidden(outdir) == set() and _visible(outdir) == {USER_FILE: "mine"}, k
        else:  # a migration cut short is finished
            assert _is_clean(outdir), (k, _hidden(outdir))
        _publish(outdir, THIRD, "third")  # and the next set goes in as usual
        assert _is_whole_set(outdir, THIRD, "third") and _is_clean(outdir)


def test_killed_at_every_step_of_publishing_with_the_journal_it_finishes_to_the_new(tmp_path, monkeypatch):
    """Where links can't be made (os.symlink raises, as on a FAT disk): SIGKILL at each step in turn: before the
    commit the old set is there whole; after it the manifest is gone (a reader sees no set) and the journal
    is there until the next run, which finishes the new set."""
    steps = _kill_publish_at(_legacy_folder(tmp_path, "count", monkeypatch), 0, "journal").stdout.splitlines()
    assert steps == ["commit", "remove manifest", "move a.txt", "move b.txt", "move d.txt", "remove c.txt",
                     "manifest", "journal", "staging"]
    for k in range(1, len(steps) + 1):
        outdir = _legacy_folder(tmp_path, f"kill-{k}", monkeypatch)
        res = _kill_publish_at(outdir, k, "journal")
        assert res.returncode == -signal.SIGKILL, (k, res.stderr)
        if k == 1:  # killed before the commit: the old set, untouched; a staging folder left behind
            assert _is_whole_set(outdir, OLD, "old")
            assert JOURNAL not in _hidden(outdir) and any(n.startswith(STAGING_PREFIX) for n in _hidden(outdir))
        elif (outdir / JOURNAL).exists():  # after the commit: no set shown as whole until it is finished
            assert read_set(outdir) is None
        else:  # killed while removing the staging folder: the new set is whole already
            assert _is_whole_set(outdir, NEW, "new")
        assert (outdir / USER_FILE).read_text() == "mine"
        done = recover(outdir)
        assert done, k
        expected = (OLD, "old") if k == 1 else (NEW, "new")
        assert _is_whole_set(outdir, *expected), k
        assert _hidden(outdir) == {MANIFEST} and not any(p.is_symlink() for p in outdir.iterdir()), k
        # and the next set goes in as usual, with links where they can be made
        _publish(outdir, THIRD, "third")
        assert _is_whole_set(outdir, THIRD, "third") and _is_clean(outdir)


def test_a_recovery_killed_part_way_is_finished_by_the_next(tmp_path, monkeypatch):
    """The journal's finishing steps are safe to repeat: kill the publish after its first move, then the
    recovery at each of its own steps; a last recovery still gives the whole new set (then linked)."""
    for j in range(1, 7):
        outdir = _legacy_folder(tmp_path, f"twice-{j}", monkeypatch)
        assert _kill_publish_at(outdir, 4, "journal").returncode == -signal.SIGKILL  # after "move a.txt"
        res = _python(RECOVER, str(outdir), str(j))
        assert res.returncode in (0, -signal.SIGKILL), res.stderr
        recover(outdir)
        assert _is_whole_set(outdir, NEW, "new") and _hidden(outdir) == {MANIFEST}, j
        _publish(outdir, THIRD, "third")
        assert _is_whole_set(outdir, THIRD, "third") and _is_clean(outdir)


def test_sigterm_while_publishing_waits_for_the_publish(tmp_path):
    """Ctrl-C and SIGTERM are held from the commit to the end: the set is finished, then the signal acts."""
    outdir = _old_folder(tmp_path, "out")
    script = PUBLISH.replace("os.kill(os.getpid(), signal.SIGKILL)", "os.kill(os.getpid(), signal.SIGTERM)")
    script = "import signal\nfrom resmtnet.cli.cli import _raise_terminated\n" \
             "signal.signal(signal.SIGTERM, _raise_terminated)\n" \
             "try:\n" + textwrap.indent(script, "    ") + \
             "\nexcept KeyboardInterrupt as e:\n    print('stopped by', type(e).__name__); sys.exit(143)\n"
    res = _python(script, str(outdir), "3", json.dumps(NEW), json.dumps(KINDS))
    assert res.returncode == 143, res.stderr
    assert "stopped by Terminated" in res.stdout and "remove old set" in res.stdout  # after the last step
    assert _is_whole_set(outdir, NEW, "new") and _is_clean(outdir)


def test_recovery_leaves_a_live_writers_staging_folder_alone(tmp_path):
    outdir = _old_folder(tmp_path, "out")
    if os.name != "posix":
        pytest.skip("staging folders are locked with flock, which this system lacks")
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from resmtnet.io.fileset import StagedSet
        with StagedSet(sys.argv[1]) as stage:
            print(stage.path.name, flush=True)
            time.sleep(60)
        """), str(outdir)], stdout=subprocess.PIPE, text=True)
    try:
        live = writer.stdout.readline().strip()
        assert live.startswith(STAGING_PREFIX)
        dead = outdir / f"{STAGING_PREFIX}killed"
        dead.mkdir()
        (dead / "a.txt").write_text("half")
        done = recover(outdir)
        assert (outdir / live).is_dir() and not dead.exists() and len(done) == 1
    finally:
        writer.kill()
        writer.wait()
    recover(outdir)
    assert _is_clean(outdir) and _is_whole_set(outdir, OLD, "old")


def test_a_journal_found_on_disk_reaches_nothing_outside_the_folder(tmp_path):
    """A results folder from elsewhere may hold any journal: one naming paths outside is dropped, unused."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "a.txt").write_text("keep")
    outdir = _old_folder(tmp_path, "out")
    for journal in ({"staging": "../victim", "files": ["a.txt"], "remove": []},
                    {"staging": f"{STAGING_PREFIX}x/../../victim", "files": ["a.txt"], "remove": []},
                    {"staging": f"{STAGING_PREFIX}x", "files": ["../victim/a.txt"], "remove": ["../victim/a.txt"]}):
        (outdir / f"{STAGING_PREFIX}x").mkdir(exist_ok=True)
        (outdir / JOURNAL).write_text(json.dumps(journal))
        recover(outdir)
        assert (victim / "a.txt").read_text() == "keep" and not (outdir / JOURNAL).exists()
        assert _is_whole_set(outdir, OLD, "old")


def test_a_link_tree_found_on_disk_reaches_nothing_outside_the_folder(tmp_path):
    """A results folder from elsewhere may hold any ``.resmtnet``: a ``current`` pointing outside is not a set;
    recovery removes that link only, never what it points at, nor files in ``.resmtnet`` it did not make."""
    victim = tmp_path / "victim"
    (victim / "set-x").mkdir(parents=True)
    (victim / "set-x" / "a.txt").write_text("keep")
    outdir = tmp_path / "out"
    (outdir / TREE).mkdir(parents=True)
    (outdir / TREE / "notes.txt").write_text("not ours")
    for target in ("../../victim/set-x", "../../victim", str(victim / "set-x")):
        (outdir / TREE / "current").unlink(missing_ok=True)
        os.symlink(target, outdir / TREE / "current")
        os.symlink(f"{TREE}/current/a.txt", outdir / "a.txt")
        recover(outdir)
        assert (victim / "set-x" / "a.txt").read_text() == "keep", target
        assert not os.path.lexists(outdir / "a.txt") and not os.path.lexists(outdir / TREE / "current")
        assert (outdir / TREE / "notes.txt").read_text() == "not ours"
    _publish(outdir, NEW, "new")
    assert _visible(outdir) == NEW and (outdir / TREE / "notes.txt").read_text() == "not ours"


def test_where_links_fail_a_linked_set_is_replaced_by_plain_files(tmp_path, monkeypatch):
    """A linked set, then a publish where os.symlink raises (the journal method): the new set as plain files, the
    old set's folder and links gone, the user's file kept; with links back, the next set is linked again."""
    outdir = _old_folder(tmp_path, "out")
    with monkeypatch.context() as m:
        m.setattr(os, "symlink", _no_symlinks)
        _publish(outdir, NEW, "new")
    assert _is_whole_set(outdir, NEW, "new") and _hidden(outdir) == {MANIFEST}
    assert not any(p.is_symlink() for p in outdir.iterdir())
    _publish(outdir, THIRD, "third")
    assert _is_whole_set(outdir, THIRD, "third") and _is_clean(outdir)


def test_a_folder_at_a_name_of_the_new_set_stops_the_publish_before_any_change(tmp_path):
    outdir = _old_folder(tmp_path, "out")
    (outdir / "d.txt").mkdir()
    with pytest.raises(IsADirectoryError, match="a folder has the name of a result"):
        _publish(outdir, NEW, "new")
    (outdir / "d.txt").rmdir()
    assert _is_whole_set(outdir, OLD, "old") and _is_clean(outdir)
