"""The ``resmtnet`` command: one sub-command per job, each in the module that does the job.

Every command module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and keeps its
top-level imports light (torch, vtk and friends are imported inside ``run``), so ``resmtnet --help``
is instant. Errors the user can act on (:class:`ResMTNetError`) become one clear line on stderr and
exit status 2; Ctrl-C exits with 130 and SIGTERM, handled the same way (what a command was writing is
cleaned up), with 143. Each command keeps freed memory in the process
(:mod:`.allocator`): about a third faster training and detection on glibc.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Iterable

from ..util.allocator import keep_freed_memory
from ..util.errors import ResMTNetError

# name → (module inside this package, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "detect": ("detect_cli", "find nodules in a CT volume or DICOM series folder, or in many (a batch)"),
    "followup": ("followup_cli", "compare a scan's nodules with a prior scan's: growth, doubling time, new, resolved"),
    "phantom": ("phantom_cli", "generate synthetic chest CT phantoms with LUNA16-style annotations"),
    "train": ("train_cli", "train Res-MTNet on phantoms, LUNA16 or LIDC-IDRI data"),
    "evaluate": ("evaluate_cli", "score predictions by the LUNA16 FROC protocol (CPM), AUC and size error"),
    "bench": ("bench_cli", "time each detection stage and measure peak memory"),
    "view": ("view_cli", "serve a result's scene in a web page: Slicer's views, findings table, legend"),
    "realism": ("realism_cli", "compare phantoms with a real chest CT (lung HU, lung fraction, vessels)"),
}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised wherever the program is when it arrives, as Ctrl-C raises KeyboardInterrupt: the
    same clean-up runs for both (a detection's staging folder is removed, its output folder unchanged)."""


def _raise_terminated(_signum: int, _frame: object) -> None:
    raise Terminated()


def add_device_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--device``, the same for every command that runs the network (:func:`resmtnet.util.runtime.pick_device`
    gives it its meaning)."""
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where the network runs: auto (CUDA where present, else the CPU), cpu or cuda")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="resmtnet", description="Res-MTNet: pulmonary nodules in chest CT, with size and malignancy, in one pass.")
    parser.add_argument("--version", action="version", version=f"resmtnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f"{__package__}.{module_name}")
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # what was asked for, as given: provenance records it
    keep_freed_memory()
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if on_main_thread else None
    try:
        return int(args._module.run(args) or 0)
    except ResMTNetError as e:
        print(f"resmtnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"resmtnet {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"resmtnet {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def entry() -> None:
    """The ``resmtnet`` program: :func:`main`, then the process ends at once with its exit status.

    The interpreter's own teardown (every module and object freed one by one: torch's, VTK's) took 0.6-0.9 s
    after a detection on an idle 2-core machine, 2 s at load 8, and gave nothing back that the end of the process
    does not: what ``atexit`` was asked to do (temporary folders removed, logs flushed) still runs, and stdout and
    stderr are flushed. Where a thread that is not a daemon still runs, it ends the usual way, which waits for it.
    """
    from ..util.processes import exit_now

    code = main()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    exit_now(code)


def print_warnings(notes: Iterable[str]) -> None:
    """Each note once, as ``warning: <note>`` on stderr (the one channel for what a reader wants said)."""
    for note in dict.fromkeys(notes):
        print(f"warning: {note}", file=sys.stderr)


if __name__ == "__main__":
    entry()
