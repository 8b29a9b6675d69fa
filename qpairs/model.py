"""The Siamese network: one shared encoder for both inputs, a distance between the two vectors.

The pseudo-Siamese variant (two unshared encoders, ``left`` and ``right``) is the same class
given a ``right_encoder``; its `variant` property then reads ``"pseudo"``.
"""
from __future__ import annotations

import torch
from torch import nn

from .losses import pair_distance
from .matching import needs_tokens


class SiameseModel(nn.Module):
    """Encodes each side and measures the distance between the two embeddings."""

    def __init__(self, encoder: nn.Module, distance: str = "euclidean", right_encoder: nn.Module | None = None,
                 pair_head: nn.Module | None = None):
        super().__init__()
        self.encoder = encoder
        self.right_encoder = right_encoder  # None: shared weights (Siamese)
        self.distance_metric = distance
        self.pair_head = pair_head  # optional PairClassifier: then the "distance" is −logit
        if right_encoder is not None and right_encoder.dim != encoder.dim:
            raise ValueError(f"left and right encoders must embed to one size, got {encoder.dim} and {right_encoder.dim}")

    @property
    def variant(self) -> str:
        return "siamese" if self.right_encoder is None else "pseudo"

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def side(self, which: str = "left") -> nn.Module:
        """The encoder for one input side ('left' = question1/title, 'right' = question2/body)."""
        return self.right_encoder if (which == "right" and self.right_encoder is not None) else self.encoder

    def embed(self, batch: dict, which: str = "left") -> torch.Tensor:
        return self.side(which)(**batch)

    def forward(self, batch1: dict, batch2: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed(batch1, "left"), self.embed(batch2, "right")

    def decision_distance(self, emb1: torch.Tensor, emb2: torch.Tensor, tokens: tuple | None = None) -> torch.Tensor:
        """Smaller = more similar: the embedding distance, or −logit of the pair head when there is one.

        `tokens`: both sides' padded token states, for a head that reads them (`qpairs.matching`).
        For scoring: the head's score carries no gradient (training calls `pair_head` itself).
        """
        if self.pair_head is not None:
            if needs_tokens(self) and tokens is None:
                raise ValueError("this model's matching pair head compares token states, not embeddings: "
                                 "score pairs with predict_proba (or PairScorer)")
            with torch.no_grad():
                return -self.pair_head(emb1.float(), emb2.float(), *(tokens or ()))
        return pair_distance(emb1.float(), emb2.float(), self.distance_metric)
