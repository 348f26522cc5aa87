"""Typed SQLAlchemy 2.0 models of the cohort database.

The schema is owned by Alembic (``migrations/versions``); these classes describe it for the
Python API. Visits are stored as the OAI visit code (``vv`` of ``V{vv}``: 0, 1, 3, ... 10) and as
months, because users think in months but OAI files are keyed by code.
Knee sides are ``"R"``/``"L"``; sexes ``"M"``/``"F"``.

One module on purpose (over 400 lines): it is the one picture of the schema that Alembic's
autogenerate and ``tests/db/test_db.py`` compare with the migrations, table by table.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from oaicohort.vocabulary import CLASSES, EVENT_TYPES, INGEST_STATUSES, ROLES, SIDES, VOLUME_STATUSES

# Explicit constraint names let Alembic's batch mode alter tables on SQLite.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def one_of(column: str, values: tuple[str, ...], *, nullable: bool = False) -> str:
    """A CHECK expression allowing only ``values`` (from :mod:`oaicohort.vocabulary`) in ``column``."""
    listed = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({listed})" + (f" OR {column} IS NULL" if nullable else "")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


# --------------------------------------------------------------------------- provenance


class IngestRun(Base):
    """One execution of ``oai ingest``: what was read, when, and whether it completed."""

    __tablename__ = "ingest_runs"
    __table_args__ = (CheckConstraint(one_of("status", INGEST_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    source_root: Mapped[str] = mapped_column(Text)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    # running | succeeded | failed | interrupted | unchanged
    status: Mapped[str] = mapped_column(String(16), default="running")
    toolkit_version: Mapped[str] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # the process that runs (ran) it, to tell a killed ingest from a running one (oaicohort.db.writers)
    writer_host: Mapped[str | None] = mapped_column(String(255))
    writer_pid: Mapped[int | None] = mapped_column(Integer)
    writer_start: Mapped[str | None] = mapped_column(String(64))

    files: Mapped[list[IngestFile]] = relationship(back_populates="run", cascade="all, delete-orphan")


class IngestFile(Base):
    """A source file read by an ingest run, with its checksum and row count."""

    __tablename__ = "ingest_files"
    __table_args__ = (UniqueConstraint("run_id", "relative_path"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("ingest_runs.id", ondelete="CASCADE"), index=True)
    relative_path: Mapped[str] = mapped_column(Text)
    # enrollees | allclinical | subjectchar | outcomes | kxr_sq_bu | contents | ...
    table_kind: Mapped[str] = mapped_column(String(32))
    visit: Mapped[int | None] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    n_rows: Mapped[int] = mapped_column(Integer)

    run: Mapped[IngestRun] = relationship(back_populates="files")


# --------------------------------------------------------------------------- subjects and knees


class Subject(Base):
    """An OAI participant (``ID``), with the enrolment facts used for cohorts and splits."""

    __tablename__ = "subjects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    site: Mapped[str | None] = mapped_column(String(1), index=True)
    sex: Mapped[str | None] = mapped_column(String(1))
    race: Mapped[int | None] = mapped_column(Integer)
    cohort: Mapped[int | None] = mapped_column(Integer)

    knees: Mapped[list[Knee]] = relationship(back_populates="subject")
    visits: Mapped[list[SubjectVisit]] = relationship(back_populates="subject")


class SubjectVisit(Base):
    """Typed per-visit clinical values of a subject (the variables the toolkit itself needs).

    Screening values (``P01``/``P02`` prefixes) are stored on the baseline visit (code 0).
    """

    __tablename__ = "subject_visits"
    __table_args__ = (UniqueConstraint("subject_id", "visit"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"))
    visit: Mapped[int] = mapped_column(Integer)
    month: Mapped[int] = mapped_column(Integer)
    age: Mapped[float | None] = mapped_column(Float)
    bmi: Mapped[float | None] = mapped_column(Float)
    visit_date: Mapped[dt.date | None] = mapped_column(Date)

    subject: Mapped[Subject] = relationship(back_populates="visits")


class ClinicalValue(Base):
    """A further OAI variable a user asked for by name (``--variables``), one row per subject.

    Kept narrow on purpose: only requested variables are stored, never every cell of every file.
    ``value_num`` holds the leading numeric code or number; ``missing_code`` the OAI missing code
    (``.``, ``.A``, ``.P`` ...) when the cell was missing.
    """

    __tablename__ = "clinical_values"
    __table_args__ = (
        UniqueConstraint("subject_id", "variable"),
        Index("ix_clinical_values_variable_num", "variable", "value_num"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"))
    variable: Mapped[str] = mapped_column(String(64))
    value_text: Mapped[str | None] = mapped_column(Text)
    value_num: Mapped[float | None] = mapped_column(Float)
    missing_code: Mapped[str | None] = mapped_column(String(8))
    source_file: Mapped[str] = mapped_column(Text)


class Knee(Base):
    """One knee of a subject; the unit that labels, splits and volumes refer to."""

    __tablename__ = "knees"
    __table_args__ = (UniqueConstraint("subject_id", "side"), CheckConstraint(one_of("side", SIDES), name="side"))

    id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"), index=True)
    side: Mapped[str] = mapped_column(String(1))

    subject: Mapped[Subject] = relationship(back_populates="knees")
    readings: Mapped[list[XrayReading]] = relationship(back_populates="knee")


class XrayReading(Base):
    """A central semi-quantitative X-ray reading (``kXR_SQ_BU{vv}``) of a knee at a visit.

    Several reading projects (``READPRJ``) can read the same knee; ``source_row`` keeps the file
    order so that "first row wins" definitions stay reproducible.
    """

    __tablename__ = "xray_readings"
    __table_args__ = (
        UniqueConstraint("knee_id", "visit", "read_project", "source_row"),
        Index("ix_xray_readings_visit_knee", "visit", "knee_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    knee_id: Mapped[int] = mapped_column(ForeignKey("knees.id", ondelete="CASCADE"))
    visit: Mapped[int] = mapped_column(Integer)
    month: Mapped[int] = mapped_column(Integer)
    read_project: Mapped[int | None] = mapped_column(Integer)
    klg: Mapped[int | None] = mapped_column(Integer)
    klg_missing_code: Mapped[str | None] = mapped_column(String(8))
    jsn_medial: Mapped[float | None] = mapped_column(Float)
    jsn_lateral: Mapped[float | None] = mapped_column(Float)
    osteophyte_fm: Mapped[float | None] = mapped_column(Float)
    osteophyte_fl: Mapped[float | None] = mapped_column(Float)
    osteophyte_tm: Mapped[float | None] = mapped_column(Float)
    osteophyte_tl: Mapped[float | None] = mapped_column(Float)
    source_file: Mapped[str] = mapped_column(Text)
    source_row: Mapped[int] = mapped_column(Integer)

    knee: Mapped[Knee] = relationship(back_populates="readings")


class KneeReplacement(Base):
    """Knee-replacement outcome of a knee from ``Outcomes99`` (``V99E{R,L}K*``)."""

    __tablename__ = "knee_replacements"

    knee_id: Mapped[int] = mapped_column(ForeignKey("knees.id", ondelete="CASCADE"), primary_key=True)
    # 0 no replacement seen on any follow-up X-ray, 1 replacement seen, 2 no follow-up X-rays
    status: Mapped[int | None] = mapped_column(Integer)
    at_baseline: Mapped[bool | None] = mapped_column(Boolean)
    days_from_enrolment: Mapped[int | None] = mapped_column(Integer)
    visit_before: Mapped[int | None] = mapped_column(Integer)
    visit_after: Mapped[int | None] = mapped_column(Integer)
    xray_visit_before: Mapped[int | None] = mapped_column(Integer)
    xray_visit_after: Mapped[int | None] = mapped_column(Integer)
    adjudication: Mapped[int | None] = mapped_column(Integer)
    total_or_partial: Mapped[int | None] = mapped_column(Integer)


class ImageSeries(Base):
    """A series listed in an image package's ``contents.csv``.

    ``visit_dir`` is the absolute path of the visit folder (``.../00m``) at ingest time; the
    series files are in ``visit_dir / folder``. Rescans keep the last listed row.
    """

    __tablename__ = "image_series"
    __table_args__ = (
        UniqueConstraint("subject_id", "visit", "side", "sequence"),
        Index("ix_image_series_sequence_visit", "sequence", "visit"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"))
    visit: Mapped[int] = mapped_column(Integer)
    month: Mapped[int] = mapped_column(Integer)
    # "R" / "L" for knee series, "" for series without a knee side (thigh, locator)
    side: Mapped[str] = mapped_column(String(1))
    sequence: Mapped[str] = mapped_column(String(64))
    series_description: Mapped[str] = mapped_column(String(128))
    study_description: Mapped[str | None] = mapped_column(String(128))
    folder: Mapped[str] = mapped_column(Text)
    visit_dir: Mapped[str] = mapped_column(Text)
    study_date: Mapped[dt.date | None] = mapped_column(Date)
    barcode: Mapped[str | None] = mapped_column(String(32))
    source_file: Mapped[str] = mapped_column(Text)
    source_row: Mapped[int] = mapped_column(Integer)


# --------------------------------------------------------------------------- labels and splits


class LabelDefinition(Base):
    """A versioned, parameterised progression-label definition (e.g. ``panfilov2022``)."""

    __tablename__ = "label_definitions"
    __table_args__ = (UniqueConstraint("name", "params_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    params_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # the ingest run whose data the stored labels were derived from
    ingest_run_id: Mapped[int | None] = mapped_column(ForeignKey("ingest_runs.id"))


class KneeLabel(Base):
    """The label of one knee under one definition, or the reason it is excluded."""

    __tablename__ = "knee_labels"
    __table_args__ = (
        UniqueConstraint("definition_id", "knee_id"),
        CheckConstraint(one_of("label", CLASSES, nullable=True), name="label"),
        CheckConstraint(one_of("event_type", EVENT_TYPES, nullable=True), name="event_type"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    definition_id: Mapped[int] = mapped_column(ForeignKey("label_definitions.id", ondelete="CASCADE"), index=True)
    knee_id: Mapped[int] = mapped_column(ForeignKey("knees.id", ondelete="CASCADE"))
    kl_baseline: Mapped[int | None] = mapped_column(Integer)
    label: Mapped[str | None] = mapped_column(String(8))  # none | slow | fast
    exclusion: Mapped[str | None] = mapped_column(String(32))
    progression_month: Mapped[int | None] = mapped_column(Integer)
    kl_increase: Mapped[int | None] = mapped_column(Integer)
    # time-to-event definitions only: months to the first event or to censoring, and the event
    time_months: Mapped[float | None] = mapped_column(Float)
    event_type: Mapped[str | None] = mapped_column(String(16))  # progression | knee_replacement | censored: NULL


class Split(Base):
    """A subject-wise split of one label definition: held-out site(s) plus grouped k folds."""

    __tablename__ = "splits"
    __table_args__ = (UniqueConstraint("definition_id", "params_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    definition_id: Mapped[int] = mapped_column(ForeignKey("label_definitions.id", ondelete="CASCADE"))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    params_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class SplitAssignment(Base):
    """Where one knee goes in a split: ``test``, or ``train`` with its cross-validation fold."""

    __tablename__ = "split_assignments"
    __table_args__ = (CheckConstraint(one_of("role", ROLES), name="role"),)

    split_id: Mapped[int] = mapped_column(ForeignKey("splits.id", ondelete="CASCADE"), primary_key=True)
    knee_id: Mapped[int] = mapped_column(ForeignKey("knees.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(8))  # train | test
    fold: Mapped[int | None] = mapped_column(Integer)


# --------------------------------------------------------------------------- imaging


class Store(Base):
    """A volume store: its identity (the UUID written into its ``zarr.json`` attributes when it was
    made) and where it is now. ``oai store relocate`` changes ``path``; the id never changes."""

    __tablename__ = "stores"
    __table_args__ = (UniqueConstraint("path"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # UUID, as in the store's attributes
    path: Mapped[str] = mapped_column(Text)  # canonical (oaicohort.db.stores.canonical_path)
    moved_from: Mapped[str | None] = mapped_column(Text)  # the path before the last relocation
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Volume(Base):
    """A preprocessed volume in a Zarr store, indexed only once completely written (or failed)."""

    __tablename__ = "volumes"
    __table_args__ = (
        UniqueConstraint("store_id", "params_hash", "knee_id", "visit", "view"),
        Index("ix_volumes_store_view", "store_id", "view"),
        CheckConstraint(one_of("status", VOLUME_STATUSES), name="status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    knee_id: Mapped[int] = mapped_column(ForeignKey("knees.id", ondelete="CASCADE"), index=True)
    series_id: Mapped[int | None] = mapped_column(ForeignKey("image_series.id", ondelete="SET NULL"))
    visit: Mapped[int] = mapped_column(Integer)
    view: Mapped[str] = mapped_column(String(8))  # sag | cor | ax
    store_id: Mapped[str] = mapped_column(ForeignKey("stores.id", ondelete="CASCADE"))
    params_hash: Mapped[str] = mapped_column(String(64))
    array_path: Mapped[str | None] = mapped_column(Text)  # path of the array inside the store
    position: Mapped[int | None] = mapped_column(Integer)  # index along the array's first axis
    shape: Mapped[list[Any] | None] = mapped_column(JSON)
    spacing_mm: Mapped[list[Any] | None] = mapped_column(JSON)
    checksum: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(8))  # ok | failed
    reason: Mapped[str | None] = mapped_column(Text)
    notes: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # padding/cropping facts
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class SlotClaim(Base):
    """A store slot a running ``oai preprocess`` has reserved but not yet indexed.

    Shards of one store (``--shard K/N``, on PostgreSQL) take their slots through these rows, in
    the database's serialised write transaction, so two shards never write one slot
    (``oaicohort.imaging.runs.slots``). ``owner`` names the run: ``K/N`` for a shard, ``all`` for
    an unsharded run. A run deletes its claims when it ends; a killed run's claims are taken back
    by the next run of the same owner (or by an unsharded run, which has the store alone), so its
    reserved slots become reusable orphans."""

    __tablename__ = "slot_claims"

    store_id: Mapped[str] = mapped_column(ForeignKey("stores.id", ondelete="CASCADE"), primary_key=True)
    view: Mapped[str] = mapped_column(String(8), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


# --------------------------------------------------------------------------- variables and saved cohorts


class KneeVariablePair(Base):
    """A right/left pair of clinical variables that together make one knee-level variable.

    Detected at ingest among the ingested variables (:mod:`oaicohort.ingest.dictionary`):
    ``V00WOMKPR`` / ``V00WOMKPL`` of one file are the pair ``WOMKP@V00`` (stem ``WOMKP``,
    prefix ``V00``, visit 0). A knee's value is the variable of its side.
    """

    __tablename__ = "knee_variable_pairs"
    __table_args__ = (UniqueConstraint("name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))  # STEM@PREFIX, or STEM for names without prefix
    stem: Mapped[str] = mapped_column(String(64))
    prefix: Mapped[str] = mapped_column(String(8))  # V00, P01 ... or ""
    visit: Mapped[int | None] = mapped_column(Integer)  # OAI visit code of a Vvv prefix
    right_variable: Mapped[str] = mapped_column(String(64))
    left_variable: Mapped[str] = mapped_column(String(64))
    source_file: Mapped[str] = mapped_column(Text)


class DataDictionaryEntry(Base):
    """One ``code: label`` meaning of an ingested coded variable, as the release writes it."""

    __tablename__ = "data_dictionary"
    __table_args__ = (UniqueConstraint("variable", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    variable: Mapped[str] = mapped_column(String(64), index=True)
    code: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(Text)
    source_file: Mapped[str] = mapped_column(Text)


class SavedCohort(Base):
    """A named cohort query with its frozen result, to be re-run and cited later.

    ``query``: the filters and options; ``knees``: the result (columnar lists); ``snapshot``:
    what decided every knee of the definition at save time (label, exclusion, baseline KL,
    requested variables, first readings), to say why knees entered or left on a re-run.
    """

    __tablename__ = "saved_cohorts"
    __table_args__ = (UniqueConstraint("name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    query: Mapped[dict[str, Any]] = mapped_column(JSON)
    definition_name: Mapped[str] = mapped_column(String(64))
    params_hash: Mapped[str] = mapped_column(String(64))
    split_id: Mapped[int | None] = mapped_column(Integer)
    knees: Mapped[dict[str, Any]] = mapped_column(JSON)
    content_hash: Mapped[str] = mapped_column(String(64))
    snapshot: Mapped[dict[str, Any]] = mapped_column(JSON)
    # a matched cohort's matching: its rules, balance before/after and unmatched cases (else NULL)
    matching: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    ingest_run_id: Mapped[int | None] = mapped_column(Integer)
    toolkit_version: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


# --------------------------------------------------------------------------- staleness


class StaleResult(Base):
    """A label definition's labels (``kind`` labels) or a split (``kind`` split) made before a
    re-ingest changed the site or sex of one of its subjects (oaicohort.db.staleness)."""

    __tablename__ = "stale_results"
    __table_args__ = (Index("ix_stale_results_kind_target", "kind", "target_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # labels | split
    target_id: Mapped[int] = mapped_column(Integer)  # label_definitions.id or splits.id
    subject_id: Mapped[int] = mapped_column(Integer)
    field: Mapped[str] = mapped_column(String(16))  # site | sex
    old_value: Mapped[str | None] = mapped_column(String(64))
    new_value: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class XrayRoi(Base):
    """Where a stored knee-radiograph ROI (an ``xray`` volume) came from: its box in the source
    image (row0, col0, row1, col1 pixels), the source pixel size and the localiser that found it."""

    __tablename__ = "xray_rois"
    __table_args__ = (UniqueConstraint("volume_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    volume_id: Mapped[int] = mapped_column(ForeignKey("volumes.id", ondelete="CASCADE"))
    localiser: Mapped[str] = mapped_column(String(32))  # profile-v1 | roi-file
    centre_row: Mapped[float] = mapped_column(Float)
    centre_col: Mapped[float] = mapped_column(Float)
    box: Mapped[list[Any]] = mapped_column(JSON)
    source_spacing_mm: Mapped[float] = mapped_column(Float)
    source_shape: Mapped[list[Any]] = mapped_column(JSON)
    score: Mapped[float | None] = mapped_column(Float)
