import math

import pytest
import torch

from qpairs.losses import ContrastiveLoss, hadsell_label, pair_distance


def test_label_mapping_is_explicit():
    # QQP is_duplicate=1 (similar) -> Hadsell Y=0; is_duplicate=0 (dissimilar) -> Y=1
    assert hadsell_label(torch.tensor([1, 0])).tolist() == [0.0, 1.0]


def test_identical_embeddings_of_duplicates_give_zero():
    e = torch.randn(4, 8)
    assert ContrastiveLoss(margin=1.0)(e, e.clone(), torch.ones(4)).item() == pytest.approx(0.0, abs=1e-10)


def test_non_duplicates_beyond_margin_give_zero():
    a = torch.zeros(3, 2)
    b = torch.tensor([[2.0, 0.0], [0.0, 1.5], [3.0, 4.0]])  # distances 2, 1.5, 5 > margin 1
    assert ContrastiveLoss(margin=1.0)(a, b, torch.zeros(3)).item() == 0.0


def test_hand_computed_values():
    a = torch.zeros(2, 2)
    b = torch.tensor([[0.6, 0.8], [0.3, 0.4]])  # distances 1.0 and 0.5
    loss = ContrastiveLoss(margin=2.0)
    # duplicate at D=1: ½·1² = 0.5 ; non-duplicate at D=0.5, m=2: ½·1.5² = 1.125
    assert loss(a[:1], b[:1], torch.tensor([1.0])).item() == pytest.approx(0.5)
    assert loss(a[1:], b[1:], torch.tensor([0.0])).item() == pytest.approx(1.125)
    assert loss(a, b, torch.tensor([1.0, 0.0])).item() == pytest.approx((0.5 + 1.125) / 2)
    # weighted mean
    w = torch.tensor([3.0, 1.0])
    assert loss(a, b, torch.tensor([1.0, 0.0]), w).item() == pytest.approx((3 * 0.5 + 1.125) / 4)


def test_cosine_distance_option():
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0]])
    assert pair_distance(a, b, "cosine").item() == pytest.approx(1.0)
    # duplicate pair at cosine distance 1: ½·1² = 0.5
    assert ContrastiveLoss(1.0, "cosine")(a, b, torch.ones(1)).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown distance"):
        pair_distance(a, b, "manhattan")


@pytest.mark.parametrize("is_dup,closer", [(1.0, True), (0.0, False)])
def test_gradients_push_the_right_way(is_dup, closer):
    a = torch.tensor([[0.0, 0.0]])
    b = torch.tensor([[0.3, 0.4]], requires_grad=True)  # D = 0.5 < margin
    loss = ContrastiveLoss(margin=1.0)(a, b, torch.tensor([is_dup]))
    loss.backward()
    with torch.no_grad():
        stepped = b - 0.1 * b.grad
    d_before, d_after = 0.5, stepped.norm().item()
    assert (d_after < d_before) == closer
    assert math.isfinite(b.grad.sum().item())


def test_pair_head_hidden_layer_from_config_and_checkpoint():
    """--pair-head-hidden N gives the classifier a hidden ReLU layer; the saved config rebuilds the same head."""
    from qpairs.checkpoint import build_pair_head
    from qpairs.config import TrainConfig
    from qpairs.objective import make_pair_head

    torch.manual_seed(0)
    head = make_pair_head(TrainConfig(pair_head="classifier", pair_head_hidden=8), dim=4)
    assert head.config == {"type": "classifier", "dim": 4, "hidden": 8}
    assert [type(m).__name__ for m in head.net] == ["Linear", "ReLU", "Linear"] and head.net[0].out_features == 8
    rebuilt = build_pair_head(head.config)
    rebuilt.load_state_dict(head.state_dict())
    u, v = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(rebuilt(u, v), head(u, v))
    torch.testing.assert_close(head(u, v), head(v, u))  # symmetric in the two questions
    assert make_pair_head(TrainConfig(pair_head="classifier"), dim=4).net.__class__.__name__ == "Linear"
