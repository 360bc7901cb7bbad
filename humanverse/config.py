"""Typed config loading: YAML -> nested dataclasses, validated before any work starts (used by the
builder and the trainer alike).

Unknown keys, wrong types and bad values are refused with one sentence naming the key path, the
bad value and what would be accepted (docs/architecture.md, house style).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type, or out of range."""


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {args}.")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{path}: {value!r} is not one of {list(get_args(tp))}.")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping of {tp.__name__} fields, got {value!r}.")
        return from_dict(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}.")
        (item,) = get_args(tp)[:1] or (Any,)
        items = [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}.")
        _, vt = get_args(tp)
        return {str(k): _convert(vt, v, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}.")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}.")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys; nested dataclasses recurse."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}unknown key(s) {unknown}; known keys are {sorted(fields)}.")
    kwargs = {k: _convert(hints[k], v, f"{path}.{k}" if path else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path or cls.__name__}: {e}") from e


def load_yaml(cls: type[T], path: str | Path | None, overrides: Mapping[str, Any] | None = None,
              section: str | None = None) -> T:
    """Load ``cls`` from a YAML file (or defaults when ``path`` is None), then apply overrides.

    ``section``: a combined preset (e.g. ``model/presets/demo.yaml``, with ``stage1:`` and
    ``stage2:`` sections) is read from that top-level section when the file has one."""
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist.")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
            raise ConfigError(f"config file {p} is not valid YAML{where}: {problem} (plain YAML only: no tabs "
                              "for indentation, no !!python tags).") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {p} is not UTF-8 text.") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level, got {type(loaded).__name__}.")
        if section is not None and isinstance(loaded.get(section), dict):
            loaded = loaded[section]
        data = loaded
    for k, v in (overrides or {}).items():
        set_dotted(data, k, v)
    return from_dict(cls, data)


def get_dotted(data: dict, key: str) -> Any:
    """``data[a][b]`` for ``key`` ``"a.b"``."""
    for part in key.split("."):
        data = data[part]
    return data


def set_dotted(data: dict, key: str, value: Any) -> None:
    """``data[a][b] = value`` for ``key`` ``"a.b"``; a key through a value that is not a section is
    refused with one sentence."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"{key!r} is not a config key (dotted names like detect.score_threshold).")
    node = data
    for n, p in enumerate(parts[:-1]):
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(parts[:n + 1])} is a value, not a section, so {key} cannot be set.")
    node[parts[-1]] = value


def to_dict(cfg: Any) -> dict:
    """A dataclass tree as plain JSON-able data (tuples become lists)."""
    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(cfg)


def check(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds (for ``__post_init__``)."""
    if not condition:
        raise ConfigError(message)


__all__ = ["ConfigError", "check", "from_dict", "get_dotted", "load_yaml", "set_dotted", "to_dict"]
