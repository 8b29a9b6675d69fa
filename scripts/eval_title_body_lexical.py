#!/usr/bin/env python
"""Title → body retrieval with a lexical score added: a model's similarity (zero-shot MiniLM cosine, or a trained
title/body run's, ``--model``) fused with BM25.

The same held-out site, test posts (a seeded sample), pools of ``--candidates`` bodies and truncation as
`scripts/compare_title_body.py` (bodies cut to ``--body-max-words`` words, ``head_tail``, read at
``--body-max-length`` word pieces). Per title, both scores are standardised over its pool and mixed,
(1 − a) · cosine + a · BM25 (`qpairs.bm25`, as `qpairs index --bm25-weight a` ranks: titles as queries, bodies
as the collection, English stop words removed, Snowball-stemmed when PyStemmer is installed). `a` is chosen two
ways, never on the test posts:

* on ``--val-posts`` validation posts of the training sites, one pool;
* on ``--adapt-posts`` posts of the held-out site outside the test sample, one pool (a few labelled posts of
  the new site, as `qpairs adapt` uses). ``--adapt-pool N`` ranks their titles among N bodies of the site instead
  (their own and other bodies outside the test sample, whose titles are not used): a selection set as hard as a
  test pool, built from what a user of the new site has, a few labelled posts and the site's bodies.

``--maxsim M ...`` also gives share M of the similarity (before BM25) to a late-interaction score: zero-shot
all-MiniLM-L6-v2's token states, each title token's best cosine over the body's tokens, averaged over the title
(ColBERT's MaxSim), standardised over the pool like the others.

Prints recall@1, recall@10 and MRR for every `a` (and M) on each set. Needs ``pip install ".[bench]"`` (bm25s).

    python scripts/eval_title_body_lexical.py
    python scripts/eval_title_body_lexical.py --model runs/title_body_long/pseudo_top3 --through-index 0.1
    python scripts/eval_title_body_lexical.py --model runs/title_body_long/pseudo_top3 runs/title_body_long/siamese_top3
    python scripts/eval_title_body_lexical.py --maxsim 0 0.25 0.5 0.75 1
    python scripts/eval_title_body_lexical.py --maxsim 0.5 --through-index 0.1 --index-maxsim 0.5
    python scripts/eval_title_body_lexical.py --model runs/title_body_long/pseudo_top3 --maxsim-towers --maxsim 0 0.5 1
    python scripts/eval_title_body_lexical.py --model runs/title_body_long/pseudo_top3 --maxsim-towers --adapt-pool 1000 \
        --maxsim 0 0.25 0.5 0.75 1
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from qpairs import title_body as tb
from qpairs.retrieval import candidate_pools, first_relevant_ranks, retrieval_metrics
from qpairs.search import l2_normalize
from qpairs.late import unit_token_states
from qpairs.title_body_eval import embed_posts, fused_pool_ranks, title_body_sides, zero_shot_detector

WEIGHTS = (0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 1.0)


def fused_ranks(posts, dets: list, n_candidates: int, seed: int, token_shares=(0.0,),
                token_source=None) -> dict[tuple[float, float], np.ndarray]:
    """Rank of each post's own body among its pool, for every (token share, BM25 weight in `WEIGHTS`). Several
    models: the mean of their cosines (each model's unit vectors side by side, scaled by 1/√models), BM25 read as
    the first reads. A token share m gives that part of the similarity to the late-interaction score (`maxsim`) of
    the token states of `token_source` (a detector: titles and bodies each through its encoder for that side)."""
    sides = [embed_posts(det, posts) for det in dets]  # each side through its own tower
    titles, bodies = (np.hstack([l2_normalize(s[k]) for s in sides]) / np.sqrt(len(dets)) for k in (0, 1))
    states = None
    if any(token_shares):
        t_side, b_side = title_body_sides(dets[0])
        states = tuple(unit_token_states(token_source.model.side(side), dets[0].preprocess(list(posts[column]), side))
                       for column, side in (("title", t_side), ("body", b_side)))
    return fused_pool_ranks(dets[0], posts, titles, bodies, min(n_candidates, len(posts)), seed, WEIGHTS,
                            token_states=states, token_shares=token_shares)


def body_index(det, bodies: list[str], ids: list[str], weight: float, maxsim_weight: float = 0.0):
    """`qpairs index --side body --bm25-weight weight --maxsim-weight maxsim_weight` of `bodies` (zero-shot MiniLM has
    no title/body sides: right)."""
    from qpairs.search import QuestionIndex

    title_body = bool((det.config.get("train") or {}).get("left_col"))
    return QuestionIndex.build(det, bodies, ids, progress=False, space="model", side="body" if title_body else "right",
                               bm25_weight=weight, maxsim_weight=maxsim_weight)


def ranks_through_index(posts, det, weight: float, n_candidates: int, seed: int, k: int = 10,
                        maxsim_weight: float = 0.0) -> np.ndarray:
    """Rank (inf beyond `k`) of each post's own body when each pool's bodies go through `qpairs index --side body
    --bm25-weight weight --maxsim-weight maxsim_weight` and its titles through `qpairs search -k k`: the product's
    path end to end."""
    ranked, relevant = [None] * len(posts), [{str(i)} for i in range(len(posts))]
    for queries, cands in candidate_pools(len(posts), min(n_candidates, len(posts)), seed):
        index = body_index(det, list(posts["body"].iloc[cands]), [str(c) for c in cands], weight, maxsim_weight)
        for q, hits in zip(queries, index.search_many(det, list(posts["title"].iloc[queries]), k=k)):
            ranked[q] = [h.id for h in hits]
    return first_relevant_ranks(ranked, relevant)


def site_bank_metrics(site_posts, test, det, weights, maxsim_weight: float = 0.0) -> dict[float, dict]:
    """recall@1, recall@10 and MRR (top 10) of the test titles searched in one index of every body of the held-out
    site (`qpairs index --side body [--maxsim-weight]`, `qpairs search -k 10`), for each BM25 weight."""
    site_posts = site_posts.drop_duplicates("body")  # a test post's body is found under the first post that has it
    kept = dict(zip(site_posts["body"], site_posts["post_id"].astype(str)))
    index = body_index(det, list(kept), list(kept.values()), max(weights) or 0.0, maxsim_weight)
    relevant = [{kept[b]} for b in test["body"]]
    out = {}
    for w in weights:
        index.meta["bm25_weight"] = w  # the same vectors and BM25, ranked with another weight
        hits = index.search_many(det, list(test["title"]), k=10)
        out[w] = retrieval_metrics(first_relevant_ranks([[h.id for h in hs] for hs in hits], relevant))
    return out


def adapt_set(rest, n_posts: int, pool: int, seed: int):
    """`n_posts` labelled posts of the held-out site (outside the test sample); with `pool` > `n_posts`, followed by
    `pool − n_posts` other posts of the site whose bodies only fill the pool (column ``query`` marks the titles
    that are ranked)."""
    import pandas as pd

    labelled = rest.sample(n=n_posts, random_state=seed).assign(query=True)
    if pool <= n_posts:
        return labelled
    if pool > len(rest):
        raise SystemExit(f"--adapt-pool {pool}: the held-out site has only {len(rest)} posts outside the test sample")
    others = rest[~rest["post_id"].isin(labelled["post_id"])].sample(n=pool - n_posts, random_state=seed)
    return pd.concat([labelled, others.assign(query=False)])


def _calibration_pairs(posts):
    """Each post's title with its own body (duplicate) and with the next post's body (not): zero-shot's calibration,
    which the search hits' probabilities need (rankings do not)."""
    import pandas as pd

    titles, bodies = list(posts["title"]), list(posts["body"])
    return pd.DataFrame({"question1": titles * 2, "question2": bodies + bodies[1:] + bodies[:1],
                         "is_duplicate": [1] * len(titles) + [0] * len(titles)})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="post file (default: the shared stackexchange_title_body.csv.gz)")
    p.add_argument("--test-site", default="crypto")
    p.add_argument("--test-posts", type=int, default=2000)
    p.add_argument("--candidates", type=int, default=1000)
    p.add_argument("--val-posts", type=int, default=1000, help="validation posts of the training sites")
    p.add_argument("--adapt-posts", type=int, default=200, help="held-out-site posts outside the test sample")
    p.add_argument("--adapt-pool", type=int, default=0, metavar="N",
                   help="rank the --adapt-posts titles among N bodies of the held-out site outside the test sample "
                        "(their own and N − adapt-posts others) instead of among their own bodies only")
    p.add_argument("--body-max-words", type=int, default=200)
    p.add_argument("--body-max-length", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", nargs="+", help="a trained title/body run, or several (their cosines averaged; cosine "
                                              "models only) (default: zero-shot all-MiniLM-L6-v2)")
    p.add_argument("--base-model", metavar="DIR",
                   help="without --model: the pretrained encoder scored zero-shot and read for MaxSim, a local model "
                        "directory (default: all-MiniLM-L6-v2)")
    p.add_argument("--maxsim", type=float, nargs="+", default=[0.0], metavar="M",
                   help="token shares: also give share M of the similarity to zero-shot all-MiniLM-L6-v2's "
                        "late-interaction score (each title token's best cosine over the body's tokens, averaged)")
    p.add_argument("--maxsim-towers", action="store_true",
                   help="with --model: MaxSim reads the model's own towers' token states (titles through the title "
                        "tower, bodies through the body tower, as `qpairs index --maxsim-weight` of that run does) "
                        "instead of zero-shot all-MiniLM-L6-v2's")
    p.add_argument("--site-bank", type=float, nargs="+", metavar="W",
                   help="also search the test titles in one index of every body of the held-out site, with each BM25 "
                        "weight W (MRR counts the top 10 only)")
    p.add_argument("--index-maxsim", type=float, default=0.0, metavar="M",
                   help="--through-index and --site-bank: the index's MaxSim weight (qpairs index --maxsim-weight; the "
                        "model's own token states)")
    p.add_argument("--bank-all-sites", action="store_true",
                   help="with --site-bank: the bank holds every body of every site, not only the held-out one's")
    p.add_argument("--through-index", type=float, metavar="W",
                   help="also rank the test posts through `qpairs index --bm25-weight W` and `qpairs search -k 10` "
                        "(MRR counts the top 10 only)")
    args = p.parse_args(argv)
    if args.base_model and args.model:
        p.error("--base-model names the zero-shot encoder: leave it out with --model")
    if args.maxsim_towers and not (args.model and len(args.model) == 1):
        p.error("--maxsim-towers reads one trained run's towers: give one --model")
    if args.model and len(args.model) > 1 and (args.through_index is not None or args.site_bank):
        p.error("--through-index and --site-bank search one model's index: give one --model")
    if any(not 0.0 <= m <= 1.0 for m in args.maxsim):
        p.error(f"--maxsim shares must lie in [0, 1], got {args.maxsim}")
    if not 0.0 <= args.index_maxsim <= 1.0:
        p.error(f"--index-maxsim must lie in [0, 1], got {args.index_maxsim}")
    if args.through_index is not None and not 0.0 <= args.through_index <= 1.0:
        p.error(f"--through-index must lie in [0, 1], got {args.through_index}")

    posts = tb.load_posts(args.data or tb.default_title_body_file(), max_words=args.body_max_words)
    parts = tb.cross_site_split(posts, args.test_site, seed=args.seed)
    test = parts["test"].sample(n=min(args.test_posts, len(parts["test"])), random_state=args.seed)
    rest = parts["test"][~parts["test"]["post_id"].isin(test["post_id"])]
    sets = {"validation (training sites)": parts["validation"].sample(n=args.val_posts, random_state=args.seed),
            f"{args.adapt_posts} {args.test_site} posts outside the test": adapt_set(rest, args.adapt_posts,
                                                                                 args.adapt_pool, args.seed),
            f"test ({args.test_site})": test}
    if args.model:
        import qpairs

        dets = [qpairs.load(path, device="cpu") for path in args.model]
        if len(dets) > 1 and any(d.model.distance_metric != "cosine" for d in dets):
            p.error("averaging several models' scores needs cosine models")
    else:
        dets = [zero_shot_detector(_calibration_pairs(sets["validation (training sites)"]), args.base_model,
                                   max_length=args.body_max_length, device="cpu")]
    det = dets[0]
    token_source = None  # MaxSim reads zero-shot MiniLM's token states (the scored model itself without --model)
    if args.maxsim != [0.0]:
        token_source = (zero_shot_detector(base_model=args.base_model, max_length=args.body_max_length, device="cpu")
                        if args.model and not args.maxsim_towers else det)
    for name, frame in sets.items():
        frame = sets[name] = frame.reset_index(drop=True).drop_duplicates("body").reset_index(drop=True)
        queries = frame["query"].to_numpy() if "query" in frame else np.ones(len(frame), dtype=bool)
        print(f"\n{name}: {queries.sum()} titles, {min(args.candidates, len(frame))} candidate bodies per title")
        print("| token share | BM25 weight | recall@1 | recall@10 | MRR |\n|---|---|---|---|---|")
        ranked = fused_ranks(frame, dets, args.candidates, args.seed, args.maxsim, token_source)
        for (share, a), ranks in ranked.items():
            m = retrieval_metrics(ranks[queries])
            print(f"| {share:.2f} | {a:.2f} | {m['recall@1']:.4f} | {m['recall@10']:.4f} | {m['mrr']:.4f} |",
                  flush=True)
    if args.through_index is not None:
        test = sets[f"test ({args.test_site})"]
        m = retrieval_metrics(ranks_through_index(test, det, args.through_index, args.candidates, args.seed,
                                                  maxsim_weight=args.index_maxsim))
        print(f"| MaxSim {args.index_maxsim:.2f}, BM25 {args.through_index:.2f} through qpairs index + search | {m['recall@1']:.4f} | {m['recall@10']:.4f} | "
              f"{m['mrr']:.4f} (top 10) |")
    if args.site_bank:
        site = posts if args.bank_all_sites else parts["test"]
        print(f"\ntest titles ({len(test)}) searched among every {'' if args.bank_all_sites else args.test_site + ' '}"
              f"body ({site['body'].nunique()})\n| BM25 weight | recall@1 | recall@10 | MRR (top 10) |\n|---|---|---|---|")
        for w, m in site_bank_metrics(site, sets[f"test ({args.test_site})"], det, args.site_bank,
                                      args.index_maxsim).items():
            print(f"| {w:.2f} (MaxSim {args.index_maxsim:.2f}) | {m['recall@1']:.4f} | {m['recall@10']:.4f} | {m['mrr']:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
