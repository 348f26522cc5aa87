"""The content of an ingested database, form-independent: what the distribution tests compare
between the forms a release comes in (ASCII, zip, SAS, NDA package)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from oaicohort.db import Database

# each table without ids, paths and line numbers; missing codes "" and "." made one
COMPARED = {
    "subjects": "id, site, sex, race, cohort",
    "knees": "subject_id, side",
    "subject_visits": "subject_id, visit, month, age, bmi, visit_date",
    "xray_readings": "k.subject_id, k.side, r.visit, r.read_project, r.klg, {code}, r.jsn_medial, r.jsn_lateral, "
    "r.osteophyte_fm, r.osteophyte_fl, r.osteophyte_tm, r.osteophyte_tl",
    "knee_replacements": "k.subject_id, k.side, r.status, r.at_baseline, r.days_from_enrolment, r.visit_before, "
    "r.visit_after, r.xray_visit_before, r.xray_visit_after, r.adjudication, r.total_or_partial",
    "clinical_values": "subject_id, variable, value_num, {code}",
    "image_series": "subject_id, visit, month, side, sequence, series_description, study_date, barcode",
}
FROM = {
    "xray_readings": "xray_readings r JOIN knees k ON k.id = r.knee_id",
    "knee_replacements": "knee_replacements r JOIN knees k ON k.id = r.knee_id",
}
CODE = {"xray_readings": "r.klg_missing_code", "clinical_values": "missing_code"}


def dump(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    with db.read() as s:
        for table, columns in COMPARED.items():
            code = CODE.get(table, "NULL")
            columns = columns.format(code=f"CASE WHEN {code} IN ('', '.') THEN '.' ELSE {code} END")
            rows = s.execute(text(f"SELECT {columns} FROM {FROM.get(table, table)}")).all()
            # booleans read back as 0/1 from SQLite and True/False from PostgreSQL
            out[table] = sorted((tuple(str(int(v) if isinstance(v, bool) else v) for v in r) for r in rows), key=repr)
    return out
