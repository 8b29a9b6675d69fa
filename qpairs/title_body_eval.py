"""Title/body evaluation of a detector: pair classification (random and hard negatives) and retrieval.

Every title and body is encoded once; the pair sets and the retrieval pools reuse the vectors.

* pairs: a balanced set — per post its own (title, body) and one mismatched pair, the other body
  drawn at random (``pairs_random``) or from the same site with shared tags (``pairs_hard``);
  ROC-AUC, accuracy (at the model's stored threshold) and log loss of the calibrated probability.
* retrieval: each title ranks its body among `n_candidates` bodies: recall@1, recall@10, MRR. For a model
  whose pair head reads token states (``--pair-head matching``) each title's `rerank` nearest bodies are
  shortlisted as `qpairs search` does (a frozen base: by the base's pooled cosine; else by the embeddings)
  and the head orders them (``retrieval_reranked``); its pair metrics come from the head. For a model whose score
  is a distance between embeddings, also ranked as a ``qpairs index --side body`` ranks by default: the
  similarity fused with BM25 (``retrieval_bm25``, `qpairs.bm25`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import sides
from .metrics import classification_metrics
from .retrieval import (candidate_pools, pairwise_distances, rerank_in_pools, retrieval_eval, retrieval_metrics,
                        true_ranks)
from .title_body import (DEFAULT_BODY_MAX_WORDS, DEFAULT_TRUNCATION, load_posts, random_negatives,
                         tag_negatives)

SUMMARY_COLUMNS = ("auc_random", "acc_random", "logloss_random", "auc_hard", "acc_hard", "logloss_hard",
                   "recall@1", "recall@10", "mrr")


def title_body_sides(det) -> tuple[str, str]:
    """(side of the titles, side of the bodies) of a detector; the body is right unless trained the other way."""
    return sides.title_body_sides(det.config.get("train"))


def raw_bodies(posts: pd.DataFrame) -> list[str]:
    """The bodies as a user's file holds them (HTML and all: ``content``), which the model prepares itself as it
    does in scoring and search; ``body`` (already stripped) only where the raw text is not kept. Preparing the
    stripped text again would strip it twice: escaped code such as ``&lt;div&gt;`` becomes a tag the first time
    and is dropped the second."""
    return list(posts["content"] if "content" in posts else posts["body"])


def embed_posts(det, posts: pd.DataFrame, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Title and body embeddings of `posts` (row i = post i), each side through its own encoder."""
    t_side, b_side = title_body_sides(det)
    titles = det.preprocess(list(posts["title"]), t_side) if hasattr(det, "preprocess") else list(posts["title"])
    bodies = det.preprocess(raw_bodies(posts), b_side) if hasattr(det, "preprocess") else list(posts["body"])
    return det.encode(titles, t_side, batch_size), det.encode(bodies, b_side, batch_size)


def fused_pool_ranks(det, posts: pd.DataFrame, title_emb: np.ndarray, body_emb: np.ndarray, n_candidates: int,
                     seed: int, weights, token_states: tuple | None = None,
                     token_shares=(0.0,)) -> dict[tuple[float, float], np.ndarray]:
    """Rank of each post's body among its pool (`candidate_pools`), keyed by (token share m, BM25 weight w): the
    similarity of the embeddings, with share m of it given to the late-interaction score of `token_states`
    ((title states, body states) of `posts`, see `maxsim`; each standardised over the pool), fused with BM25 at
    weight w as an index of the pool's bodies ranks them (`bm25.fused_scores`; BM25 reads the texts as the model
    does)."""
    from .bm25 import LexicalIndex, fused_scores, standardised
    from .late import maxsim
    from .search import model_texts

    if token_states is None and any(token_shares):
        raise ValueError("a token share needs the token states of the titles and bodies")
    t_side, b_side = title_body_sides(det)
    titles, bodies = model_texts(det, list(posts["title"]), t_side), model_texts(det, raw_bodies(posts), b_side)
    ranks = {(m, w): np.empty(len(posts), dtype=int) for m in token_shares for w in weights}
    for queries, cands in candidate_pools(len(posts), n_candidates, seed):
        similarity = -pairwise_distances(title_emb[queries], body_emb[cands], det.model.distance_metric)
        lexical = LexicalIndex.build([bodies[c] for c in cands]).scores([titles[q] for q in queries])
        late = (maxsim([token_states[0][q] for q in queries], [token_states[1][c] for c in cands])
                if any(token_shares) else None)
        for m in token_shares:
            mixed = similarity if not m else ((1 - m) * standardised(similarity, similarity)
                                              + m * standardised(late, late))
            for w in weights:
                ranks[(m, w)][queries] = true_ranks(-fused_scores(mixed, lexical, w), np.arange(len(queries)))
    return ranks


