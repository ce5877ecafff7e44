"""Exact retrieval evaluation (image<->text and case retrieval) on a FAISS inner-product index.

Scoring every query against every gallery item is what the dense, torchmetrics-style evaluation
does; at 100k x 100k that matrix alone is 40 GB. Here FAISS finds the top k of each query
block, so memory stays O(block * k) on top of the gallery copy held by the index, and the
metrics need only the top k ids plus per-query relevant counts taken from key histograms. The
search itself (index, exact top k, tie-breaking) is in :mod:`fundus_lit.eval.faiss_search`.

Rankings are deterministic: inner product descending, ties broken by the lower gallery index.
FAISS returns tied items in an arbitrary order (the CPU flat index was measured to prefer higher
ids), which would make R@1 depend on the FAISS version and thread count whenever embeddings tie,
e.g. duplicated report texts. :func:`exact_search` re-sorts and widens its window until every
tie at the k-th place is settled.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fundus_lit.eval.faiss_search import as_matrix, build_index, exact_search, faiss_gpu_available

__all__ = [
    "build_index",
    "exact_search",
    "faiss_gpu_available",
    "ranked_hits",
    "retrieval_metrics",
]


def _is_set_key(key: Any) -> bool:
    return isinstance(key, (set, frozenset, list))


def _key_list(keys: Any, name: str, rows: int, rows_name: str) -> list[Any]:
    """Python-level keys; tensors and arrays are unpacked because a 0-d tensor hashes by
    identity, so two equal labels would never match."""
    if hasattr(keys, "tolist"):
        keys = keys.tolist()
    keys = list(keys)
    if len(keys) != rows:
        raise ValueError(f"{name} has {len(keys)} entries but {rows_name} has {rows} rows")
    return keys


@dataclass
class _Relevance:
    """Relevance between query and gallery keys through integer codes.

    Scalar keys share one code space and match on equal codes. Set keys get one code per
    distinct set on each side and a (distinct query sets x distinct gallery sets) overlap matrix,
    small for multi-label records, where the (Q, G) matrix would not be.
    """

    q_codes: np.ndarray
    g_codes: np.ndarray
    overlap: np.ndarray | None  # None: scalar keys

    def relevant(self, q_rows: np.ndarray, g_ids: np.ndarray) -> np.ndarray:
        """(n, k) bool for query rows ``q_rows`` (n,) against gallery ids (n, k); id -1 is never
        relevant."""
        valid = g_ids >= 0
        g = self.g_codes[np.where(valid, g_ids, 0)]
        q = self.q_codes[q_rows][:, None]
        hit = (g == q) if self.overlap is None else self.overlap[q, g]
        return hit & valid

    def counts(self) -> np.ndarray:
        """Relevant gallery items per query, from a histogram of the gallery codes."""
        if self.overlap is None:
            size = max(self.q_codes.max(initial=-1), self.g_codes.max(initial=-1)) + 1
            return np.bincount(self.g_codes, minlength=size)[self.q_codes]
        hist = np.bincount(self.g_codes, minlength=self.overlap.shape[1])
        return (self.overlap.astype(np.int64) @ hist)[self.q_codes]


def _scalar_relevance(query_keys: list[Hashable], gallery_keys: list[Hashable]) -> _Relevance:
    codes: dict[Hashable, int] = {}
    g = np.array([codes.setdefault(key, len(codes)) for key in gallery_keys], dtype=np.int64)
    q = np.array([codes.setdefault(key, len(codes)) for key in query_keys], dtype=np.int64)
    return _Relevance(q, g, None)


def _set_relevance(query_keys: list[Any], gallery_keys: list[Any]) -> _Relevance:
    q_sets: dict[frozenset, int] = {}
    g_sets: dict[frozenset, int] = {}
    q = np.array([q_sets.setdefault(frozenset(k), len(q_sets)) for k in query_keys], np.int64)
    g = np.array([g_sets.setdefault(frozenset(k), len(g_sets)) for k in gallery_keys], np.int64)
    holders: dict[Hashable, list[int]] = {}
    for gset, code in g_sets.items():
        for element in gset:
            holders.setdefault(element, []).append(code)
    overlap = np.zeros((len(q_sets), len(g_sets)), dtype=bool)
    for qset, code in q_sets.items():
        for element in qset:
            overlap[code, holders.get(element, [])] = True
    return _Relevance(q, g, overlap)


def _relevance(query_keys: list[Any], gallery_keys: list[Any]) -> _Relevance:
    kinds = {_is_set_key(key) for key in [*query_keys, *gallery_keys]}
    if len(kinds) > 1:
        raise ValueError(
            "query_keys and gallery_keys mix set-like keys (set/frozenset/list) with scalar "
            "keys; use one kind for both"
        )
    if kinds == {True}:
        return _set_relevance(query_keys, gallery_keys)
    return _scalar_relevance(query_keys, gallery_keys)


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = list(ks)
    if not ks or any(not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks!r}")
    return [int(k) for k in ks]


def retrieval_metrics(
    queries: Any,
    gallery: Any,
    query_keys: Sequence[Any],
    gallery_keys: Sequence[Any],
    ks: Sequence[int] = (1, 5, 10),
    *,
    exclude_self: bool = False,
    device: Literal["auto", "cpu", "gpu"] = "auto",
    block: int = 4096,
) -> dict[str, float]:
    """Recall (hit rate) and mAP at each k of ``queries`` ranked against ``gallery``.

    Embeddings are used as given: they must already be L2-normalised (the function does not
    re-normalise, so that it scores exactly what the model's similarity scores).

    Gallery item j is relevant to query i when ``gallery_keys[j] == query_keys[i]`` (image->text
    pairs: the row index; case retrieval: a category). Extension for multi-label records: when
    the keys are sets (set/frozenset/list), j is relevant when the two sets share an element.

    Ranking is by inner product, ties broken by the lower gallery index. With ``R_i`` the number of
    relevant gallery items of query i, queries with ``R_i = 0`` are skipped; over the others

    - ``R@k``: fraction with at least one relevant item in the top k;
    - ``mAP@k``: mean of ``sum_{r<=k} P@r * rel_r / min(k, R_i)``, ``P@r`` the precision at r.

    Args:
        queries: (Q, D) embeddings, tensor or array.
        gallery: (G, D) embeddings.
        query_keys: Q keys; all scalar-hashable or all set-like, like ``gallery_keys``.
        gallery_keys: G keys.
        ks: Cut-offs.
        exclude_self: Leave-one-out: queries and gallery are the same items (Q == G); query i
            does not retrieve gallery item i, which also leaves ``R_i``.
        device: Index placement, see :func:`build_index`.
        block: Queries searched at once.

    Returns:
        ``R@k`` and ``mAP@k`` for each k, ``queries`` (evaluated) and ``skipped``.
    """
    q = as_matrix(queries, "queries")
    g = as_matrix(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"queries have dim {q.shape[1]} but gallery has dim {g.shape[1]}")
    ks = _check_ks(ks)
    qk = _key_list(query_keys, "query_keys", len(q), "queries")
    gk = _key_list(gallery_keys, "gallery_keys", len(g), "gallery")
    if exclude_self and len(q) != len(g):
        raise ValueError(
            f"exclude_self needs queries and gallery to be the same items, got {len(q)} queries "
            f"and {len(g)} gallery rows"
        )
    rel = _relevance(qk, gk)
    n_relevant = rel.counts()
    rows = np.arange(len(q))
    if exclude_self:
        n_relevant = n_relevant - rel.relevant(rows, rows[:, None])[:, 0]
    evaluated = np.flatnonzero(n_relevant > 0)
    if len(evaluated) == 0:
        raise ValueError(
            f"no query has a relevant gallery item (all {len(q)} skipped): check that "
            "query_keys and gallery_keys use the same key space"
        )
    index = build_index(q.shape[1], device)
    index.add(g)
    exclude = evaluated if exclude_self else None
    _, ids = exact_search(index, q[evaluated], max(ks), exclude=exclude, block=block)
    hits = rel.relevant(evaluated, ids)
    precision = np.cumsum(hits, axis=1) / np.arange(1, ids.shape[1] + 1)
    r_i = n_relevant[evaluated]
    out: dict[str, float] = {}
    for k in ks:
        out[f"R@{k}"] = float(hits[:, :k].any(axis=1).mean())
        ap = (precision[:, :k] * hits[:, :k]).sum(axis=1) / np.minimum(k, r_i)
        out[f"mAP@{k}"] = float(ap.mean())
    out["queries"] = len(evaluated)
    out["skipped"] = len(q) - len(evaluated)
    return out


def ranked_hits(
    queries: Any,
    gallery: Any,
    query_keys: Sequence[Any],
    gallery_keys: Sequence[Any],
    k: int,
    *,
    exclude: Sequence[int] | None = None,
    device: Literal["auto", "cpu", "gpu"] = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top ``k`` of each query with the ranking and the relevance rule of
    :func:`retrieval_metrics` (same key kinds, same tie-breaking), for pictures of examples.

    Args:
        exclude: (Q,) gallery id left out of each query's ranking (the query itself when the
            queries are gallery items, as in leave-one-out case retrieval), -1 for none.

    Returns:
        (Q, k) scores, gallery ids (-1 past the end of a short gallery) and relevance (bool).
    """
    q = as_matrix(queries, "queries")
    g = as_matrix(gallery, "gallery")
    qk = _key_list(query_keys, "query_keys", len(q), "queries")
    gk = _key_list(gallery_keys, "gallery_keys", len(g), "gallery")
    index = build_index(g.shape[1], device)
    index.add(g)
    skip = None if exclude is None else np.asarray(exclude, dtype=np.int64)
    scores, ids = exact_search(index, q, int(k), exclude=skip)
    relevant = _relevance(qk, gk).relevant(np.arange(len(q)), ids)
    return scores, ids, relevant
