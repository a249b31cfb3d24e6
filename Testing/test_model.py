"""Res-MTNet: shapes, a training step that learns, checkpoints that reload to identical outputs."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from resmtnet.cli.train_cli import tiny_model_config
from resmtnet.model.model import InputWindows, ModelConfig, ResMTNet
from resmtnet.model.model_io import load_model, read_checkpoint, save_checkpoint
from resmtnet.model.prepare import normalize_hu
from resmtnet.model.targets import encode
from resmtnet.train.training import multitask_losses, weighted_total


def test_output_shapes_follow_the_output_stride():
    net = ResMTNet(ModelConfig())
    out = net(torch.zeros(2, 1, 32, 48, 64))
    assert out["center"].shape == (2, 1, 8, 12, 16)
    assert out["offset"].shape == (2, 3, 8, 12, 16)
    assert out["log_diameter"].shape == (2, 1, 8, 12, 16)
    assert out["malignancy"].shape == (2, 1, 8, 12, 16)


def test_input_windows_add_the_ct_clipped_to_each_window_as_channels():
    hu = np.array([-1200.0, -1000.0, -850.0, -700.0, -550.0, -400.0, 40.0, 600.0], np.float32)
    x = torch.from_numpy(normalize_hu(hu)).reshape(1, 1, 1, 1, -1)
    out = InputWindows(((-1000.0, -400.0), (-160.0, 240.0)))(x)
    assert out.shape == (1, 3, 1, 1, 8)
    torch.testing.assert_close(out[:, :1], x)  # the wide window goes through unchanged
    lung = [-1.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.0, 1.0]  # -1000 .. -400 HU onto -1 .. 1
    soft = [-1.0, -1.0, -1.0, -1.0, -1.0, -1.0, 0.0, 1.0]  # -160 .. 240 HU
    torch.testing.assert_close(out[0, 1, 0, 0], torch.tensor(lung), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[0, 2, 0, 0], torch.tensor(soft), atol=1e-5, rtol=0)
    assert InputWindows(())(x) is x
    with pytest.raises(ValueError, match="upper HU bound"):
        InputWindows(((-400.0, -1000.0),))


def test_a_network_with_input_windows_takes_one_channel_and_widens_its_stem():
    cfg = replace(tiny_model_config(1.5), input_windows=((-1000.0, -400.0),))
    net = ResMTNet(cfg)
    assert net.encoder.stem[0].in_channels == 2
    assert net(torch.zeros(1, 1, 32, 32, 32))["center"].shape == (1, 1, 8, 8, 8)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    # checkpoints written before input windows existed describe a one-channel stem
    old = {k: v for k, v in cfg.to_dict().items() if k != "input_windows"}
    assert ModelConfig.from_dict(old).input_windows == ()


def _fixed_batch(cfg: ModelConfig, n: int = 2, p: int = 32):
    rng = np.random.default_rng(0)
    xs, tg = [], []
    for _ in range(n):
        x = rng.normal(-800, 30, (p, p, p)).astype(np.float32)
        c = rng.uniform(8, p - 8, 3)
        zz, yy, xx = np.mgrid[:p, :p, :p]
        x[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < 16] = 40.0
        xs.append((x + 300) / 900)
        tg.append(encode((p // 4,) * 3, c[None], np.array([12.0]), np.array([5]), 4, cfg.spacing_mm))
    t = {k: torch.from_numpy(np.stack([getattr(v, k) for v in tg])) for k in vars(tg[0])}
    return torch.from_numpy(np.stack(xs))[:, None], t


def test_one_training_step_lowers_the_loss_on_a_fixed_batch():
    cfg = tiny_model_config(1.5)
    net = ResMTNet(cfg)
    weights = {"center": 1.0, "offset": 1.0, "size": 1.0, "malignancy": 0.5}

    def crit(losses):
        return weighted_total(losses, weights)

    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    x, t = _fixed_batch(cfg)
    net.train()
    with torch.no_grad():
        before = float(crit(multitask_losses(net(x), t)))
    loss = crit(multitask_losses(net(x), t))
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        after = float(crit(multitask_losses(net(x), t)))
    assert after < before


@pytest.mark.parametrize("windows", [(), ((-1000.0, -400.0),)], ids=["wide-window", "with-lung-window"])
def test_checkpoint_reloaded_in_another_process_gives_identical_outputs(tmp_path, windows):
    cfg = replace(tiny_model_config(1.5), input_windows=windows)
    net = ResMTNet(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():  # move off the initialisation so a default-built net would differ
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / "model.pt"
    save_checkpoint(path, net, provenance={"data": "test"}, decode={"threshold": 0.42})
    x = torch.randn(1, 1, 32, 32, 32)
    np.save(tmp_path / "x.npy", x.numpy())
    with torch.no_grad():
        ref = net(x)
    # a fresh interpreter: only the file describes the network
    code = (
        "import numpy as np, torch, sys\n"
        "from resmtnet.model.model_io import load_model\n"
        f"m = load_model(r'{path}')\n"
        f"x = torch.from_numpy(np.load(r'{tmp_path / 'x.npy'}'))\n"
        "with torch.no_grad(): out = m.net(x)\n"
        f"np.savez(r'{tmp_path / 'out.npz'}', **{{k: v.numpy() for k, v in out.items()}})\n"
        "print(m.threshold, m.config.stem_channels)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["0.42", str(cfg.stem_channels)]
    other = np.load(tmp_path / "out.npz")
    for k, v in ref.items():
        np.testing.assert_array_equal(other[k], v.numpy())
    meta = read_checkpoint(path)
    assert meta["config"]["stage_channels"] == list(cfg.stage_channels)
    assert meta["config"]["input_windows"] == [list(w) for w in windows]
    assert "code_version" in meta["provenance"] and meta["provenance"]["data"] == "test"


def test_shipped_weights_load_and_describe_themselves():
    m = load_model()
    d = m.describe()
    assert d["config"]["spacing_mm"] > 0
    assert d["provenance"]["data"]
    assert 0.0 < m.threshold < 1.0
    assert m.path.stat().st_size < 20 * 2 ** 20


def test_hard_negative_windows_sit_on_dense_structures_inside_the_lungs():
    """Vessels in aerated lung are where false positives come from; the chest wall's interior is not."""
    from resmtnet.data.training_data import TrainCase
    from resmtnet.train.training import PatchSampler, TrainConfig

    img = np.full((64, 64, 96), 40, np.int16)  # soft tissue (chest wall, mediastinum) ...
    img[8:56, 8:56, 8:56] = -850  # ... around an aerated lung
    img[30:34, 30:34, 12:52] = 40  # a vessel running through it
    case = TrainCase("synthetic", img, np.zeros(3), 1.5, np.zeros((0, 3), np.float32), np.zeros(0, np.float32),
                     np.zeros(0, np.int16), np.zeros((0, 3), np.float32))
    pts = PatchSampler([case], TrainConfig(), ModelConfig(), seed=0)._dense_points(0)
    assert 0 < len(pts) < 4000  # all of them, not a subsample
    # none deep in the tissue: each lies within 4 voxels of the lung's air box
    assert np.all((pts >= 4) & (pts < 60)), pts[np.any((pts < 4) | (pts >= 60), axis=1)][:5]
    # and the whole vessel, except its two ends buried in the wall, is among them
    vessel = {tuple(p) for p in np.argwhere(img[::2, ::2, ::2] > -500) * 2
              if 30 <= p[0] < 34 and 30 <= p[1] < 34 and 16 <= p[2] < 48}
    assert vessel and vessel <= {tuple(p) for p in pts}


