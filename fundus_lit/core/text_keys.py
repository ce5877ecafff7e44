"""Host-side keys of tokenised texts, shared by the collate function that makes them and the
frozen text tower's cache that looks texts up by them."""

from __future__ import annotations

from torch import Tensor

#: per row: the token ids without padding (bytes) and the padded width of the batch
TextKey = tuple[bytes, int]


def text_keys(input_ids: Tensor, attention_mask: Tensor) -> list[TextKey]:
    """The keys of each row of host tensors. Made where the ids are still on the host (the
    collate function, in data workers): reading them back from the device would make every
    training step wait for the GPU."""
    width = input_ids.shape[1]
    return [
        (ids[mask.bool()].numpy().tobytes(), width) for ids, mask in zip(input_ids, attention_mask)
    ]
