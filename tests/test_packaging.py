"""Packaging guarantees: the cohort layer installs and runs without torch, torch-needing commands
say how to install it, and the explicit package list in pyproject.toml names every package."""

from __future__ import annotations

import inspect
import json
import os
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import oaicohort
import oaicohort.db.migrations as migrations
from tests.helpers.reliability import message_lines

REPO = Path(__file__).resolve().parents[1]
TORCH_LAYER = ("torch", "torchvision", "oaimodels")

# Installed as sitecustomize.py on PYTHONPATH, so every interpreter the test starts (and any
# worker process those start) behaves as an install without the `models` extra.
BLOCK_TORCH = f"""
import sys


class _TorchNotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {TORCH_LAYER!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _TorchNotInstalled())
"""


@pytest.fixture
def torch_free_env(tmp_path: Path) -> dict[str, str]:
    blocker = tmp_path / "no_torch"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_TORCH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(blocker), os.environ.get("PYTHONPATH")]))}
    env.pop("OAI_DB", None)
    return env


def _oai(env: dict[str, str], db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oaicli.main", "--db", str(db), *args],
        cwd=db.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_blocker_makes_torch_unimportable(torch_free_env: dict[str, str]) -> None:
    for name in TORCH_LAYER:
        result = subprocess.run(
            [sys.executable, "-c", f"import {name}"], env=torch_free_env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 1 and f"No module named '{name}'" in result.stderr


@pytest.mark.slow
def test_cohort_commands_run_without_torch(torch_free_env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "cohort.sqlite"
    release, store, knees_csv = tmp_path / "release", tmp_path / "vol.zarr", tmp_path / "knees.csv"

    def ok(*args: str) -> dict:
        result = _oai(torch_free_env, db, *args)
        assert result.returncode == 0, f"oai {' '.join(args)}: {result.stderr}"
        assert "torch" not in result.stderr
        return json.loads(result.stdout) if "--json" in args else {}

    synth = ok("synth", str(release), "--subjects", "20", "--images", "--image-size", "small", "--json")
    assert synth["images"] > 0
    ingest = ok("ingest", str(release), "--json")
    assert ingest["status"] == "succeeded"
    labels = ok("label", "--json")
    assert labels["definition"] == "panfilov2022" and labels["knees"] > 0
    split = ok("split", "--json")
    assert split["definition"] == "panfilov2022"
    ok("cohort", "--format", "csv", "--out", str(knees_csv))
    rows = knees_csv.read_text().splitlines()
    assert rows[0].startswith("knee_id,subject_id,side,site") and len(rows) - 1 == labels["knees"]
    preprocess = ok("preprocess", "--store", str(store), "--preset", "small", "--workers", "1", "--json")
    assert preprocess["failed"] == 0 and preprocess["done"] == preprocess["selected"] > 0
    assert (store / "zarr.json").is_file()


# The least each torch command needs to get past argument parsing (to where it checks for torch).
TORCH_COMMAND_ARGS = {
    "models": [],
    "train": ["--model", "toy3d", "--store", "x.zarr", "--out", "r"],
    "runs": ["status", "r"],
    "eval": ["r"],
    "predict": ["r", "series"],
    "explain": ["r", "--out", "o"],
    "demo": [],
}


@pytest.mark.parametrize("name", sorted(TORCH_COMMAND_ARGS))
def test_torch_commands_say_how_to_install_torch(torch_free_env: dict[str, str], tmp_path: Path, name: str) -> None:
    result = _oai(torch_free_env, tmp_path / "cohort.sqlite", name, *TORCH_COMMAND_ARGS[name])
    assert result.returncode == 1, result.stderr
    message = " ".join(result.stderr.split())
    assert f"`oai {name}` needs torch" in message and 'pip install "oai-toolkit[models]"' in message
    assert "Traceback" not in result.stderr and len(message_lines(result.stderr)) <= 3


def _source_of(callback: object) -> str:
    while hasattr(callback, "__wrapped__"):  # handles_errors, needs_models_extra
        callback = callback.__wrapped__
    return inspect.getsource(sys.modules[callback.__module__])  # type: ignore[attr-defined]


def test_every_command_that_needs_torch_is_in_the_one_registry() -> None:
    from oaicli.main import MODELS_EXTRA_COMMANDS, app

    assert set(TORCH_COMMAND_ARGS) == MODELS_EXTRA_COMMANDS  # each is run without torch above
    needs_torch = {
        command.name
        for command in app.registered_commands
        if any(word in _source_of(command.callback) for word in ("oaimodels", "import torch"))
    }
    for group in app.registered_groups:  # oai db ..., oai store ...: the cohort layer only, but oai runs
        sources = [_source_of(command.callback) for command in group.typer_instance.registered_commands]
        if any("oaimodels" in source for source in sources):
            needs_torch.add(group.name)
    assert needs_torch == MODELS_EXTRA_COMMANDS


def test_importing_every_oaicohort_module_never_imports_torch() -> None:
    # migrations/ is mapped into oaicohort.db (package-dir), so an editable install walks it apart
    found = {m.name for m in pkgutil.walk_packages(oaicohort.__path__, "oaicohort.")}
    found |= {"oaicohort.db.migrations"}
    found |= {m.name for m in pkgutil.walk_packages(migrations.__path__, "oaicohort.db.migrations.")}
    assert {"oaicohort.db.migrations.env", "oaicohort.imaging.store.volume_store", "oaicohort.synth.images"} <= found
    # migrations/env.py runs only inside Alembic (it needs Alembic's context)
    modules = sorted(m for m in found if m != "oaicohort.db.migrations.env")
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.partition('.')[0] in {TORCH_LAYER!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_package_list_names_every_package_folder() -> None:
    setuptools = _pyproject()["tool"]["setuptools"]
    package_dir = setuptools["package-dir"]
    assert package_dir == {"": ".", "oaicli": "cli", "oaicohort.db.migrations": "migrations"}

    def folder(package: str) -> Path:
        for name, path in sorted(package_dir.items(), key=lambda kv: -len(kv[0])):
            if name and (package == name or package.startswith(name + ".")):
                return REPO / path / Path(*package[len(name) + 1 :].split(".")) if package != name else REPO / path
        return REPO / Path(*package.split("."))

    listed = set(setuptools["packages"])
    for package in listed:
        assert (folder(package) / "__init__.py").is_file(), f"{package} -> {folder(package)} has no __init__.py"
    on_disk = {
        ".".join(init.parent.relative_to(REPO).parts)
        for top in ("oaicohort", "oaimodels")
        for init in (REPO / top).rglob("__init__.py")
    }
    on_disk |= {
        "oaicli" + "".join("." + p for p in i.parent.relative_to(REPO / "cli").parts)
        for i in (REPO / "cli").rglob("__init__.py")
    }
    on_disk |= {
        "oaicohort.db.migrations" + "".join("." + p for p in i.parent.relative_to(REPO / "migrations").parts)
        for i in (REPO / "migrations").rglob("__init__.py")
    }
    assert listed == on_disk


def test_base_install_has_no_torch_and_dev_pulls_everything() -> None:
    project = _pyproject()["project"]
    assert not [d for d in project["dependencies"] if d.split(">")[0].split("=")[0].strip() in ("torch", "torchvision")]
    extras = project["optional-dependencies"]
    assert {d.split(">")[0] for d in extras["models"]} == {"torch", "torchvision"}
    self_extras = next(d for d in extras["dev"] if d.startswith("oai-toolkit["))
    assert set(self_extras[len("oai-toolkit[") : -1].split(",")) == set(extras) - {"dev"}  # dev is everything
    readme = (REPO / "README.md").read_text()
    assert 'pip install -e ".[models]" && oai demo' in readme
    assert 'pip install -e ".[dev]" && python -m pytest -q' in readme
