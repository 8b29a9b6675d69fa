"""Hand-computed values for the losses beyond ContrastiveLoss (online contrastive, triplet, MNRL, classifier head)."""
import math

import pytest
import torch

from qpairs.losses import (MultipleNegativesRankingLoss, OnlineContrastiveLoss, PairClassifier, TripletLoss,
                           bce_on_logits, distance_matrix, pair_distance)


def _at_distances(*d):
    """Pairs of 1-d embeddings whose Euclidean distances are exactly `d`."""
    return torch.zeros(len(d), 1), torch.tensor(d, dtype=torch.float64)[:, None]


# ---------------------------------------------------------------- triplet

def test_triplet_loss_hand_values():
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    p = torch.tensor([[3.0, 4.0], [1.0, 0.0]])  # d(a, p) = 5, 1
    n = torch.tensor([[6.0, 8.0], [0.0, 0.5]])  # d(a, n) = 10, 0.5
    # max(5 − 10 + 1, 0) = 0 and max(1 − 0.5 + 1, 0) = 1.5 → mean 0.75
    assert TripletLoss(margin=1.0)(a, p, n).item() == pytest.approx(0.75)
    assert TripletLoss(margin=6.0)(a, p, n).item() == pytest.approx((1.0 + 6.5) / 2)


def test_triplet_loss_cosine_and_weights():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    p = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # cosine distance 1 − 1/√2, 0
    n = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])  # cosine distance 1, 2
    loss = TripletLoss(margin=1.0, distance="cosine")
    first = (1 - 1 / math.sqrt(2)) - 1 + 1.0  # ≈ 0.2929; second triplet: 0 − 2 + 1 < 0 → 0
    assert loss(a, p, n).item() == pytest.approx(first / 2, abs=1e-6)
    assert loss(a, p, n, torch.tensor([3.0, 1.0])).item() == pytest.approx(3 * first / 4, abs=1e-6)


def test_triplet_gradient_pulls_positive_and_pushes_negative():
    a = torch.tensor([[0.0, 0.0]], requires_grad=True)
    p = torch.tensor([[1.0, 0.0]], requires_grad=True)
    n = torch.tensor([[0.0, 0.5]], requires_grad=True)
    TripletLoss(margin=1.0)(a, p, n).backward()
    assert p.grad[0, 0] > 0  # gradient descent moves p towards a
    assert n.grad[0, 1] < 0  # and n away from a


# ---------------------------------------------------------------- online contrastive

def test_online_contrastive_keeps_only_hard_pairs():
    e1, e2 = _at_distances(0.2, 0.9, 0.5, 1.5, 0.1)
    y = torch.tensor([1, 1, 0, 0, 0])
    # hardest positive 0.9 → negatives closer than that: 0.5, 0.1; closest negative 0.1 → positives farther: 0.2, 0.9
    want = (0.2**2 + 0.9**2) + ((1 - 0.5) ** 2 + (1 - 0.1) ** 2)
    assert OnlineContrastiveLoss(margin=1.0, distance="euclidean")(e1, e2, y).item() == pytest.approx(want)


def test_online_contrastive_is_zero_when_classes_are_separated():
    e1, e2 = _at_distances(0.1, 0.2, 0.5, 0.6)
    y = torch.tensor([1, 1, 0, 0])
    assert OnlineContrastiveLoss(margin=1.0, distance="euclidean")(e1, e2, y).item() == 0.0


def test_online_contrastive_one_class_batches():
    e1, e2 = _at_distances(0.2, 0.4)
    # only positives: those farther than their mean (0.3) count → 0.4²
    assert OnlineContrastiveLoss(1.0, "euclidean")(e1, e2, torch.tensor([1, 1])).item() == pytest.approx(0.16)
    # only negatives: those closer than their mean count → (1 − 0.2)²
    assert OnlineContrastiveLoss(1.0, "euclidean")(e1, e2, torch.tensor([0, 0])).item() == pytest.approx(0.64)


def test_online_contrastive_matches_sentence_transformers():
    st_losses = pytest.importorskip("sentence_transformers.losses")
    torch.manual_seed(0)
    e1, e2 = torch.randn(16, 8), torch.randn(16, 8)
    y = torch.randint(0, 2, (16,))
    peer = st_losses.OnlineContrastiveLoss.__new__(st_losses.OnlineContrastiveLoss)
    torch.nn.Module.__init__(peer)
    peer.margin, peer._checked_labels = 0.5, True
    peer.distance_metric = st_losses.SiameseDistanceMetric.COSINE_DISTANCE
    want = peer.compute_loss_from_embeddings([e1, e2], y)
    assert OnlineContrastiveLoss(0.5, "cosine")(e1, e2, y).item() == pytest.approx(want.item(), rel=1e-5)


