"""Serve a result's scene in a web page: Slicer's axial, sagittal, coronal and 3-D views (drawn by Slicer's own
displayable managers through trame-slicer), the findings table (click a row to centre the slice views on that
finding), the colour legend and the research-use note. Give the folder ``resmtnet detect`` wrote, or a scene file
(.mrb, .mrml). Serves on 127.0.0.1 (this machine only) until Ctrl-C; it prints the address to open."""

from __future__ import annotations

import argparse
import importlib.util

from ..scene.viewer import DEFAULT_HOST, DEFAULT_PORT
from ..util.errors import ResMTNetError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a result folder (with scene.mrb) or a scene file (.mrb, .mrml)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help="port to serve on (default %(default)s; 0: a free one, printed)")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to serve on (default %(default)s: this machine only; 0.0.0.0 opens it to the network)")


def run(args: argparse.Namespace) -> int:
    from ..scene.viewer import reserve_port, resolve_scene
    from .cli import print_warnings

    scene = resolve_scene(args.source)
    port = reserve_port(args.host, args.port)
    if importlib.util.find_spec("trame_slicer") is None:
        raise ResMTNetError("the browser viewer needs trame-slicer, which is not installed: "
                            "pip install 'resmtnet[viewer]'")
    from ..scene.viewer import SceneViewer

    viewer = SceneViewer(scene)
    if args.host not in LOOPBACK:
        print_warnings([f"serving on {args.host}: anyone who can reach it sees the scan, with no login and no "
                        "encryption; the page is meant for 127.0.0.1 (reach it from elsewhere through an SSH tunnel)"])

    def announce() -> None:
        print(f"Serving {scene} at http://{args.host}:{port}/ (Ctrl-C stops)", flush=True)

    try:
        viewer.start(args.host, port, on_ready=announce)
    except OSError as e:  # the port was taken between the check and the start
        raise ResMTNetError(f"cannot serve on {args.host}:{port}: {e.strerror or e}") from None
    return 0

