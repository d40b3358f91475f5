"""Plain dicts (from YAML) -> typed dataclasses, strictly.

Every config object below the CLI is a dataclass (STYLE 8). This module is the one place where
untyped input becomes typed: unknown keys are rejected with the nearest valid key, values are
checked (and harmlessly coerced: 3 -> 3.0 for a float) against the field annotations, and every
error names the key path. Numbers must be finite (NaN or infinity is never a meaningful setting).
A dataclass's own checks (`__post_init__` raising ValueError) become a ConfigError at the key of
the first field the message names. Field docs live in `field(metadata={"help": ...})`.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from hybrid.errors import ConfigError, did_you_mean, shown


def help_of(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(str(a).lower() if isinstance(a, bool) else repr(a) for a in get_args(tp))  # YAML's true
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` as type `tp`, or a ConfigError naming `key` and the expected type."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if isinstance(value, typing.Hashable) and value in get_args(tp):
            return value
        raise ConfigError(f"expected one of {type_name(tp)}, got {shown(value)}"
                          + did_you_mean(str(value), [str(a) for a in get_args(tp)]), key=key)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        errors = []
        for arg in get_args(tp):
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(f"expected {type_name(tp)}, got {shown(value)}", key=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected {type_name(tp)}, got {shown(value)}", key=key)
        args = [a for a in get_args(tp) if a is not Ellipsis]
        item_tp = args[0] if args else Any
        items = [coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {shown(value)}", key=key)
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"expected true or false, got {shown(value)}", key=key)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:  # 1e3, not 1e308
            return int(value)
        raise ConfigError(f"expected an integer, got {shown(value)}", key=key)
    if tp is float:
        return _finite(value, key)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"expected a string, got {shown(value)}", key=key)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"expected {type_name(tp)}, got {shown(value)}", key=key)


def _finite(value: Any, key: str) -> float:
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int beyond float's range
            pass
    elif isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            number = float(value)
        except ValueError:
            pass
    if number is None or not math.isfinite(number):
        raise ConfigError(f"expected a finite number, got {shown(value)}", key=key)
    return number


def from_dict(cls: type, data: Any, key: str = "", *, what: str | None = None) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and ill-typed values.

    `what` names the thing in messages ("layer 'mamba'"); `key` is the key path of `data`.
    """
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of {what or cls.__name__} settings, got {shown(data)}",
                          key=key or None)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.metadata.get("internal")}
    kwargs = {}
    for name, value in data.items():
        sub = f"{key}.{name}" if key else str(name)
        if name not in fields:
            accepted = ", ".join(fields) or "none"
            unknown = f"unknown {what} argument" if what else "unknown key"
            raise ConfigError(f"{unknown} {name!r}{did_you_mean(name, fields)}; "
                              f"accepted: {accepted}", key=sub)
        kwargs[name] = coerce(value, hints[name], sub)
    missing = [n for n, f in fields.items() if n not in kwargs and field_default(f) is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing required {'argument' if len(missing) == 1 else 'arguments'} "
                          f"{', '.join(missing)}" + (f" of {what}" if what else ""), key=key or None)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:  # __post_init__ checks
        if isinstance(err, ConfigError):
            raise err.located(key=key or None)
        named = _field_named(str(err), list(fields))
        raise ConfigError(str(err), key=".".join(p for p in (key, named) if p) or None) from None


def _field_named(message: str, names: list[str]) -> str | None:
    """The field a __post_init__ message is about: the first field name it mentions (as a word)."""
    found = [(m.start(), name) for name in names if (m := re.search(rf"(?<![\w.]){re.escape(name)}\b|"
                                                                    rf"\.{re.escape(name)}\b", message))]
    return min(found)[1] if found else None


def non_default_items(obj: Any) -> dict[str, Any]:
    """Fields of dataclass `obj` whose values differ from their defaults (for `hybrid show`)."""
    out = {}
    for f in dataclasses.fields(obj):
        default = field_default(f)
        value = getattr(obj, f.name)
        if default is dataclasses.MISSING or value != default:
            out[f.name] = value
    return out


def describe_fields(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) for each field, for `hybrid layers`."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = field_default(f)
        rows.append((f.name, type_name(hints[f.name]),
                     "required" if default is dataclasses.MISSING else default, help_of(f)))
    return rows