def test_windows_centre_more_often_on_small_faint_and_large_nodules():
    """The nodules detection misses most (small, ground-glass; large ones are rare in the draw) are oversampled."""
    from resmtnet.data.training_data import TrainCase
    from resmtnet.train.training import PatchSampler, TrainConfig

    img = np.full((96, 96, 96), -850, np.int16)
    centers = np.array([[20, 20, 20], [20, 72, 72], [72, 20, 72], [72, 72, 20]], np.float32)
    diameters = np.array([10.0, 4.5, 11.0, 20.0], np.float32)  # typical, small, faint (ground-glass), large
    for c, d, hu in zip(centers, diameters, (30, 30, -550, 30)):
        r = int(d / 1.5 / 2) + 1
        z, y, x = c.astype(int)
        img[z - r:z + r + 1, y - r:y + r + 1, x - r:x + r + 1] = hu
    case = TrainCase("synthetic", img, np.zeros(3), 1.5, centers, diameters, np.full(4, 3, np.int16),
                     np.zeros((0, 3), np.float32))
    cfg = TrainConfig(positive_fraction=1.0, scale_range=(1.0, 1.0))
    sampler = PatchSampler([case], cfg, ModelConfig(), seed=0)
    counts = np.zeros(4)
    n = 2000
    for _ in range(n):
        _, inside, diam, *_ = sampler.sample()
        # the window's own nodule lies within 0.35 window widths of its middle on every axis; the others don't
        own = np.flatnonzero(np.abs(inside - (cfg.patch - 1) / 2).max(axis=1) <= 0.35 * cfg.patch + 1)
        assert len(own) == 1
        counts[int(np.flatnonzero(diameters == diam[own[0]])[0])] += 1
    w = np.array([1.0, cfg.oversample_small, cfg.oversample_faint, cfg.oversample_large])
    assert counts / n == pytest.approx(w / w.sum(), abs=0.035)


