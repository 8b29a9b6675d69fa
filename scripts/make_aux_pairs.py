"""Out-of-domain training pairs from the data folder's `ood/` sets, with a held-out part of each.

Writes, under OUT:

* ``train.csv`` (question1, question2, is_duplicate, source): pairs for `qpairs train --extra-train`
  (added to the training split only);
* ``heldout_<set>.csv`` (question1, question2, is_duplicate, score): the pairs kept out of training,
  for `scripts/eval_ood.py --pairs`;
* ``forum_titles.csv`` (the same columns): short forum questions, never training data: Stack Exchange titles of
  one site (``title_body/``) sharing two or more tags (related, 1) or none (0), 500 of each per site; score is
  the number of shared tags.

Labels: MRPC's own paraphrase label; STS-B train ``score >= 4`` (0–5 scale); SICK ``ENTAILMENT`` with
relatedness ``>= 4`` (1–5 scale). STS-B dev is never written (it stays a held-out measurement).
MRPC and SICK are split by sentence: a held-out pair shares no sentence with a training pair of any source
(whole groups of pairs linked by shared sentences go to one side, then held-out pairs with a sentence in STS-B
train, which holds sentences taken from MRPC, are dropped).

    python scripts/make_aux_pairs.py --out runs/aux
"""
from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
import pandas as pd

from qpairs.data import DataError, data_folder


def read_tsv(path, header: bool) -> list[list[str]]:
    """Tab-separated lines (the `ood/` files have quote characters inside the text: no CSV quoting)."""
    with gzip.open(path, "rt", encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    return [line.split("\t") for line in lines[1 if header else 0:] if line]


def read_ood(name: str, path) -> pd.DataFrame:
    """question1, question2, is_duplicate, score of one `ood/` file (stsb_*, msrp_*, sick)."""
    if name.startswith("stsb"):
        rows = read_tsv(path, header=False)
        score = np.array([float(r[4]) for r in rows])
        return pd.DataFrame({"question1": [r[5] for r in rows], "question2": [r[6] for r in rows],
                             "is_duplicate": (score >= 4).astype(int), "score": score})
    if name.startswith("msrp"):
        rows = read_tsv(path, header=True)
        label = np.array([int(r[0]) for r in rows])
        return pd.DataFrame({"question1": [r[3] for r in rows], "question2": [r[4] for r in rows],
                             "is_duplicate": label, "score": label.astype(float)})
    if name == "sick":
        rows = read_tsv(path, header=True)
        score = np.array([float(r[3]) for r in rows])
        dup = np.array([r[4] == "ENTAILMENT" for r in rows]) & (score >= 4)
        return pd.DataFrame({"question1": [r[1] for r in rows], "question2": [r[2] for r in rows],
                             "is_duplicate": dup.astype(int), "score": score})
    raise ValueError(f"unknown ood set {name!r}")


def split_by_sentence(frame: pd.DataFrame, held_frac: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, held-out): whole groups of pairs linked by a shared sentence go to one side, so no sentence of a
    held-out pair appears in training."""
    from qpairs.dedup import connected_clusters

    codes, _ = pd.factorize(pd.concat([frame["question1"], frame["question2"]]))
    n = len(frame)
    group = connected_clusters(int(codes.max()) + 1, codes[:n], codes[n:])[codes[:n]]
    held = np.random.default_rng(seed).random(int(group.max()) + 1) < held_frac
    return frame[~held[group]], frame[held[group]]


def without_training_sentences(held: pd.DataFrame, train: pd.DataFrame) -> pd.DataFrame:
    """The held-out pairs none of whose sentences (normalised as `qpairs.data` compares questions) is in a training
    pair."""
    from qpairs.data import normalize_question

    seen = {normalize_question(t) for t in pd.concat([train["question1"], train["question2"]])}
    keep = [normalize_question(a) not in seen and normalize_question(b) not in seen
            for a, b in zip(held["question1"], held["question2"])]
    return held[np.asarray(keep, dtype=bool)]


def forum_title_pairs(data_dir: Path, per_site: int = 500, seed: int = 0) -> pd.DataFrame:
    """Stack Exchange titles of one site sharing two or more tags (1) or none (0), `per_site` of each per site."""
    from collections import defaultdict
    from itertools import combinations

    from qpairs import title_body as tb

    posts = tb.load_posts(data_dir / "title_body" / "stackexchange_title_body.csv.gz")
    rng = np.random.default_rng(seed)
    rows = []
    for _, site in posts.groupby("site"):
        titles, tags = list(site["title"]), [set(str(t).split()) for t in site["tags"]]
        by_pair = defaultdict(list)
        for i, t in enumerate(tags):
            for pair in combinations(sorted(t), 2):
                by_pair[pair].append(i)
        pos = neg = 0
        for i in rng.permutation(len(titles)):
            if pos >= per_site and neg >= per_site:
                break
            pairs = list(combinations(sorted(tags[i]), 2))
            if pos < per_site and pairs:
                others = [j for j in by_pair[pairs[rng.integers(len(pairs))]] if j != i]
                if others:
                    j = others[rng.integers(len(others))]
                    rows.append((titles[i], titles[j], 1, len(tags[i] & tags[j])))
                    pos += 1
            j = int(rng.integers(len(titles)))
            if neg < per_site and j != i and not tags[i] & tags[j]:
                rows.append((titles[i], titles[j], 0, 0))
                neg += 1
    return pd.DataFrame(rows, columns=["question1", "question2", "is_duplicate", "score"])


def write_aux_pairs(data_dir: Path, out: Path, held_out: float = 0.3, seed: int = 0) -> Path:
    """Write train.csv, heldout_mrpc.csv, heldout_sick.csv and forum_titles.csv under `out` (see the module notes)."""
    ood = Path(data_dir) / "ood"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts = [read_ood("stsb_train", ood / "stsb_train.tsv.gz").assign(source="stsb_train")]
    held_parts = {}
    for name, file in (("mrpc", "msrp_train.tsv.gz"), ("sick", "sick.tsv.gz")):
        train, held_parts[name] = split_by_sentence(read_ood(name if name == "sick" else "msrp", ood / file),
                                                    held_out, seed)
        parts.append(train.assign(source=name))
    train = pd.concat(parts, ignore_index=True)
    for name, held in held_parts.items():
        clean = without_training_sentences(held, train)  # STS-B train holds sentences taken from MRPC
        clean.to_csv(out / f"heldout_{name}.csv", index=False)
        print(f"{name}: {int((train['source'] == name).sum())} training pairs, {len(clean)} held out "
              f"({clean['is_duplicate'].mean():.1%} duplicates; {len(held) - len(clean)} more dropped for a sentence "
              "in the training pairs)")
    train[["question1", "question2", "is_duplicate", "source"]].to_csv(out / "train.csv", index=False)
    print(f"train.csv: {len(train)} pairs, {train['is_duplicate'].mean():.1%} duplicates, by source "
          f"{train['source'].value_counts().to_dict()}")
    forum = forum_title_pairs(Path(data_dir), seed=seed)
    forum.to_csv(out / "forum_titles.csv", index=False)
    print(f"forum_titles.csv: {len(forum)} title pairs, {forum['is_duplicate'].mean():.1%} related")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="data folder (default: ../shared/data when it exists)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--held-out", type=float, default=0.3, help="fraction of MRPC and SICK sentence groups held out")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    try:
        folder = data_folder(args.data)
    except DataError as exc:
        raise SystemExit(f"error: {exc}") from None
    write_aux_pairs(folder, Path(args.out), args.held_out, args.seed)


if __name__ == "__main__":
    main()
