"""A set of files replaces the folder's previous set as one: killed at any step, the folder holds the old set
or the new one (or, after the commit, a journal that the next run finishes), never an unmarked mix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from resmtnet.fileset import JOURNAL, MANIFEST, STAGING_PREFIX, StagedSet, read_set, recover

OLD = {"a.txt": "old a", "b.txt": "old b", "c.txt": "old c"}
NEW = {"a.txt": "new a\n" * 50, "b.txt": "new b", "d.txt": "new d"}
THIRD = {"a.txt": "third a"}
KINDS = ("a.txt", "b.txt", "c.txt", "d.txt")  # names sets of this kind may hold (as a detection's OUTPUT_FILES)
USER_FILE = "my-notes.txt"  # a file no set named: never touched

# Publishes NEW into argv[1]; the hook SIGKILLs the process at the argv[2]-th step (0: never) and prints steps.
PUBLISH = textwrap.dedent("""
    import json, os, signal, sys
    import resmtnet.fileset as fs
    outdir, kill_at, files, kinds = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
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
    import resmtnet.fileset as fs
    steps = []
    def hook(name):
        steps.append(name)
        if len(steps) == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)
    fs.STEP_HOOK = hook
    fs.recover(sys.argv[1])
""")


def _publish(outdir: Path, files: dict[str, str], run: str) -> None:
    with StagedSet(outdir, replaces=KINDS) as stage:
        for name, text in files.items():
            (stage.path / name).write_text(text)
        stage.publish({"run": run})


def _python(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60)


def _kill_publish_at(outdir: Path, step: int) -> subprocess.CompletedProcess:
    return _python(PUBLISH, str(outdir), str(step), json.dumps(NEW), json.dumps(KINDS))


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


def _is_whole_set(outdir: Path, files: dict[str, str], run: str) -> bool:
    manifest = read_set(outdir, verify=True)
    return (manifest is not None and manifest["run"] == run and set(manifest["files"]) == set(files)
            and _visible(outdir) == {**files, USER_FILE: "mine"})


def test_publishing_replaces_the_previous_set_whole(tmp_path):
    outdir = _old_folder(tmp_path, "out")
    assert _is_whole_set(outdir, OLD, "old") and _hidden(outdir) == {MANIFEST}
    _publish(outdir, NEW, "new")  # c.txt, of the old set only, goes; the user's file stays
    assert _is_whole_set(outdir, NEW, "new") and _hidden(outdir) == {MANIFEST}
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
    assert _is_whole_set(outdir, NEW, "new") and _hidden(outdir) == {MANIFEST}


def test_an_error_while_staging_leaves_the_previous_set(tmp_path):
    outdir = _old_folder(tmp_path, "out")
    with pytest.raises(OSError, match="No space"), StagedSet(outdir, replaces=KINDS) as stage:
        (stage.path / "a.txt").write_text("half")
        raise OSError(28, "No space left on device")
    assert _is_whole_set(outdir, OLD, "old") and _hidden(outdir) == {MANIFEST}


def test_killed_at_every_step_of_publishing_the_folder_holds_the_old_set_or_finishes_to_the_new(tmp_path):
    """SIGKILL at each step in turn: before the commit the old set is there whole; after it the manifest is
    gone (a reader sees no set) and the journal is there until the next run, which finishes the new set."""
    steps = _kill_publish_at(_old_folder(tmp_path, "count"), 0).stdout.splitlines()
    assert steps == ["commit", "remove manifest", "move a.txt", "move b.txt", "move d.txt", "remove c.txt",
                     "manifest", "journal", "staging"]
    for k in range(1, len(steps) + 1):
        outdir = _old_folder(tmp_path, f"kill-{k}")
        res = _kill_publish_at(outdir, k)
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
        assert _hidden(outdir) == {MANIFEST}, k
        # and the next set goes in as usual
        _publish(outdir, THIRD, "third")
        assert _is_whole_set(outdir, THIRD, "third") and _hidden(outdir) == {MANIFEST}


def test_a_recovery_killed_part_way_is_finished_by_the_next(tmp_path):
    """The finishing steps are safe to repeat: kill the publish after its first move, then the recovery at each
    of its own steps; a last recovery still gives the whole new set."""
    for j in range(1, 7):
        outdir = _old_folder(tmp_path, f"twice-{j}")
        assert _kill_publish_at(outdir, 4).returncode == -signal.SIGKILL  # after "move a.txt"
        res = _python(RECOVER, str(outdir), str(j))
        assert res.returncode in (0, -signal.SIGKILL), res.stderr
        recover(outdir)
        assert _is_whole_set(outdir, NEW, "new") and _hidden(outdir) == {MANIFEST}, j


def test_sigterm_while_publishing_waits_for_the_publish(tmp_path):
    """Ctrl-C and SIGTERM are held from the commit to the end: the set is finished, then the signal acts."""
    outdir = _old_folder(tmp_path, "out")
    script = PUBLISH.replace("os.kill(os.getpid(), signal.SIGKILL)", "os.kill(os.getpid(), signal.SIGTERM)")
    script = "import signal\nfrom resmtnet.cli import _raise_terminated\n" \
             "signal.signal(signal.SIGTERM, _raise_terminated)\n" \
             "try:\n" + textwrap.indent(script, "    ") + \
             "\nexcept KeyboardInterrupt as e:\n    print('stopped by', type(e).__name__); sys.exit(143)\n"
    res = _python(script, str(outdir), "3", json.dumps(NEW), json.dumps(KINDS))
    assert res.returncode == 143, res.stderr
    assert "stopped by Terminated" in res.stdout and "staging" in res.stdout  # after the last step
    assert _is_whole_set(outdir, NEW, "new") and _hidden(outdir) == {MANIFEST}


def test_recovery_leaves_a_live_writers_staging_folder_alone(tmp_path):
    outdir = _old_folder(tmp_path, "out")
    if os.name != "posix":
        pytest.skip("staging folders are locked with flock, which this system lacks")
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from resmtnet.fileset import StagedSet
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
    assert _hidden(outdir) == {MANIFEST} and _is_whole_set(outdir, OLD, "old")


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
