"""Running Res-MTNet over a whole volume in overlapping windows of :data:`WINDOW` (one window where the padded
volume fits), batched, on CPU (bfloat16 where the CPU computes it natively) or CUDA (float16 AMP).

Windows start on multiples of 16 voxels so the output cells of every window line up with one global
output grid; each window contributes only its inner part (its border cells, which see less context,
are left to the neighbouring window), except at the volume's own edges.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from ..util.errors import Cancelled
from ..util.runtime import compute_layout, compute_precision
from .model import ResMTNet
from .prepare import HU_MIN, normalize_hu

ALIGN = 16

#: the window side (voxels of the model grid): a volume whose padded sides all fit runs as one window, a larger
#: one in windows of this side overlapping by 32. One window over the whole grid (224 a side: 0.63 s a pass on
#: LIDC-IDRI-0001 against 0.95 s) was measured and is not the default: as good on the phantoms, but it sizes
#: LIDC-IDRI-0001's nodule on 5 mm slices 24 % over, past the 20 % its test allows (docs/evaluation.md,
#: *Choosing the passes and the window*; memory per window size: docs/benchmarks.md, *The network's window*).
WINDOW = 128


def _starts(n: int, window: int, step: int) -> list[int]:
    if n <= window:
        return [0]
    s = list(range(0, n - window, step))
    s.append(n - window)
    return sorted(set(s))


#: test-time augmentation: the axes (z, y, x of the model grid) flipped in each pass — the scan and all seven
#: of its mirror images. A checkpoint's threshold is calibrated with a given set of passes, so exports record
#: theirs (``decode["tta_flips"]``) and detection runs the set its checkpoint records.
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (1,), (0,), (1, 2), (0, 2), (0, 1), (0, 1, 2))

#: the four passes (the scan and its three single-axis mirror images) that checkpoints recording no set
#: were calibrated with
FOUR_MIRROR_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (1,), (0,))


@torch.no_grad()
def predict_volume(model: ResMTNet, hu: np.ndarray, device: torch.device, window: int = WINDOW, overlap: int = 32,
                   batch_size: int = 2, progress: Callable[[float], None] | None = None,
                   cancel: Callable[[], bool] | None = None, flips: Sequence[tuple[int, ...]] = ((),),
                   precision: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Network outputs over a whole HU volume on the model grid (z, y, x); cells of the output stride.

    Returns a dict like the model's forward with batch size 1, covering the volume (padded to a multiple
    of 16 voxels; extra cells lie beyond the volume). ``flips`` lists the passes: each flips the padded
    volume along those axes, runs the network and flips the outputs back (offsets change sign on the
    flipped axes); the passes are averaged (logits and log-diameters). The padded size is a multiple of
    the output stride, so a flipped pass's cells fall exactly onto the unflipped ones. ``precision``: the
    network's compute precision (default :func:`compute_precision` of the device).
    """
    shape = np.array(hu.shape)
    padded = (np.ceil(shape / ALIGN) * ALIGN).astype(int)
    x = normalize_hu(hu)
    pad = [(0, int(p - s)) for p, s in zip(padded, shape)]
    x = np.pad(x, pad, constant_values=float(normalize_hu(np.array([HU_MIN], np.float32))[0]))
    model.eval()
    precision = precision or compute_precision(device)
    total: dict[str, torch.Tensor] | None = None
    layout = compute_layout(device)
    with _memory_format(model, layout):
        for n, axes in enumerate(flips):
            def sub(f: float, n: int = n) -> None:
                if progress is not None:
                    progress((n + f) / len(flips))
            xt = torch.from_numpy(np.ascontiguousarray(np.flip(x, axes) if axes else x))
            out = _predict_padded(model, xt, device, window, overlap, batch_size, sub, cancel, precision, layout)
            if axes:
                dims = [a + 2 for a in axes]
                out = {k: torch.flip(v, dims) for k, v in out.items()}
                for a in axes:
                    out["offset"][:, a] = -out["offset"][:, a]
            total = out if total is None else {k: total[k] + out[k] for k in out}
    assert total is not None
    return {k: v / len(flips) for k, v in total.items()}


@contextlib.contextmanager
def _memory_format(model: ResMTNet, layout: torch.memory_format) -> Iterator[None]:
    """The model's weights in ``layout`` while detection runs, and back to the default layout afterwards
    (training's layout untouched)."""
    if layout == torch.contiguous_format:
        yield
        return
    model.to(memory_format=layout)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


def _predict_padded(model: ResMTNet, xt: torch.Tensor, device: torch.device, window: int, overlap: int,
                    batch_size: int, progress: Callable[[float], None], cancel: Callable[[], bool] | None,
                    precision: torch.dtype, layout: torch.memory_format) -> dict[str, torch.Tensor]:
    stride = model.cfg.output_stride
    padded = np.array(xt.shape)
    win = np.minimum(window, padded)
    step = np.maximum(win - overlap, ALIGN)
    starts = [(a, b, c) for a in _starts(padded[0], win[0], step[0]) for b in _starts(padded[1], win[1], step[1])
              for c in _starts(padded[2], win[2], step[2])]
    cells = padded // stride
    out: dict[str, torch.Tensor] = {}  # every output the network gives, each map allocated on its first window
    half = overlap // 2 // stride
    for i in range(0, len(starts), batch_size):
        if cancel is not None and cancel():
            raise Cancelled("detection cancelled")
        group = starts[i:i + batch_size]
        batch = torch.stack([xt[a:a + win[0], b:b + win[1], c:c + win[2]] for a, b, c in group])[:, None]
        batch = batch.contiguous(memory_format=layout)
        with torch.autocast(device_type=device.type, dtype=precision, enabled=precision != torch.float32):
            res = model(batch.to(device, non_blocking=True))
        res = {k: v.float().cpu() for k, v in res.items()}
        for k, v in res.items():
            if k not in out:  # cells no window writes (none, as the windows tile the volume) read as no centre
                out[k] = torch.full((1, v.shape[1], *cells), -20.0) if k == "center" else \
                    torch.zeros((1, v.shape[1], *cells))
        for j, st in enumerate(group):
            src, dst = [], []
            for ax in range(3):
                c0 = st[ax] // stride
                n = win[ax] // stride
                lo = 0 if st[ax] == 0 else half
                hi = n if st[ax] + win[ax] >= padded[ax] else n - half
                src.append(slice(lo, hi))
                dst.append(slice(c0 + lo, c0 + hi))
            for k in out:
                out[k][0, :, dst[0], dst[1], dst[2]] = res[k][j, :, src[0], src[1], src[2]]
        progress(min(1.0, (i + len(group)) / len(starts)))
    return out
