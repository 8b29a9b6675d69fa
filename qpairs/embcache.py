"""Cache of a frozen base encoder's pooled outputs, so a head can be trained without re-running the base.

`qpairs.tokencache.open_cache` pools a token-state cache; `EmbeddingCache` is the older format
(pooled outputs only), still read and extended where a directory holds one.

With ``--freeze-base`` the transformer's base weights never change, so each unique text is
encoded once, before training. The cache is a directory of parts (``part-00000.npy`` +
``part-00000.json`` with the texts) plus ``meta.json``, which names the base model, pooling
and max length it was made with; an interrupted precompute keeps the parts it finished.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from .encoding import encode_texts
from .progress import progress_bar
from .text import TEXT_FOLDING, folds_otherwise

log = logging.getLogger("qpairs")


def cache_meta(encoder) -> dict:
    """What makes two caches interchangeable: the base, its pooling and truncation."""
    c = encoder.config
    return {"base_model": c.get("base_model"), "pooling": c["pooling"], "max_length": c["max_length"],
            "hidden_size": c["hf_config"].get("hidden_size"), "text_folding": TEXT_FOLDING}


class TextCache:
    """What the caches share: `index` (cached text → where) and, on disk, a ``meta.json`` that must match `meta`."""

    kind = "cache"

    def __init__(self, directory=None, meta: dict | None = None):
        self.directory = Path(directory) if directory else None
        self.meta = meta or {}
        self.index: dict = {}

    def _check_meta(self) -> None:
        """Refuse a cache made with other settings. One made before texts were folded (`qpairs.text.model_text`)
        is checked once its texts are read (`_check_folding`)."""
        meta_path = self.directory / "meta.json"
        self._before_folding = False
        if meta_path.exists():
            stored = json.loads(meta_path.read_text())
            self._before_folding = ("text_folding" not in stored
                                    and {**stored, "text_folding": TEXT_FOLDING} == self.meta)
            if self.meta and stored != self.meta and not self._before_folding:
                raise ValueError(f"{self.directory}: {self.kind} was made with {stored}, not {self.meta}; "
                                 "use another --embedding-cache directory")

    def _check_folding(self) -> None:
        """Refuse a cache made before texts were folded if it holds a text that folds otherwise (its states are not
        those of the text the encoder now reads); the others serve as they are."""
        changed = folds_otherwise(self.index) if self._before_folding else None
        if changed is not None:
            raise ValueError(f"{self.directory}: {self.kind} was made before qpairs read Unicode text in folded "
                             f"form, and it holds such a text ({changed[:60]!r}); use another --embedding-cache "
                             "directory")

    def __len__(self) -> int:
        return len(self.index)

    def missing(self, texts) -> list[str]:
        return [t for t in dict.fromkeys(texts) if t not in self.index]


class EmbeddingCache(TextCache):
    """Text → pooled base embedding (float32), in memory and optionally on disk (`directory`)."""

    kind = "embedding cache"

    def __init__(self, directory=None, meta: dict | None = None):
        super().__init__(directory, meta)
        self.parts: list[np.ndarray] = []
        self._matrix: torch.Tensor | None = None
        if self.directory is not None:
            self._load()

    def _load(self) -> None:
        self._check_meta()
        for part in sorted(self.directory.glob("part-*.npy")):
            texts_path = part.with_suffix(".json")
            if not texts_path.exists():  # an interrupted write: drop it, it will be recomputed
                continue
            texts = json.loads(texts_path.read_text())
            emb = np.load(part)
            if len(texts) != len(emb):
                raise ValueError(f"{part}: {len(emb)} rows but {len(texts)} texts: the cache is corrupt")
            self._add(texts, emb)
        self._check_folding()

    def _add(self, texts, emb: np.ndarray) -> None:
        offset = sum(len(p) for p in self.parts)
        for i, t in enumerate(texts):
            self.index.setdefault(t, offset + i)
        self.parts.append(emb.astype(np.float32, copy=False))
        self._matrix = None

    @torch.inference_mode()
    def fill(self, encoder, texts, device="cpu", batch_size: int = 256, part_size: int = 20000,
             progress: bool | None = None) -> int:
        """Encode the texts not cached yet (length-sorted batches); returns how many were added."""
        todo = self.missing(texts)
        if not todo:
            return 0
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            (self.directory / "meta.json").write_text(json.dumps(self.meta or cache_meta(encoder), indent=2))
        log.info("encoding %d texts with the frozen base (cached in %s)", len(todo), self.directory or "memory")
        was_training = encoder.training
        encoder.eval()
        bar = progress_bar(total=len(todo), desc="base embeddings", unit="text", show=progress)
        for start in range(0, len(todo), part_size):
            chunk = todo[start : start + part_size]
            self._add(chunk, encode_texts(encoder, chunk, device, batch_size, pooled=True, bar=bar).cpu().numpy())
            if self.directory is not None:
                self._write_part(chunk, self.parts[-1])
        bar.close()
        encoder.train(was_training)
        return len(todo)

    def _write_part(self, texts, emb) -> None:
        n = len(list(self.directory.glob("part-*.npy")))
        base = self.directory / f"part-{n:05d}"
        np.save(base.with_suffix(".npy"), emb)
        tmp = base.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(texts))
        tmp.replace(base.with_suffix(".json"))  # the texts file last: its presence marks a complete part

    def lookup(self, texts) -> torch.Tensor:
        """Pooled embeddings [len(texts), hidden] of cached texts (KeyError naming the first missing one)."""
        if self._matrix is None:
            self._matrix = torch.from_numpy(np.concatenate(self.parts) if self.parts else np.zeros((0, 0), np.float32))
        try:
            rows = [self.index[t] for t in texts]
        except KeyError as exc:
            raise KeyError(f"text not in the embedding cache: {exc.args[0]!r}") from None
        return self._matrix[rows]


def is_pooled_cache(directory) -> bool:
    """True for a directory written by `EmbeddingCache` (pooled outputs only, no token states)."""
    meta = Path(directory) / "meta.json"
    return meta.exists() and "pooling" in json.loads(meta.read_text())
