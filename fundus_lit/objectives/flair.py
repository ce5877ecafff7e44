"""FLAIR: CLIP whose targets are shared by all samples of one category."""

from __future__ import annotations

from torch import Tensor

from fundus_lit.core.distributed import gather_no_grad
from fundus_lit.data.batch import Batch
from fundus_lit.objectives.clip import CLIPObjective
from fundus_lit.objectives.functional import category_ids, category_targets


class FLAIRObjective(CLIPObjective):
    """Category-aware contrastive loss (docs/objectives.md §2).

    The category each text was built from (``batch.categories``, drawn per sample per epoch by the
    text builder) decides the soft targets; category ids are gathered across ranks with the
    embeddings, so R ranks compute the loss of the global batch.
    """

    default_name = "flair"

    def targets(self, batch: Batch, offset: int, columns: int, rows: Tensor) -> Tensor:
        row_ids = category_ids(batch.categories, rows.device)
        return category_targets(row_ids, gather_no_grad(row_ids)).to(rows.dtype)
