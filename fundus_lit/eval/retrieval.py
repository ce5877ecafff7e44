"""Exact retrieval evaluation (image<->text and case retrieval) on a FAISS inner-product index.

Scoring every query against every gallery item is what the dense, torchmetrics-style evaluation
does; at 100k x 100k that matrix alone is 40 GB. Here FAISS finds the top k of each query
block, so memory stays O(block * k) on top of the gallery copy held by the index, and the
metrics need only the top k ids plus per-query relevant counts taken from key histograms.

Rankings are deterministic: inner product descending, ties broken by the lower gallery index.
FAISS returns tied items in an arbitrary order (the CPU flat index was measured to prefer higher
ids), which would make R@1 depend on the FAISS version and thread count whenever embeddings tie,
e.g. duplicated report texts. :func:`exact_search` re-sorts and widens its window until every
tie at the k-th place is settled.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import faiss

__all__ = ["build_index", "exact_search", "faiss_gpu_available", "retrieval_metrics"]

# Extra neighbours fetched beyond k so that most ties at the k-th place settle in one search.
_MARGIN = 16
# Largest k a FAISS GPU flat index accepts (the CUDA selection kernels stop at 2048).
_GPU_MAX_K = 2048
# Gallery rows scored at once when a tie must be settled by scanning the whole gallery.
_SCAN_CHUNK = 65536
_SCAN_ROWS = 64


def faiss_gpu_available() -> bool:
    """Whether a GPU index can be built: needs a GPU build of faiss *and* a visible CUDA device
    (a faiss-gpu wheel on a CPU-only host reports zero GPUs, a CUDA torch does not imply it)."""
    try:
        import faiss
        import torch

        return (
            hasattr(faiss, "StandardGpuResources")
            and faiss.get_num_gpus() > 0
            and torch.cuda.is_available()
        )
    except Exception:
        return False


def build_index(dim: int, device: Literal["auto", "cpu", "gpu"] = "auto") -> faiss.Index:
    """Empty exact inner-product index; on cosine-normalised embeddings inner product is the
    cosine similarity, so no approximate structure (IVF, HNSW) may change the ranking.

    ``device="auto"`` picks the GPU when :func:`faiss_gpu_available`; ``"gpu"`` insists on it.
    """
    import faiss

    if not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'gpu', got {device!r}")
    use_gpu = device == "gpu" or (device == "auto" and faiss_gpu_available())
    if not use_gpu:
        return faiss.IndexFlatIP(int(dim))
    if not faiss_gpu_available():
        raise RuntimeError(
            "device='gpu' needs a GPU build of faiss (faiss-gpu-cu12, the 'gpu' extra) and a "
            "visible CUDA device; use device='cpu' or 'auto'"
        )
    resources = faiss.StandardGpuResources()
    index = faiss.GpuIndexFlatIP(resources, int(dim))
    # The index holds only a raw pointer to its resources: keep them alive as long as it lives.
    index._fundus_gpu_resources = resources
    return index


def _as_matrix(x: Any, name: str) -> np.ndarray:
    """Contiguous float32 (rows, dim) array, the only layout FAISS accepts without copying."""
    if hasattr(x, "detach"):  # torch tensor, on any device and dtype
        x = x.detach().float().cpu().numpy()
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {arr.shape}")
    return arr


def _max_fetch(index: faiss.Index) -> int:
    """Widest window one search may request from ``index``."""
    if type(index).__name__.startswith("Gpu"):
        return min(index.ntotal, _GPU_MAX_K)
    return index.ntotal


def _rank_window(
    scores: np.ndarray, ids: np.ndarray, exclude: np.ndarray, sentinel: int
) -> tuple[np.ndarray, np.ndarray]:
    """Drop excluded/missing entries and order rows by (-score, id): the deterministic ranking."""
    scores = scores.astype(np.float32, copy=True)
    ids = ids.astype(np.int64, copy=True)
    invalid = (ids < 0) | (ids == exclude[:, None])
    scores[invalid] = -np.inf
    ids[invalid] = sentinel
    order = np.lexsort((ids, -scores), axis=-1)
    return np.take_along_axis(scores, order, -1), np.take_along_axis(ids, order, -1)


def _settled(
    raw_scores: np.ndarray, ranked_ids: np.ndarray, ranked_scores: np.ndarray, k: int, sentinel: int
) -> np.ndarray:
    """Rows whose top k cannot change by fetching more: an unseen item scores at most the
    window's lowest score, so it only matters when that score still equals the k-th one."""
    n_valid = (ranked_ids != sentinel).sum(axis=1)
    enough = n_valid >= k
    kth = ranked_scores[:, min(k, ranked_scores.shape[1]) - 1]
    return enough & (raw_scores.min(axis=1) < kth)


