"""clip_loss against the reference numbers of specs/objectives.md (computed in float64)."""

import math

import pytest
import torch

from fundus_lit.objectives.functional import clip_loss, soft_cross_entropy

U = torch.tensor([(1, 0), (0.6, 0.8), (0.28, 0.96), (-0.8, 0.6)], dtype=torch.float64)
V = torch.tensor([(0.96, 0.28), (0.8, 0.6), (0, 1), (-0.6, -0.8)], dtype=torch.float64)
S = 1 / 0.07


def test_clip_reference_value():
    assert clip_loss(U, V, S).item() == pytest.approx(1.167397, abs=1e-6)


def test_clip_directions_match_reference():
    logits = S * U @ V.T
    eye = torch.eye(4, dtype=torch.float64)
    assert soft_cross_entropy(logits, eye).item() == pytest.approx(2.238165, abs=1e-6)
    assert soft_cross_entropy(logits.T, eye).item() == pytest.approx(0.096629, abs=1e-6)


def test_clip_scale_as_tensor_and_zero_logits():
    assert clip_loss(U, V, torch.tensor(S)).item() == pytest.approx(1.167397, abs=1e-6)
    assert clip_loss(U, V, 0.0).item() == pytest.approx(math.log(4))


def test_clip_local_rows_against_global_columns_average_to_global_loss():
    halves = [
        clip_loss(U[i : i + 2], V, S, row_offset=i, text_rows=V[i : i + 2], image_cols=U)
        for i in (0, 2)
    ]
    assert (sum(halves) / 2).item() == pytest.approx(1.167397, abs=1e-6)


def test_clip_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="paired embeddings"):
        clip_loss(U, V[:3], S)