# ---------------------------------------------------------------- multiple negatives ranking (InfoNCE)

def test_mnrl_hand_values():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # scale 1: row 1 scores (1, 1) → CE log 2; row 2 scores (0, 0) → log 2
    assert MultipleNegativesRankingLoss(scale=1.0)(a, p).item() == pytest.approx(math.log(2))
    # scale 5, a perfect batch: −log(e^5 / (e^5 + e^0)) per row
    p = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # lengths do not matter: cosine similarity
    assert MultipleNegativesRankingLoss(5.0)(a, p).item() == pytest.approx(math.log1p(math.exp(-5)), rel=1e-5)


def test_mnrl_hard_negatives_and_group_mask():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    n = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    # scale 1, candidates (p1, p2, n1, n2): row 1 scores (1, 1, 1, 0); row 2 scores (0, 0, 0, −1)
    row1 = -1 + math.log(3 * math.e + 1)
    row2 = math.log(3 + math.exp(-1))
    assert MultipleNegativesRankingLoss(1.0)(a, p, n).item() == pytest.approx((row1 + row2) / 2)
    # rows 1 and 2 are the same group: the other row's positive is no negative and is masked out
    groups = torch.tensor([7, 7])
    masked1 = -1 + math.log(2 * math.e + 1)
    masked2 = math.log(2 + math.exp(-1))
    got = MultipleNegativesRankingLoss(1.0)(a, p, n, groups, torch.tensor([1, 2])).item()
    assert got == pytest.approx((masked1 + masked2) / 2)


# ---------------------------------------------------------------- classifier head

def test_pair_classifier_hand_value_symmetry_and_bce():
    head = PairClassifier(dim=1)
    with torch.no_grad():
        head.net.weight.copy_(torch.tensor([[1.0, 0.0, -2.0, 0.5]]))  # on (u, v, |u−v|, u∗v)
        head.net.bias.zero_()
    u, v = torch.tensor([[1.0]]), torch.tensor([[3.0]])
    # (u, v): 1 − 4 + 1.5 = −1.5; (v, u): 3 − 4 + 1.5 = 0.5; averaged → −0.5
    assert head(u, v).item() == pytest.approx(-0.5)
    assert head(v, u).item() == pytest.approx(-0.5)
    # BCE of logit −0.5 for a duplicate: log(1 + e^0.5)
    assert bce_on_logits(head(u, v), torch.tensor([1])).item() == pytest.approx(math.log1p(math.exp(0.5)))


def test_fresh_pair_classifier_scores_the_dot_product():
    torch.manual_seed(2)
    u, v = torch.randn(5, 3), torch.randn(5, 3)
    torch.testing.assert_close(PairClassifier(dim=3)(u, v), (u * v).sum(-1))


def test_distance_matrix_matches_pair_distance():
    torch.manual_seed(1)
    a, b = torch.randn(3, 5), torch.randn(4, 5)
    for metric in ("euclidean", "cosine"):
        m = distance_matrix(a, b, metric)
        for i in range(3):
            for j in range(4):
                assert m[i, j].item() == pytest.approx(pair_distance(a[i : i + 1], b[j : j + 1], metric).item(), abs=1e-5)
    with pytest.raises(ValueError, match="unknown distance"):
        distance_matrix(a, b, "manhattan")


def test_online_contrastive_run_defaults_to_the_sentence_transformers_recipe():
    """`--loss online_contrastive` alone: cosine distance and margin 0.5, in the model and in the loss;
    an explicit --distance, or another loss, keeps Euclidean."""
    from qpairs.config import TrainConfig
    from qpairs.objective import loss_from_config

    cfg = TrainConfig(loss="online_contrastive", data=["x.csv"]).resolved()
    loss = loss_from_config(cfg)
    assert cfg.distance == "cosine" and loss.distance == "cosine" and loss.margin == 0.5
    assert TrainConfig(loss="online_contrastive", distance="euclidean", data=["x.csv"]).resolved().distance == "euclidean"
    assert TrainConfig(loss="contrastive", data=["x.csv"]).resolved().distance == "euclidean"
