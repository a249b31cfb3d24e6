"""``views.png``: the scene ``resmtnet detect`` writes, drawn by Slicer's own slice and 3-D views, offscreen.

The picture a reader gets on opening ``scene.mrb`` in Slicer, without Slicer: slicer-core's slice logic reslices
the CT and its displayable managers draw segment outlines, fiducials and the colour legend over it exactly as in
Slicer's views; the 3-D view draws the segments' surfaces with the axial slice. Four panels, as Slicer's four-up
layout, each :data:`VIEW_SIZE` pixels square::

    axial   | sagittal
    --------+---------
    coronal | 3-D

The slice views show the scene's own first view (centred on N1, see :func:`resmtnet.scene.slicer_scene.first_view`).
Nothing is restyled here: what is drawn is what the scene says.

Rendering needs an offscreen OpenGL (Mesa's EGL or OSMesa where there is no display). Where VTK cannot render,
it may abort the process, so ``resmtnet detect`` renders in a child process (:mod:`.slicer_process`) and reports why
it could not instead of failing the detection.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

VIEWS_FILE = "views.png"
VIEW_SIZE = 440  # pixels per view (square); the four fit the catalog's 500 KB screenshot limit
GAP = 4  # pixels between views
GAP_VALUE = 255  # white
LAYOUT = (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal"))  # slice views, then the 3-D view
RENDER_TIMEOUT_S = 300  # the longest resmtnet detect waits for views.png (:mod:`.slicer_process`)


def panel_origin(index: int, size: int = VIEW_SIZE) -> tuple[int, int]:
    """Top-left pixel (row, column) of panel ``index`` (0 axial, 1 sagittal, 2 coronal, 3 3-D) in the picture."""
    row, col = divmod(index, 2)
    return row * (size + GAP), col * (size + GAP)


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
    and the 2-D displayable managers draw segment outlines, fiducials, the colour legend and the like over it."""

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
        # A .mrb written by `resmtnet detect` has Red, Yellow and Green, centred on N1: use the scene's node as
        # it is (AddSliceNode would copy a default node over it, as the scene does for singletons).
        self.node = app.scene.GetSingletonNode(layout_name, "vtkMRMLSliceNode")
        if self.node is None:
            self.logic.AddSliceNode(layout_name)
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
        self.update()

    def center_on(self, center_ras: tuple[float, float, float], fov_mm: float) -> None:
        """Centre the view on ``center_ras`` with a square field of view of ``fov_mm``."""
        self.logic.ResizeSliceNode(*self.window.GetSize())
        self.node.SetFieldOfView(fov_mm, fov_mm, self.node.GetFieldOfView()[2])
        self.node.JumpSliceByCentering(*center_ras)
        self.update()

    def update(self) -> None:
        """The view as the slice node now says (in Slicer, the slice widget's events run these)."""
        self.logic.ResizeSliceNode(*self.window.GetSize())
        self.logic.UpdateSliceNode()
        self.logic.UpdatePipeline()
        for layer in (self.logic.GetBackgroundLayer(), self.logic.GetForegroundLayer()):
            layer.UpdateTransforms()
            layer.UpdateImageDisplay()
        self.logic.UpdateImageData()
        self.image_actor.GetMapper().SetInputConnection(self.logic.GetImageDataConnection())

    def ras_to_pixel(self, ras: tuple[float, float, float]) -> tuple[float, float]:
        """Where a RAS point lands in :meth:`image`: (row, column), row 0 at the top."""
        import vtk

        xy_to_ras = vtk.vtkMatrix4x4()
        xy_to_ras.DeepCopy(self.node.GetXYToRAS())
        xy_to_ras.Invert()
        x, y, _z, _w = xy_to_ras.MultiplyPoint([*ras, 1.0])
        height = self.window.GetSize()[1]
        return height - 1 - y, x


class ThreeDView(OffscreenView):
    """A 3-D view as Slicer's: segments' closed surfaces, markups, models (the slice planes), the box, the legend."""

    MANAGERS = ["vtkMRMLCameraDisplayableManager", "vtkMRMLViewDisplayableManager",
                "vtkMRMLModelDisplayableManager", "vtkMRMLThreeDReformatDisplayableManager",
                "vtkMRMLSegmentationsDisplayableManager3D", "vtkMRMLMarkupsDisplayableManager",
                "vtkMRMLOrientationMarkerDisplayableManager", "vtkMRMLColorLegendDisplayableManager"]

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


