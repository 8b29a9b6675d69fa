"""Grouping a kNN graph into duplicate groups (linkage clustering) and scoring groups against true ones."""
import itertools

import numpy as np
import pandas as pd
import pytest

from qpairs.dedup import best_matches, linkage_clusters, pair_metrics, undirected_edges
from qpairs.triplets import DuplicateGraph


def clique(nodes, p):
    pairs = list(itertools.combinations(nodes, 2))
    return [a for a, _ in pairs], [b for _, b in pairs], [p] * len(pairs)


def graph(*parts):
    src, dst, prob = (np.concatenate([np.asarray(part[i]) for part in parts]) for i in range(3))
    return src.astype(np.int64), dst.astype(np.int64), prob.astype(float)


def same_partition(a, b) -> bool:
    return len(set(zip(a, b))) == len(set(a)) == len(set(b))


def test_pair_metrics_on_a_generated_duplicate_graph():
    # true groups from labelled pairs: {a, b, c} (a~b, b~c), {d, e}, f and g alone (only non-duplicates)
    frame = pd.DataFrame({"question1": ["a?", "b?", "d?", "f?", "a?"], "question2": ["b?", "c?", "e?", "g?", "d?"],
                          "is_duplicate": [1, 1, 1, 0, 0]})
    g = DuplicateGraph.from_pairs(frame)
    truth = g.group[[list(g.texts).index(t) for t in ["a?", "b?", "c?", "d?", "e?", "f?", "g?"]]]
    # predicted {a, b} {c} {d, e, f} {g}: predicted pairs ab de df ef; true pairs ab ac bc de
    m = pair_metrics([0, 0, 1, 2, 2, 2, 3], truth)
    assert m["precision"] == pytest.approx(2 / 4) and m["recall"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx(0.5) and m["groups"] == 2 and m["largest"] == 3
    assert pair_metrics(truth, truth) | {"groups": 0, "largest": 0} == {"precision": 1.0, "recall": 1.0, "f1": 1.0,
                                                                         "groups": 0, "largest": 0}


def test_pair_metrics_equal_counting_every_pair():
    rng = np.random.default_rng(0)
    pred, truth = rng.integers(0, 8, 60), rng.integers(0, 12, 60)
    pairs = list(itertools.combinations(range(60), 2))
    said = {(i, j) for i, j in pairs if pred[i] == pred[j]}
    real = {(i, j) for i, j in pairs if truth[i] == truth[j]}
    m = pair_metrics(pred, truth)
    assert m["precision"] == pytest.approx(len(said & real) / len(said))
    assert m["recall"] == pytest.approx(len(said & real) / len(real))
    with pytest.raises(ValueError, match="59 true labels"):
        pair_metrics(pred, truth[:59])


def test_a_weak_link_chains_two_groups_only_under_single_linkage():
    # true groups {0..3} and {4..7}, each a clique at 0.9, plus one cross link 3~4 above the threshold
    src, dst, prob = graph(clique(range(4), 0.9), clique(range(4, 8), 0.9), ([3], [4], [0.6]))
    truth = [0, 0, 0, 0, 1, 1, 1, 1, 2]
    single = linkage_clusters(9, src, dst, prob, 0.5, "single")
    assert single.tolist() == [0] * 8 + [1]
    for linkage in ("average", "complete"):
        labels = linkage_clusters(9, src, dst, prob, 0.5, linkage)
        assert labels.tolist() == truth
        assert pair_metrics(labels, truth)["precision"] == 1.0 > pair_metrics(single, truth)["precision"]


def test_average_linkage_tolerates_a_weak_pair_inside_a_group_and_stops_a_chain():
    # 0..3: all pairs 0.9 but 0~3 at 0.3 (below the threshold): still one group under average, not under complete
    src, dst, prob = graph(([0, 0, 1, 1, 2], [1, 2, 2, 3, 3], [0.9] * 5), ([0], [3], [0.3]))
    assert linkage_clusters(4, src, dst, prob, 0.5, "average").tolist() == [0, 0, 0, 0]
    assert len(set(linkage_clusters(4, src, dst, prob, 0.5, "complete"))) == 2
    # a chain 0~1~…~5 at 0.8 with nothing else: pairs, not one group of six
    chain = graph((range(5), range(1, 6), [0.8] * 5))
    assert linkage_clusters(6, *chain, 0.5, "single").tolist() == [0] * 6
    assert np.bincount(linkage_clusters(6, *chain, 0.5, "average")).max() == 2


@pytest.mark.parametrize("linkage", ["average", "complete"])
def test_linkage_on_a_full_graph_equals_scipy_hierarchical_clustering(linkage):
    from scipy.cluster.hierarchy import fcluster, linkage as scipy_linkage
    from scipy.spatial.distance import squareform

    rng = np.random.default_rng(1)
    n = 30
    centres = rng.integers(0, 6, n)
    p = np.clip(np.where(centres[:, None] == centres[None, :], 0.8, 0.2) + rng.normal(0, 0.15, (n, n)), 0, 1)
    p = (p + p.T) / 2
    src, dst = np.triu_indices(n, 1)
    ours = linkage_clusters(n, src, dst, p[src, dst], 0.5, linkage)
    dist = 1 - p
    np.fill_diagonal(dist, 0)
    theirs = fcluster(scipy_linkage(squareform(dist), method=linkage), t=0.5, criterion="distance")
    assert same_partition(ours, theirs) and len(set(ours)) > 1


def test_linkage_ignores_edge_order_and_direction():
    rng = np.random.default_rng(2)
    src, dst = rng.integers(0, 200, 1500), rng.integers(0, 200, 1500)
    prob = rng.random(1500)
    labels = linkage_clusters(200, src, dst, prob, 0.7)
    order = rng.permutation(1500)
    assert linkage_clusters(200, dst[order], src[order], prob[order], 0.7).tolist() == labels.tolist()
    assert labels[0] == 0 and np.all(np.diff(np.maximum.accumulate(labels)) <= 1)  # numbered by first appearance
    with pytest.raises(ValueError, match="unknown linkage 'ward'"):
        linkage_clusters(200, src, dst, prob, 0.7, "ward")


def test_undirected_edges_keep_the_likelier_direction_and_best_matches_keep_weak_ones():
    u, v, p = undirected_edges(np.array([0, 1, 2, 2]), np.array([1, 0, 2, 0]), np.array([0.4, 0.7, 1.0, 0.1]))
    assert (u.tolist(), v.tolist(), p.tolist()) == ([0, 0], [1, 2], [0.7, 0.1])
    best, best_p = best_matches(4, np.array([0, 0, 1, 2]), np.array([1, 2, 0, 0]), np.array([0.2, 0.1, 0.7, 0.05]))
    assert best.tolist() == [1, 0, 0, -1] and best_p[:3].tolist() == [0.2, 0.7, 0.05]
    assert np.isnan(best_p[3])  # no neighbour: no probability (an empty cell), not 0.0


def test_eval_dedup_scores_the_thresholded_edges_before_grouping(load_script):
    eval_dedup = load_script("eval_dedup")
    truth = np.array([0, 0, 1, 1, 2])
    src, dst, prob = np.array([0, 1, 2, 0]), np.array([1, 0, 3, 2]), np.array([0.9, 0.8, 0.3, 0.7])
    m = eval_dedup.edge_metrics(src, dst, prob, truth, threshold=0.5)  # edges 0-1 (right) and 0-2 (wrong)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)
    assert eval_dedup.edge_metrics(src, dst, prob, truth, threshold=0.2)["recall"] == pytest.approx(1.0)
