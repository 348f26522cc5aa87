"""Progression-label definitions as data: parameters, canonical hash and the named presets.

A definition says which follow-up X-ray readings are examined, what counts as progression, how
a knee is classified (``none`` / ``fast`` / ``slow``) and which knees are excluded from the
cohort. Definitions are stored in ``label_definitions`` under their name and the sha256 of their
canonical JSON, so several coexist and old labels stay reproducible.

Presets
-------
``panfilov2022`` (the default) reproduces the reference algorithm of Panfilov et al. (ISBI 2022,
REFERENCE.md section 1) exactly, quirks included:

- follow-ups examined 12, 24, 36, 72, 96 months; the 48-month reading is *not* looked at;
- among reading-project duplicates of a knee at a visit the first row wins, whatever the later
  rows say. "First" is ``reading_order``: by default (``project``) project 15 first, then 37
  and 42 (42 counted as 37: a knee-visit never has both in the real files; if one did, 37's),
  then the others, the file order ordering only rows of one project. That is the reference's
  "first in file order" on the ASCII release (where project 15 always comes first) and gives the
  same labels whatever the row order of a package (``file``: the file order alone);
- a follow-up row whose KLG is missing (prosthesis ``.P``, technical failure ``.T``, any missing
  code) counts as progression with an "increase" of 5 - KL0 (the reference's proxy for a knee
  replacement);
- 0 -> 1 never counts (a change to KLG 1 is not progression), decreases never count;
- a knee that never progresses is a non-progressor only if its subject appears in the 96-month
  reading file (either knee, any row); otherwise it is lost to follow-up;
- then knees are dropped for a knee replacement at baseline, missing BMI, or no baseline
  SAG_3D_DESS series, in that order.

``oai_tkr2024`` is the better-founded variant (our naming; not a published algorithm):

- the 48-month reading is examined too (a first progression at 48 months is ``fast``: the
  fast/slow boundary stays at 72 months);
- knee replacement is taken from what says so: Outcomes99 (``V99E?KRPSN`` = 1, at the first
  visit after the replacement) or a ``.P`` (prosthesis) KLG code, counted as progression with
  increase 5 - KL0. Other missing KLG codes (technical problems, missing forms) are skipped like
  absent rows instead of being called progression;
- among duplicates the first *graded* row in file order wins (a reading project that could not
  grade the film does not hide one that could);
- a non-progressor must have a graded reading of that knee at the last examined visit
  (96 months); the subject merely being in the 96-month file is not evidence about the knee.

Other definitions are made with ``dataclasses.replace(preset("panfilov2022"), name=..., ...)``
or from a TOML file of the same fields (:mod:`oaicohort.cohort.definition_files`,
``oai label --definition-file``). Besides visits, horizon and the fast/slow boundary they choose:

- the graded reading followed (``graded_variable``): KLG, or medial/lateral joint-space
  narrowing (``XRJSM``/``XRJSL``), with its own increase rule (``min_increase``; the 0 -> 1 rule
  ``count_0_to_1`` applies to whichever reading is graded). A missing reading of it counts as
  ``missing_klg`` says; a replaced knee records no increase for JSN (KLG: 5 - KL0);
- ``outcome = "incidence"``: an event is the first follow-up at or above ``incidence_grade``;
  a knee already at or above it at baseline is excluded (``baseline_not_below_incidence_grade``);
- ``outcome = "time_to_event"``: the progression rule above decides events, and every knee also
  gets ``time_months`` (to its first event, or to its last graded reading: censored) and
  ``event_type`` (``progression``, ``knee_replacement`` - a competing event of its own - or none).
  A knee followed only part of the way is censored instead of lost to follow-up; only a knee
  without any graded follow-up reading is excluded (``no_follow_up``). The label is the
  fixed-window one where the definition decides it, and empty for a knee censored before the
  definition sees it as a non-progressor (:mod:`oaicohort.cohort.time_to_event`).

Identity: the hash covers every parameter but the name, ``image_store`` (where images live) and
``required_views`` (which of its views a knee needs);
parameters added after the presets were first hashed count only when they differ from their
default (:data:`HASHED_ONLY_WHEN_SET`), so stored hashes stay valid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from oaicohort.db.schema import ImageSeries, LabelDefinition
from oaicohort.db.text import text_problem
from oaicohort.errors import OAIError
from oaicohort.field_checks import unknown_fields
from oaicohort.visits import VISIT_MONTHS, XRAY_VISITS
from oaicohort.vocabulary import DEFAULT_DEFINITION, STORE_VIEWS

MissingKlgPolicy = Literal["progression_proxy", "outcomes99", "ignore"]
GradedVariable = Literal["klg", "jsn_medial", "jsn_lateral"]
Outcome = Literal["progression", "incidence", "time_to_event"]
NonProgressorRule = Literal["subject_at_last_visit", "knee_at_last_visit", "none"]
DuplicatePolicy = Literal["first", "first_graded"]
ReadingOrder = Literal["project", "file"]


# Exclusions decided by the label algorithm itself, in the order they are checked.
# (A baseline KLG outside ``baseline_klg_allowed`` gives ``baseline_klg_<k>``, e.g. baseline_klg_4.)
NO_BASELINE_READING = "no_baseline_reading"
BASELINE_KLG_MISSING = "baseline_klg_missing"
# incidence: the graded variable is already at or above the incidence grade at baseline
BASELINE_NOT_BELOW_INCIDENCE = "baseline_not_below_incidence_grade"
LOST_TO_FOLLOW_UP = "lost_to_follow_up"
# time_to_event: no graded follow-up reading and no event (nothing to censor at)
NO_FOLLOW_UP = "no_follow_up"
# Cohort exclusions applied after labelling, in the order a definition lists them.
REPLACED_AT_BASELINE = "replaced_at_baseline"
BMI_MISSING = "bmi_missing"
NO_BASELINE_DESS = "no_baseline_dess"
# Applied last, only when the labels are derived for an image store. With required views
# (``oai label --store S --require sag,xray``) the reason names the view: image_missing_xray.
IMAGE_FAILED = "image_failed"
IMAGE_MISSING = "image_missing"


def image_reasons(view: str) -> tuple[str, str]:
    """(failed, missing) exclusion reasons of a required ``view`` of the image store."""
    return f"{IMAGE_FAILED}_{view}", f"{IMAGE_MISSING}_{view}"


# a knee whose subject has no site (blank V00SITE, or a participant missing from Enrollees) is
# excluded: the held-out-site split could put it in a training fold although it may belong to
# the held-out site
SITE_MISSING = "site_missing"
COHORT_EXCLUSIONS: tuple[str, ...] = (REPLACED_AT_BASELINE, BMI_MISSING, NO_BASELINE_DESS)


# Parameters added after the presets' hashes were published -> their default; see canonical_json.
# (One entry per parameter: other additions append their own line.)
HASHED_ONLY_WHEN_SET: dict[str, Any] = {
    "read_projects": (),
    "project_42_as_37": True,
    "graded_variable": "klg",
    "min_increase": 1,
    "outcome": "progression",
    "incidence_grade": 2,
    "reading_order": "project",
}


class LabelDefinitionError(OAIError):
    """A label definition's parameters are inconsistent, or its name is unknown."""


