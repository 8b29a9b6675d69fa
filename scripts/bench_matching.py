"""Pooled pair head vs matching pair head on the same pairs, from one token-state cache of the frozen base.

Both heads train with ``--freeze-base`` on one split (question-disjoint, seed 0; a balanced training
subset) and one cache; each is scored on the test split from the cache, calibrated on validation.
The zero-shot cosine of the base's pooled outputs is the reference row.

    QPAIRS_DATA=../shared/data nice -n 15 env OMP_NUM_THREADS=1 python scripts/bench_matching.py \
        --out /tmp/bench_matching --train-pairs 40000
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from qpairs import train as qtrain
from qpairs.calibration import Calibrator
from qpairs.checkpoint import load_model, read_json
from qpairs.config import TrainConfig
from qpairs.objective import Objective
from qpairs.splits import load_splits
from qpairs.tokencache import open_cache
from qpairs.metrics import classification_metrics, format_table


def test_distances(run: Path, cache_dir: Path, frame) -> np.ndarray:
    """The run's distances on `frame`, its pooled outputs and token states read from the cache."""
    model, _ = load_model(run, "cpu")
    cache = open_cache(model.encoder, cache_dir)
    cache.fill(model.encoder, list(frame["question1"]) + list(frame["question2"]))  # training filled train + validation
    objective = Objective(TrainConfig().resolved(), frame, device=torch.device("cpu"), cache=cache)
    _, _, d = qtrain.validate_and_calibrate(model, objective, frame, 256, "platt")
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-pairs", type=int, default=40000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=40)
    ap.add_argument("--cache", help="token-state cache directory, shareable between runs (default: OUT/token_cache)")
    ap.add_argument("--eval-pairs", type=int, help="at most this many validation and test pairs each (a quicker run)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(args.cache) if args.cache else out / "token_cache"
    base = TrainConfig(encoder="transformer", freeze_base=True, head="residual", projection_dim=768,
                       pair_head="classifier", distance="cosine", margin=0.5, lr=1e-3, batch_size=256,
                       epochs=args.epochs, max_length=args.max_length, balance="subsample",
                       max_train_pairs=args.train_pairs, embedding_cache=str(cache_dir), device="cpu", progress=True)
    splits = load_splits(base.resolved(), out)
    for split in ("validation", "test"):
        if args.eval_pairs and len(splits[split]) > args.eval_pairs:
            splits[split] = splits[split].sample(n=args.eval_pairs, random_state=0).reset_index(drop=True)
    qtrain.finish = lambda *a, **k: None  # scored below from the cache, not by re-encoding every text
    rows, results = {}, {}
    for name, cfg in (("pooled", base), ("matching", replace(base, pair_head="matching"))):
        run = out / name
        t0 = time.perf_counter()
        if not (run / "calibration.json").exists():
            qtrain.train(replace(cfg, out=str(run), resume=run.exists()), splits)
        val = Calibrator.from_dict(read_json(run / "calibration.json"))
        d = test_distances(run, cache_dir, splits["test"])
        rows[name] = classification_metrics(splits["test"]["is_duplicate"].to_numpy(), val.predict_proba(d), val.threshold)
        results[name] = {"test": rows[name], "history": read_json(run / "history.json"),
                         "wall_s": time.perf_counter() - t0}
    view = open_cache(load_model(out / "pooled", "cpu")[0].encoder, cache_dir)
    cos = {}
    for split in ("validation", "test"):
        f = splits[split]
        a, b = view.lookup(list(f["question1"])), view.lookup(list(f["question2"]))
        cos[split] = 1 - torch.nn.functional.cosine_similarity(a, b).numpy()
    cal = Calibrator("platt").fit(cos["validation"], splits["validation"]["is_duplicate"].to_numpy())
    rows["zero-shot cosine"] = classification_metrics(splits["test"]["is_duplicate"].to_numpy(),
                                                      cal.predict_proba(cos["test"]), cal.threshold)
    (out / "results.json").write_text(json.dumps({**results, "zero_shot": rows["zero-shot cosine"],
                                                  "sizes": {k: len(v) for k, v in splits.items()}}, indent=2, default=float))
    print(format_table(rows))


if __name__ == "__main__":
    main()
