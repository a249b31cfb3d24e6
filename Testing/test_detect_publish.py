"""`resmtnet detect` replaces OUTDIR's results as one set: killed, terminated or out of disk, OUTDIR shows the
previous set whole or the new one, and every output error is one line, exit 2."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest_slicer import *  # noqa: F403  (the fixture untrained_checkpoint)
from resmtnet.cli.cli import main
from resmtnet.io.ctio import write_volume
from resmtnet.io.fileset import MANIFEST, STAGING_PREFIX, TREE, read_set
from resmtnet.report.outputs import OUTPUT_FILES
from synthetic_chest import tiny_chest

SLICER_FILES = {"nodules.mrk.json", "nodules.seg.nrrd", "scene.mrb", "views.png"}  # views.png: the scene drawn
PLAIN_FILES = set(OUTPUT_FILES) - SLICER_FILES


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("scans")
    paths = []
    for seed in range(3):
        paths.append(folder / f"chest{seed}.nrrd")
        write_volume(tiny_chest(seed), paths[-1])
    return paths


def _detect(capsys, scan: Path, out: Path, model: Path, *more: str) -> tuple[int, str]:
    code = main(["detect", str(scan), "-o", str(out), "--model", str(model), "--no-tta", "--max-findings", "2",
                 "--quiet", *more])
    return code, capsys.readouterr().err


def _set_of(out: Path) -> dict:
    manifest = read_set(out, verify=True)
    assert manifest is not None, sorted(p.name for p in out.iterdir())
    visible = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert set(manifest["files"]) <= visible
    return manifest


def _hidden(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if p.name.startswith(".")}


@pytest.mark.slow
def test_a_run_replaces_the_previous_set_whole(capsys, tmp_path, scans, untrained_checkpoint):
    """The second run's set replaces the first's: the Slicer files of the first go after --no-slicer-files,
    the user's own file stays, and no staging folder or journal is left."""
    out = tmp_path / "out"
    assert _detect(capsys, scans[0], out, untrained_checkpoint) == (0, "")
    first = _set_of(out)
    assert set(first["files"]) == set(OUTPUT_FILES) and first["input"] == str(scans[0].resolve())
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()}
    assert _detect(capsys, scans[0], out, untrained_checkpoint, "--resume") == (0, "")  # the same input: done
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()} == stamps
    (out / "mine.txt").write_text("mine")
    assert _detect(capsys, scans[1], out, untrained_checkpoint, "--no-slicer-files") == (0, "")
    second = _set_of(out)
    assert set(second["files"]) == PLAIN_FILES and second["input"] == str(scans[1].resolve())
    assert {p.name for p in out.iterdir()} == PLAIN_FILES | {"mine.txt", MANIFEST, TREE} and _is_clean(out)
    assert "tiny-chest-1" in (out / "nodules.csv").read_text()


def test_slicer_opens_the_results_through_their_links(tmp_path):
    """Slicer's own readers (slicer-core) open the bundle, the markups and the segmentation by their names in
    OUTDIR, which are links into the set's folder."""
    import slicer
    from resmtnet.report.outputs import write_detection_outputs
    from resmtnet.scene.slicer_app import create_slicer_core_app
    from synthetic_chest import tiny_detection

    out = tmp_path / "out"
    ct = tiny_chest(1)
    detection = tiny_detection(ct)
    write_detection_outputs(ct, detection, out)
    assert all((out / n).is_symlink() for n in ("scene.mrb", "nodules.mrk.json", "nodules.seg.nrrd"))
    count = len(detection.nodules)
    assert count > 0
    bundle = create_slicer_core_app()
    assert bundle.scene.ReadFromMRB(str(out / "scene.mrb"))
    assert bundle.scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode") == count
    files = create_slicer_core_app()
    assert files.logic("Markups").LoadMarkups(str(out / "nodules.mrk.json"))
    assert files.scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode") == count
    segmentation = files.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(out / "nodules.seg.nrrd"))
    assert storage.ReadData(segmentation) and segmentation.GetSegmentation().GetNumberOfSegments() == count


