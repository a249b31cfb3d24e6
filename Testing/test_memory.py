"""The memory bound of detection: a CT read compactly, the input grid worked through box by box with the
same results as whole-volume processing, and a CT too large for the bound refused from its header.

The memory itself is measured by `resmtnet bench --resize ... --outputs` (docs/benchmarks.md), not here.
"""

from __future__ import annotations

import dataclasses
import gc
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from resmtnet.data.phantom import generate_phantom
from resmtnet.detect import lungmask
from resmtnet.detect.lungmask import LungMask, lung_mask
from resmtnet.io.ctio import read_ct, write_volume
from resmtnet.io.memory import check_fits, max_voxels, read_ct_for_detection
from resmtnet.model import prepare
from resmtnet.report.overview import _axial_plane
from resmtnet.util.errors import InputError


@pytest.fixture(scope="module")
def tilted_phantom():
    """A small phantom whose grid is rotated 20 degrees about z and flipped along it (no axis of the model
    grid lines up with the CT's)."""
    ph = generate_phantom(3, small=True, max_nodules=2)
    a = np.radians(20.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, -1]])
    return dataclasses.replace(ph.ct, direction=tuple(float(v) for v in rot.ravel()))


def _header(path, sizes, kind):
    """A detached NRRD header naming an empty data file: its voxels cannot be read at all."""
    (path.parent / "voxels.raw").write_bytes(b"")
    path.write_text(f"NRRD0004\ntype: {kind}\ndimension: 3\nspace: left-posterior-superior\n"
                    f"sizes: {' '.join(map(str, sizes))}\nspace directions: (0.3,0,0) (0,0.3,0) (0,0,0.5)\n"
                    "kinds: domain domain domain\nendian: little\nencoding: raw\nspace origin: (0,0,0)\n"
                    "data file: voxels.raw\n")
    return path


def test_whole_hu_are_read_as_int16_with_the_same_values(tmp_path):
    ct = generate_phantom(5, small=True, max_nodules=1).ct
    stored = {"int16": ct.array.astype(np.int16), "float32": ct.array.astype(np.int16).astype(np.float32),
              "fractional": ct.array.astype(np.int16) + np.float32(0.5)}
    for name, array in stored.items():
        path = tmp_path / f"{name}.nrrd"
        write_volume(dataclasses.replace(ct, array=array), path, integer=name == "int16")
        compact = read_ct(path, int16=True)
        gc.collect()  # the reader's image is gone: the array must hold its voxels on its own
        assert compact.array.dtype == (np.float32 if name == "fractional" else np.int16), name
        np.testing.assert_array_equal(compact.array, read_ct(path).array)
        compact.array[0, 0, 0] = 7  # detection never writes into it, but it is an ordinary array
        assert compact.array[0, 0, 0] == 7


@pytest.mark.slow
def test_lung_mask_box_by_box_equals_the_whole_mask(tilted_phantom, monkeypatch):
    ct = tilted_phantom
    # finer voxels (0.93 x 0.93 x 0.83 mm), so that the lungs are found on blocks of 2 x 2 x 2 voxels
    array = np.repeat(np.repeat(ct.array.astype(np.int16), 3, axis=0), 2, axis=1).repeat(2, axis=2)
    spacing = (ct.spacing[0] / 2, ct.spacing[1] / 2, ct.spacing[2] / 3)
    first = LungMask(array, spacing, direction=ct.direction)
    assert first.chest.factors_zyx == (2, 2, 2)
    # scanner padding in the first column of the lungs' first block: the lungs' box starts a column later
    x0 = 2 * int(np.flatnonzero(first.chest.lungs.any(axis=(0, 1)))[0])
    column = array[:, :, x0]
    column[first.mask()[:, :, x0]] = -3024
    whole = lung_mask(array, spacing, direction=ct.direction)
    monkeypatch.setattr(lungmask, "SLAB_PLANES", 5)  # many slabs, block averages included
    by_box = LungMask(array, spacing, direction=ct.direction)
    np.testing.assert_array_equal(by_box.mask(), whole)
    box = (slice(15, 51), slice(41, 121), slice(7, 80))
    np.testing.assert_array_equal(by_box.mask(box), whole[box])
    assert by_box.voxel_count() == int(whole.sum()) > 0
    lo, hi = by_box.index_bounds()
    idx = np.argwhere(whole)
    np.testing.assert_array_equal(lo, idx.min(0))
    np.testing.assert_array_equal(hi, idx.max(0))
    assert lo[2] == x0 + 1


