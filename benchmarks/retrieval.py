"""Retrieval metrics with a FAISS top-k search against the dense, torchmetrics-style evaluation.

The dense baseline scores every query against every gallery item (torch matmul, in query blocks
so that it fits in RAM) and computes the metrics one query at a time with
``torchmetrics.functional.retrieval``: ``retrieval_hit_rate(top_k=k)`` for R@k. torchmetrics'
``retrieval_average_precision(top_k=k)`` is a different metric from the spec's mAP@k (it
divides by the number of relevant items *retrieved* in the top k, not by min(k, R_i), and it
counts items with a score <= 0 as irrelevant), so the baseline computes mAP@k itself from a
full-row argsort, as torchmetrics would rank it. Both sides must agree within 1e-6.

Data: clustered embeddings (category centres plus noise, L2-normalised, seeded) with the
category as key, separate query and gallery draws. Entries are rounded to a 2^-11 grid, which
makes every inner product exact in float32: FAISS's BLAS and torch's would otherwise differ in
the last bit and could swap near-tied neighbours, a difference of implementation, not method.

Every (method, N) runs in a fresh subprocess, so its peak RSS growth (getrusage maxrss minus
the RSS once the data exists) is its own. At N = 100,000 the dense baseline over all queries
takes about an hour on 2 cores, so both methods rank the same query subset (``--queries-100k``)
against the full gallery.

    python benchmarks/retrieval.py [--sizes 10000 100000] [--dim 512] [--queries-100k 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import faiss
import numpy as np
import torch
from results import report  # sibling module: benchmarks run as scripts
from torchmetrics.functional.retrieval import retrieval_average_precision, retrieval_hit_rate

from fundus_lit.eval.retrieval import faiss_gpu_available, retrieval_metrics

KS = (1, 5, 10)
GRID = 2.0**-11
# Queries whose torchmetrics AP@k is reported next to the spec's, to show the difference.
TM_AP_QUERIES = 200


def _rss_mib() -> float:
    """Current resident set size; getrusage only knows the peak."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak_rss() -> None:
    """Forget the peak reached while creating the data, so that maxrss is the method's own
    (Linux >= 4.0; elsewhere the small data chunks keep that earlier peak low)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_data(
    n: int, dim: int, categories: int, seed: int, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) clustered, normalised, grid-rounded float32 embeddings and their categories.

    Filled chunk by chunk into one preallocated array so that creating the data leaves no
    temporary peak that would hide the measured method's own peak.
    """
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(categories, dim, generator=torch.Generator().manual_seed(1234))
    labels = torch.randint(0, categories, (n,), generator=gen)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        lab = labels[start : start + chunk]
        x = centres[lab] + 3.0 * torch.randn(len(lab), dim, generator=gen)
        x = torch.nn.functional.normalize(x, dim=1)
        out[start : start + len(lab)] = (torch.round(x / GRID) * GRID).numpy()
    return out, labels.numpy()


def dense_metrics(
    queries: np.ndarray,
    q_labels: np.ndarray,
    gallery: np.ndarray,
    g_labels: np.ndarray,
    qblock: int,
    sort_threads: int,
) -> tuple[dict[str, float], np.ndarray]:
    """The torchmetrics-style evaluation; also returns per-query spec AP@k (Q, len(KS))."""
    q_t, g_t = torch.from_numpy(queries), torch.from_numpy(gallery)
    ql_t, gl_t = torch.from_numpy(q_labels), torch.from_numpy(g_labels)
    hits = np.zeros((len(queries), len(KS)))
    aps = np.zeros((len(queries), len(KS)))
    evaluated = np.zeros(len(queries), dtype=bool)
    ranks = torch.arange(1, max(KS) + 1, dtype=torch.float64)
    threads = torch.get_num_threads()
    for start in range(0, len(queries), qblock):
        scores = q_t[start : start + qblock] @ g_t.T
        torch.set_num_threads(sort_threads)
        for row in range(scores.shape[0]):
            i, preds = start + row, scores[row]
            target = gl_t == ql_t[i]
            n_rel = int(target.sum())
            if n_rel == 0:
                continue
            evaluated[i] = True
            for c, k in enumerate(KS):
                hits[i, c] = float(retrieval_hit_rate(preds, target, top_k=k))
            order = torch.argsort(preds, descending=True, stable=True)  # full row, ties: low id
            rel = target[order[: max(KS)]].double()
            precision = rel.cumsum(0) / ranks[: len(rel)]
            for c, k in enumerate(KS):
                aps[i, c] = float((precision[:k] * rel[:k]).sum()) / min(k, n_rel)
        torch.set_num_threads(threads)
        del scores  # free this block before the next matmul allocates one
    out: dict[str, float] = {}
    for c, k in enumerate(KS):
        out[f"R@{k}"] = float(hits[evaluated, c].mean())
        out[f"mAP@{k}"] = float(aps[evaluated, c].mean())
    out["queries"] = int(evaluated.sum())
    out["skipped"] = int(len(queries) - evaluated.sum())
    return out, aps


def torchmetrics_ap(
    queries: np.ndarray, q_labels: np.ndarray, gallery: np.ndarray, g_labels: np.ndarray
) -> list[float]:
    """Mean torchmetrics AP@k over the first queries, for comparison with the spec's mAP@k."""
    scores = torch.from_numpy(queries[:TM_AP_QUERIES]) @ torch.from_numpy(gallery).T
    g_t = torch.from_numpy(g_labels)
    return [
        float(
            np.mean(
                [
                    float(retrieval_average_precision(s, g_t == int(lab), top_k=k))
                    for s, lab in zip(scores, q_labels[:TM_AP_QUERIES])
                ]
            )
        )
        for k in KS
    ]


