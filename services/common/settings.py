"""The one reader of service settings: a frozen dataclass filled from FACEEDIT_* variables (and a config section)."""

from __future__ import annotations

import collections.abc
import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from faceedit.errors import InvalidInputError

PREFIX = "FACEEDIT_"
C = TypeVar("C")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_pairs(text: str, name: str) -> dict[str, str]:
    """'a=1,b=2' → {'a': '1', 'b': '2'} (API keys and similar maps given in one variable)."""
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise InvalidInputError(name, f"expected 'name=value[,name=value]', got {item[:100]!r}")
        out[key.strip()] = value.strip()
    return out


def _convert(raw: object, kind: Any, name: str) -> object:
    if kind is bool or kind == "bool":
        text = str(raw).strip().lower()
        if text not in _TRUE + _FALSE:
            raise InvalidInputError(name, f"expected true or false, got {str(raw)[:100]!r}")
        return text in _TRUE
    if typing.get_origin(kind) in (collections.abc.Mapping, dict) or kind in (Mapping, dict):
        return parse_pairs(str(raw), name) if isinstance(raw, str) else dict(raw)  # type: ignore[call-overload]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(k for k in typing.get_args(kind) if k is not type(None))  # "bool | None" → bool
        return _convert(raw, kind, name)
    for python_type in (int, float, str):
        if kind is python_type:
            try:
                return python_type(raw)
            except (TypeError, ValueError):
                raise InvalidInputError(name, f"expected {python_type.__name__}, got {str(raw)[:100]!r}") from None
    raise TypeError(f"setting {name}: unsupported type {kind!r}")


def read_settings(cls: type[C], env: Mapping[str, str] | None = None, prefix: str = PREFIX,
                  section: Mapping[str, Any] | None = None, **overrides: object) -> C:
    """`cls` (a dataclass) with each field from `<prefix><FIELD>` in `env`, else from `section`
    (e.g. the `faceedit:` block of a TorchServe model-config.yaml), else its default; `overrides` win.

    The environment wins over the section because secrets (a Redis password in a URL) belong in
    the environment, never in files that travel with an archive. An empty variable means "unset".
    """
    env = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    values: dict[str, object] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init:
            continue
        name = prefix + f.name.upper()
        raw: object = env.get(name)
        if raw is None or raw == "":
            raw = (section or {}).get(f.name)
            name = f.name
        if raw is None:
            continue
        values[f.name] = _convert(raw, hints[f.name], name)
    values.update(overrides)
    return cls(**values)
