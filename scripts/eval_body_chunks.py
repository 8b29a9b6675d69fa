"""Zero-shot title → body retrieval when the whole body is read in chunks instead of cut to one window.

Same held-out site, test posts and pools of 1,000 candidate bodies as `compare_title_body.py`. Bodies are
embedded four ways by the untrained base, each title ranking its own body among the candidates:

    head_tail   the body cut to --chunk-words words (head + tail), one vector (the default of the other rows)
    first       its first --chunk-words words, one vector
    meanP       the mean of the chunk vectors (--chunk-words words each, at most --max-chunks), one vector
    maxP        the best chunk's cosine, one vector per chunk
    head_tail+maxP  the mean of the head_tail and maxP cosines

    python scripts/eval_body_chunks.py --body-max-length 256
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_title_body as ctb  # noqa: E402  (the shared split)

from qpairs import title_body as tb  # noqa: E402
from qpairs.retrieval import candidate_pools, retrieval_metrics, true_ranks  # noqa: E402
from qpairs.search import l2_normalize  # noqa: E402
from qpairs.title_body_eval import zero_shot_detector  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="post file (default: the shared stackexchange_title_body.csv.gz)")
    p.add_argument("--test-site", default="crypto")
    p.add_argument("--chunk-words", type=int, default=200)
    p.add_argument("--max-chunks", type=int, default=3)
    p.add_argument("--body-max-length", type=int, default=256, help="tokens read of each chunk")
    p.add_argument("--candidates", type=int, default=1000)
    return p.parse_args(argv)


def chunk_words(body: str, size: int, max_chunks: int) -> list[str]:
    words = body.split()
    return [" ".join(words[s:s + size]) for s in range(0, len(words), size)][:max_chunks] or [body]


def main(argv=None) -> int:
    a = parse_args(argv)
    split_args = ["--out", "runs/body_chunks", "--test-site", a.test_site, "--body-max-words", "1000000",
                  *(["--data", a.data] if a.data else [])]
    posts = ctb.Experiment(ctb.parse_args(split_args)).test_posts.drop_duplicates("body").reset_index(drop=True)
    cut = tb.load_posts(a.data or tb.default_title_body_file(), max_words=a.chunk_words)
    cut_body = dict(zip(cut["post_id"], cut["body"]))
    det = zero_shot_detector(None, max_length=a.body_max_length, device="cpu")
    chunks, owner = [], []
    for i, body in enumerate(posts["body"]):
        pieces = chunk_words(body, a.chunk_words, a.max_chunks)
        chunks += pieces
        owner += [i] * len(pieces)
    owner = np.asarray(owner)
    print(f"{len(posts)} test posts, {len(chunks)} chunks, {(np.bincount(owner) > 1).sum()} posts longer than one chunk")
    encode = lambda texts: l2_normalize(det.encode(texts, "left", 64))  # noqa: E731
    titles, chunk_vecs = encode(list(posts["title"])), encode(chunks)
    head_tail = encode([cut_body[p] for p in posts["post_id"]])
    first = chunk_vecs[np.searchsorted(owner, np.arange(len(posts)))]
    mean_p = l2_normalize(np.stack([chunk_vecs[owner == i].mean(0) for i in range(len(posts))]))

    def max_p(q, c):
        best = np.full((len(posts), len(q)), -np.inf)
        np.maximum.at(best, owner, (titles[q] @ chunk_vecs.T).T)
        return best.T[:, c]

    single = lambda emb: lambda q, c: titles[q] @ emb[c].T  # noqa: E731
    ways = {"head_tail": single(head_tail), "first": single(first), "meanP": single(mean_p), "maxP": max_p,
            "head_tail+maxP": lambda q, c: (single(head_tail)(q, c) + max_p(q, c)) / 2}
    print("| body read as | recall@1 | recall@10 | MRR |\n|---|---|---|---|")
    for name, similarity in ways.items():
        ranks = np.empty(len(posts), dtype=int)
        for q, c in candidate_pools(len(posts), a.candidates, 0):
            ranks[q] = true_ranks(-similarity(q, c), np.arange(len(q)))
        m = retrieval_metrics(ranks)
        print(f"| {name} | {m['recall@1']:.4f} | {m['recall@10']:.4f} | {m['mrr']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
