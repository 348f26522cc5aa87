"""Every command on SQLite and on PostgreSQL: the chain synth -> ingest -> label -> split ->
cohort -> preprocess -> store verify through the CLI, with the same results on both back-ends
(order of rows included), and what the two back-ends do differently by default."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.db import Database
from oaicohort.db.schema import Subject
from tests.helpers.databases import fresh_database_url

# differ between any two runs, whatever the back-end
_VOLATILE = {
    "seconds",
    "run_id",
    "worker_seconds",
    "worker_cpu_seconds",
    "worker_peak_rss_mb",
    "store_path",
    "store_id",
    "started_at",
    "finished_at",
    "writer",
    "source_root",
}


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _oai(url: str, *args: str) -> Any:
    result = CliRunner().invoke(app, ["--db", url, *args])
    assert result.exit_code == 0, f"oai {' '.join(args)}: {result.output}"
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("backends") / "release"
    result = CliRunner().invoke(
        app, ["synth", str(root), "-n", "40", "--seed", "11", "--images", "--image-size", "small", "--json"]
    )
    assert result.exit_code == 0, result.output
    return root


def run_chain(url: str, release: Path, store: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["ingest"] = _oai(url, "ingest", str(release), "--json")
    out["label"] = _oai(url, "label", "--json")
    out["split"] = _oai(url, "split", "--folds", "2", "--json")
    out["cohort"] = _oai(url, "cohort", "--include-excluded", "--json")
    out["filtered"] = _oai(
        url, "cohort", "--site", "A", "--site", "C", "--label", "none", "--label", "fast", "--role", "train", "--json"
    )
    out["trajectories"] = _oai(url, "cohort", "--trajectories", "--wide", "--json")
    out["preprocess"] = _oai(url, "preprocess", "--store", str(store), "--preset", "small", "--workers", "1", "--json")
    out["verify"] = _oai(url, "store", "verify", str(store), "--json")
    out["again"] = _oai(url, "ingest", str(release), "--json")  # nothing to do the second time
    out["runs"] = _oai(url, "db", "runs", "--json")
    return _stable(out)


_chains: dict[str, dict[str, Any]] = {}


def test_cli_chain_gives_the_same_results_on_both_backends(database_url: str, release: Path, tmp_path: Path) -> None:
    got = run_chain(database_url, release, tmp_path / "vol.zarr")
    assert got["ingest"]["status"] == "succeeded" and got["again"]["status"] == "unchanged"
    assert got["label"]["knees"] > 20 and got["label"]["fast"] + got["label"]["slow"] > 0
    assert len(got["cohort"]) > got["label"]["knees"]  # excluded knees listed too
    assert {r["site"] for r in got["filtered"]} <= {"A", "C"} and got["filtered"]
    assert got["preprocess"]["failed"] == 0 and got["preprocess"]["done"] == got["preprocess"]["selected"] > 0
    assert got["verify"]["mismatches"] == [] and got["verify"]["ok"] == got["preprocess"]["done"]
    assert [r["status"] for r in got["runs"]] == ["unchanged", "succeeded"]
    backend = database_url.split(":", 1)[0].split("+")[0]
    if backend == "postgresql":
        reference = _chains.get("sqlite")
        if reference is None:  # the SQLite run was deselected: make it here
            url = next(fresh_database_url("sqlite", tmp_path / "sqlite"))
            reference = run_chain(url, release, tmp_path / "sqlite.zarr")
        assert got == reference
    _chains[backend] = got


def test_a_read_sees_one_snapshot(any_db: Database) -> None:
    """A reader's SELECTs all see the database as it was when the read began, on both back-ends
    (PostgreSQL's default READ COMMITTED would show each statement the latest commits)."""
    with any_db.write() as s:
        s.add(Subject(id=9000001, site="A"))
    count = select(func.count()).select_from(Subject)
    with any_db.read() as reader:
        assert reader.scalar(count) == 1
        with any_db.write() as s:  # another connection commits meanwhile
            s.add(Subject(id=9000002, site="B"))
        assert reader.scalar(count) == 1
    with any_db.read() as reader:
        assert reader.scalar(count) == 2


def test_only_runs_whose_writer_is_gone_are_marked_interrupted(any_db: Database) -> None:
    """SQLite: host, pid and process start time decide; PostgreSQL: the run's lease lock."""
    import subprocess
    import sys

    from oaicohort.db.schema import IngestRun
    from oaicohort.db.writers import RunLease, WriterIdentity
    from oaicohort.ingest.provenance import mark_interrupted_runs

    me = WriterIdentity.current()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process (until reused, which the start token catches)
    writers = {
        "this process": (me.host, me.pid, me.start),
        "a finished process": (me.host, child.pid, ""),
        "a reused pid": (me.host, me.pid, "another-boot:1"),
        "another host": ("elsewhere.example", 1, ""),
        "another host, whose lease is gone": ("elsewhere.example", 2, ""),
    }
    ids = {}
    with any_db.write() as s:
        for name, (host, pid, start) in writers.items():
            run = IngestRun(
                source_root=name,
                status="running",
                toolkit_version="test",
                writer_host=host,
                writer_pid=pid,
                writer_start=start,
            )
            s.add(run)
            s.flush()
            ids[name] = run.id
    leases = [RunLease.take(any_db, ids[name]) for name in ("this process", "another host")]
    try:
        with any_db.write() as s:
            marked = mark_interrupted_runs(s)
        with any_db.read() as s:
            status = {run.source_root: run.status for run in s.scalars(select(IngestRun))}
    finally:
        for lease in leases:
            lease.release()
    expected_gone = {"a finished process", "a reused pid"}
    if not any_db.is_sqlite:  # the lease decides, on any host (SQLite cannot check other hosts)
        expected_gone.add("another host, whose lease is gone")
    assert sorted(marked) == sorted(ids[name] for name in expected_gone)
    assert status == {name: "interrupted" if name in expected_gone else "running" for name in writers}
