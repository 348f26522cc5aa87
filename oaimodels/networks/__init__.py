"""Every network of the paper's Table 1, found by name through the registry.

>>> from oaimodels.networks import get_model, get_spec
>>> model = get_model("2d_trf", view="sag", init="scratch")
>>> logits = model({"sag": volume})          # volume: (B, 1, 64, 160, 160) -> (B, 3)

Importing this package registers the models; ``list_models`` returns them in Table 1's row order
(``registry.TABLE1_ORDER``), whatever the import order.
"""

from oaicohort.vocabulary import CLASSES

from . import (
    multiview,  # noqa: F401  (2dsh_trf, 2dind_trf)
    r2plus1d,  # noqa: F401  (2p1d)
    resnext3d,  # noqa: F401  (3d_resnext50)
    shufflenet3d,  # noqa: F401  (3d_shufflenet)
    slice_aggregators,  # noqa: F401  (2d_fc, 2d_lstm)
    slice_transformer,  # noqa: F401  (2d_trf)
    xray,  # noqa: F401  (registers xr_resnext50)
)
from .common import to_channels_last
from .multiview import views_from_volume
from .registry import ModelSpec, PaperRow, example_inputs, get_model, get_spec, list_models, register_model
from .weights import WeightsUnavailableError

__all__ = [
    "CLASSES",
    "ModelSpec",
    "PaperRow",
    "WeightsUnavailableError",
    "example_inputs",
    "get_model",
    "get_spec",
    "list_models",
    "register_model",
    "to_channels_last",
    "views_from_volume",
]
