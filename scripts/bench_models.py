#!/usr/bin/env python
"""Scoring speed of trained runs against each other on the same pairs, in one process (e.g. a distilled
BiLSTM student against its MiniLM teacher). The first run is the peer: every other run's ratio is to it.

    python scripts/bench_models.py runs/teacher_pair0 runs/e8_distill --pairs runs/e8_distill/splits/test.csv.gz

Each run loads with its default backend (ONNX int8 for a transformer on the CPU, torch for a BiLSTM),
scores a warm-up batch, then all pairs; the runs take turns `--repeats` times and the best time counts.
"""
from __future__ import annotations

import argparse
import time


def pairs_per_second(det, q1: list[str], q2: list[str]) -> float:
    """Pairs per second of one full `predict_proba` pass (after a warm-up batch)."""
    det.predict_proba(q1[:64], q2[:64])
    start = time.perf_counter()
    det.predict_proba(q1, q2)
    return len(q1) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories; the first is the peer")
    ap.add_argument("--pairs", required=True, help="pair file with question1/question2 columns")
    ap.add_argument("--max-pairs", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import pandas as pd
    import torch

    import qpairs

    torch.set_num_threads(args.threads)
    frame = pd.read_csv(args.pairs, keep_default_na=False).head(args.max_pairs)
    q1, q2 = frame["question1"].astype(str).tolist(), frame["question2"].astype(str).tolist()
    best = {run: 0.0 for run in args.runs}
    backends = {}
    for _ in range(args.repeats):
        for run in args.runs:
            det = qpairs.load(run, device="cpu")
            backends[run] = det.backend
            best[run] = max(best[run], pairs_per_second(det, q1, q2))
    peer = best[args.runs[0]]
    print(f"{len(q1)} pairs, {args.threads} thread(s), best of {args.repeats}")
    for run in args.runs:
        print(f"{run:40s} {backends[run]:10s} {best[run]:8.0f} pairs/s  {best[run] / peer:6.2f}x the peer")


if __name__ == "__main__":
    main()
