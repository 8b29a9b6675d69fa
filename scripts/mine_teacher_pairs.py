#!/usr/bin/env python
"""New training pairs from a stronger teacher, from the training split only.

* `-o FILE`: new pairs: each training question with its k nearest training questions in the teacher's
  embedding space, kept where the teacher is sure (probability ≤ --negative-below or ≥ --positive-above),
  for `qpairs train --extra-train FILE`. Pairs already labelled, and validation or test pairs, are never
  written.
* `--train-labels FILE`: the teacher's probability of every labelled training pair (`qpairs.distill`, what
  `qpairs train --teacher RUN` computes itself), for `qpairs train --teacher-labels FILE`.

Use the same --split-by and --seed as the teacher's run and the student's (checked here against the
teacher's saved held-out splits, so its labels cannot leak validation or test pairs).

    python scripts/mine_teacher_pairs.py --teacher runs/teacher_pair0 --split-by pair --seed 0 \\
        --embedding-cache runs/minilm_cache -o runs/teacher_pairs.csv.gz
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def training_questions(args):
    """The split `qpairs train` makes with these settings: (train frame, held-out frames)."""
    from qpairs import data as qd
    from qpairs.config import TrainConfig
    from qpairs.distill import TeacherLeakError, check_teacher_split

    files = args.data or [str(p) for p in qd.qqp_files()]
    frame = qd.load_pairs(files)
    frame = frame[frame["is_duplicate"] >= 0]
    splits, _ = qd.make_splits(frame, seed=args.seed, by=args.split_by, eval_rate=TrainConfig.eval_rate)
    held_out = [splits["validation"], splits["test"]]
    try:
        check_teacher_split(args.teacher, held_out, args.teacher_unchecked)
    except TeacherLeakError as exc:
        raise SystemExit(f"mine_teacher_pairs.py: {exc}") from None
    return splits["train"], held_out


def teacher_vectors(det, texts, cache_dir) -> np.ndarray:
    """The teacher's embeddings of `texts` (its pooled base outputs from the embedding cache when given)."""
    if cache_dir:
        from qpairs.tokencache import open_cache

        cache = open_cache(det.model.encoder, cache_dir)
        missing = cache.missing(texts)
        if missing:
            cache.fill(det.model.encoder, missing)
        return det.embed_pooled(cache.lookup(texts).numpy())
    return det.encode(texts)


def nearest_pairs(vectors: np.ndarray, k: int) -> np.ndarray:
    """[n, 2] unordered index pairs (i < j) of every row and its k nearest rows (cosine)."""
    import faiss

    v = np.ascontiguousarray(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), dtype=np.float32)
    index = faiss.IndexFlatIP(v.shape[1])
    index.add(v)
    _, nn = index.search(v, k + 1)
    rows = np.repeat(np.arange(len(v)), k + 1)
    pairs = np.sort(np.stack([rows, nn.ravel()], 1), axis=1)
    pairs = pairs[(pairs[:, 0] != pairs[:, 1]) & (pairs[:, 1] >= 0)]
    return np.unique(pairs, axis=0)


@torch.inference_mode()
def teacher_probability(det, vectors: np.ndarray, pairs: np.ndarray, batch: int = 65536) -> np.ndarray:
    out = []
    emb = torch.from_numpy(vectors)
    for s in range(0, len(pairs), batch):
        p = pairs[s : s + batch]
        d = det.model.decision_distance(emb[p[:, 0]], emb[p[:, 1]]).numpy()
        out.append(det.calibrator.predict_proba(d))
    return np.concatenate(out) if out else np.zeros(0)


def mine_neighbour_pairs(det, texts, vectors, args, train, held_out) -> pd.DataFrame:
    """New pairs: each question and its k nearest, labelled where the teacher is sure."""
    from qpairs.splits import without_pairs

    if det.scores_texts:
        raise SystemExit("mine_teacher_pairs.py: -o labels pairs from the teacher's pooled vectors, but this teacher's "
                         "probabilities come from the two texts (a pair head on token states, or an ensemble); use "
                         "--train-labels alone, or a teacher without such a head")

    pairs = nearest_pairs(vectors, args.k)
    probs = teacher_probability(det, vectors, pairs)
    sure = (probs <= args.negative_below) | (probs >= args.positive_above)
    texts = np.asarray(texts, dtype=object)
    mined = pd.DataFrame({"question1": texts[pairs[sure, 0]], "question2": texts[pairs[sure, 1]],
                          "is_duplicate": (probs[sure] >= args.positive_above).astype(int),
                          "teacher_probability": probs[sure].round(4)})
    print(f"{len(pairs)} neighbour pairs (k={args.k}), teacher sure of {int(sure.sum())}; teacher probability "
          "deciles: " + " ".join(f"{q:.2f}" for q in np.quantile(probs, np.linspace(0.1, 0.9, 9))))
    return without_pairs(without_pairs(mined, [train]), held_out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", type=Path, required=True, help="run directory of the teacher")
    ap.add_argument("--teacher-unchecked", action="store_true",
                    help="accept a teacher without saved splits (no check that it never saw a held-out pair)")
    ap.add_argument("--data", nargs="+", default=[], help="pair files (default: the labelled QQP files)")
    ap.add_argument("--split-by", default="question", choices=["question", "pair"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--embedding-cache", help="the teacher's frozen-base embedding cache (faster)")
    ap.add_argument("--train-labels", type=Path, help="write the teacher's probability of every labelled training "
                    "pair here (for `qpairs train --teacher-labels`: soft targets)")
    ap.add_argument("-o", "--out", type=Path, help="write new neighbour pairs the teacher is sure about here "
                    "(for `qpairs train --extra-train`)")
    ap.add_argument("-k", type=int, default=5, help="nearest neighbours per question (default: 5)")
    ap.add_argument("--negative-below", type=float, default=0.1)
    ap.add_argument("--positive-above", type=float, default=0.9)
    args = ap.parse_args()
    if not (args.train_labels or args.out):
        ap.error("nothing to write: give --train-labels FILE and/or -o FILE")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from qpairs import data as qd
    from qpairs.distill import load_teacher, teacher_labels

    train, held_out = training_questions(args)
    det = load_teacher(args.teacher, device="cpu")
    print(f"{len(train)} labelled training pairs")
    if args.train_labels:
        teacher_labels(det, train).to_csv(args.train_labels, index=False)
        print(f"teacher probabilities of the labelled training pairs written to {args.train_labels}")
    if args.out:
        texts = pd.Series(pd.concat([train["question1"], train["question2"]]).to_numpy())
        texts = texts[~texts.map(qd.normalize_question).duplicated()].tolist()
        vectors = teacher_vectors(det, texts, args.embedding_cache)
        print(f"{len(texts)} training questions")
        mined = mine_neighbour_pairs(det, texts, vectors, args, train, held_out)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        mined.to_csv(args.out, index=False)
        print(f"{len(mined)} new pairs (not labelled, not held out) written to {args.out}: "
              f"{int((mined['is_duplicate'] == 0).sum())} non-duplicates, {int(mined['is_duplicate'].sum())} duplicates")


if __name__ == "__main__":
    main()
