"""The browser viewer behind ``resmtnet view``: a result's scene served on a web page by trame-slicer.

The page shows Slicer's axial, sagittal, coronal and 3-D views, drawn on the server by Slicer's own displayable
managers (trame-slicer's views on slicer-core, streamed to the page as images), laid out as ``views.png``::

    axial   | sagittal
    --------+---------
    coronal | 3-D

beside them the findings table (a click on a row centres the slice views on that finding), the colour legend and
the research-use note, and under the views a status line with where the slice planes are, in the table's LPS mm
("Slices: sagittal L 11.2 · coronal P 14.9 · axial S -40.7 mm"): after a click, the row's centre.

Everything is read from the scene itself (the table node, the findings' fiducials, the legend colour table), so a
``scene.mrb`` copied away from its result folder shows the same page.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..util.errors import ResMTNetError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
SCENE_SUFFIXES = (".mrb", ".mrml")
#: each slice view's name in the scene, its orientation, and the LPS axis its plane's position is given along
SLICE_VIEWS = (("Red", "Axial", "S"), ("Yellow", "Sagittal", "L"), ("Green", "Coronal", "P"))
STATUS_ID = "slice-status"  # the DOM id of the status line with the slice views' offsets
TABLE_ID = "findings"  # the DOM id of the findings table


@dataclass(frozen=True)
class Finding:
    """One row of the findings table, as the scene's table node holds it, and where its fiducial is (RAS)."""

    number: int
    name: str
    center_lps: tuple[float, float, float]
    diameter_mm: float
    probability: float
    malignancy_percent: float
    center_ras: tuple[float, float, float]
    color: str  # "#rrggbb", the finding's marker colour
    nodule_type: str = ""  # the table's Type, Lung-RADS and Brock (%) columns ("" in a scene made before them)
    lung_rads: str = ""
    brock: str = ""

    def row(self) -> dict[str, Any]:
        """The row as the page's table shows it."""
        x, y, z = self.center_lps
        return {"number": self.number, "name": self.name, "position": f"{x:.1f}, {y:.1f}, {z:.1f}",
                "size": f"{self.diameter_mm:.1f}", "p": f"{self.probability:.2f}",
                "malignancy": f"{self.malignancy_percent:.0f} %", "type": self.nodule_type,
                "lung_rads": self.lung_rads,
                "brock": f"{self.brock} %" if self.brock not in ("", "n/a") else self.brock, "color": self.color}


def resolve_scene(source: str | Path) -> Path:
    """The scene file to show: ``source`` itself (.mrb or .mrml) or a result folder's ``scene.mrb``."""
    from .slicer_outputs import SCENE_FILE

    path = Path(source)
    if path.is_dir():
        scene = path / SCENE_FILE
        if not scene.is_file():
            raise ResMTNetError(f"{path}: no {SCENE_FILE} here; give a folder `resmtnet detect` wrote (without "
                                "--no-slicer-files) or a scene file (.mrb, .mrml)")
        return scene
    if not path.exists():
        raise ResMTNetError(f"{path}: no such file or folder")
    if path.suffix.lower() not in SCENE_SUFFIXES:
        raise ResMTNetError(f"{path}: not a Slicer scene (.mrb, .mrml) nor a result folder")
    return path


def reserve_port(host: str, port: int) -> int:
    """``port`` on ``host`` if it is free (0: a free port the system picks); ResMTNetError where it is not."""
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError) as e:
        raise ResMTNetError(f"cannot serve on {host}: not an address of this machine ({e})") from None
    with socket.socket(family, kind, proto) as probe:
        # as the server binds (aiohttp): a port left in TIME_WAIT is free, one another program listens on is not
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            hint = (" (another program uses it: pick another with --port, or --port 0 for a free one)"
                    if e.errno == errno.EADDRINUSE else "")
            raise ResMTNetError(f"cannot serve on {host}:{port}: {e.strerror or e}{hint}") from None
        return int(probe.getsockname()[1])


def _hex(rgb: tuple[float, float, float] | list[float]) -> str:
    return "#" + "".join(f"{round(255 * min(1.0, max(0.0, c))):02x}" for c in rgb)


