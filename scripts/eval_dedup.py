#!/usr/bin/env python
"""Evaluate `qpairs dedup` groupings against the QQP duplicate groups, every linkage on one kNN graph.

True groups are the components of the labelled duplicate pairs over all labelled QQP files
(`DuplicateGraph`). The sample holds every question of `--groups` random true groups of 2 to
`--max-group` questions, plus `--distractors` questions that have no labelled duplicate.
The questions are encoded and linked to their k nearest neighbours once; then each linkage
(`qpairs.dedup.linkage_clusters`) at each threshold is scored by pairwise precision, recall
and F1 (`pair_metrics`), with the number of groups and the size of the largest.

QQP labels only some pairs: two questions grouped together without a labelled path between
them count as a false positive even when they are duplicates, so precision is a lower bound.
The default model may have trained on these pairs: the numbers compare linkages, they do not
measure the model. `--model` takes any run directory: neighbours come from its pooled vectors, edge
probabilities from `QuestionIndex.rescore` (a matching pair head's, for a run that has one).

    python scripts/eval_dedup.py --thresholds 0.476 0.6 0.7 0.8 0.9 --show 4
    python scripts/eval_dedup.py --model runs/matching --groups 200 --distractors 800
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from qpairs import data as qd
from qpairs.checkpoint import model_fingerprint
from qpairs.dedup import LINKAGES, duplicate_edges, linkage_clusters, pair_metrics, undirected_edges
from qpairs.search import QuestionIndex
from qpairs.triplets import DuplicateGraph


def sample(graph: DuplicateGraph, groups: int, max_group: int, distractors: int, seed: int,
           allowed: np.ndarray | None = None) -> np.ndarray:
    """Node ids: all members of random true groups of 2..max_group questions, plus questions without duplicates;
    `allowed` (a mask over nodes): only groups all of whose members it allows, and only allowed distractors."""
    rng = np.random.default_rng(seed)
    sizes = np.bincount(graph.group)
    whole = np.ones(len(sizes), dtype=bool) if allowed is None else np.bincount(graph.group, allowed) == sizes
    eligible = np.flatnonzero((sizes >= 2) & (sizes <= max_group) & whole)
    chosen = rng.choice(eligible, size=min(groups, len(eligible)), replace=False)
    members = np.flatnonzero(np.isin(graph.group, chosen))
    alone = np.flatnonzero((sizes[graph.group] == 1) & (True if allowed is None else allowed))
    extra = rng.choice(alone, size=min(distractors, len(alone)), replace=False)
    nodes = np.concatenate([members, extra])
    rng.shuffle(nodes)
    return nodes


def show_groups(labels: np.ndarray, texts: list[str], count: int, seed: int) -> list[list[str]]:
    """Texts of the largest group and of `count` − 1 random groups of two or more."""
    sizes = np.bincount(labels)
    multi = np.flatnonzero(sizes > 1)
    if not len(multi):
        return []
    rng = np.random.default_rng(seed)
    rest = multi[multi != multi[np.argmax(sizes[multi])]]
    picks = [multi[np.argmax(sizes[multi])], *rng.choice(rest, size=min(count - 1, len(rest)), replace=False)]
    return [[texts[i] for i in np.flatnonzero(labels == g)] for g in picks]


def error_pairs(labels: np.ndarray, truth: np.ndarray, count: int, seed: int) -> tuple[list[tuple[int, int]], int]:
    """`count` random pairs (i < j, positions in the sample) grouped together whose true groups differ: the pairs
    that precision counts as errors, to read (QQP leaves many true duplicates unlabelled); and how many there are."""
    pairs = [(int(a), int(b)) for g in np.unique(labels) for m in [np.flatnonzero(labels == g)] if len(m) > 1
             for x, a in enumerate(m) for b in m[x + 1 :] if truth[a] != truth[b]]
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(pairs), size=min(count, len(pairs)), replace=False))
    return [pairs[i] for i in picked], len(pairs)


def edge_metrics(src, dst, prob, truth: np.ndarray, threshold: float) -> dict:
    """Pairwise precision and recall of the thresholded kNN edges themselves, before any grouping."""
    u, v, p = undirected_edges(src, dst, prob)
    said = p >= threshold
    both = int((truth[u[said]] == truth[v[said]]).sum())
    sizes = np.bincount(truth)
    real = int((sizes * (sizes - 1) // 2).sum())
    precision, recall = both / max(int(said.sum()), 1), both / max(real, 1)
    return {"precision": precision, "recall": recall, "f1": 2 * precision * recall / max(precision + recall, 1e-12)}


def outside_training(graph: DuplicateGraph, frame, split_seed: int) -> np.ndarray:
    """Mask over the graph's nodes: questions in no training pair of `qpairs train --seed split_seed` (split by
    question, the default), i.e. the questions that run held out for validation and test."""
    from qpairs.data import normalize_question, split_by_question

    train = split_by_question(frame, seed=split_seed)["train"]
    seen = set(train["question1"].map(normalize_question)) | set(train["question2"].map(normalize_question))
    return ~pd.Series(graph.texts).map(normalize_question).isin(seen).to_numpy()


def knn_edges(det, texts: list[str], k: int, cache: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kNN graph's edges (every probability kept), from `cache` when it was written for these texts and k."""
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    key = f"{len(texts)}:{k}:{digest}:{model_fingerprint(det)}:{det.backend}"
    if cache and Path(cache).exists():
        saved = np.load(cache, allow_pickle=False)
        if str(saved["key"]) != key:
            raise SystemExit(f"{cache} holds edges of another model, sample or k; remove it or pick another --edges")
        return saved["src"], saved["dst"], saved["prob"]
    index = QuestionIndex.build(det, texts, kind="flat")
    src, dst, prob = duplicate_edges(det, index, k=k, threshold=0.0)
    if cache:
        np.savez(cache, src=src, dst=dst, prob=prob, key=np.array(key))
    return src, dst, prob


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="run directory or bundled model name (default: the bundled default model); a "
                   "run with --pair-head matching links the pooled neighbours with its head's probabilities")
    p.add_argument("--backend", default="auto")
    p.add_argument("--data", help="shared data folder (default: qpairs.data.default_data_dir())")
    p.add_argument("--groups", type=int, default=800, help="true groups to include whole")
    p.add_argument("--max-group", type=int, default=10, help="largest true group to draw")
    p.add_argument("--distractors", type=int, default=3000, help="questions without a labelled duplicate")
    p.add_argument("-k", type=int, default=10, help="neighbours per question in the kNN graph")
    p.add_argument("--thresholds", type=float, nargs="+", help="probability cuts (default: the model's threshold)")
    p.add_argument("--linkages", nargs="+", default=list(LINKAGES), choices=LINKAGES)
    p.add_argument("--show", type=int, default=0, help="print this many groups of each linkage at the first threshold")
    p.add_argument("--errors", type=int, default=0, help="print this many random pairs counted as errors (grouped "
                   "together, different true groups) for the first linkage at the first threshold")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--held-out-of", type=int, metavar="SPLIT_SEED",
                   help="draw only questions that the question split of `qpairs train --seed SPLIT_SEED` keeps out of "
                        "training (the bundled models: 0), so that no model has seen the pairs it groups")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--edges", help="an .npz of the kNN graph's edges: read when it exists (same model, sample and k), "
                   "else written, so more thresholds cost no encoding")
    args = p.parse_args(argv)

    import qpairs

    frame = qd.load_pairs(qd.qqp_files(args.data))
    graph = DuplicateGraph.from_pairs(frame)
    allowed = None if args.held_out_of is None else outside_training(graph, frame[frame["is_duplicate"] >= 0],
                                                                     args.held_out_of)
    nodes = sample(graph, args.groups, args.max_group, args.distractors, args.seed, allowed)
    texts, truth = [str(t) for t in graph.texts[nodes]], graph.group[nodes]
    print(f"{len(nodes)} questions: {len(np.unique(truth[np.bincount(truth)[truth] > 1]))} true groups "
          f"covering {int((np.bincount(truth)[truth] > 1).sum())}, the rest without a labelled duplicate", flush=True)
    det = qpairs.load(args.model, device="cpu", backend=args.backend)
    t0 = time.perf_counter()
    src, dst, prob = knn_edges(det, texts, args.k, args.edges)
    print(f"model {det.path} ({det.backend}): encoded and linked in {time.perf_counter() - t0:.0f} s; "
          f"k={args.k}, model threshold {det.threshold:.3f}", flush=True)
    thresholds = args.thresholds or [det.threshold]
    rows, shown, errors, errors_at, error_count = [], {}, [], None, 0
    for threshold in thresholds:
        rows.append({"linkage": "edges alone, no grouping", "threshold": threshold,
                     **edge_metrics(src, dst, prob, truth, threshold), "groups": "–", "largest": "–"})
        for linkage in args.linkages:
            t1 = time.perf_counter()
            labels = linkage_clusters(len(texts), src, dst, prob, threshold, linkage)
            rows.append({"linkage": linkage, "threshold": threshold, **pair_metrics(labels, truth),
                         "seconds": time.perf_counter() - t1})
            if args.show and threshold == thresholds[0]:
                shown[linkage] = show_groups(labels, texts, args.show, args.seed)
            if args.errors and not errors:
                errors, error_count = error_pairs(labels, truth, args.errors, args.seed)
                errors_at = (linkage, threshold)
    print("\n| linkage | threshold | precision | recall | F1 | groups | largest |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['linkage']} | {r['threshold']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} "
              f"| {r['groups']} | {r['largest']} |")
    for linkage, groups in shown.items():
        print(f"\n{linkage} linkage at {thresholds[0]:.3f}: largest group, then random groups")
        for g in groups:
            print(f"  [{len(g)}] " + " | ".join(g[:12]) + (" | …" if len(g) > 12 else ""))
    if errors:
        print(f"\n{len(errors)} random pairs of the {error_count} counted as errors, "
              f"{errors_at[0]} linkage at {errors_at[1]:.3f} "
              "(sample positions i, j):")
        for i, j in errors:
            print(f"  {i}\t{j}\t{texts[i]}\t{texts[j]}")
    if args.out:
        Path(args.out).write_text(json.dumps({"questions": len(texts), "k": args.k, "model": str(det.path),
                                              "results": rows, "groups": shown, "errors": errors}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
