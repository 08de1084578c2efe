"""Typed YAML configs: dataclasses from nested dicts, dotted overrides, strict errors.

Every mistake names the full key path, e.g.
``data.global_batch_size: expected an integer, got 'x'``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value, key or file that cannot be used; the message names the key path."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and build nested dataclasses."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping for section {tp.__name__}, "
                              f"got {value!r}")
        return from_dict(tp, value, path)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1
                          else f"{path}: {value!r} matches none of {_type_name(tp)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{path}: expected one of {list(get_args(tp))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item_tp, *_rest) = get_args(tp) or (Any,)
        items = [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported annotation {_type_name(tp)}")


def check_at_least(section: Any, path: str, minimum: float, names: typing.Sequence[str]) -> None:
    """Raise naming ``path.name`` for the first of ``names`` whose value is below ``minimum``."""
    for name in names:
        if getattr(section, name) < minimum:
            raise ConfigError(f"{path}.{name}: must be >= {minimum}, got {getattr(section, name)}")


def from_dict(cls: type[T], data: dict, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types are errors."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown key (known keys here: {sorted(fields)})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(value, hints[name], f"{path}.{name}" if path else name)
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{path + '.' if path else ''}{missing[0]}: required key is missing")
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check(path)
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-dict form of a config (tuples as lists), suitable for YAML and JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_override(data: dict, assignment: str) -> None:
    """Apply ``a.b.c=value`` to the nested dict ``data``; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r}: expected KEY.PATH=VALUE")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {assignment!r}: empty key component")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"{key}: cannot parse override value {raw!r}: {err}") from err
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: is a value, not a section; "
                              f"cannot set {key}")
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict:
    """Load a YAML mapping with ``yaml.safe_load``; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file: {err.strerror}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load(cls: type[T], path: str | Path | None, overrides: typing.Sequence[str] = (), *,
         prepare: typing.Callable[[dict], object] | None = None) -> T:
    """Read ``path`` (or start from defaults when None), apply overrides, ``prepare`` the nested
    dict (e.g. reject or move renamed keys), build and check ``cls``."""
    data = read_yaml(path) if path is not None else {}
    try:
        for assignment in overrides:
            apply_override(data, assignment)
        if prepare is not None:
            prepare(data)
        return from_dict(cls, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path is not None else str(err)) from None


def save(obj: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))
    tmp.replace(path)


def add_config_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """Add ``--config FILE`` and repeatable ``--set KEY.PATH=VALUE`` to a command line."""
    parser.add_argument("--config", required=required, help="YAML config file (see configs/)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
        help="override one config value, e.g. --set data.global_batch_size=64 (repeatable)",
    )
