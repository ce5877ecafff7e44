"""FLAIR: CLIP whose targets are shared by all samples of one category."""

from __future__ import annotations

from torch import Tensor

from fundus_lit.data.batch import Batch
from fundus_lit.models.outputs import ModelOutputs
from fundus_lit.objectives.clip import CLIPObjective
from fundus_lit.objectives.distributed import gather_no_grad
from fundus_lit.objectives.functional import category_ids, category_targets, soft_clip_loss


class FLAIRObjective(CLIPObjective):
    """Category-aware contrastive loss (spec section 2).

    The category each text was built from (``batch.categories``, drawn per sample per epoch by the
    text builder) decides the soft targets; category ids are gathered across ranks with the
    embeddings, so R ranks compute the loss of the global batch.
    """

    default_name = "flair"

    def loss(
        self,
        outputs: ModelOutputs,
        batch: Batch,
        image_cols: Tensor,
        text_cols: Tensor,
        offset: int,
    ) -> Tensor:
        row_ids = category_ids(batch.categories, outputs.image_emb.device)
        targets = category_targets(row_ids, gather_no_grad(row_ids))
        return soft_clip_loss(
            outputs.image_emb,
            text_cols,
            outputs.text_emb,
            image_cols,
            outputs.scale,
            targets.to(outputs.image_emb.dtype),
        )
