"""Which body truncation policy? Zero-shot all-MiniLM-L6-v2 on validation posts of the training sites.

Chooses the default of `qpairs.title_body.DEFAULT_TRUNCATION` without touching the test site:
the validation split of the cross-site split (train sites only), ``--posts`` of them, bodies cut
to ``--max-words`` words by each policy, ranked among ``--posts`` candidates (one pool).

    nice -n 10 python scripts/compare_truncation.py
"""
from __future__ import annotations

import argparse
import sys

import torch

from qpairs import title_body as tb
from qpairs.title_body_eval import evaluate_title_body, summary_row, zero_shot_detector


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="post file (default: the shared stackexchange_title_body.csv.gz)")
    p.add_argument("--test-site", default="crypto", help="held out: never looked at here")
    p.add_argument("--posts", type=int, default=1000)
    p.add_argument("--max-words", type=int, default=tb.DEFAULT_BODY_MAX_WORDS)
    p.add_argument("--max-length", type=int, default=128, help="MiniLM tokens")
    p.add_argument("--policies", nargs="+", default=["head", "head_tail"])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    posts = tb.load_posts(args.data or tb.default_title_body_file(), policy="none", max_words=None)
    val = tb.cross_site_split(posts, args.test_site)["validation"].sample(n=args.posts, random_state=0)
    val = val.reset_index(drop=True)
    print(f"{args.posts} validation posts of {sorted(val['site'].unique())}, {args.max_words} words, "
          f"MiniLM max {args.max_length} tokens, {args.posts} candidates")
    for policy in args.policies:
        v = val.copy()
        v["body"] = [tb.truncate_words(b, args.max_words, policy) for b in val["body"]]
        det = zero_shot_detector(tb.make_pairs(v.iloc[: args.posts // 2], "mixed"), max_length=args.max_length)
        row = summary_row(evaluate_title_body(det, v, n_candidates=args.posts))
        print(f"{policy:>10}: " + ", ".join(f"{k} {x:.4f}" for k, x in row.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
