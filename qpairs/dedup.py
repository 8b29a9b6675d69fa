"""Groups of duplicate questions inside a collection: kNN graph → linkage clustering.

`dedup` indexes the questions (`QuestionIndex`), links every question to its k nearest
neighbours with the model's calibrated probability (`duplicate_edges`), and groups them by
agglomerative clustering over that sparse graph (`linkage_clusters`):

* ``average`` (default): two groups merge while the mean probability over *all* their
  cross pairs reaches the threshold; a pair outside both questions' k nearest neighbours
  counts as probability 0. One strong link cannot join two groups that are otherwise unrelated.
* ``complete``: every cross pair must reach the threshold (stricter, smaller groups).
* ``single``: any one link above the threshold joins two groups (connected components of the
  thresholded graph). Chains A~B~C~… into large groups of unrelated questions.

Merges only happen inside connected components of the thresholded graph, so the cost grows
with the edges of those components, never with n².
"""
from __future__ import annotations

import heapq

import numpy as np
import pandas as pd

from .errors import require_count
from .progress import progress_bar
from .search import AUTO_FLAT_MAX, QuestionIndex, check_new_ids, id_texts
from .pair_scores import StateMemo

LINKAGES = ("average", "complete", "single")


def duplicate_edges(det, index: QuestionIndex, k: int = 10, threshold: float | None = None,
                    chunk_size: int = 4096, progress: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges (i, j, probability) of the k-nearest-neighbour graph whose probability reaches `threshold`.

    Neighbours come from the index's vectors, probabilities from `QuestionIndex.rescore` as in search (for a
    pair head on token states: that head on both texts, each text's states computed once while a bounded
    `StateMemo` holds them). Queries run in chunks of stored vectors, so memory is O(n·k), never n×n.
    """
    index.check_model(det)
    threshold = det.threshold if threshold is None else threshold
    n = len(index)
    memo = StateMemo()
    src, dst, prob = [], [], []
    bar = progress_bar(total=n, desc="kNN graph", unit="q", show=progress)
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        vectors = index.index.reconstruct_n(start, stop - start)
        me = np.arange(start, stop)[:, None]
        rows = index.knn(vectors, k + 1)
        rows = np.where(rows == me, -1, rows)  # no question is its own duplicate
        embeddings = index.stored_embeddings(det, np.arange(start, stop))
        p = det.calibrator.predict_proba(index.rescore(det, embeddings, rows, index.texts[start:stop], memo))
        keep = (rows >= 0) & (p >= threshold)
        src.append(np.broadcast_to(me, rows.shape)[keep])
        dst.append(rows[keep])
        prob.append(p[keep])
        bar.update(stop - start)
    bar.close()
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)  # noqa: E731
    return cat(src, np.int64), cat(dst, np.int64), cat(prob, np.float64)


def _first_appearance(labels: np.ndarray) -> np.ndarray:
    """Relabel clusters 0, 1, … in the order their first member appears."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    renumber = np.empty(len(first), dtype=np.int64)
    renumber[np.argsort(first, kind="stable")] = np.arange(len(first))
    return renumber[inverse.reshape(-1)]


