"""Class 9: outputs are bounded by what was asked, and reading never creates a database.

A QC contact sheet has only the grid its knees need and at most ``MAX_SHEET_PIXELS`` (a 200x200
grid for two knees drew a 340-megapixel PNG); a larger grid is refused before anything is
drawn (exit 2). ``oai store export`` reads the database the store was made with and never creates
one (without ``--db`` it created ``./oai.sqlite``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from oaicli.main import app
from oaicohort.imaging.store import qc as qc_module
from oaicohort.imaging.store.qc import GAP, SheetTooLargeError, montage_shape, write_qc
from oaicohort.imaging.store.volume_store import VolumeStore


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.height, image.width


def test_a_sheet_has_only_the_grid_its_knees_need(small_store: tuple[Path, Path], tmp_path: Path) -> None:
    _, store = small_store
    height, width = montage_shape(VolumeStore.open(store), ["sag"])
    index = write_qc(store, tmp_path / "two", limit=2, columns=200, rows=200)
    assert len(index) == 2 and index["sheet"].nunique() == 1
    assert _size(tmp_path / "two" / index["sheet"].iloc[0]) == (height, 2 * width + GAP)  # one row of two
    index = write_qc(store, tmp_path / "all", columns=4, rows=200)  # 6 knees: two rows of four
    assert _size(tmp_path / "all" / index["sheet"].iloc[0]) == (2 * height + GAP, 4 * width + 3 * GAP)
    sheet = np.asarray(Image.open(tmp_path / "all" / index["sheet"].iloc[0]))
    assert sheet[height + GAP :, 2 * (width + GAP) :].max() == 0  # the two cells no knee fills stay black


def test_a_sheet_over_the_pixel_limit_is_refused_before_drawing(
    small_store: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, store = small_store
    height, width = montage_shape(VolumeStore.open(store), ["sag"])
    monkeypatch.setattr(qc_module, "MAX_SHEET_PIXELS", 3 * height * width)  # the limit, made small
    with pytest.raises(SheetTooLargeError) as err:
        write_qc(store, tmp_path / "qc", columns=4, rows=2)
    assert "--columns 4 x --rows 2: a contact sheet of 4 x 2 montages" in str(err.value)
    assert "use fewer columns or rows" in str(err.value) and err.value.exit_code == 2
    assert not (tmp_path / "qc").exists()
    result = CliRunner().invoke(app, ["store", "qc", str(store), "--out", str(tmp_path / "qc"), "--columns", "4"])
    assert result.exit_code == 2 and "megapixels" in result.stderr and not (tmp_path / "qc").exists()


def test_store_export_never_creates_a_database(
    small_store: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, store = small_store
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OAI_DB", raising=False)
    result = CliRunner().invoke(app, ["store", "export", str(store), "--nifti", str(tmp_path / "nifti")])
    assert result.exit_code == 1 and "no database here (nothing was created)" in " ".join(result.stderr.split())
    assert not (tmp_path / "oai.sqlite").exists() and not (tmp_path / "nifti").exists()
    result = CliRunner().invoke(
        app, ["--db", str(tmp_path / "new" / "x.sqlite"), "store", "export", str(store), "--nifti", "n"]
    )
    assert result.exit_code == 1 and not (tmp_path / "new").exists()
