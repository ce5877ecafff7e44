"""clip_loss against the reference numbers of docs/objectives.md (computed in float64)."""

import math

import pytest
import torch

from fundus_lit.knowledge.keys import category_key
from fundus_lit.objectives.functional import (
    category_ids,
    clip_loss,
    flair_loss,
    soft_cross_entropy,
)

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


def test_flair_reference_values():
    cats = ["a", "b", "a", "c"]
    assert flair_loss(U, V, S, cats).item() == pytest.approx(3.635968, abs=1e-6)
    assert flair_loss(U, V, 100.0, cats).item() == pytest.approx(24.780000, abs=1e-6)


def test_flair_zero_logits_give_log_b_and_distinct_categories_give_clip():
    assert flair_loss(U, V, 0.0, ["a", "a", "b", ""]).item() == pytest.approx(math.log(4))
    assert flair_loss(U, V, S, ["a", "b", "c", "d"]).item() == pytest.approx(
        clip_loss(U, V, S).item(), abs=1e-12
    )


def test_flair_compares_normalised_category_keys():
    spelled = ["Age-related macular degeneration.", "b", "age related  macular degeneration", "c"]
    assert flair_loss(U, V, S, spelled).item() == pytest.approx(3.635968, abs=1e-6)
    assert category_key("Age-related Macular Degeneration. ") == "age related macular degeneration"
    ids = category_ids(["Glaucoma", "glaucoma", "", "drusen"])
    assert ids[0] == ids[1] and len(set(ids.tolist())) == 3


def test_flair_rejects_wrong_number_of_categories():
    with pytest.raises(ValueError, match="3 categories for a batch of 4"):
        flair_loss(U, V, S, ["a", "b", "c"])
