"""Values from files (TOML, JSON, stored parameters) checked against a dataclass's fields.

One home for the two checks every parameter file needs: which keys are not fields
(:func:`unknown_fields`), and whether a value fits a field's annotation (:func:`fits`, with
:func:`describe` saying what was expected). Label definitions, preprocessing parameters and
training configs use them; each caller words its own error (file, line, key).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable
from typing import Any


def field_hints(cls: type) -> dict[str, Any]:
    """The resolved annotation of every dataclass field of ``cls``."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in typing.get_type_hints(cls).items() if k in names}


def unknown_fields(cls: type, keys: Iterable[str]) -> list[str]:
    """The keys that are not fields of the dataclass ``cls``, sorted."""
    names = {f.name for f in dataclasses.fields(cls)}
    return sorted(set(keys) - names)


def fits(value: Any, hint: Any, *, int_as_float: bool = True) -> tuple[bool, Any]:
    """(whether ``value`` fits the annotation ``hint``, the value as the field holds it).

    Booleans are never numbers. An integer fits a float field, made a float unless
    ``int_as_float=False`` (where a hash must see the value as written). A list fits
    ``list[X]`` and ``tuple[X, ...]`` (given as a tuple). Raises ``TypeError`` for an annotation
    it does not know: a new kind of field must be taught here.
    """
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            ok, converted = fits(value, arm, int_as_float=int_as_float)
            if ok:
                return True, converted
        return False, None
    if origin is typing.Literal:
        return value in typing.get_args(hint) and not isinstance(value, bool), value
    if hint is type(None):
        return value is None, None
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, (float(value) if int_as_float else value) if ok else None
    if hint is str:
        return isinstance(value, str), value
    if origin in (list, tuple):
        item = typing.get_args(hint)[0]
        if not isinstance(value, list):
            return False, None
        checked = [fits(v, item, int_as_float=int_as_float) for v in value]
        items = [v for _, v in checked]
        return all(ok for ok, _ in checked), tuple(items) if origin is tuple else items
    if origin is dict:
        _, item = typing.get_args(hint)
        if not isinstance(value, dict):
            return False, None
        checked_items = {k: fits(v, item, int_as_float=int_as_float) for k, v in value.items()}
        return all(ok for ok, _ in checked_items.values()), {k: v for k, (_, v) in checked_items.items()}
    raise TypeError(f"no check for the annotation {hint!r}")


def describe(hint: Any) -> str:
    """What a value of the annotation ``hint`` is, in a file's words ("a list of integers")."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return f"one of {list(typing.get_args(hint))}"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if hint in names:
        return names[hint]
    if origin in (list, tuple):
        return f"a list of {_plural(typing.get_args(hint)[0])}"
    if origin is dict:
        return f"a table of {_plural(typing.get_args(hint)[1])}"
    return str(hint)


def _plural(hint: Any) -> str:
    return describe(hint).removeprefix("an ").removeprefix("a ") + "s"


def kind_of(value: Any) -> str:
    """A value as an error message shows it: ``'fast' (str)``, or ``null``."""
    return "null" if value is None else f"{value!r} ({type(value).__name__})"
