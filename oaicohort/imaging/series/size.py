"""Series too small for the training crop: excluded, as the reference does.

The reference drops corrupted DESS series (29, 56 or 124 slices, or 288 columns): its crop of
128 slices of 320x320 after a 16-pixel margin would fail on them. Padding them instead (the
toolkit's earlier behaviour, ``too_small="pad"``) keeps a 29-slice knee as a volume that is
about 80% zeros. With ``too_small="exclude"`` (the default) such a series is recorded as a
failure whose reason starts with ``image_too_small``.
"""

from __future__ import annotations

from typing import Any

IMAGE_TOO_SMALL = "image_too_small"


class ImageTooSmall(ValueError):
    """A series smaller than the crop needs; the message starts with ``image_too_small``."""


def minimum_source_shape(params: Any) -> tuple[int, int, int]:
    """(slices, rows, cols) a series needs so that a training crop can avoid padding.

    Slices: the sagittal crop depth at full resolution (64 x 2 = 128 for the full preset). Rows
    and columns: the in-plane crop at full resolution plus both margins (160 x 2 + 2 x 16 = 352).
    A series of at least this size, centre-padded to the full region, keeps a box of real data
    at least as large as the crop of every view; the centre crop lies inside it, and random crops
    are drawn inside it too (the volume's valid extent, ``oaicohort.imaging.recipe.extent``,
    used by ``oaimodels.data.crops``), so no crop reaches padding. With ``too_small="pad"`` a
    smaller series is kept; its crops are then centred on its data and do include padding.
    """
    f = params.downsample
    depth, rows, cols = params.sag_crop
    m = params.margin
    return (depth * f, rows * f + 2 * m, cols * f + 2 * m)


def check_source_size(shape: tuple[int, ...], params: Any) -> None:
    """Raise ``ImageTooSmall`` when ``params.too_small == "exclude"`` and ``shape`` is too small."""
    if params.too_small != "exclude":
        return
    need = minimum_source_shape(params)
    if any(n < k for n, k in zip(shape, need)):
        have = "x".join(str(n) for n in shape)
        raise ImageTooSmall(
            f"{IMAGE_TOO_SMALL}: series is {have} (slices x rows x cols); the crop needs at least "
            f"{'x'.join(str(n) for n in need)} (preprocessing parameter too_small='exclude')"
        )
