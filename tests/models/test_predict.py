"""``oai predict``: the fold ensemble applied to stores, DICOM series and releases."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from oaicohort.imaging.recipe.params import PreprocessParams
from oaicohort.imaging.store.selection import SelectionError, parse_knees
from oaicohort.imaging.store.volume_store import VolumeStore, knee_key
from oaimodels.evaluation.held_out import evaluate_runs
from oaimodels.inference.predict import predict, write_predictions
from oaimodels.inference.trained_run import RunError, TrainedRun
from oaimodels.training.config import TrainConfig
from oaimodels.training.run import train_run
from tests.helpers.training import make_toy_cohort, toy_model

PROB_COLUMNS = ["p_none", "p_fast", "p_slow", "score", "score_fold0", "score_fold1"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, pd.DataFrame]]:
    root = tmp_path_factory.mktemp("predict")
    with toy_model():
        store, knees = make_toy_cohort(root, n_subjects=20)
        config = TrainConfig(
            store=str(store), out=str(root / "run"), model="toy3d", epochs=2, batch_size=4,
            lr=3e-3, warmup_epochs=0, seed=0, loader="resident", workers=0, device="cpu",
        )  # fmt: skip
        run = train_run(config, knees=knees)
        evaluate_runs([run], n_resamples=20, latency=False)
        yield run, store, knees


def test_predict_on_test_knees_reproduces_eval_exactly(toy_run: tuple[Path, Path, pd.DataFrame]) -> None:
    run, store, _ = toy_run
    evaluated = pd.read_csv(run / "eval" / "predictions.csv")
    with toy_model():
        # eval's predictions.csv has subject_id and side columns: it is itself a --knees file
        frame = predict(run, [store], knees=parse_knees(str(run / "eval" / "predictions.csv")), device="cpu")
    out = run.parent / "pred.csv"
    write_predictions(frame, out)
    mine = pd.read_csv(out)
    assert mine["knee_id"].tolist() == evaluated["knee_id"].tolist()
    assert mine["side"].tolist() == evaluated["side"].tolist()
    assert mine["predicted"].tolist() == evaluated["predicted"].tolist()
    for column in PROB_COLUMNS:  # the same floats, written and read back
        assert mine[column].tolist() == evaluated[column].tolist(), column
    # provenance on every row
    assert mine["run_hash"].nunique() == 1 and len(mine["run_hash"][0]) == 16
    assert mine["run_hash"][0] == TrainedRun.open(run).hash
    assert set(mine["toolkit_version"].astype(str)) == {"0.1.0"} and set(mine["model"]) == {"toy3d"}


def test_predict_whole_store_and_stdout(
    toy_run: tuple[Path, Path, pd.DataFrame], capsys: pytest.CaptureFixture[str]
) -> None:
    run, store, knees = toy_run
    evaluated = pd.read_csv(run / "eval" / "predictions.csv").set_index("knee_id")
    with toy_model():
        frame = predict(run, [store], device="cpu", batch_size=3)  # other batches, same numbers
    assert len(frame) == len(knees)
    assert frame["knee_id"].notna().all()  # the run's own store: knee ids from knees.csv
    test = frame[frame["knee_id"].isin(evaluated.index)].set_index("knee_id")
    np.testing.assert_allclose(test["score"], evaluated.loc[test.index, "score"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(frame[["p_none", "p_fast", "p_slow"]].sum(axis=1), 1.0, atol=1e-9)
    write_predictions(frame.iloc[:2], "-")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("input,kind,knee,subject_id,side,visit,knee_id,p_none") and len(lines) == 3


def test_store_with_other_parameters_is_refused(toy_run: tuple[Path, Path, pd.DataFrame], tmp_path: Path) -> None:
    run, store, _ = toy_run
    params = VolumeStore.open(store).params
    other = VolumeStore.create(tmp_path / "other.zarr", dataclasses.replace(params, percentile_high=99.5))
    other.write("sag", 0, np.zeros(other.volume_shape("sag"), np.uint8), key=knee_key(9000000, "R"), visit=0)
    with toy_model(), pytest.raises(RunError, match=r"percentile_high: store 99.5, run 99.9"):
        predict(run, [other.path], device="cpu")


def test_unknown_knee_and_bad_inputs_are_explained(toy_run: tuple[Path, Path, pd.DataFrame], tmp_path: Path) -> None:
    run, store, _ = toy_run
    with toy_model():
        with pytest.raises(SelectionError, match="no volume of knee.*1234567R"):
            predict(run, [store], knees=[(1234567, "R")], device="cpu")
        with pytest.raises(RunError, match="not a run folder"):
            predict(tmp_path, [store])
    with pytest.raises(Exception, match="not a knee"):
        parse_knees("9000001X")
    assert parse_knees("9000001r, 9000002:L 9000001R") == [(9000001, "R"), (9000002, "L")]


def test_predict_from_a_dicom_series_folder(toy_run: tuple[Path, Path, pd.DataFrame], tmp_path: Path) -> None:
    """A series folder goes through the run's own preprocessing, like a store of the same volume."""
    from oaicohort.imaging.recipe.mri import preprocess_mri
    from oaicohort.synth.dicom_writer import SeriesMeta, write_series
    from oaicohort.synth.mri_anatomy import render_knee_volume

    run, _, _ = toy_run
    params = TrainedRun.open(run).params()
    assert params == VolumeStore.open(toy_run[1]).params
    rng = np.random.default_rng(0)
    pixels = render_knee_volume(1.0, "R", rng, "small")  # 40 x 96 x 96; the toy region is 40 x 72 x 72
    folder = tmp_path / "series"
    write_series(folder, pixels, SeriesMeta(patient_id="9100001", series_description="SAG_3D_DESS_RIGHT"))
    with toy_model():
        frame = predict(run, [folder], device="cpu")
    assert frame[["kind", "subject_id", "side"]].values.tolist() == [["series", 9100001, "R"]]
    assert "rows_cropped" in frame["notes"][0]
    # the same volume fed through a store gives the same probabilities
    from oaicohort.imaging.series.dicom import read_series

    volume = preprocess_mri(read_series(folder), params, ("sag",)).volumes["sag"]
    store = VolumeStore.create(tmp_path / "s.zarr", params)
    store.write("sag", 0, volume, key=knee_key(9100001, "R"), visit=0)
    with toy_model():
        from_store = predict(run, [store.path], device="cpu")
    np.testing.assert_array_equal(from_store[["p_none", "p_fast", "p_slow"]], frame[["p_none", "p_fast", "p_slow"]])
    assert PreprocessParams.small().hash() != params.hash()


