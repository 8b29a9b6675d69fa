"""How far into a question should a model read? A model's scores at several inference lengths.

Two sets, each scored at every ``--lengths`` value (the encoder's ``max_length``; words for a BiLSTM):

* **long texts:** Stack Exchange titles against bodies (median about 100 word pieces), ``--posts``
  validation posts of the training sites (the held-out site is never read), each with its own body
  (positive) and the body of a same-site post sharing a tag (negative): ROC-AUC of the model's
  probability, and of zero-shot MiniLM cosine at the same lengths for a transformer model;
* **QQP** (``--test``, optional): accuracy at the stored threshold, ROC-AUC and log loss.

    python scripts/eval_read_length.py --model default --lengths 40 128 256 --test runs/matching_aux/splits/test.csv.gz
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

import qpairs
from qpairs import title_body as tb
from qpairs.metrics import classification_metrics
from qpairs.title_body_eval import zero_shot_detector


def title_body_pairs(posts: int, test_site: str, seed: int = 0) -> tuple[list[str], list[str], np.ndarray]:
    """Titles against their own body and against a tag-sharing same-site body, from training sites only."""
    val = tb.cross_site_split(tb.load_posts(tb.default_title_body_file()), test_site)["validation"]
    val = val.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    negatives, ok = tb.tag_negatives(val, rng)
    pick = rng.choice(np.flatnonzero(ok), size=min(posts, int(ok.sum())), replace=False)
    titles, bodies = val["title"].iloc[pick].tolist(), val["body"].iloc[pick].tolist()
    others = val["body"].iloc[negatives[pick]].tolist()
    return titles * 2, bodies + others, np.r_[np.ones(len(pick)), np.zeros(len(pick))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="matching", help="model directory or bundled name (default: matching); for an "
                    "ensemble the lengths apply to its first member, the others keep theirs")
    ap.add_argument("--lengths", type=int, nargs="+", default=[40, 128, 256])
    ap.add_argument("--posts", type=int, default=600)
    ap.add_argument("--test-site", default="crypto", help="held out: never read here")
    ap.add_argument("--test", help="QQP pair file (question1, question2, is_duplicate)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    det = qpairs.load(args.model)
    q1, q2, y = title_body_pairs(args.posts, args.test_site)
    test = pd.read_csv(args.test) if args.test else None
    print(f"{det}: {len(y) // 2} titles against their body and a tag-sharing body of the same site")
    if hasattr(det, "members"):
        print("an ensemble: --lengths set its first member's; the other members read as they were trained to")
    for length in args.lengths:
        det.model.encoder.config["max_length"] = length
        start = time.perf_counter()
        line = f"max_length {length:>4}: title/body ROC-AUC {roc_auc_score(y, det.predict_proba(q1, q2)):.4f}"
        if det.model.encoder.config["type"] == "transformer":
            zero_shot = zero_shot_detector(max_length=length)
            line += f" (zero-shot MiniLM cosine {roc_auc_score(y, -zero_shot.distances(q1, q2)):.4f})"
        if test is not None:
            p = det.predict_proba(test["question1"].astype(str).tolist(), test["question2"].astype(str).tolist())
            m = classification_metrics(test["is_duplicate"].to_numpy(), p, det.threshold)
            line += f"; QQP accuracy {m['accuracy']:.4f}, ROC-AUC {m['roc_auc']:.4f}, log loss {m['log_loss']:.4f}"
        print(line + f"  [{time.perf_counter() - start:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
