#!/usr/bin/env python
"""The extension's pictures, drawn by Slicer's own views (slicer-core, VTK offscreen), so they can be redrawn.

    python scripts/pictures.py screenshot DETECT_OUTDIR [-o Screenshot01.png]
    python scripts/pictures.py sample-icon [-o ResMTNet/Resources/Icons/ResMTNetChestPhantom.png]

``screenshot`` opens the ``scene.mrb`` that ``resmtnet detect`` wrote and renders three views side by side:
the axial slice through the top finding, the coronal slice through it (each with the segment outlines and
fiducials as Slicer's slice views draw them), and the 3-D view of the segments with the axial slice plane.
It shows the scene exactly as the module makes it (colours, glyphs, names); nothing is restyled here.

``sample-icon`` renders the axial slice through the middle of the Sample Data phantom
(:mod:`resmtnet.sample_data`) as the Sample Data module's thumbnail.

Needs the ``slicer-core`` and ``vtk`` wheels of requirements.txt and an offscreen OpenGL (EGL or OSMesa, as
Mesa provides on a machine without a display). Writes whole or not at all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "Screenshot01.png"
SAMPLE_ICON = REPO / "ResMTNet" / "Resources" / "Icons" / "ResMTNetChestPhantom.png"
VIEW_SIZE = 480  # pixels per view (square); the screenshot is three views wide


class OffscreenView:
    """A render window with the displayable managers Slicer's view of that kind has, observing one view node."""

    def __init__(self, app: Any, factory_class: Any, manager_names: list[str], size: tuple[int, int]):
        import slicer
        import vtk

        self.renderer = vtk.vtkRenderer()
        self.window = vtk.vtkRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.SetMultiSamples(0)
        self.window.SetSize(*size)
        self.window.AddRenderer(self.renderer)
        # Widgets of the displayable managers (markups) need an interactor, even one nobody drives.
        self.interactor = vtk.vtkRenderWindowInteractor()
        self.interactor.SetRenderWindow(self.window)
        self.interactor.Initialize()
        factory = factory_class.GetInstance()
        factory.SetMRMLApplicationLogic(app.app_logic)
        for name in manager_names:
            if not factory.IsDisplayableManagerRegistered(name):
                factory.RegisterDisplayableManager(name)
        self.managers = slicer.vtkMRMLDisplayableManagerGroup()
        self.managers.Initialize(factory, self.renderer)

    def show(self, view_node: Any) -> None:
        self.managers.SetMRMLDisplayableNode(view_node)

    def image(self) -> Any:
        """The rendered picture as a (height, width, 3) uint8 array, top row first."""
        import numpy as np
        import vtk
        from vtk.util.numpy_support import vtk_to_numpy

        self.window.Render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(self.window)
        grab.ReadFrontBufferOff()
        grab.Update()
        image = grab.GetOutput()
        width, height, _ = image.GetDimensions()
        pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[:, :, :3]
        return np.ascontiguousarray(pixels[::-1])


class SliceView(OffscreenView):
    """A slice view as Slicer's: a slice logic reslices the layers into one RGBA image drawn as the background,
    and the 2-D displayable managers draw segment outlines, fiducials and the like over it."""

    MANAGERS = ["vtkMRMLSegmentationsDisplayableManager2D", "vtkMRMLMarkupsDisplayableManager",
                "vtkMRMLModelSliceDisplayableManager", "vtkMRMLOrientationMarkerDisplayableManager",
                "vtkMRMLRulerDisplayableManager", "vtkMRMLColorLegendDisplayableManager"]

    def __init__(self, app: Any, layout_name: str, size: tuple[int, int]):
        import slicer
        import vtk

        super().__init__(app, slicer.vtkMRMLSliceViewDisplayableManagerFactory, self.MANAGERS, size)
        self.renderer.GetActiveCamera().ParallelProjectionOn()
        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(app.app_logic)
        self.logic.SetMRMLScene(app.scene)
        app.app_logic.GetSliceLogics().AddItem(self.logic)
        self.logic.AddSliceNode(layout_name)
        # Where the scene already has this singleton (a .mrb written by `resmtnet detect` has Red, Yellow and
        # Green), the scene keeps its own node and AddSliceNode hands back a copy outside the scene: use the
        # scene's node, so the displayable managers see the scene.
        self.node = app.scene.GetSingletonNode(layout_name, "vtkMRMLSliceNode")
        self.logic.SetSliceNode(self.node)
        # The resliced layers, already window/levelled to 8-bit RGBA, as the view's background image
        mapper = vtk.vtkImageMapper()
        mapper.SetColorWindow(255)
        mapper.SetColorLevel(127.5)
        self.image_actor = vtk.vtkActor2D()
        self.image_actor.SetMapper(mapper)
        self.image_actor.GetProperty().SetDisplayLocationToBackground()
        self.renderer.AddViewProp(self.image_actor)
        self.show(self.node)

    def look_at(self, volume_node: Any, orientation: str, center_ras: tuple[float, float, float]) -> None:
        """Show the whole ``volume_node`` slice in ``orientation`` that passes through ``center_ras``."""
        self.node.SetOrientation(orientation)
        self.logic.GetSliceCompositeNode().SetBackgroundVolumeID(volume_node.GetID())
        self.logic.ResizeSliceNode(*self.window.GetSize())
        self.logic.FitSliceToBackground()
        self.node.JumpSlice(*center_ras)
        self.logic.SnapSliceOffsetToIJK()
        # In Slicer the slice widget's events run these; here nothing else will, so run them once.
        self.logic.UpdateSliceNode()
        self.logic.UpdatePipeline()
        for layer in (self.logic.GetBackgroundLayer(), self.logic.GetForegroundLayer()):
            layer.UpdateTransforms()
            layer.UpdateImageDisplay()
        self.logic.UpdateImageData()
        self.image_actor.GetMapper().SetInputConnection(self.logic.GetImageDataConnection())


