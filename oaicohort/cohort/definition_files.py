"""Label definitions from a TOML file (``oai label --definition-file study.toml``).

The file holds the fields of :class:`~oaicohort.cohort.definitions.LabelDefinitionParams`, at
the top level or under a ``[definition]`` table; fields left out keep the defaults of
``panfilov2022`` (or of the preset named by ``base = "oai_tkr2024"``). Example, incident
radiographic OA (KLG >= 2) within 48 months::

    name = "incident_koa_48m"
    outcome = "incidence"
    incidence_grade = 2
    followup_visits = [1, 3, 5, 6]      # OAI visit codes: 12, 24, 36, 48 months
    horizon_month = 48
    fast_before_month = 36              # an event before 36 months is "fast"
    missing_klg = "ignore"              # a missing follow-up reading is no event
    exclusions = ["replaced_at_baseline", "bmi_missing"]

Every problem is an error naming the file and the field. ``image_store`` is not a definition
field here: where images live is given to ``oai label --store``. A file may not reuse a preset's
name with other parameters (the name would then mean two things).

A file that follows another reading than KLG (``graded_variable``) should say what a missing
reading of it means (``missing_klg``): inherited from ``panfilov2022``, a missing medial JSN
reading (a ``.T`` technical failure too) counts as progression. Left out, it is a warning that
names the consequence (:func:`inherited_missing_warning`).
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from pathlib import Path
from typing import Any

from oaicohort.cohort.definitions import PRESETS, LabelDefinitionError, LabelDefinitionParams, preset
from oaicohort.errors import InputFileError
from oaicohort.field_checks import describe, field_hints, fits
from oaicohort.vocabulary import DEFAULT_DEFINITION

NOT_IN_FILES = ("image_store", "required_views")

log = logging.getLogger(__name__)

# what a follow-up row without a reading of the graded variable becomes, per missing_klg policy
_MISSING_MEANS = {
    "progression_proxy": "counts as progression (the reference's knee-replacement proxy)",
    "outcomes99": "counts as progression only where Outcomes99 or a .P code says the knee was replaced",
    "ignore": "is skipped like an absent row",
}


def _check_type(path: Path, name: str, value: Any, hint: Any) -> Any:
    # ints stay ints in a float field: the definition's hash sees the value as written
    ok, converted = fits(value, hint, int_as_float=False)
    if not ok:
        raise InputFileError(path, f"field {name!r} must be {describe(hint)}, got {value!r}")
    return converted


def definition_from_mapping(data: dict[str, Any], path: Path) -> LabelDefinitionParams:
    """Build and validate a definition from the parsed TOML ``data`` of ``path``."""
    if "definition" in data:
        if set(data) != {"definition"} or not isinstance(data["definition"], dict):
            raise InputFileError(path, "put every field under [definition], or none")
        data = data["definition"]
    data = dict(data)
    base_name = data.pop("base", DEFAULT_DEFINITION)
    if base_name not in PRESETS:
        raise InputFileError(path, f"field 'base' must be one of {sorted(PRESETS)}, got {base_name!r}")
    fields = field_hints(LabelDefinitionParams)
    for name in data:
        if name in NOT_IN_FILES:
            how = "--store PATH" if name == "image_store" else "--store PATH --require VIEWS"
            raise InputFileError(path, f"field {name!r} is not part of a definition: give `oai label {how}`")
        if name not in fields:
            known = sorted(["base", *(f for f in fields if f not in NOT_IN_FILES)])
            raise InputFileError(path, f"unknown field {name!r}; known fields: {', '.join(known)}")
    if "name" not in data:
        raise InputFileError(path, "field 'name' is required (the name labels are stored under)")
    values = {name: _check_type(path, name, value, fields[name]) for name, value in data.items()}
    try:
        params = dataclasses.replace(preset(base_name), **values)
    except LabelDefinitionError as exc:
        raise InputFileError(path, str(exc)) from None
    if params.name in PRESETS and params.hash() != PRESETS[params.name].hash():
        differ = [
            f.name
            for f in dataclasses.fields(LabelDefinitionParams)
            if f.name != "name" and getattr(params, f.name) != getattr(PRESETS[params.name], f.name)
        ]
        raise InputFileError(
            path,
            f"field 'name': {params.name!r} is a preset, and this file changes its {', '.join(differ)}; "
            "choose another name",
        )
    warning = inherited_missing_warning(params, set(values), base_name, path)
    if warning:
        log.warning("%s", warning)
    return params


def inherited_missing_warning(
    params: LabelDefinitionParams, given: set[str], base_name: str, path: Path | str
) -> str | None:
    """One line when a file follows another reading than KLG without saying what a missing reading
    of it means (``missing_klg`` inherited from its base), else None."""
    if params.graded_variable == "klg" or "missing_klg" in given:
        return None
    return (
        f"{path}: graded_variable = {params.graded_variable!r} inherits missing_klg = {params.missing_klg!r} "
        f"from {base_name}: a follow-up without a {params.graded_variable} reading (.T technical failures "
        f"included) {_MISSING_MEANS[params.missing_klg]}; set missing_klg in the file to choose"
    )


def load_definition_file(path: str | Path) -> LabelDefinitionParams:
    """Read a TOML label definition (see the module docstring)."""
    file = Path(path).expanduser()
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8-sig"))  # a BOM, as Windows editors write
    except OSError as exc:
        raise InputFileError(file, f"cannot read definition file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InputFileError(file, "not a UTF-8 text file") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputFileError(file, f"not valid TOML: {exc}") from None
    return definition_from_mapping(data, file)


__all__ = ["definition_from_mapping", "inherited_missing_warning", "load_definition_file"]