def test_a_nodule_drawn_outside_the_lung_is_background_in_training_and_excluded_in_validation(tmp_path):
    """Phantom nodules with lung_share under 0.5 sit in the chest wall or mediastinum: no reader marks them.
    Training neither centres windows on them nor marks them in its targets; validation scores them as
    excluded marks (as ``evaluate --phantoms`` does); the share survives the cache; a cached case without a
    ``lung_share`` array reads as 1."""
    from resmtnet.data.training_data import TrainCase
    from resmtnet.train.training import PatchSampler, TrainConfig
    from resmtnet.train.validation import case_marks

    img = np.full((96, 96, 96), -850, np.int16)
    centers = np.array([[24, 24, 24], [70, 70, 70]], np.float32)
    case = TrainCase("synthetic", img, np.zeros(3), 1.5, centers, np.array([8.0, 8.0], np.float32),
                     np.array([4, 2], np.int16), np.zeros((0, 3), np.float32),
                     lung_share=np.array([0.9, 0.3], np.float32))
    assert case.in_lung(0.5).tolist() == [True, False] and case.in_lung(0.0).tolist() == [True, True]
    cfg = TrainConfig(positive_fraction=1.0, scale_range=(1.0, 1.0))
    assert cfg.min_lung_share == 0.5
    sampler = PatchSampler([case], cfg, ModelConfig(), seed=0)
    assert sampler.nodules == [(0, 0)]
    # 0 teaches every nodule; the setting survives the config a checkpoint records
    assert PatchSampler([case], replace(cfg, min_lung_share=0.0), ModelConfig(), seed=0).nodules == [(0, 0), (0, 1)]
    assert TrainConfig.from_dict(replace(cfg, min_lung_share=0.0).to_dict()).min_lung_share == 0.0
    for _ in range(200):
        patch, inside, diam, ratings, *_ = sampler.sample()
        assert len(inside) == 1 and ratings.tolist() == [4]  # the wall nodule is never a target
        assert np.abs(inside[0] - (cfg.patch - 1) / 2).max() <= 0.35 * cfg.patch + 1
    cfg_any = TrainConfig(positive_fraction=0.0, hard_negative_fraction=0.0, patch=96, scale_range=(1.0, 1.0))
    anywhere = PatchSampler([case], cfg_any, ModelConfig(), seed=1)
    seen = [anywhere.sample()[3].tolist() for _ in range(20)]
    assert [4] in seen and all(r in ([4], []) for r in seen)  # windows holding both mark only the lung nodule
    assert [m.excluded for m in case_marks(case, min_diameter_mm=4.0, min_lung_share=0.5)] == [False, True]
    assert [m.excluded for m in case_marks(case, min_diameter_mm=4.0)] == [False, False]
    case.save(tmp_path / "c.npz")
    again = TrainCase.load(tmp_path / "c.npz", "synthetic")
    np.testing.assert_array_equal(again.lung_share, np.array([0.9, 0.3], np.float32))
    old = {k: v for k, v in np.load(tmp_path / "c.npz").items() if k != "lung_share"}
    np.savez(tmp_path / "old.npz", **old)
    np.testing.assert_array_equal(TrainCase.load(tmp_path / "old.npz", "synthetic").lung_share, [1.0, 1.0])
    # what a case made from a CT with readers' truth (LUNA16 / LIDC-IDRI) holds: every nodule is in the lung
    assert TrainCase("real", img, np.zeros(3), 1.5, centers, np.array([8.0, 8.0], np.float32),
                     np.array([4, 2], np.int16), np.zeros((0, 3), np.float32)).in_lung(0.5).all()


