"""What training minimises: the `--loss`, the batches it needs, and the loss of one batch.

* Pair losses (``contrastive``, ``online_contrastive``) read the labelled pairs, weighted
  for class balance.
* Triplet losses (``triplet``, ``mnrl``) read (anchor, positive, negative) triplets built
  from the same pairs by `qpairs.triplets`: transitive positives, ``--triplet-negatives``
  labelled or random, and ``--mining batch_hard|semi_hard`` to re-pick each negative among
  the batch's other rows. Class weights do not apply to them.
* ``--pair-head classifier`` adds a logistic head on (u, v, |u−v|, u∗v) trained jointly with
  binary cross-entropy (weight ``--pair-head-weight``); the model's "distance" then becomes
  −logit, so calibration and evaluation work unchanged. ``--pair-head matching`` compares the
  frozen base's token states of the two questions (`qpairs.matching`; under ``--train-top-layers``
  those of the trained top layer) and trains the same way.

Every batch is a `Batch` with a ``left`` and a ``right`` list of texts, embedded the way pairs
are (for triplets: anchors left, positives + negatives right). One training step's loss is
``Objective.step_loss(model, batch)``: embed both sides (`embed_pairs`), then `Objective.loss`.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from . import distributed
from .config import LOSSES, PAIR_LOSSES, TRIPLET_LOSSES  # noqa: F401  (re-exported)
from .encoding import forward_texts
from .losses import (ContrastiveLoss, MultipleNegativesRankingLoss, OnlineContrastiveLoss, PairClassifier,
                     TripletLoss, bce_on_logits)
from .matching import bound_head, cached_tokens, needs_tokens, trained_tokens
from .triplets import MINING, DuplicateGraph, TripletSampler, mine_negatives

DEFAULT_MARGIN = {"contrastive": 1.0, "online_contrastive": 0.5, "triplet": 0.5}


def loss_from_config(cfg):
    """The loss module named by ``cfg.loss`` (margin: ``cfg.margin`` or the loss's default)."""
    margin = cfg.margin if cfg.margin is not None else DEFAULT_MARGIN.get(cfg.loss)
    if cfg.loss == "contrastive":
        return ContrastiveLoss(margin, cfg.distance)
    if cfg.loss == "online_contrastive":
        return OnlineContrastiveLoss(margin, cfg.distance)
    if cfg.loss == "triplet":
        return TripletLoss(margin, cfg.distance)
    if cfg.loss == "mnrl":
        return MultipleNegativesRankingLoss(cfg.scale)
    raise ValueError(f"unknown loss {cfg.loss!r}; use one of {', '.join(LOSSES)}")


def make_pair_head(cfg, dim: int, encoder=None):
    """The pair head asked for by ``cfg.pair_head``: none, classifier, or matching (over the frozen
    `encoder`'s token states, see `qpairs.matching`)."""
    if cfg.pair_head in (None, "none"):
        return None
    if cfg.pair_head == "classifier":
        return PairClassifier(dim, hidden=getattr(cfg, "pair_head_hidden", 0) or 0)
    if cfg.pair_head == "matching":
        from .matching import MatchingHead, token_width

        config = getattr(encoder, "config", {})
        cached = config.get("frozen_base") or config.get("train_top_layers")
        if not ((config.get("type") == "transformer" and cached) or config.get("type") == "lstm") \
                or cfg.variant != "siamese":
            raise ValueError("--pair-head matching needs a Siamese --encoder lstm, or transformer with --freeze-base "
                             "or --train-top-layers")
        if cfg.loss not in PAIR_LOSSES:
            raise ValueError(f"--pair-head matching trains on labelled pairs: use a pair loss ({', '.join(PAIR_LOSSES)}), "
                             f"not {cfg.loss}")
        return MatchingHead(token_width(encoder), dim, proj=cfg.matching_dim, mlp=cfg.matching_dim,
                            pooling=config["pooling"])
    raise ValueError(f"unknown pair head {cfg.pair_head!r}; use none, classifier or matching")


def pair_batches(frame, batch_size: int, shuffle: bool, seed: int, weights=None, shard: bool = False):
    """Yield (q1 list, q2 list, labels tensor, weights tensor) batches.

    shard=True: only this process's share of the (same-seed) permutation under torchrun
    (`distributed.shard`, as a DistributedSampler does); a no-op in a single process.
    """
    idx = np.random.default_rng(seed).permutation(len(frame)) if shuffle else np.arange(len(frame))
    idx = distributed.shard(idx) if shard else idx
    q1, q2 = frame["question1"].to_numpy(), frame["question2"].to_numpy()
    y = frame["target" if "target" in frame else "is_duplicate"].to_numpy()  # soft targets when distilling
    w = np.ones(len(frame)) if weights is None else np.asarray(weights)
    for s in range(0, len(idx), batch_size):
        b = idx[s : s + batch_size]
        yield list(q1[b]), list(q2[b]), torch.tensor(y[b], dtype=torch.float32), torch.tensor(w[b], dtype=torch.float32)


@dataclass
class Batch:
    """One training batch: texts for the left and right encoder plus targets."""

    left: list[str]
    right: list[str]
    labels: torch.Tensor | None = None  # pairs: is_duplicate
    weights: torch.Tensor | None = None  # pairs: class-balance weights
    groups: torch.Tensor | None = None  # triplets: group ids of anchors, positives, negatives [3B]

    @property
    def size(self) -> int:
        return len(self.left)


def autocast(device):
    """bfloat16 autocast on CUDA, nothing elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def step_autocast(device, bf16: bool):
    """bfloat16 autocast of a training step on a CPU that has AVX-512 BF16, when `bf16` (on CUDA `Objective.embed`
    autocasts already); validation and inference stay float32."""
    from .tokencache import resolve_precision

    if bf16 and device.type == "cpu" and resolve_precision("auto", device) == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def embed_pairs(model, q1, q2, device, cache=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed both sides (`SiameseModel.embed_pairs`: a Siamese model runs one forward pass over both halves).

    With `cache` (an `EmbeddingCache` of a frozen base) only the heads run, on cached base outputs; a
    `tokencache.TopLayerView` (--train-top-layers) runs each side's top layers and head on cached lower-layer states.
    """
    if cache is not None:
        right = getattr(cache, "right", cache)  # a pseudo-Siamese model's right tower over the same cache
        return model.embed_pairs(q1, q2, lambda texts, side: model.side(side).head(
            (right if side == "right" else cache).lookup(texts).to(device)))
    return model.embed_pairs(q1, q2, lambda texts, side: forward_texts(model.side(side), texts, device))


class Objective:
    """The loss of `cfg` with the batch builder it needs (pairs or triplets from `train_df`).

    `device` and `cache` (the frozen base's `EmbeddingCache`, if any) are where batches are embedded.
    """

    def __init__(self, cfg, train_df, weights=None, device=None, cache=None):
        self.device = torch.device("cpu") if device is None else device
        self.cache = cache
        self.loss_fn = loss_from_config(cfg)
        self.kind = "pairs" if cfg.loss in PAIR_LOSSES else "triplets"
        self.frame, self.weights = train_df, weights
        self.mining, self.distance = cfg.mining, cfg.distance
        self.head_weight = cfg.pair_head_weight
        self.bf16 = getattr(cfg, "bf16", False)
        self.sampler = None
        if cfg.mining not in MINING:
            raise ValueError(f"unknown mining {cfg.mining!r}; use one of {', '.join(MINING)}")
        if self.kind == "triplets" and getattr(cfg, "left_col", None):  # title/body: titles anchor, bodies answer
            from .title_body import TitleBodyTriplets

            self.sampler = TitleBodyTriplets(train_df)
            self.stats = self.sampler.stats
        elif self.kind == "triplets":
            graph = DuplicateGraph.from_pairs(train_df)
            self.sampler = TripletSampler(graph, cfg.triplet_negatives, cfg.transitive, cfg.max_pairs_per_group, cfg.seed)
            self.stats = graph.stats
        elif cfg.mining != "none":
            raise ValueError("--mining applies to the triplet losses (triplet, mnrl) only")
        if self.kind == "triplets" and cfg.metric == "loss":
            raise ValueError(f"--metric loss needs a pair loss; {cfg.loss} has no validation loss on pairs")

    def __len__(self) -> int:
        """Training examples (pairs or triplets) in one epoch."""
        return len(self.frame) if self.kind == "pairs" else len(self.sampler)

    def batches(self, batch_size: int, seed: int, shard: bool = False):
        """One shuffled epoch of `Batch`es; `shard`: only this process's share under torchrun."""
        if self.kind == "pairs":
            for q1, q2, y, w in pair_batches(self.frame, batch_size, True, seed, self.weights, shard=shard):
                yield Batch(q1, q2, labels=y, weights=w)
            return
        for a, p, n, groups in self.sampler.batches(batch_size, seed, distributed.shard if shard else None):
            yield Batch(a, p + n, groups=groups)

    def embed(self, model, left: list[str], right: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 embeddings of both sides (under autocast on CUDA)."""
        with autocast(self.device):
            e1, e2 = embed_pairs(model, left, right, self.device, self.cache)
        return e1.float(), e2.float()

    def embed_with_tokens(self, model, left: list[str], right: list[str]) -> tuple:
        """(e1, e2, tokens): `embed`, and both sides' token states when the pair head reads them (else None):
        from the training cache, or for a trained encoder without one (a BiLSTM) from the same forward pass."""
        if needs_tokens(model) and self.cache is None:
            with autocast(self.device):
                e1, e2, tokens = trained_tokens(model.encoder, left, right, self.device)
            return e1.float(), e2.float(), tokens
        e1, e2 = self.embed(model, left, right)
        return e1, e2, cached_tokens(model, self.cache, left, right)

    def step_loss(self, model, batch: Batch) -> torch.Tensor:
        """The loss of one training batch: embed it, then `loss` (a matching head also reads token states).

        Under torchrun the trainer calls it through the DDP wrapper, ``net(objective.step_loss, batch)``."""
        with step_autocast(self.device, self.bf16):
            e1, e2, tokens = self.embed_with_tokens(model, batch.left, batch.right)
            return self.loss(batch, e1, e2, bound_head(model, tokens))

    def loss(self, batch: Batch, e1: torch.Tensor, e2: torch.Tensor, pair_head=None) -> torch.Tensor:
        """Loss of a batch from its embeddings (left `e1`, right `e2`), plus the head's BCE if any."""
        device = e1.device
        if self.kind == "pairs":
            y = batch.labels.to(device)
            w = batch.weights.to(device) if batch.weights is not None else None
            loss = self.loss_fn(e1, e2, y, w)
            heads = [(e1, e2, y, w)]
        else:
            b = batch.size
            groups = batch.groups.to(device)
            pos, neg, neg_groups = e2[:b], e2[b:], groups[2 * b :]
            if self.mining != "none":
                neg, neg_groups = self._mined(e1, pos, e2, groups, neg, neg_groups)
            if isinstance(self.loss_fn, MultipleNegativesRankingLoss):
                # under torchrun: the loss of the global batch, every process's rows gathered with their
                # gradients (qpairs.distributed.all_gather_with_grad); the identity in one process
                from .distributed import all_gather_with_grad as gather

                loss = self.loss_fn(gather(e1), gather(pos), gather(neg), gather(groups[:b]), gather(neg_groups))
            else:
                loss = self.loss_fn(e1, pos, neg)
            ones = torch.ones(b, device=device)
            heads = [(e1, pos, ones, None), (e1, neg, torch.zeros_like(ones), None)]
        if pair_head is not None:
            loss = loss + self.head_weight * sum(bce_on_logits(pair_head(u, v), y, w) for u, v, y, w in heads) / len(heads)
        return loss

    def _mined(self, anchor, pos, cands, groups, neg, neg_groups):
        """Each anchor's mined negative among the batch's right-side rows (kept as is where none is valid)."""
        b = len(anchor)
        idx = mine_negatives(anchor, pos, cands, groups[:b], groups[b:], self.mining, self.distance)
        ok = idx >= 0
        safe = idx.clamp(min=0)
        return (torch.where(ok[:, None], cands[safe], neg),
                torch.where(ok, groups[b:][safe], neg_groups))

    def validation_loss(self, e1, e2, y) -> torch.Tensor:
        """The training loss on labelled validation pairs (pair losses); NaN for triplet losses."""
        if self.kind == "pairs":
            return self.loss_fn(e1, e2, y)
        return torch.tensor(float("nan"))
