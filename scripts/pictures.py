#!/usr/bin/env python
"""The extension's pictures, drawn by Slicer's own views (slicer-core, VTK offscreen), so they can be redrawn.

    python scripts/pictures.py screenshot DETECT_OUTDIR [-o Screenshot01.png]
    python scripts/pictures.py sample-icon [-o ResMTNet/Resources/Icons/ResMTNetChestPhantom.png]

``screenshot`` draws the ``scene.mrb`` that ``resmtnet detect`` wrote exactly as ``views.png`` has it
(:mod:`resmtnet.scene.views`: the axial, sagittal and coronal slices centred on N1 with the markers, segment outlines
and colour legend, and the 3-D view of the segments): the catalog screenshot is the detection's own picture.

``sample-icon`` renders the axial slice through the largest nodule of the Sample Data phantom
(:mod:`resmtnet.scene.sample_data`) as the Sample Data module's thumbnail.

Needs the ``slicer-core`` and ``vtk`` wheels of requirements.txt and an offscreen OpenGL (EGL or OSMesa, as
Mesa provides on a machine without a display). Writes whole or not at all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "Screenshot01.png"
SAMPLE_ICON = REPO / "ResMTNet" / "Resources" / "Icons" / "ResMTNetChestPhantom.png"


def render_screenshot(detect_dir: Path, out: Path, size: int | None = None) -> Path:
    """``views.png`` of the scene in ``detect_dir``/scene.mrb, written to ``out``."""
    from resmtnet.scene.views import VIEW_SIZE, render_views, write_png

    write_png(render_views(detect_dir / "scene.mrb", size or VIEW_SIZE), out)
    return out


def render_sample_icon(out: Path, size: int = 160) -> Path:
    """The axial slice through the sample phantom's largest nodule, in a lung window, as the thumbnail."""
    import numpy as np
    from resmtnet.scene.sample_data import generate_sample_phantom
    from resmtnet.scene.slicer_scene import volume_node_from_ct
    from resmtnet.scene.views import SliceView, views_app, write_png

    phantom = generate_sample_phantom()
    app = views_app()
    volume = volume_node_from_ct(app.scene, phantom.ct, "ResMTNetChestPhantom")
    largest = max(phantom.nodules, key=lambda n: n.diameter_mm)
    center_ras = (-largest.center_lps[0], -largest.center_lps[1], largest.center_lps[2])
    view = SliceView(app, "Red", (size, size))
    view.look_at(volume, "Axial", center_ras)
    write_png(np.ascontiguousarray(view.image()), out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    shot = commands.add_parser("screenshot", help="Screenshot01.png from a `resmtnet detect` output folder")
    shot.add_argument("detect_dir", type=Path)
    shot.add_argument("-o", "--output", type=Path, default=SCREENSHOT)
    shot.add_argument("--size", type=int, default=None, help="pixels per view (default: views.png's)")
    icon = commands.add_parser("sample-icon", help="the Sample Data thumbnail of the ResMTNet chest phantom")
    icon.add_argument("-o", "--output", type=Path, default=SAMPLE_ICON)
    args = parser.parse_args(argv)
    if args.command == "screenshot":
        out = render_screenshot(args.detect_dir, args.output, args.size)
    else:
        out = render_sample_icon(args.output)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
