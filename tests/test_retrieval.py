"""FAISS retrieval metrics against a brute-force reference written here in plain numpy.

Embeddings are small integers so inner products are exact in float32 and ties are frequent: a
wrong tie order changes R@1, which is the failure the ranking rule exists to prevent.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fundus_lit.eval import faiss_search
from fundus_lit.eval.retrieval import (
    build_index,
    exact_search,
    faiss_gpu_available,
    retrieval_metrics,
)

KS = (1, 2, 5, 10)


def _related(a, b) -> bool:
    if isinstance(a, (set, frozenset, list)):
        return bool(set(a) & set(b))
    return a == b


def brute_force(q, g, q_keys, g_keys, ks=KS, exclude_self=False) -> dict[str, float]:
    """Full score matrix, per-query ranking by (-score, id), metrics by definition."""
    scores = q.astype(np.float32) @ g.astype(np.float32).T
    hits = {k: [] for k in ks}
    aps = {k: [] for k in ks}
    skipped = 0
    for i in range(len(q)):
        ids = np.array([j for j in range(len(g)) if not (exclude_self and j == i)], dtype=int)
        rel_all = np.array([_related(q_keys[i], g_keys[j]) for j in ids], dtype=bool)
        n_rel = int(rel_all.sum())
        if n_rel == 0:
            skipped += 1
            continue
        order = np.lexsort((ids, -scores[i, ids]))
        rel = rel_all[order]
        for k in ks:
            top = rel[:k]
            hits[k].append(float(top.any()))
            precision = np.cumsum(top) / np.arange(1, len(top) + 1)
            aps[k].append(float((precision * top).sum() / min(k, n_rel)))
    out: dict[str, float] = {}
    for k in ks:
        out[f"R@{k}"] = float(np.mean(hits[k]))
        out[f"mAP@{k}"] = float(np.mean(aps[k]))
    out["queries"] = len(q) - skipped
    out["skipped"] = skipped
    return out


def brute_topk(q, g, k, exclude=None):
    scores = q @ g.T
    out = np.full((len(q), k), -1, dtype=np.int64)
    for i in range(len(q)):
        ids = np.array([j for j in range(len(g)) if exclude is None or j != exclude[i]], dtype=int)
        order = ids[np.lexsort((ids, -scores[i, ids]))][:k]
        out[i, : len(order)] = order
    return out


def assert_same(got: dict, want: dict, tol: float = 0.0) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=tol), name


def int_embeddings(rng: np.random.Generator, n: int, dim: int = 4) -> np.ndarray:
    return rng.integers(-1, 3, size=(n, dim)).astype(np.float32)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_faiss_gpu_available_is_a_bool():
    assert isinstance(faiss_gpu_available(), bool)


def test_exact_search_breaks_ties_by_lower_index():
    gallery = np.ones((100, 4), dtype=np.float32)
    gallery[[7, 60]] *= 2  # the only strictly better items
    index = build_index(4, "cpu")
    index.add(gallery)
    scores, ids = exact_search(index, np.ones((2, 4), dtype=np.float32), 5)
    # Ties fill the fetched window many times over: the search must widen it to find ids 0..2.
    assert ids.tolist() == [[7, 60, 0, 1, 2]] * 2
    assert scores.tolist() == [[8, 8, 4, 4, 4]] * 2
    assert ids.dtype == np.int64 and scores.dtype == np.float32


def test_exact_search_exclude_and_padding():
    gallery = np.ones((4, 2), dtype=np.float32)
    index = build_index(2, "cpu")
    index.add(gallery)
    scores, ids = exact_search(index, gallery[:2], 6, exclude=np.array([0, -1]))
    assert ids.tolist() == [[1, 2, 3, -1, -1, -1], [0, 1, 2, 3, -1, -1]]
    assert np.isneginf(scores[0, 3:]).all() and np.isneginf(scores[1, 4:]).all()


def test_exact_search_empty_index():
    scores, ids = exact_search(build_index(3, "cpu"), np.ones((2, 3)), 2)
    assert (ids == -1).all() and np.isneginf(scores).all()


@pytest.mark.parametrize("block", [1, 3, 4096])
def test_exact_search_matches_brute_force(rng, block):
    gallery, queries = int_embeddings(rng, 80), int_embeddings(rng, 25)
    exclude = rng.integers(-1, 80, size=25)
    index = build_index(4, "cpu")
    index.add(gallery)
    _, ids = exact_search(index, queries, 30, exclude=exclude, block=block)
    assert (ids == brute_topk(queries, gallery, 30, exclude)).all()


def test_exact_search_full_scan_when_window_is_capped(rng, monkeypatch):
    # GPU indexes cap the window; emulate a tiny cap so ties must be settled by a gallery scan.
    monkeypatch.setattr(faiss_search, "_max_fetch", lambda index: min(index.ntotal, 6))
    monkeypatch.setattr(faiss_search, "_SCAN_CHUNK", 7)
    gallery, queries = int_embeddings(rng, 60), int_embeddings(rng, 10)
    exclude = np.arange(10)
    index = build_index(4, "cpu")
    index.add(gallery)
    _, ids = exact_search(index, queries, 9, exclude=exclude)
    assert (ids == brute_topk(queries, gallery, 9, exclude)).all()


@pytest.mark.parametrize("block", [3, 4096])
def test_pair_keys_with_duplicated_texts(rng, block):
    # image->text: query i's text is gallery row i; many texts are exact duplicates of each
    # other, so which duplicate ranks first decides R@1.
    texts = int_embeddings(rng, 12)[rng.integers(0, 12, size=40)]
    images = texts + int_embeddings(rng, 40) * (rng.random((40, 1)) < 0.5)
    keys = list(range(40))
    got = retrieval_metrics(images, texts, keys, keys, KS, block=block)
    assert_same(got, brute_force(images, texts, keys, keys))


@pytest.mark.parametrize("block", [3, 4096])
def test_category_keys_leave_one_out(rng, block):
    x = int_embeddings(rng, 50)
    keys = rng.integers(0, 6, size=50).tolist()
    got = retrieval_metrics(x, x, keys, keys, KS, exclude_self=True, block=block)
    assert_same(got, brute_force(x, x, keys, keys, exclude_self=True))


def test_singleton_category_is_skipped_in_leave_one_out(rng):
    x = int_embeddings(rng, 30)
    keys = [i % 4 for i in range(29)] + ["alone"]
    got = retrieval_metrics(x, x, keys, keys, KS, exclude_self=True)
    assert got["skipped"] == 1 and got["queries"] == 29
    assert_same(got, brute_force(x, x, keys, keys, exclude_self=True))


@pytest.mark.parametrize("block", [3, 4096])
def test_set_keys_share_an_element(rng, block):
    q, g = int_embeddings(rng, 30), int_embeddings(rng, 45)
    labels = ["dr", "amd", "glaucoma", "normal", "cataract", "myopia"]

    def draw(n):
        return [set(rng.choice(labels, size=rng.integers(0, 3), replace=False)) for _ in range(n)]

    q_keys, g_keys = draw(30), [list(s) for s in draw(45)]
    got = retrieval_metrics(q, g, q_keys, g_keys, KS, block=block)
    want = brute_force(q, g, q_keys, g_keys)
    assert_same(got, want)
    assert want["skipped"] > 0  # the empty query sets


def test_set_keys_leave_one_out(rng):
    x = int_embeddings(rng, 40)
    keys = [frozenset({i % 3, 10 + i % 5}) for i in range(40)]
    got = retrieval_metrics(x, x, keys, keys, KS, exclude_self=True)
    assert_same(got, brute_force(x, x, keys, keys, exclude_self=True))


def test_queries_without_relevant_items_are_skipped(rng):
    q, g = int_embeddings(rng, 20), int_embeddings(rng, 30)
    q_keys = [i % 7 for i in range(20)]  # categories 5 and 6 are absent from the gallery
    g_keys = [i % 5 for i in range(30)]
    got = retrieval_metrics(q, g, q_keys, g_keys, KS)
    assert got["skipped"] == sum(k >= 5 for k in q_keys)
    assert_same(got, brute_force(q, g, q_keys, g_keys))


def test_k_larger_than_gallery(rng):
    x = int_embeddings(rng, 12)
    keys = [i % 3 for i in range(12)]
    ks = (1, 11, 12, 50)
    got = retrieval_metrics(x, x, keys, keys, ks, exclude_self=True)
    assert_same(got, brute_force(x, x, keys, keys, ks, exclude_self=True))
    assert got["R@50"] == 1.0 and got["mAP@50"] == pytest.approx(got["mAP@11"])


def test_random_normalised_case_matches_brute_force():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(20, 16))
    q_lab, g_lab = rng.integers(0, 20, size=300), rng.integers(0, 20, size=500)
    q = centres[q_lab] + 0.8 * rng.normal(size=(300, 16))
    g = centres[g_lab] + 0.8 * rng.normal(size=(500, 16))
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    g = (g / np.linalg.norm(g, axis=1, keepdims=True)).astype(np.float32)
    ks = (1, 5, 10, 50)
    got = retrieval_metrics(q, g, q_lab.tolist(), g_lab.tolist(), ks, block=64)
    assert_same(got, brute_force(q, g, q_lab.tolist(), g_lab.tolist(), ks), tol=1e-6)


def test_torch_inputs_and_tensor_keys(rng):
    x = int_embeddings(rng, 25)
    keys = rng.integers(0, 4, size=25)
    got = retrieval_metrics(
        torch.from_numpy(x).double(), torch.from_numpy(x), torch.from_numpy(keys), keys, KS
    )
    assert_same(got, brute_force(x, x, keys.tolist(), keys.tolist()))


def test_bad_inputs_name_the_argument(rng):
    q, g = int_embeddings(rng, 5), int_embeddings(rng, 6)
    keys_q, keys_g = list(range(5)), list(range(6))
    with pytest.raises(ValueError, match="gallery has dim 3"):
        retrieval_metrics(q, g[:, :3], keys_q, keys_g)
    with pytest.raises(ValueError, match="query_keys has 4 entries"):
        retrieval_metrics(q, g, keys_q[:4], keys_g)
    with pytest.raises(ValueError, match="gallery_keys has 5 entries"):
        retrieval_metrics(q, g, keys_q, keys_g[:5])
    with pytest.raises(ValueError, match="queries must be 2-D"):
        retrieval_metrics(q[0], g, keys_q, keys_g)
    with pytest.raises(ValueError, match="exclude_self"):
        retrieval_metrics(q, g, keys_q, keys_g, exclude_self=True)
    with pytest.raises(ValueError, match="mix set-like"):
        retrieval_metrics(q, g, [{1}, 2, 3, 4, 5], keys_g)
    with pytest.raises(ValueError, match="ks must be"):
        retrieval_metrics(q, g, keys_q, keys_g, ks=(0,))
    with pytest.raises(ValueError, match="all 5 skipped"):
        retrieval_metrics(q, g, [f"x{i}" for i in range(5)], keys_g)
    index = build_index(4, "cpu")
    with pytest.raises(ValueError, match="index has dim 4"):
        exact_search(index, g[:, :3], 2)
    with pytest.raises(ValueError, match="exclude must have shape"):
        exact_search(index, g, 2, exclude=np.zeros(2))
    with pytest.raises(ValueError, match="device must be"):
        build_index(4, "tpu")


@pytest.mark.skipif(faiss_gpu_available(), reason="GPU faiss present")
def test_gpu_index_without_support_raises():
    with pytest.raises(RuntimeError, match="GPU build of faiss"):
        build_index(4, "gpu")
    assert type(build_index(4, "auto")).__name__ == "IndexFlatIP"
