"""Training Res-MTNet: patch sampling, augmentation, the multi-task loss, the loop, checkpoints, resume.

One process or many: under ``torchrun`` (``WORLD_SIZE`` > 1) the loop runs with PyTorch
DistributedDataParallel (NCCL on GPUs, gloo on CPUs); every rank samples its own patches (seed +
rank), gradients are averaged, and rank 0 validates and writes checkpoints.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.training_data import TrainCase
from ..model.model import ModelConfig, ResMTNet
from ..model.prepare import HU_MIN, normalize_hu
from ..model.targets import UNLABELLED, encode
from ..util.errors import NonFiniteLossError, ResMTNetError
from ..util.runtime import compute_precision, pick_device, torchrun_ranks
from .hard_negatives import mine_false_findings, with_negatives

#: a window centred on a nodule spans at least this many times its diameter (masses of 30-80 mm are shrunk to fit)
FIT_MARGIN = 1.4


@dataclass
class TrainConfig:
    patch: int = 64
    batch_size: int = 4
    epochs: int = 30
    steps_per_epoch: int = 150
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    positive_fraction: float = 0.5
    hard_negative_fraction: float = 0.3  # of all windows: centred on dense structures in the lungs (vessels)
    scale_range: tuple[float, float] = (0.85, 1.2)
    # how much more often a window is centred on the nodules detection misses most (multiplied together):
    # small (< 6 mm), faint (ground-glass: no voxel near the centre above -300 HU) and large (>= 15 mm, rare)
    oversample_small: float = 2.5
    oversample_faint: float = 2.0
    oversample_large: float = 2.0
    # centre windows on each nodule type equally often (the screening mix draws 55 % solid, 15 % of each other
    # type), for training the type head; nodules of unknown type keep their weight
    balance_types: bool = False
    loss_weights: dict[str, float] = field(default_factory=lambda: {
        "center": 1.0, "offset": 1.0, "size": 1.0, "malignancy": 1.0})
    seed: int = 0
    amp: bool = True  # float16 on CUDA; bfloat16 on CPUs with native bfloat16 (about 1.6x faster there)
    val_every: int = 1
    threads: int = 0  # torch CPU threads (0 = torch's default)
    # processes that cut and augment windows beside the training step (0: the training process does it).
    # On a GPU the step takes a few ms and one process cutting windows (~25 ms a batch) would starve it.
    loader_workers: int = 0
    # hard-negative mining (:mod:`resmtnet.train.hard_negatives`): after each of these epochs the network is run
    # over its training cases, and its findings of probability ``mine_floor`` or more that lie clear of
    # every nodule become the cases' negatives (replacing the ones mined before)
    mine_negatives_at: tuple[int, ...] = ()
    mine_floor: float = 0.15
    # nodules with less of themselves in the lung (TrainCase.lung_share; phantoms drawn in the chest wall or
    # mediastinum) are not taught: no window is centred on one and no target marks it, so its spot is
    # background. 0 teaches every nodule.
    min_lung_share: float = 0.5
    # the network's modules this run trains (e.g. ["type_head", "margin_head"]: the characterisation heads on a
    # network whose other weights stay as they are); empty trains them all
    trainable: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scale_range"] = list(self.scale_range)
        d["mine_negatives_at"] = list(self.mine_negatives_at)
        d["trainable"] = list(self.trainable)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("scale_range", "mine_negatives_at", "trainable"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


# ------------------------------------------------------------------------------------------- sampling



#: a hard-negative window is centred at least this far beyond a lesion's radius: a real case's own lesion
#: (or its spiculae and the tissue around it) is never the centre of a window taught as background
NEGATIVE_CLEARANCE_MM = 10.0


def clear_of_lesions(pts_vox: np.ndarray, case: TrainCase) -> np.ndarray:
    """Which of ``pts_vox`` (N, 3) lie at least (radius + NEGATIVE_CLEARANCE_MM) from every lesion of ``case``."""
    ok = np.ones(len(pts_vox), bool)
    for c, d in zip(np.asarray(case.centers, float), np.asarray(case.diameters, float)):
        ok &= np.linalg.norm((pts_vox - c) * case.spacing, axis=1) >= d / 2 + NEGATIVE_CLEARANCE_MM
    return ok

class PatchSampler:
    """Draws training windows from cases: around nodules, on dense structures, anywhere; augments them."""

    def __init__(self, cases: Sequence[TrainCase], cfg: TrainConfig, model_cfg: ModelConfig, seed: int):
        self.cases = list(cases)
        self.cfg = cfg
        self.mcfg = model_cfg
        self.rng = np.random.default_rng(seed)
        # a nodule drawn outside the lung is no lung nodule (TrainConfig.min_lung_share): no window is
        # centred on it and no target marks it, so the network learns its spot as background
        self.nodules = [(i, j) for i, c in enumerate(self.cases)
                        for j in np.flatnonzero(c.in_lung(cfg.min_lung_share))]
        w = np.array([self._nodule_weight(self.cases[i], j) for i, j in self.nodules], float)
        if cfg.balance_types and len(w):
            kinds = np.array([int(self.cases[i].nodule_types[j]) for i, j in self.nodules])
            for k in set(kinds.tolist()) - {UNLABELLED}:
                w[kinds == k] /= np.mean(kinds == k)
        self.nodule_p = w / w.sum() if len(w) else w
        self._dense: dict[int, np.ndarray] = {}

    def _nodule_weight(self, case: TrainCase, j: int) -> float:
        d = float(case.diameters[j])
        k = np.round(case.centers[j]).astype(int)
        lo, hi = np.maximum(k - 1, 0), np.minimum(k + 2, case.image.shape)
        core = case.image[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        faint = core.size > 0 and float(core.max()) < -300
        return ((self.cfg.oversample_small if d < 6 else 1.0) * (self.cfg.oversample_large if d >= 15 else 1.0)
                * (self.cfg.oversample_faint if faint else 1.0))

    def _dense_points(self, i: int) -> np.ndarray:
        """Dense voxels with lung air around them: vessels, their branchings and the pleura, where
        false positives come from (dense voxels anywhere would mostly be chest wall and mediastinum)."""
        if i not in self._dense:
            from scipy import ndimage

            img = self.cases[i].image[::2, ::2, ::2]
            air_around = ndimage.uniform_filter((img < -700).astype(np.float32), size=5)
            pts = np.argwhere((img > -500) & (air_around > 0.35)) * 2
            pts = pts[clear_of_lesions(pts, self.cases[i])]
            if len(pts) > 4000:
                pts = pts[self.rng.choice(len(pts), 4000, replace=False)]
            self._dense[i] = pts
        return self._dense[i]

    def sample(self) -> tuple[np.ndarray, ...]:
        """One window: HU patch (P, P, P) and the nodules in it (centres voxel z,y,x, diameters, ratings, type
        and margin class indices)."""
        rng = self.rng
        scale = rng.uniform(*self.cfg.scale_range)  # > 1 magnifies: objects grow by `scale`
        P = self.cfg.patch
        src = int(round(P / scale))
        r = rng.random()
        if r < self.cfg.positive_fraction and self.nodules:
            i, j = self.nodules[rng.choice(len(self.nodules), p=self.nodule_p)]
            c = self.cases[i]
            shift = rng.uniform(-0.35, 0.35, 3)  # of the window: where in it the nodule lies
            # a mass is seen whole: the window spans at least FIT_MARGIN times its diameter, and it stays inside
            d_vox = float(c.diameters[j]) / c.spacing
            if d_vox * FIT_MARGIN > src:
                src = int(np.ceil(d_vox * FIT_MARGIN))
            shift *= min(1.0, (src - d_vox) / (2 * src) / 0.35)
            centre = c.centers[j] + shift * src
        else:
            i = int(rng.integers(len(self.cases)))
            c = self.cases[i]
            dense = self._dense_points(i) if rng.random() < self.cfg.hard_negative_fraction / max(
                1e-6, 1 - self.cfg.positive_fraction) else np.zeros((0, 3))
            if len(c.negatives) and rng.random() < 0.5:
                centre = c.negatives[rng.integers(len(c.negatives))] + rng.uniform(-0.3, 0.3, 3) * src
            elif len(dense):
                centre = dense[rng.integers(len(dense))].astype(float)
            else:
                centre = rng.uniform(0, 1, 3) * np.array(c.image.shape)
        start = np.round(centre - src / 2).astype(int)
        patch = _crop(c.image, start, src)
        lung = c.in_lung(self.cfg.min_lung_share)
        centers = (c.centers[lung] - start) * (P / src)
        inside = np.all((centers >= 0) & (centers < P), axis=1) if len(centers) else np.zeros(0, bool)
        return (patch, centers[inside], c.diameters[lung][inside] * (P / src), c.malignancy[lung][inside],
                c.nodule_types[lung][inside], c.margins[lung][inside])

    def batch(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        P = self.cfg.patch
        s = self.mcfg.output_stride
        xs, tgts = [], []
        for _ in range(self.cfg.batch_size):
            patch, centers, diam, ratings, types, margins = self.sample()
            x = torch.from_numpy(patch.astype(np.float32))[None, None]
            if x.shape[-1] != P:
                x = F.interpolate(x, size=(P, P, P), mode="trilinear", align_corners=False)
            x = x[0, 0].numpy()
            x, centers = self._augment(x, centers)
            xs.append(normalize_hu(x))
            t = encode((P // s,) * 3, centers.reshape(-1, 3), diam, ratings, s, self.mcfg.spacing_mm, types, margins)
            tgts.append(t)
        batch_t = {k: torch.from_numpy(np.stack([getattr(t, k) for t in tgts])) for k in vars(tgts[0])}
        return torch.from_numpy(np.stack(xs))[:, None], batch_t

    def _augment(self, x: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        P = x.shape[0]
        centers = centers.copy()
        for ax in range(3):
            if rng.random() < 0.5:
                x = np.flip(x, ax)
                centers[:, ax] = P - 1 - centers[:, ax]
        k = int(rng.integers(4))  # 90° turns in the axial plane
        if k:
            x = np.rot90(x, k, axes=(1, 2))
            for _ in range(k):  # rot90 (y, x) → (P-1-x, y)
                centers[:, 1], centers[:, 2] = P - 1 - centers[:, 2].copy(), centers[:, 1].copy()
        x = np.ascontiguousarray(x)
        # intensity: scanner calibration, contrast and noise differences
        x = x * rng.uniform(0.95, 1.05) + rng.uniform(-30, 30)
        if rng.random() < 0.5:
            x = x + rng.normal(0, rng.uniform(5, 25), x.shape).astype(np.float32)
        return x.astype(np.float32), centers


class WindowStream(torch.utils.data.IterableDataset):
    """Endless training batches from a :class:`PatchSampler`, for a DataLoader with worker processes.

    Worker ``w`` draws with seed ``seed + 104729 * w``, so a run's windows depend only on the seed and
    the number of workers; the DataLoader takes batches from the workers in turn.
    """

    def __init__(self, cases: Sequence[TrainCase], cfg: TrainConfig, model_cfg: ModelConfig, seed: int):
        super().__init__()
        self.cases, self.cfg, self.mcfg, self.seed = cases, cfg, model_cfg, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        torch.set_num_threads(1)
        sampler = PatchSampler(self.cases, self.cfg, self.mcfg, seed=self.seed + 104729 * worker)
        while True:
            yield sampler.batch()


def batches(cases: Sequence[TrainCase], cfg: TrainConfig, model_cfg: ModelConfig, seed: int, pin: bool = False
            ) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """An iterator over training batches: in this process, or from ``cfg.loader_workers`` processes."""
    if cfg.loader_workers <= 0:
        sampler = PatchSampler(cases, cfg, model_cfg, seed=seed)
        return iter(sampler.batch, None)
    loader = torch.utils.data.DataLoader(WindowStream(cases, cfg, model_cfg, seed), batch_size=None,
                                         num_workers=cfg.loader_workers, prefetch_factor=4, pin_memory=pin)
    return iter(loader)


def _crop(img: np.ndarray, start: np.ndarray, size: int) -> np.ndarray:
    """Crop with padding (air) where the window leaves the volume."""
    out = np.full((size,) * 3, HU_MIN, np.float32)
    lo = np.maximum(start, 0)
    hi = np.minimum(start + size, img.shape)
    if np.any(hi <= lo):
        return out
    dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))
    out[dst] = img[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    return out


# ------------------------------------------------------------------------------------------- losses


def focal_center_loss(logits: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss; normalised by the number of centres (at least 1)."""
    p = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    pos = heat.eq(1).float()
    neg = 1 - pos
    pos_loss = -torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = -torch.log(1 - p) * p ** 2 * (1 - heat) ** 4 * neg
    return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(1) if pred.dim() == mask.dim() + 1 else mask
    err = F.smooth_l1_loss(pred.float(), target.float(), reduction="none", beta=0.1) * m
    return err.sum() / (m.sum() * (pred.shape[1] if pred.dim() == 5 else 1)).clamp(min=1)


