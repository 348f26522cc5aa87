"""The wide clinical tables: ``AllClinical{vv}.txt`` (one per visit) and ``SubjectChar00.txt``.

A catalogue of variable families modelled on the real files (WOMAC and KOOS scores and items,
knee pain, SF-12, CES-D, PASE, physical exam, performance tests, medication, comorbidity,
screening measurements) gives each visit a few hundred columns (the catalogue is data, which is why this module passes
400 lines). Values are drawn per column,
vectorised; pain-related ones follow the knee's true KLG at that visit so that the tables are
not pure noise. Subjects who did not come to a visit keep their row, every value missing, as in
the real release.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal

import numpy as np

from oaicohort.synth.tables import (
    MISSING_FORM,
    NOT_EXPECTED,
    Style,
    coded,
    dates,
    numbers,
    with_missing,
)
from oaicohort.synth.trajectories import CLINIC_VISITS, SynthCohort, stream

Tier = Literal["baseline", "main", "annual", "interim"]
# which tiers of the catalogue each kind of visit carries
MAIN_VISITS = (0, 1, 3, 5, 6, 8, 10)  # clinic visits with X-rays: the full workbook
ANNUAL_VISITS = (7, 9, 11)  # shorter annual visits
INTERIM_VISITS = (2, 4)  # 18/30-month phone contacts
TIERS_OF_VISIT: dict[str, tuple[Tier, ...]] = {
    "main": ("main", "annual", "interim"),
    "annual": ("annual", "interim"),
    "interim": ("interim",),
}
FILE_VERSION = "2.4.1"

YES_NO = {0: "No", 1: "Yes"}
WOMAC_LEVELS = {0: "None", 1: "Mild", 2: "Moderate", 3: "Severe", 4: "Extreme"}
KOOS_FREQUENCY = {0: "Never", 1: "Monthly", 2: "Weekly", 3: "Daily", 4: "Always"}
KOOS_SYMPTOM = {0: "Never", 1: "Rarely", 2: "Sometimes", 3: "Often", 4: "Always"}
CESD_LEVELS = {
    0: "Rarely/none of the time (<1 day)",
    1: "Some/a little of the time (1-2 days)",
    2: "Occasionally/moderate amount of time (3-4 days)",
    3: "Most/all of the time (5-7 days)",
}
HEALTH_LEVELS = {1: "Excellent", 2: "Very good", 3: "Good", 4: "Fair", 5: "Poor"}
PASE_FREQUENCY = {0: "Never", 1: "Seldom (1-2 days)", 2: "Sometimes (3-4 days)", 3: "Often (5-7 days)"}
PAIN_NRS = {0: "No pain", **{i: str(i) for i in range(1, 10)}, 10: "Pain as bad as you can imagine"}
ALIGNMENT = {1: "Varus", 2: "Neutral", 3: "Valgus"}
SMOKING = {0: "Never", 1: "Current", 2: "Former"}
WORKBOOK = {1: "Self-administered", 2: "Interviewer-administered", 3: "Phone interview"}
EDUCATION = {
    0: "Less than high school graduate",
    1: "High school graduate",
    2: "Some college",
    3: "College graduate",
    4: "Some graduate school",
    5: "Graduate degree",
}
INCOME = {1: "Less than $10K", 2: "$10K to < $25K", 3: "$25K to < $50K", 4: "$50K to < $100K", 5: "$100K or greater"}
MARITAL = {1: "Married", 2: "Widowed", 3: "Divorced", 4: "Separated", 5: "Never married"}
EMPLOYMENT = {1: "Yes, full-time", 2: "Yes, part-time", 3: "No"}

MEDICATIONS = (
    "ANALG",
    "ASPRN",
    "NSAID",
    "ACTMN",
    "OPIOD",
    "GLUCS",
    "CHOND",
    "SSTER",
    "HYALR",
    "COX2",
    "TOPIC",
    "VITD",
    "CALC",
    "BISPH",
    "ESTRO",
    "STATN",
    "DIUR",
    "ANTHY",
)
COMORBIDITIES = (
    "HRTAT",
    "HRTF",
    "STROKE",
    "ASTHMA",
    "LUNG",
    "ULCER",
    "DIAB",
    "KIDFXN",
    "RA",
    "POLYR",
    "LIVDAM",
    "CANCER",
    "HIPFX",
    "SPNFX",
    "DEPRES",
)
OTHER_JOINTS = ("HIP", "HND", "FT", "SHLD", "ELB", "ANK", "WRST")

COMMENT_FRAGMENTS = (
    "participant arrived late",
    "form completed at home, returned by mail",
    "knee brace worn during exam",
    "pt's daughter helped with questionnaire",
    "unable to complete 400m walk, knee pain",
    "BP re-measured, first reading high",
    'Participant reports "some" stiffness in the morning',
    "scale recalibrated; weight re-taken",
    "Café visit moved to afternoon",
    "rescheduled twice; phone contact only",
    "hearing aid, questions read aloud",
    "used cane for chair stands",
)
P_COMMENT = 0.06


@dataclass(frozen=True)
class Variable:
    """One column family. ``name`` may hold ``{v}`` (the visit prefix, e.g. ``V03``) and ``{s}``
    (the knee side letter ``R``/``L``, which also ties a ``pain`` signal to that knee)."""

    name: str
    kind: Literal["coded", "number", "special"]
    tier: Tier = "main"
    labels: Mapping[int, str] = field(default_factory=dict)
    shares: tuple[float, ...] = ()  # coded: marginal share of each code, in code order
    mean: float = 0.0
    sd: float = 1.0
    low: float = -math.inf
    high: float = math.inf
    decimals: int = 0
    signal: Literal["none", "pain", "age", "bmi"] = "none"
    weight: float = 0.0  # correlation of the underlying score with the signal
    missing: float = 0.01
    style: Style = "labelled"
    given: str | None = None  # a yes/no column; this one is "Not Expected" unless that is 1


def _yes_no(name: str, share_yes: float, tier: Tier = "main", **kw: object) -> Variable:
    return Variable(name, "coded", tier, YES_NO, (1 - share_yes, share_yes), **kw)  # type: ignore[arg-type]


def _items(
    pattern: str, count: int, labels: Mapping[int, str], shares: tuple[float, ...], tier: Tier = "main", **kw: object
) -> list[Variable]:
    return [
        Variable(pattern.format(i=i, v="{v}", s="{s}"), "coded", tier, labels, shares, **kw)  # type: ignore[arg-type]
        for i in range(1, count + 1)
    ]


def _catalogue() -> list[Variable]:
    """All AllClinical column families, in file order."""
    pain: dict[str, Any] = dict(signal="pain", weight=0.7)
    cat: list[Variable] = [
        Variable("{v}{e}VDATE", "special", "interim"),  # V00EVDATE at enrolment, V01FVDATE...
        Variable("{v}WKBKTYP", "coded", "interim", WORKBOOK, (0.75, 0.15, 0.10)),
        Variable("V00AGE", "special", "baseline"),
        Variable("P01SVDATE", "special", "baseline"),
        Variable("P01HEIGHT", "special", "baseline"),
        Variable("P01WEIGHT", "special", "baseline"),
        Variable("P01BMI", "special", "baseline"),
        _yes_no("P01INJ{s}", 0.25, "baseline"),
        _yes_no("P01KSURG{s}", 0.08, "baseline"),
        _yes_no("P01KPN{s}CV", 0.45, "baseline", **pain),
        _yes_no("P01OAGRD", 0.35, "baseline", signal="pain", weight=0.5),
        _yes_no("P01FAMKR", 0.10, "baseline"),
        _yes_no("P01HRSL{s}", 0.05, "baseline"),
        Variable("P02HISP", "special", "baseline"),
        Variable(
            "P01KRS{s}",
            "coded",
            "baseline",
            PAIN_NRS,
            (0.30, 0.10, 0.10, 0.10, 0.10, 0.08, 0.07, 0.06, 0.04, 0.03, 0.02),
            style="mixed",
            **pain,
        ),
        # WOMAC summary scores (fractional where items were imputed)
        Variable("{v}WOMKP{s}", "number", "interim", mean=2.5, sd=4.0, low=0, high=20, decimals=1, **pain),
        Variable("{v}WOMSTF{s}", "number", "annual", mean=1.5, sd=2.0, low=0, high=8, decimals=0, **pain),
        Variable("{v}WOMADL{s}", "number", "annual", mean=8.0, sd=12.0, low=0, high=68, decimals=1, **pain),
        Variable("{v}WOMTS{s}", "number", "annual", mean=12.0, sd=17.0, low=0, high=96, decimals=1, **pain),
        *_items("{v}WP{s}KN{i}", 5, WOMAC_LEVELS, (0.6, 0.22, 0.12, 0.05, 0.01), **pain),
        *_items("{v}WS{s}KN{i}", 2, WOMAC_LEVELS, (0.5, 0.28, 0.15, 0.06, 0.01), **pain),
        *_items("{v}DI{s}KN{i}", 17, WOMAC_LEVELS, (0.62, 0.2, 0.12, 0.05, 0.01), **pain),
        # KOOS
        Variable(
            "{v}KOOSKP{s}", "number", "annual", mean=82, sd=18, low=0, high=100, decimals=1, signal="pain", weight=-0.7
        ),
        Variable(
            "{v}KOOSYM{s}", "number", "annual", mean=84, sd=15, low=0, high=100, decimals=1, signal="pain", weight=-0.6
        ),
        Variable(
            "{v}KOOSFSR", "number", "annual", mean=70, sd=25, low=0, high=100, decimals=1, signal="pain", weight=-0.5
        ),
        Variable(
            "{v}KOOSQOL", "number", "annual", mean=72, sd=20, low=0, high=100, decimals=1, signal="pain", weight=-0.6
        ),
        *_items("{v}KSX{s}KN{i}", 7, KOOS_SYMPTOM, (0.45, 0.25, 0.17, 0.1, 0.03), **pain),
        *_items("{v}KQOL{i}", 4, KOOS_FREQUENCY, (0.4, 0.25, 0.2, 0.1, 0.05), signal="pain", weight=0.5),
        # knee pain
        _yes_no("{v}KPN{s}30", 0.45, "interim", **pain),
        _yes_no("{v}KPN{s}12", 0.55, "annual", **pain),
        Variable(
            "{v}KRS{s}",
            "coded",
            "annual",
            PAIN_NRS,
            (0.30, 0.10, 0.10, 0.10, 0.10, 0.08, 0.07, 0.06, 0.04, 0.03, 0.02),
            style="bare",
            **pain,
        ),
        # general health
        Variable(
            "{v}HSPSS", "number", "annual", mean=49, sd=9, low=10, high=70, decimals=2, signal="pain", weight=-0.4
        ),
        Variable("{v}HSMSS", "number", "annual", mean=53, sd=8, low=10, high=75, decimals=2),
        *_items("{v}HSQ{i}", 12, HEALTH_LEVELS, (0.15, 0.35, 0.32, 0.14, 0.04)),
        Variable("{v}CESD", "number", mean=6.5, sd=7.0, low=0, high=60, decimals=0),
        *_items("{v}CESD{i}", 20, CESD_LEVELS, (0.72, 0.18, 0.07, 0.03)),
        Variable("{v}PASE", "number", mean=160, sd=80, low=0, high=600, decimals=1, signal="age", weight=-0.4),
        *_items("{v}PASE{i}", 10, PASE_FREQUENCY, (0.35, 0.25, 0.22, 0.18)),
        # physical exam and performance
        Variable("{v}BPSYS", "number", mean=124, sd=16, low=80, high=220, signal="age", weight=0.3),
        Variable("{v}BPDIAS", "number", mean=76, sd=10, low=40, high=130),
        Variable("{v}PULSE", "number", mean=68, sd=10, low=40, high=130),
        Variable("{v}ABCIRC", "number", mean=98, sd=13, low=60, high=170, decimals=1, signal="bmi", weight=0.8),
        Variable("{v}KALGN{s}", "coded", "main", ALIGNMENT, (0.3, 0.5, 0.2)),
        _yes_no("{v}KEFFUS{s}", 0.15, **pain),
        _yes_no("{v}KCREP{s}", 0.35, **pain),
        _yes_no("{v}KTNDR{s}", 0.2, **pain),
        Variable(
            "{v}400MTIM",
            "number",
            mean=300,
            sd=50,
            low=180,
            high=900,
            decimals=1,
            signal="age",
            weight=0.5,
            missing=0.05,
        ),
        Variable(
            "{v}20MPACE",
            "number",
            mean=1.3,
            sd=0.2,
            low=0.3,
            high=2.5,
            decimals=2,
            signal="age",
            weight=-0.5,
            missing=0.03,
        ),
        Variable(
            "{v}CSTIME",
            "number",
            mean=10.5,
            sd=3.0,
            low=4,
            high=40,
            decimals=2,
            signal="pain",
            weight=0.3,
            missing=0.04,
        ),
        _yes_no("{v}CSUNABL", 0.03),
        # medication (with one skip-logic follow-up question)
        *[_yes_no(f"{{v}}RX{m}", 0.12 if m != "NSAID" else 0.3, "interim") for m in MEDICATIONS],
        Variable("{v}RXNSFQ", "coded", "interim", PASE_FREQUENCY, (0.1, 0.4, 0.3, 0.2), given="{v}RXNSAID"),
        # comorbidity, other joints, injuries and surgery since the last visit
        *[_yes_no(f"{{v}}{c}", 0.06, "annual") for c in COMORBIDITIES],
        Variable("{v}COMORB", "number", "annual", mean=0.6, sd=1.0, low=0, high=9, style="bare"),
        *[_yes_no(f"{{v}}{j}PN{{s}}", 0.15) for j in OTHER_JOINTS],
        _yes_no("{v}BACKPN", 0.35),
        _yes_no("{v}NECKPN", 0.2),
        _yes_no("{v}KINJ{s}", 0.05, "interim"),
        _yes_no("{v}KSURG{s}", 0.02, "annual"),
        _yes_no("{v}KINJCT{s}", 0.05, "annual"),
        Variable(
            "{v}KSURGTP{s}",
            "coded",
            "annual",
            {1: "Arthroscopy", 2: "Ligament repair", 3: "Other"},
            (0.7, 0.1, 0.2),
            given="{v}KSURG{s}",
        ),
        _yes_no("{v}FALL", 0.15, "annual"),
        Variable("{v}SMOKE", "coded", "main", SMOKING, (0.45, 0.07, 0.48)),
        Variable("{v}DRNKAMT", "number", "main", mean=2, sd=4, low=0, high=40, style="bare"),
        Variable("{v}COMMENT", "special", "interim"),
    ]
    return cat


CATALOGUE = _catalogue()
SUBJECTCHAR: list[Variable] = [
    Variable("V00EDCV", "coded", "baseline", EDUCATION, (0.05, 0.17, 0.28, 0.2, 0.1, 0.2)),
    Variable("V00INCOME", "coded", "baseline", INCOME, (0.06, 0.14, 0.25, 0.35, 0.2), missing=0.06),
    Variable("V00MARITST", "coded", "baseline", MARITAL, (0.65, 0.08, 0.15, 0.02, 0.1)),
    Variable("V00CEMPLOY", "coded", "baseline", EMPLOYMENT, (0.45, 0.15, 0.4)),
    Variable("V00HOUSEHD", "number", "baseline", mean=2.3, sd=1.1, low=1, high=9, style="bare"),
    _yes_no("V00FAMHXKR", 0.12, "baseline"),
    _yes_no("V00FAMHXHR", 0.08, "baseline"),
    _yes_no("V00CURRWRK", 0.58, "baseline"),
    _yes_no("V00MEDINS", 0.93, "baseline"),
    _yes_no("V00LIVALN", 0.2, "baseline"),
    Variable("V00NSAIDYR", "number", "baseline", mean=3, sd=4, low=0, high=40, missing=0.05),
    Variable("V00YRSOA", "number", "baseline", mean=4, sd=6, low=0, high=50, missing=0.4, signal="pain", weight=0.4),
    Variable("V00SCCMNT", "special", "baseline"),
]


def _expand(variable: Variable, visit: int) -> Iterator[tuple[str, Variable, int | None]]:
    """Column names of a family at a visit, with the knee side (0 = R, 1 = L) where it has one."""
    prefix, date_kind = f"V{visit:02d}", "E" if visit == 0 else "F"
    if "{s}" in variable.name:
        for side, letter in enumerate("RL"):
            yield variable.name.format(v=prefix, s=letter), variable, side
    else:
        yield variable.name.format(v=prefix, e=date_kind), variable, None


def _cuts(shares: tuple[float, ...]) -> np.ndarray:
    cumulative = np.cumsum(shares)[:-1] / sum(shares)
    return np.asarray([NormalDist().inv_cdf(float(c)) for c in cumulative])


def _signals(cohort: SynthCohort, visit: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Standardised drivers of a visit's values: knee pain follows that knee's true KLG."""
    n = cohort.n_subjects
    i = CLINIC_VISITS.index(visit)
    kl = cohort.kl_clinic[:, :, i].astype(float)
    kl = np.where(cohort.replaced_clinic[:, :, i], 1.0, kl)  # a new knee hurts less
    trait = stream(cohort.seed, "pain-trait").standard_normal((n, 1))
    pain = 0.5 * (kl - 1.2) / 1.1 + 0.55 * trait + 0.55 * rng.standard_normal((n, 2))
    return {
        "pain": pain / np.sqrt(0.25 + 0.55**2 * 2),
        "age": np.repeat(((cohort.age - 61) / 9.0)[:, None], 2, axis=1),
        "bmi": np.repeat(((cohort.bmi - 28.5) / 4.8)[:, None], 2, axis=1),
    }