def worker(spec: dict) -> dict:
    """One (method, N) measurement; runs in its own process."""
    torch.set_num_threads(spec["threads"])
    faiss.omp_set_num_threads(spec["threads"])
    n, q, dim, cats = spec["n"], spec["q"], spec["dim"], spec["categories"]
    gallery, g_labels = make_data(n, dim, cats, seed=1)
    queries, q_labels = make_data(q, dim, cats, seed=2)
    _reset_peak_rss()
    base = _rss_mib()
    t0 = time.perf_counter()
    extra: dict = {}
    if spec["method"] == "dense":
        metrics, aps = dense_metrics(
            queries, q_labels, gallery, g_labels, spec["qblock"], spec["sort_threads"]
        )
        elapsed = time.perf_counter() - t0
        peak = _peak_rss_mib()
        extra = {
            "spec_ap_first": aps[:TM_AP_QUERIES].mean(axis=0).tolist(),
            "tm_ap_first": torchmetrics_ap(queries, q_labels, gallery, g_labels),
        }
    else:
        device = "gpu" if spec["method"] == "faiss-gpu" else "cpu"
        metrics = retrieval_metrics(queries, gallery, q_labels, g_labels, KS, device=device)
        elapsed = time.perf_counter() - t0
        peak = _peak_rss_mib()
    return {"time": elapsed, "rss": peak - base, "metrics": metrics, **extra}


def run_isolated(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:,.1f} GiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries-100k", type=int, default=2000)
    parser.add_argument("--categories", type=int, default=100)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument(
        "--sort-threads",
        type=int,
        default=1,
        help="torch threads for the dense baseline's per-row sorts (CPU sorts of ~100k scores "
        "run several times slower with 2 threads than with 1 on small machines)",
    )
    parser.add_argument("--dense-block", type=int, default=256)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    methods = ["faiss-cpu", "dense"] + (["faiss-gpu"] if faiss_gpu_available() else [])
    print(
        f"dim={args.dim}, {args.categories} categories, ks={KS}, threads={args.threads} "
        f"(dense per-row sorts: {args.sort_threads}), faiss {faiss.__version__}, "
        f"torch {torch.__version__}, GPU faiss: {faiss_gpu_available()}"
    )
    rows, ok = [], True
    for n in args.sizes:
        q = n if n < 100_000 else min(n, args.queries_100k)
        if q < n:
            print(
                f"N={n:,}: both methods rank the same {q:,} queries against all {n:,} gallery "
                f"items (the dense baseline over all {n:,} queries would take ~{n / q:.0f}x longer)"
            )
        results = {}
        for method in methods:
            spec = {
                "method": method,
                "n": n,
                "q": q,
                "dim": args.dim,
                "categories": args.categories,
                "threads": args.threads,
                "sort_threads": args.sort_threads,
                "qblock": args.dense_block,
            }
            results[method] = run_isolated(spec)
            print(f"  {method:>9} N={n:,}: {results[method]['time']:.2f} s", flush=True)
        ref = results["dense"]["metrics"]
        for method in methods:
            if method == "dense":
                continue
            got = results[method]["metrics"]
            diff = max(abs(got[key] - ref[key]) for key in ref)
            agree = got.keys() == ref.keys() and diff <= 1e-6
            ok &= agree
            print(
                f"  check N={n:,} {method} vs dense: max |difference| = {diff:.2e} over "
                f"{sorted(ref)} -> {'OK' if agree else 'MISMATCH'}"
            )
        tm, spec_ap = results["dense"]["tm_ap_first"], results["dense"]["spec_ap_first"]
        print(
            f"  first {TM_AP_QUERIES} queries, spec mAP@k vs torchmetrics AP@k: "
            + ", ".join(f"@{k} {s:.4f} vs {t:.4f}" for k, s, t in zip(KS, spec_ap, tm))
        )
        rows.append((n, q, results))

    print()
    header = (
        f"{'N (gallery)':>11} {'queries':>8} {'method':>10} {'time (s)':>9} {'peak RSS +MiB':>14}"
    )
    print(header + f" {'R@1':>7} {'R@10':>7} {'mAP@10':>7}")
    for n, q, results in rows:
        for method in methods:
            r = results[method]
            m = r["metrics"]
            print(
                f"{n:>11,} {q:>8,} {method:>10} {r['time']:>9.2f} {r['rss']:>14.0f}"
                f" {m['R@1']:>7.4f} {m['R@10']:>7.4f} {m['mAP@10']:>7.4f}"
            )
    print()
    for n, q, results in rows:
        for method in methods:
            if method != "dense":
                ratio = results["dense"]["time"] / results[method]["time"]
                print(f"N={n:,}: dense / {method} time = {ratio:.1f}x")
                report(f"retrieval N={n:,}", ratio, f"dense / {method} time", "")
        per_item = 4 + 1 + 8  # float32 preds, bool target, int64 indexes
        print(
            f"N={n:,}: an unblocked torchmetrics module (preds, target, indexes for every pair) "
            f"would hold {_gib(q * n * per_item)} for these {q:,} queries, "
            f"{_gib(n * n * per_item)} for all {n:,}"
        )
    print("agreement:", "OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
