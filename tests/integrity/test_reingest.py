"""Class 1: a re-ingest never removes data by accident.

A file that gave rows before and now gives none or far fewer, or a column the database holds
values of that is now dropped or blanked, stops the ingest (exit 1, naming the file, the column
and both counts) unless ``--allow-shrink``; every line-end convention reads the same rows;
what is not a regular file (FIFO, device, directory, broken link) is skipped, never blocked on.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from oaicohort.db import Database, open_database
from oaicohort.ingest.guards import ShrinkingReleaseError
from oaicohort.ingest.run import ingest_release
from tests.helpers.releases import ASCII
from tests.helpers.reliability import DATA_TABLES, message_lines, run_oai, table_rows

KXR00 = f"{ASCII}/kXR_SQ_BU00.txt"


def _copy(release: Path, tmp_path: Path) -> Path:
    root = tmp_path / "release"
    shutil.copytree(release, root, symlinks=True)
    return root


def _convert_line_ends(path: Path, style: str) -> None:
    lines = path.read_bytes().split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    if style == "mixed":
        ends = [b"\r\n", b"\r", b"\n"]
        path.write_bytes(b"".join(line + ends[i % 3] for i, line in enumerate(lines)))
    else:
        end = {"cr": b"\r", "crlf": b"\r\n", "lf": b"\n", "cr-no-final": b"\r"}[style]
        body = end.join(lines)
        path.write_bytes(body if style == "cr-no-final" else body + end)


@pytest.mark.parametrize("style", ["cr", "crlf", "mixed", "cr-no-final"])
def test_every_line_end_convention_reads_the_same_rows(
    style: str, pristine_release: Path, tmp_path: Path, any_db: Database
) -> None:
    ingest_release(any_db, pristine_release)
    expected = table_rows(any_db, DATA_TABLES)
    root = _copy(pristine_release, tmp_path)
    for path in [*root.glob(f"{ASCII}/*.txt"), root / "00m" / "contents.csv"]:
        _convert_line_ends(path, style)
    result = ingest_release(any_db, root)
    assert result.status == "succeeded"
    assert table_rows(any_db, DATA_TABLES) == expected
    # and a fresh database gets the same rows from the converted release
    fresh = open_database(tmp_path / "fresh.sqlite")
    ingest_release(fresh, root)
    assert table_rows(fresh, DATA_TABLES) == expected
    fresh.dispose()


@pytest.mark.parametrize("damage", ["header only", "half the rows", "old-Mac line ends, unconverted reader"])
def test_a_file_giving_far_fewer_rows_stops_the_reingest_and_changes_nothing(
    damage: str, pristine_release: Path, tmp_path: Path, any_db: Database
) -> None:
    ingest_release(any_db, pristine_release)
    before = table_rows(any_db, DATA_TABLES)
    root = _copy(pristine_release, tmp_path)
    path = root / KXR00
    lines = path.read_text().splitlines()
    if damage == "header only":
        kept = lines[:1]
    elif damage == "half the rows":
        kept = lines[: 1 + (len(lines) - 1) // 2 - 1]
    else:  # the header with every row glued on: one line
        path.write_bytes(path.read_bytes().replace(b"\n", b"\x0b"))
        kept = None
    if kept is not None:
        path.write_text("\n".join(kept) + "\n")
    with pytest.raises(Exception) as err:
        ingest_release(any_db, root)
    message = str(err.value)
    if damage == "old-Mac line ends, unconverted reader":
        assert "kXR_SQ_BU00.txt" in message  # refused by the parser, naming the file
    else:
        assert isinstance(err.value, ShrinkingReleaseError)
        assert f"{KXR00} gives {len(kept) - 1:,} rows" in message and f"read {len(lines) - 1:,}" in message
        assert "--allow-shrink" in message
    assert table_rows(any_db, DATA_TABLES) == before


def test_allow_shrink_applies_the_smaller_file(pristine_release: Path, tmp_path: Path, any_db: Database) -> None:
    ingest_release(any_db, pristine_release)
    root = _copy(pristine_release, tmp_path)
    path = root / KXR00
    path.write_text(path.read_text().splitlines()[0] + "\n")
    result = ingest_release(any_db, root, allow_shrink=True)
    assert result.status == "succeeded"
    with any_db.read() as s:
        by_visit = dict(s.execute(text("SELECT visit, count(*) FROM xray_readings GROUP BY visit")).all())
    assert 0 not in by_visit and sum(by_visit.values()) == 256 - 53  # baseline held 53 of the 256


def test_cli_names_the_file_and_both_counts_and_exits_1(pristine_release: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert run_oai(db, "ingest", str(pristine_release)).returncode == 0
    root = _copy(pristine_release, tmp_path)
    path = root / KXR00
    path.write_text(path.read_text().splitlines()[0] + "\n")
    done = run_oai(db, "ingest", str(root))
    assert done.returncode == 1, done.stderr
    text = " ".join(done.stderr.split())
    assert "kXR_SQ_BU00.txt gives 0 rows, ingest run 1 read 53" in text
    assert "Traceback" not in done.stderr and len(message_lines(done.stderr)) <= 4
    ok = run_oai(db, "ingest", "--allow-shrink", str(root))
    assert ok.returncode == 0, ok.stderr


def _empty_column(path: Path, column: str, how: str) -> None:
    """Drop ``column`` from a delimited table (``|`` or ``,``) or blank every value of it."""
    lines = path.read_text().splitlines()
    sep = "|" if "|" in lines[0] else ","
    rows = [line.split(sep) for line in lines]
    at = [name.upper() for name in rows[0]].index(column.upper())
    for row in rows[1:] if how == "blanked" else rows:
        if how == "blanked":
            row[at] = ""
        else:
            del row[at]
    path.write_text("\n".join(sep.join(row) for row in rows) + "\n")


# a column the readers do not require, and the stored values it feeds
EMPTIABLE = {
    "JSN grade": (KXR00, "V00XRJSM", "SELECT count(jsn_medial) FROM xray_readings WHERE visit = 0"),
    "follow-up visit date": (
        f"{ASCII}/AllClinical01.txt",
        "V01FVDATE",
        "SELECT count(visit_date) FROM subject_visits WHERE visit = 1",
    ),
    "sex": (f"{ASCII}/Enrollees.txt", "P02SEX", "SELECT count(sex) FROM subjects"),
    "replacement at baseline": (
        f"{ASCII}/Outcomes99.txt",
        "V99ERKBLRP",
        "SELECT count(at_baseline) FROM knee_replacements JOIN knees ON knees.id = knee_id WHERE side = 'R'",
    ),
    "study date": ("00m/contents.csv", "StudyDate", "SELECT count(study_date) FROM image_series WHERE visit = 0"),
}


@pytest.mark.parametrize("how", ["dropped", "blanked"])
@pytest.mark.parametrize("case", sorted(EMPTIABLE))
def test_a_file_dropping_or_blanking_a_column_stops_the_reingest_and_changes_nothing(
    case: str, how: str, pristine_release: Path, tmp_path: Path, any_db: Database
) -> None:
    relative, column, held_sql = EMPTIABLE[case]
    ingest_release(any_db, pristine_release)
    before = table_rows(any_db, DATA_TABLES)
    root = _copy(pristine_release, tmp_path)
    _empty_column(root / relative, column, how)
    with any_db.read() as s:
        held = s.execute(text(held_sql)).scalar_one()
    assert held > 0
    with pytest.raises(ShrinkingReleaseError) as err:
        ingest_release(any_db, root)
    message = " ".join(str(err.value).split())
    assert f"{relative}: column {column} gives 0 values, the database holds {held:,}" in message
    assert "--allow-shrink" in message
    assert table_rows(any_db, DATA_TABLES) == before


def test_allow_shrink_writes_the_emptied_column(pristine_release: Path, tmp_path: Path, any_db: Database) -> None:
    ingest_release(any_db, pristine_release)
    root = _copy(pristine_release, tmp_path)
    _empty_column(root / KXR00, "V00XRJSM", "dropped")
    assert ingest_release(any_db, root, allow_shrink=True).status == "succeeded"
    with any_db.read() as s:
        counts = s.execute(text("SELECT count(*), count(jsn_medial) FROM xray_readings WHERE visit = 0")).one()
    assert tuple(counts) == (53, 0)


def test_a_column_gaining_values_or_a_first_ingest_is_never_stopped(
    pristine_release: Path, tmp_path: Path, any_db: Database
) -> None:
    root = _copy(pristine_release, tmp_path)
    _empty_column(root / KXR00, "V00XRJSM", "dropped")
    assert ingest_release(any_db, root).status == "succeeded"  # nothing held yet: nothing to lose
    assert ingest_release(any_db, pristine_release).status == "succeeded"


def test_cli_names_the_emptied_column_and_exits_1(pristine_release: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert run_oai(db, "ingest", str(pristine_release)).returncode == 0
    root = _copy(pristine_release, tmp_path)
    _empty_column(root / KXR00, "V00XRJSM", "dropped")
    done = run_oai(db, "ingest", str(root))
    assert done.returncode == 1, done.stderr
    text = " ".join(done.stderr.split())
    assert "kXR_SQ_BU00.txt: column V00XRJSM gives 0 values, the database holds" in text
    assert "Traceback" not in done.stderr and len(message_lines(done.stderr)) <= 4


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs are POSIX")
def test_non_regular_files_named_like_tables_are_skipped_never_blocked_on(
    pristine_release: Path, tmp_path: Path, any_db: Database
) -> None:
    ingest_release(any_db, pristine_release)
    expected = table_rows(any_db, DATA_TABLES)
    root = _copy(pristine_release, tmp_path)
    extra = root / "extra"
    extra.mkdir()
    os.mkfifo(extra / "kXR_SQ_BU12.txt")  # opening it for reading would wait for a writer for ever
    (extra / "AllClinical12.txt").symlink_to(tmp_path / "nowhere.txt")  # a broken link
    (extra / "kXR_SQ_BU11.txt").mkdir()  # a directory named like a table
    (extra / "contents.csv").symlink_to("/dev/null")  # a character device
    done = run_oai(any_db.url, "ingest", str(root), timeout=120)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stderr.split())
    assert "not a regular file" in text and "broken link" in text and "directory named like" in text
    assert table_rows(any_db, DATA_TABLES) == expected
