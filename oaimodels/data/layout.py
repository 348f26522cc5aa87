"""Which stored view and crop feed which model input (``resolve_layout``), and the input layout a run records."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from oaicohort.errors import OAIError
from oaicohort.imaging.store.volume_store import StoreError
from oaicohort.vocabulary import STORE_VIEWS, XRAY_VIEW

from ..networks import get_spec
from ..networks.multiview import view_shapes_from_volume
from .normalisation import LEGACY as LEGACY_NORMALISATION
from .normalisation import MRI_NORMALISATION, normalisation_for

log = logging.getLogger(__name__)


Shape3 = tuple[int, int, int]


class DataError(OAIError):
    """The store, the labels or the split cannot feed the requested training."""


@dataclass(frozen=True)
class InputLayout:
    """Which stored array a model reads, the crop taken from it, and the views it is given.

    ``model_views`` are the keys of the model's input dict; when there are several, they are
    all sliced from the cropped ``source_view`` (sagittal) volume.
    """

    model: str
    source_view: str
    stored_shape: Shape3
    crop_shape: Shape3
    model_views: tuple[str, ...]
    spacing_ratio: float = 1.0  # stored D spacing / H spacing (cor/ax: through-plane / in-plane block)
    # (mean, std) subtracted/divided after [0, 1] scaling: the reference's per modality (normalisation)
    normalisation: tuple[float, float] = MRI_NORMALISATION
    # in-plane factor the augmented crop is reduced by (k x k means) before the model: an X-ray ROI
    # stored at the reference's 700 pixels is augmented there and given to the model at 350
    downscale: int = 1

    @property
    def derived_views(self) -> bool:
        return len(self.model_views) > 1

    @property
    def input_crop(self) -> Shape3:
        """(D, H, W) of the crop as the model receives it (after ``downscale``)."""
        d, h, w = self.crop_shape
        return (d, h // self.downscale, w // self.downscale)

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample ``(1, D, H, W)`` shape of every view of the model input (builder kwarg)."""
        shape = (1, *self.input_crop)
        if self.source_view == XRAY_VIEW:  # a one-slice volume is given as a (1, H, W) image
            return {XRAY_VIEW: (1, *self.input_crop[1:])}
        if self.derived_views:
            derived = view_shapes_from_volume(shape)
            return {v: tuple(derived[v]) for v in self.model_views}
        return {self.source_view: shape}

    def to_dict(self) -> dict[str, Any]:
        downscale = {"downscale": self.downscale} if self.downscale != 1 else {}  # older layouts: 1
        return {
            "model": self.model,
            "source_view": self.source_view,
            "stored_shape": list(self.stored_shape),
            "crop_shape": list(self.crop_shape),
            "model_views": list(self.model_views),
            "spacing_ratio": self.spacing_ratio,
            "normalisation": list(self.normalisation),
            **downscale,
            "input_shapes": {k: list(v) for k, v in self.input_shapes().items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputLayout:
        """The layout saved by :meth:`to_dict` (config.json, checkpoint metadata); a layout saved
        before it recorded its normalisation was trained with the MRI pair (X-ray runs too)."""
        mean, std = data.get("normalisation", LEGACY_NORMALISATION)
        return cls(
            data["model"],
            data["source_view"],
            tuple(data["stored_shape"]),
            tuple(data["crop_shape"]),
            tuple(data["model_views"]),
            float(data.get("spacing_ratio", 1.0)),
            (float(mean), float(std)),
            int(data.get("downscale", 1)),
        )


class StoreShapes(Protocol):
    def volume_shape(self, view: str) -> Shape3: ...

    def crop_shape(self, view: str) -> Shape3: ...


def model_views(model: str, view: str | None) -> tuple[str, ...]:
    """The views model ``model`` reads when built for ``view`` (None: its default)."""
    spec = get_spec(model)
    if view is None:
        return tuple(spec.views)
    if spec.view_choices:
        if view not in spec.view_choices:
            raise DataError(f"{model} reads one of {list(spec.view_choices)}, not {view!r}")
        return (view,)
    if view not in spec.views or (len(spec.views) > 1 and view != spec.views[0]):
        raise DataError(f"{model} reads {list(spec.views)}; --view {view!r} does not apply to it")
    return tuple(spec.views)


def resolve_layout(
    model: str,
    view: str | None,
    store: StoreShapes,
    crop_shape: Sequence[int] | None = None,
) -> InputLayout:
    """The input layout of ``model`` over ``store``.

    Crop: ``crop_shape`` if given, else the model's paper shape when the stored volume is large
    enough for it, else the store's own training crop (reduced-size stores, e.g. the ``small``
    preprocessing preset of the demo). The model is then built for that crop. A radiograph store
    whose ROIs are ``xray_stored_scale`` times the model's input is read whole and downscaled
    after the augmentations (``downscale``).
    """
    spec = get_spec(model)
    views = model_views(model, view)
    if any(v not in STORE_VIEWS for v in views):
        raise DataError(f"{model} reads views {list(views)}, which no volume store holds")
    source = "sag" if len(views) > 1 else views[0]
    try:
        stored = tuple(int(n) for n in store.volume_shape(source))
    except (KeyError, StoreError):
        how = "--view xray" if source == XRAY_VIEW else f"--view {source}"
        raise DataError(
            f"{model} reads {source!r}, which the store does not hold; run `oai preprocess {how}`"
        ) from None
    params = getattr(store, "params", None)
    downscale = int(getattr(params, "xray_stored_scale", 1)) if source == XRAY_VIEW else 1
    if crop_shape is not None:
        crop = tuple(int(n) for n in crop_shape)
    elif downscale > 1:  # the whole ROI, reduced to the model's input after the augmentations
        crop = stored
    else:
        # the radiograph ROI is stored as a one-slice volume (1, H, W)
        paper = tuple(int(n) for n in spec.input_shapes[source][1:])
        paper = (1, *paper) if source == XRAY_VIEW else paper
        fits = all(c <= s for c, s in zip(paper, stored))
        crop = paper if fits else tuple(int(n) for n in store.crop_shape(source))
    if len(crop) != 3 or any(c < 1 or c > s for c, s in zip(crop, stored)):
        raise DataError(f"crop {crop} does not fit the stored {source} volumes {stored} (need 1 <= crop <= stored)")
    if any(n % downscale for n in crop[1:]):
        raise DataError(f"crop {crop} is not divisible by the store's xray_stored_scale {downscale}")
    # stored D spacing over H spacing (cor/ax: through-plane block / in-plane block)
    ratio = 1.0
    if source in ("cor", "ax") and params is not None:
        through, inplane, _lr = params.reprojection_blocks
        ratio = through / inplane
    return InputLayout(model, source, stored, crop, views, ratio, normalisation_for(source), downscale)  # type: ignore[arg-type]