def _scan_rows(
    index: faiss.Index, queries: np.ndarray, k: int, exclude: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top k by scanning the gallery in chunks; only for ties wider than the largest
    window the index can return (GPU indexes cap k)."""
    n, sentinel = index.ntotal, index.ntotal
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), 0), sentinel, dtype=np.int64)
    for start in range(0, n, _SCAN_CHUNK):
        stop = min(n, start + _SCAN_CHUNK)
        chunk = index.reconstruct_n(start, stop - start)
        scores = queries @ chunk.T
        ids = np.broadcast_to(np.arange(start, stop, dtype=np.int64), scores.shape)
        merged_s, merged_i = _rank_window(
            np.concatenate([best_s, scores], axis=1),
            np.concatenate([best_i, ids], axis=1),
            exclude,
            sentinel,
        )
        best_s, best_i = merged_s[:, :k], merged_i[:, :k]
    return best_s, best_i


def _search_block(
    index: faiss.Index, queries: np.ndarray, k: int, exclude: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Top k of one query block; widens the window only for the rows with an unsettled tie."""
    n, sentinel, cap = index.ntotal, index.ntotal, _max_fetch(index)
    extra = int((exclude >= 0).any())
    out_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_i = np.full((len(queries), k), -1, dtype=np.int64)
    rows = np.arange(len(queries))
    fetch = min(cap, k + extra + _MARGIN)
    while len(rows):
        raw_s, raw_i = index.search(queries[rows], fetch)
        ranked_s, ranked_i = _rank_window(raw_s, raw_i, exclude[rows], sentinel)
        if fetch >= n:
            done = np.ones(len(rows), dtype=bool)
        else:
            done = _settled(raw_s, ranked_i, ranked_s, k, sentinel)
        take = min(k, fetch)
        out_s[rows[done], :take] = ranked_s[done, :take]
        out_i[rows[done], :take] = ranked_i[done, :take]
        rows = rows[~done]
        if len(rows) and fetch >= cap:  # window can grow no further: settle by a full scan
            for part in np.array_split(rows, max(1, -(-len(rows) // _SCAN_ROWS))):
                scan_s, scan_i = _scan_rows(index, queries[part], k, exclude[part])
                out_s[part, : scan_s.shape[1]], out_i[part, : scan_i.shape[1]] = scan_s, scan_i
            break
        fetch = min(cap, 2 * fetch)
    missing = out_i == sentinel
    out_s[missing], out_i[missing] = -np.inf, -1
    return out_s, out_i


def exact_search(
    index: faiss.Index,
    queries: Any,
    k: int,
    *,
    exclude: np.ndarray | None = None,
    block: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """(Q, k) float32 scores and int64 gallery ids, ranked by inner product descending with ties
    broken by the lower gallery index, exactly, whatever order FAISS returned them in.

    Args:
        index: Filled inner-product index, e.g. from :func:`build_index`.
        queries: (Q, dim) array or tensor.
        k: Neighbours per query; when fewer gallery items remain, the tail is id -1, score -inf.
        exclude: (Q,) gallery id removed from each query's ranking (the query itself in
            leave-one-out retrieval), -1 for none.
        block: Queries searched at once; bounds the memory of the fetched windows. Only rows
            whose k-th place is tied with items beyond the window fetch more (doubling), so
            many identical embeddings widen those rows' windows, up to the whole gallery.
    """
    q = _as_matrix(queries, "queries")
    if q.shape[1] != index.d:
        raise ValueError(f"queries have dim {q.shape[1]} but the index has dim {index.d}")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if block < 1:
        raise ValueError(f"block must be positive, got {block}")
    if exclude is None:
        exclude = np.full(len(q), -1, dtype=np.int64)
    exclude = np.asarray(exclude, dtype=np.int64)
    if exclude.shape != (len(q),):
        raise ValueError(f"exclude must have shape ({len(q)},), got {exclude.shape}")
    scores = np.full((len(q), k), -np.inf, dtype=np.float32)
    ids = np.full((len(q), k), -1, dtype=np.int64)
    if index.ntotal == 0:
        return scores, ids
    for start in range(0, len(q), block):
        stop = min(len(q), start + block)
        scores[start:stop], ids[start:stop] = _search_block(
            index, q[start:stop], int(k), exclude[start:stop]
        )
    return scores, ids


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
    q = _as_matrix(queries, "queries")
    g = _as_matrix(gallery, "gallery")
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
