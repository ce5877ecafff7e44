"""The batch that flows from the collate function to the model and objectives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from fundus_lit.core.text_keys import TextKey


@dataclass
class Batch:
    """One collated batch. Tensors move to the device with Lightning; string lists stay on the host.

    Attributes:
        images: (B, 3, H, W) uint8; the vision tower converts and normalises on the device, so the
            host-to-device copy is 4x smaller than float.
        input_ids / attention_mask: tokenised text (tokenised in the collate function, in workers).
        texts: the strings that were tokenised (for logging and text caches).
        categories: the category each text was built from (empty string = no category); contrastive
            objectives such as FLAIR use it for their targets.
        datasets: source dataset name of each sample.
        indices: record index of each sample in its split.
        labels: (B, C) multi-hot label vectors when the source provides them.
        record_categories: every category of each sample's record, as written (evaluation takes
            the first as the class).
        text_keys: per row, the token ids without padding (bytes) and the padded length, made on
            the host by the collate function: a frozen text tower's cache looks texts up by
            them, where reading the ids back from the device would stall every step.
    """

    images: Tensor
    input_ids: Tensor
    attention_mask: Tensor
    texts: list[str]
    categories: list[str]
    datasets: list[str]
    indices: Tensor
    labels: Tensor | None = None
    record_categories: list[tuple[str, ...]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the expert stream's Batch
    text_keys: list[TextKey] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]
