"""Which Table 1 models a volume store can feed: the MRI models when it holds MRI volumes, the
X-ray prior art when it holds knee-radiograph ROIs (``oai preprocess --view xray``)."""

from __future__ import annotations

from oaicohort.imaging.store.volume_store import StoreError, VolumeStore
from oaicohort.vocabulary import MRI_VIEWS, XRAY_VIEW
from oaimodels.networks import get_spec, list_models


def table1_models(store_path: str) -> list[str]:
    """Registered models in registry order whose views the store at ``store_path`` holds.

    A store with any MRI view gets every MRI model (as before: a model whose view is missing
    says so when it starts); the X-ray model is added when the store has an ``xray`` array.
    An unreadable store gives the MRI models, whose runs then report the store's problem.
    """
    try:
        views = set(VolumeStore.open(store_path).views)
    except StoreError:
        views = set(MRI_VIEWS)
    models = []
    for model in list_models():
        needs = set(get_spec(model).views)
        if (needs <= set(MRI_VIEWS) and views & set(MRI_VIEWS)) or (needs == {XRAY_VIEW} and XRAY_VIEW in views):
            models.append(model)
    return models
