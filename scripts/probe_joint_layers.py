#!/usr/bin/env python
"""Does the matching head gain when the base's top layers read both questions at once (cross-attention)?

A probe outside the trainer, on the same footing as `probe_layer_mix.py`: all-MiniLM-L6-v2's token states of
layer 6 − N (max 40 pieces, kept in memory as float16) for a balanced sample of a split's training pairs and all
its validation and test pairs. The base's top N layers (starting from the pretrained weights) then train with a
`qpairs.matching.MatchingHead` over their output (BCE; AdamW, lr 5e-5 for the layers, 1e-2
for the cross-question bias and 1e-3 for the head; batch 64):

* ``siamese``: the top layers run on each question alone (what --train-top-layers trains);
* ``joint``: the top layers run once over both questions' tokens side by side, so every token also attends to
  the other question's. Positions come from the frozen bottom, each question's own; a learnt bias per attention
  head on the attention between the two questions says which tokens are the other question's. Nothing depends
  on which question comes first: swapping them gives the same logit.

Pooled features and the cosine come from the layers' output in both arms. Platt calibration and an
accuracy-optimal threshold are fitted on validation each epoch; the test columns use them.

    python scripts/probe_joint_layers.py --split runs/qqp_split --train-pairs 40000 --top 2 siamese joint

With ``--cache DIR`` (a token-state cache of layer 6 − N that `qpairs train --train-top-layers N` filled) every
training pair of the split trains, plus the pairs of ``--extra`` files, at the split's duplicate rate.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from qpairs.encoders import pool, resolve_base_model
from qpairs.matching import MatchingHead
from qpairs.tokencache import TokenStateCache
from qpairs.toplayers import base_layers, freeze_bottom

sys.path.insert(0, str(Path(__file__).resolve().parent))
import probe_layer_mix as plm  # noqa: E402  (its data, report and parser)


class Arm(nn.Module):
    """The base's top `top` layers (trainable) over cached bottom states, then a matching head."""

    def __init__(self, states, masks, base: str, top: int, joint: bool):
        super().__init__()
        from transformers import AutoModel

        model = AutoModel.from_pretrained(base)
        freeze_bottom(model, top)
        self.layers = nn.ModuleList(list(base_layers(model))[-top:])
        self.states, self.masks, self.joint = states, masks, joint
        self.cross_bias = nn.Parameter(torch.zeros(model.config.num_attention_heads))
        width = model.config.hidden_size
        self.head = MatchingHead(width, width)

    def _run(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, bias)
        return x

    @staticmethod
    def _padding_bias(mask: torch.Tensor) -> torch.Tensor:
        """[B, 1, 1, T] additive bias: 0 on valid keys, a large negative number on padding."""
        return (~mask)[:, None, None, :].float() * torch.finfo(torch.float32).min

    def top_states(self, a, ma, b, mb):
        """Both questions' token states after the top layers, each alone or side by side."""
        if not self.joint:
            return self._run(a, self._padding_bias(ma)), self._run(b, self._padding_bias(mb))
        t = a.size(1)
        mask = torch.cat([ma, mb], 1)
        side = torch.cat([torch.zeros(t, dtype=torch.bool), torch.ones(b.size(1), dtype=torch.bool)])
        cross = (side[:, None] != side[None, :]).float()  # [T, T]: 1 between the questions
        bias = self._padding_bias(mask) + self.cross_bias[None, :, None, None] * cross
        out = self._run(torch.cat([a, b], 1), bias)
        return out[:, :t], out[:, t:]

    def _tokens(self, rows):
        """Token states and mask of `rows`, cut to the longest of them (padding never changes the output)."""
        mask = self.masks[rows]
        width = max(int(mask.sum(1).max()), 1)
        return torch.from_numpy(self.states[rows, :width]).float(), torch.from_numpy(mask[:, :width])

    def forward(self, rows_a, rows_b):
        (a, ma), (b, mb) = (self._tokens(r) for r in (rows_a, rows_b))
        a, b = self.top_states(a, ma, b, mb)
        pa, pb = pool(a, ma, "mean"), pool(b, mb, "mean")
        u, v = nn.functional.normalize(pa, dim=-1), nn.functional.normalize(pb, dim=-1)
        return self.head(u, v, (a, ma), (b, mb), pooled=(pa, pb))


