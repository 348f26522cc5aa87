"""foundation schema: subjects, knees, X-ray readings, outcomes, clinical values, image series, ingest provenance

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ingest_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source_root", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("toolkit_version", sa.String(length=32), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ingest_runs")),
    )
    op.create_table(
        "subjects",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("site", sa.String(length=1), nullable=True),
        sa.Column("sex", sa.String(length=1), nullable=True),
        sa.Column("race", sa.Integer(), nullable=True),
        sa.Column("cohort", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subjects")),
    )
    with op.batch_alter_table("subjects", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_subjects_site"), ["site"], unique=False)

    op.create_table(
        "clinical_values",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("variable", sa.String(length=64), nullable=False),
        sa.Column("value_text", sa.Text(), nullable=True),
        sa.Column("value_num", sa.Float(), nullable=True),
        sa.Column("missing_code", sa.String(length=8), nullable=True),
        sa.Column("source_file", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["subject_id"], ["subjects.id"], name=op.f("fk_clinical_values_subject_id_subjects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clinical_values")),
        sa.UniqueConstraint("subject_id", "variable", name=op.f("uq_clinical_values_subject_id_variable")),
    )
    with op.batch_alter_table("clinical_values", schema=None) as batch_op:
        batch_op.create_index("ix_clinical_values_variable_num", ["variable", "value_num"], unique=False)

    op.create_table(
        "image_series",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("visit", sa.Integer(), nullable=False),
        sa.Column("month", sa.Integer(), nullable=False),
        sa.Column("side", sa.String(length=1), nullable=False),
        sa.Column("sequence", sa.String(length=64), nullable=False),
        sa.Column("series_description", sa.String(length=128), nullable=False),
        sa.Column("study_description", sa.String(length=128), nullable=True),
        sa.Column("folder", sa.Text(), nullable=False),
        sa.Column("visit_dir", sa.Text(), nullable=False),
        sa.Column("study_date", sa.Date(), nullable=True),
        sa.Column("barcode", sa.String(length=32), nullable=True),
        sa.Column("source_file", sa.Text(), nullable=False),
        sa.Column("source_row", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["subject_id"], ["subjects.id"], name=op.f("fk_image_series_subject_id_subjects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_image_series")),
        sa.UniqueConstraint(
            "subject_id", "visit", "side", "sequence", name=op.f("uq_image_series_subject_id_visit_side_sequence")
        ),
    )
    with op.batch_alter_table("image_series", schema=None) as batch_op:
        batch_op.create_index("ix_image_series_sequence_visit", ["sequence", "visit"], unique=False)

    op.create_table(
        "ingest_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("relative_path", sa.Text(), nullable=False),
        sa.Column("table_kind", sa.String(length=32), nullable=False),
        sa.Column("visit", sa.Integer(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("n_rows", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["ingest_runs.id"], name=op.f("fk_ingest_files_run_id_ingest_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ingest_files")),
        sa.UniqueConstraint("run_id", "relative_path", name=op.f("uq_ingest_files_run_id_relative_path")),
    )
    with op.batch_alter_table("ingest_files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ingest_files_run_id"), ["run_id"], unique=False)

    op.create_table(
        "knees",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("side", sa.String(length=1), nullable=False),
        sa.ForeignKeyConstraint(
            ["subject_id"], ["subjects.id"], name=op.f("fk_knees_subject_id_subjects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_knees")),
        sa.UniqueConstraint("subject_id", "side", name=op.f("uq_knees_subject_id_side")),
    )
    with op.batch_alter_table("knees", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_knees_subject_id"), ["subject_id"], unique=False)

    op.create_table(
        "subject_visits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("visit", sa.Integer(), nullable=False),
        sa.Column("month", sa.Integer(), nullable=False),
        sa.Column("age", sa.Float(), nullable=True),
        sa.Column("bmi", sa.Float(), nullable=True),
        sa.Column("visit_date", sa.Date(), nullable=True),
        sa.ForeignKeyConstraint(
            ["subject_id"], ["subjects.id"], name=op.f("fk_subject_visits_subject_id_subjects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subject_visits")),
        sa.UniqueConstraint("subject_id", "visit", name=op.f("uq_subject_visits_subject_id_visit")),
    )
    op.create_table(
        "knee_replacements",
        sa.Column("knee_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("at_baseline", sa.Boolean(), nullable=True),
        sa.Column("days_from_enrolment", sa.Integer(), nullable=True),
        sa.Column("visit_before", sa.Integer(), nullable=True),
        sa.Column("visit_after", sa.Integer(), nullable=True),
        sa.Column("xray_visit_before", sa.Integer(), nullable=True),
        sa.Column("xray_visit_after", sa.Integer(), nullable=True),
        sa.Column("adjudication", sa.Integer(), nullable=True),
        sa.Column("total_or_partial", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["knee_id"], ["knees.id"], name=op.f("fk_knee_replacements_knee_id_knees"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("knee_id", name=op.f("pk_knee_replacements")),
    )
    op.create_table(
        "xray_readings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("knee_id", sa.Integer(), nullable=False),
        sa.Column("visit", sa.Integer(), nullable=False),
        sa.Column("month", sa.Integer(), nullable=False),
        sa.Column("read_project", sa.Integer(), nullable=True),
        sa.Column("klg", sa.Integer(), nullable=True),
        sa.Column("klg_missing_code", sa.String(length=8), nullable=True),
        sa.Column("jsn_medial", sa.Float(), nullable=True),
        sa.Column("jsn_lateral", sa.Float(), nullable=True),
        sa.Column("osteophyte_fm", sa.Float(), nullable=True),
        sa.Column("osteophyte_fl", sa.Float(), nullable=True),
        sa.Column("osteophyte_tm", sa.Float(), nullable=True),
        sa.Column("osteophyte_tl", sa.Float(), nullable=True),
        sa.Column("source_file", sa.Text(), nullable=False),
        sa.Column("source_row", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["knee_id"], ["knees.id"], name=op.f("fk_xray_readings_knee_id_knees"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_xray_readings")),
        sa.UniqueConstraint(
            "knee_id",
            "visit",
            "read_project",
            "source_row",
            name=op.f("uq_xray_readings_knee_id_visit_read_project_source_row"),
        ),
    )
    with op.batch_alter_table("xray_readings", schema=None) as batch_op:
        batch_op.create_index("ix_xray_readings_visit_knee", ["visit", "knee_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("xray_readings", schema=None) as batch_op:
        batch_op.drop_index("ix_xray_readings_visit_knee")

    op.drop_table("xray_readings")
    op.drop_table("knee_replacements")
    op.drop_table("subject_visits")
    with op.batch_alter_table("knees", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_knees_subject_id"))

    op.drop_table("knees")
    with op.batch_alter_table("ingest_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ingest_files_run_id"))

    op.drop_table("ingest_files")
    with op.batch_alter_table("image_series", schema=None) as batch_op:
        batch_op.drop_index("ix_image_series_sequence_visit")

    op.drop_table("image_series")
    with op.batch_alter_table("clinical_values", schema=None) as batch_op:
        batch_op.drop_index("ix_clinical_values_variable_num")

    op.drop_table("clinical_values")
    with op.batch_alter_table("subjects", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subjects_site"))

    op.drop_table("subjects")
    op.drop_table("ingest_runs")
