"""A slicer-core MRML scene that behaves like the one inside the Slicer application.

Only for use outside Slicer (the ``resmtnet detect`` command, pytest): inside Slicer the application
has already done all of this for ``slicer.mrmlScene``. A bare ``vtkMRMLScene`` from the ``slicer-core``
wheel lacks what Slicer's modules register when they start: default colour nodes, the segmentation
conversion rules (so no closed surface), the markups logic (markups nodes complain and .mrml reloads
lose points), the subject hierarchy node, and the application logic that opens .mrb bundles. This module
creates the application logic and the module logics Slicer would, gives them the scene and registers
them by the names Slicer uses, so that scene-building code runs unchanged in both places.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SlicerCoreApp:
    """A scene plus the logics that serve it. Keep this object alive as long as the scene is used:
    the logics are VTK objects owned by Python and would be released with it."""

    scene: Any
    app_logic: Any
    logics: dict[str, Any] = field(default_factory=dict)
    keep_alive: list[Any] = field(default_factory=list)  # stand-in home folder (removed with this object), IO

    def logic(self, name: str) -> Any:
        return self.logics[name]


def create_slicer_core_app(scene: Any | None = None) -> SlicerCoreApp:
    """Create (or adopt) a ``vtkMRMLScene`` and set it up as Slicer's application would.

    Registered module logics (names as in Slicer): Colors, Volumes, Markups, Segmentations, Tables,
    SubjectHierarchy, Data.
    """
    import slicer

    if scene is None:
        scene = slicer.vtkMRMLScene()

    app_logic = slicer.vtkSlicerApplicationLogic()
    # There is no Slicer install here, hence no share/ColorFiles with the file-based colour tables; an
    # empty stand-in home keeps the colour logic from reporting a missing home or share folder (the
    # built-in colour tables need no files).
    home = tempfile.TemporaryDirectory(prefix="resmtnet-slicer-home-")
    os.makedirs(os.path.join(home.name, "share", "ColorFiles"))
    app_logic.SetHomeDirectory(home.name)
    app_logic.SetShareDirectory("share")
    app_logic.SetMRMLScene(scene)

    # Reading a .mrb unpacks it into the data IO manager's cache folder, as in Slicer.
    cache = slicer.vtkCacheManager()
    cache_dir = os.path.join(home.name, "cache")
    os.makedirs(cache_dir)
    cache.SetRemoteCacheDirectory(cache_dir)
    io_manager = slicer.vtkDataIOManager()
    io_manager.SetCacheManager(cache)
    scene.SetDataIOManager(io_manager)
    scene.SetCacheManager(cache)

    # The Colors module sets its logic as the application's colour logic; giving it the scene adds
    # the default colour tables (Grey, GenericAnatomyColors, ...) that volumes and segments refer to.
    color_logic = slicer.vtkSlicerColorLogic()
    app_logic.SetColorLogic(color_logic)
    color_logic.SetMRMLApplicationLogic(app_logic)
    color_logic.SetMRMLScene(scene)

    logics: dict[str, Any] = {"Colors": color_logic}
    for name, cls in (
        ("Volumes", slicer.vtkSlicerVolumesLogic),
        ("Markups", slicer.vtkSlicerMarkupsLogic),
        ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
        ("Tables", slicer.vtkSlicerTablesLogic),
        ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
        ("Data", slicer.vtkSlicerDataModuleLogic),
    ):
        logic = cls()
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)  # segmentations: registers the representation converter rules here
        logics[name] = logic
    for name, logic in logics.items():
        app_logic.SetModuleLogic(name, logic)
    return SlicerCoreApp(scene=scene, app_logic=app_logic, logics=logics, keep_alive=[home, cache, io_manager])

