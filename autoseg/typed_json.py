"""Dataclasses from JSON a user may have edited: every field checked against its type hint.

``from_json(cls, data, where)`` builds ``cls`` (a dataclass, nested dataclasses, lists, dicts,
``X | None``, ``Literal``) and raises :class:`~autoseg.errors.UserError` naming the file and the
field's path (``configurations.3d_fullres.patch_size[1]``) for an unknown or missing field or a
value of the wrong type, before anything runs on a plan that only looks right. Numbers are not
coerced from strings; an int is accepted where a float is expected; bools are not numbers.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from autoseg.errors import UserError

T = TypeVar("T")


def _fail(where: str, path: str, message: str) -> UserError:
    return UserError(f"{where}: {path or 'top level'}: {message}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _convert(hint: Any, value: Any, where: str, path: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where, path)
            except UserError as e:
                errors.append(str(e))
        raise errors[0] if len(errors) == 1 else _fail(where, path, f"{value!r} is none of the allowed types")
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise _fail(where, path, f"{value!r} is not one of {', '.join(map(repr, typing.get_args(hint)))}")
        return value
    if dataclasses.is_dataclass(hint):
        return _dataclass(hint, value, where, path)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise _fail(where, path, f"expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return [_convert(item, v, where, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(where, path, f"expected an object, got {type(value).__name__}")
        _, item = typing.get_args(hint)
        return {str(k): _convert(item, v, where, _join(path, str(k))) for k, v in value.items()}
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(where, path, f"expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(where, path, f"expected an integer, got {type(value).__name__} {value!r}")
        return value
    if hint in (str, bool):
        if not isinstance(value, hint):
            raise _fail(where, path, f"expected {'text' if hint is str else 'true or false'}, "
                                     f"got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"typed_json cannot read type {hint!r}")  # a programming error, not a user's


def _dataclass(cls: type[T], data: Any, where: str, path: str) -> T:
    if not isinstance(data, dict):
        raise _fail(where, path, f"expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise _fail(where, path, f"unknown field(s) {', '.join(unknown)}")
    missing = [n for n, f in fields.items() if n not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise _fail(where, path, f"missing field(s) {', '.join(missing)}")
    return cls(**{n: _convert(hints[n], v, where, _join(path, n)) for n, v in data.items()})


def from_json(cls: type[T], data: Any, where: str) -> T:
    """``cls`` built from parsed JSON, every field type-checked; ``where`` names the source."""
    return _dataclass(cls, data, where, "")
