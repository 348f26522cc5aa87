"""Class 7: exports and encodings. Spreadsheet formulas neutralised in CSV/TSV (numbers
untouched, opt-out), mixed coded/free-text columns keep both, mixed encodings refused naming the
line, JSON output never holds NaN or Infinity."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from oaicli.common import emit_json
from oaicohort.cohort.export import dumps, records_json, to_delimited, variable_column
from oaicohort.cohort.labels import derive_labels
from oaicohort.db import Database
from oaicohort.errors import InputFileError
from oaicohort.ingest.run import ingest_release
from tests.helpers.releases import ASCII
from tests.helpers.reliability import run_oai


def _strict(text: str) -> object:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in JSON output")

    return json.loads(text, parse_constant=refuse)


def test_formula_cells_are_neutralised_and_numbers_untouched() -> None:
    frame = pd.DataFrame(
        {
            "text": ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "plain", None],
            "number": [-1.5, 2.0, -3.0, 0.0, np.nan, 7.0],
            "integer": pd.array([-1, 2, None, 4, 5, 6], dtype="Int64"),
        }
    )
    csv_text = to_delimited(frame)
    back = pd.read_csv(io.StringIO(csv_text), dtype={"text": str})
    assert back["text"].tolist()[:5] == ["'=cmd|' /C calc'!A0", "'+1+1", "'-2+3", "'@SUM(A1)", "plain"]
    assert back["number"].tolist()[:4] == [-1.5, 2.0, -3.0, 0.0] and back["integer"].tolist()[0] == -1
    tsv = to_delimited(frame, sep="\t")
    assert tsv.splitlines()[1].split("\t")[0] == "'=cmd|' /C calc'!A0"
    raw = to_delimited(frame, neutralise=False)
    assert "\n=cmd" in raw


def test_json_never_holds_nan_or_infinity(capsys: pytest.CaptureFixture[str]) -> None:
    payload = {"ap": math.nan, "auc": np.float64("inf"), "n": np.int64(3), "list": [1.0, -math.inf, pd.NA]}
    emit_json(payload)
    assert _strict(capsys.readouterr().out) == {"ap": None, "auc": None, "n": 3, "list": [1.0, None, None]}
    frame = pd.DataFrame({"bmi": [25.0, np.nan], "when": pd.to_datetime(["2005-01-02", None])})
    assert _strict(records_json(frame)) == [{"bmi": 25.0, "when": "2005-01-02T00:00:00"}, {"bmi": None, "when": None}]
    assert dumps(float("nan")) == "null"


def test_mixed_coded_and_free_text_column_keeps_both() -> None:
    num = pd.Series([1.0, np.nan, np.nan, 0.0])
    text = pd.Series(["1: Yes", "left knee, see notes", ".A: Not Expected", "0: No"])
    column = variable_column(num, text)
    assert column.tolist() == [1.0, "left knee, see notes", None, 0.0]
    assert variable_column(pd.Series([1.0, np.nan]), pd.Series(["1: Yes", ".A"])).dtype == float


def _set_cells(path: Path, column: str, values: dict[int, str]) -> dict[int, str]:
    lines = path.read_text().splitlines()
    header = lines[0].split("|")
    ids = {}
    for row, value in values.items():
        cells = lines[row].split("|")
        cells[header.index(column)] = value
        ids[int(cells[0])] = value
        lines[row] = "|".join(cells)
    path.write_text("\n".join(lines) + "\n")
    return ids


def test_cohort_export_end_to_end(pristine_release: Path, tmp_path: Path, any_db: Database) -> None:
    root = tmp_path / "release"
    shutil.copytree(pristine_release, root)
    ids = _set_cells(
        root / ASCII / "AllClinical00.txt", "P01INJR", {1: '=HYPERLINK("http://x")', 2: "left knee, see notes"}
    )
    ingest_release(any_db, root, variables=["P01INJR"])
    derive_labels(any_db)
    args = ("cohort", "--include-excluded", "--var", "P01INJR", "--format")
    done = run_oai(any_db.url, *args, "csv")
    assert done.returncode == 0, done.stderr
    frame = pd.read_csv(io.StringIO(done.stdout), dtype={"P01INJR": str})
    values = dict(zip(frame["subject_id"], frame["P01INJR"], strict=True))
    formula, free = ids
    assert values[formula] == '\'=HYPERLINK("http://x")' and values[free] == "left knee, see notes"
    assert {"0.0", "1.0"} & set(values.values())  # the coded rows are still numbers
    raw = run_oai(any_db.url, *args, "tsv", "--raw-cells")
    raw_frame = pd.read_csv(io.StringIO(raw.stdout), sep="\t", dtype={"P01INJR": str})
    assert dict(zip(raw_frame["subject_id"], raw_frame["P01INJR"], strict=True))[formula] == '=HYPERLINK("http://x")'
    as_json = run_oai(any_db.url, *args, "json")
    records = _strict(as_json.stdout)
    assert any(r["P01INJR"] == "left knee, see notes" for r in records)  # type: ignore[union-attr]


def test_mixed_encodings_are_reported_with_the_line(pristine_release: Path, tmp_path: Path, db: Database) -> None:
    root = tmp_path / "release"
    shutil.copytree(pristine_release, root)
    path = root / ASCII / "Enrollees.txt"
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"White or Caucasian", "Weiß".encode())  # UTF-8
    lines[5] = lines[5].replace(b"White or Caucasian", "Weiß".encode("latin-1"))  # latin-1
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(InputFileError) as err:
        ingest_release(db, root)
    assert err.value.path.name == "Enrollees.txt" and err.value.line == 6
    assert "mixed text encodings" in str(err.value) and "line 3 is UTF-8" in str(err.value)
