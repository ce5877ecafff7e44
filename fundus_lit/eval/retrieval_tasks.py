"""The retrieval tasks of an evaluation, on top of ``retrieval_metrics``.

Shared by ``fundus-lit evaluate`` and the validation callback so both report the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from fundus_lit.knowledge import category_key

Relevance = Literal["categories", "class"]


def case_keys(categories: Sequence[Sequence[str]], relevance: Relevance) -> list[frozenset]:
    """Relevance keys of case retrieval: the record's category set (any shared category makes a
    case relevant) or its first category only. A record without categories matches nothing."""
    if relevance == "class":
        categories = [cats[:1] for cats in categories]
    return [frozenset(category_key(c) for c in cats) for cats in categories]


def pair_retrieval(
    image_emb: Tensor,
    text_emb: Tensor,
    texts: Sequence[str],
    ks: Sequence[int] = (1, 5, 10),
    tasks: Sequence[str] = ("i2t", "t2i"),
    device: str = "auto",
) -> dict[str, dict]:
    """Image->text and text->image retrieval where an image's relevant text is its own.

    Category prompts repeat ("A fundus photograph of glaucoma" for many images), so identical
    texts are merged into one gallery item: otherwise a query would be scored against copies of
    its own text and the tie rule, not the model, would decide R@1.
    """
    from fundus_lit.eval.retrieval import retrieval_metrics

    unique: dict[str, int] = {}
    text_of = np.array([unique.setdefault(t, len(unique)) for t in texts], dtype=np.int64)
    first = np.unique(text_of, return_index=True)[1]
    gallery = text_emb[torch.from_numpy(first)]
    ids = np.arange(len(unique))
    result: dict[str, dict] = {}
    if "i2t" in tasks:
        r = retrieval_metrics(image_emb, gallery, text_of, ids, tuple(ks), device=device)
        result["i2t"] = r | {"gallery": len(unique)}
    if "t2i" in tasks:
        r = retrieval_metrics(gallery, image_emb, ids, text_of, tuple(ks), device=device)
        result["t2i"] = r | {"gallery": len(texts)}
    return result


def case_retrieval(
    query_emb: Tensor,
    query_categories: Sequence[Sequence[str]],
    gallery_emb: Tensor | None = None,
    gallery_categories: Sequence[Sequence[str]] | None = None,
    ks: Sequence[int] = (1, 5, 10),
    relevance: Relevance = "categories",
    device: str = "auto",
) -> dict:
    """Image->image case retrieval against a gallery, or leave-one-out among the queries when
    there is none (each image's own copy is never counted as a hit)."""
    from fundus_lit.eval.retrieval import retrieval_metrics

    keys = case_keys(query_categories, relevance)
    if gallery_emb is None:
        r = retrieval_metrics(
            query_emb, query_emb, keys, keys, tuple(ks), exclude_self=True, device=device
        )
        return r | {"gallery": len(keys) - 1, "relevance": relevance}
    gallery_keys = case_keys(gallery_categories or [], relevance)
    r = retrieval_metrics(query_emb, gallery_emb, keys, gallery_keys, tuple(ks), device=device)
    return r | {"gallery": len(gallery_keys), "relevance": relevance}
