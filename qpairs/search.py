"""Duplicate search over a question bank: a FAISS index of question embeddings, re-scored by the model.

An index directory holds::

    index.faiss        the vectors (exact flat index, or HNSW for millions of questions)
    bm25/              (a model-space index with a BM25 weight) the stored texts' BM25 index
    token_states.npy   (a model-space index with a MaxSim weight) every stored text's token states, float16,
    token_offsets.npy  and where each text's start (`qpairs.late.TokenStore`)
    questions.parquet  id and text of every question, in index order
    meta.json          metric, kind, size and the identity of the model that made the vectors

FAISS only proposes candidates: every hit is re-scored with the model's own distance and
mapped to a calibrated probability by the model's calibrator, so scores from an index are
the same numbers `DuplicateDetector.predict_proba` gives for the pair. An index refuses to
be searched or extended with a model other than the one that built it.

What the vectors are, and how hits are ranked, is the index's *space*:

* ``model``: the model's own embeddings; hits are ranked by the model's distance (most likely
  duplicate first). Every model can use it.
* ``base`` (a transformer head on a frozen base, such as the default model): the base's pooled
  output, searched by cosine; hits are ranked by that cosine plus ``lexical_weight`` × a
  character n-gram cosine of the texts (`lexical_similarity`), and their probability comes from
  the model's head applied to the stored vector. The head was trained to classify pairs and ranks
  a large bank worse than its pretrained base does (docs/results.md, "Search quality").

A model-space index built with ``bm25_weight`` w > 0 (a title/body run's bodies, say) also keeps a BM25 index of
its stored texts (`qpairs.bm25`): candidates are the k + RERANK_EXTRA nearest by the model and the k + RERANK_EXTRA
best by BM25, ranked by (1 − w) · z(−distance) + w · z(BM25), each score standardised per query over the bank (the
distance over a fixed sample of a large one; `bm25.fused_scores`).

A model-space index built with ``maxsim_weight`` m > 0 also keeps every stored text's token states (``token_states.npy``,
``token_offsets.npy``; `qpairs.late`) and gives share m of the model's similarity to token-level matching (MaxSim),
before any BM25 weight: (1 − m) · z(−distance) + m · z(MaxSim), each standardised per query over the bank (a fixed
sample of a large one). Candidates are then the k + MAXSIM_EXTRA nearest by the model (and as many best by BM25).

A model whose pair head reads token states (``--pair-head matching``) keeps the pooled index for
candidates only: the best ``rerank`` of them by the space's ranking are re-scored with the
matching head on both questions' token states (`QuestionIndex.rescore`, the same numbers as
`DuplicateDetector.predict_proba`) and ranked by that probability.

Longer than 350 lines because the index's build, exact and approximate search, and re-scoring share its
storage layout.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .data import read_questions  # noqa: F401  (re-exported)
from .checkpoint import model_fingerprint  # noqa: F401  (the index's model identity)
from .bm25 import TITLE_BODY_BM25_WEIGHT, LexicalIndex, bm25_available, fused_scores, stats_rows
from .late import MAXSIM_STATS_SAMPLE, TokenStore, flatten, maxsim, reads_tokens, unit_token_states
from .ngram import lexical_similarity
from .errors import require_count
from .progress import progress_bar
from .retrieval import pairwise_distances
from .text import TEXT_FOLDING, as_text_list, folds_otherwise, question_problem, refuse_non_questions

log = logging.getLogger("qpairs")

FORMAT_VERSION = 4  # 4 added "maxsim_weight" (token states); 3 "bm25_weight" (BM25_DIR); 2 the base space (meta
# "space", NORMS); 1 is model-space
READABLE_VERSIONS = (1, 2, 3, 4)
BM25_QUERY_CHUNK = 256  # queries whose BM25 scores over the whole bank are held at once
SPACES = ("model", "base")
LEXICAL_WEIGHT = 0.2  # base space: weight of the character n-gram cosine in the ranking (chosen on validation)
RERANK_EXTRA = 20  # candidates fetched beyond k for a lexical re-ranking (base space, BM25 weight)
MAXSIM_EXTRA = 100  # candidates fetched beyond k (by the model, and by BM25) when MaxSim re-ranks them
TOKEN_BLOCK = 1024  # texts whose float32 token states are held at once while an index stores them
META, VECTORS, QUESTIONS, NORMS, BM25_DIR = "meta.json", "index.faiss", "questions.parquet", "norms.npy", "bm25"
FLAT_BLAS_QUERIES = 16  # up to this many queries at once, exact search runs as a NumPy product (faster here)
HALF_SCAN_MIN = 50_000  # from this many stored vectors, those few queries start from an fp16 scan (`_half_knn`)
HALF_SCAN_EXTRA = 32  # candidates the fp16 scan proposes beyond k
KINDS = ("flat", "hnsw")
AUTO_FLAT_MAX = 200_000  # `kind="auto"`: exact search up to this many questions, HNSW above


class SearchIndexError(ValueError):
    """An index directory is missing, corrupt, or does not fit the model or the request."""


class ModelMismatchError(SearchIndexError):
    """The index was built with another model than the one asked to use it."""


def _faiss():
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it logs its CPU-feature probing at INFO
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("search needs FAISS: pip install 'qpairs[search]'") from exc
    return faiss


# ---------------------------------------------------------------- model identity

def model_texts(det, texts: list[str], side: str) -> list[str]:
    """Texts as the model was trained on them (e.g. HTML stripped on a title/body run's body side)."""
    preprocess = getattr(det, "preprocess", None)
    return preprocess(texts, side) if preprocess is not None else texts


SIDES = ("right", "left")


def other_side(side: str) -> str:
    return "left" if side == "right" else "right"


def resolve_side(det, side: str) -> str:
    """The input side (left/right) that encodes stored texts: `side` itself, or for a title/body run 'title'/'body'
    (whichever side it trained them on; a pseudo-Siamese model encodes each with its own tower)."""
    from .sides import title_body_sides

    if side in SIDES:
        return side
    if side not in ("title", "body"):
        raise ValueError(f"unknown index side {side!r}; use right, left, title or body")
    train = det.config.get("train") or {}
    if not train.get("left_col"):
        raise ValueError(f"--side {side} needs a title/body run (trained with --left-col/--right-col); use right or left")
    return title_body_sides(train)[0 if side == "title" else 1]


# ---------------------------------------------------------------- results

@dataclass
class Hit:
    """One search result: a stored question and how likely it duplicates the query."""

    id: str
    text: str
    probability: float
    distance: float
    duplicate: bool
    score: float = float("nan")  # what ranked it, higher first: −distance, base cosine + lexical (base space), the
    # probability (a pair head on token states), or the fused standardised scores (a BM25 weight)

    def to_dict(self) -> dict:
        return asdict(self)


def default_space(det) -> str:
    """'base' for a Siamese transformer whose head sits on a frozen base, else 'model'."""
    enc = det.model.single_encoder()
    frozen = isinstance(getattr(enc, "config", None), dict) and enc.config.get("frozen_base")
    return "base" if frozen and hasattr(enc, "pooled") else "model"


# ---------------------------------------------------------------- the index

def _new_faiss_index(dim: int, metric: str, kind: str, hnsw_m: int = 32):
    faiss = _faiss()
    inner = metric == "cosine"
    if kind == "flat":
        return faiss.IndexFlatIP(dim) if inner else faiss.IndexFlatL2(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT if inner else faiss.METRIC_L2)
        index.hnsw.efConstruction = 80
        return index
    raise ValueError(f"unknown index kind {kind!r}; use one of {KINDS}")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of `x` scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class QuestionIndex:
    """Question bank embedded by one model: build or load, `add`, `search`, `save`.

    >>> index = QuestionIndex.build(det, texts, ids)
    >>> index.search(det, "How do I learn Python?", k=5)   # [Hit(id, text, probability, ...)], best first
    """

    def __init__(self, index, ids: list[str], texts: list[str], meta: dict, path=None):
        self.index = index
        self.ids = list(ids)
        self.texts = list(texts)
        self.meta = meta
        self.path = Path(path) if path else None
        self._id_set = set(self.ids)
        self._sq_norms = None  # |x|² of the stored vectors (L2 flat search), computed on first use
        self._half = None  # fp16 copy of the vectors for `_half_knn`, built on first use
        self.norms = np.zeros(0, dtype=np.float32)  # base space: |pooled vector| before normalisation
        self._lexical = None  # BM25 of the stored texts (bm25_weight > 0), loaded or built on first use, rebuilt after `add`
        self._reference = None  # (bank size, model embeddings of its `bm25.stats_rows`) of the BM25 fusion
        self.tokens = TokenStore() if self.maxsim_weight else None  # token states of the stored texts (MaxSim)
        self._maxsim_ref = None  # (bank size, embeddings and token states of `stats_rows(n, MAXSIM_STATS_SAMPLE)`)

    @property
    def space(self) -> str:
        return self.meta.get("space", "model")

    @property
    def bm25_weight(self) -> float:
        return float(self.meta.get("bm25_weight", 0.0))

    @property
    def maxsim_weight(self) -> float:
        return float(self.meta.get("maxsim_weight", 0.0))

    @property
    def fused(self) -> bool:
        """Whether hits are ranked by a fusion of standardised scores (a BM25 or MaxSim weight)."""
        return bool(self.bm25_weight or self.maxsim_weight)

    @property
    def side(self) -> str:
        """Input side of the stored texts (indexes written before sides were recorded: right)."""
        return self.meta.get("side", "right")

    # -- construction
    @classmethod
    def empty(cls, det, kind: str = "flat", hnsw_m: int = 32, space: str = "auto",
              side: str = "right", bm25_weight: float | str = 0.0, maxsim_weight: float = 0.0) -> "QuestionIndex":
        """An index with no questions yet, tied to `det`; `space` 'auto' = `default_space(det)`. `side`: the input
        side whose encoder and text preparation the stored texts go through (`resolve_side`); queries take the
        other one (a title/body run: index bodies, query with titles, or the reverse). `bm25_weight`: the weight of
        BM25 in the ranking of a model-space index (`qpairs.bm25`); 'auto' = TITLE_BODY_BM25_WEIGHT when `side` is
        title or body and the index can use it, else 0. `maxsim_weight`: the share of the model's similarity given to
        token-level matching (`qpairs.late`; a model-space index, which then stores every text's token states)."""
        title_body = side in ("title", "body")
        side = resolve_side(det, side)
        space = default_space(det) if space == "auto" else space
        if space not in SPACES:
            raise ValueError(f"unknown index space {space!r}; use auto or one of {SPACES}")
        if space == "base" and default_space(det) != "base":
            raise ValueError("space 'base' needs a Siamese transformer with a frozen base (its head is applied to "
                             "the stored vectors)")
        metric = "cosine" if space == "base" else det.model.distance_metric
        dim = int(det.model.encoder.config["hf_config"]["hidden_size"]) if space == "base" else int(det.model.dim)
        meta = {"format_version": FORMAT_VERSION, "kind": kind, "space": space, "metric": metric, "dim": dim,
                "normalized": metric == "cosine", "model_fingerprint": model_fingerprint(det),
                "model_path": str(det.path.resolve()) if det.path else None, "size": 0, "side": side,
                "text_folding": TEXT_FOLDING}
        if space == "base":
            meta["lexical_weight"] = LEXICAL_WEIGHT
        refusal = _fusion_refusal(det, space, "a BM25 weight")
        if bm25_weight == "auto":
            bm25_weight = TITLE_BODY_BM25_WEIGHT if title_body and refusal is None else 0.0
            if bm25_weight and not bm25_available():
                log.warning("bm25s is not installed: the index ranks by the model alone (pip install 'qpairs[search]' "
                            "for its BM25 weight)")
                bm25_weight = 0.0
        if bm25_weight:
            if not 0.0 < float(bm25_weight) <= 1.0:
                raise ValueError(f"the BM25 weight must lie in (0, 1], got {bm25_weight}")
            if refusal:
                raise ValueError(refusal)
            meta["bm25_weight"] = float(bm25_weight)
        if maxsim_weight:
            if not 0.0 < float(maxsim_weight) <= 1.0:
                raise ValueError(f"the MaxSim weight must lie in (0, 1], got {maxsim_weight}")
            refusal = _fusion_refusal(det, space, "a MaxSim weight")
            if refusal is None and not all(reads_tokens(det.model.side(s)) for s in SIDES):
                refusal = "a MaxSim weight needs encoders with token states (transformers or BiLSTMs) on both sides"
            if refusal:
                raise ValueError(refusal)
            meta["maxsim_weight"] = float(maxsim_weight)
        if kind == "hnsw":
            meta["hnsw_m"] = hnsw_m
        return cls(_new_faiss_index(dim, metric, kind, hnsw_m), [], [], meta)

    @classmethod
    def build(cls, det, texts, ids=None, kind: str = "flat", batch_size: int | None = None,
              chunk_size: int = 8192, progress: bool | None = None, space: str = "auto",
              side: str = "right", bm25_weight: float | str = 0.0, maxsim_weight: float = 0.0) -> "QuestionIndex":
        """Encode `texts` (ids default to "0", "1", …) with `det` into a new index (`side`, `bm25_weight`,
        `maxsim_weight`: see `empty`)."""
        index = cls.empty(det, kind, space=space, side=side, bm25_weight=bm25_weight, maxsim_weight=maxsim_weight)
        index.add(det, texts, ids, batch_size=batch_size, chunk_size=chunk_size, progress=progress)
        return index

    def has_id(self, id_: str) -> bool:
        """Whether a stored question has this id."""
        return id_ in self._id_set

    def next_ids(self, n: int) -> list[str]:
        """The ids `add` gives `n` questions that come without ids: their numbers, counted on from this index's size."""
        return [str(len(self.ids) + i) for i in range(n)]

    def add(self, det, texts, ids=None, batch_size: int | None = None, chunk_size: int = 8192,
            progress: bool | None = None) -> None:
        """Encode and append questions; their ids must be new."""
        self.check_model(det)
        texts = as_text_list(texts, "texts", single=False)
        refuse_non_questions(texts, "texts")
        det.refuse_emptied(texts, "texts", self.side)
        ids = self.next_ids(len(texts)) if ids is None else id_texts(ids)
        if len(ids) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(ids)} ids")
        check_new_ids(ids, self._id_set)
        bar = progress_bar(total=len(texts), desc="encoding questions", unit="q", show=progress)
        for start in range(0, len(texts), chunk_size):
            chunk = texts[start : start + chunk_size]
            vectors = self.query_vectors(det, chunk, self.side, batch_size)
            states = self.token_states(det, chunk, self.side, batch_size) if self.maxsim_weight else None
            self.add_embeddings(det, vectors, ids[start : start + chunk_size], chunk, states)
            bar.update(len(chunk))
        bar.close()

    def query_vectors(self, det, texts: list[str], side: str | None = None, batch_size: int | None = None) -> np.ndarray:
        """Vectors of this index's space for `texts` read on `side` (default: the queries' side, opposite the
        stored texts'): the model's embeddings, or the base's pooled outputs."""
        side = other_side(self.side) if side is None else side
        return det.encode(model_texts(det, texts, side), side=side, batch_size=batch_size,
                          pooled=self.space == "base")

    def token_states(self, det, texts: list[str], side: str | None = None, batch_size: int | None = None) -> list:
        """Unit token states (`qpairs.late`) of `texts` read on `side` (default: the queries' side, float32; the
        stored side's as the index keeps them, float16)."""
        side = other_side(self.side) if side is None else side
        texts, dtype = model_texts(det, texts, side), np.float16 if side == self.side else np.float32
        return [s for start in range(0, len(texts), TOKEN_BLOCK)  # the float32 states of one block at a time
                for s in unit_token_states(det.model.side(side), texts[start : start + TOKEN_BLOCK],
                                           batch_size or det.batch_size or 64, det.device, dtype)]

    def add_embeddings(self, det, vectors: np.ndarray, ids, texts, token_states: list | None = None) -> None:
        """Append precomputed bank-side vectors of this index's space (`query_vectors`, e.g. computed on another
        machine), and with a MaxSim weight their `token_states`; ids must be new."""
        self.check_model(det)
        vectors = np.asarray(vectors, dtype=np.float32)
        ids, texts = id_texts(ids), as_text_list(texts, "texts", single=False)
        if vectors.ndim != 2 or vectors.shape[1] != self.index.d or not len(vectors) == len(ids) == len(texts):
            raise ValueError(f"need vectors [n, {self.index.d}] with n ids and n texts; got {vectors.shape}, "
                             f"{len(ids)} ids, {len(texts)} texts")
        check_new_ids(ids, self._id_set)
        if self.maxsim_weight and (token_states is None or len(token_states) != len(ids)):
            raise ValueError(f"an index with a MaxSim weight needs the token states of each of the {len(ids)} texts "
                             "(`QuestionIndex.token_states`)")
        if self.space == "base":
            self.norms = np.concatenate([self.norms, np.linalg.norm(vectors, axis=1).astype(np.float32)])
        self.index.add(self._index_vectors(vectors))
        if self.maxsim_weight:
            self.tokens.append(token_states)
        self.ids += ids
        self.texts += texts
        self._id_set.update(ids)
        self.meta["size"] = len(self.ids)

    def _index_vectors(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        return l2_normalize(vectors) if self.meta["normalized"] else vectors

    # -- persistence
    def save(self, directory) -> Path:
        """Write the index directory (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _faiss().write_index(self.index, str(directory / VECTORS))
        pd.DataFrame({"id": self.ids, "text": self.texts}).to_parquet(directory / QUESTIONS, index=False)
        if self.space == "base":
            np.save(directory / NORMS, self.norms)
        if self._lexical is not None and self._lexical.size == len(self):
            self._lexical.save(directory / BM25_DIR)
        elif (directory / BM25_DIR).is_dir():
            shutil.rmtree(directory / BM25_DIR)  # another bank's: rebuilt from the texts on first use
        if self.maxsim_weight:
            self.tokens.save(directory)
        (directory / META).write_text(json.dumps(self.meta, indent=2))
        self.path = directory
        return directory

    @classmethod
    def load(cls, directory) -> "QuestionIndex":
        """Read an index directory written by `save` (or `qpairs index`)."""
        directory = Path(directory)
        if not (directory / META).exists():
            raise SearchIndexError(f"{directory}: not a qpairs index directory ({META} is missing)")
        try:
            meta = json.loads((directory / META).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SearchIndexError(f"{directory / META} is corrupt: {exc}") from exc
        if not isinstance(meta, dict):
            raise SearchIndexError(f"{directory / META} is corrupt: expected a JSON object")
        if meta.get("format_version") not in READABLE_VERSIONS:
            raise SearchIndexError(f"{directory}: index format {meta.get('format_version')} is not supported "
                                   f"(expected one of {READABLE_VERSIONS}); rebuild it with `qpairs index`")
        for name in (VECTORS, QUESTIONS) + ((NORMS,) if meta.get("space") == "base" else ()):
            if not (directory / name).exists():
                raise SearchIndexError(f"{directory / name} is missing: the index is incomplete")
        try:
            index = _faiss().read_index(str(directory / VECTORS))
        except RuntimeError as exc:  # FAISS says why in a C++ trace
            raise SearchIndexError(f"{directory / VECTORS} is corrupt (FAISS cannot read it: "
                                   f"{str(exc).strip().splitlines()[-1]}); build the index again") from None
        try:
            frame = pd.read_parquet(directory / QUESTIONS)
        except Exception as exc:  # pyarrow's errors do not name the file
            raise SearchIndexError(f"{directory / QUESTIONS} is corrupt ({exc}); build the index again") from None
        if list(frame.columns[:2]) != ["id", "text"]:
            raise SearchIndexError(f"{directory / QUESTIONS} is corrupt: expected columns id and text, found "
                                   f"{list(frame.columns)}")
        if index.ntotal != len(frame) or len(frame) != meta.get("size"):
            raise SearchIndexError(f"{directory}: the index is corrupt: its files disagree on its size ({index.ntotal} "
                                   f"vectors, {len(frame)} questions, meta.json says {meta.get('size')}); build it again")
        out = cls(index, frame["id"].astype(str).tolist(), frame["text"].astype(str).tolist(), meta, directory)
        _check_text_folding(out)
        if out.space == "base":
            out.norms = np.load(directory / NORMS)
            if len(out.norms) != len(out):
                raise SearchIndexError(f"{directory / NORMS}: {len(out.norms)} norms for {len(out)} questions: "
                                       "the index is corrupt")
        for name in ("bm25_weight", "maxsim_weight"):
            if not 0.0 <= getattr(out, name) <= 1.0:
                raise SearchIndexError(f"{directory / META}: {name} {getattr(out, name)} lies outside [0, 1]")
        if out.maxsim_weight:
            try:
                out.tokens = TokenStore.load(directory, len(out))
            except (FileNotFoundError, ValueError) as exc:
                raise SearchIndexError(str(exc)) from exc
        return out

    # -- model check
    def check_model(self, det) -> None:
        """Raise `ModelMismatchError` unless `det` is the model the index was built with."""
        want, have = self.meta.get("model_fingerprint"), model_fingerprint(det)
        where = f"index {self.path}" if self.path else "this index"
        if not isinstance(want, str):
            raise SearchIndexError(f"{where}: {META} records no model_fingerprint; rebuild it with `qpairs index`")
        if want != have:
            raise ModelMismatchError(
                f"{where} was built with model {self.meta.get('model_path')} (id {want[:12]}), but the model "
                f"given is {det.path or 'the default model'} (id {have[:12]}); pass that model with --model or rebuild "
                "the index with this one")

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"QuestionIndex({len(self)} questions, {self.meta['kind']}, {self.meta['metric']}, path={self.path})"

    def __str__(self) -> str:
        bm25 = f", BM25 weight {self.bm25_weight:g}" if self.bm25_weight else ""
        bm25 += f", MaxSim weight {self.maxsim_weight:g}" if self.maxsim_weight else ""
        return f"{len(self)} questions ({self.meta['kind']} index, {self.space} space{bm25})"

    # -- search
    def knn(self, vectors: np.ndarray, k: int, few_fast: bool = False) -> np.ndarray:
        """Candidate rows [n, k] (−1 where fewer than k exist) for vectors of this index's space. `few_fast`: a
        flat index answers up to FLAT_BLAS_QUERIES queries by `_flat_knn` (the online search path; dedup
        keeps FAISS throughout, so its edges never depend on how the queries are chunked)."""
        k = min(k, len(self))
        if self.meta["kind"] == "hnsw":
            self.index.hnsw.efSearch = max(64, 2 * k)
        elif few_fast and len(vectors) <= FLAT_BLAS_QUERIES and len(self):
            return self._flat_knn(self._index_vectors(vectors), k)
        _, rows = self.index.search(self._index_vectors(vectors), k)
        return rows

    def _stored(self) -> np.ndarray:
        """The flat index's vectors [n, d] as a NumPy view of FAISS's own storage (no copy)."""
        return _faiss().rev_swig_ptr(self.index.get_xb(), len(self) * self.index.d).reshape(len(self), -1)

    def _exact_cost(self, stored: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """Cost [n_queries, n] ranking like FAISS's flat search: −x·q (cosine) or |x|² − 2 x·q (L2)."""
        sims = np.ascontiguousarray((stored @ queries.T).T)  # a matrix-vector product for one query
        if self.meta["metric"] == "cosine":  # IndexFlatIP: larger is closer
            return -sims
        return self._squared_norms(stored)[None, :] - 2 * sims  # ranks like |x − q|²

    def _flat_knn(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Exact kNN of a few queries: `_half_knn` on a large bank, else one BLAS product over FAISS's storage
        plus a partial sort (2-4x faster per query than FAISS's flat search here; bench_serve.py, 200k × 384)."""
        stored = self._stored()
        if len(self) >= HALF_SCAN_MIN:
            rows = self._half_knn(stored, queries, k)
            if rows is not None:
                return rows
        cost = self._exact_cost(stored, queries)
        top = np.argpartition(cost, k - 1, axis=1)[:, :k] if k < len(self) else np.tile(np.arange(len(self)), (len(cost), 1))
        order = np.take_along_axis(cost, top, axis=1).argsort(axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1).astype(np.int64)

    def _half_knn(self, stored: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray | None:
        """Exact kNN from a half-precision scan, or None where exactness cannot be proven (then scan in fp32).

        An fp16 copy of the vectors, in one FAISS shard per core scanned in parallel (half the memory
        traffic of fp32, which bounds this scan), proposes k + HALF_SCAN_EXTRA candidates; their exact fp32
        costs pick the top k. Rounding a stored vector to fp16 moves its cost by at most
        err = 2⁻¹¹·|x|·|q| (inner product) or 2⁻¹¹·|x|·(2|x − q| + 2⁻¹¹|x|) (L2), FAISS accumulating in fp32;
        with `bound` = 4·err at the bank's largest |x|, the result is exact when the k-th best exact cost
        is at most the proposal's last approximate cost minus `bound`: no other vector can come closer.
        """
        scan = self._half_scan(stored)
        n_cand = min(len(self), k + HALF_SCAN_EXTRA)
        approx, cand = scan["shards"].search(np.ascontiguousarray(queries, dtype=np.float32), n_cand)
        q_norm = np.linalg.norm(queries, axis=1)
        if self.meta["metric"] == "cosine":
            approx_cost = -approx  # inner products
            bound = 4 * 2.0**-11 * scan["max_norm"] * q_norm
        else:
            approx_cost = approx - (q_norm**2)[:, None]  # |x − q|² − |q|² = |x|² − 2 x·q
            reach = scan["max_norm"] + q_norm
            bound = 4 * 2.0**-11 * scan["max_norm"] * (2 * reach + 2.0**-11 * scan["max_norm"])
        if (cand < 0).any():
            return None
        exact = np.einsum("qcd,qd->qc", stored[cand], queries)
        exact_cost = -exact if self.meta["metric"] == "cosine" else self._squared_norms(stored)[cand] - 2 * exact
        order = np.argsort(exact_cost, axis=1, kind="stable")[:, :k]
        kth = np.take_along_axis(exact_cost, order[:, -1:], axis=1)[:, 0]
        if n_cand < len(self) and not (kth <= approx_cost[:, -1] - bound).all():
            return None
        return np.take_along_axis(cand, order, axis=1).astype(np.int64)

    def _squared_norms(self, stored: np.ndarray) -> np.ndarray:
        """|x|² of every stored vector (cached until the index grows)."""
        if self._sq_norms is None or len(self._sq_norms) != len(self):
            self._sq_norms = np.einsum("ij,ij->i", stored, stored)
        return self._sq_norms

    def _half_scan(self, stored: np.ndarray) -> dict:
        """The fp16 shards of `_half_knn`, built on first use and rebuilt after `add`."""
        if self._half is None or self._half["size"] != len(self):
            faiss = _faiss()
            metric = faiss.METRIC_INNER_PRODUCT if self.meta["metric"] == "cosine" else faiss.METRIC_L2
            shards = faiss.IndexShards(self.index.d, True, True)  # threaded; ids continue across shards
            parts = []
            for part in np.array_split(stored, max(1, _cores())):
                sq = faiss.IndexScalarQuantizer(self.index.d, faiss.ScalarQuantizer.QT_fp16, metric)
                sq.add(np.ascontiguousarray(part))
                parts.append(sq)  # keeps the shards alive (IndexShards does not own them)
                shards.add_shard(sq)
            self._half = {"size": len(self), "shards": shards, "parts": parts,
                          "max_norm": float(np.sqrt(self._squared_norms(stored).max()))}
        return self._half

    def model_embeddings(self, det, vectors: np.ndarray) -> np.ndarray:
        """The model's embeddings from vectors of this index's space (base space: the head on the raw pooled vectors)."""
        return det.embed_pooled(vectors) if self.space == "base" else vectors

    def stored_embeddings(self, det, rows: np.ndarray) -> np.ndarray:
        """The model's embeddings of stored rows (base space: rebuilt from the unit vectors and their norms)."""
        stored = self.index.reconstruct_batch(np.asarray(rows, dtype=np.int64))
        if self.space == "base":
            stored = stored * self.norms[rows][:, None]
        return self.model_embeddings(det, stored)

    def rescore(self, det, embeddings: np.ndarray, rows: np.ndarray, questions: list[str] | None = None,
                states: dict | None = None) -> np.ndarray:
        """The model's own distance from each query to its candidate rows (inf where row is −1): from the query's
        model embedding, or, for a model whose pair head reads token states, −logit of that head on the texts of
        `questions` and of the rows (`DuplicateDetector.distances`, given `states`)."""
        valid = rows >= 0
        if det.scores_texts:
            if questions is None:
                raise ValueError("this model's pair head compares token states: rescore needs the query texts")
            d = np.full(rows.shape, np.inf, dtype=np.float32)
            if valid.any():
                queries = [questions[i] for i in np.nonzero(valid)[0]]
                stored = [self.texts[r] for r in rows[valid]]
                d[valid] = det.distances(*((stored, queries) if self.side == "left" else (queries, stored)), states=states)
            return d
        stored = np.zeros(rows.shape + (det.model.dim,), dtype=np.float32)
        if valid.any():
            stored[valid] = self.stored_embeddings(det, rows[valid])
        q = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))[:, None, :].expand(-1, rows.shape[1], -1)
        pair = (torch.from_numpy(stored), q) if self.side == "left" else (q, torch.from_numpy(stored))
        d = det.model.decision_distance(*pair).numpy()
        if questions is not None and valid.any():  # two spellings of one question, as every scoring path has them
            at = np.nonzero(valid)
            d[at] = det.same_question_floor(d[at], [questions[i] for i in at[0]], [self.texts[r] for r in rows[at]])
        return np.where(valid, d, np.inf)

    def ranking_scores(self, questions: list[str], vectors: np.ndarray, rows: np.ndarray,
                       dist: np.ndarray) -> np.ndarray:
        """Higher = better: −model distance (model space), or base cosine + lexical_weight × n-gram cosine."""
        if self.space != "base":
            return -dist
        weight = float(self.meta.get("lexical_weight", LEXICAL_WEIGHT))
        valid = rows >= 0
        scores = np.full(rows.shape, -np.inf)
        for i, (question, vector, row) in enumerate(zip(questions, self._index_vectors(vectors), rows)):
            ok = row[valid[i]]
            cosine = self.index.reconstruct_batch(ok.astype(np.int64)) @ vector
            lexical = lexical_similarity(question, [self.texts[r] for r in ok]) if weight else 0.0
            scores[i, valid[i]] = cosine + weight * lexical
        return scores

    def lexical(self, det) -> LexicalIndex:
        """BM25 of the stored texts as the model reads them (loaded from the index directory or built on first use,
        built again after `add`)."""
        saved = self.path / BM25_DIR if self.path else None
        if self._lexical is None and saved is not None and saved.is_dir():
            self._lexical = LexicalIndex.load(saved)
        if self._lexical is None or self._lexical.size != len(self):
            self._lexical = LexicalIndex.build(model_texts(det, self.texts, self.side))
        return self._lexical

    def _reference_embeddings(self, det) -> np.ndarray:
        """Model embeddings of the bank's `bm25.stats_rows` (cached until the bank grows)."""
        if self._reference is None or self._reference[0] != len(self):
            self._reference = (len(self), self.stored_embeddings(det, stats_rows(len(self))))
        return self._reference[1]

    def _maxsim_reference(self, det) -> tuple[np.ndarray, tuple]:
        """(model embeddings, `late.flatten`ed token states) of the bank's `stats_rows(n, MAXSIM_STATS_SAMPLE)` (cached
        until the bank grows)."""
        if self._maxsim_ref is None or self._maxsim_ref[0] != len(self):
            rows = stats_rows(len(self), MAXSIM_STATS_SAMPLE)
            self._maxsim_ref = (len(self), self.stored_embeddings(det, rows), flatten(self.tokens[rows]))
        return self._maxsim_ref[1:]

    def _fused_search(self, det, questions: list[str], vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """`search_many` of an index with a BM25 or MaxSim weight, `BM25_QUERY_CHUNK` queries at a time."""
        out = []
        for start in range(0, len(questions), BM25_QUERY_CHUNK):
            chunk = slice(start, start + BM25_QUERY_CHUNK)
            out += self._hits(det, *self._fused_ranking(det, questions[chunk], vectors[chunk], k), k)
        return out

    def _fused_ranking(self, det, questions: list[str], vectors: np.ndarray, k: int):
        """(rows, distances, fused scores) of each query's candidates in an index with a BM25 or MaxSim weight: the
        k + RERANK_EXTRA (MaxSim: MAXSIM_EXTRA) nearest by the model and as many best by BM25 (−1 pads), scored by
        `bm25.fused_scores` over the similarity (`_similarity`): BM25 standardised over the whole bank (the same
        distance as `rescore`: the model has no pair head)."""
        lexical = (self.lexical(det).scores(model_texts(det, questions, other_side(self.side)))
                   if self.bm25_weight else None)
        n = min(k + (MAXSIM_EXTRA if self.maxsim_weight else RERANK_EXTRA), len(self))
        nearest = self.knn(vectors, n, few_fast=True)
        best_lexical = np.argpartition(-lexical, n - 1, axis=1)[:, :n] if lexical is not None else nearest
        union = [np.unique(np.concatenate([a[a >= 0], b[b >= 0]])) for a, b in zip(nearest, best_lexical)]
        rows = np.full((len(union), max(map(len, union))), -1, dtype=np.int64)
        for i, u in enumerate(union):
            rows[i, : len(u)] = u
        valid = rows >= 0
        embeddings = self.model_embeddings(det, vectors)
        dist = self.rescore(det, embeddings, rows, questions)
        similarity, reference = self._similarity(det, questions, embeddings, rows, np.where(valid, -dist, 0.0))
        if lexical is None:  # MaxSim without BM25: the lexical part weighs nothing
            scores = fused_scores(similarity, np.zeros(rows.shape), 0.0, reference)
        else:
            scores = fused_scores(similarity, np.take_along_axis(lexical, np.where(valid, rows, 0), axis=1),
                                  self.bm25_weight, reference, lexical)
        if not np.isfinite(scores).all():
            raise ValueError("the model gave a non-finite distance: the fused ranking cannot rank these queries")
        return rows, dist, np.where(valid, scores, -np.inf)

    def _similarity(self, det, questions: list[str], embeddings: np.ndarray, rows: np.ndarray,
                    similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(similarity of each query's candidate rows, the same over the bank's reference rows) that the fusion
        standardises: −distance, or with a MaxSim weight m, (1 − m) · z(−distance) + m · z(MaxSim), each z over the
        bank's `stats_rows(n, MAXSIM_STATS_SAMPLE)` (`qpairs.late`)."""
        if not self.maxsim_weight:
            reference = self._reference_embeddings(det)
            return similarity, -pairwise_distances(embeddings, reference, det.model.distance_metric)
        from .bm25 import standardised

        m = self.maxsim_weight
        ref_embeddings, ref_states = self._maxsim_reference(det)
        ref_similarity = -pairwise_distances(embeddings, ref_embeddings, det.model.distance_metric)
        query_states = self.token_states(det, questions)
        late = np.zeros(rows.shape, dtype=np.float32)
        for i, (q, r) in enumerate(zip(query_states, rows)):
            ok = r >= 0
            late[i, ok] = maxsim([q], self.tokens[r[ok]])[0]
        ref_late = maxsim(query_states, ref_states)
        mix = lambda sim, lat: (1 - m) * standardised(sim, ref_similarity) + m * standardised(lat, ref_late)  # noqa: E731
        return mix(similarity, late), mix(ref_similarity, ref_late)

    def shortlist(self, questions: list[str], vectors: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
        """Each query's n best candidate rows by this space's own ranking (base: cosine + lexical; model: the
        index's order), −1 where fewer exist."""
        if self.space == "base":
            scores = self.ranking_scores(questions, vectors, rows, None)
            rows = np.take_along_axis(rows, np.argsort(-scores, axis=1, kind="stable"), axis=1)
        return rows[:, :n]

    def search_many(self, det, questions, k: int = 10, rerank: int | None = None) -> list[list[Hit]]:
        """For each question, the k nearest stored questions, best (most likely duplicate) first.

        `rerank` (a model whose pair head reads token states only; default k): how many candidates, by the
        space's ranking, its head re-scores; the hits are the k most probable of them (at least k are re-scored).
        """
        self.check_model(det)
        require_count(k, "k")
        tokens = det.scores_texts
        if rerank is not None and tokens:
            require_count(rerank, "rerank")
        if rerank is not None and not tokens:
            raise ValueError("rerank (search --rerank) needs a run whose pair head reads token states (--pair-head "
                             "matching); this model's probabilities come from the index's vectors themselves")
        questions = as_text_list(questions, "questions")
        for i, q in enumerate(questions):
            require_question(q, "" if len(questions) == 1 else f" (item {i})")
        det.refuse_emptied(questions, "question", other_side(self.side), single=len(questions) == 1)
        if not questions or len(self) == 0:
            return [[] for _ in questions]
        vectors = self.query_vectors(det, questions)
        if self.fused:
            return self._fused_search(det, questions, vectors, k)
        fetch = max(k, rerank or k) if tokens else k
        rows = self.knn(vectors, fetch + (RERANK_EXTRA if self.space == "base" else 0), few_fast=True)
        if tokens:
            rows = self.shortlist(questions, vectors, rows, fetch)
        dist = self.rescore(det, None if tokens else self.model_embeddings(det, vectors), rows, questions)
        probs = det.calibrator.predict_proba(dist)
        # a pair head on token states ranks by the probability shown
        scores = np.where(rows >= 0, probs, -np.inf) if tokens else self.ranking_scores(questions, vectors, rows, dist)
        return self._hits(det, rows, dist, scores, k, probs)

    def _hits(self, det, rows: np.ndarray, dist: np.ndarray, scores: np.ndarray, k: int,
              probs: np.ndarray | None = None) -> list[list[Hit]]:
        """Each query's k best candidate rows by `scores` (ties: the smaller distance first) as hits (probabilities
        from `dist` unless given)."""
        probs = det.calibrator.predict_proba(dist) if probs is None else probs
        out = []
        for r, d, p, s in zip(rows, dist, probs, scores):
            order = [i for i in np.lexsort((d, -s)) if r[i] >= 0][:k]
            out.append([Hit(self.ids[r[i]], self.texts[r[i]], float(p[i]), float(d[i]), bool(p[i] >= det.threshold),
                            float(s[i])) for i in order])
        return out

    def search(self, det, question: str, k: int = 10, rerank: int | None = None) -> list[Hit]:
        """The k nearest stored questions to `question`, best first, with calibrated probabilities."""
        if not isinstance(question, str):
            raise TypeError(f"question must be a string, not {type(question).__name__}; use search_many for lists")
        return self.search_many(det, [question], k, rerank)[0]


def _check_text_folding(index: "QuestionIndex") -> None:
    """Refuse an index built before the encoders read texts as `model_text` folds them when one of its texts folds
    otherwise (its stored vector would not be the one a query of that text gets); mark the others current."""
    if index.meta.get("text_folding") == TEXT_FOLDING:
        return
    changed = folds_otherwise(index.texts)
    if changed is not None:
        raise SearchIndexError(f"{index.path}: built before qpairs read Unicode text in folded form (accents as one "
                               f"letter, no zero-width characters, emoji spelt out), and it holds such a text "
                               f"({changed[:60]!r}): rebuild it with `qpairs index`")
    index.meta["text_folding"] = TEXT_FOLDING


def require_question(question, where: str = "") -> None:
    """Refuse a query that is not a string (TypeError) or not a question (`qpairs.text.question_problem`)."""
    if not isinstance(question, str):
        raise TypeError(f"question{where} must be a string, not {type(question).__name__}")
    problem = question_problem(question)
    if problem:
        raise ValueError(f"{problem}{where} ({question!r}): nothing to search for")


def _fusion_refusal(det, space: str, what: str) -> str | None:
    """Why an index of this space and model cannot rank by a fusion of scores, `what` (a BM25 or a MaxSim weight),
    or None: it can."""
    if space != "model":
        return (f"{what} needs a model-space index (--space model); the base space ranks with its own "
                "character n-gram term")
    if det.scores_texts or det.model.pair_head is not None:
        return (f"{what} needs a model whose score is a distance between embeddings; this model's pair head "
                "ranks candidates itself")
    return None


def id_texts(ids) -> list[str]:
    """Ids given to the API as the index stores them: strings as they are, whole numbers (also 3.0) as digits; a
    missing (None/NaN), empty, fractional or other id is a ValueError or TypeError naming its item."""
    if isinstance(ids, (str, bytes)):
        raise TypeError("ids must be a sequence of ids, not a single string (wrap it in a list)")
    out = []
    for i, x in enumerate(ids):
        if isinstance(x, (np.integer, int)) and not isinstance(x, (bool, np.bool_)):
            out.append(str(int(x)))
        elif isinstance(x, (float, np.floating)) and np.isfinite(x) and float(x).is_integer():
            out.append(str(int(x)))
        elif isinstance(x, str) and x.strip():
            out.append(x)
        elif x is None or isinstance(x, (float, np.floating)) and np.isnan(x):
            raise ValueError(f"id of item {i} is missing (None/NaN); every question needs an id")
        else:
            raise TypeError(f"id of item {i} must be a non-empty string or a whole number, not {x!r}")
    return out


def check_new_ids(ids: list[str], existing: set) -> None:
    """Refuse (ValueError) an id that `existing` holds or that `ids` repeats."""
    seen: dict[str, int] = {}
    for i, x in enumerate(ids):
        if x in existing:
            raise ValueError(f"id {x!r} (item {i}) is already in the index; ids must be unique")
        if x in seen:
            raise ValueError(f"id {x!r} is repeated (items {seen[x]} and {i}); ids must be unique")
        seen[x] = i


def open_index(index_or_dir) -> QuestionIndex:
    """A `QuestionIndex` as is, or loaded from its directory."""
    return index_or_dir if isinstance(index_or_dir, QuestionIndex) else QuestionIndex.load(index_or_dir)


def format_hits(hits: list[Hit], width: int = 80) -> str:
    """A plain-text table of search results, in rank order, with the score that ranked them."""
    lines = [f"{'rank':>4}  {'score':>6}  {'prob':>5}  dup  {'id':<10} question"]
    for rank, h in enumerate(hits, 1):
        text = " ".join(h.text.split())  # one line per hit, whatever the stored text's line breaks
        text = text if len(text) <= width else text[: width - 1] + "…"
        lines.append(f"{rank:>4}  {h.score:6.3f}  {h.probability:5.3f}  {'yes' if h.duplicate else ' no'}  "
                     f"{h.id:<10} {text}")
    return "\n".join(lines)
