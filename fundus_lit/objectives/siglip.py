"""SigLIP: the pairwise sigmoid loss in place of InfoNCE (docs/objectives.md §9).

The worked example of docs/ARCHITECTURE.md ("add an objective"): a pure function in
functional.py, this module, a reference test, a recipe.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fundus_lit.core.distributed import gather_with_grad
from fundus_lit.data.batch import Batch
from fundus_lit.models.outputs import ModelOutputs
from fundus_lit.objectives.base import Objective, ObjectiveOutput
from fundus_lit.objectives.functional import siglip_loss


class SigLIPObjective(Objective):
    """Image-text sigmoid loss; each rank scores its images against the texts of all ranks.

    The learnable logit bias ``b`` belongs to this objective (it means nothing to any other), so
    a recipe gets it by listing the objective; the scale is the model's shared logit scale (the
    SigLIP paper starts it at 10: ``temperature: 0.1`` in the recipe).

    Args:
        weight: Multiplier of this objective's loss in the recipe's weighted sum.
        name: Prefix of the logged values.
        bias_init: Initial ``b``; -10 (the paper's) makes the many negatives start near
            probability 0, so early steps are not dominated by them.
    """

    default_name = "siglip"

    def __init__(self, weight: float = 1.0, name: str | None = None, bias_init: float = -10.0):
        super().__init__(weight, name)
        if not math.isfinite(bias_init):
            raise ValueError(f"bias_init must be finite, got {bias_init}")
        self.bias = nn.Parameter(torch.tensor(float(bias_init)))

    def forward(self, outputs: ModelOutputs, batch: Batch) -> ObjectiveOutput:
        outputs, batch = self.select(outputs, batch)
        assert outputs.text_emb is not None, "SigLIPObjective needs text embeddings"
        text_cols, offset = gather_with_grad(outputs.text_emb)
        loss = siglip_loss(
            outputs.image_emb,
            outputs.text_emb,
            outputs.scale,
            self.bias.float(),
            text_cols=text_cols,
            row_offset=offset,
        )
        return ObjectiveOutput(losses={"loss": loss}, scalars={"bias": self.bias.detach()})
