"""Few-shot adapters over the zero-shot classifier: CLIP-Adapter, Tip-Adapter and Tip-Adapter-F.

All three start from the zero-shot head (``scale * f @ prototypes.T`` on L2-normalised projected
image embeddings f and knowledge prototypes) and use a small labelled support set, so they show
how much a handful of labels adds on top of the text knowledge. They work on precomputed
embeddings (NumPy arrays or torch tensors) in float32 on the CPU; the backbone and the prototypes
stay frozen. Training is seeded inside a forked RNG, so the caller's global RNG state is untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fundus_lit.eval.probe import as_numpy, check_labels


def _embeddings(x: Any, name: str) -> Tensor:
    """Float32 unit rows. Inputs should already be normalised; renormalising is a no-op then and
    keeps the cosine affinities of the cache honest when they are not."""
    t = torch.as_tensor(as_numpy(x), dtype=torch.float32)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return F.normalize(t, dim=-1)


def positive_scale(scale: float | Tensor) -> float:
    value = float(scale.detach().cpu()) if isinstance(scale, Tensor) else float(scale)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"scale must be a positive finite number, got {value}")
    return value


def prepare(
    support_emb: Any, support_y: Any, test_emb: Any, prototypes: Any, role: str = "support"
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Validated (support, labels, test, prototypes); labels index the prototypes' rows.
    ``role`` names the labelled set in messages (``train`` when called by the evaluation)."""
    protos = _embeddings(prototypes, "prototypes")
    support, test = _embeddings(support_emb, f"{role}_emb"), _embeddings(test_emb, "test_emb")
    labels = torch.from_numpy(check_labels(support_y, len(protos), f"{role}_y"))
    if len(support) == 0:
        raise ValueError(f"the {role} set is empty")
    if len(support) != len(labels):
        raise ValueError(f"{role}_emb has {len(support)} rows but {role}_y has {len(labels)}")
    dims = {f"{role}_emb": support.shape[1], "test_emb": test.shape[1]}
    for name, dim in dims.items():
        if dim != protos.shape[1]:
            raise ValueError(f"{name} has dimension {dim} but prototypes have {protos.shape[1]}")
    return support, labels, test, protos


def _fit(params: list[nn.Parameter], loss_fn: Callable[[], Tensor], epochs: int, lr: float) -> None:
    """Full-batch AdamW: support sets are a few dozen rows, so mini-batches would only add noise."""
    opt = torch.optim.AdamW(params, lr=lr)
    with torch.enable_grad():
        for _ in range(epochs):
            opt.zero_grad(set_to_none=True)
            loss_fn().backward()
            opt.step()


def _clip_adapter_logits(
    adapter: nn.Module, f: Tensor, protos: Tensor, scale: float, ratio: float
) -> Tensor:
    mixed = ratio * adapter(f) + (1.0 - ratio) * f
    return scale * F.normalize(mixed, dim=-1) @ protos.T


def clip_adapter(
    support_emb: Any,
    support_y: Any,
    test_emb: Any,
    prototypes: Any,
    scale: float | Tensor,
    *,
    ratio: float = 0.2,
    reduction: int = 4,
    epochs: int = 200,
    lr: float = 1e-3,
    seed: int = 0,
) -> Tensor:
    """CLIP-Adapter (Gao et al., 2021): (N_test, K) logits of a residual bottleneck on f.

    The bottleneck ``D -> D // reduction -> D`` (bias-free, ReLU after each layer) is mixed back
    into the frozen embedding with weight ``ratio``, so a small support set nudges the embedding
    towards the right prototype instead of replacing what the pretraining learned.
    """
    support, labels, test, protos = prepare(support_emb, support_y, test_emb, prototypes)
    s, dim = positive_scale(scale), protos.shape[1]
    hidden = max(1, dim // reduction)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = nn.Sequential(
            nn.Linear(dim, hidden, bias=False),
            nn.ReLU(),
            nn.Linear(hidden, dim, bias=False),
            nn.ReLU(),
        )

        def loss() -> Tensor:
            logits = _clip_adapter_logits(adapter, support, protos, s, ratio)
            return F.cross_entropy(logits, labels)

        _fit(list(adapter.parameters()), loss, epochs, lr)
    with torch.no_grad():
        return _clip_adapter_logits(adapter, test, protos, s, ratio)


def _tip_logits(
    f: Tensor,
    keys: Tensor,
    values: Tensor,
    protos: Tensor,
    scale: float,
    alpha: float,
    beta: float,
) -> Tensor:
    """Zero-shot logits plus the cache's vote: exp(-beta (1 - cos)) turns cosine similarity into
    a sharp, non-negative affinity, so only close support examples carry their label."""
    affinity = torch.exp(-beta * (1.0 - f @ keys.T))
    return scale * f @ protos.T + alpha * affinity @ values


def tip_adapter(
    support_emb: Any,
    support_y: Any,
    test_emb: Any,
    prototypes: Any,
    scale: float | Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 5.5,
) -> Tensor:
    """Tip-Adapter (Zhang et al., 2022): (N_test, K) logits with a training-free key-value cache.

    Keys are the support embeddings and values their one-hot labels. The paper's zero-shot term
    uses CLIP's scale of 100; here it is the model's own learned ``scale``, so ``alpha`` weighs
    the cache against this model's zero-shot logits.
    """
    support, labels, test, protos = prepare(support_emb, support_y, test_emb, prototypes)
    values = F.one_hot(labels, len(protos)).float()
    with torch.no_grad():
        return _tip_logits(test, support, values, protos, positive_scale(scale), alpha, beta)


def tip_adapter_f(
    support_emb: Any,
    support_y: Any,
    test_emb: Any,
    prototypes: Any,
    scale: float | Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 5.5,
    epochs: int = 50,
    lr: float = 1e-3,
    seed: int = 0,
) -> Tensor:
    """Tip-Adapter-F: (N_test, K) logits of Tip-Adapter with its cache keys fine-tuned.

    The keys start at the support embeddings and are trained with cross-entropy on the support
    set (values fixed); as in the paper they are not renormalised while training, so their norm
    is free to act as a per-key weight. ``seed`` only keeps the adapters' signatures uniform:
    full-batch training from the support embeddings draws no random numbers.
    """
    support, labels, test, protos = prepare(support_emb, support_y, test_emb, prototypes)
    s = positive_scale(scale)
    values = F.one_hot(labels, len(protos)).float()
    keys = nn.Parameter(support.clone())

    def loss() -> Tensor:
        return F.cross_entropy(_tip_logits(support, keys, values, protos, s, alpha, beta), labels)

    _fit([keys], loss, epochs, lr)
    with torch.no_grad():
        return _tip_logits(test, keys, values, protos, s, alpha, beta)
