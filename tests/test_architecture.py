"""The layering rules hold: the import-linter contracts in pyproject.toml, and the one rule it
cannot express (the CLI uses only public names of the toolkit's packages)."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("oaicohort", "oaimodels", "oaicli")


def test_import_contracts_are_kept() -> None:
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_contracts_say_what_the_architecture_promises() -> None:
    contracts = {
        c["name"]: c for c in tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    }
    by_type = {}
    for contract in contracts.values():
        by_type.setdefault(contract["type"], []).append(contract)
    cohort_rule = next(c for c in by_type["forbidden"] if c["source_modules"] == ["oaicohort"])
    assert {"torch", "torchvision", "oaimodels", "oaicli"} <= set(cohort_rule["forbidden_modules"])
    assert any(
        c["source_modules"] == ["oaimodels"] and "oaicli" in c["forbidden_modules"] for c in by_type["forbidden"]
    )
    assert set(by_type["acyclic_siblings"][0]["ancestors"]) == set(FIRST_PARTY)
    assert by_type["layers"][0]["containers"] == ["oaicohort"]
    assert not any(c.get("ignore_imports") for c in contracts.values()), "exceptions to a contract need a review"


def _private_imports(path: Path, root: Path = REPO) -> list[str]:
    """``from pkg.mod import _name`` and imports of ``pkg._mod`` of a first-party package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(FIRST_PARTY):
            parts = node.module.split(".")
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            parts, names = [], []
            for alias in node.names:
                if alias.name.startswith(FIRST_PARTY):
                    parts += alias.name.split(".")
        else:
            continue
        private = [p for p in parts + names if p.startswith("_") and not (p.startswith("__") and p.endswith("__"))]
        if private:
            found.append(f"{path.relative_to(root)}:{node.lineno}: {', '.join(private)}")
    return found


def test_the_cli_uses_only_public_names() -> None:
    files = sorted((REPO / "cli").rglob("*.py"))
    assert len(files) > 10
    offenders = [hit for path in files for hit in _private_imports(path)]
    assert offenders == []


def test_the_private_name_check_finds_private_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from oaicohort.cohort.labels import _python_rows, derive_labels\n"
        "import oaimodels._hidden.thing\n"
        "from oaicli.common import __all__\n"
        "from pandas import _libs\n"
    )
    hits = _private_imports(sample, root=tmp_path)
    assert [h.split(": ", 1)[1] for h in hits] == ["_python_rows", "_hidden"]


def _test_imports(path: Path, root: Path = REPO) -> list[str]:
    """The modules of the test suite that ``path`` imports, other than tests.helpers."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.ImportFrom):
            names = ["." * node.level + (node.module or "")]
        found += [
            f"{path.relative_to(root)}: {name}"
            for name in names
            if name.startswith(".") or (name.split(".")[0] == "tests" and not name.startswith("tests.helpers"))
        ]
    return found


def test_no_test_module_imports_another_test_module() -> None:
    # What tests share lives in tests/helpers; a test module or conftest imported as a library
    # runs its module-level code (and its fixtures) wherever it is imported.
    offenders = [hit for path in sorted((REPO / "tests").rglob("*.py")) for hit in _test_imports(path)]
    assert offenders == []


def test_the_test_import_check_finds_test_imports(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    module = tmp_path / "tests" / "test_x.py"
    module.write_text("import tests.cohort.test_labels\nfrom tests.integrity.conftest import ToyRun\n"
                      "from .conftest import A\nfrom tests.helpers.training import toy_model\n")  # fmt: skip
    assert _test_imports(module, tmp_path) == [
        "tests/test_x.py: tests.cohort.test_labels",
        "tests/test_x.py: tests.integrity.conftest",
        "tests/test_x.py: .conftest",
    ]