def train(name: str, arm: Arm, tr, val, test, epochs: int, batch: int = 64) -> None:
    """BCE with AdamW (lr 5e-5 layers, 1e-2 cross-question bias, 1e-3 head), reporting validation and test after each epoch."""
    target = torch.tensor(tr[2], dtype=torch.float32)
    opt = torch.optim.AdamW([{"params": list(arm.layers.parameters()), "lr": 5e-5},
                             {"params": [arm.cross_bias], "lr": 1e-2},
                             {"params": list(arm.head.parameters()), "lr": 1e-3}])
    for epoch in range(1, epochs + 1):
        arm.train()
        perm, start = np.random.default_rng(epoch).permutation(len(target)), time.time()
        for s in range(0, len(perm), batch):
            i = perm[s:s + batch]
            loss = nn.functional.binary_cross_entropy_with_logits(arm(tr[0][i], tr[1][i]), target[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if s // batch % 100 == 0:
                print(f"  {name} epoch {epoch} pair {s}/{len(perm)} loss {loss.item():.3f} "
                      f"{(s + len(i)) / (time.time() - start):.0f} pairs/s", flush=True)
        arm.eval()
        plm.report(name, epoch, arm, val, test)
        if arm.joint:
            print(f"  cross-attention bias per head: {np.round(arm.cross_bias.detach().numpy(), 2)}", flush=True)


def cached_data(split: str, extra: list[str], cache_dir: str, layer: int, width: int = 40):
    """(states [texts, width, hidden] float16, masks, train, validation, test) as `probe_layer_mix.probe_data`
    gives them, read from a token-state cache of `layer`'s output: every training pair of the split, plus those of
    `extra`."""
    stored = json.loads((Path(cache_dir) / "meta.json").read_text()).get("layer")
    if stored != layer:
        raise SystemExit(f"{cache_dir} holds the output of layer {stored or 6}, not of layer {layer} (--top)")
    frames = {part: pd.read_csv(f"{split}/{part}.csv.gz") for part in ("train", "validation", "test")}
    train = pd.concat([frames["train"], *(pd.read_csv(f) for f in extra)]).sample(frac=1, random_state=0)
    cache = TokenStateCache(cache_dir)
    known = set(cache.index)
    cached = train.question1.astype(str).isin(known) & train.question2.astype(str).isin(known)
    print(f"{(~cached).sum()} training pairs left out: a text of theirs is not in the cache", flush=True)
    frames["train"] = train[cached]
    texts = pd.unique(pd.concat([f[c] for f in frames.values() for c in ("question1", "question2")]).astype(str))
    print(f"{len(frames['train'])} training pairs, {len(texts)} texts", flush=True)
    states = np.zeros((len(texts), width, cache.parts[0].shape[-1]), dtype=np.float16)
    masks = np.zeros((len(texts), width), dtype=bool)
    for i, s in enumerate(cache.states(texts)):
        states[i, :len(s)], masks[i, :len(s)] = s.numpy()[:width], True
    row = {t: i for i, t in enumerate(texts)}
    return states, masks, *(plm.pair_rows(frames[part], row) for part in ("train", "validation", "test"))


def main(argv=None) -> int:
    p = plm.probe_parser(__doc__)
    p.add_argument("--top", type=int, default=2, help="how many top layers train (and read both questions)")
    p.add_argument("--cache", help="token-state cache of layer 6 - top: train on every pair (see above)")
    p.add_argument("--extra", nargs="*", default=[], help="more training pair files (with --cache)")
    p.add_argument("arms", nargs="+", choices=("siamese", "joint"))
    args = p.parse_args(argv)
    bottom = 6 - args.top
    plm.STORED_LAYERS = (bottom,)
    if args.cache:
        states, masks, tr, val, test = cached_data(args.split, args.extra, args.cache, bottom)
        states = {bottom: states}
    else:
        states, masks, tr, val, test = plm.probe_data(args.split, args.train_pairs, args.base)
    print(plm.TABLE_HEAD)
    for kind in args.arms:
        torch.manual_seed(0)
        arm = Arm(states[bottom], masks, resolve_base_model(args.base), args.top, joint=kind == "joint")
        arm.mode = kind
        train(kind, arm, tr, val, test, args.epochs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
