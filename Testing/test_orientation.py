"""The same findings however a scan is stored: a CT and the same CT written with its axes reversed or permuted
(the same world geometry, SimpleITK's Flip and PermuteAxes) give the same nodules, and the label map lands on
each one's own grid over the nodule."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import SimpleITK as sitk
from conftest_slicer import *  # noqa: F403  (the fixtures slicer_app, phantom)
from conftest_slicer import segment_centre_ras
from resmtnet.detect.nodules import Detection
from resmtnet.detect.pipeline import detect_ct
from resmtnet.io.ctio import CTVolume
from resmtnet.io.orientation import canonical_ct, canonical_order

#: Ways of storing the same scan: x and z reversed, and the axes permuted (x, y, z → z, x, y)
STORAGE = {"x and z reversed": lambda img: sitk.Flip(img, [True, False, True]),
           "axes permuted": lambda img: sitk.PermuteAxes(img, [2, 0, 1])}


def _stored(ct: CTVolume, how: str) -> CTVolume:
    img = STORAGE[how](ct.to_sitk())
    return CTVolume.from_sitk(img, seriesuid=ct.seriesuid, source=f"{ct.source} ({how})",
                              int16=ct.array.dtype == np.int16)


def _geometry_matches(a: CTVolume, b: CTVolume) -> bool:
    return (np.allclose(a.spacing, b.spacing) and np.allclose(a.origin, b.origin, atol=1e-6)
            and np.allclose(a.direction, b.direction, atol=1e-9))


@pytest.mark.parametrize("oblique_deg", [0.0, 7.0])
def test_every_storage_order_comes_back_to_one_canonical_volume(oblique_deg):
    """All 48 orders of reversal and permutation of a scan, square to LPS or turned 7° (an oblique scan keeps
    its rotation), give the same canonical voxels and geometry: a view, nothing interpolated."""
    a = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)
    t = np.radians(oblique_deg)
    turned = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
    original = CTVolume(a, (0.7, 0.8, 2.5), (10.0, -20.0, 30.0), tuple(turned.ravel()), "uid", "mem")
    reference, order = canonical_ct(original)
    assert order.is_identity and reference is original
    img = original.to_sitk()
    for axes in itertools.permutations(range(3)):
        for reversed_axes in itertools.product((False, True), repeat=3):
            stored = CTVolume.from_sitk(sitk.Flip(sitk.PermuteAxes(img, list(axes)), list(reversed_axes)))
            canonical, order = canonical_ct(stored)
            assert np.array_equal(canonical.array, a), (axes, reversed_axes)
            assert np.shares_memory(canonical.array, stored.array)
            assert _geometry_matches(canonical, original), (axes, reversed_axes, canonical)
            # a voxel written through the canonical view lands on the stored grid at the same world position
            labels = np.zeros(stored.array.shape, np.uint8)
            order.view(labels)[1, 2, 3] = 7
            where = stored.world_to_index(canonical.index_to_world(np.array([3.0, 2.0, 1.0])))
            assert labels[tuple(np.round(where[::-1]).astype(int))] == 7
            assert labels.sum() == 7


def test_the_nearest_order_of_a_turned_scan_is_its_own():
    """A scan turned by less than 45° about an axis keeps its voxel order; past 45° the axes swap."""
    for deg, swapped in ((30.0, False), (60.0, True)):
        t = np.radians(deg)
        d = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
        assert (canonical_order(tuple(d.ravel())).source == (1, 0, 2)) is swapped


def _same_findings(a: Detection, b: Detection, *, mm: float = 0.5, probability: float = 0.02) -> None:
    assert len(a.nodules) == len(b.nodules), ([n.to_dict() for n in a.nodules], [n.to_dict() for n in b.nodules])
    for n in a.nodules:
        d = [np.linalg.norm(np.subtract(n.center_lps, m.center_lps)) for m in b.nodules]
        m = b.nodules[int(np.argmin(d))]
        assert min(d) <= mm and abs(n.probability - m.probability) <= probability, (n.to_dict(), m.to_dict())
        assert abs(n.diameter_mm - m.diameter_mm) <= 0.05 * n.diameter_mm, (n.to_dict(), m.to_dict())


def _labels_over_their_nodules(ct: CTVolume, det: Detection) -> None:
    """The label map is on ``ct``'s own grid, each nodule's voxels around its centre (in ct's geometry)."""
    assert det.labels.shape == ct.array.shape and _geometry_matches(ct, CTVolume(
        det.labels, det.spacing, det.origin, det.direction, "", ""))
    for n in det.nodules:
        idx = np.argwhere(det.labels == n.number)
        assert len(idx), n.to_dict()
        centroid = ct.index_to_world(idx.mean(axis=0)[::-1])
        assert np.linalg.norm(centroid - np.asarray(n.center_lps)) < max(n.diameter_mm / 2, 2.0), n.to_dict()


@pytest.fixture(scope="module")
def finely_sliced_phantom(phantom):
    """The small phantom with 0.75 mm slices (each slice twice, less the last): the lung mask then averages
    blocks of three slices, which a reversed z axis counts from the other end (185 slices: not a multiple of
    three)."""
    ct = phantom.ct
    return dataclasses.replace(ct, array=np.repeat(ct.array, 2, axis=0)[:-1],
                               spacing=(*ct.spacing[:2], ct.spacing[2] / 2))


@pytest.fixture(scope="module")
def finely_sliced_detections(finely_sliced_phantom, shipped_model) -> dict[str, tuple[CTVolume, Detection]]:
    """The finely sliced phantom as stored and each way of ``STORAGE``: ``{how: (ct, detection)}``, every finding
    down to p 0.1 without test-time augmentation; made once for this module and only read."""
    cts = {"as stored": finely_sliced_phantom} | {how: _stored(finely_sliced_phantom, how) for how in STORAGE}
    return {how: (ct, detect_ct(ct, model=shipped_model, device="cpu", threshold=0.1, tta=False))
            for how, ct in cts.items()}


@pytest.mark.slow
def test_a_phantom_stored_three_ways_gives_the_same_findings(finely_sliced_detections):
    """The phantom (stored with x and y swapped and z reversed), the same with x and z reversed, and with its
    axes permuted: the same model grid, the same findings (every one down to p 0.1, without test-time
    augmentation), each label map on its own grid over its nodules."""
    ct, first = finely_sliced_detections["as stored"]
    assert ct.array.shape[0] % 3
    assert len(first.nodules) >= 3
    _labels_over_their_nodules(ct, first)
    for how in STORAGE:
        stored, det = finely_sliced_detections[how]
        assert np.allclose(det.info["model_grid"]["origin"], first.info["model_grid"]["origin"], atol=1e-4), how
        assert det.info["model_grid"]["shape_zyx"] == first.info["model_grid"]["shape_zyx"], how
        _same_findings(first, det)
        _labels_over_their_nodules(stored, det)


@pytest.mark.slow
def test_segments_of_a_permuted_scan_sit_over_their_nodules_in_slicer(slicer_app, finely_sliced_detections):
    """Detection on the permuted phantom, its label map put into a scene with the volume as stored: each
    segment's voxels, placed in RAS by the segment's own geometry, centre on its nodule."""
    from resmtnet.scene.slicer_scene import build_nodule_scene, volume_node_from_ct

    ct, det = finely_sliced_detections["axes permuted"]
    assert det.nodules
    volume = volume_node_from_ct(slicer_app.scene, ct, "CT")
    segmentation = build_nodule_scene(slicer_app.scene, volume, det)["segmentation"].GetSegmentation()
    for nodule in det.nodules:
        ras = segment_centre_ras(segmentation.GetSegment(f"N{nodule.number}"))
        lps = np.array([-ras[0], -ras[1], ras[2]])
        assert np.linalg.norm(lps - np.asarray(nodule.center_lps)) < max(nodule.diameter_mm / 2, 2.0), nodule


def test_real_ct_stored_three_ways_gives_the_same_findings(lidc_detection, shipped_model):
    """LIDC-IDRI-0001 as read, with x and z reversed, and with its axes permuted (issue 30): the same findings,
    centres within 0.5 mm and probabilities within 0.02. One pass of the network (no test-time augmentation):
    the storage order is undone before the passes, so what this checks (lung mask, crop and model grid the same
    however the scan is stored) does not depend on how many passes follow; eight would take eight times as long."""
    ct, _ = lidc_detection
    first = detect_ct(ct, model=shipped_model, device="cpu", tta=False)
    assert first.nodules
    _labels_over_their_nodules(ct, first)
    for how in STORAGE:
        stored = _stored(ct, how)
        det = detect_ct(stored, model=shipped_model, device="cpu", tta=False)
        _same_findings(first, det)
        _labels_over_their_nodules(stored, det)
