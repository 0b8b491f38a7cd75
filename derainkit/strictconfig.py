"""Strict dataclass configs: one reader for every typed config of the kit (runs, models, profiles, tasks).

``strict_from_dict(Cls, data, "run config")`` refuses unknown keys with the list of valid ones, and
``coerce_fields(obj)`` converts each field to the type its annotation declares (YAML reads ``5e-4`` as
text, lists for tuples, ``12.0`` for 12), refusing what does not fit with a message naming the key.
The field types are declared once, on the dataclass; nothing here knows any particular config.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

from derainkit.errors import ConfigError

T = TypeVar("T")

MAX_TEXT = 4096  # longest string value accepted from a config (paths, names): bounds what a config can expand to
MAX_CONFIG_BYTES = 1 << 20  # a config file or value larger than 1 MiB is refused before parsing


def load_yaml(text: str, where: str) -> Any:
    """Parse YAML (or JSON) from a config, refusing texts over MAX_CONFIG_BYTES and aliases (``*name``):
    anchors let a few lines expand into gigabytes (the "billion laughs"), and no kit config needs them."""
    import yaml

    class _NoAliases(yaml.SafeLoader):
        def compose_node(self, parent, index):  # type: ignore[override]
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, "aliases (*name) are not accepted in a config", mark)
            return super().compose_node(parent, index)

    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where}: {len(text)} characters is too large for a config (at most {MAX_CONFIG_BYTES})")
    try:
        return yaml.load(text, Loader=_NoAliases)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML/JSON ({' '.join(str(exc).split())})") from None


def strict_from_dict(cls: type[T], data: Mapping[str, Any] | None, what: str, sort_valid: bool = False,
                     presets: Mapping[str, Mapping[str, Any]] | None = None, default_preset: str = "official") -> T:
    """``cls(**data)`` after refusing unknown keys (ConfigError: ``unknown <what> key(s) [...]; valid keys:
    [...]``); ``None`` gives the defaults. With ``presets``, a ``preset`` key (default ``default_preset``)
    names a dict of values that the other keys given override."""
    if data is None and presets is None:
        return cls()
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{what} must be a mapping of keys to values, got {type(data).__name__}")
    if presets is not None:
        data = dict(data)
        preset = data.pop("preset", default_preset)
        if preset not in presets:
            raise ConfigError(f"{what}: preset={preset!r}; expected one of {list(presets)}")
        data = {**presets[preset], **data}
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in data if k not in valid)
    if unknown:
        shown = sorted(valid) if sort_valid else valid
        raise ConfigError(f"unknown {what} key(s) {unknown}; valid keys: {shown}")
    return cls(**dict(data))


def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a dataclass's fields (``from __future__ import annotations`` makes them text)."""
    return typing.get_type_hints(cls)


def coerce_fields(obj: Any, prefix: str = "") -> None:
    """Convert every field of dataclass ``obj`` in place to its declared type (frozen dataclasses too)."""
    hints = field_types(type(obj))
    for f in dataclasses.fields(obj):
        object.__setattr__(obj, f.name, coerce(prefix + f.name, getattr(obj, f.name), hints[f.name]))


def coerce(name: str, value: Any, annotation: Any) -> Any:
    """``value`` as ``annotation`` (int, float, bool, str, dict, tuple[X, ...], tuple[X, Y], X | None)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None and len(inner) < len(args):
            return None
        if len(inner) == 1:
            return coerce(name, value, inner[0])
        return value  # a union of several types: the dataclass validates it
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} must be true or false")
        return value
    if annotation is int:
        return _as_int(name, value)
    if annotation is float:
        return _as_float(name, value)
    if annotation is str:
        if isinstance(value, Path):
            value = str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{name}={value!r} must be a string")
        if len(value) > MAX_TEXT:
            raise ConfigError(f"{name}: a string of {len(value)} characters is too long (at most {MAX_TEXT})")
        return value
    if annotation is dict or origin is dict:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name} must be a mapping of keys to values, got {value!r}")
        return _plain_json(name, value)
    if annotation is tuple or origin is tuple:
        return _as_tuple(name, value, args)
    return value


def _as_tuple(name: str, value: Any, args: tuple) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (str, int, float)) and not isinstance(value, bool) and (not args or args[-1] is ...):
        value = [value]  # a single value where a list is expected: YAML `val_protocols: matlab-y`
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{name}={value!r} must be a list")
    if args and args[-1] is ...:
        return tuple(coerce(name, v, args[0]) for v in value)
    if args and len(args) == len(value):
        return tuple(coerce(name, v, a) for v, a in zip(value, args))
    return tuple(value)  # wrong length: the dataclass's validate() says what is expected


def _as_float(name: str, v: Any) -> float:
    if isinstance(v, bool):
        raise ConfigError(f"{name}={v!r} must be a number")
    if isinstance(v, str):
        try:
            v = float(v)  # YAML 1.1 reads 5e-4 (no dot) as a string
        except ValueError:
            raise ConfigError(f"{name}={v!r} must be a number") from None
    if not isinstance(v, (int, float)):
        raise ConfigError(f"{name}={v!r} must be a number")
    if not math.isfinite(v):
        raise ConfigError(f"{name}={v!r} must be a finite number")
    return float(v)


def _as_int(name: str, v: Any) -> int:
    if isinstance(v, bool):
        raise ConfigError(f"{name}={v!r} must be an integer")
    if isinstance(v, int):
        return v
    f = math.nan
    if isinstance(v, float):
        f = v
    elif isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            pass
    if math.isfinite(f) and f.is_integer():
        return int(f)
    raise ConfigError(f"{name}={v!r} must be an integer")


def _plain_json(name: str, value: Mapping) -> dict:
    """Plain JSON types only (hashable, YAML-writable); non-finite numbers are refused."""
    try:
        return json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: values must be plain numbers, strings, lists and mappings ({exc})") from None


def to_plain_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a YAML/JSON-friendly dict (tuples as lists); ``strict_from_dict`` round-trips it."""
    return json.loads(json.dumps(dataclasses.asdict(obj), default=str))
