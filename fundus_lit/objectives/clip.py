"""CLIP baseline: symmetric InfoNCE over the global batch."""

from __future__ import annotations

from torch import Tensor

from fundus_lit.data.batch import Batch
from fundus_lit.models.outputs import ModelOutputs
from fundus_lit.objectives.base import Objective, ObjectiveOutput
from fundus_lit.objectives.distributed import gather_with_grad
from fundus_lit.objectives.functional import clip_loss


class CLIPObjective(Objective):
    """Image-text InfoNCE; each rank scores its local rows against the columns of all ranks.

    Subclasses that only change the targets (FLAIR's category-aware soft targets) override
    :meth:`loss`; the gathering stays here.
    """

    default_name = "clip"

    def forward(self, outputs: ModelOutputs, batch: Batch) -> ObjectiveOutput:
        assert outputs.text_emb is not None, "CLIPObjective needs text embeddings"
        image_cols, offset = gather_with_grad(outputs.image_emb)
        text_cols, _ = gather_with_grad(outputs.text_emb)
        loss = self.loss(outputs, batch, image_cols, text_cols, offset)
        return ObjectiveOutput(losses={"loss": loss})

    def loss(
        self,
        outputs: ModelOutputs,
        batch: Batch,
        image_cols: Tensor,
        text_cols: Tensor,
        offset: int,
    ) -> Tensor:
        """Loss of the local rows against the gathered columns (mean over local rows)."""
        return clip_loss(
            outputs.image_emb,
            text_cols,
            outputs.scale,
            row_offset=offset,
            text_rows=outputs.text_emb,
            image_cols=image_cols,
        )
