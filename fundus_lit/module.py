"""PretrainModule: one LightningModule for every method; a method is its list of objectives."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from fundus_lit import grad_cache as gc
from fundus_lit.core.checkpoint import check_resumable
from fundus_lit.core.dataclasses import as_dataclass
from fundus_lit.core.distributed import max_over_ranks
from fundus_lit.core.quiet import quiet_eval_mode_warning
from fundus_lit.data.batch import Batch
from fundus_lit.models.dual_encoder import DualEncoder, DualEncoderConfig, Projection
from fundus_lit.models.outputs import ModelOutputs, full_precision
from fundus_lit.models.saved import load_export_weights
from fundus_lit.models.text import TextConfig
from fundus_lit.models.vision import VisionConfig
from fundus_lit.nonfinite import NonFiniteGuard, NonFiniteLossError  # noqa: F401 (public here)
from fundus_lit.objectives.base import Objective
from fundus_lit.objectives.clip import CLIPObjective
from fundus_lit.optim import OptimConfig, adamw_with_schedule, clip_gradients, drop_step_if
from fundus_lit.train_logging import StepRate, log_images, log_train_state


class PretrainModule(L.LightningModule):
    """Dual encoder trained with a weighted sum of objectives.

    Args:
        vision: Image tower (any timm model).
        text: Text tower (any transformers encoder, hub id or local path).
        objectives: The recipe: objectives with their weights; CLIP alone when omitted.
        embed_dim: Shared embedding dimension D.
        image_size: Input resolution; linked from ``data.image_size`` by the CLI.
        batch_size: Per-device batch size; linked from ``data.batch_size`` by the CLI (objectives
            with queues size them from it).
        projection: ``linear`` or ``mlp`` projection heads.
        temperature: Initial temperature of the learnable logit scale.
        optim: AdamW and warm-up + cosine schedule settings.
        init_weights: A model folder (``fundus-lit export`` or ``import``, e.g. FLAIR's published
            weights) whose dual-encoder weights start training; the model config must describe
            the same architecture (every key and shape is checked).
        max_nonfinite_steps: A step whose loss is not finite (on any rank) is dropped on every
            rank by the optimiser itself: no weight, moment or EMA update, no queue write
            (Lightning still counts it in ``global_step``, the schedule moves on, and BatchNorm
            statistics keep the forward's update). The flag stays on the device; skipped steps
            are counted in ``train/nonfinite_steps`` and reported with their loss terms at
            logging steps, and this many in a row stop the run there with
            :class:`NonFiniteLossError`. 0 switches the guard off.
        grad_cache: Chunk size (samples) of the gradient cache (:mod:`fundus_lit.grad_cache`):
            the contrastive batch stays whole (same loss and gradients) while activation memory
            is one chunk's, for about one extra forward pass; null or 0 is off. Only public-stream
            objectives that need nothing but the global embeddings (CLIP, FLAIR, WSC) run under
            it; it uses manual optimisation (``gradient_clip_val`` still applies) and refuses
            ``accumulate_grad_batches`` > 1 and sharded strategies.
    """

    def __init__(
        self,
        vision: VisionConfig = VisionConfig(),  # noqa: B008 (links need a non-optional group)
        text: TextConfig = TextConfig(),  # noqa: B008
        objectives: list[Objective] | None = None,
        embed_dim: int = 512,
        image_size: int = 224,
        batch_size: int = 32,
        projection: Projection = "linear",
        temperature: float = 0.07,
        optim: OptimConfig = OptimConfig(),  # noqa: B008
        grad_cache: int | None = None,
        max_nonfinite_steps: int = 5,
        init_weights: str | None = None,
    ) -> None:
        super().__init__()
        self.nonfinite = NonFiniteGuard(max_nonfinite_steps)
        self._terms: dict[str, Tensor] = {}
        if grad_cache is not None and grad_cache < 0:
            raise ValueError(
                f"grad_cache is a chunk size (>= 1, or 0/null = off), got {grad_cache}"
            )
        self.grad_cache = grad_cache or 0
        if self.grad_cache:  # before the towers load: a refused recipe fails fast
            gc.check_objectives(objectives or [])
        config = DualEncoderConfig(
            as_dataclass(VisionConfig, vision),
            as_dataclass(TextConfig, text),
            embed_dim,
            image_size,
            projection,
            temperature,
        )
        self.optim = as_dataclass(OptimConfig, optim)
        # Plain dicts keep checkpoints loadable with weights_only=True.
        self.save_hyperparameters(
            config.to_dict()
            | {"optim": asdict(self.optim), "batch_size": batch_size, "grad_cache": grad_cache}
            | {"max_nonfinite_steps": max_nonfinite_steps, "init_weights": init_weights}
        )
        self.encoder = DualEncoder.from_config(config)
        if init_weights:
            load_export_weights(self.encoder, init_weights)
        objectives = list(objectives) if objectives else [CLIPObjective()]
        names = [o.name for o in objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objective names must be unique, got {names}; set `name:` on each")
        self.objectives = nn.ModuleList(objectives)
        for obj in objectives:
            obj.attach(self.encoder, batch_size)
        self.requires = frozenset().union(
            *(o.requires for o in objectives if o.stream == "public")
        ) | {"image_emb", "text_emb"}
        self.expert_requires = frozenset().union(
            *(o.requires for o in objectives if o.stream == "expert")
        )
        self._rate = StepRate()

    def forward(self, batch: Batch) -> ModelOutputs:
        outputs = self.encoder(
            batch.images, batch.input_ids, batch.attention_mask, self.requires, batch.text_keys
        )
        expert = batch.extra.get("expert")
        if expert is not None and self.expert_requires:
            outputs.extra["expert"] = self.encoder(
                expert.images,
                expert.input_ids,
                expert.attention_mask,
                self.expert_requires,
                expert.text_keys,
            )
        return outputs

    def _step(self, batch: Batch, stage: str) -> tuple[Tensor, ModelOutputs]:
        outputs = full_precision(self(batch))
        return self._losses(outputs, batch, stage), outputs

    def _losses(self, outputs: ModelOutputs, batch: Batch, stage: str) -> Tensor:
        """The recipe's weighted sum on ``outputs``, each term logged."""
        total = outputs.image_emb.new_zeros(())
        sync = stage != "train"
        kind = self.device.type
        amp = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
        for obj in self.objectives:
            obj.autocast_dtype = amp
            if obj.stream == "expert" and "expert" not in outputs.extra and stage != "train":
                continue  # the expert stream feeds training only
            # losses in fp32 under bf16/fp16 autocast: logits at s = 100 and their softmax lose
            # too much in half precision
            with torch.autocast(self.device.type, enabled=False):
                result = obj(outputs, batch)
            loss = sum(result.losses.values())
            total = total + obj.weight * loss
            if stage == "train":
                self._terms[obj.name] = loss.detach()
            self.log(f"{stage}/{obj.name}", loss, sync_dist=sync, batch_size=len(batch))
            terms = result.losses if len(result.losses) > 1 else {}
            for key, value in (terms | result.scalars).items():
                self.log(f"{stage}/{obj.name}/{key}", value, sync_dist=sync, batch_size=len(batch))
            if stage == "train":
                log_images(self, obj.name, result.images)
        # not on the bar while training: Lightning would read it on the host after every step
        # (the fit command's bar shows it at logging steps, callbacks/progress_bar.py)
        bar = stage != "train"
        self.log(f"{stage}/loss", total, prog_bar=bar, sync_dist=sync, batch_size=len(batch))
        return total

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Name the missing, unexpected and mis-shaped keys when ``--ckpt_path`` was written by a
        different recipe than the config's, before Lightning's strict load lists them all."""
        if "state_dict" in checkpoint:
            check_resumable(self.state_dict(), checkpoint["state_dict"])

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        self._rate.log(self, len(batch))

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        if not self.automatic_optimization:  # grad_cache (switched on in setup)
            return self._grad_cache_step(batch)
        loss, _ = self._step(batch, "train")
        log_train_state(self, self.encoder.scale(), len(batch))
        # a non-finite loss still runs its backward (every rank's backward must reach every
        # parameter under DDP); the optimiser then drops the step on the device flag
        self._check_nonfinite(loss, len(batch))
        return loss

    def _check_nonfinite(self, loss: Tensor, batch_size: int) -> None:
        """Flag this step on the device if its loss is not finite on some rank (no host read)."""
        flag = self.nonfinite.check(loss, max_over_ranks, self.global_step, self._terms)
        if flag is not None:
            self.log("train/nonfinite_steps", self.nonfinite.total, batch_size=batch_size)

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        # the host reads the guard's counters only when Lightning writes the logs anyway
        connector = self.trainer._logger_connector
        if getattr(connector, "should_update_logs", True):
            self.nonfinite.report()

    def on_train_epoch_end(self) -> None:
        self.nonfinite.report()

    def on_train_end(self) -> None:
        self.nonfinite.report()

    def _grad_cache_step(self, batch: Batch) -> Tensor:
        """One optimiser step on the whole batch with the gradient cache (see ``grad_cache``)."""
        optimizer, strategy = self.optimizers(), self.trainer.strategy

        def embed(rows: slice) -> tuple[Tensor, Tensor | None]:
            ids, mask = batch.input_ids[rows], batch.attention_mask[rows]
            keys = batch.text_keys[rows]
            out = self.encoder(batch.images[rows], ids, mask, self.requires, keys)
            return out.image_emb.float(), None if out.text_emb is None else out.text_emb.float()

        def loss_of(emb: list[Tensor | None]) -> Tensor:
            assert emb[0] is not None
            scale = self.encoder.scale().float()
            outputs = ModelOutputs(image_emb=emb[0], text_emb=emb[1], scale=scale)
            return self._losses(outputs, batch, "train")

        optimizer.zero_grad()
        ddp = isinstance(strategy.model, DistributedDataParallel)
        # DDP would all-reduce at every chunk's backward; average once after the last instead
        with strategy.block_backward_sync() if ddp else nullcontext():  # type: ignore[attr-defined]
            loss = gc.grad_cache_backward(
                embed,
                len(batch),
                self.grad_cache,
                loss_of,
                self.manual_backward,
                self.encoder,
                self.device,
            )
        log_train_state(self, self.encoder.scale(), len(batch))
        self._check_nonfinite(loss, len(batch))
        if ddp:
            gc.average_gradients(self.parameters(), strategy.model.process_group)
        optimizer.step()  # clipping and the non-finite flag: on_before_optimizer_step
        scheduler = self.lr_schedulers()
        if scheduler is not None:  # stepped per optimiser step, as configure_optimizers asks
            scheduler.step()  # type: ignore[union-attr]
        self._after_optimizer_step()
        return loss

    def on_fit_start(self) -> None:
        # frozen towers and momentum encoders stay in eval mode by design
        quiet_eval_mode_warning(self)

    def setup(self, stage: str) -> None:
        if self.grad_cache and stage == "fit":
            gc.check_trainer(self.trainer)
            # Manual optimisation from here on: Lightning's check that refuses
            # Trainer(gradient_clip_val) with manual optimisation (it would not clip) has run
            # before this hook, and on_before_optimizer_step clips with the trainer's settings.
            self.automatic_optimization = False

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        flag = self.nonfinite.flag
        if flag is not None:  # no update at all (not even weight decay or momentum)
            drop_step_if(optimizer, flag)
        if not self.automatic_optimization:  # automatic optimisation clips after this hook
            trainer = self.trainer
            clip = trainer.gradient_clip_val, trainer.gradient_clip_algorithm
            self.configure_gradient_clipping(optimizer, *clip)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        # Lightning's own path refuses the fused optimiser under AMP
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        loss, outputs = self._step(batch, "val")
        # evaluation callbacks (zero-shot, retrieval) reuse these embeddings: no second pass
        return {
            "loss": loss,
            "image_emb": outputs.image_emb.detach(),
            "text_emb": outputs.text_emb.detach(),
        }

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        loss, outputs = self._step(batch, "test")
        return {"loss": loss, "image_emb": outputs.image_emb.detach()}

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        """Embeddings with the metadata needed to evaluate or index them; ``predict`` writes
        them with :class:`~fundus_lit.predict_writer.EmbeddingWriter`."""
        out = self(batch)
        return {
            "image_emb": out.image_emb,
            "text_emb": out.text_emb,
            "indices": batch.indices,
            "texts": batch.texts,  # what text_emb embeds: a drawn prompt, a report, a caption
            "datasets": batch.datasets,
            "categories": batch.categories,
        }

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)  # runs training_step inside
        self._after_optimizer_step()

    def _after_optimizer_step(self) -> None:
        # a dropped step moved nothing, so EMAs and queues must not move either: objectives
        # weigh their writes by the device flag
        taken = self.nonfinite.taken()
        for obj in self.objectives:
            obj.after_optimizer_step(self.encoder, taken)

    def configure_optimizers(self) -> dict[str, Any]:
        return adamw_with_schedule(
            self.named_parameters(), self.optim, self.trainer.estimated_stepping_batches
        )
