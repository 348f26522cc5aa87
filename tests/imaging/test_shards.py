"""Shards of one store written at once (``oai preprocess --shard K/N``, PostgreSQL): every series
exactly once, the same volumes as one unsharded run, a killed shard completed by its rerun; and
the usage errors of the shard and launcher options."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.db import Database, open_database
from oaicohort.db.schema import SlotClaim
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.runs.mri import run_preprocess
from oaicohort.imaging.runs.slots import Shard, ShardError
from oaicohort.imaging.store.index import verify_store
from oaicohort.ingest.run import ingest_release
from oaicohort.synth import write_release
from tests.helpers.databases import fresh_database_url
from tests.helpers.reliability import kill_when, run_oai, spawn_oai, store_checksums

SUBJECTS = 12
SEED = 11
SMALL = PreprocessParams.preset_named("small")


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from oaicohort.synth.images import write_images

    root = tmp_path_factory.mktemp("shards") / "release"
    write_release(root, subjects=SUBJECTS, seed=SEED)
    write_images(root, size="small", seed=SEED)
    return root


@pytest.fixture(scope="module")
def expected(release: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[int, str, str], str]:
    """Per (subject, side, view), the checksum one unsharded run writes."""
    folder = tmp_path_factory.mktemp("reference")
    db = open_database(folder / "ref.sqlite")
    try:
        ingest_release(db, release)
        run_preprocess(db, folder / "ref.zarr", SMALL, views=("sag", "cor"))
        return store_checksums(db, folder / "ref.zarr")
    finally:
        db.dispose()


@pytest.fixture
def postgres(tmp_path: Path, release: Path) -> Database:
    for url in fresh_database_url("postgresql", tmp_path):
        db = open_database(url)
        ingest_release(db, release)
        yield db
        db.dispose()


def _claims(db: Database) -> int:
    with db.read() as s:
        return int(s.execute(select(func.count()).select_from(SlotClaim)).scalar_one())


ARGS = ("--preset", "small", "--view", "sag", "--workers", "1", "--json")


def _shard_args(store: Path, shard: str) -> tuple[str, ...]:
    return ("preprocess", "--store", str(store), *ARGS, "--shard", shard)


def test_shards_partition_the_subjects_deterministically() -> None:
    subjects = range(9000000, 9000600)
    owners = [[k for k in (1, 2, 3) if Shard(k, 3).owns(s)] for s in subjects]
    assert all(len(o) == 1 for o in owners)  # each subject in exactly one shard
    sizes = Counter(o[0] for o in owners)
    assert min(sizes.values()) > 150  # and the shards near even
    assert Shard.parse(" 2/3 ") == Shard(2, 3) and Shard(1, 1).owns(9000099)
    for bad, message in (("0/3", "count from 1"), ("4/3", "between 1 and N"), ("1/0", "at least 1"), ("x", "K/N")):
        with pytest.raises(ShardError, match=message):
            Shard.parse(bad)


@pytest.mark.slow
def test_three_concurrent_shards_write_one_store_as_one_run_would(
    postgres: Database, expected: dict[tuple[int, str, str], str], tmp_path: Path
) -> None:
    store = tmp_path / "vol.zarr"
    url = postgres.url
    cor_args = ("preprocess", "--store", str(store), "--preset", "small", "--view", "cor", "--workers", "1", "--json")
    procs = [spawn_oai(url, *cor_args, "--shard", f"{k}/3") for k in (1, 2, 3)]
    outs = [p.communicate(timeout=300) for p in procs]
    for proc, (_out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
    summaries = [json.loads(out) for out, _ in outs]
    assert sum(s["done"] for s in summaries) == sum(s["selected"] for s in summaries) == len(expected) // 2
    assert all(s["selected"] > 0 for s in summaries)  # every shard had work
    cor = {k: v for k, v in expected.items() if k[2] == "cor"}
    assert store_checksums(postgres, store) == cor  # every series once, identical checksums
    report = verify_store(postgres, store)
    assert report["mismatches"] == [] and report["ok"] == len(cor)
    assert report["orphans"]["cor"] == []  # no shard took another's slot
    assert _claims(postgres) == 0  # every shard released its claims
    # a second round of shards (the sag view) into the same store, at once
    procs = [spawn_oai(url, *_shard_args(store, f"{k}/2")) for k in (1, 2)]  # the same store, adding sag
    for proc in procs:
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert store_checksums(postgres, store) == expected
    report = verify_store(postgres, store)
    assert report["mismatches"] == [] and report["ok"] == len(expected)


@pytest.mark.slow
def test_a_killed_shard_is_completed_by_its_rerun(
    postgres: Database, expected: dict[tuple[int, str, str], str], tmp_path: Path
) -> None:
    store = tmp_path / "vol.zarr"
    url = postgres.url
    sag = {k: v for k, v in expected.items() if k[2] == "sag"}
    victim = spawn_oai(url, *_shard_args(store, "1/2"))
    other = spawn_oai(url, *_shard_args(store, "2/2"))
    # the victim's own progress: a volume of shard 1 indexed (the other shard's volumes can be
    # indexed before the victim has started at all, and killing it then would leave it no claims)
    victim_indexed = lambda: any(Shard(1, 2).owns(k[0]) for k in store_checksums(postgres, store))  # noqa: E731
    assert kill_when(victim, victim_indexed, delay=0.0)
    _out, err = other.communicate(timeout=300)
    assert other.returncode == 0, err
    now = store_checksums(postgres, store)
    assert 0 < len(now) < len(sag) and all(sag[k] == v for k, v in now.items())
    assert verify_store(postgres, store)["mismatches"] == []
    assert _claims(postgres) > 0  # the killed shard's claims stay until its rerun
    result = run_oai(url, *_shard_args(store, "1/2"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["failed"] == 0 and summary["done"] > 0
    assert store_checksums(postgres, store) == sag  # complete, each series once
    report = verify_store(postgres, store)
    assert report["mismatches"] == [] and report["ok"] == len(sag)
    assert report["orphans"]["sag"] == []  # the killed shard's slots were reused
    assert _claims(postgres) == 0


def test_a_second_run_of_one_shard_is_refused_while_others_share_the_store(postgres: Database, tmp_path: Path) -> None:
    from oaicohort.errors import ConcurrentWriteError
    from oaicohort.imaging.runs.slots import run_locks
    from oaicohort.imaging.store.identity import record_store
    from oaicohort.imaging.store.volume_store import VolumeStore

    store = VolumeStore.create(tmp_path / "vol.zarr", SMALL, views=("sag",))
    record_store(postgres, store, replace_missing_store=False)
    with run_locks(postgres, store, Shard(1, 2)), run_locks(postgres, store, Shard(2, 2)):
        with (
            pytest.raises(ConcurrentWriteError, match="shard 1/2 of this store"),
            run_locks(postgres, store, Shard(1, 2)),
        ):
            pass
        with pytest.raises(ConcurrentWriteError, match="shards \\(--shard\\) or another"):
            run_preprocess(postgres, store.path, SMALL)  # an unsharded run needs the store alone
        # a shard of another N would select other subjects: refused while these run, naming their N
        with (
            pytest.raises(
                ConcurrentWriteError, match=r"shards of N=2 are writing this store.*the same N \(K/2 while they run\)"
            ),
            run_locks(postgres, store, Shard(3, 3)),
        ):
            pass
    with run_locks(postgres, store, Shard(3, 3)):  # once they are done, another N may run
        pass
    summary = run_preprocess(postgres, store.path, SMALL, shard=Shard(2, 2))
    assert summary.done == summary.selected > 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--shard", "0/3"), "count from 1"),
        (("--shard", "4/3"), "between 1 and N"),
        (("--shard", "three"), "K/N"),
        (("--shards", "3"), "needs --launcher"),
        (("--array-parallelism", "2"), "needs --launcher"),
        (("--launcher", "local"), "--shards N"),
        (("--launcher", "pbs", "--shards", "2"), "choose slurm or local"),
        (("--launcher", "local", "--shards", "2", "--shard", "1/2"), "--shard K/N for one shard"),
        (("--shard", "1/2", "--view", "xray"), "MRI views"),
    ],
)
def test_shard_usage_errors_exit_2_and_change_nothing(
    args: tuple[str, ...], needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OAI_DB", "postgresql+psycopg://nobody@127.0.0.1:1/none")  # never opened
    store = tmp_path / "vol.zarr"
    result = CliRunner().invoke(app, ["preprocess", "--store", str(store), *args])
    assert result.exit_code == 2, result.output
    assert needle in " ".join(result.output.split())
    assert not store.exists()


def test_shard_on_sqlite_is_refused_before_the_database_is_opened(tmp_path: Path) -> None:
    db_path = tmp_path / "oai.sqlite"
    for args in (("--shard", "1/2"), ("--launcher", "local", "--shards", "2")):
        result = CliRunner().invoke(app, ["--db", str(db_path), "preprocess", "--store", str(tmp_path / "v"), *args])
        assert result.exit_code == 2, result.output
        assert "SQLite database has one writer" in " ".join(result.output.split())
    assert not db_path.exists() and not (tmp_path / "v").exists()


def test_shard_on_sqlite_is_refused_by_the_api(sqlite_db: Database, tmp_path: Path) -> None:
    with pytest.raises(ShardError, match="one writer"):
        run_preprocess(sqlite_db, tmp_path / "vol.zarr", SMALL, shard=Shard(1, 2))
    assert not (tmp_path / "vol.zarr").exists()


@pytest.mark.slow
def test_launcher_local_runs_one_job_per_shard(
    postgres: Database, expected: dict[tuple[int, str, str], str], tmp_path: Path
) -> None:
    pytest.importorskip("submitit")
    store = tmp_path / "vol.zarr"
    result = run_oai(
        postgres.url,
        "preprocess",
        "--store",
        str(store),
        *ARGS,
        "--launcher",
        "local",
        "--shards",
        "2",
        "--wait",
        timeout=400,
    )
    assert result.returncode == 0, result.stderr
    jobs = json.loads(result.stdout)["jobs"]
    assert [j["shard"] for j in jobs] == ["1/2", "2/2"] and all("error" not in j for j in jobs)
    sag = {k: v for k, v in expected.items() if k[2] == "sag"}
    assert sum(j["done"] for j in jobs) == len(sag)
    assert store_checksums(postgres, store) == sag
    assert verify_store(postgres, store)["mismatches"] == []
    assert (tmp_path / "vol.zarr.jobs").is_dir()


def test_array_parallelism_reaches_the_shard_jobs_launcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import oaicli.preprocess_shards as cli_shards
    from oaicohort.imaging.runs import shard_jobs

    seen = {}

    def submit(job: object, shards: int, options: object) -> tuple[list[object], list[object]]:
        seen.update(shards=shards, options=options)
        return [], []

    monkeypatch.setattr(shard_jobs, "submit_shards", submit)
    monkeypatch.setattr(cli_shards, "guard_output", lambda *a, **k: None)  # no database is opened here
    monkeypatch.setenv("OAI_DB", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    args = ["preprocess", "--store", str(tmp_path / "vol.zarr"), "--launcher", "slurm", "--shards", "5"]
    result = CliRunner().invoke(app, [*args, "--array-parallelism", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert seen["shards"] == 5 and seen["options"].array_parallelism == 2  # type: ignore[attr-defined]
