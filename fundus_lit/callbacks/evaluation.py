"""Evaluation during training: zero-shot classification and retrieval on the validation pass's
embeddings, so the curves in TensorBoard come at no extra forward pass."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn


class ZeroShotEvaluation(L.Callback):
    """Zero-shot classification on the validation split, from the validation pass's embeddings.

    Logs ``val/zeroshot/{aca,kappa,f1,auc}`` every ``every_n_epochs`` epochs; embeddings and
    classes are gathered over all ranks first, with their sample indices, so the samples a
    distributed sampler repeats to even out the ranks count once: the metrics are those of one
    process on the whole split.

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
        self._indices: list = []
        self._tokenizer = None
        self.last: dict | None = None

    def _active(self, trainer: L.Trainer) -> bool:
        return not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        self._emb, self._targets, self._indices = [], [], []

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if self._active(trainer) and isinstance(outputs, dict) and "image_emb" in outputs:
            self._emb.append(outputs["image_emb"])
            self._targets.append(
                self.zeroshot.targets(batch.record_categories).to(pl_module.device)
            )
            self._indices.append(batch.indices.to(pl_module.device))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if not self._active(trainer) or not self._emb:
            return
        import torch

        from fundus_lit.core.distributed import gather_rows
        from fundus_lit.core.resolve import load_tokenizer

        indices = torch.cat(self._indices)
        _, emb, targets = gather_rows(indices, torch.cat(self._emb), torch.cat(self._targets))
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
    first, each sample once (a distributed sampler repeats some to even out the ranks) and in
    split order; the metrics are computed on rank 0 with a FAISS exact index.

    Logs the TensorBoard image ``val/retrieval/examples`` too: a few validation queries (the same
    ones every epoch), each with its top images and top texts, framed green when relevant as the
    metrics count it and red when not; their images are re-opened from the data module.

    Args:
        ks: Cut-offs of R@k and mAP@k.
        tasks: Any of ``i2t``, ``t2i``, ``i2i``.
        case_relevance: ``categories`` (share any category) or ``class`` (same first category).
        every_n_epochs: Evaluate on every n-th validation epoch.
        images_every_n_epochs: Draw the examples on evaluated epochs that are multiples of this
            (0: never).
        image_queries: Queries drawn, spread evenly over the validation split.
        image_k: Hits drawn per query and task.
    """

    def __init__(
        self,
        ks: list[int] | None = None,
        tasks: list[str] | None = None,
        case_relevance: str = "categories",
        every_n_epochs: int = 1,
        images_every_n_epochs: int = 1,
        image_queries: int = 4,
        image_k: int = 5,
    ) -> None:
        self.ks = list(ks or [1, 5, 10])
        self.tasks = list(tasks or ["i2t", "t2i", "i2i"])
        unknown = set(self.tasks) - {"i2t", "t2i", "i2i"}
        if unknown:
            raise ValueError(f"unknown retrieval task(s) {sorted(unknown)}; use i2t, t2i, i2i")
        self.case_relevance = case_relevance
        self.every_n_epochs = every_n_epochs
        self.images_every_n_epochs, self.image_queries = images_every_n_epochs, image_queries
        self.image_k = image_k
        self._rows: list = []
        self.last: dict | None = None
        self.picture = None  # the last examples drawn (a PIL image)

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
                    batch.indices.cpu(),
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
        from fundus_lit.core.distributed import first_per_index

        indices = torch.cat([r[4] for r in rows])
        keep = first_per_index(indices).tolist()
        image = torch.cat([r[0] for r in rows])[keep]
        text = torch.cat([r[1] for r in rows])[keep]
        texts = [t for r in rows for t in r[2]]
        cats = [c for r in rows for c in r[3]]
        texts, cats = [texts[i] for i in keep], [cats[i] for i in keep]
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
        every = self.images_every_n_epochs
        if every > 0 and self.image_queries > 0 and trainer.current_epoch % every == 0:
            try:
                self._draw(trainer, image, text, texts, cats, indices[keep].tolist())
            except Exception as err:  # a picture is not worth a training run
                rank_zero_warn(f"retrieval examples not drawn: {type(err).__name__}: {err}")

    def _draw(self, trainer: L.Trainer, image, text, texts, cats, indices: list[int]) -> None:
        """Re-open the few images drawn from the data module's validation split."""
        dm = getattr(trainer, "datamodule", None)
        val = getattr(dm, "splits", {}).get("val")
        if not val:  # loaders given without a data module: no images to re-open
            return
        import numpy as np

        from fundus_lit.eval.pictures import examples_picture

        self.picture = examples_picture(
            [val[i] for i in indices],
            image,
            cats if "i2i" in self.tasks else None,
            self.image_queries,
            self.image_k,
            text if "i2t" in self.tasks else None,
            texts,
            relevance=self.case_relevance,
            crop_fov=getattr(dm, "crop_fov", True),
        )
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                array, step = np.asarray(self.picture), trainer.global_step
                experiment.add_image("val/retrieval/examples", array, step, dataformats="HWC")
