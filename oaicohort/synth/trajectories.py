"""Ground truth of a synthetic OAI cohort: subjects, knees, latent progression, KLG trajectories,
knee replacements, drop-outs and which X-ray readings and MR series exist.

Everything here is numpy arrays in memory; the writers (``clinical``, ``xray``, ``mri_index``)
turn them into the release's files. It stays one module (over 400 lines): the generative model
below is one calibrated whole, read top to bottom. The generative model, per knee:

* a latent progression factor (standard normal, correlated within a subject) multiplies the
  hazard of a KLG increase, so that images built from it can predict progression;
* the baseline KLG comes from an ordinal model on a subject severity, age and BMI (independent
  of the latent factor: the latent is what the X-ray grade does not already tell);
* each month the true KLG may rise by one grade (rarely two) with a Weibull-shaped hazard that
  decreases with time (fast progressors show up early), and a knee at KLG 3-4 may be replaced;
* subjects drop out (older ones more often), miss visits, and their films are read centrally
  only in part (not every subject, not every knee, not every visit);
* readers disagree now and then (a grade lower or higher, a second reading project), and a few
  readings are missing for technical reasons.

The rates below were calibrated once so that the reference label algorithm (REFERENCE.md §1,
``panfilov2022``) applied to the written files lands close to the published cohort at the OAI
size (tests/test_synth.py re-derives the labels independently and checks this).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from oaicohort.visits import VISIT_MONTHS, XRAY_VISITS

# --------------------------------------------------------------------------- calibrated rates

# Enrolment: 4 clinical centres plus a smaller fifth code; site D is the held-out test site.
SITE_CODES = ("A", "B", "C", "D", "E")
SITE_WEIGHTS = (0.22, 0.225, 0.21, 0.26, 0.085)
P_FEMALE = 0.57
# P02RACE codes 0 (other non-white), 1 (white), 2 (black), 3 (asian) and their shares
RACE_CODES = (1, 2, 3, 0)
RACE_WEIGHTS = (0.80, 0.17, 0.01, 0.02)
P_HISPANIC = 0.02
# OAI enrolled people aged 45-79; a truncated normal on that range
AGE_RANGE = (45, 79)
AGE_MEAN, AGE_SD = 59.8, 13.0  # before truncation and drop-out
# BMI is log-normal; a handful of screening forms lack it
BMI_MEAN, BMI_SD = 28.3, 4.8
BMI_RANGE = (16.0, 55.0)
P_BMI_MISSING = 0.002
ENROLMENT_START = dt.date(2004, 2, 9)
ENROLMENT_DAYS = 810  # enrolment ran until spring 2006

# Per-knee latent factor: correlation between the two knees of a person
LATENT_KNEE_CORRELATION = 0.5

# Baseline KLG 0..4 shares over all knees, and how much of the ordinal score is shared by the
# two knees of a person (bilateral OA is the rule)
BASELINE_KL_SHARES = (0.49, 0.215, 0.17, 0.085, 0.04)
KL_SUBJECT_SHARE = 0.55
KL_AGE_EFFECT = 0.25  # per SD of age, on the ordinal score
KL_BMI_EFFECT = 0.25  # per SD of BMI
# replaced before enrolment (baseline X-ray shows a prosthesis), by the grade the knee would have
BASELINE_TKR_RATE = {3: 0.03, 4: 0.12}

# Annual hazard of a KLG rise by current grade, before the latent factor; for KLG 0 the rise
# is mostly to 1, which the reference does not count as progression.
PROGRESSION_RATE = (0.050, 0.046, 0.046, 0.050, 0.0)
PROGRESSION_LATENT_EFFECT = 1.6  # log hazard ratio per SD of the latent factor
# Weibull shape < 1: the hazard falls with time, so the most prone knees progress early
PROGRESSION_WEIBULL_SHAPE = 0.50
P_KL0_JUMP_TO_2 = 0.15
P_DOUBLE_STEP = 0.12
# Annual hazard of knee replacement at KLG 3 and 4, and its log hazard ratio per latent SD
TKR_RATE = {3: 0.008, 4: 0.040}
TKR_LATENT_EFFECT = 0.6

# Follow-up: share of subjects still in the study at each month, before the age effect
RETENTION = {
    0: 1.0,
    12: 0.95,
    18: 0.94,
    24: 0.92,
    30: 0.91,
    36: 0.89,
    48: 0.86,
    60: 0.84,
    72: 0.81,
    84: 0.79,
    96: 0.76,
    108: 0.73,
}
DROPOUT_AGE_EFFECT = 0.35  # log hazard ratio of dropping out per SD of age
P_MISSED_VISIT = 0.05  # in the study but did not come
P_MISSED_INTERIM = 0.25  # the 18/30-month phone contacts

# Central X-ray reading coverage: subjects whose baseline films were read, whether both knees
# were read, and the share of attended follow-up visits whose films were read
P_BASELINE_READ = 0.865
P_BOTH_KNEES_READ = 0.98
FOLLOWUP_READ_COVERAGE = {1: 0.92, 3: 0.90, 5: 0.88, 6: 0.85, 8: 0.82, 10: 0.80}
P_KNEE_ROW_MISSING = 0.02  # one knee's film of a read visit not graded
P_TKR_ROW_WRITTEN = 0.70  # after a replacement the knee keeps a row with KLG `.P`

# Reader behaviour
P_READ_LOWER = 0.010
P_READ_HIGHER = 0.006
P_KL_MISSING_BASELINE = 0.010
P_KL_MISSING_FOLLOWUP = 0.006
P_TECHNICAL_GIVEN_MISSING = 0.5  # `.T: Technical Problems` rather than `.: Missing Form...`
P_SECOND_PROJECT = 0.06  # a reading also done by a second reading project
P_SECOND_DISAGREES = 0.25  # ... with a different grade
P_SECOND_FIRST = 0.30  # ... and written before the first project's row

# Baseline MRI
P_NO_MRI = 0.004  # subject has no baseline MR at all
P_NO_DESS = 0.007  # a knee imaged without its DESS series
P_RESCAN = 0.015  # a series acquired twice (the later row wins)

# Sentinel KLG values of observed readings
KL_MISSING = -1  # `.: Missing Form/Incomplete Workbook` (or empty)
KL_TECHNICAL = -2  # `.T: Technical Problems`
KL_PROSTHESIS = -3  # `.P`

CLINIC_VISITS: tuple[int, ...] = tuple(sorted(VISIT_MONTHS))
CLINIC_MONTHS: tuple[int, ...] = tuple(VISIT_MONTHS[v] for v in CLINIC_VISITS)
LABEL_HINT_VISITS = (1, 3, 5, 8, 10)  # the follow-ups the reference examines
FAST_LAST_VISIT = 5  # first progression at 12/24/36 months is "fast"


@dataclass(frozen=True)
class SynthCohort:
    """The truth behind a synthetic release. Knee arrays are (subjects, 2) with side R then L;
    visit arrays run over ``CLINIC_VISITS`` (clinic) or ``XRAY_VISITS`` (X-ray)."""

    seed: int
    subject_id: np.ndarray  # int64, 7-digit OAI ids
    site: np.ndarray  # "A".."E"
    female: np.ndarray  # bool
    race: np.ndarray  # P02RACE code
    hispanic: np.ndarray  # bool
    age: np.ndarray  # int years at enrolment
    height_mm: np.ndarray
    weight_kg: np.ndarray
    bmi: np.ndarray
    bmi_missing: np.ndarray  # bool
    enrolment: np.ndarray  # datetime64[D]
    attended: np.ndarray  # (N, clinic visits) bool
    latent: np.ndarray  # (N, 2) float
    kl_clinic: np.ndarray  # (N, 2, clinic visits) true KLG at each clinic month
    replaced_clinic: np.ndarray  # (N, 2, clinic visits) knee replaced by then
    tkr_month: np.ndarray  # (N, 2) month of replacement, 0 = before enrolment, nan = never
    reading_project: np.ndarray  # (N,) primary READPRJ
    xray_row: np.ndarray  # (N, 2, X-ray visits) bool: a row of the first project
    xray_kl: np.ndarray  # (N, 2, X-ray visits) observed KLG or a KL_* sentinel
    second_row: np.ndarray  # (N, 2, X-ray visits) bool: a second project's row
    second_kl: np.ndarray  # (N, 2, X-ray visits)
    second_first: np.ndarray  # (N, 2, X-ray visits) bool: the second project's row comes first
    has_mri: np.ndarray  # (N,) bool
    has_dess: np.ndarray  # (N, 2) bool
    label_hint: np.ndarray  # (N, 2) "none" | "fast" | "slow"

    @property
    def n_subjects(self) -> int:
        return int(self.subject_id.shape[0])

    def visit_dates(self, visit: int) -> np.ndarray:
        """Exam dates (datetime64[D]) of a visit: the enrolment date plus the nominal months."""
        days = np.round(VISIT_MONTHS[visit] * 365.25 / 12).astype(np.int64)
        jitter = (self.subject_id * 7919 + visit * 104729) % 41 - 20  # deterministic +-20 days
        return self.enrolment + (days + np.where(visit == 0, 0, jitter)).astype("timedelta64[D]")


def stream(seed: int, name: str) -> np.random.Generator:
    """An independent random stream per purpose, so that changing one part of the generator
    does not reshuffle the others."""
    key = [ord(c) for c in name]
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


def _truncated_normal(rng: np.random.Generator, n: int, mean: float, sd: float, low: float, high: float) -> np.ndarray:
    values = rng.normal(mean, sd, n)
    bad = (values < low) | (values > high)
    while bad.any():
        values[bad] = rng.normal(mean, sd, int(bad.sum()))
        bad = (values < low) | (values > high)
    return values


def _quota(n: int, shares: tuple[float, ...] | list[float]) -> np.ndarray:
    """How many of ``n`` fall in each category: the shares rounded so that they add up to ``n``
    (largest remainders first). Drawing to quota rather than independently keeps the cohort's
    make-up from drifting with the seed."""
    exact = np.asarray(shares, dtype=float) / sum(shares) * n
    counts = np.floor(exact).astype(np.int64)
    short = n - int(counts.sum())
    counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
    return counts


def _by_quota(rng: np.random.Generator, n: int, shares: tuple[float, ...] | list[float]) -> np.ndarray:
    """Category indexes for ``n`` people, in quota, in random order."""
    return rng.permutation(np.repeat(np.arange(len(shares)), _quota(n, shares)))


def _subjects(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    ids = 9_000_000 + np.sort(rng.choice(1_000_000, size=n, replace=False)).astype(np.int64)
    site = np.asarray(SITE_CODES)[_by_quota(rng, n, SITE_WEIGHTS)]
    female = _by_quota(rng, n, (1 - P_FEMALE, P_FEMALE)) == 1
    race = np.asarray(RACE_CODES)[rng.choice(len(RACE_CODES), size=n, p=RACE_WEIGHTS)]
    hispanic = rng.random(n) < P_HISPANIC
    age = np.round(_truncated_normal(rng, n, AGE_MEAN, AGE_SD, *AGE_RANGE)).astype(np.int64)
    height_m = np.where(female, rng.normal(1.62, 0.065, n), rng.normal(1.76, 0.07, n))
    sigma = np.sqrt(np.log1p((BMI_SD / BMI_MEAN) ** 2))
    mu = np.log(BMI_MEAN) - sigma**2 / 2
    bmi_true = np.clip(np.exp(rng.normal(mu, sigma, n)), *BMI_RANGE)
    height_mm = np.round(height_m * 1000, 1)
    weight_kg = np.round(bmi_true * height_m**2, 1)
    bmi = weight_kg / (height_mm / 1000) ** 2  # OAI computes BMI from the measured values
    bmi_missing = rng.random(n) < P_BMI_MISSING
    if n >= 50 and not bmi_missing.any():
        bmi_missing[rng.integers(n)] = True  # keep the exclusion exercised in small releases
    start = np.datetime64(ENROLMENT_START.isoformat())
    enrolment = start + rng.integers(0, ENROLMENT_DAYS, n).astype("timedelta64[D]")
    return dict(
        subject_id=ids,
        site=site,
        female=female,
        race=race,
        hispanic=hispanic,
        age=age,
        height_mm=height_mm,
        weight_kg=weight_kg,
        bmi=bmi,
        bmi_missing=bmi_missing,
        enrolment=enrolment,
    )


def _latent(n: int, rng: np.random.Generator) -> np.ndarray:
    shared = rng.standard_normal((n, 1))
    own = rng.standard_normal((n, 2))
    rho = LATENT_KNEE_CORRELATION
    return np.sqrt(rho) * shared + np.sqrt(1 - rho) * own


def _baseline_kl(age: np.ndarray, bmi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = age.shape[0]
    severity = rng.standard_normal((n, 1))
    own = rng.standard_normal((n, 2))
    score = (
        np.sqrt(KL_SUBJECT_SHARE) * severity
        + np.sqrt(1 - KL_SUBJECT_SHARE) * own
        + KL_AGE_EFFECT * ((age - AGE_MEAN) / AGE_SD)[:, None]
        + KL_BMI_EFFECT * ((bmi - BMI_MEAN) / BMI_SD)[:, None]
    )
    # grades by rank, in quota over all knees: the lowest scores are KLG 0, and so on
    grades = np.repeat(np.arange(len(BASELINE_KL_SHARES)), _quota(2 * n, BASELINE_KL_SHARES))
    kl = np.empty(2 * n, dtype=np.int8)
    kl[np.argsort(score.reshape(-1), kind="stable")] = grades
    return kl.reshape(n, 2)


def _trajectories(
    kl0: np.ndarray, latent: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Month-by-month true KLG and knee replacement over the 108 months of follow-up."""
    n = kl0.shape[0]
    horizon = max(CLINIC_MONTHS)
    kl = kl0.astype(np.int8).copy()
    tkr_month = np.full((n, 2), np.nan)
    baseline_tkr = np.zeros((n, 2), dtype=bool)
    for grade, rate in BASELINE_TKR_RATE.items():
        baseline_tkr |= (kl0 == grade) & (rng.random((n, 2)) < rate)
    tkr_month[baseline_tkr] = 0.0
    replaced = baseline_tkr.copy()

    prog_rate = np.asarray(PROGRESSION_RATE)
    tkr_rate = np.zeros(5)
    for grade, rate in TKR_RATE.items():
        tkr_rate[grade] = rate
    prog_mult = np.exp(PROGRESSION_LATENT_EFFECT * latent)
    tkr_mult = np.exp(TKR_LATENT_EFFECT * latent)
    k = PROGRESSION_WEIBULL_SHAPE

    kl_clinic = np.zeros((n, 2, len(CLINIC_MONTHS)), dtype=np.int8)
    replaced_clinic = np.zeros((n, 2, len(CLINIC_MONTHS)), dtype=bool)
    kl_clinic[:, :, 0] = kl
    replaced_clinic[:, :, 0] = replaced
    u_prog = rng.random((horizon, n, 2))
    u_step = rng.random((horizon, n, 2))
    u_tkr = rng.random((horizon, n, 2))
    for month in range(1, horizon + 1):
        years = (month - 0.5) / 12
        shape = k * years ** (k - 1)
        p_prog = 1 - np.exp(-prog_rate[kl] * prog_mult * shape / 12)
        rise = (u_prog[month - 1] < p_prog) & ~replaced
        step = np.where(kl == 0, 1 + (u_step[month - 1] < P_KL0_JUMP_TO_2), 1 + (u_step[month - 1] < P_DOUBLE_STEP))
        kl = np.where(rise, np.minimum(kl + step, 4), kl).astype(np.int8)
        p_tkr = 1 - np.exp(-tkr_rate[kl] * tkr_mult / 12)
        new_tkr = (u_tkr[month - 1] < p_tkr) & ~replaced
        tkr_month[new_tkr] = month
        replaced |= new_tkr
        if month in CLINIC_MONTHS:
            i = CLINIC_MONTHS.index(month)
            kl_clinic[:, :, i] = kl
            replaced_clinic[:, :, i] = replaced
    return kl_clinic, replaced_clinic, tkr_month


