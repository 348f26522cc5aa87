"""Training and evaluation data: knees + labels + split over the volume store, and the batched
augmentations of the paper's recipe, run as torch ops on the model's device.

Pipeline of one batch (REFERENCE.md sections 3 and 5), the steps of ``transforms`` composed once
in ``pipeline.recipe_transforms``; evaluation, prediction and explanation apply its inference
form (the random steps left out, the crop at the centre)::

    uint8 stored volumes (B, D, H, W)          from a DataLoader over the store, or resident
      -> Crop (B, d, h, w)                     random offsets inside each volume's real data in
                                               training (``crops``), centre in evaluation
      -> ScaleToUnit                           float, (x - min) / (max - min), per volume
      -> RandomRotation                        p=0.5, one angle in [-15, 15] deg per volume
      -> RandomGamma x ** (1 / g)              p=0.5, g ~ U(0.5, 2), per volume
      -> Normalise (x - mean) / std            0.257 / 0.235 for MRI, 0.543 / 0.296 for radiographs
      -> ModelInputs                           {view: (B, 1, d, h, w)}

The store keeps volumes already downsampled x2 (``oaicohort.imaging.recipe.params``), so a crop at any
offset of a stored volume is the reference's crop at even full-resolution offsets followed by
its trilinear x0.5 downsample. Multi-view models get sagittal, coronal and axial stacks sliced
from the same cropped sagittal volume (as the reference does, ``views_from_volume``); single-view
coronal/axial models read the stored coronal/axial arrays.

Random draws (crop offsets, angles, gammas) come from a CPU generator that the training loop
seeds per (seed, fold, epoch, rank), so a run is reproducible on any device and a resumed run
draws exactly what an uninterrupted one would.

Two ways to feed batches (:func:`make_source`):

* ``workers``: a ``DataLoader`` over :class:`StoreVolumes`; each worker process opens the store
  itself (the store handle is dropped when pickled), uint8 batches are pinned and copied
  asynchronously to the device;
* ``resident``: every needed volume held as one uint8 tensor on the device (GPU or CPU memory),
  batches are an ``index_select`` away, so the accelerator never waits for I/O. The paper-size
  store (~4,900 sagittal volumes of 80x176x176) is ~12 GB.
"""

from __future__ import annotations

from .augment import AugmentParams, cpu_generator, derive_seed
from .crops import EXTENT_COLUMNS, offset_bounds
from .knees import KNEE_COLUMNS, KneeQuery, KneeTable, knee_table, validate_knees
from .layout import DataError, InputLayout, Shape3, StoreShapes, model_views, resolve_layout
from .pipeline import BatchPreparer, ModelInputs, inference_transforms, recipe_transforms
from .rotation import rotate_in_slice, rotate_sagittal, rotation_grid, sagittal_extent_ratio, to_device
from .sources import (
    ResidentSource,
    StoreVolumes,
    StreamingSource,
    VolumeSource,
    WeightedEpochSampler,
    batches_of,
    make_source,
    resident_fits,
)
from .transforms import (
    NORM_MEAN,
    NORM_STD,
    ChanceDraw,
    Compose,
    Crop,
    Normalise,
    RandomGamma,
    RandomRotation,
    ScaleToUnit,
    Step,
    apply_gamma,
    centre_offsets,
    crop_volumes,
    scale_to_unit,
)

__all__ = [
    "EXTENT_COLUMNS",
    "KNEE_COLUMNS",
    "NORM_MEAN",
    "NORM_STD",
    "AugmentParams",
    "BatchPreparer",
    "ChanceDraw",
    "Compose",
    "Crop",
    "DataError",
    "InputLayout",
    "KneeQuery",
    "KneeTable",
    "ModelInputs",
    "Normalise",
    "RandomGamma",
    "RandomRotation",
    "ResidentSource",
    "ScaleToUnit",
    "Shape3",
    "Step",
    "StoreShapes",
    "StoreVolumes",
    "StreamingSource",
    "VolumeSource",
    "WeightedEpochSampler",
    "apply_gamma",
    "batches_of",
    "centre_offsets",
    "cpu_generator",
    "crop_volumes",
    "derive_seed",
    "inference_transforms",
    "knee_table",
    "make_source",
    "model_views",
    "offset_bounds",
    "recipe_transforms",
    "resident_fits",
    "resolve_layout",
    "rotate_in_slice",
    "rotate_sagittal",
    "rotation_grid",
    "sagittal_extent_ratio",
    "scale_to_unit",
    "to_device",
    "validate_knees",
]
