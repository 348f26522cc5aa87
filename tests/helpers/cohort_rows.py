"""Hand-made cohort rows for the label, query and split tests: a subject with its baseline visit,
a knee with its X-ray readings (a KLG, a missing code or reading-project duplicates per visit),
its DESS series and an optional replacement."""

from __future__ import annotations

import itertools
from typing import Any

from oaicohort.db.schema import ImageSeries, Knee, KneeReplacement, Subject, SubjectVisit, XrayReading
from oaicohort.visits import visit_month

_ROWS = itertools.count(1)


def add_subject(
    s: Any,
    sid: int,
    *,
    site: str = "A",
    sex: str = "F",
    age: float | None = 60.0,
    bmi: float | None = 28.0,
) -> None:
    s.add(Subject(id=sid, site=site, sex=sex))
    s.add(SubjectVisit(subject_id=sid, visit=0, month=0, age=age, bmi=bmi))


def add_knee(
    s: Any,
    sid: int,
    side: str,
    readings: dict[int, Any],
    *,
    dess: bool = True,
    replacement: dict[str, Any] | None = None,
    sequences: tuple[tuple[str, int], ...] = (),
) -> int:
    knee = Knee(subject_id=sid, side=side)
    s.add(knee)
    s.flush()
    for visit, value in readings.items():
        for item in value if isinstance(value, list) else [value]:
            grade, row, project = (*item, 15)[:3] if isinstance(item, tuple) else (item, next(_ROWS), 15)
            s.add(
                XrayReading(
                    knee_id=knee.id,
                    visit=visit,
                    month=visit_month(visit),
                    read_project=project,
                    klg=grade if isinstance(grade, int) else None,
                    klg_missing_code=None if isinstance(grade, int) else (grade or "."),
                    source_file=f"kXR_SQ_BU{visit:02d}.txt",
                    source_row=row,
                )
            )
    series = ((("SAG_3D_DESS", 0),) if dess else ()) + sequences
    for seq, visit in series:
        s.add(
            ImageSeries(
                subject_id=sid,
                visit=visit,
                month=visit_month(visit),
                side=side,
                sequence=seq,
                series_description=f"{seq}_{'RIGHT' if side == 'R' else 'LEFT'}",
                folder=f"f/{sid}{side}{seq}",
                visit_dir="/data/00m",
                source_file="00m/contents.csv",
                source_row=next(_ROWS),
            )
        )
    if replacement is not None:
        s.add(KneeReplacement(knee_id=knee.id, **replacement))
    return knee.id
