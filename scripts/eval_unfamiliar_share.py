#!/usr/bin/env python
"""How much of an unfamiliar pair's logit should go to the zero-shot cosine? An ensemble's rule
(`qpairs.familiarity`, ``qpairs ensemble --familiar``) at several shares, against the same share for every pair.

The members score each set once (PyTorch fp32, as `qpairs ensemble` fits); then, for each share, the rule is fitted
on the validation pairs and the mix calibrated again, exactly as ``qpairs ensemble --unfamiliar-share A`` does, and
every set is scored:

* QQP validation (log loss, accuracy) and test (accuracy at the validation threshold, ROC-AUC, log loss);
* STS-B dev (Spearman), the held-out parts of MRPC and SICK (ROC-AUC; `scripts/make_aux_pairs.py`), 600 Stack
  Exchange titles against their own and a tag-sharing body of the training sites, and short forum questions
  (``forum_titles.csv`` of `scripts/make_aux_pairs.py`) (ROC-AUC), beside the zero-shot cosine's figure on each.

"flat A" rows give every pair the share A, whatever its distance (a plain blend with the cosine).

    python scripts/eval_unfamiliar_share.py --split runs/qqp_split --aux runs/aux
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

import qpairs
from eval_read_length import title_body_pairs
from make_aux_pairs import read_ood
from qpairs.calibration import fit_calibrator
from qpairs.data import default_data_dir
from qpairs.detector import Ensemble
from qpairs.familiarity import Familiarity, cosine, pooled_vectors, reference_member, training_questions
from qpairs.metrics import classification_metrics


def scored_sets(ens: Ensemble, sets: dict) -> dict:
    """name → (member logits, pooled vectors of both sides, target) of each set."""
    out = {}
    for name, (a, b, y) in sets.items():
        pooled: dict = {}
        logits = ens.member_logits(a, b, pooled=pooled)
        out[name] = (ens.mix(logits, a, b, pooled), *ens.pooled_pairs(pooled, a, b), y)
        print(f"scored {name} ({len(y)} pairs)", flush=True)
    return out


def ood_figure(name: str, score: np.ndarray, y: np.ndarray) -> float:
    return spearmanr(score, y)[0] if name == "STS-B dev" else roc_auc_score(y, score)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="an ensemble with a member that has a frozen base and a "
                    "matching head (the rule reads the first such one)")
    ap.add_argument("--split", default="runs/qqp_split", help="folder with train/validation/test.csv.gz of the split "
                    "the members trained on")
    ap.add_argument("--aux", default="runs/aux", help="folder of scripts/make_aux_pairs.py (held-out MRPC and SICK)")
    ap.add_argument("--data-dir", default=default_data_dir(), help="shared data folder (STS-B dev)")
    ap.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 1.0])
    ap.add_argument("--flat", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    ap.add_argument("--ramps", nargs="+", default=["50:99"], metavar="FROM:TO",
                    help="percentiles of the validation pairs' unfamiliarity where the hand-over starts and is full")
    args = ap.parse_args()

    base = qpairs.load(args.model, device="cpu", backend="torch")
    split = Path(args.split)
    reference = base.members[reference_member(base.members)]  # where the rule reads its pooled vectors
    fam = Familiarity.fit(pooled_vectors(reference, training_questions([split / "train.csv.gz"])))
    ens = Ensemble(base.members, base.weights, base.calibrator, familiarity=fam)  # no rule fitted yet: the plain mix
    sets = {}
    for part in ("validation", "test"):
        f = pd.read_csv(split / f"{part}.csv.gz", keep_default_na=False)
        sets[f"QQP {part}"] = (list(f["question1"]), list(f["question2"]), f["is_duplicate"].to_numpy())
    st = read_ood("stsb_dev", Path(args.data_dir) / "ood" / "stsb_dev.tsv.gz")
    sets["STS-B dev"] = (list(st["question1"]), list(st["question2"]), st["score"].to_numpy())
    for name, file in (("MRPC held out", "heldout_mrpc.csv"), ("SICK held out", "heldout_sick.csv"),
                       ("title/body", None), ("forum titles", "forum_titles.csv")):
        if file is None:
            sets[name] = title_body_pairs(600, "crypto")
            continue
        f = pd.read_csv(Path(args.aux) / file, keep_default_na=False)
        sets[name] = (list(f["question1"]), list(f["question2"]), f["is_duplicate"].to_numpy())
    scored = scored_sets(ens, sets)
    ood = [n for n in sets if not n.startswith("QQP")]

    print("\n| rule | val log loss | val acc | test acc | test ROC-AUC | test log loss | " + " | ".join(ood) + " |")
    print("|---" * (6 + len(ood)) + "|")
    print("| zero-shot cosine | | | | | | " + " | ".join(f"{ood_figure(n, cosine(*scored[n][1:3]), scored[n][3]):.4f}"
                                               for n in ood) + " |")
    val_mix, val_a, val_b, val_y = scored["QQP validation"]
    ramps = [tuple(float(x) for x in r.split(":")) for r in args.ramps]
    rows = [(f"share {s:g}, p{r[0]:g}–p{r[1]:g}", s, r, False) for r in ramps for s in args.shares]
    rows += [(f"flat {s:g}", s, (50, 99), True) for s in args.flat]
    for label, share, ramp, flat in rows:
        rule = copy.deepcopy(fam)
        rule.fit_rule(val_a, val_b, val_y, share, ramp)
        if flat:  # every pair past "from": the whole share
            rule.rule.update({"from": -2.0, "to": -1.0})
        logit = {n: rule.apply(-mix, a, b) for n, (mix, a, b, _) in scored.items()}
        cal = fit_calibrator("platt", -logit["QQP validation"], val_y, "accuracy")
        val = classification_metrics(val_y, cal.predict_proba(-logit["QQP validation"]), cal.threshold)
        test_y = scored["QQP test"][3]
        test = classification_metrics(test_y, cal.predict_proba(-logit["QQP test"]), cal.threshold)
        cells = [val["log_loss"], val["accuracy"], test["accuracy"], test["roc_auc"], test["log_loss"]]
        cells += [ood_figure(n, logit[n], scored[n][3]) for n in ood]
        print(f"| {label} | " + " | ".join(f"{c:.4f}" for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