def _score(
    variable: Variable, side: int | None, signals: dict[str, np.ndarray], rng: np.random.Generator
) -> np.ndarray:
    n = next(iter(signals.values())).shape[0]
    noise = rng.standard_normal((n,))
    if variable.signal == "none" or variable.weight == 0:
        return noise
    driver = signals[variable.signal]
    driver = driver[:, side] if side is not None else driver.mean(axis=1) * np.sqrt(2) / np.sqrt(1.5)
    w = variable.weight
    return w * driver + np.sqrt(1 - w * w) * noise


def _special(name: str, cohort: SynthCohort, visit: int, rng: np.random.Generator) -> np.ndarray:
    if name.endswith(("EVDATE", "FVDATE")):
        return dates(cohort.visit_dates(visit))
    if name == "V00AGE":
        return numbers(cohort.age.astype(float), 0)
    if name == "P01SVDATE":
        screening = cohort.enrolment - rng.integers(14, 90, cohort.n_subjects).astype("timedelta64[D]")
        return dates(screening)
    if name == "P02HISP":
        return coded(cohort.hispanic.astype(np.int64), YES_NO, "labelled", rng)
    if name == "P01HEIGHT":
        return numbers(cohort.height_mm, 1)
    if name == "P01WEIGHT":
        return numbers(cohort.weight_kg, 1)
    if name == "P01BMI":
        values = numbers(cohort.bmi, 4)
        return np.where(cohort.bmi_missing, MISSING_FORM, values)
    if name.endswith("CMNT") or name.endswith("COMMENT"):
        n = cohort.n_subjects
        text = np.asarray(COMMENT_FRAGMENTS, dtype=object)[rng.integers(len(COMMENT_FRAGMENTS), size=n)]
        extra = np.asarray(COMMENT_FRAGMENTS, dtype=object)[rng.integers(len(COMMENT_FRAGMENTS), size=n)]
        text = np.where(rng.random(n) < 0.3, text + ", " + extra, text)
        return np.where(rng.random(n) < P_COMMENT, text, "")
    raise ValueError(f"no generator for special column {name}")


