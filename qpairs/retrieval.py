"""Retrieval metrics: for each query (a title), the rank of its one true item (its body) among N candidates.

Ranks are 1-based and ties count against the query: the rank is 1 plus the number of *other*
candidates at a distance smaller than or equal to the true one's, so a model that maps every
text to the same vector gets the worst rank, not the best.
"""
from __future__ import annotations

import numpy as np


def pairwise_distances(a: np.ndarray, b: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """Distance matrix [len(a), len(b)]: 'euclidean' or 'cosine' (1 − cos), as in `losses.pair_distance`."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if metric == "cosine":
        an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        return 1.0 - an @ bn.T
    if metric == "euclidean":
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
        return np.sqrt(np.maximum(sq, 0.0))
    raise ValueError(f"unknown distance {metric!r}; use 'euclidean' or 'cosine'")


def true_ranks(distances: np.ndarray, true_index) -> np.ndarray:
    """1-based rank of the true candidate of each row (ties count against it)."""
    d = np.asarray(distances, dtype=np.float64)
    t = np.asarray(true_index, dtype=int)
    if d.ndim != 2 or len(t) != len(d):
        raise ValueError(f"need a [queries, candidates] matrix and one true index per query, got {d.shape} and {t.shape}")
    true_d = d[np.arange(len(d)), t][:, None]
    return (d <= true_d).sum(1)  # counts the true candidate itself once → rank 1 when nothing ties or beats it


def first_relevant_ranks(ranked: list[list], relevant: list[set]) -> np.ndarray:
    """1-based rank of the first relevant item of each ranked list (inf where none is relevant)."""
    if len(ranked) != len(relevant):
        raise ValueError(f"{len(ranked)} ranked lists but {len(relevant)} relevance sets")
    return np.asarray([next((i + 1 for i, x in enumerate(items) if x in rel), np.inf)
                       for items, rel in zip(ranked, relevant)], dtype=np.float64)


def retrieval_metrics(ranks, ks=(1, 10)) -> dict[str, float]:
    """recall@k (share of queries whose true item is in the top k) and MRR from 1-based ranks (inf: not found,
    adding 0 to the MRR)."""
    r = np.asarray(ranks, dtype=np.float64)
    if len(r) == 0:
        raise ValueError("no queries to score")
    if (r < 1).any():
        raise ValueError("ranks are 1-based")
    out = {f"recall@{k}": float((r <= k).mean()) for k in ks}
    out["mrr"] = float((1.0 / r).mean())
    out["mean_rank"] = float(r.mean())
    out["n_queries"] = int(len(r))
    return out


def candidate_pools(n_items: int, n_candidates: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split `n_items` posts into pools of `n_candidates`: (query indices, candidate indices) per pool.

    Every item is a query exactly once and its own item is among its pool's candidates. Items are
    shuffled (seeded) into pools of exactly `n_candidates`; a last, smaller pool is topped up with
    distractors drawn from the other items, so every query faces exactly `n_candidates` candidates.
    """
    if n_candidates < 2:
        raise ValueError(f"n_candidates must be at least 2, got {n_candidates}")
    if n_items < n_candidates:
        raise ValueError(f"{n_items} items cannot fill a pool of {n_candidates} candidates; "
                         f"use more posts or fewer candidates")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_items)
    pools = []
    for s in range(0, n_items, n_candidates):
        queries = order[s : s + n_candidates]
        cands = queries
        if len(queries) < n_candidates:
            others = np.setdiff1d(order, queries)
            cands = np.concatenate([queries, rng.choice(others, n_candidates - len(queries), replace=False)])
        pools.append((queries, cands))
    return pools


def rank_in_pools(query_emb: np.ndarray, item_emb: np.ndarray, n_candidates: int = 1000,
                  metric: str = "euclidean", seed: int = 0) -> np.ndarray:
    """Rank of item i for query i (row i of both matrices) among `n_candidates` items; one rank per query."""
    if len(query_emb) != len(item_emb):
        raise ValueError(f"one item per query needed, got {len(query_emb)} queries and {len(item_emb)} items")
    ranks = np.empty(len(query_emb), dtype=int)
    for queries, cands in candidate_pools(len(query_emb), n_candidates, seed):
        d = pairwise_distances(query_emb[queries], item_emb[cands], metric)
        ranks[queries] = true_ranks(d, np.arange(len(queries)))  # queries are the first len(queries) candidates
    return ranks


def retrieval_eval(query_emb: np.ndarray, item_emb: np.ndarray, n_candidates: int = 1000,
                   metric: str = "euclidean", seed: int = 0, ks=(1, 10)) -> dict[str, float]:
    """recall@k and MRR of query i → item i among `n_candidates` candidates (see `candidate_pools`)."""
    ranks = rank_in_pools(query_emb, item_emb, n_candidates, metric, seed)
    return {**retrieval_metrics(ranks, ks), "n_candidates": int(n_candidates)}


def rerank_in_pools(query_emb: np.ndarray, item_emb: np.ndarray, pair_distance, k: int = 10,
                    n_candidates: int = 1000, metric: str = "euclidean", seed: int = 0) -> np.ndarray:
    """`rank_in_pools` when each query's `k` nearest candidates by embedding are re-scored by a pair model:
    `pair_distance(query_rows, item_rows)` gives one distance per (query, item) pair (smaller = better), which
    orders those k; the true item keeps its embedding rank (> k) when it is not among them."""
    if len(query_emb) != len(item_emb):
        raise ValueError(f"one item per query needed, got {len(query_emb)} queries and {len(item_emb)} items")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    ranks = np.empty(len(query_emb), dtype=int)
    queries_of, shortlists = [], []
    for queries, cands in candidate_pools(len(query_emb), n_candidates, seed):
        d = pairwise_distances(query_emb[queries], item_emb[cands], metric)
        ranks[queries] = true_ranks(d, np.arange(len(queries)))
        queries_of.append(queries)
        shortlists.append(cands[np.argsort(d, axis=1, kind="stable")[:, :k]])
    queries, shortlist = np.concatenate(queries_of), np.concatenate(shortlists)
    k = shortlist.shape[1]
    d = np.asarray(pair_distance(np.repeat(queries, k), shortlist.ravel()), dtype=np.float64).reshape(-1, k)
    for q, items, dq in zip(queries, shortlist, d):
        hit = np.flatnonzero(items == q)
        if len(hit):
            ranks[q] = int((dq <= dq[hit[0]]).sum())  # ties count against the true item, as in `true_ranks`
    return ranks