class ThreeDView(OffscreenView):
    """A 3-D view as Slicer's: segments' closed surfaces, markups, models (the slice planes) and the box."""

    MANAGERS = ["vtkMRMLCameraDisplayableManager", "vtkMRMLViewDisplayableManager",
                "vtkMRMLModelDisplayableManager", "vtkMRMLThreeDReformatDisplayableManager",
                "vtkMRMLSegmentationsDisplayableManager3D", "vtkMRMLMarkupsDisplayableManager",
                "vtkMRMLOrientationMarkerDisplayableManager"]

    def __init__(self, app: Any, layout_name: str, size: tuple[int, int]):
        import slicer

        super().__init__(app, slicer.vtkMRMLThreeDViewDisplayableManagerFactory, self.MANAGERS, size)
        self.renderer.SetUseDepthPeeling(True)
        self.logic = slicer.vtkMRMLViewLogic()
        self.logic.SetMRMLApplicationLogic(app.app_logic)
        self.logic.SetMRMLScene(app.scene)
        app.app_logic.GetViewLogics().AddItem(self.logic)
        self.node = self.logic.AddViewNode(layout_name)
        self.show(self.node)

    def look_from(self, direction_ras: tuple[float, float, float], view_up_ras: tuple[float, float, float],
                  focus_ras: tuple[float, float, float], distance_mm: float) -> None:
        """Point the view's camera at ``focus_ras`` from ``distance_mm`` away along ``direction_ras``."""
        self.window.Render()  # the camera displayable manager gives the renderer the camera node's camera
        camera = self.renderer.GetActiveCamera()
        camera.SetFocalPoint(*focus_ras)
        camera.SetPosition(*[f + d * distance_mm for f, d in zip(focus_ras, direction_ras)])
        camera.SetViewUp(*view_up_ras)
        self.renderer.ResetCameraClippingRange()


def _views_app(mrb: Path | None = None) -> Any:
    """A slicer-core scene set up as Slicer's (``resmtnet.slicer_app``), with ``mrb`` read into it, plus what
    Slicer's application adds for its views."""
    import slicer
    import vtk
    from resmtnet.slicer_app import create_slicer_core_app

    app = create_slicer_core_app()
    # Slicer's application keeps its views' logics in these collections; the displayable managers look there.
    app.app_logic.SetSliceLogics(vtk.vtkCollection())
    app.app_logic.SetViewLogics(vtk.vtkCollection())
    if mrb is not None and not app.scene.ReadFromMRB(str(mrb)):
        sys.exit(f"error: {mrb}: not a scene Slicer can open")
    # The singletons Slicer's application adds to every scene, which the displayable managers expect.
    if app.scene.GetFirstNodeByClass("vtkMRMLInteractionNode") is None:
        interaction = slicer.vtkMRMLInteractionNode()
        interaction.SetSingletonTag("Singleton")
        app.scene.AddNode(interaction)
    if app.scene.GetFirstNodeByClass("vtkMRMLSelectionNode") is None:
        selection = slicer.vtkMRMLSelectionNode()
        selection.SetSingletonTag("Singleton")
        app.scene.AddNode(selection)
    if app.scene.GetFirstNodeByClass("vtkMRMLCrosshairNode") is None:
        crosshair = slicer.vtkMRMLCrosshairNode()
        crosshair.SetCrosshairName("default")
        app.scene.AddNode(crosshair)
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(app.scene, True)
    return app