def labelled_cross_entropy(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the cells with a class (``UNLABELLED`` cells are left out), averaged over them; 0 (still
    part of the graph) where no cell has one."""
    ce = F.cross_entropy(logits.float(), classes.long(), ignore_index=UNLABELLED, reduction="sum")
    return ce / classes.ne(UNLABELLED).sum().clamp(min=1)


def multitask_losses(out: dict[str, torch.Tensor], t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each task's loss; ``type`` and ``margin`` where the network has those heads."""
    malig_mask = t["malig_mask"][:, None]
    bce = F.binary_cross_entropy_with_logits(out["malignancy"].float(), t["malignant"][:, None], reduction="none")
    losses = {
        "center": focal_center_loss(out["center"], t["heat"][:, None]),
        "offset": masked_l1(out["offset"], t["offset"], t["offset_mask"]),
        "size": masked_l1(out["log_diameter"], t["log_diameter"][:, None], t["size_mask"][:, None]),
        "malignancy": (bce * malig_mask).sum() / malig_mask.sum().clamp(min=1),
    }
    if "nodule_type" in out:
        losses["type"] = labelled_cross_entropy(out["nodule_type"], t["nodule_type"])
        losses["margin"] = labelled_cross_entropy(out["margin"], t["margin"])
    return losses


def trainable_parameters(net: ResMTNet, modules: Sequence[str]) -> list[torch.nn.Parameter]:
    """The parameters of ``modules`` (top-level module names; empty: all), the others frozen (no gradient, so
    neither the optimizer nor weight decay touches them: they stay bit for bit as they are)."""
    if not modules:
        return list(net.parameters())
    children = dict(net.named_children())
    unknown = [m for m in modules if m not in children]
    if unknown:
        raise ResMTNetError(f"train.trainable: the network has no module {unknown[0]!r} (its modules: "
                            f"{', '.join(children)})")
    for p in net.parameters():
        p.requires_grad_(False)
    params = [p for m in modules for p in children[m].parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def weighted_total(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """The training loss: the task losses, each times its weight (1 for a task ``weights`` does not name)."""
    total = torch.zeros((), device=next(iter(losses.values())).device)
    for k, v in losses.items():
        total = total + weights.get(k, 1.0) * v
    return total


# ------------------------------------------------------------------------------------------- the loop


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _mine(net: ResMTNet, cases: Sequence[TrainCase], dev: torch.device, floor: float, epoch: int,
          log: Callable[[str], None], show: bool) -> dict[str, np.ndarray]:
    """Hard negatives from the network as it is after ``epoch`` epochs (see :mod:`resmtnet.train.hard_negatives`)."""
    t0 = time.time()
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=len(cases), desc=f"mining false findings after epoch {epoch}", leave=False,
                   dynamic_ncols=True)
    mined = mine_false_findings(net, cases, dev, floor,
                                progress=(lambda done, total: bar.update(1)) if bar is not None else None)
    if bar is not None:
        bar.close()
    n = sum(len(v) for v in mined.values())
    log(json.dumps({"mined": {"after_epoch": epoch, "floor": floor, "cases": len(cases), "negatives": n,
                              "seconds": round(time.time() - t0, 1)}}))
    return mined


#: The smallest feature map (voxels a side) that bfloat16 training on a CPU is safe with. PyTorch 2.13's CPU
#: (oneDNN) bfloat16 backward pass of a 3x3x3 convolution reads uninitialised memory for the weight
#: gradient when a feature map is 1 or 2 voxels deep: the gradient comes back as garbage, often inf or NaN,
#: and differs from run to run (Testing/test_training_loop.py holds the case). The forward pass is exact, so
#: inference is unaffected; 3 voxels and more were clean in every shape tried.
MIN_BF16_FEATURE_VOXELS = 3


def training_precision(device: torch.device, cfg: TrainConfig, model_cfg: ModelConfig) -> tuple[torch.dtype, str]:
    """The autocast precision of a training run and why: :func:`compute_precision` when ``cfg.amp``, except
    bfloat16 on the CPU for windows so small that the deepest stage's maps hit the defect above."""
    if not cfg.amp:
        return torch.float32, "float32 (mixed precision off)"
    dtype = compute_precision(device)
    if dtype == torch.bfloat16:
        deepest = cfg.patch // 2 ** len(model_cfg.stage_channels)
        if deepest < MIN_BF16_FEATURE_VOXELS:
            return torch.float32, (f"float32: a {cfg.patch}-voxel window leaves the deepest stage {deepest} voxel(s) "
                                   f"a side, where the CPU's bfloat16 convolution gradients are unreliable")
        return dtype, "bfloat16 autocast on this CPU"
    if dtype == torch.float16:
        return dtype, "float16 autocast with gradient scaling on CUDA"
    return dtype, "float32 (this CPU has no native bfloat16)"


@dataclass
class _Runtime:
    """Where one training process runs: its device and its place among torchrun's processes."""

    dev: torch.device
    rank: int
    local: int
    distributed: bool
    owns_group: bool  # the process group was started here (else the caller's, for several runs)


@dataclass
class _Progress:
    """What a run carries from epoch to epoch, and what ``last.pt`` keeps to resume it."""

    start_epoch: int = 0
    best_score: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)
    mined: dict[str, np.ndarray] = field(default_factory=dict)  # hard negatives the network found, by case id


def _set_up(cfg: TrainConfig, device: str) -> _Runtime:
    """The device (``cuda:LOCAL_RANK`` under torchrun), the process group where this process starts it, torch's
    threads, and the seed."""
    world, rank, local = torchrun_ranks()
    distributed = world > 1
    dev = pick_device(device, local_rank=local)
    owns_group = distributed and not torch.distributed.is_initialized()
    if owns_group:
        torch.distributed.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one window size all along: pick the fastest 3-D convolutions once
    torch.manual_seed(cfg.seed)
    return _Runtime(dev, rank, local, distributed, owns_group)


def load_init_state(net: ResMTNet, state: dict[str, torch.Tensor]) -> None:
    """Start from ``state`` (fine-tuning). A network with characterisation heads may start from the weights of one
    without them: its heads keep their fresh initialisation, everything else is ``state``'s."""
    from ..model.model import CHARACTERISATION_MODULES

    missing, unexpected = net.load_state_dict(state, strict=False)
    new = [k for k in missing if k.split(".")[0] not in CHARACTERISATION_MODULES]
    if new or unexpected:
        raise ResMTNetError(f"the weights to start from do not fit the network: {len(new)} missing "
                            f"{new[:1]}, {len(unexpected)} unexpected {unexpected[:1]}")


def _resume(last: Path, resume: bool, net: ResMTNet, opt: torch.optim.Optimizer,
            init_state: dict[str, torch.Tensor] | None, log: Callable[[str], None]) -> _Progress:
    """The weights, optimizer and progress of ``last.pt`` where the run resumes from it; else ``init_state``'s
    weights where given (fine-tuning), or the fresh network as it is."""
    from ..model.model_io import load_weights, read_checkpoint

    ck = read_checkpoint(last) if resume and last.exists() else None
    if ck is None:
        if init_state is not None:
            load_init_state(net, init_state)
        return _Progress()
    st = ck.get("train_state", {})
    load_weights(net, ck["state_dict"], last)
    try:
        if "optimizer" in st:
            opt.load_state_dict(st["optimizer"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise ResMTNetError(f"{last}: its training state does not fit this run ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); resume with the options it was "
                            "started with, or train into a new folder") from e
    log(f"resumed from {last} at epoch {int(st.get('epoch', 0))}")
    return _Progress(start_epoch=int(st.get("epoch", 0)), best_score=float(st.get("best_score", -1.0)),
                     history=st.get("history", []),
                     mined={k: np.asarray(v, np.float32).reshape(-1, 3)
                            for k, v in st.get("mined_negatives", {}).items()})


def _run_epoch(epoch: int, stream, model: torch.nn.Module, opt: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, amp_dtype: torch.dtype, dev: torch.device, cfg: TrainConfig,
               last: Path, show: bool) -> dict[str, float]:
    """One epoch of ``cfg.steps_per_epoch`` steps on the batches of ``stream``; the mean of each loss.
    A loss that is not finite stops the run (:class:`NonFiniteLossError`) before the step is taken."""
    params = [p for g in opt.param_groups for p in g["params"]]
    total_steps = cfg.epochs * cfg.steps_per_epoch
    sums: dict[str, float] = {}
    steps = range(cfg.steps_per_epoch)
    if show:
        from tqdm import tqdm

        steps = tqdm(steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True)
    for s in steps:
        step = epoch * cfg.steps_per_epoch + s
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total_steps, cfg)
        x, t = next(stream)
        x = x.to(dev, non_blocking=True)
        t = {k: v.to(dev, non_blocking=True) for k, v in t.items()}
        with torch.autocast(device_type=dev.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
            out = model(x)
        losses = multitask_losses(out, t)
        loss = weighted_total(losses, cfg.loss_weights)
        values = {**{k: float(v.detach()) for k, v in losses.items()}, "total": float(loss.detach())}
        if not math.isfinite(values["total"]):
            raise NonFiniteLossError(f"epoch {epoch + 1}, step {s + 1}: the loss is {values['total']} "
                                     f"({values}); the last good checkpoint is "
                                     f"{last if last.exists() else 'none yet'}")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        scaler.step(opt)
        scaler.update()
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        if show:
            steps.set_postfix(loss=f"{sums['total'] / (s + 1):.3f}")
    return {k: v / cfg.steps_per_epoch for k, v in sums.items()}


def _save_epoch(out_dir: Path, net: ResMTNet, opt: torch.optim.Optimizer, progress: _Progress,
                record: dict[str, Any], cfg: TrainConfig, provenance: dict[str, Any] | None) -> None:
    """``last.pt`` after each epoch (with what a resume needs), and ``best.pt`` when the validation score beats
    the best so far."""
    from ..model.model_io import save_checkpoint

    score = float(record.get("val", {}).get("score", -1.0))
    state = {"epoch": record["epoch"], "optimizer": opt.state_dict(), "best_score": max(progress.best_score, score),
             "history": progress.history, "mined_negatives": progress.mined}
    prov = {"train_config": cfg.to_dict(), **(provenance or {})}
    save_checkpoint(out_dir / "last.pt", net, provenance=prov, metrics=record.get("val", {}),
                    extra={"train_state": state})
    if score > progress.best_score:
        progress.best_score = score
        save_checkpoint(out_dir / "best.pt", net, provenance=prov, metrics=record.get("val", {}))


def train(cases: Sequence[TrainCase], out_dir: str | Path, cfg: TrainConfig, model_cfg: ModelConfig | None = None,
          *, val_fn: Callable[[ResMTNet], dict[str, float]] | None = None, provenance: dict[str, Any] | None = None,
          resume: bool = True, device: str = "auto", log: Callable[[str], None] = print,
          progress_bar: bool = True, init_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Train and return the path of the final checkpoint (``out_dir/last.pt``; ``best.pt`` by val score).

    ``init_state``: weights to start from (fine-tuning) instead of a fresh initialisation; a run that
    resumes from ``last.pt`` takes that instead. The steps: set up the device and process group
    (:func:`_set_up`), build the network and optimizer, resume (:func:`_resume`), then per epoch mine hard
    negatives where the recipe says (:func:`_mine`), train (:func:`_run_epoch`), validate and save
    (:func:`_save_epoch`).
    """
    rt = _set_up(cfg, device)
    model_cfg = model_cfg or ModelConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net = ResMTNet(model_cfg).to(rt.dev)
    opt = torch.optim.AdamW(trainable_parameters(net, cfg.trainable), lr=cfg.lr, weight_decay=cfg.weight_decay)
    amp_dtype, precision_note = training_precision(rt.dev, cfg, model_cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)  # float16 only: CUDA
    if rt.rank == 0:
        log(f"precision: {precision_note}")
    last = out_dir / "last.pt"
    progress = _resume(last, resume, net, opt, init_state, log)
    ddp_net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[rt.local] if rt.dev.type == "cuda"
                                                        else None) if rt.distributed else net
    stream = None
    show = progress_bar and rt.rank == 0
    for epoch in range(progress.start_epoch, cfg.epochs):
        if epoch in cfg.mine_negatives_at:
            progress.mined = _mine(net, cases, rt.dev, cfg.mine_floor, epoch, log, show)
            stream = None  # let the workers of the last stream go first
        if stream is None:
            stream = batches(with_negatives(cases, progress.mined), cfg, model_cfg,
                             seed=cfg.seed * 1000 + rt.rank + 7919 * epoch, pin=rt.dev.type == "cuda")
        net.train()
        t0 = time.time()
        means = _run_epoch(epoch, stream, ddp_net, opt, scaler, amp_dtype, rt.dev, cfg, last, show)
        record: dict[str, Any] = {"epoch": epoch + 1, "seconds": round(time.time() - t0, 1),
                                  "loss": {k: round(v, 4) for k, v in means.items()}}
        if rt.rank == 0:
            if val_fn is not None and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
                record["val"] = val_fn(net)
            progress.history.append(record)
            log(json.dumps(record))
            _save_epoch(out_dir, net, opt, progress, record, cfg, provenance)
        if rt.distributed:
            torch.distributed.barrier()
    if rt.owns_group:
        torch.distributed.destroy_process_group()
    return last
