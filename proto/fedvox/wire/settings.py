"""Layered configuration: dataclass defaults < YAML file < environment < CLI overrides.

Both the server and the client describe their settings as frozen dataclasses
(nested ones become YAML sections). Values from the environment and the
command line arrive as strings and are converted to the field's type, so a
typo or a wrong type fails loudly with the setting's dotted name.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting that is unknown or has the wrong type; the message names it."""


def load_settings(
    cls: type[T],
    *,
    yaml_path: Path | None = None,
    env_prefix: str = "",
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> T:
    """Build `cls` from its defaults, then the YAML file, the environment and `overrides`.

    Environment variables are `<env_prefix><SECTION>_<KEY>` upper-cased (e.g.
    FEDVOX_SERVER_ROUNDS, FEDVOX_SERVER_TRAIN_LR); overrides use dotted names
    (`rounds=5`, `train.lr=0.01`).
    """
    data: dict[str, Any] = {}
    if yaml_path is not None:
        try:
            loaded = yaml.safe_load(yaml_path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {yaml_path}: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {yaml_path} must hold a mapping at the top level")
        data = loaded or {}
    fields = _leaf_fields(cls)
    env = os.environ if environ is None else environ
    if env_prefix:
        for dotted in fields:
            var = env_prefix + dotted.replace(".", "_").upper()
            if var in env:
                _set(data, dotted, env[var], from_string=True)
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise ConfigError(f"unknown setting {key!r}; known: {', '.join(sorted(fields))}")
        _set(data, key, value, from_string=True)
    return _build(cls, data, "")


def add_settings_arguments(parser: argparse.ArgumentParser, flags: Mapping[str, type]) -> None:
    """--config, one shortcut flag per entry of `flags`, and the generic repeatable --set."""
    parser.add_argument("--config", type=Path, help="YAML settings file")
    for name, kind in flags.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any setting, e.g. --set train.lr=0.01 (repeatable)",
    )


def overrides_from(args: argparse.Namespace, flags: Mapping[str, type]) -> dict[str, str]:
    """The --set pairs plus the shortcut flags that were given (flags win)."""
    overrides = parse_overrides(args.set)
    overrides.update({k: str(getattr(args, k)) for k in flags if getattr(args, k) is not None})
    return overrides


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """Turn ["a.b=1", ...] from `--set` flags into a mapping, rejecting malformed pairs."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = value
    return out


def to_dict(obj: object) -> dict[str, Any]:
    assert dataclasses.is_dataclass(obj) and not isinstance(obj, type)
    return dataclasses.asdict(obj)


def _leaf_fields(cls: type[Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            out.update(_leaf_fields(hint, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = hint
    return out


def _set(data: dict[str, Any], dotted: str, value: object, *, from_string: bool) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        if node.get(part) is None:  # absent, or an empty YAML section
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"setting {part!r} must be a section (mapping)")
    node[leaf] = ("__str__", value) if from_string else value


def _build(cls: type[T], data: Mapping[str, Any], prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown setting {prefix + unknown[0]!r}")
    kwargs: dict[str, Any] = {}
    for name in names:
        if name not in data:
            continue
        hint, value, dotted = hints[name], data[name], prefix + name
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            if not isinstance(value, Mapping):
                raise ConfigError(f"setting {dotted!r} must be a section (mapping)")
            kwargs[name] = _build(hint, value, dotted + ".")
        else:
            kwargs[name] = _coerce(hint, value, dotted)
    return cls(**kwargs)


def coerce_value(hint: Any, value: Any, dotted: str) -> Any:
    """Check or convert one value to `hint`; strings are parsed (they come from flags)."""
    if isinstance(value, str) and hint is not str:
        value = ("__str__", value)
    return _coerce(hint, value, dotted)


def _coerce(hint: Any, value: Any, dotted: str) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "__str__":
        value = _parse_string(hint, str(value[1]), dotted)
    converted = _convert(hint, value, dotted)
    if converted is _INVALID:
        raise ConfigError(f"setting {dotted!r}: {value!r} is not a valid {_type_name(hint)}")
    return converted


_INVALID = object()


def _convert(hint: Any, value: Any, dotted: str) -> Any:
    """`value` as `hint`, or _INVALID."""
    origin = typing.get_origin(hint)
    if hint is bool:
        return value if isinstance(value, bool) else _INVALID
    if hint in (int, float, str):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            return _INVALID
        if hint is int and isinstance(value, float) and not value.is_integer():
            return _INVALID
        if hint is not str and isinstance(value, str):
            return _INVALID
        return hint(value)
    if origin is tuple:
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        if not isinstance(value, (list, tuple)):
            return _INVALID
        converted = [_convert(item, v, dotted) for v in value]
        return _INVALID if _INVALID in converted else tuple(converted)
    if origin is dict:
        return dict(value) if isinstance(value, Mapping) else _INVALID
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in typing.get_args(hint):
            return None
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(inner, value, dotted)
    return value if hint is Any else _INVALID


def _parse_string(hint: Any, text: str, dotted: str) -> Any:
    if hint is str:
        return text
    if hint is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"setting {dotted!r}: {text!r} is not a boolean")
    if hint is float or hint is int:
        try:
            number = (
                int(text) if hint is int and text.strip().lstrip("+-").isdigit() else float(text)
            )
        except ValueError:
            raise ConfigError(f"setting {dotted!r}: {text!r} is not a number") from None
        return number
    try:
        return yaml.safe_load(text)  # lists like "[16, 32]" and null
    except yaml.YAMLError:
        return json.loads(text)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))
