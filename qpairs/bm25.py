"""BM25 beside the model's similarity: a lexical score for searches of long texts (title → body).

A title and its body share rare words (names of algorithms, products, species) that a mean-pooled vector
blurs. `fused_scores` mixes the two scores after standardising each per query over the bank (the model's
similarity over a fixed sample of a large one, `stats_rows`), so the weight means the same thing whatever the
scale of either score:

    score = (1 − w) · z(similarity) + w · z(BM25)

`QuestionIndex` keeps a `LexicalIndex` of its stored texts when built with ``bm25_weight`` > 0.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

TITLE_BODY_BM25_WEIGHT = 0.1  # an index of a title/body run's titles or bodies (`QuestionIndex.empty`, "auto"): the
# weight chosen on validation posts of the training sites
STATS_SAMPLE = 4096  # rows of the bank (all, when fewer) whose model similarities standardise each query's
PARAMS = "params.json"


def _bm25s():
    try:
        import bm25s
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("a search with a BM25 weight needs bm25s: pip install 'qpairs[search]'") from exc
    logging.getLogger("bm25s").setLevel(logging.WARNING)  # its import sets DEBUG, which logs each index build
    return bm25s


def bm25_available() -> bool:
    """Whether bm25s can be imported."""
    import importlib.util

    return importlib.util.find_spec("bm25s") is not None


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
        self.retriever = retriever  # None when no text has a word to index: every score is 0
        self.stemmed = stemmed
        self.size = size
        self._stem = _stemmer() if stemmed else None

    @classmethod
    def build(cls, texts: list[str]) -> "LexicalIndex":
        from .text import model_text  # here: `qpairs --help` reads this module's weights without pandas

        bm25s = _bm25s()
        stem = _stemmer()
        tokens = bm25s.tokenize([model_text(t) for t in texts], stopwords="en", stemmer=stem, show_progress=False)
        retriever = None
        if any(len(ids) for ids in tokens.ids):
            retriever = bm25s.BM25(k1=1.2, b=0.75)
            retriever.index(tokens, show_progress=False)
        return cls(retriever, stem is not None, len(texts))

    def scores(self, queries: list[str]) -> np.ndarray:
        """BM25 score [len(queries), size] of every stored text for each query (0 where no word is shared)."""
        out = np.zeros((len(queries), self.size), dtype=np.float32)
        if self.retriever is None or not len(queries):
            return out
        from .text import model_text

        bm25s = _bm25s()
        tokens = bm25s.tokenize([model_text(q) for q in queries], stopwords="en", stemmer=self._stem,
                                show_progress=False, return_ids=False)
        for i, words in enumerate(tokens):
            if words:  # a query of stop words or punctuation only shares no word with any text
                out[i] = self.retriever.get_scores(words)
        return out

    def save(self, directory) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.retriever is not None:
            self.retriever.save(str(directory), show_progress=False)
        (directory / PARAMS).write_text(json.dumps({"stemmed": self.stemmed, "size": self.size,
                                                    "empty": self.retriever is None}))

    @classmethod
    def load(cls, directory) -> "LexicalIndex":
        directory = Path(directory)
        params = json.loads((directory / PARAMS).read_text())
        if params["stemmed"] and _stemmer() is None:
            raise ImportError(f"{directory} was built with stemmed words: pip install PyStemmer (or 'qpairs[search]')")
        retriever = None if params.get("empty") else _bm25s().BM25.load(str(directory), show_progress=False)
        return cls(retriever, params["stemmed"], params["size"])


def stats_rows(n: int, size: int | None = None) -> np.ndarray:
    """The rows of a bank of `n` texts that standardise scores: all of them, or a fixed sample of `size` (default
    STATS_SAMPLE)."""
    size = STATS_SAMPLE if size is None else size
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, size, replace=False))


def standardised(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each row of `scores` minus the mean of the same row of `reference`, over its standard deviation (0 where the
    reference row is constant: the score then says nothing about the query)."""
    mean, spread = reference.mean(1, keepdims=True), reference.std(1, keepdims=True)
    flat = spread < 1e-6
    return np.where(flat, 0.0, (scores - mean) / np.where(flat, 1.0, spread))


def fused_scores(similarity: np.ndarray, lexical: np.ndarray, weight: float,
                 similarity_ref: np.ndarray | None = None, lexical_ref: np.ndarray | None = None) -> np.ndarray:
    """(1 − weight) · standardised similarity + weight · standardised BM25, higher first. Each score is standardised
    per row over its reference scores (the same query against the bank, or `stats_rows` of it; default: the row
    itself). A BM25 score that only a few texts of a large bank share stands out more the larger the bank."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the BM25 weight must lie in [0, 1], got {weight}")
    sim = standardised(similarity, similarity if similarity_ref is None else similarity_ref)
    lex = standardised(lexical, lexical if lexical_ref is None else lexical_ref)
    return (1.0 - weight) * sim + weight * lex
