#!/usr/bin/env python
"""What the training labels answer on their own: a run's test metrics with and without `--known` (its training pairs).

On a split by pair, a test pair's questions may both sit in the training pairs, and duplicates are transitive: the
training labels then settle the pair before the model reads it. This scores a run's validation and test pairs
once and reports, at the natural duplicate rate of each:

* the model alone, at its stored calibration and threshold;
* the same probabilities with the pairs its training pairs settle answered by them (`qpairs.known.KnownPairs`,
  `qpairs score --known RUN/splits/train.csv.gz`);
* the same, with Platt calibration and the threshold fitted again on the validation pairs the known pairs leave
  to the model (the pairs they settle no longer need the model's threshold, so the rest have a lower duplicate rate).

    python scripts/eval_known_pairs.py runs/matching_pairsplit
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def main(argv=None) -> int:
    import qpairs
    from qpairs.calibration import Calibrator
    from qpairs.known import UNKNOWN, KnownPairs
    from qpairs.metrics import classification_metrics

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a trained run directory (its splits/ folder gives the pairs)")
    p.add_argument("--known-probability", type=float, default=0.99)
    args = p.parse_args(argv)

    known = KnownPairs(pd.read_csv(args.run / "splits" / "train.csv.gz", keep_default_na=False),
                       args.known_probability, source="the training pairs")
    print(known)
    det = qpairs.load(args.run)
    parts = {}
    for part in ("validation", "test"):
        frame = pd.read_csv(args.run / "splits" / f"{part}.csv.gz", keep_default_na=False)
        q1, q2 = list(frame.question1), list(frame.question2)
        d = det.distances(q1, q2)
        found = known.lookup(q1, q2)
        y = frame.is_duplicate.to_numpy()
        parts[part] = (y, d, q1, q2, found)
        right = (det.calibrator.predict_proba(d) >= det.threshold) == y
        print(f"{part}: {len(y)} pairs, {(found == 1).sum()} inside a training duplicate group "
              f"({y[found == 1].mean():.4f} of them duplicates), {(found == 0).sum()} labelled non-duplicates "
              f"in training; the model alone gets {right[found == 1].mean():.4f} of the group pairs right")
    yv, dv, _, _, fv = parts["validation"]
    refit = Calibrator("platt").fit(dv[fv == UNKNOWN], yv[fv == UNKNOWN])
    rows = [("model alone", det.calibrator, False), ("with the known training pairs", det.calibrator, True),
            ("with them, calibration and threshold refit on the rest of validation", refit, True)]
    print("\n| scores | val acc | test acc | F1 | ROC-AUC | log loss | threshold |\n|---|---|---|---|---|---|---|")
    for name, cal, use_known in rows:
        cells = []
        for part in ("validation", "test"):
            y, d, q1, q2, _ = parts[part]
            probs = cal.predict_proba(d)
            probs = known.apply(probs, q1, q2) if use_known else probs
            cells.append(classification_metrics(y, probs, cal.threshold))
        v, t = cells
        print(f"| {name} | {v['accuracy']:.4f} | {t['accuracy']:.4f} | {t['f1']:.4f} | {t['roc_auc']:.4f} | "
              f"{t['log_loss']:.4f} | {cal.threshold:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
