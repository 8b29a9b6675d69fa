"""Losses for Siamese training: one small class each.

Label convention. QQP's ``is_duplicate = 1`` means *similar*. Hadsell, Chopra & LeCun
(2006) write their loss with ``Y = 1`` meaning *dissimilar*. The one place where that
mapping happens is `hadsell_label`.
"""
from __future__ import annotations

import torch
from torch import nn


def hadsell_label(is_duplicate: torch.Tensor) -> torch.Tensor:
    """Y of Hadsell et al. (1 = dissimilar) from QQP's is_duplicate (1 = similar)."""
    return 1.0 - is_duplicate.float()


def pair_distance(a: torch.Tensor, b: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """Row-wise distance between two batches of embeddings: 'euclidean' or 'cosine' (1 − cos)."""
    if metric == "euclidean":
        # eps keeps the gradient finite when a == b exactly
        return (a - b).pow(2).sum(-1).add(1e-12).sqrt()
    if metric == "cosine":
        return 1.0 - nn.functional.cosine_similarity(a, b, dim=-1)
    raise ValueError(f"unknown distance {metric!r}; use 'euclidean' or 'cosine'")


def distance_matrix(a: torch.Tensor, b: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """All distances [len(a), len(b)] between two batches of embeddings (same metrics as `pair_distance`)."""
    if metric == "euclidean":
        return (a[:, None, :] - b[None, :, :]).pow(2).sum(-1).add(1e-12).sqrt()
    if metric == "cosine":
        return 1.0 - nn.functional.normalize(a, dim=-1) @ nn.functional.normalize(b, dim=-1).T
    raise ValueError(f"unknown distance {metric!r}; use 'euclidean' or 'cosine'")


class ContrastiveLoss(nn.Module):
    """L = (1−Y)·½·D² + Y·½·max(0, m − D)², Y = 1 for a dissimilar pair (Hadsell et al., 2006).

    `forward(emb1, emb2, is_duplicate, weight=None)` takes QQP labels (1 = duplicate) and
    returns the (optionally weighted) mean over the batch.
    """

    def __init__(self, margin: float = 1.0, distance: str = "euclidean"):
        super().__init__()
        self.margin = margin
        self.distance = distance

    def forward(self, emb1, emb2, is_duplicate, weight=None) -> torch.Tensor:
        d = pair_distance(emb1, emb2, self.distance)
        y = hadsell_label(is_duplicate)
        per_pair = (1 - y) * 0.5 * d.pow(2) + y * 0.5 * torch.clamp(self.margin - d, min=0).pow(2)
        if weight is not None:
            return (per_pair * weight).sum() / weight.sum()
        return per_pair.mean()


def _weighted_mean(per_item: torch.Tensor, weight=None) -> torch.Tensor:
    return per_item.mean() if weight is None else (per_item * weight).sum() / weight.sum()


class OnlineContrastiveLoss(nn.Module):
    """Contrastive loss on the hard pairs of the batch only (as sentence-transformers' loss of that name).

    Hard positives are duplicates farther apart than the closest non-duplicate; hard negatives
    are non-duplicates closer than the farthest duplicate. L = Σ D²(hard positives) +
    Σ max(0, m − D)²(hard negatives), a sum over the batch (no ½, no mean), `weight` per pair.
    """

    def __init__(self, margin: float = 0.5, distance: str = "cosine"):
        super().__init__()
        self.margin = margin
        self.distance = distance

    def forward(self, emb1, emb2, is_duplicate, weight=None) -> torch.Tensor:
        d = pair_distance(emb1, emb2, self.distance)
        w = torch.ones_like(d) if weight is None else weight
        pos, neg = is_duplicate == 1, is_duplicate == 0
        dp, dn = d[pos], d[neg]
        hard_neg = neg & (d < (dp.max() if len(dp) else dn.mean()))
        hard_pos = pos & (d > (dn.min() if len(dn) else dp.mean()))
        return (w * hard_pos * d.pow(2)).sum() + (w * hard_neg * torch.clamp(self.margin - d, min=0).pow(2)).sum()


class TripletLoss(nn.Module):
    """FaceNet's triplet loss: mean over the batch of max(d(a, p) − d(a, n) + margin, 0)."""

    def __init__(self, margin: float = 0.5, distance: str = "euclidean"):
        super().__init__()
        self.margin = margin
        self.distance = distance

    def forward(self, anchor, positive, negative, weight=None) -> torch.Tensor:
        d_ap = pair_distance(anchor, positive, self.distance)
        d_an = pair_distance(anchor, negative, self.distance)
        return _weighted_mean(torch.clamp(d_ap - d_an + self.margin, min=0), weight)


class MultipleNegativesRankingLoss(nn.Module):
    """In-batch InfoNCE on duplicates only: each anchor must pick its own positive among all candidates.

    Candidates are every positive of the batch plus the optional hard `negative` column;
    scores are `scale` · cosine similarity; the loss is the cross-entropy with the anchor's own
    positive as target (sentence-transformers' MultipleNegativesRankingLoss). `groups` (one id
    per anchor/positive row, e.g. duplicate-graph components) and `negative_groups` mask
    candidates that are duplicates of the anchor and therefore not true negatives.
    """

    def __init__(self, scale: float = 20.0):
        super().__init__()
        self.scale = scale

    def forward(self, anchor, positive, negative=None, groups=None, negative_groups=None) -> torch.Tensor:
        cands = positive if negative is None else torch.cat([positive, negative])
        scores = self.scale * nn.functional.normalize(anchor, dim=-1) @ nn.functional.normalize(cands, dim=-1).T
        target = torch.arange(len(anchor), device=anchor.device)
        if groups is not None:
            cand_groups = groups
            if negative is not None:
                other = negative_groups if negative_groups is not None else torch.full((len(negative),), -1)
                cand_groups = torch.cat([groups, other.to(groups.device)])
            same = groups[:, None] == cand_groups[None, :]
            same[target, target] = False  # the anchor's own positive stays
            scores = scores.masked_fill(same, torch.finfo(scores.dtype).min)
        return nn.functional.cross_entropy(scores, target)


class PairClassifier(nn.Module):
    """Logistic head on (u, v, |u−v|, u∗v); symmetric: the logit is averaged over both input orders.

    Its calibrated score is a "distance" = −logit, so the distance calibrator applies unchanged.
    The linear head starts as the dot product u·v (the cosine similarity of normalised
    embeddings), so a fresh head ranks pairs as the embedding similarity does.
    """

    def __init__(self, dim: int, hidden: int = 0):
        super().__init__()
        self.config = dict(type="classifier", dim=dim, hidden=hidden)
        if hidden:
            self.net = nn.Sequential(nn.Linear(4 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        else:
            self.net = nn.Linear(4 * dim, 1)
            with torch.no_grad():
                self.net.weight.zero_()
                self.net.weight[0, 3 * dim :] = 1.0  # the u∗v block: logit = u·v
                self.net.bias.zero_()

    def _one_way(self, u, v):
        return self.net(torch.cat([u, v, (u - v).abs(), u * v], dim=-1)).squeeze(-1)

    def forward(self, u, v) -> torch.Tensor:
        return 0.5 * (self._one_way(u, v) + self._one_way(v, u))


def bce_on_logits(logits, is_duplicate, weight=None) -> torch.Tensor:
    """Binary cross-entropy of a classifier head (weighted mean over pairs)."""
    per_pair = nn.functional.binary_cross_entropy_with_logits(logits, is_duplicate.float(), reduction="none")
    return _weighted_mean(per_pair, weight)
