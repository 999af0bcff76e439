"""Frozen dataclasses from plain mappings (YAML, JSON, checkpoints), with errors that name the file and the key."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path

import yaml

from search.errors import ConfigError


def number(x) -> bool:
    """A finite int or float that is not a bool (YAML's true is an int to Python): the one "is this a number" check
    every config class uses."""
    return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{where} is not valid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def from_mapping(cls, data, where: str):
    """Build the dataclass ``cls`` from ``data``; nested dataclass fields are built recursively.

    Unknown keys and wrongly typed values raise :class:`ConfigError` naming ``where`` and the key path.
    """
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _convert(hints[key], value, f"{where}.{key}")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def _convert(hint, value, where: str):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        hint = args[0] if len(args) == 1 else hint
        origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads 5e-4 as a string
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    return value


def to_mapping(obj) -> dict:
    """A dataclass as plain dicts and lists (JSON- and YAML-ready)."""
    out = dataclasses.asdict(obj)
    return _plain(out)


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
