"""Self-describing checkpoints: weights + the config that builds the network + where they came from.

Loading needs no code-side constants: the architecture, the grid spacing it was trained on and the
decoding threshold all come out of the file. The shipped weights live in
``ResMTNet/Resources/Models/`` (installed as ``resmtnet/Models`` by pip).
"""

from __future__ import annotations

import datetime as _dt
import subprocess
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .atomic import atomic_write
from .errors import ResMTNetError
from .model import ModelConfig, ResMTNet

FORMAT = "resmtnet-checkpoint/1"
SHIPPED_MODEL_NAME = "resmtnet-phantom.pt"
DEFAULT_THRESHOLD = 0.3


def models_dir() -> Path:
    """Folder of the shipped weights: beside the core in a pip install, or the module's Resources."""
    here = Path(__file__).resolve().parent
    for cand in (here / "Models", here.parent / "Resources" / "Models"):
        if cand.is_dir():
            return cand
    return here.parent / "Resources" / "Models"


def shipped_model_path() -> Path:
    return models_dir() / SHIPPED_MODEL_NAME


def code_version() -> str:
    """Package version plus the git commit when run from a checkout."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        if rev.returncode == 0 and rev.stdout.strip():
            return f"{__version__}+g{rev.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


class LoadedModel:
    """A network ready for inference with everything its checkpoint says about itself."""

    def __init__(self, net: ResMTNet, meta: dict[str, Any], path: Path | None):
        self.net = net
        self.meta = meta
        self.path = path

    @property
    def config(self) -> ModelConfig:
        return self.net.cfg

    @property
    def threshold(self) -> float:
        return float(self.meta.get("decode", {}).get("threshold", DEFAULT_THRESHOLD))

    @property
    def tta_flips(self) -> tuple[tuple[int, ...], ...]:
        """The test-time augmentation passes the threshold was calibrated with (axes flipped in each pass).

        Checkpoints that record none predate the eight-pass default and were calibrated with four passes.
        """
        from .inference import FOUR_MIRROR_FLIPS

        flips = self.meta.get("decode", {}).get("tta_flips")
        if flips is None:
            return FOUR_MIRROR_FLIPS
        try:
            passes = tuple(tuple(int(a) for a in f) for f in flips)
        except (TypeError, ValueError):
            passes = ()
        if not passes or any(len(set(p)) != len(p) or not set(p) <= {0, 1, 2} for p in passes):
            raise ResMTNetError(f"{self.path or 'the model'}: decode.tta_flips must list passes, each a list of "
                                f"distinct axes 0-2 to flip (got {flips!r})")
        return passes

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path) if self.path else None, "config": self.config.to_dict(),
                "provenance": self.meta.get("provenance", {}), "decode": self.meta.get("decode", {}),
                "metrics": self.meta.get("metrics", {})}


def save_checkpoint(path: str | Path, net: ResMTNet, *, provenance: dict[str, Any] | None = None,
                    decode: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None, half: bool = False) -> None:
    """Write atomically (temporary file, then rename)."""
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
             for k, v in net.state_dict().items()}
    ckpt = {
        "format": FORMAT,
        "config": net.cfg.to_dict(),
        "state_dict": state,
        "provenance": {"code_version": code_version(), "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                       **(provenance or {})},
        "decode": {"threshold": DEFAULT_THRESHOLD, **(decode or {})},
        "metrics": metrics or {},
    }
    if extra:
        ckpt.update(extra)
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ResMTNetError(f"{path}: no such model file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 — torch raises many kinds for a bad file
        raise ResMTNetError(f"{path}: not a readable Res-MTNet checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        fmt = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ResMTNetError(f"{path}: not a Res-MTNet checkpoint (format {fmt!r}, expected {FORMAT!r})")
    return ckpt


def load_model(path: str | Path | None = None, device: torch.device | str = "cpu") -> LoadedModel:
    """Load a checkpoint (the shipped weights when ``path`` is None) for inference."""
    p = Path(path) if path is not None else shipped_model_path()
    if path is None and not p.is_file():
        raise ResMTNetError(f"the shipped model {p} is missing; pass a checkpoint with --model")
    ckpt = read_checkpoint(p)
    net = ResMTNet(ModelConfig.from_dict(ckpt["config"]))
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()})
    net.eval().to(device)
    meta = {k: v for k, v in ckpt.items() if k not in ("state_dict",)}
    return LoadedModel(net, meta, p)
