"""views.png and the scene's look, asserted on the pixels Slicer's own slice and 3-D views draw (offscreen).

The scene is drawn three times: as it is (A), with the findings' markers hidden (B), and with markers and
segments hidden (C). A minus B is what the markers draw, B minus C what the segments draw: so a test can say
that no marker covers a nodule, that the outline surrounds it, and that the CT at its centre shows through.
Skips, saying so, where VTK cannot render offscreen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from conftest_slicer import *  # noqa: F403  (the fixtures offscreen_rendering, phantom, phantom_truth)
from resmtnet.detect.nodules import Detection, Nodule
from resmtnet.scene.slicer_scene import (
    CONFIDENT_PROBABILITY,
    SEGMENT_FILL_OPACITY,
    legend_entries,
    malignancy_color,
)

SIZE = 320  # pixels per view: enough to resolve the phantom's 7 mm nodules in a 100 mm field
CHANGED = 12  # a pixel "changed" when a channel moved by more than this
NEAR_COLOUR = 40  # a pixel "is" a colour within this many levels per channel


def _spread(detection: Detection) -> Detection:
    """The phantom's nodules as findings of different confidence and malignancy (N3 under the confidence line)."""
    values = [(0.96, 0.1), (0.7, 0.5), (0.44, 0.9)]
    nodules = [dataclasses.replace(n, probability=p, malignancy=m)
               for n, (p, m) in zip(detection.nodules, values, strict=True)]
    return dataclasses.replace(detection, nodules=nodules)


@pytest.fixture(scope="module")
def phantom_views(offscreen_rendering, phantom, tmp_path_factory):
    from resmtnet.scene.selftest import phantom_detection
    from resmtnet.scene.slicer_outputs import write_scene_files
    from resmtnet.scene.views import SceneViews

    detection = _spread(phantom_detection(phantom, seriesuid="phantom-s0"))
    outdir = tmp_path_factory.mktemp("views")
    paths = write_scene_files(phantom.ct, detection, outdir)
    with SceneViews(paths["scene"], SIZE) as views:
        yield views, detection


def _rgb255(nodule: Nodule) -> np.ndarray:
    return np.array(malignancy_color(nodule.malignancy)) * 255


@contextlib.contextmanager
def _hidden(scene, class_names):
    """Hide the display nodes of every node of ``class_names`` for the block."""
    hidden = []
    for class_name in class_names:
        for i in range(scene.GetNumberOfNodesByClass(class_name)):
            display = scene.GetNthNodeByClass(i, class_name).GetDisplayNode()
            if display is not None and display.GetVisibility():
                display.SetVisibility(False)
                hidden.append(display)
    try:
        yield
    finally:
        for display in hidden:
            display.SetVisibility(True)


def _three_ways(views, image):
    """``image()`` drawn as it is, without markers, and without markers and segments (int16 arrays)."""
    scene = views.scene
    a = image().astype(np.int16)
    with _hidden(scene, ["vtkMRMLMarkupsFiducialNode"]):
        b = image().astype(np.int16)
        with _hidden(scene, ["vtkMRMLSegmentationNode"]):
            c = image().astype(np.int16)
    return a, b, c


def _changed(x, y):
    return np.abs(x - y).max(axis=2) > CHANGED


def _polar(shape, centre):
    rows, cols = np.indices(shape[:2])
    dr, dc = rows - centre[0], cols - centre[1]
    return np.hypot(dr, dc), np.degrees(np.arctan2(-dr, dc)) % 360


