"""Typed config loading: YAML (or a dict) -> frozen dataclasses, with errors that name the dotted key.

Every service describes its settings as frozen, keyword-only dataclasses (one per section) in `configs/`.
This module is the single place that turns user input into those objects:

- unknown keys and wrong types raise `ConfigError` naming the dotted path (`train.optim.lr`) and the fix;
- `--set a.b=c` overrides are parsed as YAML scalars and applied before validation;
- `to_dict` gives the resolved config back, for saving into a run folder or printing with `--dry-run`.

Field docs live in `field(metadata={"help": ...})` so `--help` texts and docs can be generated from them.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import types
from collections.abc import Callable
from typing import Any, Literal, NoReturn, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration mistake; the message is one line naming the key and the fix."""


def doc(help_text: str, **kwargs: Any) -> Any:
    """A dataclass field with a help text (shown by --help and docs)."""
    return dataclasses.field(metadata={"help": help_text}, **kwargs)


# ----------------------------------------------------------------------------- reading

def read_yaml(uri: str) -> dict[str, Any]:
    """Read a YAML mapping from a local path (or file:// URI). Config files are local like the code that reads
    them (configs/ imports nothing of ours, so not the storage module); data and runs may live anywhere."""
    if "://" in uri and not uri.startswith("file://"):
        raise ConfigError(f"config file {uri!r}: config files are read from local disk; copy it to a local path "
                          "(each node needs it at the same path)")
    try:
        with open(uri.removeprefix("file://")) as f:
            data = yaml.safe_load(f)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise ConfigError(f"config file {uri!r} not found: pass an existing YAML file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {uri!r} is not valid YAML ({e.__class__.__name__}): fix its syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {uri!r} must hold a mapping at top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as a YAML scalar/list) to a nested dict, returning a copy."""
    out = _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key!r}: {p!r} is not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError:
            node[parts[-1]] = raw
    return out


def load(cls: type[T], uri: str | None = None, overrides: list[str] | None = None,
         base: dict[str, Any] | None = None, root: str = "") -> T:
    """Build `cls` from (base dict) <- (YAML file) <- (overrides). Raises ConfigError on any mistake."""
    data = _deep_copy(base or {})
    if uri:
        data = _merge(data, read_yaml(uri))
    data = apply_overrides(data, overrides or [])
    return from_dict(cls, data, root)


# ----------------------------------------------------------------------------- validation

def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Validate `data` against dataclass `cls`, recursively; `path` is the dotted prefix for messages."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = key_path(path, unknown[0])
        raise ConfigError(f"unknown config key {where!r}: valid keys here are {', '.join(sorted(fields))}")
    kwargs = {name: _coerce(hints[name], value, key_path(path, name)) for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{path or 'config'}: {e}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(path)
    return obj


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key {path!r}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {path!r}: expected a list, got {value!r}")
        item_t = args[0] if args else Any
        items = [_coerce(item_t, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {path!r}: expected a mapping, got {value!r}")
        val_t = args[1] if args else Any
        return {str(k): _coerce(val_t, v, f"{path}.{k}") for k, v in value.items()}
    return _scalar(tp, value, path)


def _scalar(tp: Any, value: Any, path: str) -> Any:
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):  # YAML 1.1 reads `2e-3` as a string
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise ConfigError(f"config key {path!r}: unsupported type {tp!r}")
    raise ConfigError(f"config key {path!r}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")


# ----------------------------------------------------------------------------- writing

def to_dict(obj: Any) -> Any:
    """The resolved config as plain YAML/JSON-ready data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def field_help(cls: type) -> dict[str, str]:
    """Dotted key -> help text for every documented field of `cls` (recursing into sections)."""
    out: dict[str, str] = {}
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update({f"{f.name}.{k}": v for k, v in field_help(hints[f.name]).items()})
        elif "help" in f.metadata:
            out[f.name] = f.metadata["help"]
    return out


FLAG_DEST = "config:"  # argparse dest prefix of options that set a config key (then the dotted key)


def add_config_flags(parser: Any, cls: type, flags: dict[str, tuple[str, dict[str, Any]]]) -> None:
    """Command-line options for config keys: `flags` maps an option to (dotted key of `cls`, argparse kwargs).
    The help text is the field's own doc (one place for it), and the option's value lands in the parsed
    namespace under FLAG_DEST + key, None when not given, for `apply_flags`."""
    helps = field_help(cls)
    for flag, (key, kwargs) in flags.items():
        named = {} if "choices" in kwargs else {"metavar": key.rsplit(".", 1)[-1].upper()}
        parser.add_argument(flag, dest=FLAG_DEST + key, default=None, help=f"{helps[key]} [{key}]",
                            **(named | kwargs))


def apply_flags(data: dict[str, Any], namespace: Any) -> dict[str, Any]:
    """Copy of `data` with each config option that was given (see add_config_flags) set at its dotted key."""
    out = _deep_copy(data)
    for dest, value in vars(namespace).items():
        if not dest.startswith(FLAG_DEST) or value is None:
            continue
        *sections, name = dest.removeprefix(FLAG_DEST).split(".")
        node = out
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key {section!r} must be a section")
        node[name] = value
    return out


def key_path(path: str, key: str) -> str:
    """`path.key`, or `key` at the top level: the dotted name a ConfigError shows."""
    return f"{path}.{key}" if path else key


def run_module(main: Callable[[], int], prog: str) -> NoReturn:
    """`python -m` entry of a service: a ConfigError becomes one line on stderr and exit code 2; Ctrl-C 130."""
    try:
        sys.exit(main())
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = _deep_copy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _deep_copy(d: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in d.items()}


__all__ = ["ConfigError", "doc", "load", "from_dict", "read_yaml", "apply_overrides", "to_dict", "dump_yaml",
           "field_help", "key_path", "run_module", "add_config_flags", "apply_flags", "FLAG_DEST"]
