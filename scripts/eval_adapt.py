"""What `qpairs adapt` buys with N labelled pairs from another domain, measured on pairs it never saw.

MRPC (news-sentence paraphrases, both classes given) is shuffled once; the last `--heldout` pairs are
the test set, and for each N the first N pairs are "the user's" labelled pairs. Every row is the same
model adapted on N pairs, then scored on the same held-out pairs (accuracy at the adapted threshold,
F1, ROC-AUC, log loss). N = 0 is the model as shipped.

    python scripts/eval_adapt.py --mrpc ../shared/data/ood/msrp_train.tsv.gz --sizes 100 200 500

`adapt` never sees the held-out pairs, but the model may have: the bundled models trained on MRPC training pairs
(`scripts/make_aux_pairs.py`), so for them most held-out pairs are training pairs. Measure a run trained on QQP
alone (`--model RUN`) to see what adapting buys on a domain the model never saw.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

import qpairs
from qpairs.adapt import adapt
from qpairs.metrics import classification_metrics, format_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_ood import read_tsv  # noqa: E402


def mrpc_frame(path, seed: int) -> pd.DataFrame:
    rows = read_tsv(path, header=True)
    frame = pd.DataFrame({"question1": [r[3] for r in rows], "question2": [r[4] for r in rows],
                          "is_duplicate": [int(r[0]) for r in rows]})
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def held_out_metrics(det, frame: pd.DataFrame) -> dict:
    p = det.predict_proba(list(frame["question1"]), list(frame["question2"]))
    return classification_metrics(frame["is_duplicate"].to_numpy(), p, det.threshold)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="run directory or bundled model name (default: default)")
    ap.add_argument("--mrpc", required=True, help="MRPC TSV (.gz), e.g. ood/msrp_train.tsv.gz")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 500])
    ap.add_argument("--heldout", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--head", action="store_true", help="also refit the head (qpairs adapt --head)")
    args = ap.parse_args()
    frame = mrpc_frame(args.mrpc, args.seed)
    test = frame.tail(args.heldout)
    if max(args.sizes) > len(frame) - args.heldout:
        raise SystemExit(f"{args.mrpc}: {len(frame)} pairs, too few for {max(args.sizes)} + {args.heldout} held out")
    rows = {"as shipped (0 pairs)": held_out_metrics(qpairs.load(args.model, backend="torch"), test)}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            mine = Path(tmp) / f"mine{n}.csv"
            frame.head(n).to_csv(mine, index=False)
            out = Path(tmp) / f"adapted{n}"
            adapt(args.model, mine, out, head=args.head, seed=args.seed)
            rows[f"adapted on {n} pairs"] = held_out_metrics(qpairs.load(out, backend="torch"), test)
    print(f"\nheld-out: the last {len(test)} pairs of {args.mrpc} shuffled with seed {args.seed} "
          f"({test['is_duplicate'].mean():.1%} paraphrases)")
    print(format_table(rows, ("accuracy", "f1", "roc_auc", "log_loss")))


if __name__ == "__main__":
    main()
