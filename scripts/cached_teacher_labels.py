"""Teacher probabilities of training pairs from the teacher's frozen-base cache (no base forward pass).

`qpairs train --teacher RUN` scores every kept training pair with the teacher's normal inference path,
which runs the frozen base again for every text. A frozen-base teacher trained with an
`--embedding-cache` already holds every training text's base outputs (token states for a matching
head): this reads them and runs only the heads, then writes the `--teacher-labels` format
(question1, question2, is_duplicate, teacher_probability) for a student trained on the same split.

    python scripts/cached_teacher_labels.py runs/matching_aux --cache runs/token_cache_40 \
        --pairs runs/teacher_q0_train_labels.csv.gz --out runs/matching_aux_train_labels.csv.gz
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

import qpairs
from qpairs.config import TrainConfig
from qpairs.objective import Objective
from qpairs.tokencache import open_cache
from qpairs.train import frame_distances


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("teacher", help="a frozen-base run directory")
    ap.add_argument("--cache", required=True, help="the --embedding-cache the teacher trained with")
    ap.add_argument("--pairs", required=True, help="the student's training pairs (question1, question2, is_duplicate)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    det = qpairs.load(args.teacher, device="cpu", backend="torch")
    cache = open_cache(det.model.encoder, args.cache)
    pairs = pd.read_csv(args.pairs, keep_default_na=False)
    missing = cache.missing(list(pairs["question1"]) + list(pairs["question2"]))
    if missing:
        raise SystemExit(f"{len(missing)} texts of {args.pairs} are not in {args.cache}, e.g. {missing[0]!r}")
    cfg = TrainConfig(**json.loads((Path(args.teacher) / "config.json").read_text())["train"])
    objective = Objective(cfg, pairs.iloc[:0], device=det.device, cache=cache)  # only its `embed` is used
    p = det.calibrator.predict_proba(frame_distances(det.model, objective, pairs, batch_size=512))
    pairs[["question1", "question2", "is_duplicate"]].assign(teacher_probability=p.round(4)).to_csv(args.out, index=False)
    print(f"{args.out}: {len(pairs)} pairs, mean teacher probability {p.mean():.3f}")


if __name__ == "__main__":
    main()
