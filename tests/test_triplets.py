"""Triplets from pairs: duplicate groups, transitive positives, negative sources, in-batch mining."""
import numpy as np
import pandas as pd
import pytest
import torch

from qpairs.triplets import DuplicateGraph, TripletSampler, mine_negatives


def _frame(rows):
    return pd.DataFrame(rows, columns=["question1", "question2", "is_duplicate"])


# A~B, B~C (so A~C), D~E; A≁D labelled; C≁F labelled; "a?" is A spelled differently.
ROWS = [("A one?", "B two?", 1), ("B two?", "C three?", 1), ("D four?", "E five?", 1),
        ("A one?", "D four?", 0), ("C three?", "F six?", 0), ("a one", "E five?", 0)]


def _node(graph, text):
    return int(np.flatnonzero(graph.texts == text)[0])


def test_groups_are_connected_components_of_duplicates():
    g = DuplicateGraph.from_pairs(_frame(ROWS))
    assert g.stats["questions"] == 6  # "a one" is "A one?" after normalisation
    grp = {t: g.group[_node(g, t)] for t in ("A one?", "B two?", "C three?", "D four?", "E five?", "F six?")}
    assert grp["A one?"] == grp["B two?"] == grp["C three?"]
    assert grp["D four?"] == grp["E five?"] != grp["A one?"]
    assert len({grp["F six?"], grp["A one?"], grp["D four?"]}) == 3
    assert g.stats["labelled_positive_pairs"] == 3 and g.stats["labelled_negative_pairs"] == 3


def test_transitivity_adds_exactly_the_inferred_pairs():
    g = DuplicateGraph.from_pairs(_frame(ROWS))
    pairs = g.positive_pairs(transitive=True)
    assert g.stats["transitive_pairs_added"] == 1
    a, c = _node(g, "A one?"), _node(g, "C three?")
    assert (min(a, c), max(a, c)) in {tuple(p) for p in pairs}
    assert len(g.positive_pairs(transitive=False)) == 3 and g.stats["transitive_pairs_added"] == 0


def test_transitivity_respects_labelled_negatives_and_the_cap():
    rows = ROWS + [("A one?", "C three?", 0)]  # QQP-style inconsistency: A≁C although A~B~C
    g = DuplicateGraph.from_pairs(_frame(rows))
    assert g.stats["negatives_inside_a_group"] == 1
    g.positive_pairs()
    assert g.stats["transitive_pairs_added"] == 0
    # a chain of 6 duplicates: 15 pairs in the group, 5 labelled, 10 inferred; cap 4
    chain = _frame([(f"q{i}", f"q{i + 1}", 1) for i in range(5)] + [("q0", "other", 0)])
    g = DuplicateGraph.from_pairs(chain)
    assert len(g.positive_pairs(max_per_group=None)) == 15 and g.stats["transitive_pairs_added"] == 10
    assert len(g.positive_pairs(max_per_group=4)) == 9


def test_labelled_negatives_come_first_then_the_group_then_random():
    g = DuplicateGraph.from_pairs(_frame(ROWS))
    s = TripletSampler(g, "labelled", seed=0)
    rng = np.random.default_rng(0)
    a, b, d, e, f = (_node(g, t) for t in ("A one?", "B two?", "D four?", "E five?", "F six?"))
    assert {s._negative(a, rng) for _ in range(20)} <= {(d, "labelled"), (e, "labelled")}  # A≁D and a≁E
    # B has no labelled negative of its own; its group does (A≁D, a≁E, C≁F): all of D, E, F are non-duplicates of B
    got = {s._negative(b, rng) for _ in range(50)}
    assert got == {(d, "group"), (e, "group"), (f, "group")}
    # F's group (F alone) is linked to the ABC group
    assert {s._negative(f, rng)[1] for _ in range(20)} == {"labelled"}


