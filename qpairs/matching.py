"""The matching pair head: a light comparison layer over both questions' frozen token states.

Each question's tokens attend softly to the other's (masked), and each token is compared with its
aligned summary (ESIM): ``[a, ã, a−ã, a∗ã]`` → projection + ReLU → mean and max over the tokens.
The two directions meet in symmetric ops (sum and absolute difference), beside the pooled features
of the model's embeddings (u+v, |u−v|, u∗v) and the zero-shot cosine of the base's pooled outputs;
an MLP maps them to the logit, plus a weight (fitted on validation after training) times that cosine: it keeps
what the base knew out of the training domain. Pairs longer than the head was trained on are handed over to that
cosine (`hand_over`). Swapping the questions gives the same logit exactly.

Token states come from the frozen base: `qpairs.tokencache` (its cache in training; `qpairs.pair_scores` at inference);
under --train-top-layers, from the trained top layers run on the cached output of the layer below them. A trained
encoder that has token states of its own (the BiLSTM) gives them in training too (`trained_tokens`, with gradients).
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .encoders import pool, token_mask
from .encoding import tokenized

TokenBatch = tuple  # (states float32 [B, T, hidden], mask bool [B, T])


def masked_mean_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[mean, max] over the valid tokens of x [B, T, D] → [B, 2D], for x ≥ 0 (a ReLU's output): zeroing the
    padding then leaves the max of the valid tokens as it is."""
    x = x * mask.unsqueeze(-1).to(x.dtype)
    return torch.cat([x.sum(1) / mask.sum(1, keepdim=True).clamp(min=1).to(x.dtype), x.amax(1)], dim=-1)


class MatchingHead(nn.Module):
    """logit(a, b) from token states (`hidden` wide) and the pooled embeddings u, v (`dim` wide)."""

    needs_tokens = True

    def __init__(self, hidden: int, dim: int, proj: int = 256, mlp: int = 256, pooling: str = "mean",
                 cosine_weight: float = 0.0, hand_over: dict | None = None):
        super().__init__()
        self.config = dict(type="matching", hidden=hidden, dim=dim, proj=proj, mlp=mlp, pooling=pooling,
                           cosine_weight=cosine_weight, hand_over=hand_over)
        self.compare = nn.Sequential(nn.Linear(4 * hidden, proj), nn.ReLU())
        self.mlp = nn.Sequential(nn.Linear(4 * proj + 3 * dim + 1, mlp), nn.ReLU(), nn.Linear(mlp, 1))

    @property
    def cosine_weight(self) -> float:
        """w in logit = MLP(features) + w · cos(pooled token states): 0 in training, then fitted on validation
        with the calibration (`qpairs.cosine_weight`). Over a frozen base the cosine is zero-shot's."""
        return self.config["cosine_weight"]

    @cosine_weight.setter
    def cosine_weight(self, weight: float) -> None:
        self.config["cosine_weight"] = float(weight)

    @property
    def hand_over(self) -> dict | None:
        """Long pairs' logit: {"from": n0, "to": n1, "slope": s, "bias": t}, or None (off). With n the longer
        question's token count, g = clip((n − n0) / (n1 − n0), 0, 1) and logit = (1 − g) · logit + g · (s · cos + t):
        past the length the head was trained on (n0), it hands over to the cosine, mapped onto the head's logit
        scale on validation (`qpairs.cosine_weight.fit_hand_over`)."""
        return self.config.get("hand_over")

    @hand_over.setter
    def hand_over(self, rule: dict | None) -> None:
        self.config["hand_over"] = None if rule is None else {k: float(rule[k]) for k in ("from", "to", "slope", "bias")}

    def hand_over_share(self, mask_a: torch.Tensor, mask_b: torch.Tensor) -> torch.Tensor:
        """g per pair [B, 1]: the share of the logit handed over to the cosine (0 when `hand_over` is off)."""
        rule = self.hand_over
        n = torch.maximum(mask_a.sum(1), mask_b.sum(1)).to(torch.float32)[:, None]
        if rule is None:
            return torch.zeros_like(n)
        return ((n - rule["from"]) / max(rule["to"] - rule["from"], 1e-6)).clamp(0.0, 1.0)

    def _side(self, a, mask_a, b, mask_b) -> torch.Tensor:
        """a's tokens compared with their soft alignment over b's tokens, pooled: [B, 2·proj]."""
        return masked_mean_max(self._compare(a, self._align(a, b, mask_b)), mask_a)

    @staticmethod
    def _align(a, b, mask_b) -> torch.Tensor:
        """ã: each of a's tokens as its softmax-weighted mean of b's valid tokens, [B, Ta, hidden]."""
        scores = a @ b.transpose(1, 2)  # [B, Ta, Tb]
        scores = scores.masked_fill(~mask_b[:, None, :], torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=-1) @ b

    def _compare(self, a, aligned) -> torch.Tensor:
        """compare([a, ã, a−ã, a∗ã]) with the concatenation folded into the weights (the same map, less work)."""
        linear = self.compare[0]
        w_a, w_al, w_diff, w_prod = linear.weight.split(a.size(-1), dim=1)
        x = nn.functional.linear(a, w_a + w_diff, linear.bias) + nn.functional.linear(aligned, w_al - w_diff)
        return torch.relu(x + nn.functional.linear(a * aligned, w_prod))

    def forward(self, u: torch.Tensor, v: torch.Tensor, tokens_a: TokenBatch, tokens_b: TokenBatch,
                pooled: tuple | None = None) -> torch.Tensor:
        """`pooled`: both sides' pooled token states when the caller has them already (else pooled here)."""
        (a, mask_a), (b, mask_b) = tokens_a, tokens_b
        a, b = a.to(u.device, torch.float32), b.to(u.device, torch.float32)
        mask_a, mask_b = mask_a.to(u.device), mask_b.to(u.device)
        fa, fb = self._side(a, mask_a, b, mask_b), self._side(b, mask_b, a, mask_a)
        pa, pb = pooled or (pool(a, mask_a, self.config["pooling"]), pool(b, mask_b, self.config["pooling"]))
        cos = nn.functional.cosine_similarity(pa, pb, dim=-1)[:, None]
        feats = torch.cat([fa + fb, (fa - fb).abs(), u + v, (u - v).abs(), u * v, cos], dim=-1)
        logit = self.mlp(feats) + self.cosine_weight * cos
        if self.hand_over is not None:
            g = self.hand_over_share(mask_a, mask_b)
            logit = (1 - g) * logit + g * (self.hand_over["slope"] * cos + self.hand_over["bias"])
        return logit.squeeze(-1)


