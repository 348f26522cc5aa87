"""A store's identity: a UUID in its zarr.json, the ``stores`` table, ``oai store relocate``.

A store that moved is found by its UUID; writing to it waits until the move is recorded; a copy
is never taken for the original; the migration from paths links every existing row and a store
made before identities takes its UUID on the first run that writes to it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import zarr
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.cohort.labels import derive_labels
from oaicohort.cohort.query import Cohort
from oaicohort.db import Database
from oaicohort.db.migrate import downgrade, upgrade
from oaicohort.db.schema import Store, Volume
from oaicohort.db.stores import STORE_ID, StoreRef
from oaicohort.errors import DatabaseStateError
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.runs.mri import run_preprocess
from oaicohort.imaging.runs.xray import run_xray_preprocess
from oaicohort.imaging.store.checks import StoreIntegrityError
from oaicohort.imaging.store.identity import StoreMovedError, relocate_store
from oaicohort.imaging.store.index import indexed_volumes, verify_store
from oaicohort.imaging.store.selection import select_slots, store_slots
from oaicohort.imaging.store.volume_store import StoreError, VolumeStore
from oaicohort.ingest.run import ingest_release
from tests.helpers.reliability import table_rows

SMALL = PreprocessParams.preset_named("small")


@pytest.fixture
def preprocessed(any_db: Database, xray_imaging_release: Path, tmp_path: Path) -> tuple[Database, Path]:
    ingest_release(any_db, xray_imaging_release)
    store = tmp_path / "a.zarr"
    assert run_preprocess(any_db, store, SMALL, views=("sag",), workers=1).done == 6
    return any_db, store


def _positions(db: Database, store: Path) -> list[tuple[int, int]]:
    frame = Cohort(db).knees(store=store)
    return sorted(zip(frame["knee_id"].tolist(), frame["position"].tolist()))


def _oai(db: Database, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["--db", db.url, *args])
    return result.exit_code, " ".join(result.output.split())


def test_a_store_renamed_on_disk_is_found_by_its_uuid_after_relocate(preprocessed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db, old = preprocessed
    derive_labels(db, "panfilov2022")
    store_id = VolumeStore.open(old).ref.id
    assert store_id is not None and StoreRef.at(old) == StoreRef(old.resolve(), store_id)
    before = _positions(db, old)
    assert len(before) >= 2  # the included knees of the definition, each with its slot
    new = tmp_path / "renamed.zarr"
    shutil.move(old, new)
    rows = table_rows(db, ("volumes", "stores"))

    assert _positions(db, new) == before  # reading: found by its UUID, wherever it is
    slots = store_slots(VolumeStore.open(new), "sag", db=db)  # as predict and explain read a store
    first = (int(slots["subject_id"][0]), str(slots["side"][0]))
    assert len(slots) == 6 and len(select_slots(slots, [first], where=str(new))) == 1  # not "holds no volume"
    with pytest.raises(StoreMovedError, match=f"oai store relocate {old} {new}"):  # writing waits for the move
        run_preprocess(db, new, SMALL, views=("sag",), workers=1)
    with pytest.raises(StoreIntegrityError, match="indexes 6 volume"):
        run_preprocess(db, old, SMALL, views=("sag",), workers=1)
    assert table_rows(db, ("volumes", "stores")) == rows and not old.exists()

    code, output = _oai(db, "store", "relocate", str(old), str(new), "--json")
    assert code == 0, output
    assert json.loads(output) == {"store_id": store_id, "old": str(old), "new": str(new), "volumes": 6}
    with db.read() as s:
        assert [(r.id, r.path, r.moved_from) for r in s.scalars(select(Store))] == [(store_id, str(new), str(old))]
    assert _positions(db, new) == before
    assert verify_store(db, new)["ok"] == 6
    again = run_preprocess(db, new, workers=1)  # the store's own parameters; nothing left to do
    assert (again.done, again.skipped, again.store_id) == (0, 6, store_id)
    with pytest.raises(DatabaseStateError, match=f"was moved to {new}"):
        Cohort(db).knees(store=old)
    code, output = _oai(db, "store", "verify", str(old))
    assert code == 1 and "not a volume store: the path does not exist" in output
    assert "create one" not in output


def test_relocate_records_a_move_never_a_copy_nor_another_store(preprocessed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db, old = preprocessed
    copy = tmp_path / "copy.zarr"
    shutil.copytree(old, copy)
    rows = table_rows(db, ("volumes", "stores"))
    code, output = _oai(db, "store", "relocate", str(old), str(copy))
    assert code == 1 and f"{old}: still holds a store; a relocation records a move, not a copy" in output
    with pytest.raises(StoreMovedError, match=f"a copy of the store at {old}"):
        run_preprocess(db, copy, SMALL, views=("sag",), workers=1)
    other = VolumeStore.create(tmp_path / "other.zarr", SMALL, views=("sag",))
    shutil.rmtree(copy)
    shutil.move(old, tmp_path / "gone.zarr")
    with pytest.raises(StoreError, match=f"another store \\(id {other.ref.id}"):
        relocate_store(db, old, other.path)
    with pytest.raises(StoreError, match="records no store at this path"):
        relocate_store(db, tmp_path / "never.zarr", tmp_path / "gone.zarr")
    code, output = _oai(db, "store", "relocate", str(old), str(old))
    assert code == 1 and "the old and the new path are the same" in output
    assert table_rows(db, ("volumes", "stores")) == rows
    # a store that is not recorded at its own path but is in the place of the indexed one
    shutil.move(other.path, old)
    with pytest.raises(StoreIntegrityError, match=f"holds another store \\(id {other.ref.id}\\)"):
        run_preprocess(db, old, SMALL, views=("sag",), workers=1)
    assert table_rows(db, ("volumes", "stores")) == rows


def _drop_store_id(path: Path) -> None:
    """Make ``path`` a store as the toolkit made it before identities (no store_id attribute)."""
    group = zarr.open_group(path, mode="r+", zarr_format=3)
    attrs = dict(group.attrs)
    del attrs[STORE_ID]
    group.attrs.clear()
    group.attrs.update(attrs)
    assert VolumeStore.open(path).ref.id is None


def test_the_migration_from_paths_links_every_row_and_a_first_write_gives_the_uuid(
    preprocessed, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    db, legacy = preprocessed
    assert run_xray_preprocess(db, legacy, workers=1).done > 0  # ROI rows refer to volumes
    kept = tmp_path / "kept.zarr"  # a store that already carries its UUID
    assert run_preprocess(db, kept, SMALL, views=("cor",), workers=1).done == 6
    kept_id = VolumeStore.open(kept).ref.id
    rows = table_rows(db, ("volumes",))
    with db.read() as s:
        rois = sorted(map(tuple, s.execute(text("SELECT * FROM xray_rois")).all()))
        ids = {r.id: (r.view, r.position) for r in s.scalars(select(Volume))}

    downgrade(db.engine, "0008")  # the schema of paths: the rows name their store by path again
    with db.engine.connect() as conn:
        paths = set(conn.execute(text("SELECT DISTINCT store_path FROM volumes")).scalars())
    assert paths == {str(legacy.resolve()), str(kept.resolve())}
    _drop_store_id(legacy)
    upgrade(db.engine)

    assert table_rows(db, ("volumes",)) == rows
    with db.read() as s:
        assert sorted(map(tuple, s.execute(text("SELECT * FROM xray_rois")).all())) == rois
        assert {r.id: (r.view, r.position) for r in s.scalars(select(Volume))} == ids
        stores = {r.path: r.id for r in s.scalars(select(Store))}
        linked = {r.store_id for r in s.scalars(select(Volume))}
    assert set(stores) == {str(legacy.resolve()), str(kept.resolve())}
    assert stores[str(kept.resolve())] == kept_id and linked == set(stores.values())
    with pytest.raises(DBAPIError, match="ck_volumes_status"), db.write() as s:  # the CHECK rule survived
        s.execute(text("UPDATE volumes SET status = 'lost'"))

    # the store made before identities: found by its path, then given the id its rows use
    assert len(indexed_volumes(db, legacy)) == len([r for r in ids.values() if r[0] in ("sag", "xray")])
    again = run_preprocess(db, legacy, workers=1)
    assert (again.done, again.skipped) == (0, 6)
    assert VolumeStore.open(legacy).ref.id == stores[str(legacy.resolve())] == again.store_id
    assert table_rows(db, ("volumes",)) == rows
