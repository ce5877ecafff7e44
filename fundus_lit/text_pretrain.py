"""KeepFIT v2 stage 0: masked-language-model pretraining of the text tower on ophthalmic text.

General-domain and clinical encoders have seen little fundus vocabulary ("drusen", "cup-to-disc
ratio", "cotton-wool spots"); a short MLM stage on the knowledge dictionary, atlas captions and
reports adapts the tower before stage 1 aligns it with images. Stage 0 trains the transformers
encoder that stage 1 builds from ``text.name`` (plus a small MLM head that is thrown away) and
exports it as a folder that ``text.init_weights`` loads.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fundus_lit.core.dataclasses import as_dataclass
from fundus_lit.core.resolve import load_tokenizer
from fundus_lit.models.text import TextConfig, load_text_model
from fundus_lit.models.text_weights import EXPORT_INFO
from fundus_lit.optim import OptimConfig, adamw_with_schedule

__all__ = ["MLMHead", "TextPretrainModule", "export_text_tower", "mask_tokens"]

IGNORE = -100  # label of positions that are not predicted (cross-entropy's ignore_index)
VAL_MASK_SEED = 1_000_003  # validation masks depend on the batch only, not on the epoch


def mask_tokens(
    input_ids: Tensor,
    maskable: Tensor,
    mask_id: int,
    vocab_size: int,
    prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's masking: each maskable position is chosen with probability ``prob``; a chosen token
    becomes ``mask_id`` (80 %), a random id in ``[0, vocab_size)`` (10 %) or stays (10 %).

    A row with maskable tokens always gets at least one chosen (its lowest draw), so short
    passages (knowledge descriptions) are never silently skipped. ``generator``, when given, must
    live on ``input_ids``' device.

    Returns:
        ``(inputs, labels)``: the corrupted ids, and the original ids at chosen positions with
        -100 everywhere else.
    """
    if not 0.0 < prob <= 1.0:
        raise ValueError(f"mask probability must be in (0, 1], got {prob}")
    maskable = maskable.bool()
    shape, device = input_ids.shape, input_ids.device
    draw = torch.rand(shape, generator=generator, device=device)
    chosen = (draw < prob) & maskable
    lowest = draw.masked_fill(~maskable, 2.0).argmin(-1)
    fallback = F.one_hot(lowest, shape[-1]).bool() & maskable
    chosen = chosen | (fallback & ~chosen.any(-1, keepdim=True))
    action = torch.rand(shape, generator=generator, device=device)
    random_ids = torch.randint(
        vocab_size, shape, generator=generator, device=device, dtype=input_ids.dtype
    )
    inputs = torch.where(chosen & (action < 0.8), mask_id, input_ids)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    return inputs, input_ids.masked_fill(~chosen, IGNORE)


class MLMHead(nn.Module):
    """BERT's prediction head: a transform, then a decoder that shares the input embedding matrix
    (passed to :meth:`forward`, so the head owns no copy of it and the exported tower is the
    whole of what was learned about the vocabulary).

    Args:
        hidden_size: Width of the encoder's token states.
        vocab_size: Rows of the input embedding matrix.
        layer_norm_eps: The encoder's LayerNorm epsilon.
        init_std: Standard deviation of the transform's initial weights (the encoder's
            ``initializer_range``).
    """

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        layer_norm_eps: float = 1e-12,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        nn.init.normal_(self.dense.weight, std=init_std)
        nn.init.zeros_(self.dense.bias)

    def forward(self, hidden: Tensor, embedding: Tensor) -> Tensor:
        """Vocabulary logits (..., V) of token states (..., H); ``embedding`` is (V, H)."""
        return F.linear(self.norm(F.gelu(self.dense(hidden))), embedding, self.bias)


