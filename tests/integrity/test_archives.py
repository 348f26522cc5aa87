"""Zip archives: nothing in one is skipped without a word, and no member can exhaust memory.

A zip inside a zip is named in a warning (it is not read); a member whose path leaves the archive
(``../``) is refused by name; a member too large for an OAI table, or compressed like a zip bomb,
is refused from its directory entry before any of it is read (the memory this saves is measured
by ``benchmarks/archive_memory.py``: 1,360 MB before, 162 MB after, for 600 MB of zeros in a
612 KB zip); and a member is read in counted blocks, never whole for its header.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from oaicohort.db import Database
from oaicohort.errors import InputFileError
from oaicohort.ingest.run import ingest_release
from oaicohort.release import archive as archive_module
from oaicohort.release.discovery import discover
from oaicohort.release.text import read_header
from tests.helpers.releases import ASCII
from tests.helpers.reliability import DATA_TABLES, message_lines, run_oai, table_rows


def _zip_of(release: Path, path: Path, *, prefix: str = "") -> Path:
    """The release's clinical tables in the zip ``path``, under ``prefix`` + their ASCII folder."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for table in sorted((release / ASCII).glob("*.txt")):
            archive.write(table, f"{prefix}{ASCII}/{table.name}")
    return path


def test_a_zip_inside_a_zip_is_named_in_a_warning(pristine_release: Path, tmp_path: Path, any_db: Database) -> None:
    root = tmp_path / "root"
    (root / "00m").mkdir(parents=True)
    (root / "00m" / "contents.csv").write_bytes((pristine_release / "00m" / "contents.csv").read_bytes())
    inner = _zip_of(pristine_release, tmp_path / "inner.zip")
    with zipfile.ZipFile(root / "download.zip", "w") as outer:
        outer.write(inner, "OAI/clinical.zip")
    result = ingest_release(any_db, root)  # the image index alone is a release
    assert result.status == "succeeded" and result.rows["subject_visits"] == 0  # no clinical table read
    assert any(
        w.startswith("download.zip!OAI/clinical.zip: a zip inside a zip is not read") and "unpack it" in w
        for w in result.warnings
    ), result.warnings


@pytest.mark.parametrize("member", [f"../{ASCII}/Enrollees.txt", f"/{ASCII}/Enrollees.txt", "C:/oai/Enrollees.txt"])
def test_a_member_leaving_the_archive_is_refused_by_name(
    member: str, pristine_release: Path, tmp_path: Path, any_db: Database
) -> None:
    archive = _zip_of(pristine_release, tmp_path / "release.zip")
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr(zipfile.ZipInfo(member), (pristine_release / ASCII / "Enrollees.txt").read_bytes())
    before = table_rows(any_db, DATA_TABLES)
    with pytest.raises(InputFileError) as err:
        ingest_release(any_db, archive)
    assert f"release.zip: member {member!r} points outside the archive" in str(err.value)
    assert table_rows(any_db, DATA_TABLES) == before


def _bomb(path: Path, megabytes: int) -> Path:
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive,
        archive.open(f"{ASCII}/AllClinical00.txt", "w") as member,
    ):
        for _ in range(megabytes):
            member.write(bytes(1 << 20))
    return path


def test_a_zip_bomb_member_is_refused_before_it_is_read(
    tmp_path: Path, any_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = _bomb(tmp_path / "release.zip", 24)  # 24 MB of zeros in about 25 KB

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the member was opened for reading")

    monkeypatch.setattr(zipfile.ZipFile, "open", never)
    with pytest.raises(InputFileError) as err:
        ingest_release(any_db, bomb)
    message = str(err.value)
    assert f"release.zip!{ASCII}/AllClinical00.txt: the member unpacks to 25,165,824 bytes" in message
    assert "refused as a zip bomb" in message


def test_a_member_over_the_size_limit_is_refused(
    pristine_release: Path, tmp_path: Path, any_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _zip_of(pristine_release, tmp_path / "release.zip")
    monkeypatch.setattr(archive_module, "MAX_MEMBER_BYTES", 1000)  # the limit, made small
    with pytest.raises(InputFileError, match=r"more than the 1,000 an OAI table may have"):
        ingest_release(any_db, archive)
    assert table_rows(any_db, DATA_TABLES) == {t: [] for t in DATA_TABLES}


def test_a_header_is_read_without_reading_the_whole_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "release.zip"
    body = b"ID|V00SITE\n" + b"9000001|A\n" * 400_000  # 4 MB, many blocks
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{ASCII}/Enrollees.txt", body)
    (source,) = [s for s in discover(path).sources if s.member]
    read: list[int] = []
    real_read = zipfile.ZipExtFile.read

    def counting(self: zipfile.ZipExtFile, n: int = -1) -> bytes:
        block = real_read(self, n)
        read.append(len(block))
        return block

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting)
    assert read_header(source) == ["ID", "V00SITE"]
    assert 0 < sum(read) <= 1 << 20 and -1 not in read  # one block, not the 4 MB


def test_cli_refuses_a_bomb_with_one_line(tmp_path: Path) -> None:
    bomb = _bomb(tmp_path / "release.zip", 24)
    done = run_oai(f"sqlite:///{tmp_path / 'db.sqlite'}", "ingest", str(bomb))
    assert done.returncode == 1 and "refused as a zip bomb" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(message_lines(done.stderr)) <= 3
    assert done.stdout == ""