def connected_clusters(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Cluster id per node (connected components, numbered by first appearance) of an undirected edge list."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    return _first_appearance(labels)


def undirected_edges(src: np.ndarray, dst: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each unordered pair once (u < v), with the larger probability of its two directions."""
    u, v = np.minimum(src, dst), np.maximum(src, dst)
    keep = u != v
    u, v, p = u[keep], v[keep], np.asarray(prob, dtype=np.float64)[keep]
    order = np.lexsort((-p, v, u))  # per pair, the most likely direction first
    u, v, p = u[order], v[order], p[order]
    first = np.ones(len(u), dtype=bool)
    first[1:] = (u[1:] != u[:-1]) | (v[1:] != v[:-1])
    return u[first], v[first], p[first]


def _link_score(link: list, size_a: int, size_b: int, linkage: str) -> float:
    """Linkage probability of two groups from their cross links [sum, count, min]; missing pairs count 0."""
    pairs = size_a * size_b
    if linkage == "average":
        return link[0] / pairs
    return link[2] if link[1] == pairs else 0.0


def linkage_clusters(n: int, src: np.ndarray, dst: np.ndarray, prob: np.ndarray, threshold: float,
                     linkage: str = "average") -> np.ndarray:
    """Cluster id per node (numbered by first appearance) by agglomerative clustering of a sparse graph.

    Groups merge, most likely pair first, while their `linkage` probability (see the module
    docstring) reaches `threshold`. Edges below the threshold still count in average and
    complete linkage; pairs with no edge count as probability 0. Deterministic: ties go to
    the lower node ids.
    """
    if linkage not in LINKAGES:
        raise ValueError(f"unknown linkage {linkage!r}; use one of {LINKAGES}")
    u, v, p = undirected_edges(np.asarray(src), np.asarray(dst), prob)
    strong = p >= threshold
    components = connected_clusters(n, u[strong], v[strong])
    if linkage == "single":
        return components
    inside = components[u] == components[v]  # only these edges can ever take part in a merge
    u, v, p = u[inside], v[inside], p[inside]
    links: dict[int, dict[int, list]] = {}
    for a, b, q in zip(u.tolist(), v.tolist(), p.tolist()):
        link = [q, 1, q]  # shared by both directions
        links.setdefault(a, {})[b] = link
        links.setdefault(b, {})[a] = link
    parent = np.arange(n)
    size = np.ones(n, dtype=np.int64)

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = int(parent[x])
        return x

    # every live pair of groups has an entry whose key is at least its current score (merging
    # never raises a linkage score), so a popped entry either still holds or is pushed back lower
    heap = [(-q, a, b) for a, b, q in zip(u[strong[inside]].tolist(), v[strong[inside]].tolist(),
                                          p[strong[inside]].tolist())]
    heapq.heapify(heap)
    while heap:
        key, a, b = heapq.heappop(heap)
        a, b = root(a), root(b)
        if a == b:
            continue
        score = _link_score(links[a][b], size[a], size[b], linkage)
        if score < -key:
            if score >= threshold:
                heapq.heappush(heap, (-score, min(a, b), max(a, b)))
            continue
        if len(links[a]) < len(links[b]):
            a, b = b, a
        _merge_links(links, a, b)
        parent[b] = a
        size[a] += size[b]
    return _first_appearance(np.array([root(i) for i in range(n)], dtype=np.int64))


def _merge_links(links: dict, a: int, b: int) -> None:
    """Fold group b's cross links into group a's."""
    del links[a][b]
    for d, link in links.pop(b).items():
        if d == a:
            continue
        del links[d][b]
        mine = links[a].get(d)
        if mine is None:
            links[a][d] = links[d][a] = link
        else:
            mine[0] += link[0]
            mine[1] += link[1]
            mine[2] = min(mine[2], link[2])


def best_matches(n: int, src: np.ndarray, dst: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per node, its most likely neighbour (−1 if none) and that probability (NaN if none: an empty cell)."""
    best = np.full(n, -1, dtype=np.int64)
    best_p = np.full(n, np.nan)
    order = np.lexsort((-prob, src))  # by source, most likely duplicate first
    sources, first = np.unique(src[order], return_index=True)
    best[sources], best_p[sources] = dst[order][first], prob[order][first]
    return best, best_p


def pair_metrics(predicted, truth) -> dict:
    """Pairwise precision, recall and F1 of a grouping against the true groups (one label per item each).

    A pair of items is predicted positive when both share a predicted group, truly positive
    when both share a true group. Also reports the number of predicted groups with two or
    more members and the size of the largest.
    """
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    if predicted.shape != truth.shape:
        raise ValueError(f"{len(predicted)} predicted labels but {len(truth)} true labels")
    pairs = lambda counts: int((counts * (counts - 1) // 2).sum())  # noqa: E731
    _, pred_sizes = np.unique(predicted, return_counts=True)
    _, true_sizes = np.unique(truth, return_counts=True)
    _, cell_sizes = np.unique(np.stack([predicted, truth]), axis=1, return_counts=True)
    both, said, real = pairs(cell_sizes), pairs(pred_sizes), pairs(true_sizes)
    precision = both / said if said else 1.0
    recall = both / real if real else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "groups": int((pred_sizes > 1).sum()),
            "largest": int(pred_sizes.max()) if len(pred_sizes) else 0}


def dedup(det, texts, ids=None, k: int = 10, threshold: float | None = None, kind: str = "auto",
          batch_size: int | None = None, progress: bool | None = None, linkage: str = "average") -> pd.DataFrame:
    """Groups of duplicate questions: kNN graph → `linkage_clusters` at the threshold (default: the model's).

    A question written more than once (the same words; case and sentence punctuation aside:
    `qpairs.text.normalize_question`) is one node of the graph, so its copies always share a group.
    Returns one row per question (input order): id, text, cluster, cluster_size, best_match (id of its most
    likely duplicate: one of its copies when it has any, else the best of its k neighbours, even below the
    threshold; empty only without neighbours) and best_probability (the model's probability of that pair).
    """
    from .data import normalize_question
    from .text import as_text_list

    if linkage not in LINKAGES:
        raise ValueError(f"unknown linkage {linkage!r}; use one of {LINKAGES}")
    texts = as_text_list(texts, "texts", single=False)
    row_ids = [str(i) for i in range(len(texts))] if ids is None else id_texts(ids)
    if len(row_ids) != len(texts):
        raise ValueError(f"got {len(texts)} texts but {len(row_ids)} ids")
    check_new_ids(row_ids, set())  # before copies collapse: every row's id names that row alone
    threshold = det.threshold if threshold is None else threshold
    require_count(k, "k (neighbours per question)")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1] (a probability), got {threshold}")
    node = _nodes([normalize_question(t) or t for t in texts])
    first = np.unique(node, return_index=True)[1]  # the row of each node's first spelling
    if kind == "auto":
        kind = "flat" if len(first) <= AUTO_FLAT_MAX else "hnsw"
    index = QuestionIndex.build(det, [texts[r] for r in first], [row_ids[r] for r in first], kind=kind,
                                batch_size=batch_size, progress=progress)
    src, dst, prob = duplicate_edges(det, index, k, threshold=0.0, progress=progress)
    labels = linkage_clusters(len(index), src, dst, prob, threshold, linkage)[node]
    best, best_p = best_matches(len(index), src, dst, prob)
    best = np.where(best[node] >= 0, first[best[node]], -1)
    best_p = best_p[node]
    copied, copy = _copies(node, first)
    if len(copied):
        best[copied] = copy
        best_p[copied] = det.predict_proba([texts[r] for r in copied], [texts[r] for r in copy])
    return pd.DataFrame({
        "id": row_ids, "text": texts, "cluster": labels, "cluster_size": np.bincount(labels)[labels],
        "best_match": [row_ids[b] if b >= 0 else "" for b in best], "best_probability": best_p,
    })


def _nodes(keys: list[str]) -> np.ndarray:
    """Per row, the graph node of its key, nodes numbered in order of first appearance."""
    node: dict[str, int] = {}
    return np.array([node.setdefault(key, len(node)) for key in keys], dtype=np.int64)


def _copies(node: np.ndarray, first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose node holds other rows too, and for each, one of those: the node's first row, or, for the
    first row itself, the node's second."""
    rows = np.arange(len(node))
    shared = np.bincount(node)[node] > 1
    later = rows[shared & (rows != first[node])]
    second = np.full(len(first), -1)
    nodes, earliest = np.unique(node[later], return_index=True)
    second[nodes] = later[earliest]
    copied = rows[shared]
    return copied, np.where(copied == first[node[copied]], second[node[copied]], first[node[copied]])
