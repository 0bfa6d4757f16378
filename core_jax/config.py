"""Typed run configs: YAML files, dataclass schemas, ``key.sub=value`` command-line overrides.

Every problem (missing file, unknown key, wrong type) raises :class:`ConfigError` with a one-line
message that names the key and, for an unknown key, the nearest valid one; :func:`exit_on_error`
turns it into that line on stderr and exit code 2 (and a run stopped by a signal into exit status
128 + signal, see :mod:`core_jax.stopping`). A key a file leaves out keeps its default: the one the
enclosing schema gives its section (``train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=600))``
keeps ``steps=600`` when the file sets only ``train.batch_size``), else the section's own.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import json
import os
import sys
import traceback
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal, TypeVar, Union

import yaml

from core_jax.stopping import Stopped

T = TypeVar("T")


class ConfigError(Exception):
    """A bad config: the message is one line naming the offending key."""


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _valid_keys(schema: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(schema):
        tp = _hints(schema)[f.name]
        keys.append(prefix + f.name)
        if dataclasses.is_dataclass(tp):
            keys.extend(_valid_keys(tp, prefix + f.name + "."))
    return keys


@functools.cache
def _hints(schema: type) -> dict[str, Any]:
    return typing.get_type_hints(schema)


def _nearest(key: str, candidates: Sequence[str]) -> str:
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.0)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _convert(value: Any, tp: Any, key: str, base: Any = None) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it converted (lists -> tuples etc.); a section
    (dataclass) missing keys takes them from ``base``, the enclosing schema's default for it, when given."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return _build(tp, value, key + ".", base)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key)
            except ConfigError:
                continue
        raise bad
    if origin is Literal:
        if value not in args:
            raise bad
        return value
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise bad
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise bad
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise bad
        vt = args[1] if args else Any
        return {k: _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise ConfigError(f"config key '{key}': unsupported annotation {tp!r} in the schema")


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _build(schema: type[T], data: dict, prefix: str = "", base: Any = None) -> T:
    """``schema`` from ``data``; a key ``data`` leaves out keeps its value in ``base`` (an instance: the
    enclosing schema's default for this section) or else the schema's own default."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for name in data:
        if name not in fields:
            raise ConfigError(
                f"unknown config key '{prefix}{name}'"
                + _nearest(prefix + str(name), _valid_keys(schema, prefix))
            )
    kwargs = {}
    for name, f in fields.items():
        tp = _hints(schema)[name]
        if name in data:
            sub = None
            if dataclasses.is_dataclass(tp):  # a section: its defaults as the enclosing schema sets them
                sub = getattr(base, name) if base is not None else _field_default(f)
            kwargs[name] = _convert(data[name], tp, prefix + name, sub)
        elif base is not None:
            kwargs[name] = copy.deepcopy(getattr(base, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"config key '{prefix}{name}' is required and missing")
    return schema(**kwargs)


def from_dict(schema: type[T], data: dict | None) -> T:
    """Validate a nested dict against a dataclass schema."""
    return _build(schema, data or {})


def to_dict(cfg: Any) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Set ``a.b.c=value`` overrides (the value is parsed as YAML) into a nested dict."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}': expected key.sub=value")
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': config key '{p}' is not a section")
            node = child
        node[leaf] = yaml.safe_load(raw) if raw != "" else ""
    return data


def load(schema: type[T], path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> T:
    """Read a YAML file (optional), apply overrides and validate against ``schema``."""
    data = read_yaml(path) if path is not None else {}
    return from_dict(schema, apply_overrides(data, overrides))


def read_yaml(path: str | os.PathLike) -> dict:
    """A YAML config file as a dict; a missing file or bad YAML is a one-line ConfigError."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file '{path}' not found")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file '{path}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}': expected a mapping at the top level")
    return data


def save(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (the run folder keeps it beside the checkpoints)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)


def exit_on_error(fn):
    """Decorator for CLI entry points: a ConfigError prints one line and exits with code 2; a run stopped by
    SIGTERM/SIGINT (:class:`~core_jax.stopping.Stopped`, after its checkpoint) exits with 143/130; any other
    error in a process of a multi-process cluster prints its traceback and exits with 1 at once."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            print(f"config error: {e}", file=sys.stderr)
            sys.exit(2)
        except Stopped as e:
            print(str(e), file=sys.stderr)
            sys.exit(e.exit_code)
        except Exception:
            jax = sys.modules.get("jax")
            if jax is None or not jax.distributed.is_initialized():
                raise
            # One process of a cluster failed alone: a normal exit would wait in JAX's shutdown barrier for
            # processes that are themselves waiting for this one (a hang). Exit now, so that the launcher
            # (launch/local.sh, SLURM, Kubernetes) sees the failure and stops the others.
            traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)

    return wrapper
