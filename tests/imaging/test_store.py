"""The Zarr volume store: round trip, plain zarr readability, params binding, read paths."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import zarr

from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.store.volume_store import (
    StoreError,
    VolumeStore,
    knee_key,
    split_knee_key,
    volume_checksum,
)

SMALL = PreprocessParams.small()


def random_volume(view: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, SMALL.stored_shape(view), dtype=np.uint8)


@pytest.fixture
def store(tmp_path: Path) -> VolumeStore:
    return VolumeStore.create(tmp_path / "vol.zarr", SMALL)


def test_knee_keys() -> None:
    assert knee_key(9000099, "R") == 90000991
    assert knee_key(9000099, "L") == 90000992
    assert split_knee_key(90000992) == (9000099, "L")
    with pytest.raises(ValueError):
        knee_key(1, "B")
    with pytest.raises(ValueError):
        split_knee_key(-1)


def test_round_trip_and_plain_zarr_open(store: VolumeStore) -> None:
    vols = {view: [random_volume(view, i) for i in range(3)] for view in ("sag", "cor")}
    for view, items in vols.items():
        for pos, vol in enumerate(items):
            checksum = store.write(view, pos, vol, key=knee_key(100 + pos, "L"), visit=0)
            assert checksum == volume_checksum(vol)

    reader = VolumeStore.open(store.path)
    assert reader.views == ("sag", "cor", "ax")
    assert reader.volume_shape("sag") == (20, 44, 44) and reader.crop_shape("sag") == (16, 40, 40)
    assert reader.params == SMALL and reader.params_hash == SMALL.hash()
    np.testing.assert_array_equal(reader.read("sag", 1), vols["sag"][1])
    np.testing.assert_array_equal(reader.read_many("cor", [2, 0]), np.stack([vols["cor"][2], vols["cor"][0]]))
    np.testing.assert_array_equal(reader.read_all("sag"), np.stack(vols["sag"]))
    assert reader.capacity("ax") == 0

    group = zarr.open(str(store.path), mode="r")
    assert group.attrs["params_hash"] == SMALL.hash()
    assert group.attrs["format_version"] == 1 and group.attrs["params"]["preset"] == "small"
    assert {"created_at", "toolkit_version"} <= set(group.attrs)
    assert group["sag"].shape == (3, 20, 44, 44) and group["sag"].chunks == (1, 20, 44, 44)
    assert group["sag"].dtype == np.uint8
    np.testing.assert_array_equal(group["sag"][2], vols["sag"][2])
    assert group["knee_keys/sag"][:].tolist() == [1002, 1012, 1022]
    assert group["visits/cor"][:].tolist() == [0, 0, 0]
    meta = json.loads((store.path / "sag" / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["codecs"][-1]["name"] == "zstd"


def test_unused_slots_read_as_zeros_with_key_minus_one(store: VolumeStore) -> None:
    store.write("sag", 0, random_volume("sag", 0), key=11, visit=0)
    store.grow("sag", 4)
    assert store.knee_keys("sag").tolist() == [11, -1, -1, -1]
    assert store.visits("sag").tolist() == [0, -1, -1, -1]
    assert store.read("sag", 3).max() == 0
    with pytest.raises(IndexError, match="out of range"):
        store.read("sag", 4)
    store.release("sag", 0)
    assert store.knee_keys("sag")[0] == -1


def test_fast_path_equals_zarr_path(store: VolumeStore) -> None:
    vol = random_volume("sag", 5)
    vol[:, :10] = 0  # compressible part too
    store.write("sag", 0, vol, key=1, visit=0)
    reader = VolumeStore.open(store.path)
    assert reader._fast_path("sag")
    fast = reader.read("sag", 0)
    reader._chunks.usable["sag"] = False
    np.testing.assert_array_equal(reader.read("sag", 0), fast)
    np.testing.assert_array_equal(fast, vol)


def test_store_pickles_for_worker_processes(store: VolumeStore) -> None:
    vol = random_volume("ax", 1)
    store.write("ax", 0, vol, key=1, visit=0)
    clone = pickle.loads(pickle.dumps(VolumeStore.open(store.path)))
    np.testing.assert_array_equal(clone.read("ax", 0), vol)


def test_store_bound_to_its_params(store: VolumeStore) -> None:
    again = VolumeStore.open_or_create(store.path, SMALL)
    assert again.params_hash == store.params_hash
    with pytest.raises(StoreError, match="other parameters.*new --store path"):
        VolumeStore.open_or_create(store.path, PreprocessParams.full())
    with pytest.raises(StoreError, match="not empty"):
        VolumeStore.create(store.path, SMALL)


def test_edited_params_attribute_is_detected(store: VolumeStore) -> None:
    group = zarr.open_group(str(store.path), mode="r+")
    params = dict(group.attrs["params"])
    params["margin"] = 0
    group.attrs["params"] = params
    with pytest.raises(StoreError, match="does not match params_hash"):
        VolumeStore.open(store.path)


def test_open_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a volume store"):
        VolumeStore.open(tmp_path / "missing.zarr")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=3)
    with pytest.raises(StoreError, match="plain.zarr.*no params_hash"):
        VolumeStore.open(tmp_path / "plain.zarr")


def test_read_only_store_refuses_writes(store: VolumeStore) -> None:
    reader = VolumeStore.open(store.path)
    with pytest.raises(StoreError, match="read-only"):
        reader.write("sag", 0, random_volume("sag", 0), key=1, visit=0)


def test_write_checks_shape_and_dtype(store: VolumeStore) -> None:
    with pytest.raises(ValueError, match="uint8"):
        store.write("sag", 0, np.zeros((20, 44, 44), dtype=np.uint16), key=1, visit=0)
    with pytest.raises(ValueError, match=r"\(20, 44, 44\)"):
        store.write("sag", 0, np.zeros((20, 44, 40), dtype=np.uint8), key=1, visit=0)


def test_info_reports_counts_and_compression(store: VolumeStore) -> None:
    zeros = np.zeros(SMALL.stored_shape("sag"), dtype=np.uint8)
    store.write("sag", 0, zeros, key=1, visit=0)
    store.write("sag", 1, zeros, key=2, visit=0)
    store.grow("sag", 3)
    from oaicohort.imaging.store.info import store_info

    info = store_info(store)
    assert info["params_hash"] == SMALL.hash() and info["store_id"] == store.ref.id
    sag = info["views"]["sag"]
    assert sag["slots"] == 3 and sag["used"] == 2 and sag["volume_shape"] == [20, 44, 44]
    assert sag["compression_ratio"] > 50  # zeros compress to almost nothing
    assert info["views"]["cor"]["used"] == 0 and info["views"]["cor"]["compression_ratio"] is None
