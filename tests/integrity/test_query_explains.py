"""Class 8: a query that matches nothing says why.

Filter values are checked against what the database holds (a site, a fold, a sequence and its
visit), an empty range or a text value for a numeric variable is refused, and a label given
where codes are stored (``INJ@P01=Yes``) is read as its code or refused with the codes listed:
each a usage error (exit 2) naming the value, as ``--kl 7`` always was. A valid query matching
no knee says which filter removed the last ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.cohort.labels import derive_labels
from oaicohort.cohort.query import Cohort, QueryError
from oaicohort.cohort.splits import make_split
from oaicohort.db import Database, open_database
from oaicohort.ingest.run import ingest_release
from tests.helpers.databases import BACKENDS, fresh_database_url

VARIABLES = ["V00WOMKPR", "V00WOMKPL", "P01INJR", "P01INJL"]


@pytest.fixture(scope="module", params=BACKENDS)
def queried(
    request: pytest.FixtureRequest, pristine_release: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    """Ingested (with a numeric and a coded knee-side variable), labelled and split once per back-end;
    the tests only read it."""
    for url in fresh_database_url(request.param, tmp_path_factory.mktemp("query")):
        db = open_database(url)
        ingest_release(db, pristine_release, variables=VARIABLES)
        derive_labels(db)
        make_split(db, test_sites=("D",), folds=2, seed=0)
        yield db
        db.dispose()


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"site": "Q"}, "filter site='Q': no subject has this site; sites in the database: A, B, C, D, E"),
        ({"site": ["A", "Q"]}, "filter site='Q': no subject has this site"),
        ({"fold": 9}, "filter fold=9: split 1 has folds 0, 1"),
        ({"fold": [0, -1]}, "filter fold=-1: split 1 has folds 0, 1"),
        ({"has_sequence": "SAG_3D_DES"}, "no indexed image series has this sequence (did you mean SAG_3D_DESS?)"),
        ({"has_sequence": ("SAG_3D_DESS", 1)}, "no SAG_3D_DESS series of visit 1 is indexed; visits with one: 0"),
        ({"age": (70, 50)}, "filter age=(70, 50): an empty range"),
        ({"WOMKP@V00": (5, 1)}, "filter WOMKP@V00=(5, 1): an empty range"),
        ({"WOMKP@V00": "abc"}, "filter WOMKP@V00='abc': expected a number"),
        (
            {"INJ@P01": "Maybe"},
            "filter INJ@P01='Maybe': not a code or label of P01INJR/P01INJL; its codes: 0 (No), 1 (Yes)",
        ),
        ({"exclusion": "bmi\x00"}, "contains a NUL character"),
    ],
)
def test_a_filter_value_nothing_has_is_refused_naming_it(
    queried: Database, filters: dict[str, Any], message: str
) -> None:
    with pytest.raises(QueryError) as err:
        Cohort(queried).knees(**filters)
    assert message in str(err.value)
    assert err.value.exit_code == 2


def test_a_label_where_codes_are_stored_is_read_as_its_code(queried: Database) -> None:
    cohort = Cohort(queried)
    by_code = cohort.knees(**{"INJ@P01": 1})
    assert len(by_code) > 0
    for label in ("Yes", "yes", " YES "):
        by_label = cohort.knees(**{"INJ@P01": label})
        assert by_label["knee_id"].tolist() == by_code["knee_id"].tolist()
    assert (
        cohort.knees(**{"INJ@P01": ["No", "Yes"]})["knee_id"].tolist()
        == cohort.knees(**{"INJ@P01": [0, 1]})["knee_id"].tolist()
    )


def test_an_empty_result_says_which_filter_removed_the_last_knees(queried: Database) -> None:
    cohort = Cohort(queried)
    total = len(cohort.knees())
    on_site = len(cohort.knees(site="A"))
    frame = cohort.knees(site="A", kl_baseline=4, sex="F")
    assert frame.empty
    reason = frame.attrs["empty_reason"]
    assert reason.startswith(
        f"0 knees: definition 'panfilov2022' has {total} included knees; site='A' leaves {on_site}"
    )
    assert "kl_baseline=4 leaves 0 (this filter removed the last ones)" in reason
    assert "sex" not in reason  # the filters after the one that emptied it are not named
    assert "empty_reason" not in cohort.knees(site="A").attrs


CLI_REFUSED = [
    (["--site", "Q"], "filter site='Q': no subject has this site"),
    (["--fold", "9"], "filter fold=9: split 1 has folds 0, 1"),
    (["--has-sequence", "SAG_3D_DES"], "did you mean SAG_3D_DESS?"),
    (["--var", "WOMKP@V00=5:1"], "an empty range"),
    (["--var", "WOMKP@V00=abc"], "expected a number"),
    (["--var", "INJ@P01=Maybe"], "its codes: 0 (No), 1 (Yes)"),
    (["--age-min", "80", "--age-max", "50"], "filter age=(80, 50): an empty range"),
    (["--kl", "7"], "expected a KL grade 0-4"),
]


@pytest.mark.parametrize(("args", "message"), CLI_REFUSED, ids=[" ".join(a) for a, _ in CLI_REFUSED])
def test_cli_refuses_them_as_usage_errors(queried: Database, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["--db", queried.url, "cohort", *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split()) and "Traceback" not in result.output


def test_cli_translates_a_label_and_explains_an_empty_listing(queried: Database) -> None:
    runner = CliRunner()
    by_label = runner.invoke(app, ["--db", queried.url, "cohort", "--var", "INJ@P01=Yes", "-f", "csv"])
    by_code = runner.invoke(app, ["--db", queried.url, "cohort", "--var", "INJ@P01=1", "-f", "csv"])
    assert by_label.exit_code == 0 and by_label.stdout == by_code.stdout and len(by_code.stdout.splitlines()) > 1
    empty = runner.invoke(app, ["--db", queried.url, "cohort", "--site", "A", "--kl", "4", "-f", "csv"])
    assert empty.exit_code == 0 and len(empty.stdout.splitlines()) == 1  # the header only
    note = " ".join(empty.stderr.split())
    assert note.startswith("note: 0 knees:") and "kl_baseline=[4] leaves 0 (this filter removed the last ones)" in note