def export_text_tower(
    module_or_model: nn.Module,
    tokenizer_name: str,
    out_dir: str | Path,
    base_name: str,
    step: int,
    trust_remote_code: bool = False,
) -> Path:
    """Write the text tower as a transformers folder (weights as safetensors, config, tokenizer)
    plus ``fundus_lit_text.json`` recording its base, so stage 1's ``text.init_weights`` can load
    it and explain an architecture mismatch by name.

    Args:
        module_or_model: A :class:`TextPretrainModule` or a transformers encoder.
        tokenizer_name: Reference of the tokenizer saved with the weights.
        out_dir: Folder to write (created; files of an earlier export are overwritten).
        base_name: The ``text.name`` the tower was built from.
        step: Optimiser steps the weights were trained for.
        trust_remote_code: Allow the tokenizer's code from the hub.
    """
    model = getattr(module_or_model, "text_model", module_or_model)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    load_tokenizer(tokenizer_name, trust_remote_code).save_pretrained(out)
    config = model.config
    info = {
        "base": base_name,
        "architecture": type(model).__name__,
        "hidden_size": getattr(config, "hidden_size", None),
        "num_hidden_layers": getattr(config, "num_hidden_layers", None),
        "vocab_size": model.get_input_embeddings().num_embeddings,
        "step": int(step),
    }
    (out / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out


class TextPretrainModule(L.LightningModule):
    """Masked-language-model training of a text tower (KeepFIT v2 stage 0).

    At the end of training the tower is exported (see :func:`export_text_tower`) to
    ``save_dir``, or to ``<log dir>/text_tower``; stage 1 reads that folder through
    ``text.init_weights``. The best checkpoint by ``val/loss`` works there too.

    Args:
        text: The tower to pretrain; stage 1's ``text.name`` must be the same. Pooling is not
            used here (MLM reads every token state) but is kept so one text block fits both
            stages.
        mask_prob: Fraction of (non-special, non-padding) tokens predicted per passage.
        batch_size: Per-device batch size, linked from ``data.batch_size`` by the CLI; recorded
            with the hyper-parameters.
        optim: AdamW and warm-up + cosine schedule settings.
        save_dir: Folder of the exported tower.
    """

    def __init__(
        self,
        text: TextConfig = TextConfig(),  # noqa: B008 (links need a non-optional group)
        mask_prob: float = 0.15,
        batch_size: int = 32,
        optim: OptimConfig = OptimConfig(),  # noqa: B008
        save_dir: str | None = None,
    ) -> None:
        super().__init__()
        text, self.optim = as_dataclass(TextConfig, text), as_dataclass(OptimConfig, optim)
        if text.freeze:
            raise ValueError("text.freeze is true: a frozen text tower cannot be pretrained")
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}")
        # Plain dicts keep checkpoints loadable with weights_only=True.
        self.save_hyperparameters(
            {"text": asdict(text), "optim": asdict(self.optim), "mask_prob": mask_prob}
            | {"batch_size": batch_size, "save_dir": save_dir}
        )
        self.text, self.mask_prob, self.save_dir = text, mask_prob, save_dir
        mask_id = load_tokenizer(text.name, text.trust_remote_code).mask_token_id
        if mask_id is None:
            raise ValueError(f"the tokenizer of {text.name!r} has no mask token; MLM needs one")
        self.mask_id = int(mask_id)
        # from_pretrained returns eval mode and Lightning keeps submodule modes: dropout is part
        # of MLM training
        self.text_model = load_text_model(text).train()
        config = self.text_model.config
        self.vocab_size = self.text_model.get_input_embeddings().num_embeddings
        self.head = MLMHead(
            config.hidden_size,
            self.vocab_size,
            getattr(config, "layer_norm_eps", 1e-12),
            getattr(config, "initializer_range", 0.02),
        )
        # The pooler gets no gradient from MLM; DDP refuses trainable parameters without one.
        pooler = getattr(self.text_model, "pooler", None)
        if isinstance(pooler, nn.Module):
            pooler.requires_grad_(False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Token states (B, T, H)."""
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state

    def mlm(
        self, batch: dict[str, Tensor], generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """(Masked-token cross-entropy, accuracy) of one batch, masked with ``generator`` (the
        global RNG when None)."""
        ids, attention = batch["input_ids"], batch["attention_mask"]
        maskable = attention.bool()
        if "special_tokens_mask" in batch:
            maskable = maskable & ~batch["special_tokens_mask"].bool()
        inputs, labels = mask_tokens(
            ids, maskable, self.mask_id, self.vocab_size, self.mask_prob, generator
        )
        chosen = labels != IGNORE
        hidden = self(inputs, attention)[chosen]  # only the predicted positions reach the head
        target = labels[chosen]
        count = chosen.sum().clamp_min(1)
        # fp32 logits: a softmax over ~30k words loses too much in half precision
        with torch.autocast(self.device.type, enabled=False):
            weight = self.text_model.get_input_embeddings().weight
            logits = self.head(hidden.float(), weight.float())
            loss = F.cross_entropy(logits, target, reduction="sum") / count
        accuracy = (logits.argmax(-1) == target).sum() / count
        return loss, accuracy

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, accuracy = self.mlm(batch)
        size = len(batch["input_ids"])
        self.log("train/mlm", loss, batch_size=size)
        self.log("train/loss", loss, batch_size=size)  # the bar: callbacks/progress_bar.py
        self.log("train/mlm_accuracy", accuracy, batch_size=size)
        group = self.trainer.optimizers[0].param_groups[0]
        self.log("train/lr", group["lr"] / group["lr_mult"], batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        ids = batch["input_ids"]
        generator = torch.Generator(device=ids.device).manual_seed(VAL_MASK_SEED + batch_idx)
        loss, accuracy = self.mlm(batch, generator)
        size = len(ids)
        self.log("val/mlm", loss, sync_dist=True, batch_size=size)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=size)
        self.log("val/mlm_accuracy", accuracy, sync_dist=True, batch_size=size)
        return loss

    def on_train_end(self) -> None:
        trainer = self.trainer
        if trainer.fast_dev_run or not trainer.is_global_zero:
            return
        out = self.save_dir or os.path.join(
            trainer.log_dir or trainer.default_root_dir, "text_tower"
        )
        export_text_tower(
            self, self.text.name, out, self.text.name, self.global_step, self.text.trust_remote_code
        )
        print(f"text tower saved to {out}")

    def configure_optimizers(self) -> dict[str, Any]:
        return adamw_with_schedule(
            self.named_parameters(), self.optim, self.trainer.estimated_stepping_batches
        )
