"""Single-view coronal/axial models rotate in the sagittal plane, as the reference does before reslicing."""

from __future__ import annotations

import torch

from oaimodels import data as D
from oaimodels.data import rotate_sagittal


def _sagittal() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 6, 20, 20, generator=g)  # (B, left-right, rows, cols)


def test_coronal_and_axial_rotate_like_the_resliced_rotated_sagittal_volume() -> None:
    sag = _sagittal()
    angles = torch.tensor([12.0, -9.0])
    rotated_sag = D.rotate_in_slice(sag, angles)
    cor = sag.permute(0, 3, 2, 1)  # (cols, rows, left-right)
    ax = sag.permute(0, 2, 3, 1)  # (rows, cols, left-right)
    torch.testing.assert_close(rotate_sagittal(cor, angles, "cor"), rotated_sag.permute(0, 3, 2, 1))
    torch.testing.assert_close(rotate_sagittal(ax, angles, "ax"), rotated_sag.permute(0, 2, 3, 1))
    torch.testing.assert_close(rotate_sagittal(sag, angles, "sag"), rotated_sag)
    # not the old behaviour: a rotation in the coronal slice plane differs
    assert not torch.allclose(D.rotate_in_slice(cor, angles), rotated_sag.permute(0, 3, 2, 1))


def test_anisotropic_sagittal_plane_rotates_rigidly_in_millimetres() -> None:
    # a coronal stack with cols spaced twice the rows: a 90-degree turn maps the rows axis onto cols
    sag = torch.zeros(1, 1, 16, 16)
    sag[0, 0, 4:12, 7:9] = 1.0  # a vertical bar on a square grid
    expected = D.rotate_in_slice(sag, torch.tensor([90.0]))[0, 0]
    coarse = sag[..., ::2] * 0 + sag.reshape(1, 1, 16, 8, 2).amax(-1)  # cols at twice the spacing
    cor = coarse.permute(0, 3, 2, 1)  # (cols, rows, left-right), D spacing / H spacing = 2
    out = rotate_sagittal(cor, torch.tensor([90.0]), "cor", spacing_ratio=2.0).permute(0, 3, 2, 1)[0, 0]
    # after the turn the bar lies along the (coarse) columns and spans the same millimetres:
    # 8 fine columns = 4 coarse ones (a pixel-unit rotation would span 8 coarse columns)
    assert out.shape == (16, 8)
    fine_cols = (expected > 0.5).any(dim=0).nonzero().flatten()
    coarse_cols = (out > 0.5).any(dim=0).nonzero().flatten()
    assert len(fine_cols) == 8 and len(coarse_cols) == 4
    assert torch.equal(coarse_cols, torch.unique(fine_cols // 2))