def check_finding_on_slice(views, view, nodule: Nodule, fov_mm: float) -> None:
    """On ``view`` (a slice through ``nodule``'s centre): the CT shows at the centre, no marker pixel lies on the
    nodule, the marker's four arms frame it in the finding's colour (faded under the confidence line), and the
    segment's outline surrounds it in that colour."""
    a, b, c = _three_ways(views, view.image)
    size = a.shape[0]
    centre = view.ras_to_pixel(nodule.center_ras)
    mm_per_pixel = fov_mm / size
    radius = nodule.diameter_mm / 2 / mm_per_pixel
    distance, angle = _polar(a.shape, centre)
    colour = _rgb255(nodule)

    # the CT at the centre: only the segment's light fill over it, no marker
    core = distance <= max(1.5, 0.25 * radius)
    fill_tint = SEGMENT_FILL_OPACITY * 255 + CHANGED
    assert np.abs(a[core] - c[core]).max() <= fill_tint, f"{nodule.name}: the CT at its centre is covered"
    marker = _changed(a, b)
    assert not marker[distance <= radius].any(), f"{nodule.name}: a marker pixel lies on the nodule"

    # the cross's arms: 0.6 to 1.5 diameters out, along the view's axes, in the finding's colour
    arms = marker & (distance >= 1.1 * radius) & (distance <= 3.0 * radius)
    for direction in (0, 90, 180, 270):
        off_axis = np.abs((angle - direction + 180) % 360 - 180)
        arm = arms & (off_axis < 10)
        assert arm.sum() >= 2, f"{nodule.name}: no marker arm at {direction} degrees"
        gap = np.abs(a[arm] - colour).max(axis=1)
        if nodule.probability >= CONFIDENT_PROBABILITY:
            assert np.median(gap) < NEAR_COLOUR, f"{nodule.name}: arm at {direction} degrees not in its colour"
        else:  # drawn, but visibly weaker: between the CT and the colour
            assert np.median(gap) >= NEAR_COLOUR, f"{nodule.name}: under the confidence line but drawn full"
            toward = np.abs(b[arm] - colour).max(axis=1) - gap
            assert np.median(toward) > CHANGED, f"{nodule.name}: faded arm not drawn in its colour"

    # the outline: segment pixels in the finding's colour all around the nodule, near its edge
    segment = _changed(b, c) & (np.abs(b - colour).max(axis=2) < NEAR_COLOUR)
    ring = segment & (distance >= 0.4 * radius) & (distance <= 1.6 * radius + 2)
    for quadrant in (45, 135, 225, 315):
        off = np.abs((angle - quadrant + 180) % 360 - 180)
        if nodule.probability >= CONFIDENT_PROBABILITY:
            assert (ring & (off < 45)).any(), f"{nodule.name}: no outline around it towards {quadrant} degrees"


