"""Res-MTNet: one residual 3-D encoder shared by every task, a light feature pyramid, and task heads.

Backbone (residual stages at strides 1, 2, 4, 8, 16) → pyramid back to the output stride (4) → heads:

A shared 3x3x3 head trunk at the output stride feeds light per-task heads (most of a 3-D detector's
cost sits at high resolution, so the heads stay 1x1 except malignancy's, which looks around):

- ``center``: nodule-centre heat map (classification, one logit per output cell);
- ``offset``: sub-cell position of the centre (regression, 3 channels, in cells);
- ``size``: log diameter in mm (regression);
- ``malignancy``: malignant vs benign logit (classification). The malignancy head takes the size
  head's hidden features through a residual link, so what the network learns about size informs the
  malignancy estimate, as size does for radiologists;
- ``nodule_type`` and ``margin`` (only with ``ModelConfig.characterisation_heads``): logits of the nodule's type
  (:data:`TYPE_CLASSES`) and margin (:data:`MARGIN_CLASSES`), each from two 3x3x3 layers that look around the
  centre (a margin is seen at the nodule's boundary, a cell or two from its centre). They read the head trunk
  and a light branch of their own on the CT itself (``characterisation_stem``: the input windows brought to
  the output stride by strided convolutions): a linear probe of the trunk at nodule centres told the four
  types apart no better than 0.38 balanced accuracy (chance 0.25), as it held no malignancy beyond size
  (model card); density and boundary are in the voxels.

Optionally the stem also sees the CT under extra HU windows (:class:`InputWindows`, e.g. a lung window
for faint ground-glass), made inside the network from its one input channel.

The network is built from a plain :class:`ModelConfig`, which travels inside every checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .prepare import HU_MAX, HU_MIN

#: the type head's classes, in the order of its logits (the vocabulary of ``Nodule.nodule_type``)
TYPE_CLASSES: tuple[str, ...] = ("solid", "part-solid", "ground-glass", "calcified")
#: the margin head's classes, in the order of its logits (``Nodule.margin``; "unknown" where a model has no head)
MARGIN_CLASSES: tuple[str, ...] = ("smooth", "lobulated", "spiculated")
#: the modules of the type and margin heads (a network without them is the network of earlier checkpoints)
CHARACTERISATION_MODULES: tuple[str, ...] = ("characterisation_stem", "type_head", "margin_head")


@dataclass
class ModelConfig:
    in_channels: int = 1
    stem_channels: int = 16
    stage_channels: tuple[int, ...] = (24, 48, 64, 96)  # strides 2, 4, 8, 16
    blocks_per_stage: tuple[int, ...] = (0, 1, 2, 2)
    pyramid_channels: int = 48
    head_channels: int = 32
    output_stride: int = 4
    spacing_mm: float = 1.5  # the grid the network was trained on
    center_prior: float = 0.01  # initial probability of the centre head (focal-loss practice)
    # extra input channels: the same CT under other HU windows (lo, hi), e.g. a lung window that spreads
    # the 300 HU between lung and ground-glass over the whole range; computed inside the network from the
    # one normalised channel every caller feeds (see :class:`InputWindows`)
    input_windows: tuple[tuple[float, float], ...] = ()
    # the nodule type and margin heads (off: the network of checkpoints made before them, unchanged)
    characterisation_heads: bool = False
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stage_channels"] = list(self.stage_channels)
        d["blocks_per_stage"] = list(self.blocks_per_stage)
        d["input_windows"] = [list(w) for w in self.input_windows]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        d["stage_channels"] = tuple(d["stage_channels"])
        d["blocks_per_stage"] = tuple(d["blocks_per_stage"])
        d["input_windows"] = tuple((float(lo), float(hi)) for lo, hi in d.get("input_windows", ()))
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _norm(c: int) -> nn.Module:
    # GroupNorm: batch-size independent (inference runs single windows, training small batches)
    return nn.GroupNorm(min(8, c // 4) if c >= 8 else 1, c)


class ConvNormAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1):
        super().__init__(nn.Conv3d(cin, cout, k, stride, k // 2, bias=False), _norm(cout), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """Two 3x3x3 convolutions with an identity shortcut (pre-addition norm, post-addition ReLU)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv3d(c, c, 3, 1, 1, bias=False)
        self.norm1 = _norm(c)
        self.conv2 = nn.Conv3d(c, c, 3, 1, 1, bias=False)
        self.norm2 = _norm(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)), inplace=True)
        y = self.norm2(self.conv2(y))
        return F.relu(x + y, inplace=True)


