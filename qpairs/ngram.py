"""Lexical similarity of texts: cosine of character n-gram counts (the base space's re-ranking term)."""
from __future__ import annotations

import functools

import numpy as np

from .text import model_text


@functools.cache
def _ngram_vectorizer():
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(analyzer="char_wb", ngram_range=(3, 5), n_features=2**20, alternate_sign=False,
                             norm=None, lowercase=True)


def lexical_similarity(query: str, texts: list[str]) -> np.ndarray:
    """Cosine of character 3-5-gram counts (log-scaled, within word boundaries) between `query` and each text."""
    from sklearn.preprocessing import normalize

    grams = normalize(_ngram_vectorizer().transform([model_text(t) for t in [query, *texts]]).log1p())
    return (grams[1:] @ grams[0].T).toarray()[:, 0]
