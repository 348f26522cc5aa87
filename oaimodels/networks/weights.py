"""ImageNet initialisation of the 2D encoders (torchvision ResNet-50 and ResNeXt-50 32x4d).

Where the weights come from, first match wins:

1. a state-dict file given explicitly (``init="/path/to/file.pth"`` or ``path=``);
2. the per-architecture environment variable (``OAI_RESNET50_WEIGHTS``,
   ``OAI_RESNEXT50_WEIGHTS``), then the generic ``OAI_IMAGENET_WEIGHTS``;
3. torchvision's file in the torch hub cache (``$TORCH_HOME/hub/checkpoints``);
4. a download from torchvision, unless ``OAI_OFFLINE=1`` - tried with short timeouts, so that a
   machine without internet fails fast instead of hanging; any failure counts as unreachable;
5. otherwise :class:`WeightsUnavailableError`, whose message says how to provide the file.

The files are plain torchvision state dicts (``torch.save(resnet50(weights=...).state_dict())``);
the classifier (``fc.*``) is dropped since our models replace it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import models as tvm

from oaicohort.errors import OAIError

GENERIC_ENV = "OAI_IMAGENET_WEIGHTS"
OFFLINE_ENV = "OAI_OFFLINE"
_PROBE_TIMEOUT_S = 3.0
_DOWNLOAD_TIMEOUT_S = 30.0


class WeightsUnavailableError(OAIError, RuntimeError):
    """No ImageNet weights could be found locally or downloaded (or the file is unusable)."""


@dataclass(frozen=True)
class ArchWeights:
    """Where ImageNet weights of one torchvision architecture are looked for."""

    arch: str
    env: str
    url: str

    @property
    def cache_file(self) -> Path:
        """The file torchvision's downloader would store in the hub cache."""
        name = Path(urlparse(self.url).path).name
        return Path(torch.hub.get_dir()) / "checkpoints" / name


# IMAGENET1K_V1 are the weights ``pretrained=True`` gave, which the paper's reference used.
ARCHS: dict[str, ArchWeights] = {
    "resnet50": ArchWeights("resnet50", "OAI_RESNET50_WEIGHTS", tvm.ResNet50_Weights.IMAGENET1K_V1.url),
    "resnext50_32x4d": ArchWeights(
        "resnext50_32x4d", "OAI_RESNEXT50_WEIGHTS", tvm.ResNeXt50_32X4D_Weights.IMAGENET1K_V1.url
    ),
}

INIT_CHOICES = ("scratch", "imagenet")


def _arch(arch: str) -> ArchWeights:
    try:
        return ARCHS[arch]
    except KeyError:
        raise ValueError(f"no ImageNet weights known for {arch!r}; known: {list(ARCHS)}") from None


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsUnavailableError(f"ImageNet weights file not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    # Tolerate the two usual wrappings of a checkpoint around the state dict.
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsUnavailableError(f"{path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _reachable(url: str) -> bool:
    """Whether the weights host answers within a few seconds.

    Runs in a daemon thread because name resolution has no timeout of its own; on a machine
    without network the thread is simply abandoned.
    """
    host = urlparse(url).hostname or ""
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=_PROBE_TIMEOUT_S):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(_PROBE_TIMEOUT_S + 1.0)
    return bool(result and result[0])


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # torch.hub's urlopen has no timeout argument; the process default is the only handle.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download(spec: ArchWeights) -> dict[str, torch.Tensor] | None:
    """torchvision's weights from the internet, or None when they cannot be fetched."""
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0") or not _reachable(spec.url):
        return None
    try:
        with _socket_timeout(_DOWNLOAD_TIMEOUT_S):
            return torch.hub.load_state_dict_from_url(spec.url, map_location="cpu", progress=False, check_hash=True)
    except Exception:
        return None


def _how_to_provide(spec: ArchWeights) -> str:
    return (
        f"ImageNet weights for {spec.arch} are not available: no file given, ${spec.env} and "
        f"${GENERIC_ENV} unset, {spec.cache_file} absent, and {spec.url} not reachable "
        f"(or ${OFFLINE_ENV} set). Provide them by (a) passing a state-dict file as "
        f"init='/path/{spec.arch}.pth', (b) setting {spec.env}=/path/{spec.arch}.pth (or "
        f"{GENERIC_ENV}), or (c) copying torchvision's file to {spec.cache_file}. "
        f"Make the file on a machine with internet access with: python -c "
        f'"import torch, torchvision; torch.save(torchvision.models.{spec.arch}('
        f"weights='IMAGENET1K_V1').state_dict(), '{spec.arch}.pth')\". "
        f"Or train from scratch with init='scratch'."
    )


def imagenet_state_dict(arch: str, *, path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of a torchvision ``arch``, from the first source that has it."""
    spec = _arch(arch)
    if path is not None:
        return _load_file(Path(path))
    for env in (spec.env, GENERIC_ENV):
        if os.environ.get(env):
            return _load_file(Path(os.environ[env]))
    if spec.cache_file.is_file():
        return _load_file(spec.cache_file)
    downloaded = _download(spec)
    if downloaded is not None:
        return downloaded
    raise WeightsUnavailableError(_how_to_provide(spec))


def check_init(init: str) -> None:
    """Reject an ``init`` that is neither a known keyword nor an existing file, early."""
    if init not in INIT_CHOICES and not Path(init).is_file():
        raise ValueError(f"init must be one of {INIT_CHOICES} or a state-dict file; got {init!r}")


def load_encoder_weights(trunk: nn.Module, arch: str, init: str) -> None:
    """Initialise a torchvision ``trunk`` (its ``fc`` removed) according to ``init``.

    ``init`` is ``"scratch"`` (keep torchvision's random init), ``"imagenet"`` (look the
    weights up as described in the module docstring) or the path of a state-dict file.
    """
    check_init(init)
    if init == "scratch":
        return
    state = imagenet_state_dict(arch, path=None if init == "imagenet" else init)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    # strict: a file of another architecture must fail loudly, not half-load.
    try:
        trunk.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first_line = str(exc).splitlines()[0]
        raise WeightsUnavailableError(
            f"the ImageNet weights found for {arch} (init={init!r}) do not fit a torchvision {arch}: {first_line}"
        ) from exc