# Runs `resmtnet` with argv[2:], SIGKILLed just before the publishing step named argv[1].
KILL_AT_STEP = textwrap.dedent("""
    import os, signal, sys
    import resmtnet.io.fileset as fs
    from resmtnet.cli.cli import main
    kill_at, argv = sys.argv[1], sys.argv[2:]
    def hook(name):
        if name == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    fs.STEP_HOOK = hook
    sys.exit(main(argv))
""")


WRITE_KILLED = textwrap.dedent("""
    import os, signal, sys, tempfile, traceback
    sys.path.insert(0, sys.argv[1])
    import resmtnet.io.fileset as fs
    from resmtnet.report.outputs import write_detection_outputs
    from synthetic_chest import tiny_chest, tiny_detection
    ct = tiny_chest(1)
    detection = tiny_detection(ct)
    with tempfile.TemporaryDirectory() as scratch:  # the first write sets matplotlib up: once, before the forks
        write_detection_outputs(ct, detection, os.path.join(scratch, "out"), slicer_files=False)
    for job in sys.argv[2:]:
        out, kill_at = job.rsplit("=", 1)
        kill_at, steps = int(kill_at), []
        def hook(name):
            steps.append(name)
            if kill_at == 0:
                print(name, flush=True)
            if len(steps) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            fs.STEP_HOOK = hook
            try:
                write_detection_outputs(ct, detection, out, slicer_files=False)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        status = os.waitpid(pid, 0)[1]
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(f"ended {out} {code}", flush=True)
""")
# One interpreter imports the core once and writes a detection's files once per job OUT=K, each write in a fork of
# its own SIGKILLed at step K of publishing (0: never; that fork prints the step names); after each it prints
# "ended OUT STATUS" (a negative status: the signal that ended it). Each fork is a process of its own to kill; the
# interpreter writes once into a scratch folder first so that the forks share its one-time set-up.


