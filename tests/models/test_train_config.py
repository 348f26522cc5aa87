"""``oai train --config``: config files (TOML, JSON, a run's config.json), flags over the file,
error messages naming the key and the file, and runs that equal their flag-given twins."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from oaicohort.errors import InputFileError
from oaimodels import run_folder as rf
from oaimodels.data import AugmentParams
from oaimodels.demo import DEMO_LR, DemoConfig, demo_size
from oaimodels.training.config import RECIPE_DEFAULTS, TrainConfig, TrainingError, resolve_config
from oaimodels.training.config_file import merge_config, read_config_file
from tests.helpers.training import make_toy_cohort, populate_db, toy_model

TIMING_KEYS = {"volumes_per_s", "train_seconds", "data_wait_seconds", "seconds"}
OPERATIONAL_FLAGS = ["--device", "cpu", "--workers", "0", "--loader", "resident", "--threads", "1", "--deterministic"]
# a recipe unlike the defaults in every value a file or a flag can set
RECIPE_FLAGS = [
    "--epochs", "2", "--batch-size", "6", "--lr", "3e-3", "--weight-decay", "0", "--warmup-epochs", "1",
    "--warmup-start-lr", "1e-3", "--focal-gamma", "1.5", "--sampler", "shuffle", "--rotate-p", "0.25",
    "--max-rotation", "10", "--gamma-p", "0.75", "--gamma-low", "0.7", "--gamma-high", "1.5", "--no-random-crop",
]  # fmt: skip
RECIPE_TOML = """
epochs = 2
batch_size = 6
lr = 1e-3            # overridden by --lr 3e-3 below
weight_decay = 0
warmup_epochs = 1
warmup_start_lr = 1e-3
focal_gamma = 1.5
sampler = "shuffle"
name = "toy recipe"
tags = { purpose = "test" }

