"""The full-resolution passes in torch (the lung mask's block averages, the resampling to the model grid), as
detection runs them on a GPU: here the same torch code on a CPU device, against the numpy/SimpleITK path the
CPU runs by default; on a machine with CUDA, on the GPU too."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from resmtnet.data.phantom import generate_phantom
from resmtnet.detect.lungmask import LungMask, _block_average, block_average_torch, segment_chest
from resmtnet.model.prepare import index_bounds_to_world, to_model_grid
from resmtnet.util.runtime import full_resolution_device

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "LIDC-IDRI-0001"
needs_real = pytest.mark.skipif(not (REAL / "dicom").is_dir(), reason=f"real CT not found at {REAL}")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def phantom():
    """A small phantom, its voxels rounded to whole HU and stored as int16 as detection reads scans."""
    ct = generate_phantom(11, small=True).ct
    return dataclasses.replace(ct, array=np.round(ct.array).astype(np.int16))


def _same_block_averages(a: np.ndarray, factors, device) -> None:
    ref = _block_average(a, factors)
    got = block_average_torch(a, factors, device)
    for r, g in zip(ref, got, strict=True):
        assert r.dtype == g.dtype and r.shape == g.shape
        assert np.array_equal(r, g)


@pytest.mark.parametrize("factors", [(1, 3, 3), (2, 2, 3), (1, 1, 1)])
def test_block_averages_in_torch_are_bit_identical_on_int16(phantom, factors):
    padded = phantom.array.copy()
    padded[:, :, :9] = -2048  # scanner padding: the blocks mostly made of it are told apart
    # odd shapes: the edge blocks repeat the edge voxels, and count only the real ones in the field
    _same_block_averages(padded[:, 1:, 2:], factors, CPU)


def test_block_averages_in_torch_of_float_input_within_a_thousandth_of_a_hu(phantom):
    a = phantom.array.astype(np.float32) + np.float32(0.37)
    ref, got = _block_average(a, (2, 3, 3)), block_average_torch(a, (2, 3, 3), CPU)
    assert np.abs(ref[0] - got[0]).max() < 1e-3
    assert np.array_equal(ref[1], got[1]) and np.array_equal(ref[2], got[2])


def test_lung_masks_with_torch_block_averages_are_the_same(phantom):
    ref = segment_chest(phantom.array, phantom.spacing, direction=phantom.direction)
    got = segment_chest(phantom.array, phantom.spacing, direction=phantom.direction, device=CPU)
    for name in ("lungs", "body", "airways", "field_voxels"):
        assert np.array_equal(getattr(ref, name), getattr(got, name)), name


@pytest.mark.parametrize("rotation_deg", [0.0, 30.0])
def test_resampling_in_torch_matches_simpleitk(phantom, rotation_deg):
    """Linear interpolation, padding clipped to air, default air outside the scan: within float32 rounding of
    SimpleITK's, on a scan stored flipped and one turned about z (a general direction matrix)."""
    c, s = np.cos(np.radians(rotation_deg)), np.sin(np.radians(rotation_deg))
    turned = np.array([[c, -s, 0], [s, c, 0], [0, 0, -1.0]])  # and z flipped
    ct = dataclasses.replace(phantom, direction=tuple(turned.ravel()))
    arr = ct.array.copy()
    arr[:, :6, :] = -3024  # padding, clipped to air before interpolating
    ct = dataclasses.replace(ct, array=arr)
    ref, grid = to_model_grid(ct, 1.3)
    got, grid2 = to_model_grid(ct, 1.3, device=CPU)
    assert grid2.shape == grid.shape and np.array_equal(grid2.origin, grid.origin)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert np.abs(ref - got).max() < 1e-3
    assert (ref == got).mean() > 0.999  # the rest differ in the last bits of float32
    assert ref.min() >= -1000.0 and got.min() >= -1000.0


def test_lung_mask_resampled_in_torch_matches(phantom):
    lungs = LungMask(phantom.array, phantom.spacing, direction=phantom.direction)
    bounds = index_bounds_to_world(*lungs.index_bounds(), phantom, 10.0)
    ref, _ = to_model_grid(phantom, 1.0, bounds, image=lungs.mask)
    got, _ = to_model_grid(phantom, 1.0, bounds, image=lungs.mask_on(CPU), device=CPU)
    assert np.abs(ref - got).max() < 1e-6
    assert np.array_equal(ref > 0.5, got > 0.5)


def test_the_cpu_keeps_numpy_and_a_gpu_takes_the_full_resolution_work():
    assert full_resolution_device(CPU) is None
    assert full_resolution_device(torch.device("cuda:0")) == torch.device("cuda:0")


@needs_real
def test_real_ct_block_averages_in_torch_are_bit_identical():
    from resmtnet.io.ctio import read_ct

    ct = read_ct(REAL / "dicom", int16=True)
    assert ct.array.dtype == np.int16
    _same_block_averages(ct.array, (1, 3, 3), CPU)


@pytest.mark.slow
def test_detection_with_the_torch_passes_finds_the_same(phantom, shipped_model, monkeypatch):
    """The whole detection with the full-resolution passes in torch (on the CPU here, as on a GPU) finds
    what the numpy path finds, at the same places and probabilities."""
    from resmtnet.detect.pipeline import detect_ct
    from resmtnet.util import runtime

    ref = detect_ct(phantom, model=shipped_model, device="cpu", tta=False)
    monkeypatch.setattr(runtime, "full_resolution_device", lambda device: device)
    got = detect_ct(phantom, model=shipped_model, device="cpu", tta=False)
    assert ref.nodules and len(got.nodules) == len(ref.nodules)
    for a, b in zip(ref.nodules, got.nodules, strict=True):
        assert np.allclose(a.center_lps, b.center_lps, atol=0.01)
        assert abs(a.probability - b.probability) < 1e-4
        assert abs(a.diameter_mm - b.diameter_mm) < 0.01
    assert np.array_equal(ref.labels, got.labels)
    assert ref.info["lung_volume_ml"] == got.info["lung_volume_ml"]
    assert (ref.info["full_resolution"], got.info["full_resolution"]) == ("numpy on cpu", "torch on cpu")


@needs_cuda
def test_on_the_gpu_block_averages_and_resampling_match(phantom):
    gpu = torch.device("cuda")
    _same_block_averages(phantom.array, (1, 3, 3), gpu)
    ref, _ = to_model_grid(phantom, 1.0)
    got, _ = to_model_grid(phantom, 1.0, device=gpu)
    assert np.abs(ref - got).max() < 1e-3
    lungs = LungMask(phantom.array, phantom.spacing, direction=phantom.direction, device=gpu)
    assert np.array_equal(lungs.chest.lungs, segment_chest(phantom.array, phantom.spacing,
                                                           direction=phantom.direction).lungs)
    bounds = index_bounds_to_world(*lungs.index_bounds(), phantom, 10.0)
    ref, _ = to_model_grid(phantom, 1.0, bounds, image=lungs.mask)
    got, _ = to_model_grid(phantom, 1.0, bounds, image=lungs.mask_on(gpu), device=gpu)
    assert np.array_equal(ref > 0.5, got > 0.5)
