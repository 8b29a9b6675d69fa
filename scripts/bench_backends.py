"""One model's backends against each other in one process: pairs/s, accuracy, ROC-AUC and the mean, 99th-percentile
and largest change of a probability against the first backend, on a labelled pair file; each backend is called `--repeat` times,
alternating, and a sample of pairs is also scored one at a time (batch invariance).

    python scripts/bench_backends.py --model fast --backends torch bf16 --data DATA/qqp/kaggle_train_head10k.csv.gz
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

import qpairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fast", help="run directory or bundled model name")
    ap.add_argument("--backends", nargs="+", default=["torch", "bf16"], help="the first is the reference")
    ap.add_argument("--data", required=True, help="labelled pairs: question1, question2, is_duplicate")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--singles", type=int, default=200, help="pairs also scored one at a time")
    args = ap.parse_args()
    frame = pd.read_csv(args.data, keep_default_na=False)
    q1, q2, y = list(frame["question1"]), list(frame["question2"]), frame["is_duplicate"].to_numpy()
    detectors = {b: qpairs.load(args.model, backend=b) for b in args.backends}
    speeds, probs = {b: [] for b in args.backends}, {}
    for _ in range(args.repeat):
        for backend, det in detectors.items():
            t0 = time.perf_counter()
            probs[backend] = det.predict_proba(q1, q2)
            speeds[backend].append(len(y) / (time.perf_counter() - t0))
    ref = probs[args.backends[0]]
    print(f"{args.model} on {args.data} ({len(y)} pairs), {args.repeat} alternating calls per backend")
    print(f"{'backend':<10}{'pairs/s (min-max)':>22}{'accuracy':>10}{'ROC-AUC':>9}{'mean |dp|':>10}{'p99 |dp|':>9}{'max |dp|':>9}{'decisions changed':>19}"
          f"{'singles equal':>15}")
    for backend, det in detectors.items():
        p = probs[backend]
        alone = np.array([det.predict_proba(a, b) for a, b in zip(q1[: args.singles], q2[: args.singles])])
        same = int((alone == p[: args.singles]).sum())
        changed = int(((p >= det.threshold) != (ref >= det.threshold)).sum())
        drift = np.abs(p - ref)
        print(f"{backend:<10}{min(speeds[backend]):>11,.0f}-{max(speeds[backend]):<10,.0f}"
              f"{((p >= det.threshold) == y).mean():>10.4f}{roc_auc_score(y, p):>9.4f}{drift.mean():>10.4f}"
              f"{np.quantile(drift, 0.99):>9.4f}{drift.max():>9.4f}"
              f"{changed:>19}{same:>9}/{args.singles}")


if __name__ == "__main__":
    main()