[augment]
random_crop = false
rotate_p = 0.25
max_rotation_deg = 10
gamma_p = 0.75
gamma_low = 0.7
gamma_high = 1.5
"""


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    from oaicohort.db import open_database

    root = tmp_path_factory.mktemp("cfg")
    with toy_model():
        store, knees = make_toy_cohort(root, n_subjects=16)
        db = open_database(root / "cohort.sqlite")
        populate_db(db, store, knees)
        db.dispose()
        yield store, root / "cohort.sqlite"


def _train(db: Path, *args: str) -> Any:
    from oaicli.main import app

    result = CliRunner().invoke(app, ["--db", str(db), "train", *args])
    return result


def _outputs(run: Path) -> dict[str, Any]:
    """What a run computed: epoch logs without timings, validation predictions, best weights."""
    out: dict[str, Any] = {}
    for fold, path in rf.fold_dirs(run).items():
        out[f"log{fold}"] = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rf.read_log(path / rf.LOG)]
        out[f"val{fold}"] = (path / rf.VAL_PREDICTIONS).read_bytes()
        out[f"best{fold}"] = torch.load(path / rf.BEST, weights_only=True)["model"]
    return out


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        if key.startswith("best"):
            assert a[key].keys() == b[key].keys()
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
        else:
            assert a[key] == b[key], key


def test_config_file_run_equals_the_flag_run(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    store, db = cohort
    common = ["--store", str(store), "--model", "toy3d", "--folds", "0", *OPERATIONAL_FLAGS]
    by_flags = tmp_path / "by_flags"
    result = _train(db, *common, "--out", str(by_flags), *RECIPE_FLAGS, "--name", "toy recipe", "--tag", "purpose=test")
    assert result.exit_code == 0, result.output

    toml = tmp_path / "train.toml"
    toml.write_text(f'store = "{store}"\nmodel = "toy3d"\n{RECIPE_TOML}')
    by_file = tmp_path / "by_file"
    result = _train(
        db, "--config", str(toml), "--out", str(by_file), "--lr", "3e-3", "--folds", "0", *OPERATIONAL_FLAGS
    )
    assert result.exit_code == 0, result.output

    # a run's own config.json is a config file: it repeats the run (flags override its out)
    again = tmp_path / "again"
    result = _train(db, "--config", str(by_file / rf.CONFIG), "--out", str(again))
    assert result.exit_code == 0, result.output

    saved = [rf.read_json(run / rf.CONFIG) for run in (by_flags, by_file, again)]
    config = saved[1]["config"]
    assert (config["lr"], config["sampler"], config["augment"]["rotate_p"]) == (3e-3, "shuffle", 0.25)
    assert (config["name"], config["tags"]) == ("toy recipe", {"purpose": "test"})
    without_out = [{k: v for k, v in s["config"].items() if k != "out"} for s in saved]
    assert without_out[0] == without_out[1] == without_out[2]
    reference = _outputs(by_flags)
    _assert_same(reference, _outputs(by_file))
    _assert_same(reference, _outputs(again))
    # and the recipe made a difference: the default recipe computes something else
    default_run = tmp_path / "defaults"
    assert _train(db, *common, "--epochs", "2", "--out", str(default_run)).exit_code == 0
    assert _outputs(default_run)["log0"] != reference["log0"]


def test_json_config_and_flags_override_the_file(cohort: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:
    store, db = cohort
    captured = _capture(monkeypatch)
    cfg = tmp_path / "train.json"
    cfg.write_text(
        json.dumps({"store": str(store), "out": "x", "model": "toy3d", "lr": 1e-3, "augment": {"gamma_p": 0.1}})
    )
    result = _train(db, "--config", str(cfg), "--lr", "5e-4", "--rotate-p", "0", "--out", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    c = captured[0]
    assert (c.lr, c.out, c.model) == (5e-4, str(tmp_path / "o"), "toy3d")
    assert (c.augment.gamma_p, c.augment.rotate_p, c.augment.random_crop) == (0.1, 0.0, True)
    assert c.warmup_epochs is None  # neither file nor flag: the model's recipe, resolved to the paper's
    assert resolve_config(c).warmup_epochs == 5

    result = _train(db, "--config", str(cfg), "--no-augment", "--gamma-p", "0.2")
    assert result.exit_code == 0, result.output
    assert captured[1].augment == AugmentParams(random_crop=False, rotate_p=0.0, gamma_p=0.2)


def _capture(monkeypatch) -> list[TrainConfig]:
    import oaimodels.training.run as run_module

    seen: list[TrainConfig] = []

    def fake_train_run(config: TrainConfig, db: Any, progress: Any = None, **kw: Any) -> Path:
        seen.append(config)
        return Path(config.out)

    monkeypatch.setattr(run_module, "train_run", fake_train_run)
    return seen


def test_the_demo_recipe_from_the_command_line(cohort: tuple[Path, Path], tmp_path: Path, monkeypatch) -> None:
    """The demo trains with lr 1e-3, no warm-up, batch 16; the same config comes from flags."""
    store, db = cohort
    captured = _capture(monkeypatch)
    demo = DemoConfig()
    epochs = demo_size(demo)[1]
    result = _train(
        db, "--store", str(store), "--out", str(tmp_path / "run"), "--model", demo.model, "--folds", "0,1",
        "--epochs", str(epochs), "--init", "scratch", "--batch-size", str(demo.batch_size),
        "--lr", str(DEMO_LR), "--warmup-epochs", "0", "--loader", "resident", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # as oaimodels.demo.run_demo builds it
    expected = TrainConfig(
        store=str(store), out=str(tmp_path / "run"), model=demo.model, folds=list(demo.folds), epochs=epochs,
        init="scratch", batch_size=demo.batch_size, lr=DEMO_LR, warmup_epochs=0, threads=demo.threads,
        device="cpu", seed=demo.seed, loader="resident",
    )  # fmt: skip
    assert resolve_config(captured[0]).hash() == resolve_config(expected).hash()
    assert (captured[0].lr, captured[0].warmup_epochs, captured[0].batch_size) == (1e-3, 0, 16)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("weight_decy = 0.1\n", "unknown key 'weight_decy'; did you mean 'weight_decay'?"),
        ('lr = "fast"\n', "key 'lr': expected a number or null, got 'fast' (str)"),
        ("epochs = 2.5\n", "key 'epochs': expected an integer, got 2.5 (float)"),
        ("deterministic = 1\n", "key 'deterministic': expected true or false, got 1 (int)"),
        ('folds = [0, "1"]\n', "key 'folds': expected a list of integers or null, got [0, '1'] (list)"),
        ("[augment]\nrotation = 3\n", "unknown key 'augment.rotation'"),
        ('[augment]\nrotate_p = "often"\n', "key 'augment.rotate_p': expected a number"),
        ("augment = 3\n", "key 'augment': expected a table of augmentation options, got 3 (int)"),
        ("lr = \n", "not valid TOML"),
    ],
)
def test_config_file_errors_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "train.toml"
    path.write_text(text)
    with pytest.raises(InputFileError) as err:
        read_config_file(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_config_json_errors(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"config": {"store": "s", "out": "o"}, "config_hash": "x", "extra": 1}))
    with pytest.raises(InputFileError, match=r"config\.json: unknown key 'extra' beside 'config'"):
        read_config_file(path)
    path.write_text('{"lr": 1e-3,}')
    with pytest.raises(InputFileError, match=r"config\.json, line 1: not valid JSON"):
        read_config_file(path)
    path.write_text(json.dumps({"batch_size": None, "threads": 2}))
    assert read_config_file(path) == {"batch_size": None, "threads": 2}
    path.write_text(json.dumps({"store": "data/store.zarr", "out": "/abs/run"}))
    assert read_config_file(path) == {"store": str(tmp_path / "data/store.zarr"), "out": "/abs/run"}
    yaml = tmp_path / "train.yaml"
    yaml.write_text("lr: 1")
    with pytest.raises(InputFileError, match=r"train\.yaml: unknown config format '\.yaml'"):
        read_config_file(yaml)


def test_out_of_range_recipe_values_are_refused() -> None:
    for kwargs, message in [
        ({"sampler": "uniform"}, "sampler must be one of weighted, shuffle"),
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"focal_gamma": -1.0}, "must not be negative"),
        ({"augment": {"rotate_p": 1.5}}, r"augment\.rotate_p is a probability"),
        ({"augment": {"gamma_low": 2.0, "gamma_high": 1.0}}, "gamma_low <= gamma_high"),
    ]:
        with pytest.raises(TrainingError, match=message):
            resolve_config(merge_config({"store": "s", "out": "o", "model": "3d_shufflenet", "device": "cpu"}, kwargs))
    with pytest.raises(TrainingError, match="no store given: pass --store or set store in the --config file"):
        merge_config({"out": "o"})


def test_cli_config_errors_are_one_line(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    _, db = cohort
    path = tmp_path / "train.toml"
    path.write_text("learning_rate = 1e-3\n")
    result = _train(db, "--config", str(path))
    assert result.exit_code == 1
    assert f"{path}: unknown key 'learning_rate'" in result.output and "Traceback" not in result.output
    result = _train(db, "--model", "toy3d")
    assert result.exit_code == 1 and "no store or out given" in result.output


def test_help_states_the_dataclass_defaults() -> None:
    """The recipe flags default to "not given"; their help repeats TrainConfig's defaults."""
    import typer.main

    from oaicli.main import app

    command = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    helps = {p.name: p.help or "" for p in command.params}
    config, augment = TrainConfig(store="s", out="o"), AugmentParams()
    expected = {
        "epochs": config.epochs, "lr": RECIPE_DEFAULTS["lr"], "weight_decay": config.weight_decay,
        "warmup_epochs": RECIPE_DEFAULTS["warmup_epochs"], "warmup_start_lr": RECIPE_DEFAULTS["warmup_start_lr"],
        "focal_gamma": config.focal_gamma, "rotate_p": augment.rotate_p, "max_rotation": augment.max_rotation_deg,
        "gamma_p": augment.gamma_p, "gamma_low": augment.gamma_low, "gamma_high": augment.gamma_high,
    }  # fmt: skip
    for name, value in expected.items():
        stated = re.search(r"\(default ([^)]+)\)", helps[name])
        assert stated is not None and float(stated.group(1)) == float(value), (name, helps[name])
    assert "(default oai)" in helps["experiment"] and config.experiment == "oai"
    assert augment.random_crop and "(default on)" in helps["random_crop"]
    assert config.sampler == "weighted" and "default" in helps["sampler"]