def test_model_grid_slab_by_slab_equals_one_resampling_of_the_whole_ct(tilted_phantom, monkeypatch):
    ct = dataclasses.replace(tilted_phantom, array=tilted_phantom.array.astype(np.int16))
    ct.array[:, :4] = -3024  # scanner padding, set to air before interpolating
    lo, hi = prepare.world_bounds(ct)
    bounds = (lo + 20.0, hi - 15.0)
    monkeypatch.setattr(prepare, "RESAMPLE_SLAB_PLANES", 3)
    grid_hu, grid = prepare.to_model_grid(ct, 1.5, bounds)
    mask = lung_mask(ct.array, ct.spacing, direction=ct.direction)
    grid_mask, _ = prepare.to_model_grid(ct, 1.5, bounds, image=lambda box: mask[box].astype(np.float32))

    def whole(array, default):
        src = sitk.GetImageFromArray(array.astype(np.float32))
        src.SetSpacing(ct.spacing)
        src.SetOrigin(ct.origin)
        src.SetDirection(ct.direction)
        ref = sitk.Image([int(n) for n in grid.shape[::-1]], sitk.sitkFloat32)
        ref.SetSpacing((1.5,) * 3)
        ref.SetOrigin(tuple(float(v) for v in grid.origin))
        return sitk.GetArrayFromImage(sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, default))

    assert grid_hu.dtype == np.float32 and grid.shape[0] > 3 * 3
    np.testing.assert_allclose(grid_hu, whole(np.maximum(ct.array, -1000), -1000.0), atol=1e-3)
    np.testing.assert_allclose(grid_mask, whole(mask, 0.0), atol=1e-6)


def test_overview_panel_from_the_part_it_reads_equals_one_from_the_whole_ct(tilted_phantom):
    ct = tilted_phantom
    img = sitk.GetImageFromArray(ct.array)
    img.SetSpacing(ct.spacing)
    img.SetOrigin(ct.origin)
    img.SetDirection(ct.direction)
    centre = ct.index_to_world(np.array(ct.shape_xyz) / 2.0)
    ref = sitk.Image([81, 81, 1], sitk.sitkFloat32)
    ref.SetSpacing((0.5, 0.5, 1.0))
    ref.SetOrigin((centre[0] - 20.0, centre[1] - 20.0, centre[2]))
    expected = sitk.GetArrayFromImage(sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, -1000.0))[0]
    np.testing.assert_allclose(_axial_plane(ct, ct.array, centre, 20.0, nearest=False), expected, atol=1e-3)


@pytest.mark.slow
def test_a_ct_too_large_for_the_bound_is_refused_from_its_header(tmp_path):
    huge = _header(tmp_path / "huge.nhdr", (2048, 2048, 300), "short")
    with pytest.raises(InputError, match=r"too large .* 2048 x 2048 x 300 voxels \(1\.26 x 10\^9, stored as "
                                         r"integers\).* at most 1\.00 x 10\^9"):
        read_ct_for_detection(huge)
    # floating-point voxels need twice the memory while they become int16: half as many are taken
    check_fits(_header(tmp_path / "ints.nhdr", (1024, 1024, 600), "short"))
    with pytest.raises(InputError, match=r"stored as float32\).* at most 0\.50 x 10\^9"):
        check_fits(_header(tmp_path / "floats.nhdr", (1024, 1024, 600), "float"))
    assert max_voxels("integer") >= 1024 * 1024 * 800

    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "resmtnet.cli.cli", "detect", str(huge), "-o", str(out), "--quiet",
                          "--no-slicer-files"], capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert res.returncode == 2
    assert "too large to detect within 4 GB" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()
