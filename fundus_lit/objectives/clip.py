"""CLIP baseline: symmetric InfoNCE over the global batch."""

from __future__ import annotations

import torch
from torch import Tensor

from fundus_lit.core.distributed import gather_with_grad
from fundus_lit.data.batch import Batch
from fundus_lit.models.outputs import ModelOutputs
from fundus_lit.objectives.base import Objective, ObjectiveOutput
from fundus_lit.objectives.functional import soft_clip_loss


class CLIPObjective(Objective):
    """Image-text InfoNCE; each rank scores its local rows against the columns of all ranks.

    Subclasses that only change the targets (FLAIR's category-aware soft targets) override
    :meth:`targets`; gathering and the loss stay here.
    """

    default_name = "clip"

    def forward(self, outputs: ModelOutputs, batch: Batch) -> ObjectiveOutput:
        outputs, batch = self.select(outputs, batch)
        assert outputs.text_emb is not None, "CLIPObjective needs text embeddings"
        image_cols, offset = gather_with_grad(outputs.image_emb)
        text_cols, _ = gather_with_grad(outputs.text_emb)
        targets = self.targets(batch, offset, image_cols.shape[0], outputs.image_emb)
        loss = soft_clip_loss(
            outputs.image_emb, text_cols, outputs.text_emb, image_cols, outputs.scale, targets
        )
        return ObjectiveOutput(losses={"loss": loss})

    def targets(self, batch: Batch, offset: int, columns: int, rows: Tensor) -> Tensor:
        """(local rows, global columns) target matrix: row i's pair sits at column offset + i."""
        eye = torch.zeros(rows.shape[0], columns, dtype=rows.dtype, device=rows.device)
        index = torch.arange(rows.shape[0], device=rows.device)
        eye[index, offset + index] = 1.0
        return eye
