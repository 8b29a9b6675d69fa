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
