"""Where the network runs: the device, the precision it computes in there, and the torchrun ranks.

Detection, training, validation and the Slicer worker all choose their device here, so ``--device auto``
means the same everywhere and ``--device cuda`` without a GPU is one clear error, never a silent fallback.
"""

from __future__ import annotations

import os

import torch

from .errors import ResMTNetError


def torchrun_ranks() -> tuple[int, int, int]:
    """``(world size, rank, local rank)`` as torchrun sets them (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``);
    ``(1, 0, 0)`` in a plain process."""
    return (int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")),
            int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(device: str = "auto", local_rank: int | None = None) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error, not a silent fallback.

    ``local_rank`` (a torchrun process's): the GPU of that index (``cuda:LOCAL_RANK``); None: the current one.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ResMTNetError(f"unknown device {device!r} (auto, cpu or cuda)")
    if device == "cuda" and not torch.cuda.is_available():
        raise ResMTNetError("--device cuda was asked for, but no CUDA device is available (use auto or cpu)")
    if device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda" if local_rank is None else f"cuda:{local_rank}")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere autocast would be slower."""
    try:
        return bool(torch.backends.cpu.get_cpu_capability() in ("AVX512", "AMX")
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def compute_precision(device: torch.device) -> torch.dtype:
    """The precision the network computes in (autocast), for inference and training alike: float16 on CUDA,
    bfloat16 on CPUs that compute it natively (about 2.3x faster than float32 on a 128³ window here,
    centre probabilities within 0.005), float32 elsewhere."""
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def compute_layout(device: torch.device) -> torch.memory_format:
    """The memory layout the network's inference runs in: channels-last (NDHWC) on the CPU, where oneDNN's 3-D
    convolutions take about a fifth less time in it (a pass over LIDC-IDRI-0001 in 128³ tiles, bfloat16: 0.67 s
    against 0.84 s; centre probabilities within 0.004, bfloat16 summed in another order); the default layout
    elsewhere (not measured on a GPU)."""
    return torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format


def full_resolution_device(device: torch.device) -> torch.device | None:
    """Where detection's full-resolution work (the lung mask's block averages, the resampling to the model
    grid) runs in torch: the detection's device when it is a GPU; None (numpy, scipy and SimpleITK on the
    CPU) otherwise, as torch on the CPU is no faster there (docs/benchmarks.md). The coarse-grid morphology
    of the lung mask stays on the CPU either way: it is small."""
    return device if device.type == "cuda" else None