def test_epoch_triplets_are_valid_and_reproducible():
    g = DuplicateGraph.from_pairs(_frame(ROWS))
    for source in ("labelled", "random"):
        s = TripletSampler(g, source, seed=0)
        anchor, pos, neg, counts = s.epoch(seed=3)
        assert len(anchor) == len(s) == 4  # 3 labelled + 1 transitive positive pair
        assert np.all(g.group[anchor] == g.group[pos]) and np.all(g.group[anchor] != g.group[neg])
        assert sum(counts.values()) == 4
        again = s.epoch(seed=3)
        assert all(np.array_equal(x, y) for x, y in zip((anchor, pos, neg), again[:3]))
    assert counts == {"labelled": 0, "group": 0, "random": 4}
    batches = list(TripletSampler(g, seed=0).batches(batch_size=3, seed=1))
    assert [len(b[0]) for b in batches] == [3, 1]
    a_texts, p_texts, n_texts, groups = batches[0]
    assert len(groups) == 9 and torch.equal(groups[:3], groups[3:6]) and not torch.any(groups[:3] == groups[6:])


def test_sampler_rejects_data_without_positives_or_negatives():
    with pytest.raises(ValueError, match="no duplicate pairs"):
        TripletSampler(DuplicateGraph.from_pairs(_frame([("x", "y", 0)])))
    with pytest.raises(ValueError, match="no negatives"):
        TripletSampler(DuplicateGraph.from_pairs(_frame([("x", "y", 1)])))
    with pytest.raises(ValueError, match="unknown negatives"):
        TripletSampler(DuplicateGraph.from_pairs(_frame(ROWS)), "tags")


def test_mining_batch_hard_and_semi_hard():
    anchor = torch.tensor([[0.0, 0.0]])
    positive = torch.tensor([[1.0, 0.0]])  # d(a, p) = 1
    cands = torch.tensor([[0.1, 0.0], [0.5, 0.0], [1.5, 0.0], [3.0, 0.0], [0.0, 2.0]])
    groups = torch.tensor([0, 1, 1, 1, 1])  # candidate 0 is the anchor's own group: never a negative
    a_group = torch.tensor([0])
    assert mine_negatives(anchor, positive, cands, a_group, groups, "batch_hard").tolist() == [1]  # d 0.5
    assert mine_negatives(anchor, positive, cands, a_group, groups, "semi_hard").tolist() == [2]  # closest with d > 1
    far = torch.tensor([[5.0, 0.0]])  # d(a, p) = 5: no candidate beyond it → the farthest valid one
    assert mine_negatives(anchor, far, cands, a_group, groups, "semi_hard").tolist() == [3]
    assert mine_negatives(anchor, positive, cands, a_group, torch.zeros(5, dtype=torch.long)).tolist() == [-1]
    with pytest.raises(ValueError, match="unknown mining"):
        mine_negatives(anchor, positive, cands, a_group, groups, "random")


def test_inferred_negatives_are_exactly_what_the_labels_imply():
    """A≁D, C≁F, A≁E labelled, with groups {A,B,C}, {D,E}, {F}: B≁D, C≁D, A≁F, B≁F, B≁E, C≁E follow;
    A≁E and A≁D are already labelled, and nothing inside a group is ever a negative."""
    g = DuplicateGraph.from_pairs(_frame(ROWS))
    got = {tuple(sorted(g.texts[list(e)])) for e in g.inferred_negatives(max_per_negative=10)}
    expected = {("B two?", "D four?"), ("C three?", "D four?"), ("A one?", "F six?"), ("B two?", "F six?"),
                ("B two?", "E five?"), ("C three?", "E five?")}
    assert got == expected and g.stats["inferred_negative_pairs"] == 6
    capped = g.inferred_negatives(max_per_negative=1, seed=3)
    assert len(capped) == 3  # one per labelled non-duplicate
    assert {tuple(sorted(g.texts[list(e)])) for e in capped} <= expected


def test_training_adds_inferred_negatives_but_never_a_held_out_pair():
    from qpairs.splits import add_inferred_negatives

    train = _frame(ROWS).assign(source="f")
    test = _frame([("D four?", "B two?", 0)])  # an implied pair that is a test pair stays out of training
    out = add_inferred_negatives(train, 10, [test])
    extra = out[out["source"] == "inferred_negative"]
    assert len(out) == len(train) + 5 and (extra["is_duplicate"] == 0).all()
    assert not {frozenset(p) for p in zip(extra["question1"], extra["question2"])} & {frozenset(("B two?", "D four?"))}
