"""Slicer files from a detection, written by Slicer's own storage classes (the ``slicer-core`` wheel).

``write_scene_files`` builds the same scene the Slicer module builds (:mod:`.slicer_scene`) on a
slicer-core scene and writes:

- ``nodules.mrk.json``: the fiducials, one named markups entry per nodule (each in its own colour), in one
  Slicer markups JSON file; dropping it on Slicer loads every nodule under its name. Control points are
  stored in LPS, as Slicer writes them.
- ``nodules.seg.nrrd``: the segmentation, one segment per nodule, on the CT's grid.
- ``scene.mrb``: the whole scene (CT, fiducials, segmentation, table, legend) in one Slicer data bundle
  that opens with one click (File / Open Data, or drag and drop), named after the DICOM patient ID and
  series (or the file name), its slice views centred on N1 in a lung window.

Files are written into a temporary folder beside the output folder and moved into place only when all
of them were written, so a failure leaves nothing partial behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..detect.nodules import Detection
from ..io.ctio import CTVolume

MARKUPS_FILE = "nodules.mrk.json"
SEGMENTATION_FILE = "nodules.seg.nrrd"
SCENE_FILE = "scene.mrb"


@contextlib.contextmanager
def captured_vtk_output() -> Iterator[list[str]]:
    """Collect VTK's messages instead of printing them (the zip step lists every file it packs);
    the caller gets the text, to quote when something failed."""
    import vtk

    previous = vtk.vtkOutputWindow.GetInstance()
    window = vtk.vtkStringOutputWindow()
    vtk.vtkOutputWindow.SetInstance(window)
    text: list[str] = []
    try:
        yield text
    finally:
        vtk.vtkOutputWindow.SetInstance(previous)
        text.append(window.GetOutput())


def write_markups_json(nodes: list[Any], path: str | Path) -> None:
    """Write several markups nodes into one Slicer markups JSON file (its ``markups`` list).

    Each node is written by Slicer's own JSON storage node; the entries are then gathered in one file,
    the multi-markups form that Slicer's reader loads as one node per entry.
    """
    import slicer

    path = Path(path)
    document: dict[str, Any] | None = None
    entries: list[Any] = []
    # With no nodules, a blank fiducial node gives the file's header; its entry is then dropped.
    to_write = nodes or [slicer.vtkMRMLMarkupsFiducialNode()]
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        for i, node in enumerate(to_write):
            storage = slicer.vtkMRMLMarkupsJsonStorageNode()
            storage.SetFileName(os.path.join(tmp, f"{i}.mrk.json"))
            if not storage.WriteData(node):
                raise OSError(f"could not write markups node {node.GetName()}")
            with open(storage.GetFileName(), encoding="utf-8") as f:
                single = json.load(f)
            document = document or single
            for entry in single["markups"]:
                entry["name"] = node.GetName()  # Slicer's reader names the node after it (else: the file's name)
            entries += single["markups"]
    assert document is not None
    document["markups"] = entries if nodes else []
    with open(path, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=4)


def write_segmentation(node: Any, path: str | Path) -> None:
    import slicer

    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(True)
    storage.SetCropToMinimumExtent(True)  # the nodules' box, not the CT's whole grid (a large CT's size)
    if not storage.WriteData(node):
        raise OSError(f"could not write segmentation {node.GetName()} to {path}")


def _crop_segmentation_in_bundle(node: Any) -> None:
    """The bundle stores the segmentation on the nodules' box, as ``nodules.seg.nrrd`` does, not on the
    CT's whole grid (which for a large CT is a whole-volume label map in memory while writing)."""
    if node.GetStorageNode() is None:
        node.AddDefaultStorageNode()
    node.GetStorageNode().SetCropToMinimumExtent(True)


def add_slice_views(app: Any, volume_node: Any,
                    view: tuple[tuple[float, float, float], float] | None = None) -> None:
    """Red, Yellow and Green slice views (axial, sagittal, coronal) showing ``volume_node``: centred on
    ``view``'s RAS point with its square field of view (mm) where given, else fitted to the volume.

    Slicer keeps these as singleton nodes; a scene file that has them makes Slicer show the CT as soon
    as the .mrb is opened, instead of empty views, and where the reader should look first.
    """
    import slicer

    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(app.scene, True)
    for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLScene(app.scene)
        logic.SetMRMLApplicationLogic(app.app_logic)
        slice_node = logic.AddSliceNode(name)
        slice_node.SetOrientation(orientation)
        logic.GetSliceCompositeNode().SetBackgroundVolumeID(volume_node.GetID())
        logic.FitSliceToAll()
        if view is not None:
            center, fov = view
            slice_node.SetFieldOfView(fov, fov, slice_node.GetFieldOfView()[2])
            slice_node.JumpSliceByCentering(*center)
        app.keep_alive.append(logic)


def write_scene_files(ct: CTVolume, detection: Detection, outdir: str | Path,
                      color_by: str = "malignancy", timings_s: dict[str, float] | None = None) -> dict[str, Path]:
    """Write ``nodules.mrk.json``, ``nodules.seg.nrrd`` and ``scene.mrb`` for ``detection`` on ``ct``.

    Returns their paths by kind: ``markups``, ``segmentation``, ``scene``. ``timings_s``, where given, receives
    the seconds each took (``slicer_scene``: building the scene; ``write_markups``, ``write_segmentation``,
    ``write_scene``).
    """
    import time

    times = timings_s if timings_s is not None else {}
    t0 = time.perf_counter()

    def timed(name: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        times[name] = round(now - t0, 3)
        t0 = now

    from ..io.identity import display_names
    from .slicer_app import create_slicer_core_app
    from .slicer_scene import (
        build_nodule_scene,
        check_color_by,
        first_view,
        put_volume_in_study,
        volume_node_from_ct,
    )

    check_color_by(color_by)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    app = create_slicer_core_app()
    scene = app.scene
    shown = display_names(ct.identity, fallback=ct.seriesuid or "CT")
    volume = volume_node_from_ct(scene, ct, shown.volume, share_voxels=True)
    put_volume_in_study(scene, volume, patient_name=shown.patient, study_name=shown.study)
    nodes = build_nodule_scene(scene, volume, detection, color_by=color_by)
    add_slice_views(app, volume, first_view(detection.nodules))
    timed("slicer_scene")

    names = {"markups": MARKUPS_FILE, "segmentation": SEGMENTATION_FILE, "scene": SCENE_FILE}
    tmp = Path(tempfile.mkdtemp(prefix=".resmtnet-", dir=outdir))
    try:
        write_markups_json(nodes["markups"], tmp / MARKUPS_FILE)
        timed("write_markups")
        write_segmentation(nodes["segmentation"], tmp / SEGMENTATION_FILE)
        timed("write_segmentation")
        _crop_segmentation_in_bundle(nodes["segmentation"])
        scene.SetRootDirectory(str(tmp))
        with captured_vtk_output() as messages:
            ok = scene.WriteToMRB(str(tmp / SCENE_FILE))
        if not ok or not (tmp / SCENE_FILE).is_file():
            errors = [line for line in "".join(messages).splitlines() if "ERR" in line or "rror" in line]
            raise OSError(f"could not write the Slicer scene bundle {SCENE_FILE}: " + " / ".join(errors[-3:]))
        for filename in names.values():
            os.replace(tmp / filename, outdir / filename)
        timed("write_scene")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {kind: outdir / filename for kind, filename in names.items()}
