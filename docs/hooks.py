r"""MkDocs hook (mkdocs.yml `hooks:`): fills the `{{ name }}` placeholders of the pages with values
computed from the repository when the site is built, so that no count in the documentation is
written by hand and none can go stale.

- `integrity_cases`: the integrity cases of `tests/integrity` (without the damage fuzzer's seeds),
  `integrity_<stem>` those of `tests/integrity/test_<stem>.py`, `fuzzer_seeds` the fuzzer's;
  `bad_input_tables`, `bad_input_series` and `bad_input_corpus`: the damaged-input corpus of
  `tests/ingest/test_bad_inputs.py`. Counted by pytest's own collection, parametrisations and
  both database back-ends included (about 15 s, only when a page asks for one).
- `test_timeout`: pytest's per-test time-out (pyproject.toml).
- `models_table`: every model of Table 1 from the registry (oaimodels.networks), with the paper's
  figures; `benchmarks_table`: every script of `benchmarks/` with the first paragraph of its
  docstring (or header comment); `label_definition_fields`: the fields of a label definition
  (`LabelDefinitionParams`: type, `panfilov2022`'s value, the comment above the field).

`\{{ name }}` (a backslash first) is left as the text `{{ name }}`, for pages that show the syntax.

An unknown placeholder, and a file of `tests/integrity` that no page counts, are warnings, which
`mkdocs build --strict` turns into a failed build. Only the standard library and the toolkit are
imported, so the dependency check (.ci/deps.sh) sees no dev-only package in the tree.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import logging
import re
import subprocess
import sys
import tomllib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PLACEHOLDER = re.compile(r"(?P<escaped>\\?)\{\{\s*(?P<name>\w+)\s*\}\}")
INTEGRITY = "tests/integrity"
BAD_INPUTS = "tests/ingest/test_bad_inputs.py"
FUZZER = "damage_fuzzer"
# the corpus tests of test_bad_inputs.py: one case per damaged table or index, one per series
BAD_TABLE_TEST = "test_bad_table_or_index_is_refused_naming_file_line_column"
BAD_SERIES_TEST = "test_bad_dicom_series_is_a_recorded_failure_naming_the_file"

log = logging.getLogger("mkdocs.hooks.oai")
_used: set[str] = set()


@functools.cache
def _collected() -> tuple[str, ...]:
    """Node ids of the integrity tests and the bad-input corpus, as pytest collects them."""
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-n", "0", "--no-cov", "-p", "no:cacheprovider"]
    result = subprocess.run(
        [*command, INTEGRITY, BAD_INPUTS], cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"pytest could not collect {INTEGRITY} and {BAD_INPUTS}:\n{result.stdout}{result.stderr}")
    return tuple(line for line in result.stdout.splitlines() if "::" in line)


def _integrity_counts() -> Counter[str]:
    """Cases per `tests/integrity/test_<stem>.py`, keyed by stem."""
    prefix = f"{INTEGRITY}/test_"
    return Counter(node.split("::")[0][len(prefix) : -len(".py")] for node in _collected() if node.startswith(prefix))


def _cases_of(test: str) -> int:
    return sum(1 for node in _collected() if node.startswith(f"{BAD_INPUTS}::{test}["))


def _integrity_value(name: str) -> int:
    counts = _integrity_counts()
    if name == "integrity_cases":
        return sum(n for stem, n in counts.items() if stem != FUZZER)
    if name == "fuzzer_seeds":
        return counts[FUZZER]
    stem = name.removeprefix("integrity_")
    if stem not in counts:
        raise KeyError(name)
    return counts[stem]


def _models_table() -> str:
    from oaimodels.networks import registry

    rows = [
        "| model | what it is | views | paper: params (M) | GMACs | AP | ROC AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in registry.TABLE1_ORDER:
        spec = registry.get_spec(name)
        for row in spec.paper:
            rows.append(
                f"| `{name}` | {spec.summary} | {', '.join(row.views)} | {row.params_m:g} | {row.gmacs:g} "
                f"| {row.ap:.2f} ± {row.ap_sd:.2f} | {row.auc:.2f} ± {row.auc_sd:.2f} |"
            )
    return "\n".join(rows)


def _benchmark_summary(path: Path) -> str:
    text = path.read_text()
    if path.suffix == ".py":
        paragraph = (ast.get_docstring(ast.parse(text)) or "").split("\n\n")[0]
    else:  # a shell script: the header comment after the shebang, up to its first blank line
        header = [line[1:].strip() for line in text.splitlines()[1:] if line.startswith("#")]
        paragraph = "\n".join(header).split("\n\n")[0]
    return " ".join(paragraph.split())


def _benchmarks_table() -> str:
    rows = ["| script | what it measures |", "|---|---|"]
    for path in sorted((REPO / "benchmarks").iterdir()):
        if path.suffix in (".py", ".sh"):
            summary = _benchmark_summary(path)
            if not summary:
                log.warning("benchmarks/%s has no docstring or header comment to describe it", path.name)
            cell = summary.replace("|", "\\|")
            rows.append(f"| `{path.name}` | {cell} |")
    return "\n".join(rows)


def _toml(value: object) -> str:
    """A value as a TOML file writes it (``None``: left out)."""
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def _label_definition_fields() -> str:
    from typing import get_args

    from oaicohort.cohort import definitions

    params = definitions.LabelDefinitionParams
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(params).splitlines():
        stripped = line.strip()
        if stripped.startswith("#") and not stripped.startswith("# ---"):
            pending.append(stripped.lstrip("# "))
            continue
        field_line = re.match(r"(\w+): ", stripped)
        if field_line:
            comments[field_line[1]] = " ".join(pending)
        pending = []
    comments.setdefault("name", "")
    comments["name"] = comments["name"] or "the definition's name (not part of its hash)"
    preset = params()
    rows = ["| field | takes | `panfilov2022` | meaning |", "|---|---|---|---|"]
    for field in dataclasses.fields(params):
        alias = getattr(definitions, str(field.type), None)
        choices = get_args(alias) if alias is not None else ()
        takes = " / ".join(f'`"{c}"`' for c in choices) if choices else f"`{str(field.type).replace(' | ', ' or ')}`"
        meaning = comments.get(field.name, "")
        cells = (f"`{field.name}`", takes, f"`{_toml(getattr(preset, field.name))}`", meaning)
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


def _test_timeout() -> int:
    return int(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["timeout"])


VALUES: dict[str, Callable[[], object]] = {
    "bad_input_tables": lambda: _cases_of(BAD_TABLE_TEST),
    "bad_input_series": lambda: _cases_of(BAD_SERIES_TEST),
    "bad_input_corpus": lambda: _cases_of(BAD_TABLE_TEST) + _cases_of(BAD_SERIES_TEST),
    "test_timeout": _test_timeout,
    "models_table": _models_table,
    "benchmarks_table": _benchmarks_table,
    "label_definition_fields": _label_definition_fields,
}


def _value(name: str) -> str:
    if name in VALUES:
        return str(VALUES[name]())
    if name == "integrity_cases" or name == "fuzzer_seeds" or name.startswith("integrity_"):
        return str(_integrity_value(name))
    raise KeyError(name)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    def fill(match: re.Match[str]) -> str:
        name = match["name"]
        if match["escaped"]:
            return f"{{{{ {name} }}}}"
        try:
            value = _value(name)
        except KeyError:
            log.warning(
                "%s: unknown placeholder {{ %s }} (docs/hooks.py computes the known ones)", page.file.src_uri, name
            )
            return match.group(0)
        _used.add(name)
        return value

    return PLACEHOLDER.sub(fill, markdown)


def on_post_build(**kwargs: Any) -> None:
    if not any(name.startswith("integrity_") for name in _used):
        return  # a build that counted nothing (e.g. `mkdocs serve` of one page) checks nothing
    for stem in sorted(_integrity_counts()):
        key = "fuzzer_seeds" if stem == FUZZER else f"integrity_{stem}"
        if key not in _used:
            log.warning(
                "%s/test_%s.py is counted by no page: describe it in reliability.md with {{ %s }}", INTEGRITY, stem, key
            )


SPHINX_ROLE = re.compile(r":(?:meth|mod|data|class|func|attr|obj|exc):(?=<code>)")


def on_page_content(html: str, **kwargs: Any) -> str:
    """Docstrings use Sphinx roles (``:meth:`knees` ``), which mkdocstrings shows as written: drop them."""
    return SPHINX_ROLE.sub("", html)