def _attendance(age: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = age.shape[0]
    frailty = np.exp(DROPOUT_AGE_EFFECT * (age - AGE_MEAN) / AGE_SD)
    stay = rng.random(n)
    attended = np.zeros((n, len(CLINIC_VISITS)), dtype=bool)
    for i, (visit, month) in enumerate(zip(CLINIC_VISITS, CLINIC_MONTHS)):
        in_study = stay < RETENTION[month] ** frailty
        miss = P_MISSED_INTERIM if visit in (2, 4) else P_MISSED_VISIT
        attended[:, i] = in_study & ((month == 0) | (rng.random(n) >= miss))
    return attended


def _readings(cohort_parts: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Which X-ray rows exist and what the readers wrote in them."""
    attended = cohort_parts["attended"]
    kl_clinic = cohort_parts["kl_clinic"]
    replaced_clinic = cohort_parts["replaced_clinic"]
    n = attended.shape[0]
    nv = len(XRAY_VISITS)
    clinic_idx = [CLINIC_VISITS.index(v) for v in XRAY_VISITS]
    kl_true = kl_clinic[:, :, clinic_idx]
    replaced = replaced_clinic[:, :, clinic_idx]

    read_subject = rng.random((n,)) < P_BASELINE_READ  # (n,): an array, also to the type checker
    both = rng.random(n) < P_BOTH_KNEES_READ
    right_only = rng.random(n) < 0.5
    knee_read = np.stack([both | right_only, both | ~right_only], axis=1) & read_subject[:, None]

    visit_read = np.zeros((n, nv), dtype=bool)
    visit_read[:, 0] = True
    for j, visit in enumerate(XRAY_VISITS[1:], start=1):
        visit_read[:, j] = attended[:, clinic_idx[j]] & (rng.random(n) < FOLLOWUP_READ_COVERAGE[visit])
    row = knee_read[:, :, None] & visit_read[:, None, :]
    row &= ~((rng.random((n, 2, nv)) < P_KNEE_ROW_MISSING) & (np.arange(nv) > 0))
    tkr_row_written = rng.random((n, 2)) < P_TKR_ROW_WRITTEN
    row &= ~replaced | tkr_row_written[:, :, None]

    def read(kl: np.ndarray) -> np.ndarray:
        u = rng.random(kl.shape)
        observed = np.where((u < P_READ_LOWER) & (kl > 0), kl - 1, kl)
        observed = np.where((u > 1 - P_READ_HIGHER) & (kl < 4), kl + 1, observed)
        p_missing = np.where(np.arange(nv) == 0, P_KL_MISSING_BASELINE, P_KL_MISSING_FOLLOWUP)
        missing = rng.random(kl.shape) < p_missing
        technical = rng.random(kl.shape) < P_TECHNICAL_GIVEN_MISSING
        observed = np.where(missing, np.where(technical, KL_TECHNICAL, KL_MISSING), observed)
        return np.where(replaced, KL_PROSTHESIS, observed).astype(np.int8)

    xray_kl = read(kl_true)
    second_row = row & (rng.random((n, 2, nv)) < P_SECOND_PROJECT)
    if n >= 50 and not second_row.any() and row.any():
        second_row.flat[np.flatnonzero(row)[0]] = True
    disagree = rng.random((n, 2, nv)) < P_SECOND_DISAGREES
    shift = np.where(rng.random((n, 2, nv)) < 0.5, -1, 1)
    second_kl = np.where(disagree & (xray_kl >= 0), np.clip(xray_kl + shift, 0, 4), xray_kl)
    second_first = rng.random((n, 2, nv)) < P_SECOND_FIRST
    return dict(
        xray_row=row,
        xray_kl=xray_kl,
        second_row=second_row,
        second_kl=second_kl.astype(np.int8),
        second_first=second_first & second_row,
    )


def _label_hint(kl_clinic: np.ndarray, replaced_clinic: np.ndarray) -> np.ndarray:
    """What the knee truly did, read as the reference reads it but without drop-outs, missed
    readings or reader error: first KLG rise to a grade other than 1, or a replacement, at the
    follow-ups the reference examines."""
    kl0 = kl_clinic[:, :, 0]
    hint = np.full(kl0.shape, "none", dtype=object)
    decided = np.zeros(kl0.shape, dtype=bool)
    for visit in LABEL_HINT_VISITS:
        i = CLINIC_VISITS.index(visit)
        kl = kl_clinic[:, :, i]
        progressed = replaced_clinic[:, :, i] | ((kl > kl0) & (kl != 1))
        progressed &= ~decided & ~replaced_clinic[:, :, 0]
        hint[progressed] = "fast" if visit <= FAST_LAST_VISIT else "slow"
        decided |= progressed
    return hint


def _mri(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    has_mri = rng.random(n) >= P_NO_MRI
    has_dess = (rng.random((n, 2)) >= P_NO_DESS) & has_mri[:, None]
    if n >= 50 and has_dess[has_mri].all():
        first = int(np.flatnonzero(has_mri)[0])
        has_dess[first, 1] = False  # keep the "no DESS" exclusion exercised in small releases
    return has_mri, has_dess


def simulate_cohort(subjects: int, seed: int) -> SynthCohort:
    """Draw the whole truth of a synthetic cohort of ``subjects`` people."""
    parts = _subjects(subjects, stream(seed, "subjects"))
    parts["latent"] = _latent(subjects, stream(seed, "latent"))
    kl0 = _baseline_kl(parts["age"], parts["bmi"], stream(seed, "baseline-kl"))
    kl_clinic, replaced_clinic, tkr_month = _trajectories(kl0, parts["latent"], stream(seed, "trajectories"))
    parts.update(kl_clinic=kl_clinic, replaced_clinic=replaced_clinic, tkr_month=tkr_month)
    parts["attended"] = _attendance(parts["age"], stream(seed, "attendance"))
    reading_rng = stream(seed, "readings")
    parts.update(_readings(parts, reading_rng))
    parts["reading_project"] = np.asarray([15, 37, 42])[reading_rng.choice(3, size=subjects, p=[0.45, 0.20, 0.35])]
    parts["has_mri"], parts["has_dess"] = _mri(subjects, stream(seed, "mri"))
    parts["label_hint"] = _label_hint(kl_clinic, replaced_clinic)
    return SynthCohort(seed=seed, **parts)
