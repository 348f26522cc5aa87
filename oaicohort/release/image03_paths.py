"""What the ``image_file`` path of an NDA ``image03`` row says: visit, release code, study date.

Real ``image_file`` values end ``.../00m/0.C.2/<participant>/<YYYYMMDD>/<series>.tar.gz``
(OAI_DISTRIBUTIONS.md section 5): the visit folder, the image release code, the participant and
the study date. Real exports may lack a ``visit`` column, and their ``interview_date`` was seen to
be one day before the date in the path (3,316 of 3,316 rows), so the path is where both are read.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from oaicohort.release.visit_paths import release_visit, visit_of_dir

# [<visit folder>/]<release code>/<participant>/<YYYYMMDD>/<series file> at the end of the path
_PATH = r"(?:^|/)(?:(?P<dir>[^/]+)/)?(?P<code>\d{1,2}\.[A-Za-z]\.\d{1,2})/(?P<participant>\d+)/(?P<date>\d{8})/[^/]+$"


def _extract(keys: pd.Series, pattern: str) -> pd.DataFrame:
    """The named groups of ``pattern`` in each key (None where it does not match), vectorised."""
    found = pc.extract_regex(pa.array(keys, type=pa.large_string(), from_pandas=True), pattern)
    out = pd.DataFrame(index=keys.index)
    for name in (found.type.field(i).name for i in range(found.type.num_fields)):
        values = pc.struct_field(found, name).to_numpy(zero_copy_only=False).astype(object)
        values[pd.isna(values)] = None
        out[name] = values
    return out


def path_facts(keys: pd.Series) -> pd.DataFrame:
    """For each ``image_file`` path (already without its URL scheme and host): ``visit`` (float,
    NaN where the path names none: from the visit folder, else the release code), ``code``,
    ``participant`` and ``study_date`` (a ``datetime.date``, None where absent or not a date)."""
    found = _extract(keys, _PATH)
    dirs = {d: visit_of_dir(d) for d in found["dir"].dropna().unique().tolist()}
    codes = {c: release_visit(c) for c in found["code"].dropna().unique().tolist()}
    visit = found["dir"].map(dirs).astype("float64").fillna(found["code"].map(codes).astype("float64"))
    parsed = pd.to_datetime(found["date"], format="%Y%m%d", errors="coerce")
    study_date = np.full(len(keys), None, dtype=object)
    ok = parsed.notna().to_numpy()
    study_date[ok] = parsed[ok].dt.date.to_numpy(dtype=object)
    return pd.DataFrame(
        {
            "visit": visit.to_numpy(),
            "code": found["code"].to_numpy(dtype=object),
            "participant": found["participant"].to_numpy(dtype=object),
            "study_date": study_date,
        },
        index=keys.index,
    )


def date_note(relative_path: str, path_dates: pd.Series, interview: pd.Series) -> str | None:
    """The one message saying that study dates come from the paths, when ``interview_date``
    (where given) disagrees with them; None when they agree."""
    both = (path_dates.notna() & interview.notna()).to_numpy()
    days = np.zeros(len(both), dtype=np.int64)
    days[both] = [a.toordinal() - b.toordinal() for a, b in zip(path_dates[both], interview[both])]
    differ = days != 0
    if not differ.any():
        return None
    return (
        f"{relative_path}: study dates taken from the image_file paths; interview_date differs on "
        f"{int(differ.sum())} of {int(both.sum())} rows ({int((days == 1).sum())} of them one day earlier)"
    )