def scene_findings(scene: Any) -> list[Finding]:
    """The findings of a scene ``resmtnet detect`` (or the Slicer module) wrote, N1 first: the table node's rows,
    each with its fiducial's RAS position and colour. Rows without a fiducial are left out (nowhere to jump)."""
    from .slicer_scene import NUMBER_ATTRIBUTE, ROLE_ATTRIBUTE, ROLE_TABLE
    from .views import scene_nodes

    markers = {}
    for node in scene_nodes(scene, "vtkMRMLMarkupsFiducialNode"):
        number = node.GetAttribute(NUMBER_ATTRIBUTE)
        if number and node.GetNumberOfControlPoints():
            position = [0.0, 0.0, 0.0]
            node.GetNthControlPointPositionWorld(0, position)
            display = node.GetDisplayNode()
            color = _hex(display.GetSelectedColor()) if display is not None else "#ffffff"
            markers[int(number)] = (tuple(position), color)
    tables = [t for t in scene_nodes(scene, "vtkMRMLTableNode") if t.GetAttribute(ROLE_ATTRIBUTE) == ROLE_TABLE]
    found = []
    for table_node in tables[:1]:
        table = table_node.GetTable()

        def value(column: str, row: int, table: Any = table) -> Any:
            array = table.GetColumnByName(column)
            return None if array is None else array.GetValue(row)

        for r in range(table.GetNumberOfRows()):
            name = str(value("Finding", r))
            number = int(name[1:]) if name[:1] == "N" and name[1:].isdigit() else None
            if number not in markers:
                continue
            ras, color = markers[number]
            found.append(Finding(number=number, name=name,
                                 center_lps=(float(value("L", r)), float(value("P", r)), float(value("S", r))),
                                 diameter_mm=float(value("Diameter", r)), probability=float(value("p", r)),
                                 malignancy_percent=float(value("Malignancy", r)), center_ras=ras, color=color,
                                 nodule_type=str(value("Type", r) or ""), lung_rads=str(value("Lung-RADS", r) or ""),
                                 brock=str(value("Brock", r) or "")))
    return sorted(found, key=lambda f: f.number)


def legend_from_scene(scene: Any) -> tuple[str, list[tuple[str, str]]]:
    """The colour legend the scene carries (its nodule colour table): title and (text, "#rrggbb") entries."""
    from .slicer_scene import COLOR_BY_ATTRIBUTE, ROLE_ATTRIBUTE, ROLE_LEGEND, legend_title
    from .views import scene_nodes

    for node in scene_nodes(scene, "vtkMRMLColorTableNode"):
        if node.GetAttribute(ROLE_ATTRIBUTE) == ROLE_LEGEND:
            entries = []
            for i in range(node.GetNumberOfColors()):
                rgba = [0.0, 0.0, 0.0, 0.0]
                node.GetColor(i, rgba)
                entries.append((node.GetColorName(i), _hex(rgba[:3])))
            color_by = node.GetAttribute(COLOR_BY_ATTRIBUTE) or "malignancy"
            return legend_title(color_by).replace("\n", ", "), entries
    return "", []


def slice_positions(scene: Any) -> dict[str, float]:
    """Where each slice view's plane lies, in LPS mm as the table and ``nodules.csv``: the sagittal plane's L,
    the coronal plane's P, the axial plane's S (from the slice nodes' slice-to-RAS origin)."""
    positions = {}
    for name, orientation, axis in SLICE_VIEWS:
        node = scene.GetSingletonNode(name, "vtkMRMLSliceNode")
        if node is not None:
            ras = node.GetSliceToRAS()
            index, sign = {"L": (0, -1.0), "P": (1, -1.0), "S": (2, 1.0)}[axis]
            positions[orientation] = sign * ras.GetElement(index, 3)
    return positions


def slice_status(scene: Any) -> str:
    """The status line: the slice views' planes, e.g. "sagittal L 11.2 · coronal P 14.9 · axial S -40.7 mm (LPS)"."""
    axes = {orientation: axis for _name, orientation, axis in SLICE_VIEWS}
    positions = slice_positions(scene)
    parts = [f"{o.lower()} {axes[o]} {positions[o]:.1f}" for o in ("Sagittal", "Coronal", "Axial") if o in positions]
    return "Slices: " + " · ".join(parts) + " mm (LPS, as the table)" if parts else ""


