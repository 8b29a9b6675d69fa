"""Compare a frozen-base run (e.g. the bundled default model) with zero-shot all-MiniLM-L6-v2.

Both are measured on the validation and test splits that `qpairs train` wrote to
``RUN/splits/``. Zero-shot = the MiniLM sentence embedding (mean pooling, L2-normalised, as
sentence-transformers' all-MiniLM-L6-v2) → cosine distance → Platt calibration and threshold
fitted on the same validation split. The run is scored with its saved head and calibration
(`qpairs.load(RUN)`) on the cached base outputs, checked end to end on 200 test pairs. all-MiniLM-L6-v2 was pretrained on QQP duplicate pairs,
so its zero-shot numbers are not those of an unseen task.

    python scripts/compare_default_model.py runs/default --cache runs/minilm_cache
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from qpairs.calibration import Calibrator
from qpairs.tokencache import open_cache
from qpairs.encoders import DEFAULT_BASE, build_encoder
from qpairs.losses import pair_distance
from qpairs.metrics import classification_metrics, format_table


def zero_shot_distances(frame: pd.DataFrame, cache, encoder) -> np.ndarray:
    texts = list(frame["question1"]) + list(frame["question2"])
    cache.fill(encoder, texts)
    e1 = torch.nn.functional.normalize(cache.lookup(list(frame["question1"])), dim=-1)
    e2 = torch.nn.functional.normalize(cache.lookup(list(frame["question2"])), dim=-1)
    return pair_distance(e1, e2, "cosine").numpy()


@torch.no_grad()
def head_probs(det, cache, frame: pd.DataFrame) -> np.ndarray:
    """The model's calibrated probabilities computed from cached base outputs (its head runs on them)."""
    head = det.model.encoder.head
    e1, e2 = head(cache.lookup(list(frame["question1"]))), head(cache.lookup(list(frame["question2"])))
    return det.calibrator.predict_proba(det.model.decision_distance(e1, e2).numpy())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="run directory written by qpairs train (with splits/)")
    ap.add_argument("--model", help="model to score (default: the run itself), e.g. qpairs/matching_model")
    ap.add_argument("--cache", help="embedding cache directory of the frozen base (reused and filled)")
    ap.add_argument("--json", help="write the table as JSON here")
    args = ap.parse_args()

    import qpairs
    from qpairs.evaluate import evaluate_frame

    run = Path(args.run)
    cfg = json.loads((Path(args.model or run) / "config.json").read_text())["encoder"]
    splits = {name: pd.read_csv(run / "splits" / f"{name}.csv.gz", dtype={"question1": str, "question2": str},
                                keep_default_na=False) for name in ("validation", "test")}
    base = build_encoder(dict(type="transformer", base_model=cfg.get("base_model") or DEFAULT_BASE, pooling="mean",
                              max_length=cfg.get("max_length", 128), normalize=True, frozen_base=True))
    cache = open_cache(base, args.cache)
    d = {name: zero_shot_distances(f, cache, base) for name, f in splits.items()}
    y = {name: f["is_duplicate"].to_numpy() for name, f in splits.items()}
    cal = Calibrator("platt").fit(d["validation"], y["validation"])
    rows = {f"zero-shot MiniLM, {n}": classification_metrics(y[n], cal.predict_proba(d[n]), cal.threshold)
            for n in splits}
    det = qpairs.load(args.model or run, device="cpu")
    name = "default model" if args.model else run.name
    for n, f in splits.items():
        probs = head_probs(det, cache, f)
        rows[f"{name}, {n}"] = classification_metrics(y[n], probs, det.threshold)
    # the cached path is the model's own computation: check it end to end on a sample
    sample = splits["test"].iloc[:200]
    gap = np.abs(evaluate_frame(det, sample)[1] - head_probs(det, cache, sample)).max()
    print(f"cached vs end-to-end probabilities on 200 test pairs: max difference {gap:.2e}")
    assert gap < 1e-3, gap
    print(format_table(rows, ("accuracy", "f1", "roc_auc", "average_precision", "log_loss")))
    for n in splits:
        zs, ours = rows[f"zero-shot MiniLM, {n}"], rows[f"{name}, {n}"]
        print(f"{n}: accuracy {100 * (ours['accuracy'] - zs['accuracy']):+.2f} points, ROC-AUC "
              f"{ours['roc_auc'] - zs['roc_auc']:+.4f}, log loss {100 * (ours['log_loss'] / zs['log_loss'] - 1):+.1f}%"
              f" (n = {int(ours['n'])})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
