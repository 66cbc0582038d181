"""Typed settings: build a (nested) dataclass from a YAML/CLI mapping, coercing and naming every bad value.

The one settings loader of thoraxseg: the 2D training configuration
(:mod:`thoraxseg.training.config`) and the study file (:mod:`thoraxseg.study.config`) are dataclasses
built by :func:`build_dataclass`. Unknown keys are refused with the nearest valid name; values are
converted to the declared type (``"false"`` → ``False``, ``"3"`` → ``3``; ``bool("false")`` is never
used), and a value that cannot be converted is reported as ``setting <path>: cannot use <value>
(expected <type>)`` — one :class:`~thoraxseg.errors.ConfigError` line.

Examples
--------
>>> from dataclasses import dataclass
>>> @dataclass
... class Opt:
...     lr: float = 1e-3
...     amp: bool = False
>>> build_dataclass(Opt, {"lr": "0.01", "amp": "false"})
Opt(lr=0.01, amp=False)
>>> build_dataclass(Opt, {"lrr": 1})
Traceback (most recent call last):
...
thoraxseg.errors.ConfigError: unknown setting: lrr (did you mean lr?; valid: amp, lr)
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from thoraxseg.errors import ConfigError

_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


def nearest(name: str, valid: Iterable[str]) -> str | None:
    """The valid name closest to a misspelt ``name`` (difflib), or None when nothing is close.

    >>> nearest("enett", ["enet", "customnet", "nnunet3d"])
    'enet'
    """
    match = difflib.get_close_matches(str(name), sorted(valid), n=1, cutoff=0.6)
    return match[0] if match else None


def unknown_message(unknown: Iterable[str], valid: Iterable[str], what: str = "setting", where: str = "") -> str:
    """``unknown setting(s) in <where>: a, b (did you mean …?; valid: …)``."""
    unknown, valid = sorted(map(str, unknown)), sorted(map(str, valid))
    hints = [f"{u} → {n}" if len(unknown) > 1 else n for u in unknown if (n := nearest(u, valid))]
    plural = "s" if len(unknown) > 1 else ""
    place = f" in {where}" if where else ""
    guess = f"did you mean {', '.join(hints)}?; " if hints else ""
    return f"unknown {what}{plural}{place}: {', '.join(unknown)} ({guess}valid: {', '.join(valid)})"


def choice(value: Any, choices: Iterable[str], where: str) -> str:
    """``value`` if it is one of ``choices``, else a ConfigError naming the setting, the value and the nearest choice.

    >>> choice("enett", ("enet", "customnet"), "arm 'a': model")
    Traceback (most recent call last):
    ...
    thoraxseg.errors.ConfigError: arm 'a': model: 'enett' is not one of enet, customnet (did you mean enet?)
    """
    choices = tuple(choices)
    if isinstance(value, str) and value in choices:
        return value
    guess = nearest(str(value), choices)
    hint = f" (did you mean {guess}?)" if guess else ""
    raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}{hint}")


def is_device(text: str) -> bool:
    """True for the device names every command accepts: ``cpu``, ``cuda``, ``cuda:N``.

    >>> is_device("cuda:1"), is_device("gpu")
    (True, False)
    """
    return re.fullmatch(r"cpu|cuda(:\d+)?", str(text)) is not None


def check_device(device: str, where: str = "device") -> str:
    """``device`` if :func:`is_device` accepts it, else a :class:`ConfigError` naming ``where`` and the value.

    >>> check_device("cuda:1")
    'cuda:1'
    """
    if not is_device(device):
        raise ConfigError(f"{where} must be cpu, cuda or cuda:N, got {device!r}")
    return device


def torch_device(device: str) -> Any:
    """``cpu`` / ``cuda`` / ``cuda:N`` → a ``torch.device`` (the one device check of every arm and command).

    Raises
    ------
    ConfigError
        A name :func:`is_device` refuses, or CUDA asked for where torch sees no GPU.
    """
    check_device(device)
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but torch sees no CUDA GPU (use --device cpu)")
    return torch.device(device)


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the type ``hint`` (bool, int, float, str, Optional, unions, tuple, list,
    dict), or raise :class:`ConfigError` naming the setting ``where``.

    >>> coerce("off", bool, "amp"), coerce("4", int, "epochs"), coerce(None, int | None, "threads")
    (False, 4, None)
    """
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for a in inner:  # a value that already has one of the types keeps it (True for ``str | bool``)
            if isinstance(a, type) and type(value) is a:
                return value
        for a in inner[:-1]:
            try:
                return coerce(value, a, where)
            except ConfigError:
                continue
        return coerce(value, inner[-1], where)
    try:
        if hint is bool:
            if isinstance(value, str) and value.lower() in (*_TRUE, *_FALSE):
                return value.lower() in _TRUE
            if isinstance(value, bool):
                return value
            raise TypeError
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if hint is str:
            if isinstance(value, Mapping | list | tuple) or value is None:
                raise TypeError
            return str(value)
        if hint is Any:
            return value
        if origin is tuple:
            items = list(value)
            if len(items) != len(args):
                raise TypeError
            return tuple(coerce(v, a, where) for v, a in zip(items, args, strict=True))
        if origin is list:
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v]
            return [coerce(v, args[0], where) for v in value]
        if origin is dict:
            if not isinstance(value, Mapping):
                raise TypeError
            return {str(k): coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            if not isinstance(value, Mapping):
                raise ConfigError(f"setting {where}: expected a mapping, got {value!r}")
            return build_dataclass(hint, value, f"{where}.")
    except (TypeError, ValueError):
        raise ConfigError(f"setting {where}: cannot use {value!r} (expected {_type_name(hint)})") from None
    raise ConfigError(f"setting {where}: unsupported type {hint}")  # pragma: no cover


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def build_dataclass(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """An instance of the dataclass ``cls`` from ``data``: unknown keys refused, values coerced, defaults kept.

    Nested dataclass fields take nested mappings; ``prefix`` (``"optim."``) names them in messages.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"setting {prefix.rstrip('.') or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = set(map(str, data)) - set(fields)
    if unknown:
        raise ConfigError(unknown_message(unknown, fields, where=prefix.rstrip(".")))
    kwargs = {str(name): coerce(value, hints[str(name)], f"{prefix}{name}") for name, value in data.items()}
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"setting {prefix}{missing[0]}: required")
    return cls(**kwargs)
