"""``oai explain``: integrated gradients, attention rollout, files, and the planted-signal check."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from oaicohort.db import open_database
from oaimodels.data import AugmentParams, InputLayout, centre_offsets
from oaimodels.inference.attribution import (
    _attention_probs,
    attention_rollout,
    explain_volumes,
    integrated_gradients,
    mass_inside,
    source_view_tokens,
)
from oaimodels.inference.explain import explain_run
from oaimodels.networks import registry
from oaimodels.networks.slice_transformer import SliceTransformer
from oaimodels.training.config import TrainConfig
from oaimodels.training.run import train_run
from tests.helpers.planted import (
    PLANTED_MODEL,
    TinySliceTransformer,
    make_planted_cohort,
    register_planted_model,
)
from tests.helpers.training import make_toy_cohort, toy_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_integrated_gradients_are_complete() -> None:
    """Attributions sum to f(x) - f(baseline) (the defining property), here for a smooth net."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 4 * 6 * 6, 1))

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(net(x)[:, 0])

    x = torch.randn(2, 1, 4, 6, 6)
    baseline = torch.zeros_like(x)
    attribution = integrated_gradients(f, x, baseline, steps=64)
    expected = (f(x) - f(baseline)).detach()
    np.testing.assert_allclose(attribution.sum(dim=(1, 2, 3, 4)), expected, rtol=2e-3, atol=1e-5)
    # a linear function: one step is already exact, and the attribution is x * weight
    w = torch.randn(1, 1, 4, 6, 6)
    linear = integrated_gradients(lambda t: (t * w).sum(dim=(1, 2, 3, 4)), x, baseline, steps=1)
    torch.testing.assert_close(linear, x * w)