def views_app(mrb: str | Path | None = None) -> Any:
    """A slicer-core scene set up as Slicer's (:mod:`resmtnet.scene.slicer_app`), with ``mrb`` read into it, plus what
    Slicer's application adds for its views."""
    import slicer
    import vtk

    from .slicer_app import create_slicer_core_app

    app = create_slicer_core_app()
    # Slicer's application keeps its views' logics in these collections; the displayable managers look there.
    app.app_logic.SetSliceLogics(vtk.vtkCollection())
    app.app_logic.SetViewLogics(vtk.vtkCollection())
    if mrb is not None and not app.scene.ReadFromMRB(str(mrb)):
        raise OSError(f"{mrb}: not a scene Slicer can open")
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


def scene_nodes(scene: Any, class_name: str) -> list[Any]:
    return [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]


def findings(scene: Any) -> list[tuple[Any, tuple[float, float, float]]]:
    """The findings' fiducial nodes with their RAS positions, N1 first (as the module puts them in a scene)."""
    from .slicer_scene import NUMBER_ATTRIBUTE

    found = []
    for node in scene_nodes(scene, "vtkMRMLMarkupsFiducialNode"):
        number = node.GetAttribute(NUMBER_ATTRIBUTE)
        if number and node.GetNumberOfControlPoints():
            position = [0.0, 0.0, 0.0]
            node.GetNthControlPointPositionWorld(0, position)
            found.append((int(number), node, tuple(position)))
    return [(node, position) for _number, node, position in sorted(found, key=lambda f: f[0])]


def _unit(v: tuple[float, float, float]) -> tuple[float, float, float]:
    norm = sum(c * c for c in v) ** 0.5
    return tuple(c / norm for c in v)  # type: ignore[return-value]


class SceneViews:
    """The scene in ``mrb`` opened into Slicer's axial, sagittal, coronal and 3-D views, offscreen.

    :meth:`picture` draws the four of them as ``views.png`` shows them; ``slices`` and ``three_d`` are the views
    themselves (to look elsewhere, or to draw the scene with some nodes hidden)."""

    def __init__(self, mrb: str | Path | Callable[[], str | Path], size: int = VIEW_SIZE):
        """``mrb``: the bundle, or a function that gives its path once it is written, called after the views are
        set up (a child process prepares them while the bundle is still being written)."""
        self.size = size
        # As in Slicer: the views exist first and the scene is opened into them (the colour legend's displayable
        # manager only picks up legend nodes added while it watches; the singleton slice nodes take the stored
        # view: centred on N1).
        self.app = views_app()
        self.slices = [SliceView(self.app, layout_name, (size, size)) for layout_name, _orientation in LAYOUT]
        self.three_d = ThreeDView(self.app, "1", (size, size))
        if callable(mrb):
            mrb = mrb()
        if not self.app.scene.ReadFromMRB(str(mrb)):
            raise OSError(f"{mrb}: not a scene Slicer can open")
        volumes = [v for v in scene_nodes(self.app.scene, "vtkMRMLScalarVolumeNode")
                   if not v.IsA("vtkMRMLLabelMapVolumeNode")]
        if not volumes:
            raise ValueError(f"{mrb}: the scene holds no CT volume")
        self.volume = volumes[0]
        for segmentation in scene_nodes(self.app.scene, "vtkMRMLSegmentationNode"):
            segmentation.CreateClosedSurfaceRepresentation()
        for view, (_layout_name, orientation) in zip(self.slices, LAYOUT):
            if view.logic.GetSliceCompositeNode().GetBackgroundVolumeID() is None:  # a scene without stored views
                view.look_at(self.volume, orientation, _middle(self.volume))
            else:
                view.update()
        self.slices[0].node.SetSliceVisible(True)  # the axial slice, in the 3-D view too
        # Slicer's box sits around the origin, not around the CT: without it the segments and the slice stand alone
        self.three_d.node.SetBoxVisible(False)
        self.three_d.node.SetAxisLabelsVisible(False)
        bounds = [0.0] * 6
        self.volume.GetRASBounds(bounds)
        diagonal = sum((bounds[2 * i + 1] - bounds[2 * i]) ** 2 for i in range(3)) ** 0.5
        # from the front and a little right and below, at the findings (the volume's middle without any), far
        # enough to see the whole volume
        self.three_d.look_from(_unit((0.15, 0.9, -0.4)), (0.0, 0.0, 1.0), self._focus(), 1.2 * diagonal)

    def _focus(self) -> tuple[float, float, float]:
        """The middle of the findings' bounding box, or of the volume where there are none."""
        points = [position for _node, position in findings(self.app.scene)]
        if not points:
            return _middle(self.volume)
        return tuple((min(p[i] for p in points) + max(p[i] for p in points)) / 2
                     for i in range(3))  # type: ignore[return-value]

    @property
    def scene(self) -> Any:
        return self.app.scene

    def close(self) -> None:
        """Detach the views from the scene and empty it. Needed before another scene is opened into views in the
        same process: the displayable-manager factories are shared, and views left watching a scene they outlive
        crash VTK when they are released."""
        for view in [*self.slices, self.three_d]:
            view.managers.SetMRMLDisplayableNode(None)
        self.app.scene.Clear(1)

    def __enter__(self) -> SceneViews:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def picture(self) -> Any:
        """The four views as a (height, width, 3) uint8 array (layout: module docstring)."""
        import numpy as np

        size = self.size
        panels = [view.image() for view in self.slices] + [self.three_d.image()]
        picture = np.full((2 * size + GAP, 2 * size + GAP, 3), GAP_VALUE, np.uint8)
        for index, pixels in enumerate(panels):
            top, left = panel_origin(index, size)
            picture[top:top + size, left:left + size] = pixels
        return picture


