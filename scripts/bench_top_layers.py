"""Training pairs/s of --train-top-layers N (the top N layers + head on cached lower-layer states) against full
fine-tuning of the base, on the same batches of real pairs: a few optimizer steps each, after one warm-up step.

    OMP_NUM_THREADS=1 nice -n 10 python scripts/bench_top_layers.py --pairs 192 --batch-size 32 --layers 1 2 3

The cache fill (the bottom layers, once per unique text) is timed apart: it is paid once per cache, not per epoch.
"""
from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from qpairs.builders import build_model
from qpairs.config import TrainConfig
from qpairs.objective import Objective
from qpairs.tokencache import TopLayerView, open_token_cache


def rate(cfg: TrainConfig, frame: pd.DataFrame, batch_size: int) -> tuple[float, float]:
    """(training pairs/s, cache fill texts/s or 0) of `cfg` on `frame`."""
    torch.manual_seed(0)
    model = build_model(cfg, []).train()
    cache, fill = None, 0.0
    if cfg.train_top_layers:
        texts = list(dict.fromkeys(list(frame["question1"]) + list(frame["question2"])))
        cache = TopLayerView(open_token_cache(model.encoder, None, layer=model.encoder.cut), model.encoder)
        t0 = time.perf_counter()
        cache.fill(model.encoder, texts, progress=False)
        fill = len(texts) / (time.perf_counter() - t0)
    objective = Objective(cfg, frame, None, torch.device("cpu"), cache)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    seen, t0 = 0, None
    for i, batch in enumerate(objective.batches(batch_size, seed=0)):
        loss = objective.step_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i == 0:  # warm-up step not timed
            t0 = time.perf_counter()
        else:
            seen += batch.size
    return seen / (time.perf_counter() - t0), fill


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/qqp/bimpm_dev.csv.gz")
    ap.add_argument("--pairs", type=int, default=192, help="pairs timed (one warm-up batch more is read)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=40)
    ap.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3], help="values of --train-top-layers")
    args = ap.parse_args()
    frame = pd.read_csv(args.data, nrows=args.pairs + args.batch_size)
    frame = frame.assign(question1=frame["question1"].astype(str), question2=frame["question2"].astype(str))
    base = dict(encoder="transformer", max_length=args.max_length, loss="contrastive", distance="cosine")
    full, _ = rate(TrainConfig(**base).resolved(), frame, args.batch_size)
    print(f"full fine-tuning: {full:.1f} pairs/s")
    for n in args.layers:
        top, fill = rate(TrainConfig(**base, train_top_layers=n).resolved(), frame, args.batch_size)
        print(f"--train-top-layers {n}: {top:.1f} pairs/s, {top / full:.2f}x full fine-tuning "
              f"(cache fill {fill:.0f} texts/s, once)")


if __name__ == "__main__":
    main()
