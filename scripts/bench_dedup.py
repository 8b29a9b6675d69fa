#!/usr/bin/env python
"""Scale check of `dedup`'s graph stage: kNN graph → linkage clustering over N questions without an n×n matrix.

Encoding is left out (it is linear in N and measured elsewhere): the bank is N random
vectors of the model's dimension and typical norm, in which `--groups` groups of 2–4 exact
copies are planted (the duplicates to find). The script times building the index, the
batched kNN search with re-scoring, and the grouping (`--linkage`), reports peak memory,
and checks the planted groups come back. Peer in the same run: the same pipeline with the
exact flat index on the first `--peer-n` vectors, scaled linearly to N (flat kNN is
quadratic, so the real flat time at N is larger still).

    python scripts/bench_dedup.py --model runs/lstm --n 1000000
    python scripts/bench_dedup.py --model runs/pooled --n 100000 --peer-n 20000   # any run with a pooled head
"""
from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np


def bank(det, n: int, groups: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random vectors with planted groups of exact copies; returns (vectors, true group or −1)."""
    rng = np.random.default_rng(seed)
    from qpairs.search import QuestionIndex

    texts = ["How do I learn Python?", "Is Java hard?", "Why is the sky blue?", "What is love?"]
    probe = QuestionIndex.empty(det).query_vectors(det, texts)  # vectors of the index's space
    scale = np.linalg.norm(probe, axis=1).mean() / np.sqrt(probe.shape[1])
    vecs = (rng.standard_normal((n, probe.shape[1])) * scale).astype(np.float32)
    truth = np.full(n, -1)
    sources = rng.choice(n, size=groups, replace=False)
    free = np.setdiff1d(np.arange(n), sources)
    rng.shuffle(free)
    pos = 0
    for g, s in enumerate(sources):
        copies = free[pos : pos + rng.integers(1, 4)]
        pos += len(copies)
        vecs[copies] = vecs[s]
        truth[[s, *copies]] = g
    return vecs, truth


def run(det, vecs: np.ndarray, kind: str, k: int, linkage: str) -> dict:
    from qpairs.dedup import duplicate_edges, linkage_clusters
    from qpairs.search import QuestionIndex

    t0 = time.perf_counter()
    index = QuestionIndex.empty(det, kind)
    index.add_embeddings(det, vecs, range(len(vecs)), [""] * len(vecs))
    t1 = time.perf_counter()
    src, dst, prob = duplicate_edges(det, index, k=k, threshold=0.0)  # as `dedup`: every kNN edge
    t2 = time.perf_counter()
    labels = linkage_clusters(len(vecs), src, dst, prob, det.threshold, linkage)
    t3 = time.perf_counter()
    return {"index_s": t1 - t0, "knn_s": t2 - t1, "grouping_s": t3 - t2, "total_s": t3 - t0,
            "edges": len(src), "strong_edges": int((prob >= det.threshold).sum()), "labels": labels}


def recovered(labels: np.ndarray, truth: np.ndarray) -> tuple[int, int]:
    """(planted groups found exactly, clusters of size > 1 that are not a planted group)."""
    planted = {}
    for i in np.flatnonzero(truth >= 0):
        planted.setdefault(truth[i], []).append(i)
    sizes = np.bincount(labels)
    exact = sum(len(set(labels[m])) == 1 and sizes[labels[m[0]]] == len(m) for m in planted.values())
    found = np.flatnonzero(sizes > 1)
    return exact, len(found) - exact


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="run directory with a pooled head (its dimension, distance and "
                                                  "calibration are used); the bundled models read texts, which the "
                                                  "random bank has not")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--groups", type=int, default=10_000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--kind", default="hnsw", choices=["flat", "hnsw"])
    p.add_argument("--peer-n", type=int, default=50_000)
    p.add_argument("--linkage", default="average", choices=["average", "complete", "single"])
    args = p.parse_args(argv)

    import qpairs

    det = qpairs.load(args.model, device="cpu")
    if det.scores_texts:
        raise SystemExit(f"{args.model or 'the default model'} scores pairs from their texts (a matching head or an "
                         "ensemble), but this benchmark's bank is random vectors without texts: pass a run whose "
                         "probability comes from its vectors (a pooled head)")
    vecs, truth = bank(det, args.n, args.groups)
    r = run(det, vecs, args.kind, args.k, args.linkage)
    exact, spurious = recovered(r["labels"], truth)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"dedup graph stage, {args.n:,} vectors (dim {vecs.shape[1]}), {args.kind}, k={args.k}: "
          f"index {r['index_s']:.1f} s, kNN + re-score {r['knn_s']:.1f} s, {args.linkage} linkage {r['grouping_s']:.2f} s, "
          f"total {r['total_s']:.1f} s; {r['edges']:,} edges ({r['strong_edges']:,} above the threshold); "
          f"peak RSS {peak_gb:.2f} GB")
    print(f"  planted groups recovered exactly: {exact:,} / {args.groups:,}; other clusters: {spurious:,}")
    pv, pt = bank(det, args.peer_n, max(1, args.groups * args.peer_n // args.n), seed=1)
    peer = run(det, pv, "flat", args.k, args.linkage)
    linear = peer["total_s"] * args.n / args.peer_n
    print(f"  peer: exact flat on {args.peer_n:,} vectors {peer['total_s']:.1f} s; ×{args.n // args.peer_n} linear "
          f"= {linear:.0f} s (a lower bound: flat kNN is quadratic) → {args.kind} / flat ≤ {r['total_s'] / linear:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