def _column(
    name: str,
    variable: Variable,
    side: int | None,
    cohort: SynthCohort,
    visit: int,
    signals: dict[str, np.ndarray],
    done: dict[str, np.ndarray],
    style: Style,
    rng: np.random.Generator,
) -> np.ndarray:
    if variable.kind == "special":
        return _special(name, cohort, visit, rng)
    score = _score(variable, side, signals, rng)
    if variable.kind == "coded":
        keys = np.asarray(sorted(variable.labels))
        codes = keys[np.searchsorted(_cuts(variable.shares), score)]
        values = coded(codes, variable.labels, style, rng)
    else:
        raw = np.clip(variable.mean + variable.sd * score, variable.low, variable.high)
        values = numbers(raw, variable.decimals)
    if variable.given is not None:
        parent = done[variable.given.format(v=f"V{visit:02d}", s="RL"[side or 0])]
        applies = np.asarray([p.split(":")[0].strip() == "1" for p in parent])
        values = np.where(applies, values, NOT_EXPECTED)
    missing = rng.random(values.shape[:1]) < variable.missing
    return with_missing(values, missing, rng)


def _file_style(variable: Variable, name: str, visit: int) -> Style:
    """Real releases are not consistent: a coded variable labelled in one visit's file is bare in
    another's. Visit 08 writes about a fifth of its coded columns bare, visit 06 a tenth mixed."""
    if variable.kind != "coded":
        return variable.style
    digest = sum(ord(c) for c in name[3:])
    if visit == 8 and digest % 5 == 0:
        return "bare"
    if visit == 6 and digest % 10 == 0:
        return "mixed"
    return variable.style


