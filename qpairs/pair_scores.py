"""Matching-head scores of pairs: each unique text's token states computed once, then the head on the pairs.

The one inference path of a matching model (the detector, scoring, search re-ranking, dedup, the title/body
evaluation): `pair_distances` encodes a block of pairs' unique texts (`qpairs.tokencache.encode_states`), then
runs the encoder's head and the matching head on length-sorted batches of pairs; both stages run in row shards
on a CPU (`qpairs.threads`). A `StateMemo` keeps token states across calls.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch

from .matching import token_logits
from .threads import run_shards, shard_count, split
from .tokencache import encode_states, pad_states


class StateMemo(dict):
    """Token states already computed (text → float32 [tokens, hidden]) that `pair_distances` keeps adding to,
    up to `max_values` floats in all (then the oldest go): repeated texts are encoded once while they fit."""

    def __init__(self, max_values: int = 2**28):
        super().__init__()
        self.max_values, self.values = max_values, 0

    def add(self, states: dict) -> None:
        for text, s in states.items():
            if text not in self:
                self[text] = s
                self.values += s.numel()
        while self.values > self.max_values and self:
            self.values -= self.pop(next(iter(self))).numel()


def longer_first(sa: list, sb: list) -> tuple[list, list]:
    """Each pair's two token-state tensors with the longer one first: the head is symmetric (the same logit
    either way round, exactly), and batches sorted by both lengths then pad each side little."""
    swap = [len(x) < len(y) for x, y in zip(sa, sb)]
    return [y if s else x for x, y, s in zip(sa, sb, swap)], [x if s else y for x, y, s in zip(sa, sb, swap)]


@torch.inference_mode()
def pair_distances(model, q1: list[str], q2: list[str], device, batch_size: int = 256,
                   max_waste: float | None = None, block: int = 4096, states: dict | None = None,
                   pooled: dict | None = None, unpadded_bf16: bool = False) -> torch.Tensor:
    """−logit of the matching head for each pair. `block` pairs at a time (bounded memory): the base's token
    states of each unique text of the block are computed once, then the encoder's head and the matching
    head run on the pairs, `batch_size` at a time. `states`: token states already computed (text → states,
    e.g. `encode_states` of every text an evaluation scores), used instead of encoding those texts again; a
    `StateMemo` also keeps the states computed here. `pooled`: a dict that receives each text's mean token state
    (float32 numpy; for a frozen base with mean pooling, its zero-shot sentence vector). `unpadded_bf16`: the base
    runs in bf16 autocast on batches of texts of one token count (no padding: batch-invariant), whatever the
    caller's autocast."""
    known = {} if states is None else states
    out = torch.zeros(len(q1))
    threads = shard_count(device)
    onnx = getattr(model.encoder, "token_runtime", None) is not None  # ONNX Runtime shards its rows itself
    encode_threads = 1 if onnx else threads
    encode = partial(encode_states, model.encoder, device=device, batch_size=batch_size,
                     max_waste=0 if unpadded_bf16 else max_waste, precision="bf16" if unpadded_bf16 else "fp32")

    for start in range(0, len(q1), block):
        a, b = list(q1[start : start + block]), list(q2[start : start + block])
        todo = [t for t in dict.fromkeys(a + b) if t not in known]
        parts = split(todo, encode_threads)
        encoded = run_shards(encode, parts, encode_threads)
        block_states = {text: got for part, part_states in zip(parts, encoded) for text, got in zip(part, part_states)}
        if isinstance(known, StateMemo):
            known.add(block_states)
        sa = [known[t] if t in known else block_states[t] for t in a]
        sb = [known[t] if t in known else block_states[t] for t in b]
        if pooled is not None:
            for text, s in zip(a + b, sa + sb):
                if text not in pooled:
                    pooled[text] = s.float().mean(0).numpy()
        sa, sb = longer_first(sa, sb)
        order = np.lexsort(([len(x) for x in sb], [len(x) for x in sa]))  # tight padding on both sides
        batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        logits = run_shards(lambda rows: token_logits(model, pad_states([sa[i] for i in rows]),  # noqa: B023 - run here
                                                      pad_states([sb[i] for i in rows]), device), batches, threads)
        for rows, logit in zip(batches, logits):
            out[start + torch.as_tensor(rows)] = -logit.float().cpu()
    return out
