"""A model out of its training domain: STS-B (Spearman) and MRPC (ROC-AUC, accuracy), against zero-shot MiniLM.

The peer, in the same run, is the cosine of the model's frozen base vectors (for the default model:
all-MiniLM-L6-v2, mean-pooled; for an ensemble, those of its first member with a frozen transformer base; none for a
model whose base layers trained). Files are read as the data folder's `ood/` notes describe: tab-separated,
no quoting; STS-B has no header (score in field 5, sentences in 6 and 7), MRPC a header and a BOM.

    python scripts/eval_ood.py --stsb DATA/ood/stsb_dev.tsv.gz --mrpc DATA/ood/msrp_train.tsv.gz
    python scripts/eval_ood.py --model RUN --stsb DATA/ood/stsb_dev.tsv.gz --pairs runs/aux/heldout_*.csv
    python scripts/eval_ood.py --stsb DATA/ood/stsb_dev.tsv.gz --pairs runs/aux/heldout_*.csv \
        --sentence-transformer runs/bench_quality/st_trainer/checkpoint-N     # and the peer recipe's model
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

import qpairs
from make_aux_pairs import read_tsv


def zero_shot_model(det):
    """The model (or, for an ensemble, the first member) whose pooled base vectors are zero-shot: a transformer
    base left frozen. None when there is none (a BiLSTM, or layers trained by --train-top-layers or fine-tuning)."""
    for m in getattr(det, "members", [det]):
        config = m.model.encoder.config
        if config.get("type") == "transformer" and config.get("frozen_base"):
            return m
    return None


def base_cosine(det, a, b) -> np.ndarray | None:
    """Cosine of the zero-shot base vectors of `zero_shot_model(det)` (None without one)."""
    det = zero_shot_model(det)
    if det is None:
        return None
    ea, eb = det.encode(a, pooled=True), det.encode(b, pooled=True)
    ea /= np.linalg.norm(ea, axis=1, keepdims=True)
    eb /= np.linalg.norm(eb, axis=1, keepdims=True)
    return (ea * eb).sum(1)


def st_cosine(model, a, b) -> np.ndarray:
    """Cosine of a SentenceTransformer's normalised embeddings (the peer recipe's score)."""
    ea = model.encode(a, batch_size=256, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    eb = model.encode(b, batch_size=256, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    return (ea * eb).sum(1)


def peer_line(st, a, b, y, score=None) -> str:
    """The sentence-transformers model's ROC-AUC (binary y) or Spearman (graded y), and Spearman to `score`."""
    if st is None:
        return ""
    c = st_cosine(st, a, b)
    graded = len(np.unique(y)) > 2
    line = f"\n  sentence-transformers model: {'Spearman' if graded else 'ROC-AUC'} "
    line += f"{spearmanr(c, y)[0] if graded else roc_auc_score(y, c):.3f}"
    return line + (f", Spearman to score {spearmanr(c, score)[0]:.3f}" if score is not None else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model directory (default: the bundled default model)")
    ap.add_argument("--stsb", help="STS-B TSV (.gz)")
    ap.add_argument("--mrpc", help="MRPC TSV (.gz)")
    ap.add_argument("--pairs", nargs="+", default=[], help="held-out pair files of scripts/make_aux_pairs.py "
                    "(question1, question2, is_duplicate, score): ROC-AUC and Spearman against score")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--sentence-transformer", help="also score every set with this SentenceTransformer directory "
                    "(cosine), e.g. the peer recipe's trained model")
    args = ap.parse_args()
    det = qpairs.load(args.model, backend=args.backend)
    zero_shot = zero_shot_model(det)
    print("zero-shot: " + ("none (no frozen transformer base)" if zero_shot is None else
                           f"the cosine of {zero_shot.model.encoder.config.get('base_model') or 'all-MiniLM-L6-v2'}'s "
                           f"mean-pooled vectors, as {zero_shot.path} reads them"))
    st = None
    if args.sentence_transformer:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(args.sentence_transformer, device="cpu")
    if args.stsb:
        rows = read_tsv(args.stsb, header=False)
        a, b, y = [r[5] for r in rows], [r[6] for r in rows], np.array([float(r[4]) for r in rows])
        cos = base_cosine(det, a, b)
        print(f"STS-B {args.stsb} ({len(y)} pairs): Spearman, model probability {spearmanr(det.predict_proba(a, b), y)[0]:.3f}"
              + (f", zero-shot base cosine {spearmanr(cos, y)[0]:.3f}" if cos is not None else "")
              + peer_line(st, a, b, y))
    if args.mrpc:
        rows = read_tsv(args.mrpc, header=True)
        a, b, y = [r[3] for r in rows], [r[4] for r in rows], np.array([int(r[0]) for r in rows])
        p, cos = det.predict_proba(a, b), base_cosine(det, a, b)
        print(f"MRPC {args.mrpc} ({len(y)} pairs, {y.mean():.1%} paraphrases): ROC-AUC, model {roc_auc_score(y, p):.3f}"
              + (f", zero-shot base cosine {roc_auc_score(y, cos):.3f}" if cos is not None else "") + "; model accuracy at its "
              f"threshold {((p >= det.threshold) == y).mean():.3f}, mean probability {p.mean():.3f}" + peer_line(st, a, b, y))
    for path in args.pairs:
        f = pd.read_csv(path, keep_default_na=False)
        a, b, y = list(f["question1"]), list(f["question2"]), f["is_duplicate"].to_numpy()
        p, cos = det.predict_proba(a, b), base_cosine(det, a, b)
        peer = "" if cos is None else f", zero-shot {roc_auc_score(y, cos):.3f}"
        peer_rho = "" if cos is None else f", zero-shot {spearmanr(cos, f['score'])[0]:.3f}"
        print(f"{path} ({len(y)} pairs, {y.mean():.1%} duplicates): ROC-AUC model {roc_auc_score(y, p):.3f}{peer}; "
              f"Spearman to score model {spearmanr(p, f['score'])[0]:.3f}{peer_rho}; model accuracy at its threshold "
              f"{((p >= det.threshold) == y).mean():.3f}" + peer_line(st, a, b, y, f["score"]))


if __name__ == "__main__":
    main()