def render_views(mrb: str | Path | Callable[[], str | Path], size: int = VIEW_SIZE) -> Any:
    """The four views of the scene in ``mrb`` as a (height, width, 3) uint8 array (layout: module docstring)."""
    with SceneViews(mrb, size) as views:
        return views.picture()


def _middle(volume: Any) -> tuple[float, float, float]:
    bounds = [0.0] * 6
    volume.GetRASBounds(bounds)
    return tuple((bounds[2 * i] + bounds[2 * i + 1]) / 2 for i in range(3))  # type: ignore[return-value]


#: zlib level of views.png: with each row's PNG filter chosen as libpng chooses it, 7 gives 482 KB for
#: LIDC-IDRI-0001's views in 0.14 s, where VTK's writer at level 9 gave 466 KB in 1.16 s (level 6: 494 KB in 0.08 s,
#: 8: 464 KB in 0.5 s), under the catalog's 500 KB screenshot limit
PNG_LEVEL = 7


def png_bytes(pixels: Any, level: int = PNG_LEVEL) -> bytes:
    """(height, width, 3) uint8 ``pixels``, top row first, as an RGB PNG file's bytes (8 bits a channel).

    Each row is filtered as libpng's adaptive heuristic does (of the five PNG filters, the one whose output bytes,
    read as signed, sum to the least magnitude), then the whole is deflated at ``level``."""
    import struct
    import zlib

    import numpy as np

    height, width, channels = pixels.shape
    raw = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(height, width * channels).astype(np.int16)
    left = np.zeros_like(raw)
    left[:, channels:] = raw[:, :-channels]
    up = np.zeros_like(raw)
    up[1:] = raw[:-1]
    up_left = np.zeros_like(raw)
    up_left[1:, channels:] = raw[:-1, :-channels]
    guess = left + up - up_left  # the Paeth predictor: whichever neighbour is nearest the guess
    near_left, near_up, near_up_left = np.abs(guess - left), np.abs(guess - up), np.abs(guess - up_left)
    paeth = np.where((near_left <= near_up) & (near_left <= near_up_left), left,
                     np.where(near_up <= near_up_left, up, up_left))
    filtered = np.stack([raw, raw - left, raw - up, raw - (left + up) // 2, raw - paeth]).astype(np.uint8)  # mod 256
    cost = np.abs(filtered.view(np.int8).astype(np.int32)).sum(axis=2)  # (filter, row)
    choice = cost.argmin(axis=0)
    rows = np.empty((height, 1 + width * channels), np.uint8)
    rows[:, 0] = choice
    rows[:, 1:] = filtered[choice, np.arange(height)]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    colour_type = {1: 0, 3: 2, 4: 6}[channels]  # grey, RGB, RGBA
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), level))
            + chunk(b"IEND", b""))


def write_png(pixels: Any, path: str | Path) -> None:
    """Write (height, width, 3) uint8 ``pixels``, top row first, as an RGB PNG (:func:`png_bytes`), atomically."""
    from ..util.atomic import atomic_write

    data = png_bytes(pixels)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resmtnet.scene.views", description=__doc__.split("\n\n")[0])
    parser.add_argument("scene", type=Path, help="a scene.mrb written by resmtnet detect")
    parser.add_argument("output", type=Path, help="the PNG to write")
    parser.add_argument("--size", type=int, default=VIEW_SIZE, help="pixels per view (default %(default)s)")
    args = parser.parse_args(argv)
    write_png(render_views(args.scene, args.size), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