def test_predict_command_writes_csv_and_stdout(
    toy_run: tuple[Path, Path, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from oaicli.main import app

    run, store, _ = toy_run
    monkeypatch.chdir(tmp_path)  # no ./oai.sqlite here: predict needs no database
    monkeypatch.delenv("OAI_DB", raising=False)
    with toy_model():
        result = CliRunner().invoke(
            app, ["predict", str(run), str(store), "--knees", "9000000R,9000001L", "--out", "p.csv", "--device", "cpu"]
        )
        assert result.exit_code == 0, result.output
        written = pd.read_csv(tmp_path / "p.csv")
        assert written["knee"].tolist() == ["9000000R", "9000001L"]
        result = CliRunner().invoke(app, ["predict", str(run), str(store), "--knees", "9000000R", "--out", "-"])
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines()[1].split(",")[2] == "9000000R"
        result = CliRunner().invoke(app, ["predict", str(run), str(store), "--knees", "123R"])
        assert result.exit_code == 1 and "no volume of knee(s) 123R" in result.output


def _small_release(root: Path) -> Path:
    """A release whose contents.csv lists DESS series of 9100001R, 9100001L and 9100002L (visit 0)."""
    from oaicohort.synth.dicom_writer import SeriesMeta, write_series
    from oaicohort.synth.mri_anatomy import render_knee_volume

    visit_dir = root / "00m"
    lines = ["Folder,ParticipantID,StudyDate,Barcode,StudyDescription,SeriesDescription"]
    for n, (subject, side, description) in enumerate(
        [(9100001, "R", "SAG_3D_DESS_RIGHT"), (9100001, "L", "SAG_3D_DESS_LEFT"), (9100002, "L", "SAG_3D_DESS_LEFT")]
    ):
        rel = f"0.C.2/{subject}/20040101/{10000000 + n}"
        pixels = render_knee_volume(0.5 * n, side, np.random.default_rng(n), "small")
        write_series(visit_dir / rel, pixels, SeriesMeta(patient_id=str(subject), series_description=description))
        lines.append(f"{rel},{subject},20040101,01234,OAI^MR^ENROLLMENT^{side},{description}  ")
    lines.append("0.C.2/9100002/20040101/99999999,9100002,20040101,01234,OAI^MR^ENROLLMENT^LEFT,COR_IW_TSE_LEFT")
    (visit_dir / "contents.csv").write_text("\n".join(lines) + "\n")
    return root


def test_predict_from_an_oai_release_with_knees(toy_run: tuple[Path, Path, pd.DataFrame], tmp_path: Path) -> None:
    """A release's contents.csv leads to the DESS series of the named knees (visit 0)."""
    run, _, _ = toy_run
    visit_dir = _small_release(tmp_path / "OAI") / "00m"
    with toy_model():
        frame = predict(run, [tmp_path / "OAI"], knees=[(9100002, "L"), (9100001, "L")], device="cpu")
        direct = predict(run, [visit_dir / "0.C.2/9100002/20040101/10000002"], device="cpu")
        with pytest.raises(SelectionError, match="9100002R"):
            predict(run, [tmp_path / "OAI"], knees=[(9100002, "R")], device="cpu")
    assert frame["knee"].tolist() == ["9100002L", "9100001L"] and set(frame["kind"]) == {"release"}
    assert frame["visit"].tolist() == [0, 0]
    # a batch of one vs two knees: the same numbers up to float32 summation order
    np.testing.assert_allclose(
        frame[["p_none", "p_fast", "p_slow"]].iloc[:1], direct[["p_none", "p_fast", "p_slow"]], rtol=1e-6
    )


def test_series_without_a_side_needs_one(toy_run: tuple[Path, Path, pd.DataFrame], tmp_path: Path) -> None:
    from oaicohort.errors import InputFileError
    from oaicohort.synth.dicom_writer import SeriesMeta, write_series
    from oaicohort.synth.mri_anatomy import render_knee_volume

    run, _, _ = toy_run
    folder = tmp_path / "anon"
    pixels = render_knee_volume(0.0, "L", np.random.default_rng(3), "small")
    write_series(folder, pixels, SeriesMeta(patient_id="9100009", series_description="SAG_3D_DESS_WE"))
    with toy_model():
        with pytest.raises(InputFileError, match="cannot tell the knee side.*--side"):
            predict(run, [folder], device="cpu")
        left = predict(run, [folder], side="L", device="cpu")
        right = predict(run, [folder], side="R", device="cpu")  # mirrored before scoring
    assert left[["subject_id", "side"]].values.tolist() == [[9100009, "L"]]
    assert right["side"].tolist() == ["R"] and right["score"][0] != left["score"][0]


def test_predict_takes_the_knees_of_a_saved_cohort(
    toy_run: tuple[Path, Path, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--cohort NAME``: the knees a study saved with ``oai cohort --save`` (its order kept)."""
    from typer.testing import CliRunner

    from oaicli.main import app
    from oaicohort.db import open_database
    from oaicohort.db.schema import SavedCohort

    run, _, _ = toy_run
    release = _small_release(tmp_path / "OAI")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OAI_DB", raising=False)
    db_path = tmp_path / "study.sqlite"
    db = open_database(db_path)
    with db.write() as session:  # as `oai cohort --save` stores it (columnar knee list)
        session.add(
            SavedCohort(
                name="my_study", query={}, definition_name="panfilov2022", params_hash="0" * 64, split_id=None,
                knees={"subject_id": [9100002, 9100001], "side": ["L", "R"], "label": ["none", "fast"]},
                content_hash="0" * 64, snapshot={}, ingest_run_id=None, toolkit_version="0.1.0",
            )
        )  # fmt: skip
    db.dispose()
    base = ["--db", str(db_path), "predict", str(run), str(release), "--device", "cpu"]
    with toy_model():
        done = CliRunner().invoke(app, [*base, "--cohort", "my_study", "--out", "p.csv"])
        assert done.exit_code == 0, done.output
        assert pd.read_csv(tmp_path / "p.csv")["knee"].tolist() == ["9100002L", "9100001R"]
        unknown = CliRunner().invoke(app, [*base, "--cohort", "other"])
        both = CliRunner().invoke(app, [*base, "--cohort", "my_study", "--knees", "9000001R"])
    assert unknown.exit_code == 1 and "no saved cohort 'other'; saved cohorts: my_study" in unknown.output
    assert both.exit_code == 2 and "--knees and --cohort both choose knees" in " ".join(both.output.split())


# ImageOrientationPatient, and how a canonical (sagittal DESS as acquired) volume is stored under it
STORED_ORIENTATIONS = {
    "rows_and_slices_reversed": ((0.0, 1.0, 0.0, 0.0, 0.0, 1.0), lambda v: v[::-1, ::-1, :]),
    "rotated_180": ((0.0, -1.0, 0.0, 0.0, 0.0, 1.0), lambda v: v[:, ::-1, ::-1]),
    "transposed_slices_reversed": ((0.0, 0.0, -1.0, 0.0, 1.0, 0.0), lambda v: v[::-1].transpose(0, 2, 1)),
}
PROBS = ["p_none", "p_fast", "p_slow", "score"]


def _write_dess(folder: Path, subject: int, description: str, variant: str | None = None, seed: int = 5) -> np.ndarray:
    """A small synthetic DESS series (canonical, or stored under ``variant``); returns the canonical pixels."""
    from oaicohort.synth.dicom_writer import SeriesMeta, write_series
    from oaicohort.synth.mri_anatomy import render_knee_volume

    side = "L" if description.endswith("LEFT") else "R"
    canonical = render_knee_volume(1.0, side, np.random.default_rng(seed), "small")  # 40 x 96 x 96
    slice_mm, row_mm, col_mm = 2.8, 1.3, 1.46  # rows and columns differ: a transposition shows
    meta = SeriesMeta(str(subject), description, spacing_mm=(slice_mm, row_mm, col_mm))
    pixels = canonical
    if variant is not None:
        orientation, store_as = STORED_ORIENTATIONS[variant]
        pixels = np.ascontiguousarray(store_as(canonical))
        spacing = (slice_mm, col_mm, row_mm) if "transposed" in variant else (slice_mm, row_mm, col_mm)
        meta = dataclasses.replace(meta, spacing_mm=spacing, orientation=orientation)
    write_series(folder, pixels, meta)
    return canonical


@pytest.mark.parametrize("variant", sorted(STORED_ORIENTATIONS))
def test_a_series_stored_in_another_orientation_predicts_exactly_as_its_stored_volume(
    toy_run: tuple[Path, Path, pd.DataFrame], tmp_path: Path, variant: str
) -> None:
    """`oai predict` on a series folder loads it as `oai preprocess` does: reoriented to the
    canonical order, so it reaches the model as the store holds it (not rotated or mirrored)."""
    from oaicohort.imaging.recipe.mri import preprocess_mri
    from oaicohort.imaging.runs.mri_worker import SeriesTask, preprocess_task
    from oaicohort.imaging.series.dicom import read_series
    from oaicohort.imaging.series.load import LoadedSeries

    run, _, _ = toy_run
    params = TrainedRun.open(run).params()
    assert params.canonical_orientation
    _write_dess(tmp_path / "canonical", 9100001, "SAG_3D_DESS_RIGHT")
    _write_dess(tmp_path / "stored", 9100001, "SAG_3D_DESS_RIGHT", variant)

    def preprocessed(folder: Path) -> np.ndarray:  # what `oai preprocess`'s worker stores for the series
        task = SeriesTask(series_id=1, knee_id=1, subject_id=9100001, side="R", visit=0, folder=folder, views=("sag",))
        outcome = preprocess_task(task, params, None)
        assert outcome.reason is None, outcome.reason
        return outcome.volumes["sag"]

    volume = preprocessed(tmp_path / "stored")
    np.testing.assert_array_equal(volume, preprocessed(tmp_path / "canonical"))
    store = VolumeStore.create(tmp_path / "s.zarr", params)
    store.write("sag", 0, volume, key=knee_key(9100001, "R"), visit=0)
    with toy_model():
        from_store = predict(run, [store.path], device="cpu")
        from_series = predict(run, [tmp_path / "stored"], device="cpu")
    assert from_series[["subject_id", "side"]].values.tolist() == [[9100001, "R"]]
    np.testing.assert_array_equal(from_series[PROBS].to_numpy(), from_store[PROBS].to_numpy())
    # the orientation mattered: the series as stored on disk, not reoriented, is another volume
    raw = read_series(tmp_path / "stored")
    as_read = preprocess_mri(LoadedSeries(raw.pixels, raw.spacing_mm, "R", raw), params, ("sag",)).volumes["sag"]
    assert not np.array_equal(as_read, volume)


def test_predict_refuses_a_series_that_is_not_what_it_was_given_as(
    toy_run: tuple[Path, Path, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 24, item 3: predict applies preprocess's sources-agree rules to every series it scores."""
    import pydicom
    from typer.testing import CliRunner

    from oaicli.main import app
    from oaicohort.errors import InputFileError

    run, _, _ = toy_run
    folder = tmp_path / "tse"
    _write_dess(folder, 9100001, "COR_IW_TSE_RIGHT")  # a DESS volume, but its header names another series
    with toy_model(), pytest.raises(InputFileError) as err:
        predict(run, [folder], side="L", device="cpu")
    message = str(err.value)
    assert message.startswith(str(folder)) and "'COR_IW_TSE_RIGHT'" in message, message
    assert "COR_IW_TSE series of the right knee" in message and "given as a left SAG_3D_DESS knee" in message
    with toy_model(), pytest.raises(InputFileError, match="is a COR_IW_TSE series.*given as a SAG_3D_DESS knee"):
        predict(run, [folder], device="cpu")  # without --side: the sequence alone is refused
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OAI_DB", raising=False)
    with toy_model():
        result = CliRunner().invoke(app, ["predict", str(run), str(folder), "--side", "L", "--device", "cpu"])
    assert result.exit_code == 1 and not (tmp_path / "predictions.csv").exists()
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error:") and "'COR_IW_TSE_RIGHT'" in line and "left SAG_3D_DESS" in line
    # a right knee given as a left one, by the command line ...
    right = tmp_path / "right"
    _write_dess(right, 9100001, "SAG_3D_DESS_RIGHT")
    with toy_model(), pytest.raises(InputFileError, match="series of the right knee, but it was given as a left"):
        predict(run, [right], side="L", device="cpu")
    # ... or by a release's index: the index row and the DICOM header disagree
    release = _small_release(tmp_path / "OAI")
    victim = release / "00m" / "0.C.2/9100002/20040101/10000002"
    for path in sorted(victim.iterdir()):
        ds = pydicom.dcmread(path)
        ds.SeriesDescription = "COR_IW_TSE_RIGHT"
        ds.save_as(path)
    with toy_model(), pytest.raises(InputFileError) as err:
        predict(run, [release], knees=[(9100002, "L")], device="cpu")
    assert str(victim) in str(err.value)
    assert "DICOM SeriesDescription is 'COR_IW_TSE_RIGHT' but the index says 'SAG_3D_DESS_LEFT'" in str(err.value)
    with toy_model():  # the other knees of the release are what the index says: scored
        assert predict(run, [release], knees=[(9100001, "L")], device="cpu")["knee"].tolist() == ["9100001L"]
