"""Triplets (anchor, positive, negative) from labelled question pairs.

QQP labels pairs; the triplet and in-batch losses need an anchor, a duplicate of it and a
non-duplicate. This module builds them:

* `DuplicateGraph.from_pairs(frame)`: questions (normalised text) are nodes, labelled
  duplicates are edges. Duplicates are transitive (A~B, B~C ⇒ A~C), so every connected
  component is one "same question" class; its id is the question's *group*.
* `DuplicateGraph.positive_pairs()`: the labelled duplicates plus the pairs transitivity
  adds (every pair inside a component, capped per component), with counts of both.
* `TripletSampler`: one triplet per positive pair and epoch, with the negative drawn
  ``labelled`` (the anchor's labelled non-duplicates: hard, topical; else those of its
  component, since A~B and B≁C ⇒ A≁C; else random) or ``random`` (any other component).
* `mine_negatives`: batch-hard or semi-hard choice of each anchor's negative among all
  rows of the batch that are not in its group (FaceNet; Hermans et al. 2017).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .data import normalize_question
from .losses import distance_matrix, pair_distance

log = logging.getLogger("qpairs")

NEGATIVE_SOURCES = ("labelled", "random")
MINING = ("none", "batch_hard", "semi_hard")


@dataclass
class DuplicateGraph:
    """Questions as nodes, labelled duplicates and non-duplicates as edges, components as groups."""

    texts: np.ndarray  # representative text of each node (the first spelling seen)
    group: np.ndarray  # component id of each node in the duplicate graph
    pos_edges: np.ndarray  # [m, 2] node ids of labelled duplicates (u < v, unique)
    neg_edges: np.ndarray  # [k, 2] node ids of labelled non-duplicates (u < v, unique)
    stats: dict = field(default_factory=dict)

    @classmethod
    def from_pairs(cls, frame: pd.DataFrame) -> "DuplicateGraph":
        """Build the graph from a frame with question1, question2, is_duplicate (unlabelled rows ignored)."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        frame = frame[frame["is_duplicate"] >= 0]
        k1 = frame["question1"].map(normalize_question).to_numpy()
        k2 = frame["question2"].map(normalize_question).to_numpy()
        texts = pd.concat([frame["question1"], frame["question2"]], ignore_index=True)
        keys = pd.Series(np.concatenate([k1, k2]))
        first = ~keys.duplicated().to_numpy()
        nodes = pd.Index(keys[first])
        i, j = nodes.get_indexer(k1), nodes.get_indexer(k2)
        y = frame["is_duplicate"].to_numpy()

        def edges(mask):
            e = np.sort(np.stack([i[mask], j[mask]], 1), axis=1)
            e = e[e[:, 0] != e[:, 1]]  # a question paired with itself (after normalisation) says nothing
            return np.unique(e, axis=0) if len(e) else e.reshape(0, 2)

        pos, neg = edges(y == 1), edges(y == 0)
        adj = coo_matrix((np.ones(len(pos)), (pos[:, 0], pos[:, 1])), shape=(len(nodes), len(nodes)))
        _, group = connected_components(adj, directed=False)
        conflicts = int((group[neg[:, 0]] == group[neg[:, 1]]).sum())
        if conflicts:
            log.info("%d labelled non-duplicates join two questions that transitivity makes duplicates; "
                     "they are kept as negatives and excluded from the transitive positives", conflicts)
        stats = {"questions": len(nodes), "groups": int(group.max() + 1) if len(group) else 0,
                 "labelled_positive_pairs": len(pos), "labelled_negative_pairs": len(neg),
                 "negatives_inside_a_group": conflicts}
        return cls(texts[first].to_numpy(), group, pos, neg, stats)

    def positive_pairs(self, transitive: bool = True, max_per_group: int | None = 1000,
                       seed: int = 0) -> np.ndarray:
        """[n, 2] node pairs to train on: the labelled duplicates, plus transitive ones.

        Transitive pairs are all pairs inside a group that are not labelled (either way);
        a group with more than `max_per_group` such pairs contributes a random sample of
        that many. `stats` records how many pairs transitivity added.
        """
        if not transitive:
            self.stats["transitive_pairs_added"] = 0
            return self.pos_edges
        rng = np.random.default_rng(seed)
        known = {(int(u), int(v)) for u, v in np.concatenate([self.pos_edges, self.neg_edges])}
        order = np.argsort(self.group, kind="stable")
        bounds = np.flatnonzero(np.diff(self.group[order])) + 1
        added = []
        for members in np.split(order, bounds):
            if len(members) < 3:  # a pair or a single question: nothing to infer
                continue
            u, v = np.triu_indices(len(members), 1)
            cand = np.sort(np.stack([members[u], members[v]], 1), axis=1)
            cand = cand[[(int(a), int(b)) not in known for a, b in cand]]
            if max_per_group is not None and len(cand) > max_per_group:
                cand = cand[rng.choice(len(cand), max_per_group, replace=False)]
            added.append(cand)
        extra = np.concatenate(added) if added else np.zeros((0, 2), dtype=self.pos_edges.dtype)
        self.stats["transitive_pairs_added"] = len(extra)
        log.info("transitivity: %d labelled duplicate pairs + %d inferred (A~B, B~C ⇒ A~C) in %d groups",
                 len(self.pos_edges), len(extra), self.stats["groups"])
        return np.concatenate([self.pos_edges, extra])

    def inferred_negatives(self, max_per_negative: int = 8, seed: int = 0) -> np.ndarray:
        """[n, 2] node pairs that are non-duplicates by inference: A≁C labelled and A~A' ⇒ A'≁C.

        For each labelled non-duplicate (A, C), the candidates are every other member of A's
        group paired with C and every other member of C's group paired with A; pairs already
        labelled, or inside one group, are skipped; each labelled non-duplicate contributes a
        random sample of at most `max_per_negative`. They are hard negatives: a rewording of A
        against the question A was confused with.
        """
        rng = np.random.default_rng(seed)
        g = self.group
        order = np.argsort(g, kind="stable")
        members = {int(g[m[0]]): m for m in np.split(order, np.flatnonzero(np.diff(g[order])) + 1) if len(m)}
        known = {(int(u), int(v)) for u, v in np.concatenate([self.pos_edges, self.neg_edges])}
        taken: set[tuple[int, int]] = set()
        for a, c in self.neg_edges:
            if g[a] == g[c]:
                continue
            cand = [(int(x), int(c)) for x in members[int(g[a])] if x != a]
            cand += [(int(a), int(x)) for x in members[int(g[c])] if x != c]
            cand = [(min(u, v), max(u, v)) for u, v in cand]
            cand = [e for e in cand if e not in known and e not in taken]
            if len(cand) > max_per_negative:
                cand = [cand[i] for i in rng.choice(len(cand), max_per_negative, replace=False)]
            taken.update(cand)
        out = np.array(sorted(taken), dtype=np.int64).reshape(-1, 2)
        self.stats["inferred_negative_pairs"] = len(out)
        log.info("inferred non-duplicates (A≁C, A~A' ⇒ A'≁C): %d from %d labelled", len(out), len(self.neg_edges))
        return out

    def pair_frame(self, edges: np.ndarray, label: int, source: str) -> pd.DataFrame:
        """Node pairs as a pair frame (question1, question2, is_duplicate, source)."""
        return pd.DataFrame({"question1": self.texts[edges[:, 0]], "question2": self.texts[edges[:, 1]],
                             "is_duplicate": np.full(len(edges), label, dtype=np.int64), "source": source})


