"""Training configuration files: ``oai train --config FILE`` (TOML or JSON).

A file holds :class:`~oaimodels.training.config.TrainConfig` keys at its top level, with the
augmentations in an ``augment`` table::

    model = "3d_shufflenet"
    epochs = 4
    batch_size = 16
    lr = 1e-3
    warmup_epochs = 0
    init = "scratch"

    [augment]
    rotate_p = 0.25
    max_rotation_deg = 10.0

A run's own ``config.json`` is a valid config file too: its ``config`` object is read and the
other keys it holds (hash, layout, store, folds, classes, recipe sources) are ignored. Relative
``store`` and ``out`` paths are taken relative to the file's folder. Every key is checked
against the dataclass: an unknown key or a value of the wrong type is an
:class:`~oaicohort.errors.InputFileError` naming the file and the key. Command-line flags
override the file (:func:`merge_config`); keys neither gives take the dataclass defaults.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from pathlib import Path
from typing import Any

from oaicohort.errors import InputFileError
from oaicohort.field_checks import describe, field_hints, fits, kind_of
from oaimodels.data import AugmentParams
from oaimodels.training.config import TrainConfig, TrainingError

# The keys of a run's config.json beside its "config" object (written by training.run).
RUN_CONFIG_KEYS = frozenset({"config", "config_hash", "folds", "layout", "store", "classes", "recipe_sources"})


def read_config_file(path: Path | str) -> dict[str, Any]:
    """The checked option values of a TOML or JSON config file (not yet merged with defaults)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM, as Windows editors write
    except OSError as exc:
        raise InputFileError(path, f"cannot read the config file ({exc.strerror or exc})") from None
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InputFileError(path, f"not valid TOML: {exc}") from None
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputFileError(path, f"not valid JSON: {exc.msg}", line=exc.lineno) from None
    else:
        raise InputFileError(path, f"unknown config format {suffix or '(no suffix)'!r}; use a .toml or .json file")
    if not isinstance(data, dict):
        raise InputFileError(path, "a config file holds a table of options at its top level")
    if "config" in data and isinstance(data["config"], dict):  # a run's config.json
        extra = sorted(set(data) - RUN_CONFIG_KEYS)
        if extra:
            raise InputFileError(path, f"unknown key {extra[0]!r} beside 'config' (a run's config.json has none)")
        data = data["config"]
    # job resources, not a training option: read by oaimodels.training.launcher.read_launcher_table
    data = {k: v for k, v in data.items() if k != "launcher"}
    values = check_values(data, path)
    for key in ("store", "out"):  # relative to the file, as a reader of the file would take them
        if isinstance(values.get(key), str) and not Path(values[key]).expanduser().is_absolute():
            values[key] = str(path.parent / values[key])
    return values


def check_values(data: dict[str, Any], path: Path | str = "<options>") -> dict[str, Any]:
    """``data`` checked key by key against :class:`TrainConfig` (and ``augment`` against
    :class:`AugmentParams`); returns a copy with ``augment`` as a dict of checked values."""
    out: dict[str, Any] = {}
    hints = field_hints(TrainConfig)
    for key, value in data.items():
        if key not in hints:
            raise InputFileError(path, _unknown(key, hints), column=None)
        if key == "augment":
            out[key] = _check_augment(value, path)
        else:
            out[key] = _check(key, value, hints[key], path)
    return out


def merge_config(*layers: dict[str, Any] | None) -> TrainConfig:
    """A config from the dataclass defaults, then each layer in turn (e.g. the CLI's defaults,
    the file's values, the flags given), later layers winning.

    ``augment`` and ``tags`` merge key by key, so ``--rotate-p 0`` keeps the file's other
    augmentations. ``store`` and ``out`` must come from one of the layers.
    """
    values: dict[str, Any] = {}
    augment: dict[str, Any] = {}
    tags: dict[str, str] = {}
    for layer in layers:
        layer = dict(layer or {})
        augment.update(layer.pop("augment", None) or {})
        tags.update(layer.pop("tags", None) or {})
        values.update(layer)
    missing = [k for k in ("store", "out") if values.get(k) in (None, "")]
    if missing:
        raise TrainingError(
            f"no {' or '.join(missing)} given: pass {' and '.join('--' + k for k in missing)} or set "
            f"{' and '.join(missing)} in the --config file"
        )
    return TrainConfig(**values, augment=AugmentParams(**augment), tags=tags)


# --------------------------------------------------------------------------- type checks


def _unknown(key: str, hints: dict[str, Any], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, list(hints), n=1)
    hint = f"; did you mean {prefix + close[0]!r}?" if close else f" (known keys: {', '.join(sorted(hints))})"
    return f"unknown key {prefix + key!r}{hint}"


def _check_augment(value: Any, path: Path | str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputFileError(path, f"key 'augment': expected a table of augmentation options, got {kind_of(value)}")
    hints = field_hints(AugmentParams)
    out = {}
    for key, item in value.items():
        if key not in hints:
            raise InputFileError(path, _unknown(key, hints, "augment."))
        out[key] = _check(f"augment.{key}", item, hints[key], path)
    return out


def _check(key: str, value: Any, hint: Any, path: Path | str) -> Any:
    """``value`` if it fits the annotation ``hint`` (ints are accepted for floats, not bools)."""
    ok, converted = fits(value, hint)
    if not ok:
        raise InputFileError(path, f"key {key!r}: expected {describe(hint)}, got {kind_of(value)}")
    return converted