def test_default_hash_is_unchanged_by_the_new_options() -> None:
    """Runs hashed before sampler/name/tags/tracking existed resume: the default config's hash is
    the one it had (computed on the commit before these options). Hashes are taken of resolved
    configs, whose schedule is filled in (here: the paper's, as ``resolve_config`` does)."""

    def paper(**kwargs: Any) -> TrainConfig:
        return TrainConfig(store="s", out="o", **{**RECIPE_DEFAULTS, **kwargs})

    assert paper().hash() == "1d8411fc3831d5f12324d0e98724110fc12a627674edad9d23847cd09a54aac3"
    assert paper(name="x", tags={"a": "b"}, track="mlflow", tensorboard=False).hash() == paper().hash()
    assert paper(sampler="shuffle").hash() != paper().hash()


def test_shuffle_sampler_takes_every_knee_once_per_epoch() -> None:
    import numpy as np

    from oaimodels.data import WeightedEpochSampler
    from oaimodels.training.sampling import ShuffleEpochSampler, make_sampler

    classes = np.array([0] * 8 + [1, 2])
    sampler = make_sampler("shuffle", classes, seed=3, rank=0, world_size=1)
    assert isinstance(sampler, ShuffleEpochSampler)
    epochs = [sampler.indices(e) for e in range(3)]
    assert all(sorted(e.tolist()) == list(range(10)) for e in epochs)
    assert not np.array_equal(epochs[0], epochs[1])
    assert np.array_equal(epochs[2], make_sampler("shuffle", classes, seed=3, rank=0, world_size=1).indices(2))
    shards = [make_sampler("shuffle", classes, seed=3, rank=r, world_size=2).indices(0) for r in (0, 1)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(10))
    # the recipe's sampler draws the rare classes far more often than their 10% share
    weighted = make_sampler("weighted", classes, seed=3, rank=0, world_size=1)
    assert type(weighted) is WeightedEpochSampler
    draws = np.concatenate([weighted.indices(e) for e in range(50)])
    assert (classes[draws] != 0).mean() > 0.5
    with pytest.raises(TrainingError, match="sampler must be one of"):
        make_sampler("uniform", classes, seed=3, rank=0, world_size=1)
