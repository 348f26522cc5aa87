"""ImageNet initialisation of the 2D encoders: local files, env vars, hub cache, clear failure.

No test may touch the network: an autouse fixture points the hub cache at an empty folder,
clears the environment variables, and makes any connection attempt fail the test.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet50, resnext50_32x4d

from oaimodels.networks import WeightsUnavailableError, get_model
from oaimodels.networks import weights as W
from oaimodels.networks.slice_encoder import SliceEncoder

TINY_SAG = {"sag": (1, 2, 16, 16)}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for env in (W.GENERIC_ENV, W.OFFLINE_ENV, *(a.env for a in W.ARCHS.values())):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A torchvision ResNet-50 state dict (random init stands in for ImageNet) saved to disk."""
    torch.manual_seed(7)
    state = resnet50().state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(state, path)
    return path, state


def test_init_from_a_state_dict_file(resnet50_file) -> None:
    path, state = resnet50_file
    encoder = SliceEncoder(init=str(path))
    assert torch.equal(encoder.trunk.conv1.weight, state["conv1.weight"])
    assert torch.equal(encoder.trunk.layer4[2].bn3.running_var, state["layer4.2.bn3.running_var"])


def test_imagenet_init_from_the_per_arch_env_var(resnet50_file, monkeypatch) -> None:
    path, state = resnet50_file
    monkeypatch.setenv("OAI_RESNET50_WEIGHTS", str(path))
    model = get_model("2d_lstm", input_shapes=TINY_SAG, init="imagenet")
    assert torch.equal(model.encoder.trunk.layer1[0].conv2.weight, state["layer1.0.conv2.weight"])


def test_imagenet_init_from_the_generic_env_var_for_every_encoder(resnet50_file, monkeypatch):
    path, state = resnet50_file
    monkeypatch.setenv(W.GENERIC_ENV, str(path))
    model = get_model("2dind_trf", init="imagenet")  # one encoder per view, each initialised
    for view in ("sag", "cor", "ax"):
        assert torch.equal(model.encoders[view].trunk.conv1.weight, state["conv1.weight"])


def test_imagenet_init_from_the_hub_cache(resnet50_file) -> None:
    path, state = resnet50_file
    cached = W.ARCHS["resnet50"].cache_file
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    encoder = SliceEncoder(init="imagenet")
    assert torch.equal(encoder.trunk.conv1.weight, state["conv1.weight"])


def test_xray_model_takes_resnext_weights(tmp_path, monkeypatch) -> None:
    torch.manual_seed(3)
    state = resnext50_32x4d().state_dict()
    torch.save({"state_dict": state}, tmp_path / "rx.pth")  # a wrapped checkpoint is accepted
    monkeypatch.setenv("OAI_RESNEXT50_WEIGHTS", str(tmp_path / "rx.pth"))
    model = get_model("xr_resnext50", init="imagenet")
    assert torch.equal(model.trunk.layer3[0].conv2.weight, state["layer3.0.conv2.weight"])


def test_no_weights_anywhere_gives_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(W, "_reachable", lambda url: False)
    with pytest.raises(WeightsUnavailableError) as info:
        SliceEncoder(init="imagenet")
    message = str(info.value)
    for hint in ("OAI_RESNET50_WEIGHTS", "OAI_IMAGENET_WEIGHTS", "init='scratch'", "hub"):
        assert hint in message


def test_a_failed_download_counts_as_unreachable(monkeypatch) -> None:
    monkeypatch.setattr(W, "_reachable", lambda url: True)

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("connection reset")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", broken)
    with pytest.raises(WeightsUnavailableError, match="not reachable"):
        W.imagenet_state_dict("resnet50")


def test_offline_switch_skips_the_download(monkeypatch) -> None:
    monkeypatch.setenv(W.OFFLINE_ENV, "1")
    monkeypatch.setattr(W, "_reachable", lambda url: pytest.fail("probed the network"))
    with pytest.raises(WeightsUnavailableError):
        W.imagenet_state_dict("resnext50_32x4d")


def test_probe_of_an_unreachable_host_is_quick_and_false(monkeypatch) -> None:
    def refused(*args: object, **kwargs: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(socket, "create_connection", refused)
    assert W._reachable("https://download.pytorch.org/models/x.pth") is False


def test_weights_of_another_architecture_are_rejected(tmp_path) -> None:
    torch.save(resnext50_32x4d().state_dict(), tmp_path / "rx.pth")
    with pytest.raises(WeightsUnavailableError, match="do not fit a torchvision resnet50"):
        SliceEncoder(init=str(tmp_path / "rx.pth"))


def test_missing_file_is_named(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OAI_RESNET50_WEIGHTS", str(tmp_path / "nope.pth"))
    with pytest.raises(WeightsUnavailableError, match="nope.pth"):
        SliceEncoder(init="imagenet")