def check_legend(image, entries) -> None:
    """The colour legend: each entry's colour as a block in the view's lower left quarter."""
    size = image.shape[0]
    corner = image[size // 2:, : size // 3].astype(np.int16)
    for text, rgb in entries:
        near = np.abs(corner - np.array(rgb) * 255).max(axis=2) < 20
        assert near.sum() >= 20, f"legend entry {text!r} not drawn"


@pytest.mark.slow
def test_slice_views_open_on_n1_with_marker_outline_and_legend(phantom_views):
    views, detection = phantom_views
    n1 = detection.nodules[0]
    for view in views.slices:
        row, col = view.ras_to_pixel(n1.center_ras)
        assert abs(row - (SIZE - 1) / 2) <= 1.5 and abs(col - (SIZE - 1) / 2) <= 1.5, "the view is not on N1"
        fov = view.node.GetFieldOfView()[0]
        assert fov == pytest.approx(100.0, abs=0.5)  # 10 diameters of a 7 mm nodule, at least 100 mm
        check_finding_on_slice(views, view, n1, fov)
        check_legend(view.image(), legend_entries("malignancy"))


def test_every_finding_is_framed_in_its_colour_and_unobscured_on_its_jump_slice(phantom_views):
    views, detection = phantom_views
    axial = views.slices[0]
    try:
        for nodule in detection.nodules:
            axial.center_on(nodule.center_ras, 100.0)
            check_finding_on_slice(views, axial, nodule, 100.0)
    finally:
        axial.center_on(detection.nodules[0].center_ras, 100.0)


def test_three_d_view_shows_the_segments_and_the_legend(phantom_views):
    views, detection = phantom_views
    a, b, c = _three_ways(views, views.three_d.image)
    drawn = _changed(b, c)
    assert drawn.sum() > 20, "no segment surface drawn in the 3-D view"
    check_legend(a, legend_entries("malignancy"))
    for nodule in detection.nodules:  # each finding's marker and label, in its colour
        near = (np.abs(a - _rgb255(nodule)).max(axis=2) < NEAR_COLOUR) & _changed(a, b)
        if nodule.probability >= CONFIDENT_PROBABILITY:
            assert near.sum() >= 10, f"{nodule.name} not drawn in its colour in the 3-D view"
        else:
            assert _changed(a, b).sum() > 0


@pytest.mark.slow
def test_detect_writes_views_png_and_notes_in_report_json(offscreen_rendering, phantom, phantom_truth, tmp_path,
                                                          monkeypatch):
    """Into an output folder named relative to the working folder, as `resmtnet detect x -o out` does."""
    from matplotlib.image import imread
    from resmtnet.report.outputs import write_detection_outputs
    from resmtnet.scene.views import GAP, VIEW_SIZE

    monkeypatch.chdir(tmp_path)
    written = write_detection_outputs(phantom.ct, phantom_truth, Path("out"))
    assert "views.png" in written
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["views"] == {"file": "views.png"}
    assert imread(tmp_path / "out" / "views.png").shape[:2] == (2 * VIEW_SIZE + GAP, 2 * VIEW_SIZE + GAP)


@pytest.mark.slow
def test_a_child_that_died_gives_no_slicer_files_and_a_reason(phantom, phantom_truth, tmp_path):
    """A child killed before it wrote anything (as VTK without an offscreen OpenGL aborts it): no answer, a one-line
    reason, nothing of what was handed to it left behind; the caller then writes the Slicer files itself."""
    import os
    import signal

    from resmtnet.scene.slicer_process import HANDOFF, SlicerProcess

    child = SlicerProcess()
    os.kill(child._child.pid, signal.SIGKILL)
    child._child.wait()
    child.request(phantom.ct, phantom_truth, tmp_path, tmp_path / "views.png")
    assert child.scene_files(timeout_s=120) is None
    reason = child.why_not()
    assert reason and "rendering failed" in reason and "\n" not in reason
    assert not (tmp_path / HANDOFF).exists()
    assert not (tmp_path / "views.png").exists()


@pytest.mark.slow
def test_real_ct_views_frame_the_nodule_without_covering_it(offscreen_rendering, lidc_dir, tmp_path):
    """LIDC-IDRI-0001 with its annotated nodule as N1: the same checks on Slicer's drawing of the real scan."""
    import csv

    from resmtnet.io.ctio import read_ct
    from resmtnet.scene.slicer_outputs import write_scene_files
    from resmtnet.scene.views import SceneViews

    ct = read_ct(lidc_dir / "dicom")
    with open(lidc_dir / "annotations.csv") as f:
        row = next(csv.DictReader(f))
    centre = np.array([float(row[k]) for k in ("coordX", "coordY", "coordZ")])
    diameter = float(row["diameter_mm"])
    zz, yy, xx = np.indices(ct.array.shape, sparse=True)
    index = ct.world_to_index(centre)
    sx, sy, sz = ct.spacing
    inside = (((xx - index[0]) * sx) ** 2 + ((yy - index[1]) * sy) ** 2 + ((zz - index[2]) * sz) ** 2
              <= (diameter / 2) ** 2)
    mask = inside & (ct.array > -500)
    nodule = Nodule(1, tuple(centre), 0.96, diameter, 0.51, float(mask.sum() * sx * sy * sz))
    detection = Detection(ct.seriesuid, [nodule], mask.astype(np.uint16), ct.spacing, ct.origin, ct.direction)
    paths = write_scene_files(ct, detection, tmp_path)
    with SceneViews(paths["scene"], 480) as views:
        for view in views.slices:
            fov = view.node.GetFieldOfView()[0]
            assert fov == pytest.approx(min(250.0, max(100.0, 10 * diameter)), abs=0.5)
            check_finding_on_slice(views, view, nodule, fov)
            check_legend(view.image(), legend_entries("malignancy"))


@pytest.mark.slow
def test_detection_stands_where_offscreen_rendering_is_impossible(phantom, phantom_truth, tmp_path, monkeypatch):
    """Without a usable EGL (glvnd pointed at no vendor, no display) VTK crashes the rendering process: the files
    are still written, and report.json says why views.png is missing."""
    from resmtnet.report.outputs import write_detection_outputs

    monkeypatch.setenv("__EGL_VENDOR_LIBRARY_FILENAMES", str(tmp_path / "no-such-vendor.json"))
    monkeypatch.setenv("DISPLAY", "")
    monkeypatch.delenv("VTK_DEFAULT_OPENGL_WINDOW", raising=False)
    written = write_detection_outputs(phantom.ct, phantom_truth, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    if "views.png" in written:
        pytest.skip("this machine renders offscreen even without an EGL vendor (OSMesa): nothing to fail")
    assert set(written) == {"nodules.csv", "report.json", "overview.png", "nodules.mrk.json", "nodules.seg.nrrd",
                            "scene.mrb"}
    assert report["views"]["skipped"].startswith("offscreen rendering failed")
