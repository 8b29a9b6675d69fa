"""Title/body data for the pseudo-Siamese variant: Stack Exchange posts → (title, body) pairs.

A *post* has a title (short, plain text) and a body (HTML). This module

* turns bodies into text and truncates long ones (`clean_body`, from `qpairs.sides`, which a
  title/body model applies to its body side at inference too);
* loads and validates a post file (`load_posts`; bad rows raise a `DataError` naming the file,
  row and column);
* splits by post (`split_posts`) or across sites (`cross_site_split`: train on the other
  sites, test on one);
* builds balanced pair sets (`make_pairs`): each post gives one positive (its own title and
  body) and one negative (its title with another post's body), the other body drawn at
  random, from the same site with shared tags (`tag_negatives`), or the nearest by a
  first-pass model (`nearest_negatives`), or a mix of those sources (`mined_negatives`).

Pair frames use the project's pair schema (``question1`` = left side, ``question2`` = right
side, ``is_duplicate`` = 1 when the body belongs to the title) plus ``kind``, ``post_id`` and
``neg_post_id``.

Longer than 350 lines because reading, cleaning and sampling Stack Exchange posts are one pipeline.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .config import split_seed
from .data import DataError, default_data_dir, question_components, row_where
from .sides import (DEFAULT_BODY_MAX_WORDS, DEFAULT_HEAD_FRACTION, DEFAULT_TRUNCATION, ELLIPSIS,  # noqa: F401
                    TRUNCATION_POLICIES, clean_body, html_to_text, looks_like_html, resolve_col, truncate_words)
from .tableio import read_columns, read_frame, write_frame
from .text import bad_mask

log = logging.getLogger("qpairs")

TITLE_BODY_FILE = Path("title_body") / "stackexchange_title_body.csv.gz"
BODY_COLUMNS = ("body", "content")
NEGATIVE_KINDS = ("random", "tags", "mixed")

# ---------------------------------------------------------------- loading

def default_title_body_file(data_dir=None) -> Path:
    """`title_body/stackexchange_title_body.csv.gz` in the shared data folder."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    if data_dir is None:
        raise DataError("no data folder: pass --data FILE or set QPAIRS_DATA")
    path = data_dir / TITLE_BODY_FILE
    if not path.exists():
        raise DataError(f"{path}: file not found")
    return path


def is_title_body_file(path) -> bool:
    """A post file: has a ``title`` and a ``content``/``body`` column and no pair label."""
    if str(path).lower().removesuffix(".gz").endswith((".tsv", ".txt")):
        return False
    try:
        cols = read_columns(path)
    except DataError:
        return False
    return "title" in cols and any(c in cols for c in BODY_COLUMNS) and "is_duplicate" not in cols


