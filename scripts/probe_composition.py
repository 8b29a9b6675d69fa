#!/usr/bin/env python
"""Does the matching head gain from a composition layer over its compared tokens (ESIM's second BiLSTM, RE2's convs)?

A probe outside the trainer, on the same footing as `probe_layer_mix.py`: all-MiniLM-L6-v2's last-layer token states
(max 40 pieces, kept in memory as float16) for a balanced sample of a split's training pairs and all its validation
and test pairs; then a matching head trained on them per arm (BCE, AdamW lr 1e-3, batch 256):

* ``none``: `qpairs.matching.MatchingHead` as the model has it (compare → ReLU → mean and max over the tokens);
* ``lstm``: the compared tokens run through a BiLSTM (ESIM's composition) before mean and max;
* ``conv``: two 1-D convolutions of width 3 with residual connections (RE2's encoder) before mean and max.

Pooled features and the cosine come from the last layer in every arm. Platt calibration and an accuracy-optimal
threshold are fitted on validation each epoch; the test columns use them.

    python scripts/probe_composition.py --split runs/qqp_split --train-pairs 40000 none lstm conv
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from qpairs.encoders import pool
from qpairs.matching import MatchingHead

sys.path.insert(0, str(Path(__file__).resolve().parent))
import probe_layer_mix as plm  # noqa: E402  (its data, training loop and report)


class ComposedHead(MatchingHead):
    """`MatchingHead` with a composition layer between the comparison and the pooling."""

    def __init__(self, hidden: int, dim: int, kind: str, proj: int = 256, mlp: int = 256):
        super().__init__(hidden, dim, proj=proj, mlp=mlp)
        self.kind = kind
        if kind == "lstm":
            self.compose = nn.LSTM(proj, proj // 2, batch_first=True, bidirectional=True)
        else:
            self.compose = nn.ModuleList(nn.Conv1d(proj, proj, 3, padding=1) for _ in range(2))

    def _side(self, a, mask_a, b, mask_b) -> torch.Tensor:
        x = self._compare(a, self._align(a, b, mask_b)) * mask_a.unsqueeze(-1)
        if self.kind == "lstm":
            lengths = mask_a.sum(1).clamp(min=1).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            x = nn.utils.rnn.pad_packed_sequence(self.compose(packed)[0], batch_first=True,
                                                 total_length=x.size(1))[0]
        else:
            for conv in self.compose:
                x = (x + torch.relu(conv(x.transpose(1, 2)).transpose(1, 2))) * mask_a.unsqueeze(-1)
        return torch.cat([pool(x, mask_a, "mean"), pool(x, mask_a, "max")], dim=-1)


class Arm(nn.Module):
    """One arm's head over the last layer's token states (`probe_layer_mix.Arm`'s interface)."""

    mode = "composition"

    def __init__(self, states, masks, kind: str):
        super().__init__()
        self.states, self.masks = states[6], masks
        width = self.states.shape[-1]
        self.head = MatchingHead(width, width) if kind == "none" else ComposedHead(width, width, kind)

    def forward(self, rows_a, rows_b):
        (a, ma), (b, mb) = ((torch.from_numpy(self.states[r]).float(), torch.from_numpy(self.masks[r]))
                            for r in (rows_a, rows_b))
        pa, pb = pool(a, ma, "mean"), pool(b, mb, "mean")
        u, v = nn.functional.normalize(pa, dim=-1), nn.functional.normalize(pb, dim=-1)
        return self.head(u, v, (a, ma), (b, mb), pooled=(pa, pb))


def main(argv=None) -> int:
    p = plm.probe_parser(__doc__)
    p.add_argument("arms", nargs="+", choices=("none", "lstm", "conv"))
    args = p.parse_args(argv)
    plm.STORED_LAYERS = (6,)  # the last layer only
    states, masks, tr, val, test = plm.probe_data(args.split, args.train_pairs, args.base)
    print(plm.TABLE_HEAD)
    for kind in args.arms:
        torch.manual_seed(0)
        plm.train_arm(kind, Arm(states, masks, kind), tr, val, test, args.epochs)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
