"""The one checker of parameter files (``oaicohort.field_checks``): label definitions, training
configs and preprocessing parameters all ask it which keys are unknown and whether a value fits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from oaicohort.cohort.definitions import LabelDefinitionError, LabelDefinitionParams
from oaicohort.field_checks import describe, field_hints, fits, kind_of, unknown_fields
from oaicohort.imaging.recipe.params import PreprocessParams


@dataclass
class _Fields:
    name: str = "x"
    count: int = 0
    rate: float = 1.0
    flag: bool = False
    visits: tuple[int, ...] = ()
    folds: list[int] | None = None
    tags: dict[str, str] = field(default_factory=dict)
    mode: Literal["a", "b"] = "a"


HINTS = field_hints(_Fields)


@pytest.mark.parametrize(
    "key,value,expected",
    [
        ("count", 3, (True, 3)),
        ("count", True, (False, None)),  # a bool is never a number
        ("count", 2.5, (False, None)),
        ("rate", 2, (True, 2.0)),
        ("rate", "fast", (False, None)),
        ("flag", 1, (False, None)),
        ("visits", [1, 3], (True, (1, 3))),
        ("visits", "1,3", (False, None)),
        ("folds", None, (True, None)),
        ("folds", [0, "1"], (False, None)),
        ("tags", {"site": "D"}, (True, {"site": "D"})),
        ("mode", "b", (True, "b")),
        ("mode", "c", (False, None)),
    ],
)
def test_values_fit_their_field(key: str, value: object, expected: tuple[bool, object]) -> None:
    ok, converted = fits(value, HINTS[key])
    assert (ok, converted if ok else None) == expected


def test_an_int_can_stay_an_int_where_a_hash_sees_it() -> None:
    assert fits(2, float) == (True, 2.0) and type(fits(2, float)[1]) is float
    assert fits(2, float, int_as_float=False) == (True, 2) and type(fits(2, float, int_as_float=False)[1]) is int


def test_descriptions_and_kinds_name_what_was_expected() -> None:
    assert [describe(HINTS[k]) for k in ("count", "rate", "flag", "visits", "folds", "tags", "mode")] == [
        "an integer", "a number", "true or false", "a list of integers", "a list of integers or null",
        "a table of strings", "one of ['a', 'b']",
    ]  # fmt: skip
    assert (kind_of(None), kind_of("x")) == ("null", "'x' (str)")
    with pytest.raises(TypeError, match="no check for the annotation"):
        fits(1, bytes)


def test_every_parameter_class_refuses_unknown_keys_the_same_way() -> None:
    assert unknown_fields(_Fields, ["count", "zeta", "alpha"]) == ["alpha", "zeta"]
    with pytest.raises(ValueError, match=r"unknown preprocessing parameters: \['zoom'\]"):
        PreprocessParams.from_dict({**PreprocessParams.full().to_dict(), "zoom": 2})
    with pytest.raises(LabelDefinitionError, match=r"unknown label-definition parameters \['zoom'\]"):
        LabelDefinitionParams.from_dict({"name": "x", "zoom": 2})
