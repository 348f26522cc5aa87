"""``oai predict`` on a release whose images are a download without contents.csv (zipped per
visit, screening radiographs in P001) reads the knees exactly as the store was made."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from oaicohort.db import open_database
from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.runs.mri import run_preprocess
from oaicohort.imaging.runs.xray import run_xray_preprocess
from oaicohort.imaging.store.selection import store_slots
from oaicohort.imaging.store.volume_store import VolumeStore
from oaicohort.ingest.run import ingest_release
from oaicohort.synth import write_release
from oaicohort.synth.distributions import convert_release
from oaicohort.synth.images import write_images
from oaicohort.synth.radiograph_release import write_radiographs
from oaimodels.inference.inputs import release_index, release_radiograph_scans, release_scans

SMALL = PreprocessParams.small()


def test_predict_reads_a_zipped_download_as_the_store(tmp_path: Path) -> None:
    indexed = tmp_path / "indexed"
    write_release(indexed, subjects=6, seed=9)
    write_images(indexed, size="small", seed=9)
    write_radiographs(indexed, size="small", seed=9, screening_share=0.5)
    download = Path(shutil.copytree(indexed, tmp_path / "zip"))
    convert_release(download, "ascii", images="zip")
    db = open_database(tmp_path / "db.sqlite")
    ingest_release(db, indexed)
    store_path = tmp_path / "store.zarr"
    assert run_preprocess(db, store_path, SMALL, views=("sag",), strict=True).done > 0
    xray = run_xray_preprocess(db, store_path, SMALL, strict=True)
    assert xray.from_screening > 0
    db.dispose()
    store = VolumeStore.open(store_path)

    assert not list(download.rglob("contents.csv")) and len(release_index(download)) == len(release_index(indexed))
    for view, read in (
        ("xray", lambda knees: release_radiograph_scans(download, store.params, knees, 0, lambda *a: None)),
        ("sag", lambda knees: release_scans(download, store.params, "sag", knees, 0, lambda *a: None)),
    ):
        slots = store_slots(store, view, visit=0)
        knees = [(int(s), str(side)) for s, side in zip(slots["subject_id"], slots["side"])]
        scans = read(knees)
        assert [(s.subject_id, s.side) for s in scans] == knees
        for scan, position in zip(scans, slots["position"]):
            np.testing.assert_array_equal(scan.preprocessed(), store.read(view, int(position)))
