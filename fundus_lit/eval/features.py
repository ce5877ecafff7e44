"""Stream a data split through a frozen encoder once, keeping only per-sample rows.

Every evaluation task (zero-shot, probe, adapters, retrieval, case index) starts from the same
features, so a split is encoded once and its (N, D) rows reused; nothing N x N is ever built.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from fundus_lit.core.progress import progress
from fundus_lit.data.records import FundusRecord
from fundus_lit.models.dual_encoder import DualEncoder


@dataclass
class Features:
    """Rows of one split, in record order, on the CPU in float32.

    Attributes:
        image_emb: (N, D) projected, L2-normalised image embeddings.
        pooled: (N, F) vision-tower features before the projection, when asked for.
        text_emb: (N, D) embeddings of each record's text, when asked for.
        texts: The text of each record, as the data module's text builder drew it.
        records: The records themselves (paths, categories, dataset names).
    """

    image_emb: Tensor
    records: list[FundusRecord]
    pooled: Tensor | None = None
    text_emb: Tensor | None = None
    texts: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def extract_features(
    encoder: DualEncoder,
    loader: DataLoader,
    records: list[FundusRecord],
    *,
    pooled: bool = False,
    text: bool = False,
    device: torch.device | None = None,
    desc: str = "encoding images",
) -> Features:
    """Encode every batch of ``loader`` (sequential, unaugmented) and keep the rows asked for.

    ``records`` are the split's records in loader order; the batch indices are checked against
    them so a shuffled loader cannot silently misalign features and labels. Samples the data
    module skipped as unreadable (``data.bad_input: skip``) are left out of the features, and
    said so; the returned records are those that were encoded. ``desc`` names the split on
    the progress bar.
    """
    device = device or default_device()
    encoder.eval().to(device)
    emb, feats, text_emb, texts, order, skipped = [], [], [], [], [], []
    with progress(total=len(records), desc=desc, unit="img") as bar:
        for batch in loader:
            skipped.extend(batch.extra.get("skipped", []))
            images = batch.images.to(device, non_blocking=True)
            out = encoder.encode_image(images)
            emb.append(out["emb"].float().cpu())
            if pooled:
                feats.append(out["pooled"].float().cpu())
            if text:
                ids = batch.input_ids.to(device)
                mask = batch.attention_mask.to(device)
                text_emb.append(encoder.encode_text(ids, mask)["emb"].float().cpu())
                texts.extend(batch.texts)
            order.append(batch.indices.cpu())
            bar.update(len(batch.indices) + len(batch.extra.get("skipped", [])))
    indices = torch.cat(order) if order else torch.empty(0, dtype=torch.long)
    # increasing, within range, and every record either encoded or skipped
    increasing = bool((indices[1:] > indices[:-1]).all())
    in_range = not len(indices) or int(indices[-1]) < len(records)
    if not (increasing and in_range and len(indices) + len(skipped) == len(records)):
        raise RuntimeError(
            f"feature extraction expects a sequential loader over all {len(records)} records; "
            f"got {len(indices)} samples ({len(skipped)} skipped) in a different order"
        )
    if skipped:
        print(
            f"feature extraction: {len(skipped)} of {len(records)} samples were unreadable and "
            "are left out (data.bad_input: skip)",
            file=sys.stderr,
        )
    return Features(
        image_emb=torch.cat(emb),
        records=[records[i] for i in indices.tolist()],
        pooled=torch.cat(feats) if pooled else None,
        text_emb=torch.cat(text_emb) if text else None,
        texts=texts,
    )