class UnknownDefinitionError(LabelDefinitionError):
    """A definition name that is neither a preset nor stored: a usage error (exit code 2)."""

    exit_code = 2


@dataclass(frozen=True)
class LabelDefinitionParams:
    """Everything that decides a knee's progression label; hashed to identify stored labels.

    ``name`` is not part of the hash: two names with the same parameters give the same labels.
    """

    name: str = DEFAULT_DEFINITION
    # OAI visit codes of the follow-up readings walked, in order (12, 24, 36, 72, 96 months)
    followup_visits: tuple[int, ...] = (1, 3, 5, 8, 10)
    # a first progression seen before this month is "fast", from it on "slow"
    fast_before_month: int = 72
    # follow-ups (and knee replacements) after this month are not looked at
    horizon_month: int = 96
    # whether a change 0 -> 1 is progression (the reference: never)
    count_0_to_1: bool = False
    # a follow-up row that is present but has no KLG
    missing_klg: MissingKlgPolicy = "progression_proxy"
    # what makes a knee without progression a non-progressor rather than lost to follow-up
    non_progressor_requires: NonProgressorRule = "subject_at_last_visit"
    baseline_klg_allowed: tuple[int, ...] = (0, 1, 2, 3)
    # which row of several reading projects (same knee, same visit) is used
    duplicates: DuplicatePolicy = "first"
    # cohort exclusions after labelling, applied in this order
    exclusions: tuple[str, ...] = COHORT_EXCLUSIONS
    # the baseline series whose absence excludes a knee (``no_baseline_dess``)
    dess_sequence: str = "SAG_3D_DESS"
    # absolute path of a volume store: knees without a good baseline volume there are excluded
    # (recorded with the labels; not part of the definition's identity, see canonical_json)
    image_store: str | None = field(default=None)
    # views of ``image_store`` every included knee must have a good baseline volume of, in the
    # order checked (``oai label --require sag,xray``: one test set for every row of Table 1, as
    # the reference keeps only knees with clinical data, DESS and radiograph). Empty: any MRI view.
    # A derivation option like image_store: recorded, not part of the identity.
    required_views: tuple[str, ...] = ()
    # --- what is graded and what counts as an event (issue 15) ---
    # the reading followed over time: KLG, or medial/lateral joint-space narrowing (XRJSM/XRJSL)
    graded_variable: GradedVariable = "klg"
    # progression: a follow-up at least this much above baseline (KLG: 1 = any increase)
    min_increase: float = 1
    # "progression" (an increase), "incidence" (baseline below incidence_grade, later at or above),
    # or "time_to_event" (the progression rule, with the time to the first event or to censoring)
    outcome: Outcome = "progression"
    incidence_grade: int = 2
    # --- which readings count ---
    # reading projects (READPRJ) whose readings are used; empty: every project (the reference).
    # OAI notes advise treating project 42 like 37: with project_42_as_37, naming 37 includes 42
    read_projects: tuple[int, ...] = ()
    project_42_as_37: bool = True
    # which of several readings of a knee at a visit comes first: "project" (15, then 37/42, then
    # the others; file order only between rows of one project) or "file" (file order alone)
    reading_order: ReadingOrder = "project"

    @property
    def used_read_projects(self) -> frozenset[int]:
        """The reading projects kept (empty: all)."""
        extra = {42} if self.project_42_as_37 and 37 in self.read_projects else set()
        return frozenset(self.read_projects) | extra

    def __post_init__(self) -> None:
        for name in ("followup_visits", "baseline_klg_allowed", "exclusions", "read_projects", "required_views"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise LabelDefinitionError(f"label definition {self.name!r}: {name} must be a sequence")
            object.__setattr__(self, name, tuple(value))
        self._validate()

    def _validate(self) -> None:
        where = f"label definition {self.name!r}"
        if not self.name or not isinstance(self.name, str):
            raise LabelDefinitionError("a label definition needs a non-empty name")
        # checked here, so that SQLite refuses what PostgreSQL would (a NUL, a name too long)
        for field_name, column in (("name", LabelDefinition.name), ("dess_sequence", ImageSeries.sequence)):
            problem = text_problem(str(getattr(self, field_name)), column)
            if problem is not None:
                raise LabelDefinitionError(f"label definition {field_name} {getattr(self, field_name)!r}: {problem}")
        visits = self.followup_visits
        if not visits:
            raise LabelDefinitionError(f"{where}: followup_visits is empty")
        bad = [v for v in visits if v not in XRAY_VISITS or v == 0]
        if bad:
            raise LabelDefinitionError(
                f"{where}: followup_visits {bad} are not follow-up X-ray visits "
                f"(allowed: {[v for v in XRAY_VISITS if v]})"
            )
        if list(visits) != sorted(set(visits)):
            raise LabelDefinitionError(f"{where}: followup_visits must be increasing, got {list(visits)}")
        if not self.examined_visits:
            raise LabelDefinitionError(f"{where}: no follow-up visit within horizon_month={self.horizon_month}")
        if self.fast_before_month <= 0:
            raise LabelDefinitionError(f"{where}: fast_before_month must be positive")
        _check_choice(where, "missing_klg", self.missing_klg, MissingKlgPolicy)
        _check_choice(where, "non_progressor_requires", self.non_progressor_requires, NonProgressorRule)
        _check_choice(where, "duplicates", self.duplicates, DuplicatePolicy)
        _check_choice(where, "reading_order", self.reading_order, ReadingOrder)
        if not self.baseline_klg_allowed or any(k not in (0, 1, 2, 3, 4) for k in self.baseline_klg_allowed):
            raise LabelDefinitionError(
                f"{where}: baseline_klg_allowed must be KL grades 0-4, got {list(self.baseline_klg_allowed)}"
            )
        _check_choice(where, "graded_variable", self.graded_variable, GradedVariable)
        _check_choice(where, "outcome", self.outcome, Outcome)
        if isinstance(self.min_increase, bool) or not isinstance(self.min_increase, (int, float)):
            raise LabelDefinitionError(f"{where}: min_increase must be a number, got {self.min_increase!r}")
        if self.min_increase <= 0:
            raise LabelDefinitionError(f"{where}: min_increase must be positive, got {self.min_increase}")
        top = 4 if self.graded_variable == "klg" else 3
        if isinstance(self.incidence_grade, bool) or self.incidence_grade not in range(1, top + 1):
            raise LabelDefinitionError(
                f"{where}: incidence_grade must be a grade 1-{top} of {self.graded_variable}, got {self.incidence_grade!r}"
            )
        bad_views = [v for v in self.required_views if v not in STORE_VIEWS]
        if bad_views or len(set(self.required_views)) != len(self.required_views):
            raise LabelDefinitionError(
                f"{where}: required views must be distinct views of a volume store "
                f"({', '.join(STORE_VIEWS)}), got {list(self.required_views)}"
            )
        if self.required_views and self.image_store is None:
            raise LabelDefinitionError(f"{where}: required views {list(self.required_views)} need an image store")
        unknown = [e for e in self.exclusions if e not in COHORT_EXCLUSIONS]
        if unknown or len(set(self.exclusions)) != len(self.exclusions):
            raise LabelDefinitionError(
                f"{where}: exclusions must be distinct names from {list(COHORT_EXCLUSIONS)}, "
                f"got {list(self.exclusions)}"
            )

    @property
    def examined_visits(self) -> tuple[int, ...]:
        """The follow-up visit codes actually walked (those within the horizon)."""
        return tuple(v for v in self.followup_visits if VISIT_MONTHS[v] <= self.horizon_month)

    @property
    def last_visit(self) -> int:
        """The visit a non-progressor must be seen at (the last examined one)."""
        return self.examined_visits[-1]

    @property
    def exclusion_reasons(self) -> tuple[str, ...]:
        """Every exclusion reason this definition can give, in the order they are checked
        (``baseline_klg_<k>`` stands for each grade not allowed)."""
        grades = tuple(f"baseline_klg_{k}" for k in range(5) if k not in self.baseline_klg_allowed)
        graded: tuple[str, ...] = ()
        if self.graded_variable != "klg":
            graded += (self.baseline_graded_missing,)
        if self.outcome == "incidence":
            graded += (BASELINE_NOT_BELOW_INCIDENCE,)
        images: tuple[str, ...] = ()
        if self.required_views:
            images = tuple(r for v in self.required_views for r in image_reasons(v))
        elif self.image_store:
            images = (IMAGE_FAILED, IMAGE_MISSING)
        return (
            NO_BASELINE_READING,
            BASELINE_KLG_MISSING,
            *grades,
            *graded,
            NO_FOLLOW_UP if self.time_to_event else LOST_TO_FOLLOW_UP,
            *self.exclusions,
            *images,
        )

    @property
    def time_to_event(self) -> bool:
        """Whether knees get a time to their first event or to censoring (``time_months``)."""
        return self.outcome == "time_to_event"

    @property
    def baseline_graded_missing(self) -> str:
        """Exclusion reason of a knee whose graded variable has no baseline value."""
        return BASELINE_KLG_MISSING if self.graded_variable == "klg" else f"baseline_{self.graded_variable}_missing"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able parameters (tuples as lists), name included."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def canonical_json(self) -> str:
        """The hashed form: every parameter but the name, sorted keys, no whitespace.

        Where images live is not part of a definition's identity: ``image_store`` is hashed as
        null whatever it holds (``oai label --store X`` and ``oai label`` derive the labels of one
        definition; the hashes of definitions stored before this rule stay the same), and
        ``required_views`` is left out. Parameters
        added after the presets were first hashed are left out while they hold their default, so
        that old hashes stay valid too.
        """
        params = self.to_dict()
        params.pop("name")
        params["image_store"] = None
        params.pop("required_views")  # where images live and which of them: not the identity
        for name, default in HASHED_ONLY_WHEN_SET.items():
            if params.get(name) == (list(default) if isinstance(default, tuple) else default):
                params.pop(name, None)
        return json.dumps(params, sort_keys=True, separators=(",", ":"))

    def hash(self) -> str:
        """sha256 of :meth:`canonical_json`."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> LabelDefinitionParams:
        """Rebuild from :meth:`to_dict` output (e.g. the JSON stored in the database)."""
        unknown = unknown_fields(cls, params)
        if unknown:
            known = sorted(f.name for f in dataclasses.fields(cls))
            raise LabelDefinitionError(f"unknown label-definition parameters {unknown}; known: {known}")
        return cls(**params)


def _check_choice(where: str, name: str, value: object, literal: Any) -> None:
    choices = get_args(literal)
    if value not in choices:
        raise LabelDefinitionError(f"{where}: {name} must be one of {list(choices)}, got {value!r}")


PRESETS: dict[str, LabelDefinitionParams] = {
    DEFAULT_DEFINITION: LabelDefinitionParams(name=DEFAULT_DEFINITION),
    "oai_tkr2024": LabelDefinitionParams(
        name="oai_tkr2024",
        followup_visits=(1, 3, 5, 6, 8, 10),
        missing_klg="outcomes99",
        non_progressor_requires="knee_at_last_visit",
        duplicates="first_graded",
    ),
}

PRESET_DESCRIPTIONS: dict[str, str] = {
    DEFAULT_DEFINITION: "the reference algorithm of Panfilov et al. 2022, quirks included",
    "oai_tkr2024": "48 months examined; knee replacement from Outcomes99 or .P only; "
    "non-progressors graded at 96 months",
}


def preset(name: str) -> LabelDefinitionParams:
    """The preset definition called ``name``."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownDefinitionError(f"unknown label definition {name!r}; presets: {sorted(PRESETS)}") from None


def resolve_definition(definition: str | LabelDefinitionParams) -> LabelDefinitionParams:
    """A preset by name, or the given parameters unchanged."""
    if isinstance(definition, LabelDefinitionParams):
        return definition
    return preset(definition)
