"""Fit the cosine weight and hand-over of a trained matching-head run on its validation pairs, as `qpairs train` does now.

A matching head's logit gets ``w · cos`` added, where cos is the cosine of the two questions' pooled token
states (over a frozen base: zero-shot all-MiniLM-L6-v2's cosine). `w` and the calibration are chosen together
on validation (lowest calibrated log loss, `qpairs.cosine_weight.fit_cosine_weight`), at the run's calibration method
and threshold rule, in fp32. Over a frozen base, pairs longer than the head was trained on (the run's
``train.max_length``) are then handed over to the cosine (`qpairs.cosine_weight.fit_hand_over`), and the
calibration is fitted again. Rewrites the run's config.json and calibration.json, and the validation (and,
with --test, test) rows of metrics.json; prints the rows before and after.

    python scripts/fit_cosine_weight.py qpairs/matching_model --validation runs/x/splits/validation.csv.gz \\
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
from qpairs.cosine_weight import fit_head_blend


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a run directory with a matching pair head")
    ap.add_argument("--validation", required=True, help="the run's validation pairs (question1, question2, is_duplicate)")
    ap.add_argument("--test", help="its test pairs, to report and store the test row")
    ap.add_argument("--no-hand-over", action="store_true", help="fit the cosine weight only (no hand-over of long pairs)")
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
    config = read_json(run / "config.json")
    frozen = config["encoder"].get("type") == "transformer" and config["encoder"].get("frozen_base")
    w, rule, cal = fit_head_blend(head, lambda x: distances_at(val, x), val["is_duplicate"].to_numpy(),
                                  det.calibrator.method, rule,
                                  config["train"]["max_length"] if frozen and not args.no_hand_over else None)
    after = {name: evaluate_distances(cal, distances_at(f, w), f["is_duplicate"].to_numpy())[0]
             for name, f in frames.items()}
    print("before:\n" + format_table(before) + f"\n\ncosine weight {w:g}, hand-over {rule}:\n" + format_table(after))
    config["pair_head"].update(cosine_weight=w, hand_over=rule)
    write_json(run / "config.json", config)
    write_json(run / "calibration.json", cal.to_dict())
    metrics_path = run / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.exists() else {}
    write_json(metrics_path, {**metrics, **after})


if __name__ == "__main__":
    main()
