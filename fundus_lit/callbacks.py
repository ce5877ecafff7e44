"""Lightning callbacks that belong to fundus-lit runs."""

from __future__ import annotations

import math
from collections import deque

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn


class RunReport(L.Callback):
    """At the end of ``fit``, say where the logs and checkpoints are and how the loss moved.

    The first and last values are means over the first and last ``window`` training steps, so
    one noisy batch does not decide the story. Losses stay on the device until the end: reading
    them each step would synchronise the accelerator every step.
    """

    def __init__(self, window: int = 5) -> None:
        self.window = window
        self.first: list = []
        self.last: deque = deque(maxlen=window)
        self.steps = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            loss = loss.detach()
            if len(self.first) < self.window:
                self.first.append(loss)
            self.last.append(loss)
            self.steps += 1

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        lines = [f"logs (TensorBoard): {trainer.log_dir}"]
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint):
                if cb.best_model_path:
                    lines.append(f"best checkpoint: {cb.best_model_path}")
                if cb.last_model_path:
                    lines.append(f"last checkpoint: {cb.last_model_path}")
        if self.steps:
            k = len(self.first)
            start = sum(float(x) for x in self.first) / k
            end = sum(float(x) for x in self.last) / k
            lines.append(
                f"train loss: start {start:.4f} -> end {end:.4f} "
                f"(mean of first/last {k} of {self.steps} steps; log B = "
                f"{math.log(max(2, pl_module.hparams.get('batch_size', 2))):.4f})"
            )
        print("\n".join(["", "fundus-lit run report", *("  " + x for x in lines)]), flush=True)


class ZeroShotEvaluation(L.Callback):
    """Zero-shot classification on the validation split, from the validation pass's embeddings.

    Logs ``val/zeroshot/{aca,kappa,f1,auc}`` every ``every_n_epochs`` epochs; embeddings and
    classes are gathered over all ranks first.

    Args:
        classes: Class names (a sample's class is the first category of its record).
        knowledge: Extra knowledge YAML files over the built-in dictionary.
        renormalize: L2-normalise each class prototype.
        every_n_epochs: Evaluate on every n-th validation epoch.
    """

    def __init__(
        self,
        classes: list[str],
        knowledge: list[str] | None = None,
        renormalize: bool = True,
        every_n_epochs: int = 1,
    ) -> None:
        from fundus_lit.eval.zeroshot import ZeroShot

        self.zeroshot = ZeroShot(classes, knowledge, renormalize)
        self.every_n_epochs = every_n_epochs
        self._emb: list = []
        self._targets: list = []
        self._tokenizer = None
        self.last: dict | None = None

    def _active(self, trainer: L.Trainer) -> bool:
        return not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        self._emb, self._targets = [], []

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if self._active(trainer) and isinstance(outputs, dict) and "image_emb" in outputs:
            self._emb.append(outputs["image_emb"])
            self._targets.append(
                self.zeroshot.targets(batch.record_categories).to(pl_module.device)
            )

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if not self._active(trainer) or not self._emb:
            return
        import torch

        from fundus_lit.core.resolve import load_tokenizer

        emb, targets = torch.cat(self._emb), torch.cat(self._targets)
        if trainer.world_size > 1:
            emb = pl_module.all_gather(emb).flatten(0, 1)
            targets = pl_module.all_gather(targets).flatten()
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(pl_module.hparams["text"]["name"])
        encoder = pl_module.encoder
        protos = self.zeroshot.prototypes(
            encoder, self._tokenizer, pl_module.hparams["text"]["max_length"]
        )
        self.last = self.zeroshot.evaluate(emb, targets, protos, encoder.scale())
        for key in ("aca", "kappa", "f1", "auc"):
            pl_module.log(f"val/zeroshot/{key}", self.last[key], rank_zero_only=True)