def _row_distances(det, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    import torch

    return det.model.decision_distance(torch.from_numpy(a), torch.from_numpy(b)).numpy()


class HeadDistances:
    """The pair head's distances (−logit) between posts' titles and bodies, from token states computed once per
    text (`qpairs.pair_scores.pair_distances`): ``self(title_rows, body_rows)``."""

    def __init__(self, det, posts: pd.DataFrame):
        from .tokencache import encode_states

        t_side, b_side = title_body_sides(det)
        self.det = det
        self.raw_titles, self.raw_bodies = list(posts["title"]), raw_bodies(posts)
        self.titles, self.bodies = det.preprocess(self.raw_titles, t_side), det.preprocess(self.raw_bodies, b_side)
        texts = list(dict.fromkeys(self.titles + self.bodies))
        self.states = dict(zip(texts, encode_states(det.model.encoder, texts, det.device, det.batch_size or 64, "fp32")))
        self.sides = t_side, b_side
        self.swap = t_side == "right"

    def __call__(self, title_rows, body_rows) -> np.ndarray:
        """The detector's distances (`DuplicateDetector.distances`, an ensemble's too) of the posts' raw texts; the
        (primary) model finds their token states in `self.states`."""
        a, b = [self.raw_titles[i] for i in title_rows], [self.raw_bodies[j] for j in body_rows]
        a, b = (b, a) if self.swap else (a, b)
        return np.asarray(self.det.distances(a, b, states=self.states), dtype=np.float64)

    def base_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Pooled base token states of the titles and the bodies: the vectors of a base-space search index."""
        import torch

        from .encoders import pool

        how = self.det.model.encoder.config["pooling"]
        pooled = lambda texts: np.stack([pool(self.states[t][None], torch.ones(1, len(self.states[t]), dtype=torch.bool),  # noqa: E731
                                              how)[0].numpy() for t in texts])
        return pooled(self.titles), pooled(self.bodies)

    def embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """The model's title and body embeddings, from the same states (each side's head on its pooled states)."""
        (t, b), (t_side, b_side) = self.base_vectors(), self.sides
        return self.det.embed_pooled(t, t_side), self.det.embed_pooled(b, b_side)


def pair_eval(det, title_emb: np.ndarray, body_emb: np.ndarray, neg_index: np.ndarray,
              head: HeadDistances | None = None) -> dict[str, float]:
    """Metrics on the balanced set: post i's own pair (label 1) and (title i, body neg_index[i]) (label 0)."""
    n = len(title_emb)
    if head is not None:
        rows = np.arange(n)
        d = np.concatenate([head(rows, rows), head(rows, neg_index)])
    else:
        d = np.concatenate([_row_distances(det, title_emb, body_emb),
                            _row_distances(det, title_emb, body_emb[neg_index])])
    y = np.concatenate([np.ones(n, dtype=int), np.zeros(n, dtype=int)])
    return classification_metrics(y, det.calibrator.predict_proba(d), det.threshold)


def evaluate_title_body(det, posts: pd.DataFrame, n_candidates: int = 1000, seed: int = 0,
                        batch_size: int | None = None, embed=embed_posts, rerank: int = 10) -> dict:
    """Pair metrics with random and hard negatives, and retrieval among `n_candidates`, for `det` on `posts`.

    `embed(det, posts)` → (title embeddings, body embeddings); the default runs the detector's encoders.
    `rerank`: bodies the pair head re-orders per title, for a head on token states.
    """
    from .bm25 import TITLE_BODY_BM25_WEIGHT, bm25_available
    from .matching import needs_tokens

    posts = posts.drop_duplicates("body").reset_index(drop=True)  # an identical body would be a second "true" item
    head = HeadDistances(det, posts) if needs_tokens(det.model) else None  # the texts' token states, once
    if head is None and det.scores_texts:
        raise ValueError("title/body evaluation of an ensemble needs a primary member whose pair head reads token "
                         "states (--pair-head matching)")
    if embed is not embed_posts:
        title_emb, body_emb = embed(det, posts)
    else:
        title_emb, body_emb = head.embeddings() if head is not None else embed_posts(det, posts, batch_size)
    rng = np.random.default_rng(seed)
    hard, ok = tag_negatives(posts, rng)
    n_cand = min(n_candidates, len(posts))
    results = {
        "pairs_random": pair_eval(det, title_emb, body_emb, random_negatives(posts, np.random.default_rng(seed)), head),
        "pairs_hard": {**pair_eval(det, title_emb, body_emb, hard, head), "shared_tag_share": float(ok.mean())},
        "retrieval": retrieval_eval(title_emb, body_emb, n_cand, det.model.distance_metric, seed),
        "posts": int(len(posts)),
        "sites": sorted(posts["site"].unique()),
    }
    if head is not None:  # shortlist as `qpairs search` does: by base cosine in a base-space index, else the embeddings
        from .search import default_space

        base = default_space(det) == "base"
        q, items = head.base_vectors() if base else (title_emb, body_emb)
        ranks = rerank_in_pools(q, items, head, rerank, n_cand, "cosine" if base else det.model.distance_metric, seed)
        results["retrieval_reranked"] = {**retrieval_metrics(ranks), "n_candidates": n_cand, "rerank": rerank,
                                         "shortlist": "base cosine" if base else "embeddings"}
    elif det.model.pair_head is None and bm25_available():
        w = TITLE_BODY_BM25_WEIGHT
        ranks = fused_pool_ranks(det, posts, title_emb, body_emb, n_cand, seed, [w])[(0.0, w)]
        results["retrieval_bm25"] = {**retrieval_metrics(ranks), "n_candidates": n_cand, "bm25_weight": w}
    if len(posts) < n_candidates:
        results["retrieval"]["warning"] = f"only {len(posts)} posts: fewer candidates than the {n_candidates} asked for"
    return results


