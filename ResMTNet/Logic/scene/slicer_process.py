"""The Slicer files and ``views.png`` written by a child process, started before they are needed.

``resmtnet detect`` would otherwise spend, after the network, about 1.2 s importing slicer-core and VTK, then
build and write the scene while its views child (:mod:`.views`) imports the same libraries again and re-reads the
bundle. Here one child (``python -m resmtnet.scene.slicer_process``), started once the CT is read, imports
slicer-core and VTK and sets Slicer's views up while the parent finds the lungs (one thread: a core left idle) and
runs the network, then, handed the CT and the detection, writes ``nodules.mrk.json``, ``nodules.seg.nrrd``
and ``scene.mrb`` (:func:`.slicer_outputs.write_scene_files`, unchanged) while the parent writes the overview, and
draws ``views.png`` from the bundle it wrote (:class:`.views.SceneViews`, unchanged). The parent itself never
imports slicer-core.

Where the child can't start, dies (VTK without an offscreen OpenGL may abort it) or can't write the files, the
parent writes the Slicer files itself (:meth:`SlicerProcess.scene_files` says so), as before: the detection never
depends on the child; only ``views.png`` may then be missing, with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..detect.nodules import Detection
from ..io.ctio import CTVolume
from ..util.processes import exit_now
from .slicer_scene import nonzero_box
from .views import RENDER_TIMEOUT_S, VIEW_SIZE

HANDOFF = ".slicer-handoff.pickle"  # in the staging folder: a dot name is never part of the published set
#: how long the parent waits for the Slicer files before writing them itself (a child that hangs)
FILES_TIMEOUT_S = 300


class SlicerProcess:
    """The child process that writes the Slicer files and ``views.png``; raises OSError where it can't start.

    :meth:`request` hands it a CT and its detection, :meth:`scene_files` waits for the three Slicer files,
    :meth:`finish` for ``views.png``; :meth:`stop` ends it (an error or Ctrl-C in the parent)."""

    def __init__(self, size: int = VIEW_SIZE):
        self._stderr = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # never a full pipe
        read_end, write_end = os.pipe()  # the child's one-line answer: which files it wrote (stdout is VTK's)
        command = [sys.executable, "-m", "resmtnet.scene.slicer_process", "--answer-fd", str(write_end),
                   "--size", str(size)]
        try:
            self._child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                           stderr=self._stderr, text=True, pass_fds=(write_end,))
        except OSError:
            os.close(read_end)
            self._stderr.close()
            raise
        finally:
            os.close(write_end)  # the child's copy only: the parent reads end-of-file once the child is gone
        self._answer = os.fdopen(read_end, "r", encoding="utf-8")
        self._handoff: Path | None = None
        self.views: Path | None = None
        self.timings_s: dict[str, float] = {}  # the views' steps in the child, once :meth:`finish` returned

    def request(self, ct: CTVolume, detection: Detection, outdir: Path, views: Path,
                color_by: str = "malignancy") -> None:
        """Hand the child ``ct`` and ``detection`` (one pickle file in ``outdir``) to write the Slicer files into
        ``outdir`` and ``views`` (a PNG) after them. Returns at once; an OSError only where the file can't be
        written (a child that has already ended shows in :meth:`scene_files`)."""
        self.views = Path(views).absolute()
        self._handoff = Path(outdir).absolute() / HANDOFF
        labels = detection.labels
        box = None if labels is None else nonzero_box(labels)
        handed = dataclasses.replace(detection, labels=None)
        with open(self._handoff, "wb") as f:  # the label map as its nodules' box: mostly zeros, twice the CT's size
            pickle.dump((ct, handed, None if labels is None else (labels.shape, labels.dtype.str, box,
                                                                  None if box is None else labels[box])),
                        f, protocol=pickle.HIGHEST_PROTOCOL)
        line = json.dumps({"handoff": str(self._handoff), "outdir": str(Path(outdir).absolute()),
                           "views": str(self.views), "color_by": color_by})
        assert self._child.stdin is not None
        with contextlib.suppress(OSError):  # the child ended already: scene_files() says so
            self._child.stdin.write(line + "\n")
            self._child.stdin.close()

    def scene_files(self, timeout_s: float = FILES_TIMEOUT_S) -> dict[str, Any] | None:
        """Wait for the child's answer: ``{"files": {kind: path}, "timings_s": {...}}`` once it wrote the Slicer
        files, None where it could not (it ended, failed or took over ``timeout_s``): the caller writes them."""
        import selectors

        answer = ""
        with selectors.DefaultSelector() as selector:
            selector.register(self._answer, selectors.EVENT_READ)
            if selector.select(timeout_s):
                answer = self._answer.readline()
        self._drop_handoff()
        try:
            found = json.loads(answer) if answer.strip() else None
        except ValueError:
            found = None
        if not isinstance(found, dict) or "files" not in found:
            self.stop()
            return None
        return found

    def finish(self, timeout_s: float = RENDER_TIMEOUT_S) -> str | None:
        """Wait for ``views.png``: None when it was written, else why not (one line)."""
        try:
            self._child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            return f"rendering the views took over {timeout_s:.0f} s and was stopped"
        stderr = self._read_stderr()
        with contextlib.suppress(OSError, ValueError):  # the child's last line: its views' steps
            self.timings_s = json.loads(self._answer.readline() or "{}").get("timings_s", {})
        self._close()
        if self._child.returncode == 0 and self.views is not None and self.views.is_file():
            return None
        return self._failure(stderr)

    def why_not(self) -> str:
        """Why the child gave no Slicer files (once :meth:`scene_files` returned None): its last words."""
        stderr = self._read_stderr()
        self._close()
        return self._failure(stderr)

    def _failure(self, stderr: str) -> str:
        """One line: the child's last words on ``stderr`` (VTK's warnings left out), or its exit status."""
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and "WARN" not in ln]
        reason = lines[-1] if lines else f"exit status {self._child.returncode}"
        return f"offscreen rendering failed ({reason[-300:]})"

    def stop(self) -> None:
        """End the child (nothing more is wanted from it) and remove what was handed to it; its stderr stays
        readable for :meth:`why_not`."""
        if self._child.poll() is None:
            self._child.kill()
        self._child.wait()
        self._drop_handoff()
        if self._child.stdin is not None:
            with contextlib.suppress(OSError):
                self._child.stdin.close()

    def _read_stderr(self) -> str:
        if self._stderr.closed:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()

    def _close(self) -> None:
        self._answer.close()
        self._stderr.close()

    def _drop_handoff(self) -> None:
        if self._handoff is not None:
            with contextlib.suppress(OSError):
                self._handoff.unlink()


def start_slicer_process() -> SlicerProcess | str:
    """A started :class:`SlicerProcess`, or why it could not start."""
    try:
        return SlicerProcess()
    except OSError as e:
        return f"the rendering process could not start: {e}"


def _serve(answer_fd: int, size: int) -> int:
    """The child: set the views up, wait for the parent's request, write the Slicer files, say so, draw the views."""
    started = time.perf_counter()
    import numpy as np

    from .slicer_outputs import write_scene_files
    from .views import SceneViews, write_png

    request: dict[str, Any] = {}

    def written_scene() -> Path:
        """Called once the views are set up (:class:`.views.SceneViews`): the Slicer files, then the bundle's path."""
        ready_s = round(time.perf_counter() - started, 3)
        line = sys.stdin.readline().strip()
        if not line:
            raise SystemExit("no scene was asked for (the caller stopped before)")
        request.update(json.loads(line))
        handoff = Path(request["handoff"])
        with open(handoff, "rb") as f:
            ct, detection, labels = pickle.load(f)
        if labels is not None:
            shape, dtype, box, values = labels
            detection.labels = np.zeros(shape, dtype)  # untouched pages cost nothing
            if box is not None:
                detection.labels[box] = values
        times: dict[str, Any] = {"ready": ready_s}
        files = write_scene_files(ct, detection, request["outdir"], color_by=request["color_by"], timings_s=times)
        del ct, detection
        answer.write(json.dumps({"files": {k: str(p) for k, p in files.items()}, "timings_s": times}) + "\n")
        answer.flush()
        marks.append(time.perf_counter())
        return files["scene"]

    answer = os.fdopen(answer_fd, "w", encoding="utf-8")
    marks: list[float] = []
    with SceneViews(written_scene, size) as views:
        marks.append(time.perf_counter())
        pixels = views.picture()
    marks.append(time.perf_counter())
    write_png(pixels, request["views"])
    marks.append(time.perf_counter())
    # the views' steps after the files: the bundle read into the views, the four views drawn, the PNG written
    steps = ("views_scene", "views_render", "views_png")
    answer.write(json.dumps({"timings_s": {k: round(b - a, 3) for k, a, b in zip(steps, marks, marks[1:])}}) + "\n")
    answer.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resmtnet.scene.slicer_process",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--answer-fd", type=int, required=True, help="the pipe to name the written files on")
    parser.add_argument("--size", type=int, default=VIEW_SIZE, help="pixels per view (default %(default)s)")
    args = parser.parse_args(argv)
    return _serve(args.answer_fd, args.size)


if __name__ == "__main__":
    exit_now(main())  # the parent waits for the exit; VTK's and slicer-core's teardown (about 0.5 s) gives it nothing
