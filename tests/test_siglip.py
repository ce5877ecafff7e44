"""SigLIP (docs/objectives.md §9) against a transcription of the paper's pseudo-code, split over
ranks, and as a module whose bias trains."""

import numpy as np
import pytest
import torch

from fundus_lit.models.outputs import ModelOutputs
from fundus_lit.objectives import SigLIPObjective
from fundus_lit.objectives.functional import siglip_loss

U = torch.tensor([(1, 0), (0.6, 0.8), (0.28, 0.96), (-0.8, 0.6)], dtype=torch.float64)
V = torch.tensor([(0.96, 0.28), (0.8, 0.6), (0, 1), (-0.6, -0.8)], dtype=torch.float64)


def published(img: np.ndarray, txt: np.ndarray, t_prime: float, b: float) -> float:
    """Zhai et al. 2023, Algorithm 1, line by line (numpy, float64)."""
    n = img.shape[0]
    t = np.exp(t_prime)
    zimg = img / np.linalg.norm(img, axis=1, keepdims=True)
    ztxt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    logits = np.dot(zimg, ztxt.T) * t + b
    labels = 2 * np.eye(n) - np.ones(n)
    log_sigmoid = -np.logaddexp(0.0, -labels * logits)
    return float(-np.sum(log_sigmoid) / n)


def test_reference_value_on_the_shared_inputs():
    # s = 10, b = -10: the paper's initialisation
    value = siglip_loss(U, V, 10.0, -10.0).item()
    assert value == pytest.approx(published(U.numpy(), V.numpy(), np.log(10.0), -10.0), abs=1e-12)
    assert value == pytest.approx(3.318692, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_published_formula_on_random_batches(seed):
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(7, 5, generator=g, dtype=torch.float64), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(7, 5, generator=g, dtype=torch.float64), dim=1)
    for t, b in ((1.0, 0.0), (10.0, -10.0), (33.0, -3.5)):
        ours = siglip_loss(img, txt, t, b).item()
        assert ours == pytest.approx(published(img.numpy(), txt.numpy(), np.log(t), b), abs=1e-10)


def test_the_mean_of_rank_slices_is_the_global_loss():
    full = siglip_loss(U, V, 10.0, -2.0)
    halves = [
        siglip_loss(
            U[r * 2 : r * 2 + 2], V[r * 2 : r * 2 + 2], 10.0, -2.0, text_cols=V, row_offset=r * 2
        )
        for r in (0, 1)
    ]
    assert (sum(halves) / 2).item() == pytest.approx(full.item(), abs=1e-12)


def test_objective_trains_its_bias_and_logs_it():
    objective = SigLIPObjective(bias_init=-10.0)
    u = U.float().clone().requires_grad_()
    outputs = ModelOutputs(image_emb=u, text_emb=V.float(), scale=torch.tensor(10.0))
    out = objective(outputs, batch=None)
    out.losses["loss"].backward()
    assert objective.bias.grad is not None and objective.bias.grad.item() != 0
    assert out.scalars["bias"].item() == -10.0
    assert out.losses["loss"].item() == pytest.approx(3.318692, abs=1e-5)
    with pytest.raises(ValueError, match="finite"):
        SigLIPObjective(bias_init=float("nan"))