class SceneViewer:
    """A trame server showing one scene: Slicer's four views, the findings table, the legend and the note.

    ``scene_path`` is read into the views' scene at construction (ResMTNetError when it cannot be);
    :meth:`start` serves the page until the process is stopped."""

    def __init__(self, scene_path: str | Path, server_name: str = "resmtnet-view"):
        import vtk
        from trame.app import get_server
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories
        from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

        self.scene_path = Path(scene_path)
        self.server = get_server(server_name, client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        # VTK's messages (no X display, deprecations) are kept, not printed: the command's output is its address,
        # or one line saying why it could not start (which quotes VTK's last error where that helps).
        vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
        self.app = SlicerApp()
        self.vtk_messages = vtk.vtkStringOutputWindow()
        vtk.vtkOutputWindow.SetInstance(self.vtk_messages)
        # Still images (Pillow's JPEG): no video encoder, no extra native library; the view ui is ours (none).
        register_rca_factories(self.app.view_manager, self.server, slice_view_ui_f=_no_ui, three_d_view_ui_f=_no_ui,
                               rca_encoder="jpeg")
        self.layout_manager = LayoutManager(self.app.scene, self.app.view_manager, self.server)
        axial, sagittal, coronal = (ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.sagittal_view(),
                                    ViewLayoutDefinition.coronal_view())
        three_d = ViewLayoutDefinition.threed_view()
        self.layout_manager.register_layout("four-up", Layout(LayoutDirection.Vertical, [
            Layout(LayoutDirection.Horizontal, [axial, sagittal]),
            Layout(LayoutDirection.Horizontal, [coronal, three_d]),
        ]))
        self.layout_manager.set_layout("four-up")
        # As in Slicer: the views exist first and the scene is opened into them, so that the stored slice nodes
        # (centred on N1 at a lung window) and the colour legend reach the views.
        self._load()
        self.findings = scene_findings(self.app.scene)
        self.legend_title, self.legend_entries = legend_from_scene(self.app.scene)
        self._build_page()
        self.server.state["slice_status"] = slice_status(self.app.scene)
        self.server.state["selected_finding"] = self.findings[0].number if self.findings else None
        # The status line follows the slice views however they move: a row's click, or scrolling in a view
        for name, _orientation, _axis in SLICE_VIEWS:
            node = self.app.scene.GetSingletonNode(name, "vtkMRMLSliceNode")
            if node is not None:
                node.AddObserver(vtk.vtkCommand.ModifiedEvent, self._on_slice_moved)

    def _load(self) -> None:
        import zipfile

        import slicer

        from .views import scene_nodes

        scene = self.app.scene
        # trame-slicer's app registers the MRML colour logic, not Slicer's module one that knows the colour legend
        # display node: without it the scene's legend would be dropped (and the whole read reported as failed).
        scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
        path = self.scene_path.resolve()
        if path.suffix.lower() == ".mrb":
            if not zipfile.is_zipfile(path):
                raise ResMTNetError(f"{self.scene_path}: not a scene Slicer can open (not a .mrb bundle)")
            loaded = scene.ReadFromMRB(str(path))
        else:
            scene.SetURL(str(path))
            loaded = scene.Import()
        if not loaded:
            errors = [line.split(":", 1)[-1].strip() for line in self.vtk_messages.GetOutput().splitlines()
                      if "::" in line and line.strip()]
            because = f" ({errors[-1][:200]})" if errors else ""
            raise ResMTNetError(f"{self.scene_path}: not a scene Slicer can open{because}")
        volumes = [v for v in scene_nodes(scene, "vtkMRMLScalarVolumeNode") if not v.IsA("vtkMRMLLabelMapVolumeNode")]
        if not volumes or volumes[0].GetImageData() is None:
            raise ResMTNetError(f"{self.scene_path}: the scene holds no CT volume (or its voxels could not be read)")
        for segmentation in scene_nodes(scene, "vtkMRMLSegmentationNode"):
            segmentation.CreateClosedSurfaceRepresentation()
        for name, _orientation, _axis in SLICE_VIEWS:
            composite = self._composite_node(name)
            if composite is not None and not composite.GetBackgroundVolumeID():
                composite.SetBackgroundVolumeID(volumes[0].GetID())  # a scene without stored views
        red = scene.GetSingletonNode("Red", "vtkMRMLSliceNode")
        if red is not None:
            red.SetSliceVisible(True)  # the axial slice in the 3-D view, as views.png shows it
        self.volume_name = volumes[0].GetName() or self.scene_path.name
        self._aim_three_d(volumes[0])

    def _aim_three_d(self, volume: Any) -> None:
        """The 3-D view as in ``views.png``: from the front, a little right and below, at the findings (the volume's
        middle without any), far enough to see the whole volume; no box (it sits around the origin, not the CT)."""
        bounds = [0.0] * 6
        volume.GetRASBounds(bounds)
        diagonal = sum((bounds[2 * i + 1] - bounds[2 * i]) ** 2 for i in range(3)) ** 0.5
        points = [f.center_ras for f in scene_findings(self.app.scene)]
        if points:
            focus = [(min(p[i] for p in points) + max(p[i] for p in points)) / 2 for i in range(3)]
        else:
            focus = [(bounds[2 * i] + bounds[2 * i + 1]) / 2 for i in range(3)]
        direction = (0.15, 0.9, -0.4)
        norm = sum(c * c for c in direction) ** 0.5
        for view in self.app.view_manager.get_threed_views():
            view.set_box_visible(False)
            camera = view.get_camera_node()
            if camera is None:
                continue
            camera.SetFocalPoint(*focus)
            camera.SetPosition(*[f + d / norm * 1.2 * diagonal for f, d in zip(focus, direction)])
            camera.SetViewUp(0.0, 0.0, 1.0)
            camera.ResetClippingRange()

    def _composite_node(self, name: str) -> Any:
        from .views import scene_nodes

        for node in scene_nodes(self.app.scene, "vtkMRMLSliceCompositeNode"):
            if node.GetLayoutName() == name:
                return node
        return None

    def _on_slice_moved(self, *_args: Any) -> None:
        status = slice_status(self.app.scene)
        if status != self.server.state["slice_status"]:
            with self.server.state:
                self.server.state["slice_status"] = status

    def jump_to_finding(self, number: int) -> None:
        """Centre the three slice views on finding ``number`` (as a click on its row in Slicer's table would)."""
        finding = next((f for f in self.findings if f.number == int(number)), None)
        if finding is None:
            return
        for name, _orientation, _axis in SLICE_VIEWS:
            node = self.app.scene.GetSingletonNode(name, "vtkMRMLSliceNode")
            if node is not None:
                node.JumpSliceByCentering(*finding.center_ras)
        self.server.state["selected_finding"] = finding.number
        self.server.state["slice_status"] = slice_status(self.app.scene)

    def _build_page(self) -> None:
        from trame.ui.vuetify3 import VAppLayout
        from trame.widgets import html
        from trame.widgets import vuetify3 as v3

        from .slicer_scene import RESEARCH_NOTE

        title = f"ResMTNet · {self.volume_name}"
        self.server.state["trame__title"] = title
        self.server.state["findings"] = [f.row() for f in self.findings]
        with VAppLayout(self.server, full_height=True, theme="dark") as page:
            with v3.VMain(), html.Div(style="display: flex; height: 100vh;"):
                with html.Div(style="flex: 1; display: flex; flex-direction: column; min-width: 0;"):
                    with html.Div(style="flex: 1; display: flex; min-height: 0;"):
                        self.layout_manager.initialize_layout_grid(page)
                    html.Div("{{ slice_status }}", id=STATUS_ID, classes="text-caption px-2",
                             style="height: 22px; font-family: monospace;")
                with html.Div(style="width: 440px; overflow-y: auto; padding: 8px;", classes="text-body-2"):
                    html.Div(title, classes="text-subtitle-1 font-weight-bold")
                    html.Div(str(self.scene_path), classes="text-caption text-medium-emphasis")
                    html.Div(RESEARCH_NOTE, id="research-note", classes="text-warning my-2")
                    self._findings_table()
                    self._legend()

    def _findings_table(self) -> None:
        from trame.widgets import html

        if not self.findings:
            html.Div("No findings in this scene.", id=TABLE_ID, classes="my-2")
            return
        cell = "padding: 2px 6px; text-align: right; white-space: nowrap;"
        with html.Table(id=TABLE_ID, style="border-collapse: collapse; width: 100%; margin: 8px 0;"):
            with html.Thead(), html.Tr():
                for text in ("", "Finding", "Centre L, P, S (mm)", "Size (mm)", "p", "Malignancy", "Type", "Lung-RADS",
                             "Brock"):
                    html.Th(text, style=cell)
            with html.Tbody():
                with html.Tr(v_for="row in findings", key="row.number", click="trigger('jump', [row.number])",
                             classes="finding-row",
                             style=("{cursor: 'pointer', background: row.number === selected_finding ? "
                                    "'rgba(255,255,255,0.15)' : 'transparent'}",)):
                    html.Td("&#9632;", style=("{color: row.color, padding: '2px 6px'}",))
                    html.Td("{{ row.name }}", style=cell)
                    html.Td("{{ row.position }}", style=cell)
                    html.Td("{{ row.size }}", style=cell)
                    html.Td("{{ row.p }}", style=cell)
                    html.Td("{{ row.malignancy }}", style=cell)
                    html.Td("{{ row.type }}", style=cell)
                    html.Td("{{ row.lung_rads }}", style=cell)
                    html.Td("{{ row.brock }}", style=cell)
        self.server.trigger("jump")(self.jump_to_finding)
        html.Div("Click a row to centre the slice views on it.", classes="text-caption")

    def _legend(self) -> None:
        from trame.widgets import html

        with html.Div(id="legend", classes="my-2"):
            html.Div(self.legend_title, classes="font-weight-bold")
            for text, color in self.legend_entries:
                with html.Div():
                    html.Span("&#9632;", style=f"color: {color};")
                    html.Span(f" {text}")

    def start(self, host: str, port: int, on_ready: Callable[[], None] | None = None, **kwargs: Any) -> None:
        """Serve until stopped (Ctrl-C, SIGTERM); ``on_ready`` is called once the server accepts connections."""
        if on_ready is not None:
            self.server.controller.on_server_ready.add(lambda **_kwargs: on_ready())
        # timeout 0: keep serving with no page open (wslink otherwise stops after 5 idle minutes)
        self.server.start(host=host, port=port, open_browser=False, show_connection_info=False, timeout=0, **kwargs)


def _no_ui(*_args: Any) -> None:
    """No controls drawn over a view: the page's table and status line do that job."""
