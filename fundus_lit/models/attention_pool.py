"""Attention pool over a backbone's final grid: G2D's global embedding and its pseudo-mask source.

CLIP-ResNet style (docs/objectives.md §4): the query is the mean of the grid tokens, keys and
values are ``[query; grid tokens]``, each with a learned positional embedding. The per-head
attention of the query over the grid is what
:func:`fundus_lit.objectives.g2d_functional.pseudo_masks` thresholds, so the projections are
written out instead of using ``nn.MultiheadAttention``, which averages or hides the per-head
weights depending on the fast path taken.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def grid_tokens(features: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """(B, C, h, w) CNN feature map -> (B, h*w, C) tokens in row-major order and the grid."""
    height, width = features.shape[-2:]
    return features.flatten(2).transpose(1, 2), (height, width)


def vit_grid(tokens: Tensor, num_prefix: int, grid: tuple[int, int]) -> Tensor:
    """ViT (B, prefix + N, C) tokens -> (B, C, h, w) patch map; the class and register tokens
    (``num_prefix``, timm's ``model.num_prefix_tokens``) are dropped."""
    patches = tokens[:, num_prefix:]
    height, width = grid
    if patches.shape[1] != height * width:
        raise ValueError(
            f"{patches.shape[1]} patch tokens after {num_prefix} prefix tokens do not fill a "
            f"{height} x {width} grid"
        )
    return patches.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)


class AttentionPool(nn.Module):
    """Pool (B, N, C) grid tokens into (B, out_dim) with one mean-token query.

    Args:
        dim: Token width C.
        grid: (h, w) of the configured input size (image side / backbone stride); sizes the
            positional embedding, which is resized bicubically for other grids at run time.
        heads: Attention heads; ``dim`` must be divisible by it.
        out_dim: Output width (default ``dim``).
    """

    def __init__(
        self, dim: int, grid: tuple[int, int], heads: int = 8, out_dim: int | None = None
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.dim, self.heads, self.grid = dim, heads, tuple(grid)
        self.out_dim = out_dim or dim
        self.pos_embed = nn.Parameter(torch.randn(1 + grid[0] * grid[1], dim) / math.sqrt(dim))
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, self.out_dim)

    def positions(self, grid: tuple[int, int]) -> Tensor:
        """(1 + h*w, C) positional embedding for ``grid``: the query's slot as is, the grid part
        resized bicubically (in float32) when the run-time grid differs from the configured one,
        as ViTs do when fine-tuned at another resolution."""
        if tuple(grid) == self.grid:
            return self.pos_embed
        query, cells = self.pos_embed[:1], self.pos_embed[1:]
        cells = cells.t().reshape(1, self.dim, *self.grid).float()
        cells = F.interpolate(cells, size=tuple(grid), mode="bicubic", align_corners=False)
        cells = cells.reshape(self.dim, -1).t().to(query.dtype)
        return torch.cat([query, cells])

    def _resolve_grid(self, n_tokens: int, grid: tuple[int, int] | None) -> tuple[int, int]:
        """The grid of ``n_tokens``: given, the configured one, or a square one, in that order."""
        if grid is not None:
            resolved = tuple(grid)
        elif n_tokens == self.grid[0] * self.grid[1]:
            resolved = self.grid
        else:
            side = math.isqrt(n_tokens)
            resolved = (side, side)
        if resolved[0] * resolved[1] != n_tokens:
            raise ValueError(f"{n_tokens} tokens do not fill a {resolved} grid; pass grid=(h, w)")
        return resolved

    def attend(
        self, tokens: Tensor, grid: tuple[int, int] | None = None
    ) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """Pooled (B, out_dim), the full per-head softmax (B, heads, 1 + N) over
        ``[query; grid]`` (index 0 is the query's own key) and the grid used."""
        batch, n_tokens, _ = tokens.shape
        grid = self._resolve_grid(n_tokens, grid)
        x = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        x = x + self.positions(grid).to(x.dtype)
        head_dim = self.dim // self.heads
        q = self.q_proj(x[:, :1]).view(batch, 1, self.heads, head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, 1 + n_tokens, self.heads, head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, 1 + n_tokens, self.heads, head_dim).transpose(1, 2)
        weights = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(head_dim), dim=-1)
        pooled = (weights @ v).transpose(1, 2).reshape(batch, self.dim)
        return self.out_proj(pooled), weights.squeeze(2), grid

    def forward(
        self,
        tokens: Tensor,
        return_attention: bool = False,
        *,
        grid: tuple[int, int] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Pooled (B, out_dim) and, when asked, (B, heads, h, w) attention over the grid.

        The query's own key is dropped and the rest is *not* renormalised: these are the weights
        the pool actually mixes the grid values with. Renormalising per head would not change a
        head's ranking, but it would reweight heads before the head average that the pseudo
        mask thresholds, inflating heads that mostly look at the query itself.
        ``grid`` is needed only for a non-square grid other than the configured one.
        """
        pooled, weights, (height, width) = self.attend(tokens, grid)
        if not return_attention:
            return pooled, None
        return pooled, weights[..., 1:].reshape(tokens.shape[0], self.heads, height, width)
