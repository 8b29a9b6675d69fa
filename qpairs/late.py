"""Late interaction (ColBERT's MaxSim) beside the pooled similarity: token-level matching of a query and a text.

A title names a coin, a cipher or an attack in one or two words that a mean-pooled body vector blurs; each such
word piece finds its match among the body's own token states. The score of a query against a text is each query
token's best cosine over the text's tokens, averaged over the query (`maxsim`), read from the transformer's
last-layer token states without [CLS] and [SEP] (`unit_token_states`).

`QuestionIndex` built with ``maxsim_weight`` m > 0 keeps every stored text's token states (`TokenStore`, float16,
memory-mapped) and gives share m of the model's similarity to MaxSim, each standardised per query over the bank
(MaxSim over a fixed sample of a large one, `MAXSIM_STATS_SAMPLE`):

    similarity = (1 − m) · z(−distance) + m · z(MaxSim)

before any BM25 weight mixes in the lexical score (`qpairs.bm25.fused_scores`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

MAXSIM_STATS_SAMPLE = 1024  # rows of the bank (all, when fewer) whose MaxSim standardises each query's
STATES, OFFSETS = "token_states.npy", "token_offsets.npy"


def flatten(doc_states: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(all documents' token states in one float32 matrix, each document's first row): `maxsim`'s documents,
    prepared once for many calls."""
    flat = np.concatenate(doc_states).astype(np.float32, copy=False)
    return flat, np.cumsum([0] + [len(d) for d in doc_states[:-1]])


def maxsim(query_states: list[np.ndarray], doc_states) -> np.ndarray:
    """Late interaction (ColBERT's MaxSim), [queries, documents]: each query token's best cosine over a document's
    tokens, averaged over the query's tokens. Each text's states are unit rows [tokens, hidden]; `doc_states` is a
    list of them or its `flatten`."""
    flat, starts = doc_states if isinstance(doc_states, tuple) else flatten(doc_states)
    out = np.empty((len(query_states), len(starts)), dtype=np.float32)
    for i, q in enumerate(query_states):
        out[i] = np.maximum.reduceat(q.astype(np.float32, copy=False) @ flat.T, starts, axis=1).mean(0)
    return out


def unit_token_states(encoder, texts: list[str], batch_size: int = 64, device="cpu",
                      dtype=np.float32) -> list[np.ndarray]:
    """Each text's last-layer token states of `encoder` (a transformer: without [CLS] and [SEP]) as unit rows of
    `dtype`: `maxsim`'s input."""
    from .tokencache import encode_states

    special = getattr(encoder, "config", {}).get("type") == "transformer"  # [CLS] … [SEP]; a BiLSTM reads words only
    out = []
    for states in encode_states(encoder, texts, device, batch_size, "fp32"):
        states = states[1:-1] if special and len(states) > 2 else states
        out.append((states / states.norm(dim=-1, keepdim=True).clamp(min=1e-12)).numpy().astype(dtype, copy=False))
    return out


def reads_tokens(encoder) -> bool:
    """Whether `encoder` gives token states for MaxSim (a transformer or a BiLSTM)."""
    return hasattr(encoder, "token_states")


class TokenStore:
    """Every stored text's unit token states, one float16 matrix [all tokens, hidden] with each text's start:
    appended as an index grows, saved beside it, memory-mapped when loaded."""

    def __init__(self, states: np.ndarray | None = None, offsets: np.ndarray | None = None):
        self._parts = [] if states is None else [states]  # appended blocks, joined once when read
        self.offsets = np.zeros(1, dtype=np.int64) if offsets is None else offsets  # text i: offsets[i]:offsets[i+1]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def states(self) -> np.ndarray | None:
        """Every stored token's state, [all tokens, hidden] float16 (None while empty)."""
        if len(self._parts) > 1:
            self._parts = [np.concatenate(self._parts)]
        return self._parts[0] if self._parts else None

    def append(self, states: list[np.ndarray]) -> None:
        """Add the unit token states of new texts, in index order."""
        if not states:
            return
        self._parts.append(np.concatenate([s.astype(np.float16, copy=False) for s in states]))
        ends = self.offsets[-1] + np.cumsum([len(s) for s in states])
        self.offsets = np.concatenate([self.offsets, ends])

    def __getitem__(self, rows) -> list[np.ndarray]:
        """The token states (float16 views) of stored rows."""
        states = self.states
        return [states[self.offsets[r] : self.offsets[r + 1]] for r in np.asarray(rows).tolist()]

    def save(self, directory) -> None:
        """Write the states and offsets into `directory`, each through a new file renamed into place (a store
        memory-mapped from the same files keeps reading the old ones)."""
        states = self.states if self.states is not None else np.zeros((0, 0), np.float16)
        for name, array in ((STATES, states), (OFFSETS, self.offsets)):
            tmp = Path(directory) / f".{name}.tmp"
            with open(tmp, "wb") as f:
                np.save(f, array)
            os.replace(tmp, Path(directory) / name)

    @classmethod
    def load(cls, directory, size: int) -> "TokenStore":
        """The store saved in `directory` for an index of `size` texts (memory-mapped)."""
        directory = Path(directory)
        for name in (STATES, OFFSETS):
            if not (directory / name).exists():
                raise FileNotFoundError(f"{directory / name} is missing: the index's token states are incomplete")
        store = cls(np.load(directory / STATES, mmap_mode="r"), np.load(directory / OFFSETS))
        if len(store) != size or store.offsets[-1] != len(store.states):
            raise ValueError(f"{directory}: token states of {len(store)} texts for an index of {size}: the index is "
                             "corrupt")
        return store
