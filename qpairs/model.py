"""The Siamese network: one shared encoder for both inputs, a distance between the two vectors.

The pseudo-Siamese variant (two unshared encoders, ``left`` and ``right``) is the same class
given a ``right_encoder``; its `variant` property then reads ``"pseudo"``. The asymmetry between the two
inputs lives here: `side` picks each input's encoder, `prepare` applies each input's text preparation (its
``sides`` config, `qpairs.sides`), `encode` runs both, and `embed_pairs` sends the texts of inputs that share
an encoder through it together.
"""
from __future__ import annotations

import torch
from torch import nn

from .encoding import encode_texts
from .losses import pair_distance
from .matching import needs_tokens
from .sides import preprocessors


class SiameseModel(nn.Module):
    """Encodes each side and measures the distance between the two embeddings."""

    def __init__(self, encoder: nn.Module, distance: str = "euclidean", right_encoder: nn.Module | None = None,
                 pair_head: nn.Module | None = None, sides: dict | None = None):
        """`sides`: each input side's text preparation (`qpairs.sides`), saved in the run's config."""
        super().__init__()
        self.encoder = encoder
        self.right_encoder = right_encoder  # None: shared weights (Siamese)
        self.distance_metric = distance
        self.pair_head = pair_head  # optional PairClassifier: then the "distance" is −logit
        self.sides = dict(sides or {})
        self._prepare = preprocessors(self.sides)
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
        if which not in ("left", "right"):
            raise ValueError(f"unknown side {which!r}; use 'left' or 'right'")
        return self.right_encoder if (which == "right" and self.right_encoder is not None) else self.encoder

    def encoder_side(self, which: str = "left") -> str:
        """The side whose encoder embeds input `which` ('left' for both inputs of a Siamese model)."""
        return "right" if (which == "right" and self.right_encoder is not None) else "left"

    def single_encoder(self) -> nn.Module | None:
        """The encoder when one embeds both inputs, else None."""
        return self.encoder if self.right_encoder is None else None

    @property
    def prepares_sides(self) -> bool:
        """True when an input is prepared before encoding (a title/body run's bodies), so sides read differently."""
        return any(self._prepare.values())

    def prepare(self, texts, which: str = "left") -> list[str]:
        """`texts` as input `which` was trained on them (e.g. a title/body run's bodies: HTML → text, truncated)."""
        fn = self._prepare.get(which)
        return [fn(t) for t in texts] if fn else list(texts)

    def encode(self, texts, which: str = "left", prepare: bool = True, pooled: bool = False, **loop) -> torch.Tensor:
        """Embeddings [n, dim] (float32) of `texts` as input `which`: its preparation (unless `prepare` is
        False: texts already prepared), then its encoder (`pooled`: a transformer's pooled base output).
        `loop`: device, batch_size and the other options of `qpairs.encoding.encode_texts`."""
        return encode_texts(self.side(which), self.prepare(texts, which) if prepare else list(texts),
                            pooled=pooled, **loop)

    def embed_pairs(self, left, right, embed) -> tuple:
        """(left, right) embeddings of paired texts: `embed(texts, side)` → rows in order is called once per
        encoder, on the texts of every input it embeds (a Siamese model: both halves at once)."""
        texts = {"left": list(left), "right": list(right)}
        groups: dict[str, list[str]] = {}
        for which in texts:
            groups.setdefault(self.encoder_side(which), []).append(which)
        out = {}
        for side, inputs in groups.items():
            emb, start = embed([t for w in inputs for t in texts[w]], side), 0
            for w in inputs:
                out[w], start = emb[start : start + len(texts[w])], start + len(texts[w])
        return out["left"], out["right"]

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
