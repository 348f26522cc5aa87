"""Networks of Table 1: registry, sizes at the paper's shapes, and behaviour on tiny inputs."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from oaicohort.vocabulary import CLASSES
from oaimodels.networks import example_inputs, get_model, get_spec, list_models, to_channels_last, views_from_volume
from oaimodels.networks.common import inputs_channels_last
from oaimodels.networks.complexity import count_macs, count_params, model_complexity
from oaimodels.networks.multiview import MULTIVIEW_SHAPES, view_shapes_from_volume
from oaimodels.networks.slice_aggregators import BiLSTMAggregator
from oaimodels.networks.slice_encoder import SliceEncoder
from oaimodels.networks.slice_transformer import SelfAttention, SliceTransformer

TABLE1_ORDER = [
    "xr_resnext50",
    "2d_fc",
    "2d_lstm",
    "2d_trf",
    "2dsh_trf",
    "2dind_trf",
    "2p1d",
    "3d_resnext50",
    "3d_shufflenet",
]

# Expected sizes at the paper's shapes. Params: REFERENCE.md section 4's figures (to 0.1M where
# it gives them; Table 1 rounds, e.g. 29.8 -> "29"). MACs: Table 1 (GMACs, one sample).
EXPECTED = {
    ("xr_resnext50", None): (24.0, 11),
    ("2d_fc", None): (90.6, 134),
    ("2d_lstm", None): (29.8, 135),
    ("2d_trf", "sag"): (132.8, 141),
    ("2d_trf", "cor"): (132.8, 143),
    ("2d_trf", "ax"): (132.8, 143),
    ("2dsh_trf", None): (133.4, 443),
    ("2dind_trf", None): (180.4, 443),
    ("2p1d", None): (63.5, 100),
    ("3d_resnext50", None): (25.8, 21),
    ("3d_shufflenet", None): (0.95, 4),
}
PARAMS_TOL = 0.02
MACS_TOL = 0.03
# FlopCounterMode counts convolutions and matrix products only. Table 1's counter also counted
# element-wise ops (batch norm), which matters for the X-ray model: torchvision's ResNeXt-50
# 32x4d at 350x350 is 10.44 GMACs by FlopCounterMode, ~10.5-10.6 with BN, printed as "11".
# The network is torchvision's own (24.03M params), so the gap is the counting convention.
MACS_TOL_OVERRIDE = {"xr_resnext50": 0.06}

CONFIGS = list(EXPECTED)

# Tinier than the specs' small_shapes (which the demo and benchmark use), so the whole file
# runs in seconds on 2 cores; the networks keep their full width, only the inputs shrink.
# 3D ShuffleNet needs 16 slices and 32 pixels (its pooled shortcut needs 3 pixels at 1/8).
_SAG = (1, 4, 16, 16)
TINY = {
    "xr_resnext50": {"xray": (1, 32, 32)},
    "2d_fc": {"sag": _SAG},
    "2d_lstm": {"sag": _SAG},
    "2d_trf": {"sag": _SAG},
    "2dsh_trf": view_shapes_from_volume((1, 2, 16, 16)),  # 2 + 16 + 16 tokens
    "2dind_trf": view_shapes_from_volume((1, 2, 16, 16)),
    "2p1d": {"sag": (1, 16, 16, 16)},
    "3d_resnext50": {"sag": (1, 16, 16, 16)},
    "3d_shufflenet": {"sag": (1, 16, 32, 32)},
}


def _config_id(config: tuple[str, str | None]) -> str:
    name, view = config
    return name if view is None else f"{name}-{view}"


# ---------------------------------------------------------------- registry


def test_registry_lists_table1_in_order() -> None:
    assert list_models() == TABLE1_ORDER
    assert CLASSES == ("none", "fast", "slow")


def test_specs_describe_inputs_and_paper_rows() -> None:
    for name in list_models():
        spec = get_spec(name)
        assert spec.views and spec.paper and spec.batch_size > 0
        for view in spec.views + spec.view_choices:
            assert view in spec.input_shapes and view in spec.small_shapes
            assert len(spec.input_shapes[view]) == len(spec.small_shapes[view])
    assert get_spec("2d_trf").view_choices == ("sag", "cor", "ax")
    assert get_spec("2d_trf").paper_row("cor").gmacs == 143
    assert get_spec("2d_trf").shapes_for("ax") == {"ax": (1, 80, 160, 128)}
    assert dict(get_spec("2dsh_trf").input_shapes) == {
        "sag": (1, 64, 160, 160),
        "cor": (1, 160, 160, 64),
        "ax": (1, 160, 160, 64),
    }
    assert get_spec("3d_resnext50").input_shapes["sag"] == (1, 64, 160, 160)
    assert get_spec("xr_resnext50").input_shapes["xray"] == (1, 350, 350)
    assert get_spec("2dind_trf").batch_size == 8 and get_spec("2d_fc").batch_size == 16


def test_unknown_names_and_options_fail_clearly() -> None:
    with pytest.raises(KeyError, match="known: xr_resnext50"):
        get_spec("resnet")
    with pytest.raises(ValueError, match="does not read"):
        get_model("2d_lstm", input_shapes={"cor": (1, 8, 32, 32)})
    with pytest.raises(ValueError, match="init must be 'scratch'"):
        get_model("3d_shufflenet", init="imagenet")
    with pytest.raises(ValueError, match="init must be one of"):
        get_model("2d_lstm", init="nonsense")
    with pytest.raises(ValueError, match="view must be one of"):
        get_model("2d_trf", view="xray")
    with pytest.raises(ValueError, match="divisible by 16"):
        get_model("3d_shufflenet", input_shapes={"sag": (1, 24, 32, 32)})
    with pytest.raises(ValueError, match="at least 17x17"):
        get_model("3d_shufflenet", input_shapes={"sag": (1, 16, 16, 16)})


# ---------------------------------------------------------------- sizes at the paper's shapes


@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
def test_params_and_macs_match_paper(config: tuple[str, str | None]) -> None:
    name, view = config
    params_m, gmacs = EXPECTED[config]
    c = model_complexity(name, view=view)  # built and run on the meta device: no compute
    assert c.params_m == pytest.approx(params_m, rel=PARAMS_TOL)
    assert c.gmacs == pytest.approx(gmacs, rel=MACS_TOL_OVERRIDE.get(name, MACS_TOL))


def test_mac_counter_counts_attention() -> None:
    # 2d_trf: the 4 attention maps over 65 tokens (QK^T and AV) are part of the count.
    layer = SelfAttention(64, heads=2, head_dim=32, dropout=0.0)
    x = torch.randn(1, 10, 64)
    linear_macs = 10 * 64 * 3 * 64 + 10 * 64 * 64
    attention_macs = 2 * 2 * 10 * 10 * 32
    assert count_macs(layer, x) == linear_macs + attention_macs  # type: ignore[arg-type]


# ---------------------------------------------------------------- tiny inputs on CPU


@pytest.fixture(scope="module")
def tiny_models() -> Iterator[dict[str, nn.Module]]:
    """One model per registry name at its TINY shapes, built once for the whole module."""

    class BuildOnFirstUse(dict[str, nn.Module]):
        def __missing__(self, name: str) -> nn.Module:
            torch.manual_seed(0)
            self[name] = get_model(name, input_shapes=TINY[name])
            return self[name]

    cache = BuildOnFirstUse()
    yield cache
    cache.clear()


def _tiny_inputs(name: str, batch: int = 2) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return example_inputs(TINY[name], batch=batch)


def _contiguous(model: nn.Module) -> None:
    for p in model.parameters():
        p.data = p.data.contiguous()


@pytest.mark.parametrize("name", TABLE1_ORDER)
def test_forward_backward_tiny(name: str, tiny_models: dict[str, nn.Module]) -> None:
    model = tiny_models[name].train()
    x = _tiny_inputs(name)
    logits = model(x)
    assert logits.shape == (2, len(CLASSES))
    F.cross_entropy(logits, torch.tensor([0, 2])).backward()
    # Every parameter takes part in the forward pass (no dead encoder, no unused head).
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:5]
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", TABLE1_ORDER)
def test_bf16_channels_last_and_state_dict_round_trip(name: str, tiny_models: dict[str, nn.Module]) -> None:
    # One reference forward pass per model, compared with three other ways of running it
    # (one test rather than three: the forward passes dominate the cost of this file).
    model = tiny_models[name].eval()
    x = _tiny_inputs(name, batch=1)
    # A fresh build (on meta: no init cost) takes the state dict strictly - same keys, same
    # shapes - and must then compute what the source computes: no state lives outside it.
    with torch.device("meta"):
        rebuilt = get_model(name, input_shapes=TINY[name]).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True, assign=True)
    try:
        with torch.no_grad():
            reference = model(x)
            assert torch.equal(rebuilt(x), reference)
            # oneDNN's cached bf16 convolutions on CPUs with AMX (torch 2.14) return NaN at
            # random from the second call of a shape on: seen here for the multi-view models in
            # about one run of three. The native kernels test what this test is about: that
            # every layer runs under bf16 autocast and stays close to fp32.
            torch.backends.mkldnn.enabled = False  # (its flags() context warns about TF32)
            try:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    low = model(x)
            finally:
                torch.backends.mkldnn.enabled = True
            to_channels_last(model)
            cl = model(inputs_channels_last(x))
    finally:
        _contiguous(model)  # the cached model is shared with the other tests
    assert low.dtype == torch.bfloat16
    assert torch.allclose(low.float(), reference, atol=0.1, rtol=0.1)
    assert torch.allclose(cl, reference, atol=1e-4, rtol=1e-4)


def test_state_dict_survives_save_and_load(tmp_path) -> None:
    model = get_model("3d_shufflenet", input_shapes=TINY["3d_shufflenet"]).eval()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    again = get_model("3d_shufflenet", input_shapes=TINY["3d_shufflenet"]).eval()
    again.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    x = _tiny_inputs("3d_shufflenet", batch=1)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_2d_trf_other_views_and_slice_count_checks(tiny_models) -> None:
    with torch.device("meta"):
        cor = get_model("2d_trf", view="cor")
    assert cor.view == "cor" and cor.aggregator.pos_embedding.shape == (1, 81, 2048)
    model = tiny_models["2d_trf"].eval()  # built for 4 sagittal slices
    with torch.no_grad():
        with pytest.raises(ValueError, match="built for 4 slice tokens, got 5"):
            model({"sag": torch.randn(1, 1, 5, 16, 16)})
        with pytest.raises(KeyError, match="no 'sag' view"):
            model({"cor": torch.randn(1, 1, 4, 16, 16)})


def test_fc_size_follows_slice_count() -> None:
    with torch.device("meta"):
        model = get_model("2d_fc", input_shapes={"sag": (1, 8, 32, 32)})
    assert model.aggregator.mlp[0].in_features == 8 * 2048


@pytest.fixture(scope="module")
def encoder() -> SliceEncoder:
    torch.manual_seed(0)
    return SliceEncoder().eval()


def test_slice_encoder_runs_all_slices_in_one_call(encoder: SliceEncoder) -> None:
    calls: list[tuple[int, ...]] = []
    hook = encoder.trunk.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    try:
        with torch.no_grad():
            out = encoder(torch.randn(3, 1, 5, 16, 16))
    finally:
        hook.remove()
    assert calls == [(15, 3, 16, 16)]
    assert out.shape == (3, 5, 2048)


def test_slice_order_is_preserved(encoder: SliceEncoder) -> None:
    stack = torch.randn(2, 1, 4, 32, 32)
    with torch.no_grad():
        batched = encoder(stack)
        one = encoder.trunk(stack[1, :, 2].unsqueeze(0).expand(-1, 3, -1, -1))
    # Sample i, slice j comes back at [i, j] (not, say, slice-major): equal up to float noise.
    assert torch.allclose(batched[1, 2], one[0], rtol=1e-4, atol=1e-3)
    assert not torch.allclose(batched[1, 1], one[0], rtol=1e-4, atol=1e-3)


def test_attention_uses_per_head_scaling() -> None:
    torch.manual_seed(0)
    layer = SelfAttention(16, heads=2, head_dim=8, dropout=0.0).eval()
    assert layer.qkv.bias is None  # bias-free QKV
    x = torch.randn(1, 5, 16)
    q, k, v = layer.qkv(x).view(1, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
    expected = layer.proj((attn @ v).transpose(1, 2).reshape(1, 5, 16))
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_transformer_is_pre_norm_with_class_token() -> None:
    with torch.device("meta"):
        model = get_model("2d_trf")
    trf = model.aggregator
    assert trf.pos_embedding.shape == (1, 65, 2048)
    assert len(trf.blocks) == 4 and trf.blocks[0].attn.heads == 8
    assert trf.blocks[0].attn.head_dim == 256
    assert isinstance(trf.head[0], nn.LayerNorm)


def test_bilstm_reads_terminal_states() -> None:
    torch.manual_seed(0)
    agg = BiLSTMAggregator(in_features=6, hidden=4, num_classes=3).eval()
    x = torch.randn(2, 5, 6)
    out, _ = agg.lstm(x)
    expected = agg.fc(torch.cat([out[:, 4, :4], out[:, 0, 4:]], dim=1))
    assert torch.allclose(agg(x), expected)


def test_views_from_volume_match_multiview_shapes() -> None:
    sag = torch.randn(2, *MULTIVIEW_SHAPES["sag"], device="meta")
    views = views_from_volume(sag)
    assert {v: tuple(t.shape[1:]) for v, t in views.items()} == dict(MULTIVIEW_SHAPES)
    small = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 1, 2, 3, 4)
    v = views_from_volume(small)
    # coronal slice w holds the (h, d) plane at column w; axial slice h the (w, d) plane at row h
    assert torch.equal(v["cor"][0, 0, 1], small[0, 0, :, :, 1].T)
    assert torch.equal(v["ax"][0, 0, 2], small[0, 0, :, 2, :].T)


def test_multiview_encoders_shared_or_independent() -> None:
    with torch.device("meta"):
        sh = get_model("2dsh_trf")
        ind = get_model("2dind_trf")
    resnet = count_params(sh.encoder)
    assert count_params(ind) - count_params(sh) == 2 * resnet
    assert sh.aggregator.n_tokens == 384 == ind.aggregator.n_tokens


def test_torch_compile_full_graph_transformer() -> None:
    # aot_eager traces forward and backward through dynamo + AOTAutograd without generating
    # C++ code: a graph-break-free capture in seconds. Whole models and inductor: slow tests.
    trf = SliceTransformer(5, in_features=8, dim=16, depth=2, heads=2, head_dim=8, mlp_dim=16)
    x = torch.randn(2, 5, 8)
    compiled = torch.compile(trf, fullgraph=True, backend="aot_eager")
    compiled(x).sum().backward()
    trf.eval()
    with torch.no_grad():
        assert torch.allclose(compiled(x), trf(x), atol=1e-5)
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["2d_trf", "2d_lstm", "2dsh_trf", "3d_shufflenet", "2p1d"])
def test_torch_compile_full_graph_whole_models(name: str, tiny_models) -> None:
    model = tiny_models[name].eval()
    x = _tiny_inputs(name)
    # dynamo leaves nn.LSTM out of graphs unless allowed; with the switch the graph is whole.
    with torch._dynamo.config.patch(allow_rnn=True):
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        with torch.no_grad():
            assert torch.allclose(compiled(x), model(x), atol=1e-4)
    torch._dynamo.reset()


@pytest.mark.slow
def test_torch_compile_inductor_trains_transformer() -> None:
    # Inductor generates and compiles C++ on CPU: ~30-60 s even for a tiny module on 2 cores,
    # so one small module (the SDPA path, the most compile-sensitive part) stands for all.
    torch.manual_seed(0)
    trf = SliceTransformer(5, in_features=8, dim=16, depth=2, heads=2, head_dim=8, mlp_dim=16)
    x = torch.randn(2, 5, 8)
    torch.compile(trf)(x).sum().backward()
    assert all(p.grad is not None for p in trf.parameters())
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("name", TABLE1_ORDER)
def test_forward_at_spec_small_shapes(name: str) -> None:
    # The demo and the CPU benchmark use the specs' small shapes: every model must accept them.
    spec = get_spec(name)
    for view in spec.view_choices or (None,):
        shapes = spec.shapes_for(view, small=True)
        kwargs = {"view": view} if view else {}
        model = get_model(name, input_shapes=shapes, **kwargs).eval()
        with torch.no_grad():
            assert model(example_inputs(shapes)).shape == (1, len(CLASSES))


# ---------------------------------------------------------------- initialisation as the reference


def test_transformer_tokens_are_standard_normal_like_the_reference() -> None:
    torch.manual_seed(0)
    trf = SliceTransformer(64, in_features=8, dim=256, depth=1, heads=2, head_dim=8, mlp_dim=16)
    for p in (trf.cls_token, trf.pos_embedding):
        # torch.randn: std 1 (the ViT habit of trunc_normal std 0.02 would give ~0.02)
        values = p.detach()
        assert abs(float(values.std()) - 1.0) < 0.05 and abs(float(values.mean())) < 0.05


def test_attention_probabilities_get_no_dropout() -> None:
    torch.manual_seed(0)
    layer = SelfAttention(16, heads=2, head_dim=8, dropout=0.5).train()
    layer.proj_drop = nn.Identity()  # the output dropout is the reference's; only attention's is checked
    x = torch.randn(2, 7, 16)
    assert torch.equal(layer(x), layer(x))  # dropout on the probabilities would make these differ


@pytest.mark.parametrize("name", ["2p1d", "3d_resnext50"])
def test_volumetric_convs_are_kaiming_fan_out_and_batchnorm_one_zero(name: str) -> None:
    torch.manual_seed(0)
    net = get_model(name).net
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d)]
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm3d)]
    assert convs and norms
    for conv in convs:
        # kaiming_normal_(mode="fan_out", nonlinearity="relu"): fan_out = weight.size(0) x kernel
        # volume (PyTorch's definition, groups not divided out); the default init's std is ~3x smaller
        expected = math.sqrt(2.0 / (conv.out_channels * math.prod(conv.kernel_size)))
        if conv.weight.numel() >= 4096:  # enough samples for a 10% check of the spread
            assert float(conv.weight.detach().std()) == pytest.approx(expected, rel=0.1), conv
    assert all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in norms)
