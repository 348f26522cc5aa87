"""``oai models`` and the complexity helpers behind it."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from oaicli.main import app as root_app
from oaimodels.networks import list_models
from oaimodels.networks.complexity import (
    count_macs,
    count_params,
    efficiency_table,
    measure_latency,
    time_call,
)
from oaimodels.networks.slice_aggregators import BiLSTMAggregator
from oaimodels.networks.slice_transformer import SliceTransformer


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    """The root app, which registers ``models`` (no stand-in: a CLI that does not import fails here)."""
    return root_app


def test_models_json_lists_every_model_and_view(app: typer.Typer) -> None:
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == [n for n in list_models() for _ in range(3 if n == "2d_trf" else 1)]
    by_key = {(r["name"], r["view"]): r for r in rows}
    trf = by_key[("2d_trf", "cor")]
    assert isinstance(trf["params"], int) and trf["params"] == pytest.approx(132.8e6, rel=0.01)
    assert trf["gmacs"] == pytest.approx(143, rel=0.03)
    assert trf["input_shapes"] == {"cor": [1, 80, 160, 128]}
    assert "latency_ms" not in trf


def test_models_latency_on_small_shapes(app: typer.Typer) -> None:
    args = ["models", "--json", "--latency", "--small", "-m", "3d_shufflenet", "--repeats", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["latency_ms"] > 0 and row["batch"] == 1 and row["device"] == "cpu"
    assert row["input_shapes"] == {"sag": [1, 16, 32, 32]}


def test_models_table(app: typer.Typer) -> None:
    result = CliRunner().invoke(app, ["models", "-m", "2dsh_trf", "-m", "2p1d"])
    assert result.exit_code == 0, result.output
    assert "2dsh_trf" in result.stdout and "443" in result.stdout and "2p1d" in result.stdout


def test_models_usage_errors_exit_2(app: typer.Typer) -> None:
    assert CliRunner().invoke(app, ["models", "-m", "resnet"]).exit_code == 2
    if not torch.cuda.is_available():
        assert CliRunner().invoke(app, ["models", "--device", "cuda"]).exit_code == 2


def test_counts_on_meta_equal_counts_on_cpu() -> None:
    # The fused CPU kernels for attention and the LSTM are counted too (custom formulas), so a
    # count on real tensors agrees with the meta-device count that `oai models` uses.
    def build() -> nn.Sequential:
        return nn.Sequential(
            BiLSTMAggregator(in_features=8, hidden=4, num_classes=8),
            nn.Unflatten(1, (1, 8)),
            SliceTransformer(1, in_features=8, dim=16, depth=1, heads=2, head_dim=8, mlp_dim=16),
        )

    real = count_macs(build(), torch.randn(2, 5, 8))  # type: ignore[arg-type]
    with torch.device("meta"):
        meta = count_macs(build(), torch.randn(2, 5, 8))  # type: ignore[arg-type]
    assert real == meta > 0


def test_count_params_and_trainable_only() -> None:
    layer = nn.Linear(4, 3)
    layer.bias.requires_grad_(False)
    assert count_params(layer) == 15 and count_params(layer, trainable_only=True) == 12


class _DictLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.fc(x["sag"])


def test_latency_is_a_median_after_warmup() -> None:
    calls = []
    times = time_call(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=5)
    assert len(times) == 5 and len(calls) == 7
    model = _DictLinear().train()
    assert measure_latency(model, {"sag": torch.randn(1, 8)}, repeats=3) > 0
    assert model.training  # timed in eval mode, then put back
    ms = measure_latency(model, {"sag": torch.randn(1, 8)}, repeats=2, amp_dtype=torch.bfloat16)
    assert ms > 0


def test_efficiency_table_reports_progress() -> None:
    seen = []
    rows = efficiency_table(["2d_trf"], progress=lambda t, d, n: seen.append((d, n)))
    assert [r.complexity.view for r in rows] == ["sag", "cor", "ax"]
    assert seen[-1] == (3, 3)