def test_window_workers_hand_out_each_workers_batches_in_turn_and_reproducibly():
    """With loader workers, batch k comes from worker k mod n, drawn with that worker's own seed."""
    from resmtnet.data.training_data import TrainCase
    from resmtnet.train.training import PatchSampler, TrainConfig, batches

    rng = np.random.default_rng(3)
    img = rng.normal(-850, 40, (64, 64, 64)).astype(np.int16)
    centers = np.array([[20, 20, 20], [40, 44, 30]], np.float32)
    case = TrainCase("synthetic", img, np.zeros(3), 1.5, centers, np.array([6.0, 12.0], np.float32),
                     np.array([2, 5], np.int16), np.zeros((0, 3), np.float32))
    mcfg = tiny_model_config(1.5)
    cfg = TrainConfig(patch=32, batch_size=2, loader_workers=2)
    got = [next(it) for it in [batches([case], cfg, mcfg, seed=5)] for _ in range(4)]
    again = [next(it) for it in [batches([case], cfg, mcfg, seed=5)] for _ in range(4)]
    own = [PatchSampler([case], cfg, mcfg, seed=5), PatchSampler([case], cfg, mcfg, seed=5 + 104729)]
    expected = [own[k % 2].batch() for k in range(4)]
    for (x, t), (x2, t2), (xe, te) in zip(got, again, expected):
        torch.testing.assert_close(x, x2)
        torch.testing.assert_close(x, xe)
        for k in t:
            torch.testing.assert_close(t[k], t2[k])
            torch.testing.assert_close(t[k], te[k])
    assert not torch.equal(got[0][0], got[1][0])


def test_a_volume_within_the_window_runs_as_one_window_and_a_larger_one_in_tiles_covering_every_cell():
    """The window policy (inference.WINDOW): a model grid whose padded sides all fit is one window, i.e. the
    network's own output over the padded volume; a larger one is tiled, and every output cell is written by
    some window (no cell keeps the "no centre" fill)."""
    from resmtnet.model.inference import ALIGN, WINDOW, predict_volume
    from resmtnet.model.prepare import HU_MIN
    from resmtnet.util.runtime import compute_layout

    torch.manual_seed(0)
    net = ResMTNet(tiny_model_config(1.5)).eval()
    hu = np.random.default_rng(0).normal(-600, 300, (40, 70, 52)).astype(np.float32)
    assert max(hu.shape) <= WINDOW
    cpu = torch.device("cpu")
    whole = predict_volume(net, hu, cpu, precision=torch.float32)
    padded = np.pad(normalize_hu(hu), [(0, -s % ALIGN) for s in hu.shape],
                    constant_values=float(normalize_hu(np.array([HU_MIN], np.float32))[0]))
    # the network called directly in the layout detection runs it in on the CPU (channels-last sums in another order)
    layout = compute_layout(torch.device("cpu"))
    with torch.no_grad():
        direct = net.to(memory_format=layout)(torch.from_numpy(padded)[None, None].contiguous(memory_format=layout))
    net.to(memory_format=torch.contiguous_format)
    for k in whole:
        torch.testing.assert_close(whole[k], direct[k].float(), atol=1e-5, rtol=0)
    tiled = predict_volume(net, hu, cpu, window=32, overlap=16, precision=torch.float32)
    assert tiled["center"].shape == whole["center"].shape
    assert not (tiled["center"] == -20.0).any()
