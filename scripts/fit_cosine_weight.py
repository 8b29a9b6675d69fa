"""Fit the cosine weight of a trained matching-head run on its validation pairs, as `qpairs train` does now.

A matching head's logit gets ``w · cos`` added, where cos is the cosine of the two questions' pooled token
states (over a frozen base: zero-shot all-MiniLM-L6-v2's cosine). `w` and the calibration are chosen together
on validation (lowest calibrated log loss, `qpairs.cosine_weight.fit_cosine_weight`), at the run's calibration method
and threshold rule, in fp32. Rewrites the run's config.json and calibration.json, and the validation (and,
with --test, test) rows of metrics.json; prints the rows before and after.

    python scripts/fit_cosine_weight.py qpairs/default_model --validation runs/x/splits/validation.csv.gz \\
        --test runs/x/splits/test.csv.gz
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

import qpairs
from qpairs.checkpoint import read_json, write_json
from qpairs.evaluate import evaluate_distances
from qpairs.matching import needs_tokens
from qpairs.metrics import format_table
from qpairs.pair_scores import StateMemo
from qpairs.cosine_weight import fit_cosine_weight


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a run directory with a matching pair head")
    ap.add_argument("--validation", required=True, help="the run's validation pairs (question1, question2, is_duplicate)")
    ap.add_argument("--test", help="its test pairs, to report and store the test row")
    args = ap.parse_args()
    run = Path(args.run)
    det = qpairs.load(run, backend="torch", device="cpu")
    if not needs_tokens(det.model):
        raise SystemExit(f"{run}: the model has no matching head, so it has no cosine weight")
    frames = {"validation": pd.read_csv(args.validation, keep_default_na=False)}
    if args.test:
        frames["test"] = pd.read_csv(args.test, keep_default_na=False)
    memo = StateMemo()
    head = det.model.pair_head

    def distances_at(frame, w: float):
        head.cosine_weight = w
        return det.distances(list(frame["question1"]), list(frame["question2"]), states=memo)

    rule = (det.calibrator.operating_point or {}).get("rule", "accuracy")
    before = {name: evaluate_distances(det.calibrator, distances_at(f, head.cosine_weight),
                                       f["is_duplicate"].to_numpy())[0] for name, f in frames.items()}
    val = frames["validation"]
    w, cal = fit_cosine_weight(lambda x: distances_at(val, x), val["is_duplicate"].to_numpy(), det.calibrator.method,
                               rule)
    after = {name: evaluate_distances(cal, distances_at(f, w), f["is_duplicate"].to_numpy())[0]
             for name, f in frames.items()}
    print("before:\n" + format_table(before) + f"\n\ncosine weight {w:g}:\n" + format_table(after))
    config = read_json(run / "config.json")
    config["pair_head"]["cosine_weight"] = w
    write_json(run / "config.json", config)
    write_json(run / "calibration.json", cal.to_dict())
    metrics_path = run / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.exists() else {}
    write_json(metrics_path, {**metrics, **after})


if __name__ == "__main__":
    main()
