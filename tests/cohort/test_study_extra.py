"""Without the [study] extra, the methods-section outputs say how to install it in one line,
exit 1, and print no traceback (issue 23)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.cohort import study_extra
from oaicohort.cohort.study_extra import StudyExtraMissingError
from oaicohort.db import Database
from tests.helpers.reliability import message_lines


@pytest.mark.parametrize(
    ("module", "option", "suffix", "package"),
    [
        ("tableone", "--table1", "md", "tableone"),
        ("sksurv", "--km", "png", "scikit-survival"),
        ("graphviz", "--flow", "svg", "graphviz"),
    ],
)
def test_a_missing_library_says_how_to_install_it(
    synthetic_db: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    module: str,
    option: str,
    suffix: str,
    package: str,
) -> None:
    for name in [m for m in sys.modules if m == module or m.startswith(f"{module}.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails
    definition = ["-d", "panfilov2022_tte"] if option == "--km" else []
    res = CliRunner().invoke(
        app, ["--db", synthetic_db.url, "cohort", *definition, option, str(tmp_path / f"out.{suffix}")]
    )
    assert res.exit_code == 1, res.output
    message = " ".join(res.stderr.split())
    assert f"needs the Python package {package}" in message
    assert 'install the study extra with: pip install "oai-toolkit[study]"' in message
    assert "Traceback" not in res.output and len(message_lines(res.stderr)) <= 3
    assert not (tmp_path / f"out.{suffix}").exists()


@pytest.mark.parametrize(
    ("module", "package"),
    [("tableone", "tableone"), ("tabulate", "tabulate"), ("graphviz", "graphviz"), ("sksurv", "scikit-survival")],
)
def test_each_library_is_returned_or_named_in_one_line(
    monkeypatch: pytest.MonkeyPatch, module: str, package: str
) -> None:
    loader = getattr(study_extra, module)
    assert loader("x") is not None
    monkeypatch.setitem(sys.modules, module, None)
    if module == "sksurv":
        monkeypatch.setitem(sys.modules, "sksurv.compare", None)
        monkeypatch.setitem(sys.modules, "sksurv.nonparametric", None)
    with pytest.raises(StudyExtraMissingError, match=rf"^the baseline table needs the Python package {package} "):
        loader("the baseline table")