class InputWindows(nn.Module):
    """The normalised CT (:func:`resmtnet.model.prepare.normalize_hu`) plus one channel per extra HU window.

    A window (lo, hi) clips the HU to [lo, hi] and scales that to [-1, 1]. The first convolution could
    learn any linear mix of the input but not this clipping: with the wide window alone, faint
    ground-glass sits a third of a unit above the lung while vessels and walls sit a whole unit above,
    and the stem's normalisation is dominated by the latter.
    """

    def __init__(self, windows: tuple[tuple[float, float], ...]):
        super().__init__()
        for lo, hi in windows:
            if not hi > lo:
                raise ValueError(f"input window ({lo}, {hi}): the upper HU bound must exceed the lower")
        self.windows = tuple((float(lo), float(hi)) for lo, hi in windows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.windows:
            return x
        half, mid = (HU_MAX - HU_MIN) / 2, (HU_MAX + HU_MIN) / 2
        x32 = x.float()
        hu = x32 * half + mid
        chans = [x32] + [(hu.clamp(lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2) for lo, hi in self.windows]
        return torch.cat(chans, 1).to(x.dtype)


class ResidualEncoder(nn.Module):
    """The shared encoder: a full-resolution stem, then strided stages of residual blocks."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.inputs = InputWindows(cfg.input_windows)
        self.stem = ConvNormAct(cfg.in_channels + len(cfg.input_windows), cfg.stem_channels)
        stages = []
        cin = cfg.stem_channels
        for cout, nblocks in zip(cfg.stage_channels, cfg.blocks_per_stage):
            layers: list[nn.Module] = [ConvNormAct(cin, cout, 3, 2)]
            layers += [ResidualBlock(cout) for _ in range(nblocks)]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        x = self.stem(self.inputs(x))
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats  # strides 2, 4, 8, 16


def first_pyramid_stage(cfg: ModelConfig) -> int:
    """The encoder stage (0: stride 2, 1: stride 4, ...) at the output stride, the finest the pyramid reads."""
    strides = [2 ** (i + 1) for i in range(len(cfg.stage_channels))]
    return strides.index(cfg.output_stride)


class FeaturePyramid(nn.Module):
    """Top-down pathway from the deepest stage back to the output stride (lateral 1x1 + upsample + add)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.first = first_pyramid_stage(cfg)
        used = cfg.stage_channels[self.first:]
        self.lateral = nn.ModuleList([nn.Conv3d(c, cfg.pyramid_channels, 1) for c in used])
        self.smooth = ConvNormAct(cfg.pyramid_channels, cfg.pyramid_channels)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        feats = feats[self.first:]
        x = self.lateral[-1](feats[-1])
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
            x = lat(f) + F.interpolate(x, size=f.shape[2:], mode="trilinear", align_corners=False)
        return self.smooth(x)


class ResMTNet(nn.Module):
    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        self.cfg = cfg or ModelConfig()
        c, h = self.cfg.pyramid_channels, self.cfg.head_channels
        self.encoder = ResidualEncoder(self.cfg)
        self.pyramid = FeaturePyramid(self.cfg)
        self.head_trunk = ConvNormAct(c, h)
        self.center_head = nn.Sequential(ConvNormAct(h, h, 1), nn.Conv3d(h, 1, 1))
        self.offset_head = nn.Sequential(ConvNormAct(h, h, 1), nn.Conv3d(h, 3, 1))
        self.size_hidden = ConvNormAct(h, h, 1)
        self.size_out = nn.Conv3d(h, 1, 1)
        self.malig_hidden = ConvNormAct(h, h, 1)
        self.malig_out = nn.Sequential(ConvNormAct(h, h), nn.Conv3d(h, 1, 1))
        nn.init.constant_(self.center_head[-1].bias, -math.log((1 - self.cfg.center_prior) / self.cfg.center_prior))
        nn.init.constant_(self.size_out.bias, math.log(8.0))
        if self.cfg.characterisation_heads:  # built last: the other modules' initialisation stays as it was
            n_in = self.cfg.in_channels + len(self.cfg.input_windows)
            steps = int(round(math.log2(self.cfg.output_stride)))
            chans = [n_in] + [max(8, h // 2 ** (steps - 1 - i)) for i in range(steps)]
            self.characterisation_stem = nn.Sequential(*[ConvNormAct(a, b, 3, 2) for a, b in zip(chans, chans[1:])])
            c2 = h + chans[-1]
            self.type_head = nn.Sequential(ConvNormAct(c2, h), ConvNormAct(h, h), nn.Conv3d(h, len(TYPE_CLASSES), 1))
            self.margin_head = nn.Sequential(ConvNormAct(c2, h), ConvNormAct(h, h),
                                             nn.Conv3d(h, len(MARGIN_CLASSES), 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x``: (B, 1, Z, Y, X) normalised CT on the model grid, sizes divisible by 16.

        Returns logits/regressions at the output stride: center (B,1,...), offset (B,3,...) in cells,
        log_diameter (B,1,...) (log mm), malignancy (B,1,...) logits; with the characterisation heads also
        nodule_type (B,4,...) and margin (B,3,...) logits.
        """
        f = self.head_trunk(self.pyramid(self.encoder(x)))
        size_h = self.size_hidden(f)
        malig_h = self.malig_hidden(f) + size_h  # residual link between the size and malignancy tasks
        out = {
            "center": self.center_head(f),
            "offset": self.offset_head(f),
            "log_diameter": self.size_out(size_h),
            "malignancy": self.malig_out(malig_h),
        }
        if self.cfg.characterisation_heads:
            g = torch.cat([f, self.characterisation_stem(self.encoder.inputs(x))], 1)
            out["nodule_type"] = self.type_head(g)
            out["margin"] = self.margin_head(g)
        return out