class TripletSampler:
    """Per-epoch (anchor, positive, negative) triplets from a `DuplicateGraph`.

    Each positive pair gives one triplet per epoch, in a random orientation; the negative is
    drawn fresh every epoch from `negatives` ("labelled": the anchor's labelled non-duplicates, else its group's,
    else random; or "random").
    """

    def __init__(self, graph: DuplicateGraph, negatives: str = "labelled", transitive: bool = True,
                 max_per_group: int | None = 1000, seed: int = 0):
        if negatives not in NEGATIVE_SOURCES:
            raise ValueError(f"unknown negatives {negatives!r}; use one of {NEGATIVE_SOURCES}")
        self.graph, self.negatives = graph, negatives
        self.pairs = graph.positive_pairs(transitive, max_per_group, seed)
        if len(self.pairs) == 0:
            raise ValueError("no duplicate pairs in the training data: triplet losses need positives")
        if graph.stats["groups"] < 2:
            raise ValueError("all training questions are duplicates of each other: no negatives to sample")
        n = len(graph.texts)
        # direct labelled non-duplicates of each node, and of each group (A~B, B≁C ⇒ A≁C)
        self._direct = _neighbours(n, graph.neg_edges)
        g = graph.group
        group_edges = np.unique(np.sort(np.stack([g[graph.neg_edges[:, 0]], g[graph.neg_edges[:, 1]]], 1), 1), axis=0)
        group_edges = group_edges[group_edges[:, 0] != group_edges[:, 1]]
        self._group_neighbours = _neighbours(int(g.max()) + 1, group_edges)
        order = np.argsort(g, kind="stable")
        self._members = np.split(order, np.flatnonzero(np.diff(g[order])) + 1)

    def __len__(self) -> int:
        return len(self.pairs)

    def epoch(self, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """(anchor, positive, negative) node ids in a shuffled order, and where the negatives came from."""
        rng = np.random.default_rng(seed)
        pairs = self.pairs[rng.permutation(len(self.pairs))]
        flip = rng.random(len(pairs)) < 0.5
        anchor = np.where(flip, pairs[:, 1], pairs[:, 0])
        positive = np.where(flip, pairs[:, 0], pairs[:, 1])
        negative, counts = np.empty_like(anchor), {"labelled": 0, "group": 0, "random": 0}
        for k, a in enumerate(anchor):
            negative[k], source = self._negative(int(a), rng)
            counts[source] += 1
        return anchor, positive, negative, counts

    def _negative(self, a: int, rng) -> tuple[int, str]:
        g = self.graph.group
        if self.negatives == "labelled":
            direct = [b for b in self._direct.get(a, ()) if g[b] != g[a]]
            if direct:
                return int(rng.choice(direct)), "labelled"
            groups = self._group_neighbours.get(int(g[a]), ())
            if groups:
                return int(rng.choice(self._members[int(rng.choice(groups))])), "group"
        while True:  # at least two groups exist (checked in __init__)
            b = int(rng.integers(len(g)))
            if g[b] != g[a]:
                return b, "random"

    def batches(self, batch_size: int, seed: int, order=None):
        """Yield (anchors, positives, negatives, groups [3B] tensor) text batches for one epoch.

        `order` optionally maps the epoch's triplet positions (e.g. a distributed shard).
        """
        a, p, n, counts = self.epoch(seed)
        log.debug("negatives this epoch: %s", counts)
        idx = np.arange(len(a)) if order is None else order(np.arange(len(a)))
        texts, g = self.graph.texts, self.graph.group
        for s in range(0, len(idx), batch_size):
            b = idx[s : s + batch_size]
            groups = torch.as_tensor(np.concatenate([g[a[b]], g[p[b]], g[n[b]]]), dtype=torch.long)
            yield list(texts[a[b]]), list(texts[p[b]]), list(texts[n[b]]), groups


def _neighbours(n: int, edges: np.ndarray) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for u, v in edges:
        out.setdefault(int(u), []).append(int(v))
        out.setdefault(int(v), []).append(int(u))
    return out


@torch.no_grad()
def mine_negatives(anchor, positive, candidates, anchor_groups, candidate_groups, strategy: str = "batch_hard",
                   distance: str = "euclidean") -> torch.Tensor:
    """Index into `candidates` of each anchor's mined negative (never a row of the anchor's group).

    batch_hard: the closest candidate. semi_hard (FaceNet): the closest candidate that is
    still farther than the positive; when there is none, the farthest candidate. Anchors
    without any valid candidate get index -1.
    """
    if strategy not in MINING[1:]:
        raise ValueError(f"unknown mining {strategy!r}; use one of {MINING[1:]}")
    d = distance_matrix(anchor, candidates, distance)
    valid = anchor_groups[:, None] != candidate_groups[None, :]
    inf = torch.tensor(float("inf"), device=d.device, dtype=d.dtype)
    if strategy == "batch_hard":
        idx = torch.where(valid, d, inf).argmin(1)
    else:
        d_ap = pair_distance(anchor, positive, distance)[:, None]
        semi = valid & (d > d_ap)
        closest_semi = torch.where(semi, d, inf).argmin(1)
        farthest = torch.where(valid, d, -inf).argmax(1)
        idx = torch.where(semi.any(1), closest_semi, farthest)
    return torch.where(valid.any(1), idx, torch.full_like(idx, -1))