def _top_finding(app: Any) -> tuple[Any, tuple[float, float, float], Any]:
    """The CT, the top finding's RAS position and the segmentation, as the module put them in the scene
    (one fiducial node per finding, named "N1 ...", "N2 ..." from the most probable down)."""
    fiducials = [n for n in _nodes(app.scene, "vtkMRMLMarkupsFiducialNode") if n.GetNumberOfControlPoints()]
    if not fiducials:
        sys.exit("error: the scene holds no findings")
    top = min(fiducials, key=lambda n: int(n.GetName().split()[0].lstrip("N") or 0))
    position = [0.0, 0.0, 0.0]
    top.GetNthControlPointPositionWorld(0, position)
    volume = _nodes(app.scene, "vtkMRMLScalarVolumeNode")[0]
    segmentation = _nodes(app.scene, "vtkMRMLSegmentationNode")[0]
    return volume, tuple(position), segmentation


def _unit(v: tuple[float, float, float]) -> tuple[float, float, float]:
    norm = sum(c * c for c in v) ** 0.5
    return tuple(c / norm for c in v)


def _nodes(scene: Any, class_name: str) -> list[Any]:
    return [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]


def _write_png(pixels: Any, path: Path) -> None:
    """Write (height, width, 3) uint8 ``pixels``, top row first, as an RGB PNG (VTK's writer, best compression)."""
    import numpy as np
    import vtk
    from resmtnet.atomic import atomic_write
    from vtk.util.numpy_support import numpy_to_vtk

    height, width, _ = pixels.shape
    image = vtk.vtkImageData()
    image.SetDimensions(width, height, 1)
    image.GetPointData().SetScalars(numpy_to_vtk(np.ascontiguousarray(pixels[::-1]).reshape(-1, 3), deep=True))

    def write(tmp: Path) -> None:
        writer = vtk.vtkPNGWriter()
        writer.SetCompressionLevel(9)
        writer.SetInputData(image)
        writer.SetFileName(str(tmp))
        writer.Write()
        if writer.GetErrorCode():
            raise OSError(f"{path}: could not be written")

    atomic_write(path, write)


def render_screenshot(detect_dir: Path, out: Path, size: int = VIEW_SIZE) -> Path:
    """Three views of the scene in ``detect_dir``/scene.mrb side by side, written to ``out`` as a PNG."""
    import numpy as np

    app = _views_app(detect_dir / "scene.mrb")
    volume, center, segmentation = _top_finding(app)
    segmentation.CreateClosedSurfaceRepresentation()

    axial = SliceView(app, "Red", (size, size))
    axial.look_at(volume, "Axial", center)
    coronal = SliceView(app, "Green", (size, size))
    coronal.look_at(volume, "Coronal", center)
    three_d = ThreeDView(app, "1", (size, size))
    axial.node.SetSliceVisible(True)
    bounds = [0.0] * 6
    volume.GetRASBounds(bounds)
    middle = tuple((bounds[2 * i] + bounds[2 * i + 1]) / 2 for i in range(3))
    diagonal = sum((bounds[2 * i + 1] - bounds[2 * i]) ** 2 for i in range(3)) ** 0.5
    # from the front, right and below, far enough to see the whole volume's box
    three_d.look_from(_unit((0.3, 0.8, -0.55)), (0.0, 0.0, 1.0), middle, 1.5 * diagonal)

    gap = np.full((size, 4, 3), 255, np.uint8)
    picture = np.concatenate([axial.image(), gap, coronal.image(), gap, three_d.image()], axis=1)
    _write_png(picture, out)
    return out


def render_sample_icon(out: Path, size: int = 160) -> Path:
    """The axial slice through the sample phantom's largest nodule, in a lung window, as the thumbnail."""
    import numpy as np
    from resmtnet.sample_data import generate_sample_phantom
    from resmtnet.slicer_scene import volume_node_from_ct

    phantom = generate_sample_phantom()
    app = _views_app()
    volume = volume_node_from_ct(app.scene, phantom.ct, "ResMTNetChestPhantom")
    largest = max(phantom.nodules, key=lambda n: n.diameter_mm)
    center_ras = (-largest.center_lps[0], -largest.center_lps[1], largest.center_lps[2])
    view = SliceView(app, "Red", (size, size))
    view.look_at(volume, "Axial", center_ras)
    _write_png(np.ascontiguousarray(view.image()), out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    shot = commands.add_parser("screenshot", help="Screenshot01.png from a `resmtnet detect` output folder")
    shot.add_argument("detect_dir", type=Path)
    shot.add_argument("-o", "--output", type=Path, default=SCREENSHOT)
    shot.add_argument("--size", type=int, default=VIEW_SIZE, help="pixels per view (default %(default)s)")
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