class RetrievalEvaluation(L.Callback):
    """Retrieval on the validation split, from the validation pass's embeddings.

    Logs ``val/retrieval/{i2t,t2i}/R@k`` (an image's own text is relevant; identical texts are
    one item) and ``val/retrieval/i2i/{R@k,mAP@k}`` (leave-one-out case retrieval among the
    validation images, relevant when they share a category). Rows from every rank are gathered
    first; the metrics are computed on rank 0 with a FAISS exact index.

    Args:
        ks: Cut-offs of R@k and mAP@k.
        tasks: Any of ``i2t``, ``t2i``, ``i2i``.
        case_relevance: ``categories`` (share any category) or ``class`` (same first category).
        every_n_epochs: Evaluate on every n-th validation epoch.
    """

    def __init__(
        self,
        ks: list[int] | None = None,
        tasks: list[str] | None = None,
        case_relevance: str = "categories",
        every_n_epochs: int = 1,
    ) -> None:
        self.ks = list(ks or [1, 5, 10])
        self.tasks = list(tasks or ["i2t", "t2i", "i2i"])
        unknown = set(self.tasks) - {"i2t", "t2i", "i2i"}
        if unknown:
            raise ValueError(f"unknown retrieval task(s) {sorted(unknown)}; use i2t, t2i, i2i")
        self.case_relevance = case_relevance
        self.every_n_epochs = every_n_epochs
        self._rows: list = []
        self.last: dict | None = None

    def _active(self, trainer: L.Trainer) -> bool:
        return not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        self._rows = []

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if self._active(trainer) and isinstance(outputs, dict) and "text_emb" in outputs:
            self._rows.append(
                (
                    outputs["image_emb"].float().cpu(),
                    outputs["text_emb"].float().cpu(),
                    list(batch.texts),
                    list(batch.record_categories),
                )
            )

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if not self._active(trainer):
            return
        import torch

        from fundus_lit.eval.retrieval_tasks import case_retrieval, pair_retrieval

        rows = self._rows
        if trainer.world_size > 1:
            gathered: list = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        if trainer.global_rank != 0 or not rows:
            return
        image = torch.cat([r[0] for r in rows])
        text = torch.cat([r[1] for r in rows])
        texts = [t for r in rows for t in r[2]]
        cats = [c for r in rows for c in r[3]]
        result: dict = {}
        if {"i2t", "t2i"} & set(self.tasks):
            result |= pair_retrieval(image, text, texts, self.ks, self.tasks, "auto")
        if "i2i" in self.tasks:
            try:
                result["i2i"] = case_retrieval(
                    image, cats, ks=self.ks, relevance=self.case_relevance
                )
            except ValueError as err:  # no validation image shares a category with another
                rank_zero_warn(f"image->image retrieval skipped: {err}")
        self.last = result
        for task, metrics in result.items():
            for key, value in metrics.items():
                if key.startswith(("R@", "mAP@")):
                    pl_module.log(f"val/retrieval/{task}/{key}", value, rank_zero_only=True)


class AccuracyCurve(L.Callback):
    """Records a validation metric against training seconds and steps: the time-to-accuracy
    curve, written as ``<name>.json`` and ``<name>.png`` into the run's log directory.

    Seconds are wall-clock of the training loop (data loading included) with validation and the
    sanity check taken out, so the curve does not depend on how often it is sampled. The state
    travels in checkpoints: a resumed run continues its curve.

    Args:
        monitor: Logged metric to record (default: the zero-shot ACA of
            :class:`ZeroShotEvaluation`, which must come before this callback).
        target: Value whose first crossing is reported (seconds and step); None = no target.
        name: File stem of the outputs.
    """

    def __init__(
        self,
        monitor: str = "val/zeroshot/aca",
        target: float | None = 0.7,
        name: str = "accuracy_curve",
    ) -> None:
        self.monitor, self.target, self.name = monitor, target, name
        self.points: list[dict[str, float]] = []
        self.seconds = 0.0  # training seconds before this process's fit (from a checkpoint)
        self._since: float | None = None
        self._fitting = False  # between on_train_start and on_train_end
        self.paths: dict[str, str] = {}

    def state_dict(self) -> dict:
        return {"points": self.points, "seconds": self._elapsed()}

    def load_state_dict(self, state: dict) -> None:
        self.points, self.seconds = list(state["points"]), float(state["seconds"])

    def _elapsed(self) -> float:
        import time

        return self.seconds + (time.perf_counter() - self._since if self._since else 0.0)

    def _pause(self) -> None:
        self.seconds, self._since = self._elapsed(), None

    def _resume(self) -> None:
        import time

        self._since = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self._fitting = True
        self._resume()

    def on_validation_start(self, trainer: L.Trainer, pl_module) -> None:
        if self._since is not None:
            self._pause()

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None:
            point = {"step": trainer.global_step, "seconds": round(self.seconds, 3)}
            self.points.append(point | {"value": float(value)})
        if self._fitting:  # trainer.training is False here: the stage is validation
            self._resume()

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self._fitting = False
        if self._since is not None:
            self._pause()

    def reached(self) -> dict[str, float] | None:
        """The first recorded point at or above the target."""
        if self.target is None:
            return None
        return next((p for p in self.points if p["value"] >= self.target), None)

    def summary(self) -> dict:
        return {
            "monitor": self.monitor,
            "target": self.target,
            "reached": self.reached(),
            "train_seconds": round(self.seconds, 3),
            "points": self.points,
        }

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        import json
        from pathlib import Path

        from fundus_lit.eval.report import curve_figure

        if not self.points or trainer.log_dir is None:
            return
        out = Path(trainer.log_dir)
        out.mkdir(parents=True, exist_ok=True)
        json_path, png_path = out / f"{self.name}.json", out / f"{self.name}.png"
        json_path.write_text(json.dumps(self.summary(), indent=2) + "\n")
        fig = curve_figure(self.points, self.monitor, self.target)
        fig.savefig(png_path, dpi=120)
        import matplotlib.pyplot as plt

        plt.close(fig)
        self.paths = {"json": str(json_path), "png": str(png_path)}
        hit = self.reached()
        when = (
            f"{self.target:g} reached at step {hit['step']}, {hit['seconds']:.0f} s of training"
            if hit
            else f"{self.target:g} not reached (best {max(p['value'] for p in self.points):.3f})"
            if self.target is not None
            else ""
        )
        print(f"\n{self.monitor} curve: {png_path}" + (f" ({when})" if when else ""), flush=True)
