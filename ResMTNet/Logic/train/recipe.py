"""A training recipe: every setting a ``resmtnet train`` run is made with, in a TOML file.

A recipe has four tables: ``[data]`` (which cases: the source, phantom counts and seeds), ``[model]`` (the
network of a fresh run), ``[train]`` (:class:`resmtnet.train.training.TrainConfig`) and ``[export]`` (the
threshold calibration of the exported file). A setting a recipe leaves out takes its default here. An
optional ``[finetune]`` table holds a second stage: the settings in it (``[finetune.train]``,
``[finetune.data]``, ``[finetune.export]``) change the first stage's for a run that starts from the first
stage's export; its network is that export's.

``--set TABLE.KEY=VALUE`` changes one setting (``finetune.TABLE.KEY`` the second stage's); the value is
read as TOML (``--set train.lr=5e-4``, ``--set model.blocks_per_stage=[0,2,3,2]``), or as text where it is
no TOML value (``--set data.dir=/data/luna16``). Each stage's resolved recipe is written beside its run
(:func:`to_toml`), and ``--config`` reads that file back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..util.errors import ResMTNetError

#: ``[data]``: key -> (type, default); None: not set
DATA: dict[str, tuple[type, Any]] = {
    "source": (str, "phantoms"),  # phantoms, phantom-folder, luna16 or lidc
    "dir": (str, None),  # the folder of a phantom-folder, luna16 (the .mhd folder) or lidc source
    "annotations": (str, None),  # LUNA16 annotations.csv
    "candidates": (str, None),  # LUNA16 candidates.csv (class 0: hard negatives)
    "fold": (int, None),  # ten-fold split by patient: validate on this fold (0-9)
    "phantoms": (int, 220),
    "phantom_seed": (int, 1000),
    "thick_phantoms": (int, 0),  # training phantoms of the thick-slice mix, beside the screening ones
    "thick_seed": (int, 6000),
    "mass_phantoms": (int, 0),  # training phantoms of the masses mix (30-80 mm masses beside the nodules)
    "mass_seed": (int, 9000),
    # real chest CTs (a folder of case folders, as `evaluate --real` reads them) with synthetic nodules and masses
    # inserted into their lungs (resmtnet.data.real_backgrounds), beside the phantoms; "" for none
    "real_backgrounds": (str, ""),
    "real_copies": (int, 4),  # training cases made from each real case
    "real_seed": (int, 11000),
    "real_masses": (list, [0, 1]),  # (fewest, most) masses inserted into each real training case
    "real_holdout": (list, ["4D-Lung-113_HM10395"]),  # case folders never trained on: the run is judged on them
    "val_phantoms": (int, 12),
    "val_seed": (int, 2000),
    "max_nodules": (int, 8),  # nodules drawn per phantom (1..N)
    # validation and calibration score nodules of at least this (mm); default 4 on phantoms (as `evaluate
    # --phantoms` scores them), 0 on LUNA16 / LIDC-IDRI, whose annotations are the reference
    "val_min_diameter": (float, None),
}
#: ``[model]``: the :class:`resmtnet.model.model.ModelConfig` settings a recipe may choose
MODEL_KEYS = ("spacing_mm", "stem_channels", "stage_channels", "blocks_per_stage", "pyramid_channels",
              "head_channels", "input_windows", "characterisation_heads")
#: ``[export]``
EXPORT: dict[str, tuple[type, Any]] = {
    "fp_rate": (float, 1.0),  # false positives per scan at the calibrated threshold
    "calibration_phantoms": (int, 0),  # phantoms of their own to calibrate on (0: the validation cases)
    "calibration_seed": (int, 5000),
}
TABLES = ("data", "model", "train", "export")
SOURCES = ("phantoms", "phantom-folder", "luna16", "lidc")


def _train_schema() -> dict[str, tuple[type, Any]]:
    from .training import TrainConfig

    out: dict[str, tuple[type, Any]] = {}
    for f in fields(TrainConfig):
        default = getattr(TrainConfig(), f.name)
        out[f.name] = (list, list(default)) if isinstance(default, tuple) else (type(default), default)
    out["loader_workers"] = (int, None)  # None: 3 on a GPU, 0 on the CPU
    return out


def _model_schema() -> dict[str, tuple[type, Any]]:
    from ..model.model import ModelConfig

    base = ModelConfig()
    out = {}
    for k in MODEL_KEYS:
        default = getattr(base, k)
        out[k] = (list, list(default)) if isinstance(default, tuple) else (type(default), default)
    return out


def schema() -> dict[str, dict[str, tuple[type, Any]]]:
    return {"data": DATA, "model": _model_schema(), "train": _train_schema(), "export": EXPORT}


@dataclass
class Recipe:
    """One stage's settings, every key present (None: not set)."""

    data: dict[str, Any]
    model: dict[str, Any]
    train: dict[str, Any]
    export: dict[str, Any]
    #: the [model] keys the recipe itself gives (a fine-tune checks them against its checkpoint's network)
    model_given: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {t: {k: v for k, v in getattr(self, t).items() if v is not None} for t in TABLES}