def test_rollout_uses_the_attention_the_block_computes() -> None:
    torch.manual_seed(0)
    trf = SliceTransformer(5, in_features=8, dim=16, depth=2, heads=2, head_dim=8, mlp_dim=16, dropout=0.0).eval()
    tokens = torch.randn(3, 6, 16)
    attn = trf.blocks[0].attn
    probs = _attention_probs(attn, tokens)  # head-averaged
    # per head, probs @ v through the projection reproduces the fused kernel's output
    b, n, _ = tokens.shape
    q, k, v = attn.qkv(tokens).view(b, n, 3, attn.heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    per_head = torch.softmax(q @ k.transpose(-2, -1) * attn.head_dim**-0.5, dim=-1)
    torch.testing.assert_close(per_head.mean(dim=1), probs)
    manual = attn.proj((per_head @ v).transpose(1, 2).reshape(b, n, -1))
    torch.testing.assert_close(manual, attn(tokens), rtol=1e-5, atol=1e-6)

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trf = trf

        def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.trf(x["sag"])

    model = Wrapped()
    rollout = attention_rollout(model, {"sag": torch.randn(3, 5, 8)})
    assert rollout is not None and rollout.shape == (3, 5)
    np.testing.assert_allclose(rollout.sum(axis=1), 1.0, rtol=1e-6)
    # with zero query/key weights every token attends uniformly: the rollout is uniform
    for block in trf.blocks:
        nn.init.zeros_(block.attn.qkv.weight)
    np.testing.assert_allclose(attention_rollout(model, {"sag": torch.randn(2, 5, 8)}), 0.2, rtol=1e-6)
    assert attention_rollout(nn.Linear(2, 2), {}) is None  # no slice transformer, no rollout


def test_mass_inside() -> None:
    saliency = np.zeros((2, 2, 2))
    saliency[0, 0, 0], saliency[1, 1, 1] = 3.0, -1.0
    region = np.zeros((2, 2, 2), dtype=bool)
    region[0] = True
    assert mass_inside(saliency, region) == (0.75, 0.5)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("explain")
    with toy_model():
        store, knees = make_toy_cohort(root, n_subjects=10)
        config = TrainConfig(
            store=str(store), out=str(root / "run"), model="toy3d", epochs=1, batch_size=4,
            warmup_epochs=0, loader="resident", workers=0, device="cpu",
        )  # fmt: skip
        yield train_run(config, knees=knees)


def test_explain_command_writes_files_for_a_3d_model(toy_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from oaicli.main import app

    out = tmp_path / "ex"
    with toy_model():
        result = CliRunner().invoke(
            app, ["explain", str(toy_run), "--knees", "9000000R,9000001L", "--out", str(out), "--steps", "4",
                  "--device", "cpu", "--top", "2"],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "explanations.csv")
    assert table["knee"].tolist() == ["9000000R", "9000001L"]
    for knee in table["knee"]:
        folder = out / "knees" / knee
        importance = pd.read_csv(folder / "slice_importance.csv")
        assert len(importance) == 16 and importance["rollout"].isna().all()  # a 3D CNN has no attention
        np.testing.assert_allclose(importance["gradient"].sum(), 1.0, rtol=1e-5)
        assert (importance["stored_slice"] - importance["slice"]).eq(2).all()  # crop 16 of 20 slices
        saliency = np.load(folder / "saliency.npy")
        assert saliency.shape == (16, 32, 32) and saliency.sum() == pytest.approx(1.0, rel=1e-5)
        pngs = sorted(p.name for p in folder.glob("slice_*.png"))
        top = table.set_index("knee").loc[knee, "top_slices_gradient"].split()
        assert pngs == [f"slice_{int(s):02d}.png" for s in sorted(top, key=int)] and len(pngs) == 2
        assert all((folder / p).read_bytes()[:8] == PNG_MAGIC for p in pngs)
    summary = pd.read_csv(out / "summary" / "slice_importance.csv")
    assert summary["knees"].eq(2).all() and "rollout_mean" not in summary
    assert np.load(out / "summary" / "mean_saliency.npy").shape == (16, 32, 32)
    assert (out / "summary" / "mean_saliency.png").read_bytes()[:8] == PNG_MAGIC


def test_a_failing_explain_leaves_the_output_folder_as_it_was(
    toy_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import oaimodels.inference.explain as explain

    out = tmp_path / "ex"
    (out / "knees" / "9000000R").mkdir(parents=True)
    (out / "explanations.csv").write_text("earlier")

    def broken_summary(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(explain, "_write_summary", broken_summary)
    with toy_model(), pytest.raises(OSError, match="disk full"):
        explain.explain_run(toy_run, out, knees=[(9000000, "R"), (9000001, "L")], steps=2, device="cpu")
    assert (out / "explanations.csv").read_text() == "earlier"
    assert sorted(p.name for p in (out / "knees").iterdir()) == ["9000000R"]
    assert not any((out / "knees" / "9000000R").iterdir())  # the earlier (empty) folder, not a new one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ex"]  # no partial folder left behind


def test_explain_cohort_names_a_saved_cohort_of_the_database(toy_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from oaicli.main import app

    db = tmp_path / "study.sqlite"
    base = ["--db", str(db), "explain", str(toy_run), "--out", str(tmp_path / "ex"), "--device", "cpu"]
    missing = CliRunner().invoke(app, [*base, "--cohort", "my_study"])
    assert missing.exit_code == 1 and "no database here (nothing was created)" in missing.output and not db.exists()
    open_database(db).dispose()
    unknown = CliRunner().invoke(app, [*base, "--cohort", "my_study"])
    assert unknown.exit_code == 1 and "no saved cohort 'my_study'" in unknown.output
    both = CliRunner().invoke(app, [*base, "--cohort", "my_study", "--knees", "9000000R"])
    assert both.exit_code == 2 and "--knees and --cohort both choose knees" in " ".join(both.output.split())
    assert not (tmp_path / "ex").exists()


@pytest.mark.slow
def test_attributions_find_the_planted_signal(tmp_path: Path) -> None:
    """A tiny 2D + transformer learns progression from synthetic knees; on the held-out knees the
    integrated-gradients mass inside the planted regions (where the latent changes the image) is
    at least twice their volume fraction, and above an untrained model's."""
    register_planted_model()
    try:
        store, knees, regions = make_planted_cohort(tmp_path, n_subjects=40, n_test=6)
        config = TrainConfig(
            store=str(store), out=str(tmp_path / "run"), model=PLANTED_MODEL, epochs=30, batch_size=8, lr=3e-3,
            warmup_epochs=0, seed=0, loader="resident", workers=0, device="cpu", augment=AugmentParams.none(),
            threads=1,
        )  # fmt: skip
        run = train_run(config, knees=knees)
        out = tmp_path / "ex"
        table = explain_run(run, out, device="cpu", steps=16)  # default: the run's test knees
        test = knees[knees["role"] == "test"].reset_index(drop=True)
        assert table["knee"].tolist() == [f"{s}{d}" for s, d in zip(test["subject_id"], test["side"])]
        # the model learnt the signal: progressors score higher on the held-out knees
        progressor = (test["label"] != "none").to_numpy()
        assert table["score"][progressor].mean() > table["score"][~progressor].mean()

        layout = InputLayout.from_dict(json.loads((run / "config.json").read_text())["layout"])
        crop = layout.crop_shape
        off = centre_offsets(layout.stored_shape, crop)

        def cropped(region: np.ndarray) -> np.ndarray:
            return region[off[0] : off[0] + crop[0], off[1] : off[1] + crop[1], off[2] : off[2] + crop[2]]

        ratios = []
        for row in test.itertuples():
            saliency = np.load(out / "knees" / f"{row.subject_id}{row.side}" / "saliency.npy")
            mass, fraction = mass_inside(saliency, cropped(regions[row.position]))
            ratios.append(mass / fraction)
        ratios = np.asarray(ratios)
        assert ratios.min() >= 2.0, ratios

        # control: the same attribution of an untrained model of the same design
        from oaicohort.imaging.store.volume_store import VolumeStore

        torch.manual_seed(0)
        untrained = TinySliceTransformer(crop[0]).eval()
        volumes = torch.from_numpy(VolumeStore.open(store).read_many("sag", test["position"].tolist()))
        control = [
            mass_inside(result[1], cropped(regions[p]))
            for result, p in zip(explain_volumes([untrained], layout, volumes, steps=16), test["position"])
        ]
        control_ratios = np.asarray([m / f for m, f in control])
        assert ratios.mean() > control_ratios.mean(), (ratios, control_ratios)
        # the transformer's rollout is there too, one distribution per knee
        importance = pd.read_csv(out / "knees" / table["knee"][0] / "slice_importance.csv")
        np.testing.assert_allclose(importance["rollout"].sum(), 1.0, rtol=1e-5)
        summary = pd.read_csv(out / "summary" / "slice_importance.csv")
        assert {"gradient_mean", "rollout_mean"} <= set(summary.columns) and summary["knees"].eq(len(test)).all()
        print(  # the figure the issue asks for (pytest -s shows it)
            f"planted-signal check: mass/volume fraction {ratios.mean():.2f} (min {ratios.min():.2f}) over "
            f"{len(test)} held-out knees; untrained control {control_ratios.mean():.2f}"
        )
    finally:
        registry._REGISTRY.pop(PLANTED_MODEL, None)


def test_multiview_rollout_is_read_on_the_sagittal_tokens() -> None:
    layout = InputLayout("2dsh_trf", "sag", (20, 44, 44), (4, 6, 5), ("sag", "cor", "ax"))
    # tokens: 4 sagittal (D), 5 coronal (W), 6 axial (H)
    rollout = np.arange(1, 16, dtype=np.float64)[None, :]
    rollout /= rollout.sum()
    np.testing.assert_allclose(source_view_tokens(rollout, layout), [[1 / 10, 2 / 10, 3 / 10, 4 / 10]])
    single = InputLayout("2d_trf", "sag", (20, 44, 44), (4, 6, 5), ("sag",))
    assert source_view_tokens(rollout, single) is None  # 15 tokens for 4 slices: not this model's


@pytest.mark.slow
@pytest.mark.parametrize("name", ["2d_trf", "2dsh_trf"])
def test_explain_registered_slice_transformers(name: str) -> None:
    """The paper's transformer models (ResNet-50 per slice, small shapes): both methods, one map."""
    from oaimodels.networks import get_model, get_spec

    spec = get_spec(name)
    d, h, w = spec.small_shapes["sag"][1:]
    layout = InputLayout(name, "sag", (d + 4, h + 4, w + 4), (d, h, w), tuple(spec.views))
    torch.manual_seed(0)
    model = get_model(name, input_shapes=layout.input_shapes(), init="scratch").eval()
    volumes = torch.randint(0, 255, (2, d + 4, h + 4, w + 4), dtype=torch.uint8)
    for score, saliency, gradient, rollout, crop in explain_volumes([model], layout, volumes, steps=1):
        assert 0.0 <= score <= 1.0 and saliency.shape == crop.shape == (d, h, w)
        np.testing.assert_allclose(gradient.sum(), 1.0, rtol=1e-5)
        assert rollout is not None and rollout.shape == (d,)
        np.testing.assert_allclose(rollout.sum(), 1.0, rtol=1e-5)
