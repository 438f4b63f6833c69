"""``vidret train --config recipe.yaml|json``: a recipe's keys are ``TrainConfig`` fields (training/config.py),
checked against the fields' types; flags given on the command line override them (docs/training.md, Config files).

A run's ``config.json`` is itself a recipe: the facts a run records about itself next to its options
(``RUN_RECORD_KEYS``) are read and left aside. Any other unknown key, or a value of the wrong type, is an error that
names the file and the key. Relative paths in a recipe are taken as given, like the flags' (from the folder
``vidret train`` runs in), so a run's config.json repeats the run from where it was started.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from indexing.errors import UserError

# what training/trainer.py adds to config.json besides the TrainConfig fields
RUN_RECORD_KEYS = frozenset(
    {
        "resolved_device",
        "resolved_precision",
        "world_size",
        "num_classes",
        "num_train_videos",
        "mislabelled_known",
        "mislabelled",
    }
)


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(map(repr, typing.get_args(annotation)))
    return getattr(annotation, "__name__", str(annotation))


def _coerce(value: Any, annotation: Any) -> tuple[bool, Any]:
    """(whether ``value`` is of ``annotation``, the value as the field takes it: ints where floats go)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            ok, out = _coerce(value, arg)
            if ok:
                return True, out
        return False, value
    if origin is typing.Literal:
        return value in typing.get_args(annotation), value
    if origin in (list, tuple, set, typing.Sequence):
        args = typing.get_args(annotation) or (Any,)
        if not isinstance(value, list):
            return False, value
        items = [_coerce(v, args[0]) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if annotation is Any:
        return True, value
    if annotation is type(None):
        return value is None, value
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if annotation in (str, Path):
        return isinstance(value, str), value
    return isinstance(value, annotation) if isinstance(annotation, type) else True, value


def read_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe file's TrainConfig values, checked (the run-record keys of a config.json dropped)."""
    from training.config import TrainConfig

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config {path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except (ValueError, ImportError) as exc:
        raise UserError(f"--config {path}: not valid {path.suffix.lstrip('.').upper() or 'YAML'} ({exc})") from None
    except Exception as exc:  # yaml.YAMLError and its kinds
        raise UserError(f"--config {path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping of TrainConfig fields, got {type(data).__name__}")
    hints = typing.get_type_hints(TrainConfig)
    names = [f.name for f in fields(TrainConfig)]
    out = {}
    for key, value in data.items():
        key = str(key)
        if key in RUN_RECORD_KEYS:
            continue
        if key not in hints:
            close = [n for n in names if n.replace("_", "") == key.replace("-", "").replace("_", "")]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"--config {path}: unknown key {key!r}{hint}; the keys are TrainConfig fields")
        ok, coerced = _coerce(value, hints[key])
        if not ok:
            raise UserError(f"--config {path}: key {key!r} must be {_type_name(hints[key])}, got {json.dumps(value)}")
        out[key] = coerced
    return out


def merged_options(config: Path | None, options: dict[str, Any], given: set[str]) -> dict[str, Any]:
    """The TrainConfig values of ``vidret train``: the flags' defaults, then the recipe, then the flags given."""
    from training.config import TrainConfig

    recipe = read_recipe(config) if config is not None else {}
    merged = {**options, **recipe, **{k: options[k] for k in given if k in options}}
    required = [f.name for f in fields(TrainConfig) if f.default is MISSING and f.default_factory is MISSING]
    missing = [k for k in required if merged.get(k) is None]
    if missing:
        flag = "--" + missing[0].replace("_", "-")
        raise UserError(f"{flag} is required (a flag, or the {missing[0]!r} key of --config)")
    return merged
