"""Dataclass configs and strict YAML loading.

Every YAML file a user writes is loaded through :func:`from_dict`, which rejects unknown keys and
wrong types with an error that names the file and the dotted key (``conf/x.yaml: model.num_layers:
expected int, got 'six'``). A typo must never silently fall back to a default.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional, Type, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is missing, unknown or of the wrong type; the message names the key."""


class _DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first_line: int) -> None:
        super().__init__(f"duplicate key {key!r} (first on line {first_line})")
        self.line = line


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load`` keeps the last of two equal keys; a config must not silently lose one."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: Dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` entries may be overridden on purpose
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise _DuplicateKeyError(key, line, seen[key])
                    seen[key] = line
                except TypeError:  # an unhashable key; SafeLoader reports it below
                    continue
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a YAML mapping; one-line error naming the file (and line) on failure: unreadable or
    non-UTF-8 bytes, invalid YAML, a duplicate key, or a top level that is not a mapping."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKeyError as e:
        raise ConfigError(f"{path}:{e.line}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at top level, got {type(data).__name__}")
    return data


def load_config(cls: Type[T], path: Union[str, Path], overrides: Optional[Dict[str, Any]] = None) -> T:
    """Load ``path`` into dataclass ``cls`` (strict), optionally applying dotted-key overrides."""
    data = load_yaml(path)
    if overrides:
        data = apply_overrides(data, overrides)
    return from_dict(cls, data, where=str(path))


def apply_overrides(data: Dict[str, Any], overrides: Dict[str, Any]) -> Dict[str, Any]:
    """Return a copy of ``data`` with ``{"a.b": v}`` style overrides applied."""
    import copy

    out = copy.deepcopy(data)
    for dotted, value in overrides.items():
        node = out
        keys = dotted.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted}: {k} is not a mapping")
        node[keys[-1]] = value
    return out


def from_dict(cls: Type[T], data: Any, where: str = "config", key: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and types recursively."""
    label = f"{where}: {key}" if key else where
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping, got {_describe(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{key}." if key else ""
        raise ConfigError(
            f"{where}: unknown key {prefix}{unknown[0]!s} (valid keys: {', '.join(sorted(fields))})"
        )
    missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
    if missing:
        prefix = f"{key}." if key else ""
        raise ConfigError(f"{where}: missing required key {prefix}{missing[0]}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        sub = f"{key}.{name}" if key else name
        kwargs[name] = _coerce(hints[name], value, where, sub)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{label}: {e}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as e:
            raise ConfigError(f"{where}: {key + '.' if key else ''}{e}") from None
    return obj


def check_finite(obj: Any) -> None:
    """Raise :class:`ConfigError` naming the first float field of dataclass ``obj`` (or float in a
    list field) that is NaN or infinite: ``lr: .inf`` compares fine with ``lr <= 0`` and then trains NaN."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(f"{f.name}: must be a finite number, got {value}")


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict (for YAML/JSON dumps and checkpoints)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__


def _coerce(tp: Any, value: Any, where: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union or (types.UnionType is not None and isinstance(tp, types.UnionType)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {key}: unexpected {_describe(value)}")
    if typing.get_origin(tp) is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {key}: expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, key)
    if origin in (list, List):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key}: expected a list, got {_describe(value)}")
        (item,) = args or (Any,)
        return [_coerce(item, v, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key}: expected a mapping, got {_describe(value)}")
        kt, vt = args or (Any, Any)
        return {_coerce(kt, k, where, key): _coerce(vt, v, where, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key}: expected float, got {_describe(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: {key}: must be a finite number, got {value}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key}: expected int, got {_describe(value)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key}: expected true/false, got {_describe(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key}: expected string, got {_describe(value)}")
        return value
    return value
