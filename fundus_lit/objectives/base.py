"""The seam every training method plugs into.

An objective is an ``nn.Module``: modules it creates in :meth:`Objective.attach` (decoders, momentum
encoders, queues) become part of the LightningModule, so the optimiser trains them and checkpoints
save them without any objective-specific code in the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from fundus_lit.data.batch import Batch
from fundus_lit.models.outputs import ALL_OUTPUTS, ModelOutputs

if TYPE_CHECKING:
    from fundus_lit.models.dual_encoder import DualEncoder


STREAMS = ("public", "expert")


@dataclass
class ObjectiveOutput:
    """Named loss terms (summed into the objective's loss) and what to log beside them."""

    losses: dict[str, Tensor]
    scalars: dict[str, Tensor | float] = field(default_factory=dict)
    images: dict[str, Tensor] = field(default_factory=dict)


class Objective(nn.Module):
    """Base class of all training objectives.

    Subclasses set ``requires`` (names from :data:`fundus_lit.models.outputs.ALL_OUTPUTS`),
    implement :meth:`forward`, and may override :meth:`attach` and :meth:`after_optimizer_step`.

    Args:
        weight: Multiplier of this objective's loss in the recipe's weighted sum.
        name: Prefix of this objective's logged values; defaults to the class's ``default_name``.
        stream: ``public`` (the main batch) or ``expert`` (the second stream of two-stream
            recipes, e.g. KeepFIT's atlas captions): which batch and model outputs it sees.
    """

    requires: ClassVar[frozenset[str]] = frozenset({"image_emb", "text_emb"})
    default_name: ClassVar[str] = "objective"

    def __init__(
        self, weight: float = 1.0, name: str | None = None, stream: str = "public"
    ) -> None:
        super().__init__()
        if stream not in STREAMS:
            raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
        self.stream = stream
        unknown = set(self.requires) - ALL_OUTPUTS
        if unknown:
            raise ValueError(f"{type(self).__name__} requires unknown outputs {sorted(unknown)}")
        self.weight = float(weight)
        self.name = name or self.default_name
        #: The trainer's autocast dtype, set by the training module before each call (losses
        #: run in fp32 with autocast off; forwards an objective runs itself may use it).
        self.autocast_dtype: torch.dtype | None = None

    def attach(self, encoder: DualEncoder, batch_size: int) -> None:
        """Build modules that depend on the encoder (feature sizes, a momentum copy) or on the
        per-device batch size (queues sized in multiples of it)."""

    def forward(self, outputs: ModelOutputs, batch: Batch) -> ObjectiveOutput:
        raise NotImplementedError

    def select(self, outputs: ModelOutputs, batch: Batch) -> tuple[ModelOutputs, Batch]:
        """The outputs and batch of this objective's stream."""
        if self.stream == "public":
            return outputs, batch
        if "expert" not in batch.extra or "expert" not in outputs.extra:
            raise ValueError(
                f"objective {self.name!r} uses the expert stream but the batch has none: give "
                "the data module `expert:` sources"
            )
        return outputs.extra["expert"], batch.extra["expert"]

    def after_optimizer_step(self, encoder: DualEncoder, taken: Tensor | None = None) -> None:
        """Runs once per optimiser step, after it (EMA updates, queue writes).

        ``taken`` is a device scalar, 1.0 if the step was taken and 0.0 if the non-finite guard
        dropped it (None: taken). Writes must be weighed by it rather than branch on it: reading
        it on the host would make every step wait for the GPU."""