def visit_tier(visit: int) -> str:
    if visit in INTERIM_VISITS:
        return "interim"
    if visit in ANNUAL_VISITS:
        return "annual"
    return "main"


def allclinical_columns(cohort: SynthCohort, visit: int) -> dict[str, np.ndarray]:
    """The columns of ``AllClinical{visit:02d}.txt``."""
    rng = stream(cohort.seed, f"allclinical{visit:02d}")
    tiers = set(TIERS_OF_VISIT[visit_tier(visit)]) | ({"baseline"} if visit == 0 else set())
    signals = _signals(cohort, visit, rng)
    attended = cohort.attended[:, CLINIC_VISITS.index(visit)]
    columns: dict[str, np.ndarray] = {
        "ID": cohort.subject_id.astype(str).astype(object),
        "VERSION": np.full(cohort.n_subjects, FILE_VERSION, dtype=object),
    }
    for variable in CATALOGUE:
        if variable.tier not in tiers:
            continue
        for name, var, side in _expand(variable, visit):
            values = _column(name, var, side, cohort, visit, signals, columns, _file_style(var, name, visit), rng)
            if not name.startswith("P0"):  # screening values exist for every enrollee
                values = np.where(attended, values, MISSING_FORM)
            columns[name] = values
    return columns


def subjectchar_columns(cohort: SynthCohort) -> dict[str, np.ndarray]:
    """The columns of ``SubjectChar00.txt``."""
    rng = stream(cohort.seed, "subjectchar00")
    signals = _signals(cohort, 0, rng)
    columns: dict[str, np.ndarray] = {
        "ID": cohort.subject_id.astype(str).astype(object),
        "VERSION": np.full(cohort.n_subjects, FILE_VERSION, dtype=object),
    }
    for variable in SUBJECTCHAR:
        for name, var, side in _expand(variable, 0):
            columns[name] = _column(name, var, side, cohort, 0, signals, columns, var.style, rng)
    return columns
