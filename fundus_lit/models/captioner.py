"""Caption decoder for KeepFIT v2's generative term (docs/objectives.md §5, ``L_gen``).

A small transformer decoder writes the expert caption while cross-attending to the image's dense
feature tokens, so the image tower is pushed to keep the local appearance details that captions
name (haemorrhages, drusen, exudates) rather than only what a pooled vector needs for contrast.

Design choices, and why:

* Memory positions are a learned 1-D table of ``memory_tokens`` rows, linearly resampled to the
  actual number of feature tokens ``h * w``. The feature map's grid changes with the backbone and
  the input resolution, and the tokens are flattened row-major anyway, so a 1-D table that is
  stretched or shrunk keeps one parameter set valid for every grid (2-D agnostic). The resampling
  is a fixed interpolation matrix applied with a matmul, not ``F.interpolate``: the latter's linear
  backward has no deterministic CUDA kernel, and the matmul is exact linear interpolation anyway.
* The output projection shares its weight with the token embedding (plus its own bias): the
  vocabulary of a BERT tokenizer is ~30k rows, so tying halves the decoder's parameters and lets
  the rare ophthalmic word pieces that appear in few captions learn from both ends.
* Self-attention is causal and padded keys are masked too, but every position may always attend
  to itself, so no row of the attention is empty (an all-masked softmax row gives NaN) whatever
  the padding side.
* The decoder's constructor arguments travel in its state dict (``get_extra_state``), so a
  checkpoint alone rebuilds it (``fundus-lit caption``): the training config need not be at hand
  and nothing is guessed from tensor shapes (heads and layer norms leave no shape trace).
* Beam search ranks every candidate by ``sum log p / length ** length_penalty`` (length counts the
  generated tokens, eos included), and finished beams stay in the pool with a frozen score. With
  one beam all candidates share a length, so the ranking reduces to greedy argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _interpolation_matrix(size_out: int, size_in: int, device: torch.device) -> Tensor:
    """(size_out, size_in) weights of 1-D linear interpolation with half-pixel centres."""
    if size_out == size_in:
        return torch.eye(size_in, device=device)
    pos = (torch.arange(size_out, device=device) + 0.5) * (size_in / size_out) - 0.5
    pos = pos.clamp(0, size_in - 1)
    low = pos.floor().long()
    high = (low + 1).clamp(max=size_in - 1)
    frac = pos - low
    weights = torch.zeros(size_out, size_in, device=device)
    rows = torch.arange(size_out, device=device)
    weights[rows, low] += 1 - frac
    weights[rows, high] += frac
    return weights


def _self_attention_mask(attention_mask: Tensor, heads: int) -> Tensor:
    """Additive (B*heads, T, T) mask: causal, padded keys hidden, the diagonal always visible."""
    length = attention_mask.shape[1]
    device = attention_mask.device
    future = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
    blocked = future.unsqueeze(0) | (attention_mask == 0).unsqueeze(1)
    blocked = blocked & ~torch.eye(length, dtype=torch.bool, device=device)
    mask = torch.zeros(blocked.shape, device=device).masked_fill(blocked, float("-inf"))
    return mask.repeat_interleave(heads, dim=0)


def _strip(ids: Sequence[int], bos_id: int, eos_id: int, pad_id: int) -> list[int]:
    """Token ids up to the first eos, without bos/eos/pad (what a caller wants to decode)."""
    out: list[int] = []
    for token in ids:
        if token == eos_id:
            break
        if token not in (bos_id, pad_id):
            out.append(int(token))
    return out


class CaptionDecoder(nn.Module):
    """Transformer decoder: caption tokens attend causally to themselves and to image tokens."""

    def __init__(
        self,
        vocab_size: int,
        feature_dim: int,
        dim: int = 256,
        layers: int = 2,
        heads: int = 4,
        max_length: int = 64,
        pad_id: int = 0,
        bos_id: int = 101,
        eos_id: int = 102,
        dropout: float = 0.1,
        memory_tokens: int = 256,
    ) -> None:
        super().__init__()
        self.config = {
            "kind": "caption_decoder",
            "vocab_size": vocab_size,
            "feature_dim": feature_dim,
            "dim": dim,
            "layers": layers,
            "heads": heads,
            "max_length": max_length,
            "pad_id": pad_id,
            "bos_id": bos_id,
            "eos_id": eos_id,
            "dropout": dropout,
            "memory_tokens": memory_tokens,
        }
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.heads, self.max_length = heads, max_length
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.positions = nn.Parameter(torch.zeros(max_length, dim))
        self.memory_proj = nn.Linear(feature_dim, dim)
        self.memory_positions = nn.Parameter(torch.zeros(memory_tokens, dim))
        layer = nn.TransformerDecoderLayer(
            dim, heads, dim_feedforward=4 * dim, dropout=dropout, batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(dim)
        self.output_bias = nn.Parameter(torch.zeros(vocab_size))
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.positions, std=0.02)
        nn.init.normal_(self.memory_positions, std=0.02)

    def get_extra_state(self) -> dict:
        return dict(self.config)

    def set_extra_state(self, state: dict) -> None:
        # dropout does not change the weights; anything else would load into the wrong model
        differ = {
            k: (v, self.config.get(k))
            for k, v in state.items()
            if k != "dropout" and self.config.get(k) != v
        }
        if differ:
            raise ValueError(
                "caption decoder weights were saved for another configuration: "
                + ", ".join(f"{k} saved {a} vs built {b}" for k, (a, b) in differ.items())
            )

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor | dict]) -> CaptionDecoder:
        """A decoder rebuilt from its own state dict (keys without any outer prefix)."""
        config = dict(state["_extra_state"])
        config.pop("kind", None)
        decoder = cls(**config)
        decoder.load_state_dict(state)
        return decoder.eval()

    def memory(self, feature_map: Tensor) -> Tensor:
        """(B, C, h, w) feature map -> (B, h*w, dim) cross-attention memory with positions."""
        tokens = feature_map.flatten(2).transpose(1, 2)
        memory = self.memory_proj(tokens)
        table = self.memory_positions
        resample = _interpolation_matrix(memory.shape[1], table.shape[0], table.device)
        return memory + (resample.to(table.dtype) @ table).unsqueeze(0)

    def _decode(self, memory: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Logits (B, T, V) for every position of ``input_ids`` given a prepared memory."""
        length = input_ids.shape[1]
        if length > self.max_length:
            raise ValueError(f"caption of {length} tokens exceeds max_length={self.max_length}")
        hidden = self.token_embed(input_ids) + self.positions[:length].unsqueeze(0)
        mask = _self_attention_mask(attention_mask, self.heads).to(hidden.dtype)
        hidden = self.decoder(hidden, memory, tgt_mask=mask)
        hidden = self.norm(hidden)
        return F.linear(hidden, self.token_embed.weight, self.output_bias)

    def forward(self, feature_map: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Teacher forcing: logits (B, T-1, V) predicting ``input_ids[:, 1:]``."""
        return self._decode(self.memory(feature_map), input_ids[:, :-1], attention_mask[:, :-1])

    def _next_log_probs(self, memory: Tensor, seqs: Tensor) -> Tensor:
        # Finished rows keep decoding behind their eos; their output is discarded by the callers.
        logits = self._decode(memory, seqs, torch.ones_like(seqs))
        return F.log_softmax(logits[:, -1].float(), dim=-1)

    @torch.no_grad()
    def generate(
        self,
        feature_map: Tensor,
        max_new_tokens: int = 40,
        beams: int = 1,
        length_penalty: float = 1.0,
    ) -> list[list[int]]:
        """Caption token ids per image (no bos/eos/pad); greedy for one beam, beam search else."""
        max_new_tokens = min(max_new_tokens, self.max_length - 1)
        memory = self.memory(feature_map)
        if beams <= 1:
            seqs = self._greedy(memory, max_new_tokens)
        else:
            seqs = self._beam_search(memory, max_new_tokens, beams, length_penalty)
        return [_strip(row, self.bos_id, self.eos_id, self.pad_id) for row in seqs.tolist()]

    def _greedy(self, memory: Tensor, max_new_tokens: int) -> Tensor:
        batch = memory.shape[0]
        seqs = torch.full((batch, 1), self.bos_id, dtype=torch.long, device=memory.device)
        done = torch.zeros(batch, dtype=torch.bool, device=memory.device)
        for _ in range(max_new_tokens):
            token = self._next_log_probs(memory, seqs).argmax(dim=-1)
            token = token.masked_fill(done, self.pad_id)
            seqs = torch.cat([seqs, token.unsqueeze(1)], dim=1)
            done |= token == self.eos_id
            if bool(done.all()):
                break
        return seqs

    def _beam_search(
        self, memory: Tensor, max_new_tokens: int, beams: int, length_penalty: float
    ) -> Tensor:
        batch, device = memory.shape[0], memory.device
        memory = memory.repeat_interleave(beams, dim=0)
        seqs = torch.full((batch * beams, 1), self.bos_id, dtype=torch.long, device=device)
        scores = torch.full((batch, beams), float("-inf"), device=device)
        scores[:, 0] = 0.0  # identical start beams: only one may expand, or results repeat
        lengths = torch.zeros(batch * beams, device=device)
        done = torch.zeros(batch * beams, dtype=torch.bool, device=device)
        ranked_top = scores.clone()
        for step in range(max_new_tokens):
            log_probs = self._next_log_probs(memory, seqs)
            vocab = log_probs.shape[-1]
            # A finished beam has exactly one continuation, pad, at no cost and no extra length.
            frozen = torch.full_like(log_probs, float("-inf"))
            frozen[:, self.pad_id] = 0.0
            log_probs = torch.where(done.unsqueeze(1), frozen, log_probs)
            total = scores.reshape(-1, 1) + log_probs
            new_len = (lengths + (~done).float()).unsqueeze(1).expand(-1, vocab)
            ranked = total / new_len.clamp(min=1).pow(length_penalty)
            ranked_top, index = ranked.reshape(batch, -1).topk(beams, dim=-1)
            source = index // vocab + torch.arange(batch, device=device).unsqueeze(1) * beams
            source, token = source.reshape(-1), (index % vocab).reshape(-1)
            scores = total.reshape(batch, -1).gather(1, index)
            lengths = new_len[:, 0][source]
            done = done[source] | (token == self.eos_id)
            seqs = torch.cat([seqs[source], token.unsqueeze(1)], dim=1)
            remaining = max_new_tokens - step - 1
            if remaining == 0 or self._settled(
                ranked_top, scores, lengths, done, remaining, length_penalty
            ):
                break
        finished = torch.where(done.view(batch, beams), ranked_top, float("-inf"))
        # After an early stop the best finished caption wins; a live beam may still rank above it
        # at its current length but can no longer end above it. Without one, topk's order holds.
        pick = torch.where(finished.isfinite().any(-1), finished.argmax(-1), 0)
        return seqs[pick + torch.arange(batch, device=device) * beams]

    @staticmethod
    def _settled(
        ranked: Tensor,
        scores: Tensor,
        lengths: Tensor,
        done: Tensor,
        remaining: int,
        length_penalty: float,
    ) -> bool:
        """Whether every image's best finished beam beats anything its live beams can still reach.

        Log-probabilities only add negative terms, so a live beam's raw score can only fall; its
        normalised score ``s / L ** penalty`` is monotone in the final length L, so the best it can
        end with lies at the shortest (next step) or the longest (budget spent) completion.
        """
        batch, beams = ranked.shape
        done, lengths = done.view(batch, beams), lengths.view(batch, beams)
        best_done = torch.where(done, ranked, float("-inf")).amax(-1)
        reach = torch.maximum(
            scores / (lengths + 1).pow(length_penalty),
            scores / (lengths + remaining).pow(length_penalty),
        )
        best_live = torch.where(done, float("-inf"), reach).amax(-1)
        return bool((best_done >= best_live).all())


def caption_loss(
    logits: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor,
    pad_id: int = 0,
    reduction: Literal["mean", "sum"] = "mean",
) -> Tensor:
    """Teacher-forced token cross-entropy over real target tokens: their mean, or their sum
    (``reduction="sum"``, for a mean over tokens of several ranks; see ``caption_targets`` for
    the count that goes with it).

    Targets are ``input_ids[:, 1:]``; a position counts only where ``attention_mask[:, 1:]`` is set
    and the target is not ``pad_id`` (the latter guards collates that pad ids but not the mask), so
    padding never contributes however many pads a batch carries.
    """
    targets, keep = caption_targets(input_ids, attention_mask, pad_id)
    targets = targets.masked_fill(~keep, -100)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=-100,
        reduction=reduction,
    )


def caption_targets(
    input_ids: Tensor, attention_mask: Tensor, pad_id: int = 0
) -> tuple[Tensor, Tensor]:
    """(targets, keep): the next-token targets and which of them are real caption tokens."""
    targets = input_ids[:, 1:]
    return targets, (attention_mask[:, 1:] != 0) & (targets != pad_id)


def decode(tokenizer, ids: list[list[int]]) -> list[str]:
    """Caption strings from ``generate``'s ids (special tokens, if any slipped in, dropped)."""
    return tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
