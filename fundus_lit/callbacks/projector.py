"""The embedding projector at the end of fit: the validation images' embeddings, metadata and
thumbnails in the run's TensorBoard directory, from the validation pass (no extra forward)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from fundus_lit.eval.projector import ProjectorOptions


class EmbeddingProjector(L.Callback):
    """Validation image embeddings for TensorBoard's projector, written when fit ends.

    Each validation epoch keeps, for at most ``max_points`` validation images (the same sample
    every epoch and every run), the image embedding and a thumbnail of the image the model saw;
    rows are gathered from every rank with their sample indices, each image once. When fit ends,
    rank 0 writes the last validation epoch's rows, with each image's dataset, first category and
    attributes, into the TensorBoard logger's run directory (``projector/fit_val_step<N>/``,
    listed in ``projector_config.pbtxt``): TensorBoard shows them under PROJECTOR. A run without
    a TensorBoard logger or without a validation epoch writes none. ``fit`` adds one to every
    run, configured under ``projector.`` (``--projector.max_points 0`` turns it off).

    Args:
        max_points: Validation images written at most; 0 writes no projector.
        thumbnail_size: Side of each image's thumbnail in the sprite, in pixels (smaller when
            the sprite would exceed the projector's 8192 px).
    """

    def __init__(self, max_points: int = 1000, thumbnail_size: int = 32) -> None:
        from fundus_lit.eval.projector import tile_size

        self.options = ProjectorOptions(max_points, thumbnail_size)
        self.side = tile_size(max_points, thumbnail_size)
        self._chosen = None  # (n_val,) bool on the module's device, during a validation epoch
        self._rows: list = []
        self.last: tuple | None = None  # (indices, emb, thumbs, step), on rank 0
        self.written: Path | None = None

    @staticmethod
    def _records(trainer: L.Trainer) -> list | None:
        splits = getattr(trainer.datamodule, "splits", None) or {}
        items = splits.get("val")
        # (source, record) pairs of images; a text-only data module (text pretraining) has
        # other items and no image embeddings to project. A split holds one kind of item, so
        # the first tells (a loop over a million-image split would run every epoch)
        first = items[0] if items else None
        if not (isinstance(first, tuple) and len(first) == 2 and hasattr(first[1], "categories")):
            return None
        return [record for _, record in items]

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        import torch

        from fundus_lit.eval.projector import sample_points

        self._rows, self._chosen = [], None
        fitting = trainer.state.fn == "fit"
        if not fitting or trainer.sanity_checking or self.options.max_points == 0:
            return
        records = self._records(trainer)
        if records:
            self._chosen = torch.zeros(len(records), dtype=torch.bool, device=pl_module.device)
            self._chosen[sample_points(len(records), self.options.max_points)] = True

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if self._chosen is None or not isinstance(outputs, dict) or "image_emb" not in outputs:
            return
        from fundus_lit.eval.projector import thumbnails

        indices = batch.indices.to(self._chosen.device)
        keep = self._chosen[indices].nonzero().squeeze(1)
        images = batch.images.index_select(0, keep.to(batch.images.device))
        self._rows.append(
            (
                indices[keep],
                outputs["image_emb"].detach().float()[keep.to(outputs["image_emb"].device)],
                thumbnails(images, self.side),
            )
        )

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if self._chosen is None or not self._rows:
            return
        import torch

        from fundus_lit.core.distributed import gather_rows

        columns = [torch.cat(column) for column in zip(*self._rows)]
        indices, emb, thumbs = gather_rows(*columns)  # a collective: every rank takes part
        self._rows = []
        if trainer.global_rank == 0:
            self.last = (indices.cpu(), emb.cpu(), thumbs.cpu(), trainer.global_step)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.global_rank != 0 or self.last is None:
            return
        log_dir = next(
            (lg.log_dir for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None
        )
        records = self._records(trainer)
        if log_dir is None or records is None:
            rank_zero_info("embedding projector: no TensorBoard logger, nothing written")
            return
        from fundus_lit.eval.projector import write_projector

        indices, emb, thumbs, step = self.last
        self.written = write_projector(
            log_dir, f"fit_val_step{step}", emb, [records[i] for i in indices.tolist()], thumbs
        )
        rank_zero_info(f"embedding projector: {len(indices)} validation images in {log_dir}")
