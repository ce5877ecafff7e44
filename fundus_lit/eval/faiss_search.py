"""Exact top-k search on a FAISS inner-product index, with deterministic tie-breaking.

Rankings are deterministic: inner product descending, ties broken by the lower gallery index.
FAISS returns tied items in an arbitrary order (the CPU flat index was measured to prefer higher
ids), which would make R@1 depend on the FAISS version and thread count whenever embeddings tie,
e.g. duplicated report texts. :func:`exact_search` re-sorts and widens its window until every
tie at the k-th place is settled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import faiss

__all__ = ["as_matrix", "build_index", "exact_search", "faiss_gpu_available"]

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


def as_matrix(x: Any, name: str) -> np.ndarray:
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
    q = as_matrix(queries, "queries")
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