def token_width(encoder) -> int:
    """Width of the token states `encoder` gives a matching head: a transformer's hidden size, a BiLSTM's output."""
    config = encoder.config
    return config["hf_config"]["hidden_size"] if config.get("type") == "transformer" else encoder.hidden_out


def trained_tokens(encoder, left: list[str], right: list[str], device) -> tuple:
    """(e1, e2, (tokens_a, tokens_b)): both sides' embeddings and padded token states from one forward pass of
    a trained (uncached) encoder over all their texts, with gradients as the caller's grad mode says."""
    batch = tokenized(encoder, list(left) + list(right), device)
    states, mask = encoder.token_states(**batch), token_mask(batch)
    emb = encoder.head(pool(states, mask, encoder.config["pooling"]))
    n = len(left)
    return emb[:n], emb[n:], ((states[:n], mask[:n]), (states[n:], mask[n:]))


def needs_tokens(model) -> bool:
    """True when the model's pair head reads token states (a `MatchingHead`)."""
    return getattr(model.pair_head, "needs_tokens", False)


def token_logits(model, tokens_a: TokenBatch, tokens_b: TokenBatch, device) -> torch.Tensor:
    """The matching head's logits from padded token states: the encoder's head embeds their pooled outputs."""
    encoder = model.encoder
    (a, mask_a), (b, mask_b) = tokens_a, tokens_b
    pooling = encoder.config["pooling"]
    pa, pb = pool(a.to(device), mask_a.to(device), pooling), pool(b.to(device), mask_b.to(device), pooling)
    return model.pair_head(encoder.head(pa), encoder.head(pb), tokens_a, tokens_b, pooled=(pa.float(), pb.float()))


def token_source(cache):
    """What gives token states in training: a `TopLayerView` itself (the trained top layers' states), else the
    token-state cache under a pooled view (None for a cache of pooled outputs only)."""
    return cache if hasattr(cache, "lookup_states") else getattr(cache, "cache", None)


def require_token_cache(model, cache) -> None:
    """A matching head trains from token states: `cache` must be a token-state cache's pooled view (or a
    `TopLayerView`)."""
    if needs_tokens(model) and not hasattr(token_source(cache), "lookup_states"):
        raise ValueError("--pair-head matching reads token states, and this --embedding-cache directory holds pooled "
                         "outputs only: use another directory")


def cached_tokens(model, cache, left, right) -> tuple | None:
    """Both sides' padded token states from the training cache when the model's head reads them, else None."""
    if not needs_tokens(model):
        return None
    require_token_cache(model, cache)
    return token_source(cache).lookup_states(left), token_source(cache).lookup_states(right)


def bound_head(model, tokens):
    """The pair head to call as head(u, v) on a batch whose token states are `tokens` (None: as it is)."""
    if tokens is None:
        return model.pair_head
    return partial(model.pair_head, tokens_a=tokens[0], tokens_b=tokens[1])