def _shown(out: Path) -> dict:
    """Without recovering: the manifest of the set ``out`` shows. Every name that opens holds that set's file
    (its SHA-256), and every file of the set opens."""
    manifest = read_set(out, verify=True)
    assert manifest is not None, sorted(p.name for p in out.iterdir())
    opened = {}
    for p in out.iterdir():
        if not p.name.startswith(".") and not p.is_dir():
            with contextlib.suppress(FileNotFoundError):  # a link into a set that is not the current one
                opened[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
    assert opened == {name: entry["sha256"] for name, entry in manifest["files"].items()}
    return manifest


def _is_clean(out: Path) -> bool:
    """Only the set: its names as links into .resmtnet/current, one set folder, nothing left by a killed run."""
    names = set(read_set(out)["files"]) | {MANIFEST}
    tree = out / TREE
    return ({p.name for p in out.iterdir() if p.name.startswith(".") or p.is_symlink()} == names | {TREE}
            and all(os.readlink(out / n) == f"{TREE}/current/{n}" for n in names)
            and {p.name for p in tree.iterdir()} == {"current", os.readlink(tree / "current")})


@pytest.mark.parametrize("earlier", ["linked", "plain files"])
@pytest.mark.slow
def test_detection_files_killed_at_every_step_of_publishing(tmp_path, monkeypatch, earlier):
    """A detection's files (the new set without Slicer files) replacing a set with them, the writer SIGKILLed at
    each step of publishing in turn; the earlier set published with links, or as plain files (an earlier
    version, or a disk without links, wrote them). Without any recovery, every name that opens shows one
    set, whole: the old one before the switch, the new one after it. The next recovery leaves only that set."""
    from resmtnet.io.fileset import recover
    from resmtnet.report.outputs import write_detection_outputs
    from synthetic_chest import tiny_detection

    template = tmp_path / "old"
    ct = tiny_chest(0)
    with monkeypatch.context() as m:
        if earlier == "plain files":
            m.setattr(os, "symlink", _no_symlinks)
        write_detection_outputs(ct, tiny_detection(ct), template)  # with the Slicer files
    old = _shown(template)
    assert any((template / n).is_symlink() for n in old["files"]) == (earlier == "linked")
    testing = str(Path(__file__).parent)

    def write_killed(*jobs: tuple[Path, int]) -> tuple[list[str], dict[Path, int]]:
        """The steps printed and each job's exit status (``-SIGKILL``: killed) from one writer interpreter."""
        res = subprocess.run([sys.executable, "-c", WRITE_KILLED, testing, *(f"{out}={k}" for out, k in jobs)],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        lines = res.stdout.splitlines()
        ended = [ln.split(" ") for ln in lines if ln.startswith("ended ")]
        return [ln for ln in lines if not ln.startswith("ended ")], {Path(out): int(code) for _, out, code in ended}

    def copy(name: str) -> Path:
        return shutil.copytree(template, tmp_path / name, symlinks=True)

    steps, ended = write_killed((copy("count"), 0))
    assert list(ended.values()) == [0]
    slicer = sorted(set(old["files"]) - PLAIN_FILES)  # views.png where VTK renders offscreen
    migration = ["legacy set", "legacy current", *(f"link {n}" for n in [MANIFEST, *sorted(old["files"])])]
    assert steps == [*(migration if earlier == "plain files" else []), "set folder", "new current", "switch",
                     *(f"unlink {n}" for n in slicer), "remove old set"]
    killed = {k: copy(f"kill-{k}") for k in range(1, len(steps) + 1)}
    _, ended = write_killed(*((out, k) for k, out in killed.items()))
    for k, out in killed.items():
        assert ended[out] == -signal.SIGKILL, (k, ended)
        switched = "switch" in steps[:k - 1]
        shown = _shown(out)
        assert shown["seriesuid"] == "tiny-chest-1" if switched else shown == old, (k, steps[k - 1])
        recover(out)
        assert _shown(out) == shown, k
        if earlier == "linked" or f"link {MANIFEST}" in steps[:k - 1]:  # (a migration cut short is finished)
            assert _is_clean(out), k
        else:  # the plain files as they were
            assert {p.name for p in out.iterdir()} == set(old["files"]) | {MANIFEST}, k


def _no_symlinks(*args, **kwargs):
    raise PermissionError(1, "Operation not permitted")  # what os.symlink raises on a FAT disk


@pytest.mark.parametrize(("first", "second", "step", "shows"), [
    (("--no-slicer-files",), (), "link scene.mrb", "old"),  # the new Slicer files' links (some) dangle
    ((), ("--no-slicer-files",), "unlink nodules.mrk.json", "new"),  # the old Slicer files' links dangle
])
@pytest.mark.slow
def test_detect_killed_while_publishing_shows_one_set_and_the_next_run_cleans_up(
        capsys, tmp_path, scans, untrained_checkpoint, first, second, step, shows):
    """`resmtnet detect` SIGKILLed while publishing, into OUTDIR holding a set with other files: the Slicer files
    come (or go), but OUTDIR shows the old set whole (killed before the switch) or the new one (after it),
    without any recovery. The next run into OUTDIR leaves its own set and nothing else."""
    out = tmp_path / "out"
    assert _detect(capsys, scans[0], out, untrained_checkpoint, *first)[0] == 0
    old = _shown(out)
    argv = ["detect", str(scans[1]), "-o", str(out), "--model", str(untrained_checkpoint), "--no-tta",
            "--max-findings", "2", "--quiet", *second]
    res = subprocess.run([sys.executable, "-c", KILL_AT_STEP, step, *argv], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr
    shown = _shown(out)
    assert shown == old if shows == "old" else shown["input"] == str(scans[1].resolve())
    assert json.loads((out / "report.json").read_text())["input"]["seriesuid"] == shown["seriesuid"]
    assert os.path.islink(out / "nodules.mrk.json") and not (out / "nodules.mrk.json").exists()  # dangling
    assert _detect(capsys, scans[2], out, untrained_checkpoint, "--no-slicer-files") == (0, "")
    assert _shown(out)["input"] == str(scans[2].resolve()) and _is_clean(out)
    assert {p.name for p in out.iterdir()} == PLAIN_FILES | {MANIFEST, TREE}


@pytest.mark.slow
def test_sigterm_while_writing_says_so_in_one_line_and_keeps_the_previous_set(capsys, tmp_path, scans,
                                                                            untrained_checkpoint):
    """SIGTERM sent as soon as the staging folder appears (the files are being written): exit 143, one line,
    the staging folder removed, the previous set as it was."""
    out = tmp_path / "out"
    assert _detect(capsys, scans[0], out, untrained_checkpoint, "--no-slicer-files")[0] == 0
    old = _set_of(out)
    proc = subprocess.Popen([sys.executable, "-m", "resmtnet.cli.cli", "detect", str(scans[1]), "-o", str(out),
                             "--model", str(untrained_checkpoint), "--no-tta", "--max-findings", "2", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(n.startswith(STAGING_PREFIX) for n in _hidden(out)):
        assert proc.poll() is None and time.monotonic() < deadline, "no staging folder appeared"
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert err.strip().splitlines() == ["resmtnet detect: terminated (SIGTERM)"]
    assert _set_of(out) == old and _is_clean(out)


def test_output_that_is_a_file_or_under_a_file_is_one_line(capsys, tmp_path, scans, untrained_checkpoint):
    a_file = tmp_path / "results"
    a_file.write_text("not a folder")
    for out in (a_file, a_file / "sub"):
        code, err = _detect(capsys, scans[0], out, untrained_checkpoint, "--no-slicer-files")
        assert code == 2 and len(err.strip().splitlines()) == 1 and str(out) in err, err
    assert a_file.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_a_folder_without_write_permission_is_one_line(capsys, tmp_path, scans, untrained_checkpoint):
    """(As root permissions don't bind: there the read-only tmpfs below covers it.)"""
    if not hasattr(os, "geteuid") or os.geteuid() == 0:
        pytest.skip("root writes into any folder; the read-only mount in the next test covers this")
    out = tmp_path / "out"
    assert _detect(capsys, scans[0], out, untrained_checkpoint, "--no-slicer-files")[0] == 0
    old = _set_of(out)
    out.chmod(0o555)
    try:
        code, err = _detect(capsys, scans[1], out, untrained_checkpoint, "--no-slicer-files")
    finally:
        out.chmod(0o755)
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(out) in err, err
    assert _set_of(out) == old


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    """A small tmpfs mounted at ``path`` (root only): a file system of its own that can fill up."""
    path.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (to fill a disk and make a mount point) needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"could not mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.slow
def test_full_disk_read_only_and_mount_point_outputs(capsys, tmp_path, scans, untrained_checkpoint):
    """OUTDIR is a mount point (a tmpfs of 80 MB): results are written there (no cross-device move). With the
    disk filled, ``detect`` refuses before the work and a set written anyway fails in one OutputError line;
    with the disk read-only, a run fails in one line, exit 2; each time the previous set stays whole."""
    from resmtnet.report.outputs import write_detection_outputs
    from resmtnet.util.errors import OutputError
    from synthetic_chest import tiny_chest, tiny_detection

    with _tmpfs(tmp_path / "mnt", "80m") as out:
        assert os.path.ismount(out)
        assert _detect(capsys, scans[0], out, untrained_checkpoint, "--no-slicer-files") == (0, "")
        old = _set_of(out)

        filler = out / "filler.bin"
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        code, err = _detect(capsys, scans[1], out, untrained_checkpoint)
        assert code == 2 and len(err.strip().splitlines()) == 1 and str(out) in err, err
        assert "MiB free" in err, err  # checked before the work
        ct = tiny_chest(1)
        with pytest.raises(OutputError, match="disk is full") as e:  # and while writing, where it fills up then
            write_detection_outputs(ct, tiny_detection(ct), out)
        assert str(out) in str(e.value) and "\n" not in str(e.value)
        assert _set_of(out) == old and _is_clean(out)

        filler.unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(out)], check=True)
        code, err = _detect(capsys, scans[1], out, untrained_checkpoint, "--no-slicer-files")
        assert code == 2 and len(err.strip().splitlines()) == 1 and str(out) in err, err
        assert _set_of(out) == old

        subprocess.run(["mount", "-o", "remount,rw", str(out)], check=True)
        assert _detect(capsys, scans[1], out, untrained_checkpoint) == (0, "")
        assert set(_set_of(out)["files"]) == set(OUTPUT_FILES) and _is_clean(out)
