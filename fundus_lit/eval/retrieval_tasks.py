"""The retrieval tasks of an evaluation, on top of ``retrieval_metrics``.

Shared by ``fundus-lit evaluate`` and the validation callback so both report the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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


def unique_texts(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The text gallery of pair retrieval: each row's gallery item (identical texts are one
    item) and the first row of each item."""
    unique: dict[str, int] = {}
    text_of = np.array([unique.setdefault(t, len(unique)) for t in texts], dtype=np.int64)
    return text_of, np.unique(text_of, return_index=True)[1]


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

    text_of, first = unique_texts(texts)
    gallery = text_emb[torch.from_numpy(first)]
    ids = np.arange(len(first))
    result: dict[str, dict] = {}
    if "i2t" in tasks:
        r = retrieval_metrics(image_emb, gallery, text_of, ids, tuple(ks), device=device)
        result["i2t"] = r | {"gallery": len(first)}
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


def example_queries(rows: int, count: int) -> list[int]:
    """``count`` query rows spread evenly over ``rows`` (first and last included): the same
    queries at every epoch and in every run over the same split."""
    if rows < 1 or count < 1:
        return []
    return sorted({int(i) for i in np.linspace(0, rows - 1, min(count, rows)).round()})


@dataclass
class Example:
    """One query's top hits for a picture. ``images``: (gallery row, score, relevant) of
    image->image retrieval; ``texts``: (query-split row whose text it is, score, relevant) of
    image->text retrieval. Relevance is the metrics' own rule: a shared category (or the first
    one, ``relevance="class"``) for images, the query's own text for texts."""

    query: int
    images: list[tuple[int, float, bool]] = field(default_factory=list)
    texts: list[tuple[int, float, bool]] = field(default_factory=list)


def retrieval_examples(
    queries: Sequence[int],
    image_emb: Tensor,
    categories: Sequence[Sequence[str]] | None,
    k: int,
    text_emb: Tensor | None = None,
    texts: Sequence[str] | None = None,
    gallery_emb: Tensor | None = None,
    gallery_categories: Sequence[Sequence[str]] | None = None,
    relevance: Relevance = "categories",
    device: str = "auto",
) -> list[Example]:
    """The top ``k`` images (against the gallery, or leave-one-out among the rows when there is
    none, as :func:`case_retrieval` ranks them) and the top ``k`` texts (against the rows' own
    distinct texts, as :func:`pair_retrieval`) of each query row. ``categories=None`` leaves the
    image side empty, ``text_emb=None`` the text side."""
    from fundus_lit.eval.retrieval import ranked_hits

    examples = [Example(int(q)) for q in queries]
    if not examples:
        return examples
    rows = torch.as_tensor(list(queries), dtype=torch.long)
    if categories is not None:
        keys = case_keys(categories, relevance)
        query_keys = [keys[q.query] for q in examples]
        if gallery_emb is None:
            found = ranked_hits(
                image_emb[rows], image_emb, query_keys, keys, k, exclude=rows.numpy(), device=device
            )
        else:
            gallery_keys = case_keys(gallery_categories or [], relevance)
            found = ranked_hits(
                image_emb[rows], gallery_emb, query_keys, gallery_keys, k, device=device
            )
        for example, hits in zip(examples, zip(*found)):
            example.images = [(int(i), float(s), bool(r)) for s, i, r in zip(*hits) if i >= 0]
    if text_emb is not None and texts is not None:
        text_of, first = unique_texts(texts)
        found = ranked_hits(
            image_emb[rows],
            text_emb[torch.from_numpy(first)],
            text_of[rows.numpy()],
            np.arange(len(first)),
            k,
            device=device,
        )
        for example, hits in zip(examples, zip(*found)):
            example.texts = [(int(first[i]), float(s), bool(r)) for s, i, r in zip(*hits) if i >= 0]
    return examples
