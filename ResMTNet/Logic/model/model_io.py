"""Self-describing checkpoints: weights + the config that builds the network + where they came from.

Loading needs no code-side constants: the architecture, the grid spacing it was trained on and the
decoding threshold all come out of the file. The shipped weights live in
``ResMTNet/Resources/Models/`` (installed as ``resmtnet/Models`` by pip).

Safety: a checkpoint is read with ``torch.load(weights_only=True)``, which unpickles nothing but tensors and
plain values (dict, list, tuple, str, int, float, bool, None), so a file crafted to run code when unpickled
is refused before anything in it runs. Everything a checkpoint holds beyond tensors (config, provenance,
training state) is therefore converted to plain values when saved (:func:`plain`).
"""

from __future__ import annotations

import datetime as _dt
import math
import pickle
import re
import subprocess
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..util.atomic import atomic_write
from ..util.errors import ResMTNetError
from .model import ModelConfig, ResMTNet

FORMAT = "resmtnet-checkpoint/1"
SHIPPED_MODEL_NAME = "resmtnet-phantom.pt"
DEFAULT_THRESHOLD = 0.3


def models_dir() -> Path:
    """Folder of the shipped weights: beside the core in a pip install, or the module's Resources."""
    here = Path(__file__).resolve().parents[1]  # the core's root (this file is in its model/ package)
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
        return checked_threshold(self.meta.get("decode", {}).get("threshold", DEFAULT_THRESHOLD), self.path)

    @property
    def tta_flips(self) -> tuple[tuple[int, ...], ...]:
        """The test-time augmentation passes the threshold was calibrated with (axes flipped in each pass).

        A checkpoint without ``decode.tta_flips`` was calibrated with the four passes of
        :data:`~.inference.FOUR_MIRROR_FLIPS` (the scan and its three single-axis mirror images).
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


def checked_threshold(value: Any, path: Path | str | None = None) -> float:
    """A checkpoint's decoding threshold as a float in [0, 1]; ResMTNetError naming the file otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise ResMTNetError(f"{path or 'the model'}: decode.threshold must be a number in [0, 1] (got {value!r})")
    return float(value)


def plain(value: Any, where: str = "checkpoint") -> Any:
    """``value`` with every non-tensor part turned into plain Python values ``torch.load(weights_only=True)``
    accepts: NumPy arrays become tensors, NumPy scalars Python numbers, paths strings. Anything else that is
    not plain raises TypeError naming where it sits, so a checkpoint that could not be read back is never
    written."""
    if isinstance(value, np.generic):  # before float: np.float64 is a float, yet pickles as a NumPy scalar
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value)).clone()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {plain(k, where): plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise TypeError(f"{where}: a {type(value).__name__} cannot be stored in a checkpoint (tensors and plain "
                    "values only, so that it loads with weights_only=True)")


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
    ckpt = plain(ckpt)
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's dictionary, read without running any code the file may hold (``weights_only``)."""
    path = Path(path)
    if not path.is_file():
        raise ResMTNetError(f"{path}: no such model file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing: the error says it
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _unpickling_reason(e)
        if "Unsupported global" in reason:
            raise ResMTNetError(f"{path}: refused: the file holds Python objects other than tensors and plain "
                                f"values ({reason}); a Res-MTNet checkpoint loads with weights_only=True, so nothing "
                                "in this file was run") from e
        raise ResMTNetError(f"{path}: not a readable Res-MTNet checkpoint: not a torch file of tensors and plain "
                            f"values ({reason}); nothing in it was run") from e
    except Exception as e:  # noqa: BLE001 — torch raises many kinds for a bad file
        raise ResMTNetError(f"{path}: not a readable Res-MTNet checkpoint ({type(e).__name__}: "
                            f"{_first_line(e)})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        fmt = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ResMTNetError(f"{path}: not a Res-MTNet checkpoint (format {fmt!r}, expected {FORMAT!r})")
    state = ckpt.get("state_dict")
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ResMTNetError(f"{path}: its state_dict is not a mapping of names to tensors")
    if not isinstance(ckpt.get("config"), dict):
        raise ResMTNetError(f"{path}: its config is missing or not a mapping")
    return ckpt


def _first_line(e: Exception) -> str:
    """The first line of an exception's text, without terminal escapes (torch's load errors are long)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return text.splitlines()[0].strip() if text else type(e).__name__


def _unpickling_reason(e: Exception) -> str:
    """What torch's weights-only unpickler stumbled on (its message is many lines of advice)."""
    found = re.search(r"Unsupported [^\n]*?(?=\.?(\n|$|\. ))", re.sub(r"\x1b\[[0-9;]*m", "", str(e)))
    return found.group(0).strip() if found else _first_line(e)


def build_network(ckpt: dict[str, Any], path: Path | str) -> ResMTNet:
    """The network a checkpoint describes, with its weights; ResMTNetError (one line) when the config or the
    weights do not fit the network."""
    try:
        net = ResMTNet(ModelConfig.from_dict(ckpt["config"]))
    except (TypeError, ValueError, KeyError, RuntimeError) as e:
        raise ResMTNetError(f"{path}: its config does not describe a Res-MTNet ({type(e).__name__}: "
                            f"{_first_line(e)})") from e
    load_weights(net, ckpt["state_dict"], path)
    return net


def load_weights(net: torch.nn.Module, state: dict[str, torch.Tensor], path: Path | str) -> None:
    """Load a checkpoint's ``state`` into ``net`` (floating weights as float32); ResMTNetError (one line) naming
    the missing, unexpected and mis-shaped entries when they do not fit."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else []
        parts += [f"{len(wrong)} of another shape (e.g. {wrong[0]}: {list(state[wrong[0]].shape)} in the file, "
                  f"{list(expected[wrong[0]].shape)} expected)"] if wrong else []
        raise ResMTNetError(f"{path}: its weights do not fit the network its config describes: " + "; ".join(parts))
    net.load_state_dict(state)


def load_model(path: str | Path | None = None, device: torch.device | str = "cpu") -> LoadedModel:
    """Load a checkpoint (the shipped weights when ``path`` is None) for inference."""
    p = Path(path) if path is not None else shipped_model_path()
    if path is None and not p.is_file():
        raise ResMTNetError(f"the shipped model {p} is missing; pass a checkpoint with --model")
    ckpt = read_checkpoint(p)
    net = build_network(ckpt, p)
    net.eval().to(device)
    meta = {k: v for k, v in ckpt.items() if k not in ("state_dict",)}
    model = LoadedModel(net, meta, p)
    model.threshold  # noqa: B018 — checked now, not after minutes of detection
    model.tta_flips  # noqa: B018
    return model
