"""One detection in a child process, seen from the Slicer module: start, progress, cancel, result.

Qt- and MRML-free, so that it runs the same in Slicer and in tests. The caller (Slicer's main thread)
copies the CT out of the scene, hands it over, and then only polls :meth:`DetectionProcess.drain` from a
timer: nothing here ever blocks the caller. A helper thread writes the CT to a temporary NRRD file,
starts the child (:mod:`.slicer_worker`) with the given Python, turns its output lines into messages and,
once the child has ended, reads its result files and removes the temporary folder, whatever happened.

Messages (``(kind, payload)``): ``progress (fraction, text)``, ``done Detection``, ``error (text, details)``,
``cancelled None``; exactly one of the last three ends a job.

Why a process and not a thread: torch in Slicer's own process would take Slicer down with the user's
unsaved work on an out-of-memory or a CUDA fault, and holds the interpreter while it imports; a process
can be killed at any stage (a thread can only stop where the detector polls for it).
"""

from __future__ import annotations

import collections
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..detect.patient_options import patient_arguments
from .slicer_worker import MESSAGE_PREFIX, read_results

WORKER_SCRIPT = Path(__file__).with_name("slicer_worker.py")
LOG_LINES_KEPT = 40


def describe_exit(returncode: int) -> str:
    """Why a child that said neither ``done`` nor ``error`` ended, in words."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (out of memory?)" if -returncode == getattr(signal, "SIGKILL", 9) else ""
        return f"the detection process was killed by {name}{hint}"
    return f"the detection process ended with exit status {returncode}"


def kill_process_tree(proc: subprocess.Popen) -> None:
    """Kill the child and everything it started (a launcher such as PythonSlicer starts the real Python as
    its own child: killing the launcher alone would leave the detector running)."""
    if proc.poll() is not None:
        return
    if os.name == "posix":
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the child leads its own process group (start_new_session)
        except ProcessLookupError:
            pass
    else:
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True, check=False)


class DetectionProcess:
    """One detection of ``ct`` (a :class:`~resmtnet.io.ctio.CTVolume`) in a child process.

    ``python``: the interpreter the child runs (PythonSlicer inside Slicer); ``env``: its environment
    (``None``: this process's). Options: ``model`` (checkpoint path or None), ``device``, ``threshold``
    (None: the model's), ``min_diameter_mm``, ``tta``. Follow-up mode: ``prior_ct``, the prior scan (a
    :class:`~resmtnet.io.ctio.CTVolume`) the child also detects and pairs with ``ct``'s nodules, and
    ``interval_days`` between them (None: unknown); the result's ``info["followup"]`` then holds the table.
    DICOM outputs: ``dicom_out`` (a folder), with ``dicom_source`` (the folder of ``ct``'s DICOM series) and
    ``ct.seriesuid`` its SeriesInstanceUID; the result's ``info["dicom_out"]`` then names the files written.
    ``patient``: the Brock model's patient inputs (:class:`~resmtnet.detect.brock.PatientInputs`; None: all
    defaulted), passed to the child as ``resmtnet detect`` takes them.
    """

    def __init__(self, ct: Any, python: str, *, model: str | None = None, device: str = "auto",
                 threshold: float | None = None, min_diameter_mm: float = 0.0, tta: bool = True,
                 env: Mapping[str, str] | None = None, temp_root: str | None = None, prior_ct: Any = None,
                 interval_days: float | None = None, dicom_out: str | None = None,
                 dicom_source: str | None = None, patient: Any = None):
        self.ct = ct
        self.patient = patient
        self.prior_ct = prior_ct
        self.interval_days = interval_days
        self.dicom = None if dicom_out is None else (str(dicom_out), dicom_source, getattr(ct, "seriesuid", ""))
        self.python = python
        self.options = {"model": model, "device": device, "threshold": threshold,
                        "min_diameter_mm": float(min_diameter_mm), "tta": bool(tta)}
        self.env = None if env is None else dict(env)
        self.messages: queue.Queue = queue.Queue()
        self.tempDir = tempfile.mkdtemp(prefix="ResMTNet-", dir=temp_root)
        self.log: collections.deque[str] = collections.deque(maxlen=LOG_LINES_KEPT)
        self._lock = threading.Lock()
        self._cancelled = False
        self._proc: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._run, name="ResMTNet detection process", daemon=True)

    # ---- the caller's side (Slicer's main thread)

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        """Kill the child now (at any stage); the job then ends with ``cancelled``."""
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            proc = self._proc
        if proc is not None:
            kill_process_tree(proc)

    @property
    def pid(self) -> int | None:
        """The child's process id, once it has started."""
        return None if self._proc is None else self._proc.pid

    def isRunning(self) -> bool:
        return self._thread.is_alive()

    def drain(self) -> list[tuple[str, Any]]:
        """Every message posted since the last call; never waits."""
        items = []
        while True:
            try:
                items.append(self.messages.get_nowait())
            except queue.Empty:
                return items

    def command(self, input_path: str, outdir: str) -> list[str]:
        o = self.options
        cmd = [self.python, str(WORKER_SCRIPT), input_path, outdir, "--device", o["device"],
               "--min-diameter", repr(o["min_diameter_mm"]), "--parent-pid", str(os.getpid())]
        if o["model"]:
            cmd += ["--model", str(o["model"])]
        if o["threshold"] is not None:
            cmd += ["--threshold", repr(float(o["threshold"]))]
        if not o["tta"]:
            cmd.append("--no-tta")
        if self.prior_ct is not None:
            cmd += ["--prior", os.path.join(os.path.dirname(input_path), "prior.nrrd")]
            if self.interval_days is not None:
                cmd += ["--interval-days", repr(float(self.interval_days))]
        cmd += patient_arguments(self.patient)
        if self.dicom is not None:
            dicom_out, source, series_uid = self.dicom
            cmd += ["--dicom-out", dicom_out]
            if source and series_uid:
                cmd += ["--dicom-source", str(source), "--series-uid", series_uid]
        return cmd

    # ---- the helper thread

    def _post(self, kind: str, payload: Any = None) -> None:
        self.messages.put((kind, payload))

    def _run(self) -> None:
        try:
            last = self._detect()
        except Exception as e:  # noqa: BLE001 - every failure must reach the main thread as a message
            import traceback

            last = ("error", (f"{type(e).__name__}: {e}", traceback.format_exc()))
        finally:
            shutil.rmtree(self.tempDir, ignore_errors=True)
        self._post(*last)  # the job's last word comes after its files are gone

    def _detect(self) -> tuple[str, Any]:
        from ..io.ctio import write_volume

        input_path = os.path.join(self.tempDir, "input.nrrd")
        outdir = os.path.join(self.tempDir, "out")
        os.mkdir(outdir)
        write_volume(self.ct, input_path, compress=False)
        if self.prior_ct is not None:
            write_volume(self.prior_ct, os.path.join(self.tempDir, "prior.nrrd"), compress=False)
        command = self.command(input_path, outdir)
        self.ct = self.prior_ct = None  # the child has them now
        popen: dict[str, Any] = {"start_new_session": True} if os.name == "posix" else {
            "creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
            | getattr(subprocess, "CREATE_NO_WINDOW", 0)}
        with self._lock:
            if self._cancelled:
                return "cancelled", None
            self._proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, env=self.env, text=True, encoding="utf-8", errors="replace", **popen)
        proc = self._proc
        error = None
        done = False
        for line in proc.stdout:
            line = line.rstrip("\n")
            kind, _, rest = line.partition(" ")
            if kind != MESSAGE_PREFIX:
                self.log.append(line)
                continue
            kind, _, text = rest.partition(" ")
            if kind == "progress":
                fraction, _, message = text.partition(" ")
                try:
                    self._post("progress", (float(fraction), message))
                except ValueError:
                    self.log.append(line)
            elif kind == "error":
                error = text
            elif kind == "done":
                done = True
        returncode = proc.wait()
        if self._cancelled:
            return "cancelled", None
        details = "\n".join(self.log)
        if error is not None:
            return "error", (error, details)
        if returncode != 0 or not done:
            return "error", (describe_exit(returncode), details)
        return "done", read_results(outdir)


def detect_in_this_process(ct: Any, model: str | os.PathLike | None = None, device: str = "auto",
                           threshold: float | None = None, min_diameter_mm: float = 0.0, tta: bool = True,
                           progress: Any = None, cancel: Any = None, patient: Any = None) -> Any:
    """The module's other way to detect: in Slicer's own process, on the calling thread (``logic.process()``,
    for Slicer's Python console and scripts). ``model``: a checkpoint path, or None for the shipped weights.

    Freed memory stays in the process while the detector runs (about a third faster: no page faults on its
    large buffers) and goes back to the system when it ends, since Slicer lives on after the detection
    (:func:`.allocator.freed_memory_kept`). torch is imported here, not when this module is.
    """
    from ..detect.pipeline import detect_ct
    from ..util import allocator

    with allocator.freed_memory_kept():
        return detect_ct(ct, model=model or None, device=device, threshold=threshold,
                         min_diameter_mm=min_diameter_mm, progress=progress, cancel=cancel, tta=tta,
                         patient=patient)