def _check_text(values: pd.Series, path, column: str) -> None:
    bad = bad_mask(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: {row_where(path, row)}, column '{column}': empty text")


def load_posts(path, sites=None, max_words: int | None = DEFAULT_BODY_MAX_WORDS, policy: str = DEFAULT_TRUNCATION,
               head_fraction: float = DEFAULT_HEAD_FRACTION, progress: bool | None = None) -> pd.DataFrame:
    """Load a post file (``site,id,title,content,tags``; ``body`` may replace ``content``).

    Returns one row per post: ``post_id`` (``site:id``), ``site``, ``id``, ``title``, ``body``
    (HTML stripped, truncated by `policy`), ``tags`` (space-separated) and ``content`` (the raw
    body). Files without ``site``/``id``/``tags`` get the file stem, the row number and no tags.
    Raises `DataError` on a missing column, an empty title or body, or a repeated post id.
    """
    from .progress import progress_bar

    cols = read_columns(path)
    body_col = next((c for c in BODY_COLUMNS if c in cols), None)
    if "title" not in cols or body_col is None:
        raise DataError(f"{path}: a title/body file needs a 'title' and a 'content' (or 'body') column; found {cols}")
    raw = read_frame(path)  # every cell as text; a shifted row or a non-UTF-8 byte is named
    n = len(raw)
    frame = pd.DataFrame({
        "site": raw["site"] if "site" in cols else Path(path).name.split(".")[0],
        "id": raw["id"] if "id" in cols else pd.Series(np.arange(n)).astype(str),
        "title": raw["title"].str.strip(),
        "content": raw[body_col],
        "tags": raw["tags"] if "tags" in cols else "",
    })
    _check_text(frame["title"], path, "title")
    _check_text(frame["content"], path, body_col)
    if sites:
        unknown = sorted(set(sites) - set(frame["site"]))
        if unknown:
            raise DataError(f"{path}: no posts of site(s) {unknown}; sites are {sorted(frame['site'].unique())}")
        frame = frame[frame["site"].isin(list(sites))]
    frame.insert(0, "post_id", frame["site"] + ":" + frame["id"])
    repeated = frame["post_id"].duplicated().to_numpy()
    if repeated.any():
        row = int(frame.index[np.flatnonzero(repeated)[0]])
        raise DataError(f"{path}: {row_where(path, row)}, column 'id': post {frame['post_id'].iloc[np.flatnonzero(repeated)[0]]!r} appears twice")
    bodies = [clean_body(t, max_words, policy, head_fraction)
              for t in progress_bar(frame["content"], desc="stripping HTML", show=progress, leave=False)]
    frame.insert(4, "body", bodies)
    empty = (frame["body"] == "").to_numpy()
    if empty.any():
        row = int(frame.index[np.flatnonzero(empty)[0]])
        raise DataError(f"{path}: {row_where(path, row)}, column '{body_col}': body has no text once HTML is stripped")
    return frame.reset_index(drop=True)


# ---------------------------------------------------------------- splits

def post_groups(posts: pd.DataFrame) -> np.ndarray:
    """Group id per post: posts sharing a (normalised) title or body are one group."""
    return question_components(pd.DataFrame({"question1": "t:" + posts["title"], "question2": "b:" + posts["body"]}))


def split_posts(posts: pd.DataFrame, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict[str, pd.DataFrame]:
    """Seeded train/validation/test split by post (posts with the same title or body stay together)."""
    if not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    groups = post_groups(posts)
    order = np.random.default_rng(seed).permutation(np.unique(groups))
    rank = pd.Series(np.arange(len(order)), index=order).reindex(groups).to_numpy()
    bounds = np.cumsum(fractions)[:-1] * len(order)
    which = np.searchsorted(bounds, rank, side="right")
    names = ("train", "validation", "test")[: len(fractions)]
    return {name: posts[which == k].reset_index(drop=True) for k, name in enumerate(names)}


def cross_site_split(posts: pd.DataFrame, test_site: str, val_fraction: float = 0.1,
                     seed: int = 0) -> dict[str, pd.DataFrame]:
    """Train/validation by post on every site but `test_site`; test = all posts of `test_site`."""
    sites = sorted(posts["site"].unique())
    if test_site not in sites:
        raise DataError(f"test site {test_site!r} not in the data; sites are {sites}")
    if len(sites) < 2:
        raise DataError(f"a cross-site split needs at least two sites, found {sites}")
    rest = posts[posts["site"] != test_site].reset_index(drop=True)
    parts = split_posts(rest, (1 - val_fraction, val_fraction), seed)
    parts["test"] = posts[posts["site"] == test_site].reset_index(drop=True)
    return parts


# ---------------------------------------------------------------- negatives

def random_negatives(posts: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """For each post, the index of another post (uniform) whose body differs from its own."""
    n = len(posts)
    if n < 2:
        raise DataError("negatives need at least two posts")
    bodies = posts["body"].to_numpy()
    neg = (np.arange(n) + rng.integers(1, n, size=n)) % n
    for i in np.flatnonzero(bodies[neg] == bodies):  # rare: identical bodies
        others = np.flatnonzero(bodies != bodies[i])
        if len(others) == 0:
            raise DataError("every post has the same body: no negatives possible")
        neg[i] = rng.choice(others)
    return neg


def tag_negatives(posts: pd.DataFrame, rng: np.random.Generator, n_candidates: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Hard negatives: another post of the same site sharing a tag (the most tags among `n_candidates` draws).

    Returns (indices, ok) where ``ok`` is False for posts with no same-site post sharing a tag;
    those get a random same-site post (or any post when the site has one post).
    """
    n = len(posts)
    site = posts["site"].to_numpy()
    bodies = posts["body"].to_numpy()
    tag_sets = [frozenset(f"{s}\x1f{t}" for t in tags.split()) for s, tags in zip(site, posts["tags"])]
    index: dict[str, list[int]] = {}
    for i, ts in enumerate(tag_sets):
        for t in ts:
            index.setdefault(t, []).append(i)
    lists = {t: np.asarray(v) for t, v in index.items()}
    by_site = {s: np.flatnonzero(site == s) for s in np.unique(site)}
    fallback = random_negatives(posts, rng)
    out, ok = np.empty(n, dtype=int), np.zeros(n, dtype=bool)
    for i, ts in enumerate(tag_sets):
        pools = [lists[t] for t in sorted(ts) if len(lists[t]) > 1]  # sorted: independent of hash order
        if pools:
            cands = np.concatenate([rng.choice(p, size=min(len(p), n_candidates)) for p in pools])
            cands = cands[(cands != i) & (bodies[cands] != bodies[i])]
            if len(cands):
                shared = np.fromiter((len(ts & tag_sets[j]) for j in cands), dtype=int, count=len(cands))
                best = cands[shared == shared.max()]
                out[i], ok[i] = rng.choice(best), True
                continue
        same = by_site[site[i]]
        same = same[(same != i) & (bodies[same] != bodies[i])]
        out[i] = rng.choice(same) if len(same) else fallback[i]
    return out, ok


def nearest_negatives(title_emb: np.ndarray, body_emb: np.ndarray, bodies=None, metric: str = "cosine",
                      batch_size: int = 1024) -> np.ndarray:
    """Model-mined hard negatives: for each title, the closest body of another post.

    `title_emb`/`body_emb` come from a first-pass model (row i = post i). Bodies identical to the
    post's own body (`bodies`, optional) are skipped.
    """
    from .retrieval import pairwise_distances

    n = len(title_emb)
    if n < 2:
        raise DataError("negatives need at least two posts")
    bodies = np.asarray(bodies) if bodies is not None else None
    out = np.empty(n, dtype=int)
    for s in range(0, n, batch_size):
        d = pairwise_distances(title_emb[s : s + batch_size], body_emb, metric)
        rows = np.arange(s, min(s + batch_size, n))
        d[np.arange(len(rows)), rows] = np.inf
        if bodies is not None:
            d[bodies[rows][:, None] == bodies[None, :]] = np.inf
        out[rows] = d.argmin(1)
    return out


def mined_negatives(posts: pd.DataFrame, nearest: np.ndarray, rng: np.random.Generator,
                    nearest_share: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """One hard negative per post from three sources: the nearest other body by a first-pass model
    (`nearest`, from `nearest_negatives`) for a `nearest_share` of the posts (drawn at random), else a post of
    the same site sharing a tag (`tag_negatives`), else a random post of the same site.

    Returns (indices, kinds) with kinds ``nearest``, ``tags`` or ``site``.
    """
    if len(nearest) != len(posts):
        raise ValueError(f"{len(nearest)} nearest bodies for {len(posts)} posts")
    hard, ok = tag_negatives(posts, rng)
    use_nearest = rng.random(len(posts)) < nearest_share
    kinds = np.where(use_nearest, "nearest", np.where(ok, "tags", "site")).astype(object)
    return np.where(use_nearest, np.asarray(nearest), hard), kinds


def make_pairs(posts: pd.DataFrame, negatives: str = "mixed", seed: int = 0, left: str = "title",
               right: str = "body", negative_index: np.ndarray | None = None,
               negative_kind: np.ndarray | None = None) -> pd.DataFrame:
    """Balanced pairs: per post one positive (own title/body) and one negative (another post's body).

    negatives: ``random``, ``tags`` (same site + shared tags), ``mixed`` (half each, by post), or
    pass `negative_index` (e.g. from `nearest_negatives` or `mined_negatives`, whose kinds go in
    `negative_kind`; default ``model``) for mined negatives.
    `left`/`right` say which of title/body goes into ``question1``/``question2``.
    """
    left, right = resolve_col(left), resolve_col(right)
    if left == right:
        raise ValueError("left and right columns must differ (title and body)")
    rng = np.random.default_rng(seed)
    n = len(posts)
    if negative_index is not None:
        neg = np.asarray(negative_index)
        kind = np.full(n, "model", dtype=object) if negative_kind is None else np.asarray(negative_kind, dtype=object)
    elif negatives == "random":
        neg, kind = random_negatives(posts, rng), np.full(n, "random", dtype=object)
    elif negatives in ("tags", "mixed"):
        hard, ok = tag_negatives(posts, rng)
        kind = np.where(ok, "tags", "site").astype(object)
        neg = hard
        if negatives == "mixed":
            use_random = rng.random(n) < 0.5
            neg = np.where(use_random, random_negatives(posts, rng), hard)
            kind[use_random] = "random"
        if (~ok).any():
            log.info("%d of %d posts share no tag with another post of their site: same-site negative used",
                     int((~ok).sum()), n)
    else:
        raise ValueError(f"negatives must be one of {NEGATIVE_KINDS}, not {negatives!r}")
    titles, bodies, ids = (posts[c].to_numpy() for c in ("title", "body", "post_id"))
    pos = pd.DataFrame({"title": titles, "body": bodies, "is_duplicate": 1, "kind": "positive",
                        "post_id": ids, "neg_post_id": ""})
    negf = pd.DataFrame({"title": titles, "body": bodies[neg], "is_duplicate": 0, "kind": kind,
                         "post_id": ids, "neg_post_id": ids[neg]})
    both = pd.concat([pos, negf], ignore_index=True)
    out = pd.DataFrame({"pair_id": both["post_id"] + np.where(both["is_duplicate"] == 1, "+", "-"),
                        "question1": both[left], "question2": both[right],
                        "is_duplicate": both["is_duplicate"].astype(int), "source": "title_body",
                        "kind": both["kind"], "post_id": both["post_id"], "neg_post_id": both["neg_post_id"]})
    return out.sample(frac=1.0, random_state=seed).reset_index(drop=True)


# ---------------------------------------------------------------- the training data of `qpairs train`

def load_title_body_splits(cfg, run_dir: Path, write: bool = True) -> dict[str, pd.DataFrame]:
    """Title/body branch of `qpairs train`: posts → split by post (or cross-site) → pair sets.

    Writes ``splits/{validation,test}.csv.gz`` (pairs), ``splits/test_posts.csv.gz`` (the raw test
    posts, a file ``qpairs evaluate`` reads as title/body data) and ``splits/info.json``.
    """
    from .checkpoint import write_json

    files = cfg.data or [str(default_title_body_file())]
    if len(files) != 1:
        raise DataError(f"title/body training reads one post file, got {len(files)}: {files}")
    posts = load_posts(files[0], sites=cfg.sites or None, max_words=cfg.body_max_words, policy=cfg.body_truncation)
    held_out_seed = split_seed(cfg)  # validation and test posts and their pairs; training keeps --seed
    if cfg.test_site:
        parts = cross_site_split(posts, cfg.test_site, seed=held_out_seed)
    else:
        parts = split_posts(posts, seed=held_out_seed)
    if cfg.max_train_pairs and 2 * len(parts["train"]) > cfg.max_train_pairs:  # two pairs per post: sample posts
        parts["train"] = parts["train"].sample(n=max(2, cfg.max_train_pairs // 2), random_state=cfg.seed).reset_index(drop=True)
    for name in ("validation", "test"):
        if cfg.eval_posts and len(parts[name]) > cfg.eval_posts:
            parts[name] = parts[name].sample(n=cfg.eval_posts, random_state=held_out_seed).reset_index(drop=True)
    left, right = resolve_col(cfg.left_col or "title"), resolve_col(cfg.right_col or "body")
    splits = {name: make_pairs(p, cfg.negatives if name == "train" else "mixed",
                               (cfg.seed if name == "train" else held_out_seed) + k, left, right)
              for k, (name, p) in enumerate(parts.items())}
    info = {"kind": "title_body", "file": str(files[0]), "test_site": cfg.test_site, "seed": held_out_seed,
            "left": left, "right": right, "negatives": cfg.negatives, "truncation": cfg.body_truncation,
            "body_max_words": cfg.body_max_words, "posts": {k: int(len(v)) for k, v in parts.items()},
            "sites": {k: sorted(v["site"].unique()) for k, v in parts.items()},
            "sizes": {k: int(len(v)) for k, v in splits.items()}}
    if write:  # (one writer under torchrun)
        out = Path(run_dir) / "splits"
        out.mkdir(parents=True, exist_ok=True)
        for name in ("validation", "test"):
            write_frame(splits[name], out / f"{name}.csv.gz")
        write_frame(parts["test"][["site", "id", "title", "content", "tags"]], out / "test_posts.csv.gz")
        write_json(out / "info.json", info)
    log.info("title/body splits: posts %s, pairs %s", info["posts"], info["sizes"])
    return splits


# ---------------------------------------------------------------- triplets for the triplet / in-batch losses

class TitleBodyTriplets:
    """(title, own body, other body) triplets from a title/body pair frame, for ``--loss triplet|mnrl``.

    Unlike the symmetric QQP sampler, roles are fixed: anchors are always left-side texts and
    positives and negatives always right-side texts, so each encoder of a pseudo-Siamese model
    only sees its own kind of text. The negative of a post is its labelled negative body (random or
    hard, from `make_pairs`) when the frame has one, else a random other body, drawn every epoch.
    Group ids (one per distinct right text) let the in-batch loss ignore a repeated true body.
    Same interface as `qpairs.triplets.TripletSampler` (``len``, ``batches``, ``stats``).
    """

    def __init__(self, pairs: pd.DataFrame):
        pos = pairs[pairs["is_duplicate"] == 1]
        neg = pairs[pairs["is_duplicate"] == 0]
        if len(pos) == 0:
            raise ValueError("no (title, own body) pairs in the training data: triplet losses need positives")
        self.anchors = pos["question1"].to_numpy()
        self.positives = pos["question2"].to_numpy()
        keys = pos["question1"].to_numpy() if "post_id" not in pairs else pos["post_id"].to_numpy()
        neg_keys = neg["question1"].to_numpy() if "post_id" not in pairs else neg["post_id"].to_numpy()
        labelled = dict(zip(neg_keys, neg["question2"]))
        self.labelled = np.array([labelled.get(k) for k in keys], dtype=object)
        self.bodies, codes = np.unique(np.concatenate([self.positives, neg["question2"].to_numpy()]).astype(str),
                                       return_inverse=True)
        if len(self.bodies) < 2:
            raise ValueError("only one distinct body in the training data: no negatives to sample")
        self.group_of = dict(zip(self.bodies, range(len(self.bodies))))
        self.stats = {"triplets": len(pos), "labelled_negatives": int(sum(v is not None for v in self.labelled))}

    def __len__(self) -> int:
        return len(self.anchors)

    def _negatives(self, rng) -> np.ndarray:
        out = self.labelled.copy()
        missing = np.flatnonzero([v is None for v in out])
        for i in missing:
            while True:
                body = self.bodies[rng.integers(len(self.bodies))]
                if body != self.positives[i]:
                    out[i] = body
                    break
        return out

    def batches(self, batch_size: int, seed: int, order=None):
        """Yield (anchors, positives, negatives, groups [3B] tensor) text batches for one epoch."""
        import torch

        rng = np.random.default_rng(seed)
        negatives = self._negatives(rng)
        idx = rng.permutation(len(self))
        idx = idx if order is None else order(idx)
        for s in range(0, len(idx), batch_size):
            b = idx[s : s + batch_size]
            a, p, n = list(self.anchors[b]), list(self.positives[b]), list(negatives[b])
            g_pos = [self.group_of[t] for t in p]
            groups = torch.as_tensor(g_pos + g_pos + [self.group_of[t] for t in n], dtype=torch.long)
            yield a, p, n, groups
