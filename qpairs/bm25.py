"""BM25 beside the model's similarity: a lexical score for searches of long texts (title → body).

A title and its body share rare words (names of algorithms, products, species) that a mean-pooled vector
blurs. `fused_scores` mixes the two scores after standardising each per query over the same rows of the
bank, so the weight means the same thing whatever the scale of either score:

    score = (1 − w) · z(similarity) + w · z(BM25)

`QuestionIndex` keeps a `LexicalIndex` of its stored texts when built with ``bm25_weight`` > 0.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TITLE_BODY_BM25_WEIGHT = 0.1  # an index of a title/body run's titles or bodies (`QuestionIndex.empty`, "auto"): the
# weight chosen on validation posts of the training sites
STATS_SAMPLE = 4096  # rows of the bank (all, when fewer) whose scores standardise each query's scores
PARAMS = "params.json"


def _bm25s():
    try:
        import bm25s
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("a search with a BM25 weight needs bm25s: pip install 'qpairs[search]'") from exc
    return bm25s


def _stemmer():
    """English Snowball stemmer when PyStemmer is installed, else None (words kept whole)."""
    try:
        import Stemmer
    except ImportError:
        return None
    return Stemmer.Stemmer("english")


class LexicalIndex:
    """BM25 (k1 = 1.2, b = 0.75; English stop words removed; Snowball stems when PyStemmer is installed) over a
    list of texts: ``LexicalIndex.build(texts).scores(["a query"])`` → [1, len(texts)]."""

    def __init__(self, retriever, stemmed: bool, size: int):
        self.retriever = retriever
        self.stemmed = stemmed
        self.size = size
        self._stem = _stemmer() if stemmed else None

    @classmethod
    def build(cls, texts: list[str]) -> "LexicalIndex":
        bm25s = _bm25s()
        stem = _stemmer()
        retriever = bm25s.BM25(k1=1.2, b=0.75)
        tokens = bm25s.tokenize(list(texts), stopwords="en", stemmer=stem, show_progress=False)
        retriever.index(tokens, show_progress=False)
        return cls(retriever, stem is not None, len(texts))

    def scores(self, queries: list[str]) -> np.ndarray:
        """BM25 score [len(queries), size] of every stored text for each query (0 where no word is shared)."""
        if self.size == 0:
            return np.zeros((len(queries), 0), dtype=np.float32)
        bm25s = _bm25s()
        tokens = bm25s.tokenize(list(queries), stopwords="en", stemmer=self._stem, show_progress=False,
                                return_ids=False)
        return np.stack([self.retriever.get_scores(q) for q in tokens]).astype(np.float32)

    def save(self, directory) -> None:
        directory = Path(directory)
        self.retriever.save(str(directory), show_progress=False)
        (directory / PARAMS).write_text(json.dumps({"stemmed": self.stemmed, "size": self.size}))

    @classmethod
    def load(cls, directory) -> "LexicalIndex":
        directory = Path(directory)
        params = json.loads((directory / PARAMS).read_text())
        if params["stemmed"] and _stemmer() is None:
            raise ImportError(f"{directory} was built with stemmed words: pip install PyStemmer (or 'qpairs[search]')")
        retriever = _bm25s().BM25.load(str(directory), show_progress=False)
        return cls(retriever, params["stemmed"], params["size"])


def stats_rows(n: int) -> np.ndarray:
    """The rows of a bank of `n` texts that standardise scores: all of them, or a fixed sample of STATS_SAMPLE."""
    if n <= STATS_SAMPLE:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, STATS_SAMPLE, replace=False))


def standardised(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each row of `scores` minus the mean of the same row of `reference`, over its standard deviation."""
    mean = reference.mean(1, keepdims=True)
    return (scores - mean) / (reference.std(1, keepdims=True) + 1e-9)


def fused_scores(similarity: np.ndarray, lexical: np.ndarray, weight: float,
                 similarity_ref: np.ndarray | None = None, lexical_ref: np.ndarray | None = None) -> np.ndarray:
    """(1 − weight) · standardised similarity + weight · standardised BM25, higher first. Each score is standardised
    per row over its reference scores (the same query against `stats_rows` of the bank; default: the row itself)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the BM25 weight must lie in [0, 1], got {weight}")
    sim = standardised(similarity, similarity if similarity_ref is None else similarity_ref)
    lex = standardised(lexical, lexical if lexical_ref is None else lexical_ref)
    return (1.0 - weight) * sim + weight * lex
