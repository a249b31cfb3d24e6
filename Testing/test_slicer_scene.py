"""Scene building on a real slicer-core MRML scene, for a phantom: fiducials, segments, table, .mrb.

The phantom's truth nodules and masks stand in for the detector's output (the scene code does not care
where a Detection comes from); the phantom's direction swaps axes and flips one, so that any slip in
LPS↔RAS or array-order conversion shows.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import vtk
from conftest_slicer import *  # noqa: F403  (the fixtures slicer_app, phantom, phantom_truth)
from conftest_slicer import segment_centre_ras
from resmtnet.detect.nodules import Detection
from resmtnet.io.ctio import CTVolume
from resmtnet.scene import slicer_outputs
from resmtnet.scene.colors import lung_rads_color, malignancy_color
from resmtnet.scene.selftest import (
    check_nodule_scene,
    check_phantom_found,
    read_table_rows,
    run_phantom_scenario,
    segment_volume_mm3,
)
from resmtnet.scene.slicer_app import create_slicer_core_app
from resmtnet.scene.slicer_scene import (
    ROLE_ATTRIBUTE,
    TABLE_COLUMNS,
    build_nodule_scene,
    ct_from_volume_node,
    find_nodule_outputs,
    find_outputs,
    legend_entries,
    put_volume_in_study,
    table_row_ras,
    table_rows,
    volume_node_from_ct,
)
from resmtnet.util.errors import InputError


def _scene_with_volume(app, ct):
    volume = volume_node_from_ct(app.scene, ct, "CT")
    put_volume_in_study(app.scene, volume, "Patient", "Study")
    return volume


def _ras(markups_node):
    p = [0.0, 0.0, 0.0]
    markups_node.GetNthControlPointPosition(0, p)
    return np.array(p)


def _spread(detection: Detection, malignancies, diameters=None) -> Detection:
    """The same nodules and masks with other malignancy (and size) values, to cover the colour scale."""
    nodules = [dataclasses.replace(n, malignancy=m)
               for n, m in zip(detection.nodules, malignancies, strict=True)]
    if diameters is not None:
        nodules = [dataclasses.replace(n, diameter_mm=d) for n, d in zip(nodules, diameters, strict=True)]
    return dataclasses.replace(detection, nodules=nodules)


def _characterised(detection: Detection) -> Detection:
    """Three nodules as the characterisation heads and the Brock model leave them: a calcified 18 mm nodule
    (Lung-RADS 1, no Brock), a part-solid 12 mm one with a 6.5 mm solid component (4A), a spiculated solid 7 mm
    one (3 with a suspicious feature: 4X); the Brock inputs partly defaulted."""
    kinds = [dict(nodule_type="calcified", margin="smooth", diameter_mm=18.0, brock_malignancy=None,
                  long_axis_mm=19.2, sphere_diameter_mm=17.6),
             dict(nodule_type="part-solid", margin="lobulated", diameter_mm=12.0, solid_component_mm=6.5,
                  brock_malignancy=0.0834, upper_lobe=True, long_axis_mm=12.9, sphere_diameter_mm=11.5),
             dict(nodule_type="solid", margin="spiculated", diameter_mm=7.0, brock_malignancy=0.0412,
                  upper_lobe=False, long_axis_mm=None, sphere_diameter_mm=None)]
    nodules = [dataclasses.replace(n, **k) for n, k in zip(detection.nodules, kinds, strict=True)]
    info = {**detection.info, "brock": {"inputs": {"age": 63.0, "sex": "F", "family_history": False,
                                                   "emphysema": False},
                                        "defaulted": ["family_history", "emphysema"]}}
    return dataclasses.replace(detection, nodules=nodules, info=info)


# ------------------------------------------------------------------------------------------------
# Volume node <-> CT


@pytest.mark.parametrize("direction", [
    (1, 0, 0, 0, 1, 0, 0, 0, 1),
    (-1, 0, 0, 0, 1, 0, 0, 0, -1),
    (0, 1, 0, 1, 0, 0, 0, 0, -1),
    # an oblique rotation (about 20 degrees about z)
    (0.9396926, -0.3420201, 0, 0.3420201, 0.9396926, 0, 0, 0, 1),
])
def test_volume_node_round_trip_keeps_voxels_and_world_geometry(slicer_app, direction):
    rng = np.random.default_rng(1)
    array = rng.integers(-1000, 400, size=(7, 9, 11)).astype(np.float32)
    direction = tuple(float(d) for d in direction)
    ct = CTVolume(array, (0.7, 0.8, 2.5), (12.0, -30.0, 100.0), direction, "uid", "mem")
    node = volume_node_from_ct(slicer_app.scene, ct, "CT")

    # Slicer's IJKToRAS maps every voxel index to the RAS of its LPS world position.
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ijk_to_ras = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    ijk = np.array([[0, 0, 0], [10, 0, 0], [0, 8, 0], [0, 0, 6], [3, 5, 2]], dtype=float)
    ras = (ijk_to_ras @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]
    lps = ct.index_to_world(ijk)
    np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-6)
    # Voxel (i, j, k) of the node is array[k, j, i].
    assert node.GetImageData().GetScalarComponentAsDouble(3, 5, 2, 0) == array[2, 5, 3]

    back = ct_from_volume_node(node)
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.spacing, ct.spacing, atol=1e-9)
    np.testing.assert_allclose(back.origin, ct.origin, atol=1e-9)
    np.testing.assert_allclose(back.direction, ct.direction, atol=1e-6)
    assert back.array.dtype == np.float32


def test_ct_from_volume_node_rejects_what_is_not_a_ct(slicer_app):
    scene = slicer_app.scene
    with pytest.raises(InputError, match="no voxels"):
        ct_from_volume_node(scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty"))
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    ct = CTVolume(np.zeros((8, 8, 8), np.float32) - 1000, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), identity, "", "")
    moved = volume_node_from_ct(scene, ct, "moved")
    moved.SetAndObserveTransformNodeID(scene.AddNewNodeByClass("vtkMRMLLinearTransformNode").GetID())
    with pytest.raises(InputError, match="transform"):
        ct_from_volume_node(moved)
    with pytest.raises(InputError, match="label map"):
        ct_from_volume_node(scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels"))


# ------------------------------------------------------------------------------------------------
# The scene for a phantom


def test_phantom_scenario_has_no_problems(slicer_app):
    """The shared scenario (also the Slicer self-test) on a slicer-core scene."""
    result = run_phantom_scenario(slicer_app.scene, seed=3, direction=(-1, 0, 0, 0, 1, 0, 0, 0, -1))
    assert len(result.detection.nodules) >= 2
    assert result.problems == []


@pytest.mark.slow
def test_detector_output_goes_into_the_scene(slicer_app, untrained_checkpoint):
    """The scenario with the real detector (an untrained tiny model, so findings are arbitrary but real:
    centres, sizes and masks as the pipeline makes them), on the CT read back from the volume node."""
    from resmtnet.detect.pipeline import detect_ct

    def detect(ct):
        return detect_ct(ct, model=str(untrained_checkpoint), device="cpu", threshold=0.0, max_findings=3)

    result = run_phantom_scenario(slicer_app.scene, seed=1, detect=detect)
    assert len(result.detection.nodules) == 3
    assert result.problems == []


def test_fiducials_sit_at_the_ras_of_the_lps_centres(slicer_app, phantom, phantom_truth):
    volume = _scene_with_volume(slicer_app, phantom.ct)
    nodes = build_nodule_scene(slicer_app.scene, volume, phantom_truth)
    assert len(nodes["markups"]) == len(phantom.nodules) == 3
    for node, truth in zip(nodes["markups"], phantom.nodules, strict=True):
        x, y, z = truth.center_lps
        np.testing.assert_allclose(_ras(node), [-x, -y, z], atol=1e-6)
        # and that RAS lies on the nodule's own voxels of the volume node
        m = vtk.vtkMatrix4x4()
        volume.GetRASToIJKMatrix(m)
        i, j, k, _ = m.MultiplyPoint([*_ras(node), 1.0])
        label = phantom.labels[round(k), round(j), round(i)]
        assert label == phantom.nodules.index(truth) + 1
    assert check_nodule_scene(slicer_app.scene, volume, phantom_truth, nodes) == []


def test_points_and_segments_take_their_malignancy_colour_on_one_scale(slicer_app, phantom, phantom_truth):
    detection = _spread(phantom_truth, [0.03, 0.55, 0.97])
    volume = _scene_with_volume(slicer_app, phantom.ct)
    nodes = build_nodule_scene(slicer_app.scene, volume, detection)
    segmentation = nodes["segmentation"].GetSegmentation()
    colours = []
    for node, nodule in zip(nodes["markups"], detection.nodules, strict=True):
        expected = malignancy_color(nodule.malignancy)
        np.testing.assert_allclose(node.GetDisplayNode().GetSelectedColor(), expected, atol=1e-6)
        segment = segmentation.GetSegment(f"N{nodule.number}")
        np.testing.assert_allclose(segment.GetColor(), expected, atol=1e-6)
        colours.append(expected)
    # low is green, high is red, and they differ
    assert colours[0][1] > colours[0][0] and colours[2][0] > colours[2][1]
    assert len({tuple(np.round(c, 3)) for c in colours}) == 3
    assert check_nodule_scene(slicer_app.scene, volume, detection, nodes) == []


def test_colour_by_lung_rads_category_with_its_legend(slicer_app, phantom, phantom_truth):
    detection = _characterised(phantom_truth)
    volume = _scene_with_volume(slicer_app, phantom.ct)
    nodes = build_nodule_scene(slicer_app.scene, volume, detection, color_by="lung-rads")
    assert [n.lung_rads for n in detection.nodules] == ["1", "4A", "4X"]
    for node, nodule in zip(nodes["markups"], detection.nodules, strict=True):
        expected = lung_rads_color(nodule.lung_rads)
        np.testing.assert_allclose(node.GetDisplayNode().GetSelectedColor(), expected, atol=1e-6)
        segment = nodes["segmentation"].GetSegmentation().GetSegment(f"N{nodule.number}")
        np.testing.assert_allclose(segment.GetColor(), expected, atol=1e-6)
    legend = nodes["legend"]
    entries = legend_entries("lung-rads")
    assert legend.GetNumberOfColors() == len(entries) == 6  # 1, 2, 3, 4A, 4B, 4X
    assert [text.split(":")[0] for text, _ in entries] == ["1", "2", "3", "4A", "4B", "4X"]
    assert len({rgb for _, rgb in entries}) == 6
    for i, (text, rgb) in enumerate(entries):
        assert legend.GetColorName(i) == text
        rgba = [0.0] * 4
        legend.GetColor(i, rgba)
        np.testing.assert_allclose(rgba[:3], rgb, atol=1 / 255)  # the lookup table keeps 8 bits
    assert check_nodule_scene(slicer_app.scene, volume, detection, nodes, color_by="lung-rads") == []


def test_segment_volumes_agree_with_the_core_within_5_percent(slicer_app, phantom, phantom_truth):
    volume = _scene_with_volume(slicer_app, phantom.ct)
    nodes = build_nodule_scene(slicer_app.scene, volume, phantom_truth)
    segmentation_node = nodes["segmentation"]
    assert segmentation_node.GetSegmentation().ContainsRepresentation("Closed surface")
    for nodule in phantom_truth.nodules:
        assert nodule.volume_mm3 > 0
        volume_mm3 = segment_volume_mm3(segmentation_node, f"N{nodule.number}")
        assert volume_mm3 == pytest.approx(nodule.volume_mm3, rel=0.05)
        # the closed surface for the 3-D view is a closed shell around the nodule's centre
        polydata = vtk.vtkPolyData()
        segmentation_node.GetClosedSurfaceRepresentation(f"N{nodule.number}", polydata)
        assert polydata.GetNumberOfPoints() > 0
        edges = vtk.vtkFeatureEdges()
        edges.SetInputData(polydata)
        edges.BoundaryEdgesOn()
        edges.NonManifoldEdgesOn()
        edges.FeatureEdgesOff()
        edges.ManifoldEdgesOff()
        edges.Update()
        assert edges.GetOutput().GetNumberOfCells() == 0
        bounds = np.array(polydata.GetBounds()).reshape(3, 2)
        assert np.all(bounds[:, 0] <= np.array(nodule.center_ras) + 1.0)
        assert np.all(bounds[:, 1] >= np.array(nodule.center_ras) - 1.0)


def test_segments_sit_where_their_masks_are_on_the_ct(slicer_app, phantom, phantom_truth):
    """Each segment's voxels, placed in RAS by the segment's own geometry, have the centroid of its mask on
    the CT's grid (the label map goes in cropped to the nodules' box: an offset would show here)."""

    volume = _scene_with_volume(slicer_app, phantom.ct)
    nodes = build_nodule_scene(slicer_app.scene, volume, phantom_truth)
    segmentation = nodes["segmentation"].GetSegmentation()
    for nodule in phantom_truth.nodules:
        ras = segment_centre_ras(segmentation.GetSegment(f"N{nodule.number}"))
        lps = phantom.ct.index_to_world(np.argwhere(phantom_truth.labels == nodule.number).mean(axis=0)[::-1])
        assert np.allclose(ras, [-lps[0], -lps[1], lps[2]], atol=1e-3), (nodule.number, ras, lps)


def test_table_rows_match_the_nodules_with_typed_columns_and_units(slicer_app, phantom, phantom_truth):
    phantom_truth = _characterised(phantom_truth)
    volume = _scene_with_volume(slicer_app, phantom.ct)
    table_node = build_nodule_scene(slicer_app.scene, volume, phantom_truth)["table"]
    table = table_node.GetTable()
    kinds = {"int": "vtkIntArray", "double": "vtkDoubleArray", "string": "vtkStringArray"}
    for name, kind, unit, description in TABLE_COLUMNS:
        assert table.GetColumnByName(name).GetClassName() == kinds[kind]
        assert table_node.GetColumnUnitLabel(name) == unit
        assert table_node.GetColumnDescription(name) == description
    assert table_node.GetColumnUnitLabel("Diameter") == "mm"
    assert table_node.GetColumnUnitLabel("Volume") == "mm3"
    rows = read_table_rows(table_node)
    assert len(rows) == 3
    for row, nodule in zip(rows, phantom_truth.nodules, strict=True):
        # the label column names the finding as its fiducial and segment; values rounded as a reader reads them
        assert row[0] == f"N{nodule.number}"
        np.testing.assert_allclose(row[1:4], nodule.center_lps, atol=0.05 + 1e-9)  # LPS, as nodules.csv
        assert row[1:4] == [round(c, 1) for c in nodule.center_lps]
        assert row[4] == round(nodule.diameter_mm, 1)
        assert row[5] == round(nodule.volume_mm3)
        assert row[6] == round(nodule.probability, 2)
        assert row[7] == round(100 * nodule.malignancy)
        assert row[8:10] == [nodule.nodule_type, nodule.margin]
        assert row[11] == nodule.lung_rads
    assert [name for name, *_ in TABLE_COLUMNS] == ["Finding", "L", "P", "S", "Diameter", "Volume", "p",
                                                    "Malignancy", "Type", "Margin", "Solid component", "Lung-RADS",
                                                    "Brock", "Long axis", "Sphere diameter"]
    assert [row[10] for row in rows] == ["", "6.5", ""]  # the solid component of the part-solid nodule only
    assert [row[11] for row in rows] == ["1", "4A", "4X"]
    assert [row[12] for row in rows] == ["n/a", "8.3", "4.1"]  # calcified: not in PanCan
    # sizes measured on the mask; empty where no mask was measured
    assert [row[13:15] for row in rows] == [["19.2", "17.6"], ["12.9", "11.5"], ["", ""]]
    assert table_node.GetColumnUnitLabel("Brock") == "%" and table_node.GetColumnUnitLabel("Solid component") == "mm"
    assert "research use only" in table_node.GetDescription().lower()
    # which Brock inputs were given and which defaulted, where a reader of the table sees it
    assert table_node.GetDescription().endswith(
        "Brock inputs: age 63, sex F, family history no (default), emphysema no (default).")
    np.testing.assert_allclose(table_row_ras(table_node, 1), phantom_truth.nodules[1].center_ras, atol=0.05)


def test_outputs_sit_under_the_volumes_study(slicer_app, phantom, phantom_truth):
    import slicer

    scene = slicer_app.scene
    volume = volume_node_from_ct(scene, phantom.ct, "CT")
    study = put_volume_in_study(scene, volume, "Patient", "Study")
    nodes = build_nodule_scene(scene, volume, phantom_truth)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert sh.GetItemParent(sh.GetItemByDataNode(nodes["segmentation"])) == study
    assert sh.GetItemParent(sh.GetItemByDataNode(nodes["table"])) == study
    assert sh.GetItemParent(nodes["folder"]) == study
    for node in nodes["markups"]:
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == nodes["folder"]


def test_second_run_replaces_its_own_outputs_and_nothing_else(slicer_app, phantom, phantom_truth):
    import slicer

    scene = slicer_app.scene
    volume = _scene_with_volume(slicer_app, phantom.ct)
    other = volume_node_from_ct(scene, phantom.ct, "other CT")
    other_nodes = build_nodule_scene(scene, other, phantom_truth)
    users_markup = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "mine")

    build_nodule_scene(scene, volume, phantom_truth)
    fewer = dataclasses.replace(phantom_truth, nodules=phantom_truth.nodules[:2])
    nodes = build_nodule_scene(scene, volume, fewer, color_by="lung-rads")

    assert check_nodule_scene(scene, volume, fewer, nodes, color_by="lung-rads") == []
    assert len(find_outputs(scene, volume)) == 2 + 3
    # every fiducial node in the scene is either the user's, the other volume's, or this run's
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode") == 1 + 3 + 2
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialDisplayNode") == 1 + 3 + 2
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 2
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 2
    assert scene.IsNodePresent(users_markup)
    assert check_nodule_scene(scene, other, phantom_truth, other_nodes) == []
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    ids = vtk.vtkIdList()
    sh.GetItemChildren(sh.GetSceneItemID(), ids, True)
    orphans = [ids.GetId(i) for i in range(ids.GetNumberOfIds())
               if sh.GetItemLevel(ids.GetId(i)) == "" and sh.GetItemDataNode(ids.GetId(i)) is None]
    assert orphans == []


def test_chosen_output_nodes_are_filled_instead_of_new_ones(slicer_app, phantom, phantom_truth):
    scene = slicer_app.scene
    volume = _scene_with_volume(slicer_app, phantom.ct)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my nodules")
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "my table")
    for _ in range(2):
        nodes = build_nodule_scene(scene, volume, phantom_truth,
                                   output_nodes={"segmentation": segmentation, "table": table})
        assert nodes["segmentation"] is segmentation and nodes["table"] is table
        assert check_nodule_scene(scene, volume, phantom_truth, nodes) == []
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1


def test_another_volumes_outputs_and_the_users_own_nodes_are_never_overwritten(slicer_app, phantom, phantom_truth):
    scene = slicer_app.scene
    volume_a = _scene_with_volume(slicer_app, phantom.ct)
    volume_b = _scene_with_volume(slicer_app, phantom.ct)
    nodes_a = build_nodule_scene(scene, volume_a, phantom_truth)
    users = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my work")
    users.GetSegmentation().AddEmptySegment("mine", "mine", [0.0, 0.0, 1.0])
    for picked in ({"segmentation": nodes_a["segmentation"]}, {"table": nodes_a["table"]},
                   {"segmentation": users}):
        with pytest.raises(ValueError, match="not overwritten"):
            build_nodule_scene(scene, volume_b, phantom_truth, output_nodes=picked)
    assert check_nodule_scene(scene, volume_a, phantom_truth, nodes_a) == []
    assert users.GetSegmentation().GetNumberOfSegments() == 1 and users.GetAttribute(ROLE_ATTRIBUTE) is None
    nodes_b = build_nodule_scene(scene, volume_b, phantom_truth)
    assert nodes_b["segmentation"] is not nodes_a["segmentation"]
    assert check_nodule_scene(scene, volume_a, phantom_truth, nodes_a) == []
    assert check_nodule_scene(scene, volume_b, phantom_truth, nodes_b) == []


def test_the_self_tests_found_check_fails_on_a_missed_or_miscoloured_nodule(slicer_app, phantom, phantom_truth):
    volume = _scene_with_volume(slicer_app, phantom.ct)
    nodes = build_nodule_scene(slicer_app.scene, volume, phantom_truth)
    assert check_phantom_found(phantom, phantom_truth, nodes) == []
    assert len([n for n in phantom.nodules if n.diameter_mm >= 4.0]) >= 2  # the check checks something

    first = phantom_truth.nodules[0]
    moved = dataclasses.replace(first, center_lps=tuple(np.asarray(first.center_lps) + [0.0, 0.0, 2.5]))
    off = dataclasses.replace(phantom_truth, nodules=[moved] + phantom_truth.nodules[1:])
    problems = check_phantom_found(phantom, off, build_nodule_scene(slicer_app.scene, volume, off))
    assert len(problems) == 1 and problems[0].startswith("phantom nodule 1") and "not found" in problems[0]

    nodes = build_nodule_scene(slicer_app.scene, volume, phantom_truth)
    flipped = dataclasses.replace(first, malignancy=0.0 if first.malignancy > 0.5 else 1.0)
    recoloured = dataclasses.replace(phantom_truth, nodules=[flipped] + phantom_truth.nodules[1:])
    problems = check_phantom_found(phantom, recoloured, nodes)
    assert len(problems) == 1 and "colour" in problems[0]

    without = dataclasses.replace(phantom_truth, nodules=[])
    assert len(check_phantom_found(phantom, without, build_nodule_scene(slicer_app.scene, volume, without))) \
        == len([n for n in phantom.nodules if n.diameter_mm >= 4.0])


def test_a_detection_with_no_nodules_gives_empty_outputs(slicer_app, phantom, phantom_truth):
    volume = _scene_with_volume(slicer_app, phantom.ct)
    build_nodule_scene(slicer_app.scene, volume, phantom_truth)
    empty = dataclasses.replace(phantom_truth, nodules=[], labels=np.zeros_like(phantom_truth.labels))
    nodes = build_nodule_scene(slicer_app.scene, volume, empty)
    assert nodes["markups"] == []
    assert nodes["table"].GetTable().GetNumberOfRows() == 0
    assert check_nodule_scene(slicer_app.scene, volume, empty, nodes) == []


def test_labels_on_another_grid_are_refused(slicer_app, phantom, phantom_truth):
    volume = _scene_with_volume(slicer_app, phantom.ct)
    wrong = dataclasses.replace(phantom_truth, labels=phantom_truth.labels[1:])
    with pytest.raises(ValueError, match="labels shape"):
        build_nodule_scene(slicer_app.scene, volume, wrong)


# ------------------------------------------------------------------------------------------------
# Files: nodules.mrk.json, nodules.seg.nrrd, scene.mrb


def test_scene_mrb_reloads_with_the_same_nodes_positions_colours_and_rows(tmp_path, phantom, phantom_truth):
    detection = _spread(_characterised(phantom_truth), [0.03, 0.55, 0.97])
    paths = slicer_outputs.write_scene_files(phantom.ct, detection, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nodules.mrk.json", "nodules.seg.nrrd", "scene.mrb"]

    fresh = create_slicer_core_app()
    assert fresh.scene.ReadFromMRB(str(paths["scene"]))
    volumes = [n for n in (fresh.scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
                           for i in range(fresh.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")))
               if not n.IsA("vtkMRMLLabelMapVolumeNode")]
    assert len(volumes) == 1
    volume = volumes[0]
    reloaded_ct = ct_from_volume_node(volume)
    np.testing.assert_allclose(reloaded_ct.array, phantom.ct.array, atol=0.5)
    np.testing.assert_allclose(reloaded_ct.origin, phantom.ct.origin, atol=1e-4)
    np.testing.assert_allclose(reloaded_ct.direction, phantom.ct.direction, atol=1e-6)

    nodes = find_nodule_outputs(fresh.scene, volume)
    assert [n.GetAttribute("ResMTNet.NoduleNumber") for n in nodes["markups"]] == ["1", "2", "3"]
    # the shared checks: positions, colours, segment volumes, table rows, hierarchy, one set
    assert check_nodule_scene(fresh.scene, volume, detection, nodes) == []
    for got, expected in zip(read_table_rows(nodes["table"]), table_rows(detection.nodules), strict=True):
        assert got[0] == expected[0]
        assert got[1:8] == pytest.approx(expected[1:8], rel=1e-5)  # the .tsv keeps 6 significant digits
        assert got[8:] == expected[8:]
    assert nodes["table"].GetColumnUnitLabel("Volume") == "mm3"  # the schema came back too
    assert "Brock inputs: age 63" in nodes["table"].GetDescription()
    # the characterisation in the segments' tags and names (check_nodule_scene compared every tag)
    segmentation = nodes["segmentation"].GetSegmentation()
    names = [segmentation.GetSegment(f"N{n.number}").GetName() for n in detection.nodules]
    assert names[0].startswith("N1 · 18.0 mm calcified · LR 1 ·") and "LR 4X" in names[2], names
    tag = vtk.mutable("")
    assert segmentation.GetSegment("N2").GetTag("ResMTNet.SolidComponentMm", tag) and str(tag) == "6.5"
    assert segmentation.GetSegment("N3").GetTag("ResMTNet.LungRADSRule", tag) and "spiculated" in str(tag)
    # a value that does not apply is no tag at all (an empty tag value crashes slicer-core when it writes the file)
    assert not segmentation.GetSegment("N1").GetTag("ResMTNet.BrockMalignancy", tag)
    assert not segmentation.GetSegment("N1").GetTag("ResMTNet.SolidComponentMm", tag)
    assert segmentation.GetSegment("N1").GetTag("ResMTNet.LongAxisMm", tag) and str(tag) == "19.2"
    assert segmentation.GetSegment("N2").GetTag("ResMTNet.SphereDiameterMm", tag) and str(tag) == "11.5"
    assert not segmentation.GetSegment("N3").GetTag("ResMTNet.LongAxisMm", tag)
    # the slice views show the CT when the bundle is opened
    for name in ("Red", "Yellow", "Green"):
        composite = fresh.scene.GetSingletonNode(name, "vtkMRMLSliceCompositeNode")
        assert composite.GetBackgroundVolumeID() == volume.GetID()


def test_markups_json_loads_as_one_coloured_node_per_nodule(tmp_path, phantom, phantom_truth):
    paths = slicer_outputs.write_scene_files(phantom.ct, phantom_truth, tmp_path)
    document = json.loads(paths["markups"].read_text())
    assert len(document["markups"]) == 3
    assert {m["coordinateSystem"] for m in document["markups"]} == {"LPS"}
    for entry, nodule in zip(document["markups"], phantom_truth.nodules, strict=True):
        np.testing.assert_allclose(entry["controlPoints"][0]["position"], nodule.center_lps, atol=1e-3)

    fresh = create_slicer_core_app()
    assert fresh.logic("Markups").LoadMarkups(str(paths["markups"]))
    loaded = [fresh.scene.GetNthNodeByClass(i, "vtkMRMLMarkupsFiducialNode")
              for i in range(fresh.scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode"))]
    assert len(loaded) == 3
    for node, nodule in zip(loaded, phantom_truth.nodules, strict=True):
        np.testing.assert_allclose(_ras(node), nodule.center_ras, atol=1e-3)
        assert node.GetNthControlPointLabel(0) == nodule.label
        np.testing.assert_allclose(node.GetDisplayNode().GetSelectedColor(),
                                   malignancy_color(nodule.malignancy), atol=1e-3)


def test_segmentation_file_loads_with_named_segments_and_volumes(tmp_path, phantom, phantom_truth):
    import slicer

    paths = slicer_outputs.write_scene_files(phantom.ct, phantom_truth, tmp_path)
    fresh = create_slicer_core_app()
    node = fresh.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(paths["segmentation"]))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 3
    for nodule in phantom_truth.nodules:
        segment = segmentation.GetSegment(f"N{nodule.number}")
        assert segment.GetName() == nodule.label
        np.testing.assert_allclose(segment.GetColor(), malignancy_color(nodule.malignancy), atol=1e-3)
        assert segment_volume_mm3(node, f"N{nodule.number}") == pytest.approx(nodule.volume_mm3, rel=0.05)


def test_failed_write_leaves_earlier_files_untouched_and_no_partial_ones(tmp_path, phantom, phantom_truth,
                                                                         monkeypatch):
    paths = slicer_outputs.write_scene_files(phantom.ct, phantom_truth, tmp_path)
    before = {p.name: p.read_bytes() for p in paths.values()}

    def disk_full(node, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(slicer_outputs, "write_segmentation", disk_full)
    fewer = dataclasses.replace(phantom_truth, nodules=phantom_truth.nodules[:1])
    with pytest.raises(OSError, match="No space"):
        slicer_outputs.write_scene_files(phantom.ct, fewer, tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(before)  # no temporary folder left behind
    assert {p.name: p.read_bytes() for p in paths.values()} == before


def test_writing_an_empty_detection_gives_loadable_files(tmp_path, phantom, phantom_truth):
    empty = dataclasses.replace(phantom_truth, nodules=[], labels=np.zeros_like(phantom_truth.labels))
    paths = slicer_outputs.write_scene_files(phantom.ct, empty, tmp_path)
    assert json.loads(paths["markups"].read_text())["markups"] == []
    fresh = create_slicer_core_app()
    assert fresh.scene.ReadFromMRB(str(paths["scene"]))
    assert fresh.scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode") == 0
    assert fresh.scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1


# ------------------------------------------------------------------------------------------------
# The real CT


def test_real_ct_through_the_scene_and_the_bundle(lidc_dir, tmp_path):
    """LIDC-IDRI-0001: its annotated nodule, as a one-nodule detection, through a volume node, the
    scene and a .mrb; the geometry must hold all the way (DICOM → RAS node → nrrd in the bundle)."""
    import csv

    from resmtnet.detect.nodules import Nodule
    from resmtnet.io.ctio import read_ct

    ct = read_ct(lidc_dir / "dicom")
    with open(lidc_dir / "annotations.csv") as f:
        row = next(csv.DictReader(f))
    centre = np.array([float(row[k]) for k in ("coordX", "coordY", "coordZ")])
    diameter = float(row["diameter_mm"])

    app = create_slicer_core_app()
    volume = volume_node_from_ct(app.scene, ct, "LIDC-IDRI-0001")
    m = vtk.vtkMatrix4x4()
    volume.GetRASToIJKMatrix(m)
    i, j, k = (round(v) for v in m.MultiplyPoint([-centre[0], -centre[1], centre[2], 1.0])[:3])
    assert volume.GetImageData().GetScalarComponentAsDouble(i, j, k, 0) > -300  # nodule density

    zz, yy, xx = np.indices(ct.array.shape, sparse=True)
    index = ct.world_to_index(centre)
    spacing = ct.spacing
    inside = (((xx - index[0]) * spacing[0]) ** 2 + ((yy - index[1]) * spacing[1]) ** 2
              + ((zz - index[2]) * spacing[2]) ** 2) <= (diameter / 2) ** 2
    mask = inside & (ct.array > -500)
    nodule = Nodule(1, tuple(centre), 0.9, diameter, 0.8, float(mask.sum() * np.prod(spacing)))
    detection = Detection(ct.seriesuid, [nodule], mask.astype(np.uint16), ct.spacing, ct.origin, ct.direction)
    nodes = build_nodule_scene(app.scene, volume, detection)
    assert check_nodule_scene(app.scene, volume, detection, nodes) == []

    paths = slicer_outputs.write_scene_files(ct, detection, tmp_path)
    fresh = create_slicer_core_app()
    assert fresh.scene.ReadFromMRB(str(paths["scene"]))
    reloaded = fresh.scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
    back = ct_from_volume_node(reloaded)
    np.testing.assert_array_equal(back.array, ct.array)
    np.testing.assert_allclose(back.origin, ct.origin, atol=1e-4)
    assert check_nodule_scene(fresh.scene, reloaded, detection, find_nodule_outputs(fresh.scene, reloaded)) == []


def test_scene_bundle_opens_as_a_reader_wants_it(tmp_path, phantom, phantom_truth):
    """scene.mrb through Slicer's own OpenSlicerDataBundle into a fresh scene: names, labels, terminology, the
    legend and the first view on N1, the research-use note, and no finding left as the active place node."""
    import slicer
    from resmtnet.scene.slicer_scene import (
        LUNG_WINDOW_LEVEL,
        MARKER_GLYPH,
        RESEARCH_NOTE,
        WEAK_OPACITY,
        first_view,
        legend_title,
        segment_terminology,
    )

    detection = _spread(phantom_truth, [0.03, 0.55, 0.97])
    detection.nodules[2].probability = 0.3  # under the confidence line
    ct = dataclasses.replace(phantom.ct, identity={"patient_id": "PID-42", "series_number": "7",
                                                   "series_description": "Chest 1 mm", "file_name": "ct.nrrd"})
    paths = slicer_outputs.write_scene_files(ct, detection, tmp_path / "out")

    fresh = create_slicer_core_app()
    unpack = tmp_path / "unpack"
    unpack.mkdir()
    assert fresh.app_logic.OpenSlicerDataBundle(str(paths["scene"]), str(unpack))
    scene = fresh.scene
    volume = scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
    assert volume.GetName() == "Series 7 Chest 1 mm"
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = sh.GetItemParent(sh.GetItemByDataNode(volume))
    assert sh.GetItemName(sh.GetItemParent(study)) == "PID-42"
    display = volume.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == LUNG_WINDOW_LEVEL

    nodes = find_nodule_outputs(scene, volume)
    for node, nodule in zip(nodes["markups"], detection.nodules, strict=True):
        assert node.GetNthControlPointLabel(0) == nodule.label
        assert nodule.label.startswith(f"N{nodule.number} · {nodule.diameter_mm:.1f} mm {nodule.nodule_type} · "
                                       f"LR {nodule.lung_rads} · p {nodule.probability:.2f} ·")
        glyph = node.GetDisplayNode()
        assert glyph.GetGlyphTypeAsString(glyph.GetGlyphType()) == MARKER_GLYPH
        assert glyph.GetOpacity() == (WEAK_OPACITY if nodule.probability < 0.5 else 1.0)
        assert RESEARCH_NOTE in node.GetNthControlPointDescription(0)
    segmentation = nodes["segmentation"]
    for nodule in detection.nodules:
        segment = segmentation.GetSegmentation().GetSegment(f"N{nodule.number}")
        assert segment.GetTerminology() == segment_terminology(nodule)
        assert "SCT^27925004^Nodule" in segment.GetTerminology() and "SCT^39607008^Lung" in segment.GetTerminology()
        assert segmentation.GetDisplayNode().GetSegmentOpacity2DFill(f"N{nodule.number}") < 0.5  # a light fill
    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(segmentation.GetDisplayNode())
    assert legend is not None and legend.GetVisibility2D() and legend.GetVisibility3D()
    assert legend.GetTitleText() == legend_title("malignancy") and "research use only" in legend.GetTitleText()
    assert legend.GetPrimaryDisplayNode().GetColorNodeID() == nodes["legend"].GetID()
    assert not nodes["legend"].GetHideFromEditors()
    assert RESEARCH_NOTE == nodes["table"].GetDescription()

    center, fov = first_view(detection.nodules)
    for name in ("Red", "Yellow", "Green"):
        slice_node = scene.GetSingletonNode(name, "vtkMRMLSliceNode")
        slice_to_ras = slice_node.GetSliceToRAS()
        np.testing.assert_allclose([slice_to_ras.GetElement(i, 3) for i in range(3)], center, atol=1e-3)
        assert slice_node.GetFieldOfView()[0] == pytest.approx(fov)
    selection = scene.GetFirstNodeByClass("vtkMRMLSelectionNode")
    assert selection is None or selection.GetActivePlaceNodeID() not in {n.GetID() for n in nodes["markups"]}

    document = json.loads(paths["markups"].read_text())
    assert [m["name"] for m in document["markups"]] == [n.GetName() for n in nodes["markups"]]
    loader = create_slicer_core_app()
    assert loader.logic("Markups").LoadMarkups(str(paths["markups"]))
    names = [loader.scene.GetNthNodeByClass(i, "vtkMRMLMarkupsFiducialNode").GetName()
             for i in range(loader.scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode"))]
    assert names == [n.GetName() for n in nodes["markups"]]