def summary_row(results: dict) -> dict[str, float]:
    """The flat row of the comparison table."""
    r, h = results["pairs_random"], results["pairs_hard"]
    ret = results.get("retrieval_reranked", results["retrieval"])  # the model's own ranking, as in search
    return {"auc_random": r["roc_auc"], "acc_random": r["accuracy"], "logloss_random": r["log_loss"],
            "auc_hard": h["roc_auc"], "acc_hard": h["accuracy"], "logloss_hard": h["log_loss"],
            "recall@1": ret["recall@1"], "recall@10": ret["recall@10"], "mrr": ret["mrr"]}


def evaluate_title_body_run(run_dir, files, out=None, device: str = "auto", sites=None, max_posts: int | None = None,
                            n_candidates: int = 1000, seed: int = 0, backend: str = "auto") -> dict:
    """`qpairs evaluate RUN --data POSTS.csv.gz`: title/body metrics of a run on a post file."""
    from .checkpoint import write_json
    from .detector import load
    from .metrics import format_table

    det = load(run_dir, device=device, backend=backend)
    train = det.config.get("train") or {}
    frames = [load_posts(f, sites=sites, max_words=train.get("body_max_words", DEFAULT_BODY_MAX_WORDS),
                         policy=train.get("body_truncation", DEFAULT_TRUNCATION)) for f in files]
    posts = pd.concat(frames, ignore_index=True)
    if max_posts and len(posts) > max_posts:
        posts = posts.sample(n=max_posts, random_state=seed).reset_index(drop=True)
    results = evaluate_title_body(det, posts, n_candidates, seed)
    out = Path(out) if out else Path(run_dir) / "eval" / ("title_body_" + "_".join(Path(f).name.split(".")[0] for f in files))[:80]
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "title_body_metrics.json", results)
    print(format_table({"random negatives": results["pairs_random"], "hard negatives": results["pairs_hard"]}))
    ret = results["retrieval"]
    print(f"retrieval ({results['posts']} posts, {ret['n_candidates']} candidates per title): "
          f"recall@1 {ret['recall@1']:.4f}, recall@10 {ret['recall@10']:.4f}, MRR {ret['mrr']:.4f}")
    if "retrieval_bm25" in results:
        rb = results["retrieval_bm25"]
        print(f"with BM25 at weight {rb['bm25_weight']} (as `qpairs index --side body` ranks): recall@1 {rb['recall@1']:.4f}, "
              f"recall@10 {rb['recall@10']:.4f}, MRR {rb['mrr']:.4f}")
    if "retrieval_reranked" in results:
        rr = results["retrieval_reranked"]
        print(f"re-ranked by the pair head (its {rr['rerank']} nearest bodies per title): recall@1 {rr['recall@1']:.4f}, "
              f"recall@10 {rr['recall@10']:.4f}, MRR {rr['mrr']:.4f}")
    print(f"report written to {out}")
    return results


def zero_shot_detector(calibration_pairs: pd.DataFrame | None = None, base_model: str | None = None,
                       max_length: int = 128, device: str = "cpu", calibration: str = "platt"):
    """A pretrained sentence encoder used as is (shared weights, mean pooling, L2 norm, cosine distance),
    calibrated on `calibration_pairs` (question1/question2/is_duplicate; None: fit
    ``det.calibrator`` yourself) — the zero-shot baseline.

    `base_model` defaults to the packaged all-MiniLM-L6-v2, a frozen base as in a frozen-base run (so caches of
    its outputs are shared with those runs). The result is a `DuplicateDetector`;
    `qpairs.checkpoint.save_model` plus its calibration make it a run directory like any other.
    """
    from .calibration import Calibrator
    from .detector import DuplicateDetector, resolve_device
    from .encoders import DEFAULT_BASE, TransformerEncoder
    from .model import SiameseModel

    enc = TransformerEncoder.from_pretrained(base_model or DEFAULT_BASE, pooling="mean", projection_dim=None,
                                             normalize=True, max_length=max_length, frozen_base=True)
    dev = resolve_device(device)
    det = DuplicateDetector(SiameseModel(enc, "cosine").to(dev), Calibrator(calibration), {"encoder": enc.config},
                            device=dev)
    if calibration_pairs is not None:
        d = det.distances(list(calibration_pairs["question1"]), list(calibration_pairs["question2"]))
        det.calibrator.fit(d, calibration_pairs["is_duplicate"].to_numpy())
    return det