def _tomllib():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise ResMTNetError("reading a training recipe needs Python 3.11 or later (tomllib)") from None
    return tomllib


def parse_value(text: str) -> Any:
    """A ``--set`` value: a TOML value (number, boolean, array, quoted text), else the text itself."""
    tomllib = _tomllib()
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def read_recipe(path: str | Path | None, settings: list[str] | None = None,
                values: dict[str, Any] | None = None) -> tuple[Recipe, Recipe | None]:
    """The stages of the recipe ``path`` (None: the defaults), changed by ``values`` (``{"TABLE.KEY": value}``,
    the command's plain flags) and then ``settings`` (``--set TABLE.KEY=VALUE``): (first stage, fine-tune
    stage or None). A ResMTNetError names the file and the setting at fault."""
    doc: dict[str, Any] = {}
    where = str(path) if path is not None else "the default recipe"
    if path is not None:
        tomllib = _tomllib()
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except FileNotFoundError:
            raise ResMTNetError(f"{path}: no such recipe file") from None
        except tomllib.TOMLDecodeError as e:
            raise ResMTNetError(f"{path}: not a TOML recipe ({e})") from None
    changes = [(key, value, key) for key, value in (values or {}).items()]
    for item in settings or []:
        key, eq, text = item.partition("=")
        if not eq:
            raise ResMTNetError(f"--set {item!r}: write TABLE.KEY=VALUE (e.g. train.epochs=2)")
        changes.append((key.strip(), parse_value(text.strip()), f"--set {item!r}"))
    for key, value, what in changes:
        parts = key.split(".")
        if len(parts) not in (2, 3) or not all(parts):
            raise ResMTNetError(f"{what}: write TABLE.KEY=VALUE (e.g. train.epochs=2)")
        node = doc
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ResMTNetError(f"{what}: {p} is no table")
        node[parts[-1]] = value
    allowed = schema()
    first_doc = {k: v for k, v in doc.items() if k != "finetune"}
    first = _resolve(first_doc, allowed, where, None)
    if "finetune" not in doc:
        return first, None
    tune_doc = doc["finetune"]
    if not isinstance(tune_doc, dict):
        raise ResMTNetError(f"{where}: finetune must be a table ([finetune.train] ...)")
    if "model" in tune_doc:
        raise ResMTNetError(f"{where}: [finetune.model]: a fine-tune's network is the first stage's")
    return first, _resolve(tune_doc, allowed, f"{where}: [finetune]", first)


def _resolve(doc: dict[str, Any], allowed: dict[str, dict[str, tuple[type, Any]]], where: str,
             base: Recipe | None) -> Recipe:
    unknown = sorted(set(doc) - set(TABLES))
    if unknown:
        raise ResMTNetError(f"{where}: unknown table {unknown[0]!r} (the tables: {', '.join(TABLES)}, finetune)")
    out: dict[str, dict[str, Any]] = {}
    for table in TABLES:
        given = doc.get(table, {})
        if not isinstance(given, dict):
            raise ResMTNetError(f"{where}: {table} must be a table")
        start = dict(getattr(base, table)) if base is not None else {k: d for k, (_t, d) in allowed[table].items()}
        for key, value in given.items():
            if key not in allowed[table]:
                raise ResMTNetError(f"{where}: unknown setting {table}.{key} (the settings of [{table}]: "
                                    f"{', '.join(allowed[table])})")
            start[key] = _checked(value, allowed[table][key][0], f"{where}: {table}.{key}")
        out[table] = start
    model_given = tuple(doc.get("model", {})) if base is None else base.model_given
    return Recipe(out["data"], out["model"], out["train"], out["export"], model_given)


def _checked(value: Any, kind: type, what: str) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is list and isinstance(value, list):
        return value
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ResMTNetError(f"{what}: {value!r} is no {kind.__name__ if kind is not list else 'array'}")


def to_toml(tables: dict[str, dict[str, Any]], comment: str = "") -> str:
    """``{table: {key: value}}`` as TOML (numbers, booleans, text, arrays, inline tables); None is left out."""
    lines = [f"# {line}" for line in comment.splitlines()]
    for table, values in tables.items():
        lines += ["", f"[{table}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {type(v).__name__}")
