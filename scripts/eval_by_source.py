#!/usr/bin/env python
"""Test metrics of trained runs broken down by source file, plus the accuracy a 50/50 test set would give.

The independent QQP evaluation mixes natural-rate pairs (like cs224n_dev) with a balanced, tokenized
set (like bimpm_*): this shows how a run does on each kind, at its stored threshold.

    python scripts/eval_by_source.py runs/lstm_pair_minilm200 [RUN ...] [--split test] [--test-prior 0.5]

`--test-prior P` re-weights the probabilities to duplicate rate P before the threshold, as
`qpairs evaluate --test-prior` does.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def by_source(run: Path, split: str, test_prior: float | None = None) -> pd.DataFrame:
    import qpairs
    from qpairs.metrics import classification_metrics

    frame = pd.read_csv(run / "splits" / f"{split}.csv.gz", keep_default_na=False)
    det = qpairs.load(run, device="cpu")
    probs = det.calibrator.at_prior(det.predict_proba(list(frame["question1"]), list(frame["question2"])), test_prior)
    rows = []
    for source, idx in [("all", frame.index)] + list(frame.groupby("source").groups.items()):
        y, p = frame.loc[idx, "is_duplicate"].to_numpy(), probs[idx]
        m = classification_metrics(y, p, det.threshold)
        pred = p >= det.threshold
        recall, specificity = pred[y == 1].mean(), (~pred[y == 0]).mean()
        rows.append({"run": run.name, "source": source, "pairs": len(y), "dup_rate": y.mean(),
                     "accuracy": m["accuracy"], "roc_auc": m["roc_auc"], "log_loss": m["log_loss"],
                     "recall": recall, "specificity": specificity, "accuracy_at_50_50": (recall + specificity) / 2})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--split", default="test", choices=["validation", "test"])
    ap.add_argument("--test-prior", type=float, help="re-weight the probabilities to this duplicate rate first")
    args = ap.parse_args()
    table = pd.concat([by_source(r, args.split, args.test_prior) for r in args.runs], ignore_index=True)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    if np.isnan(table["roc_auc"]).any():
        print("(roc_auc is NaN where a source has one class only)")


if __name__ == "__main__":
    main()
