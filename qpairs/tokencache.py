"""Cache of a frozen transformer's last-layer token states: each unique text is encoded once, kept on disk.

Under ``--train-top-layers N`` it holds the output of layer L−N instead (``layer`` in its meta, and a
hash of the frozen bottom weights alone), and `TopLayerView` runs the trained top layers on it.

Layout of a cache directory::

    meta.json                 base weights hash, max length, hidden size, compute precision (and layer)
    part-00000.states.npy     float16 [tokens of the part's texts, hidden]: each text's tokens, one after the other
    part-00000.lengths.npy    int32 [texts]: tokens of each text
    part-00000.json           the part's texts (written last: its presence marks a complete part)

Parts are memory-mapped when the cache opens; an interrupted fill keeps the parts it finished.
`pooled` gives a view with the pooled base output of every text, pooled from its states: the cache
that ``--freeze-base`` training of a pooled head reads.
"""
from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .embcache import EmbeddingCache, TextCache, cache_meta, is_pooled_cache
from .encoders import pool, token_mask
from .encoding import encoded_batches
from .progress import progress_bar

log = logging.getLogger("qpairs")
PRECISIONS = ("auto", "fp32", "bf16")


def base_key(encoder, layer: int | None = None) -> str:
    """Hash of a transformer encoder's base weights: names what a cache of its outputs holds (`layer` k: the
    weights that make the output of layer k, i.e. all but the trained top layers)."""
    from .onnxrt import weights_key

    if layer is None:
        return weights_key(encoder)
    from .fingerprint import weights_hash

    bottom = {k: v for k, v in encoder.model.state_dict().items() if not encoder.saves("model." + k)}
    return weights_hash(bottom, f"layer {layer}")[:20]


def resolve_precision(precision: str, device) -> str:
    """'auto' → bf16 autocast on a CPU with AVX-512 BF16 (the fastest CPU path), else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    from .onnxrt import native_bf16

    return "bf16" if torch.device(device).type == "cpu" and native_bf16() else "fp32"


def token_cache_meta(encoder, precision: str, layer: int | None = None) -> dict:
    """What makes two token-state caches interchangeable: the base weights, truncation and precision, and the
    layer whose output it holds (`layer` k; None: the last one, and no ``layer`` entry)."""
    from .text import TEXT_FOLDING

    c = encoder.config
    meta = {"kind": "token_states", "weights": base_key(encoder, layer), "max_length": c["max_length"],
            "hidden_size": c["hf_config"].get("hidden_size"), "precision": precision, "text_folding": TEXT_FOLDING}
    return meta if layer is None else {**meta, "layer": layer}


def pad_states(states: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-text states [len_i, hidden] → padded float32 [B, T, hidden] and a bool mask [B, T]."""
    lengths = torch.tensor([s.shape[0] for s in states], dtype=torch.long)
    x = torch.nn.utils.rnn.pad_sequence([s if s.dtype == torch.float32 else s.float() for s in states],
                                        batch_first=True)
    return x, torch.arange(x.size(1))[None, :] < lengths[:, None]


@torch.inference_mode()
def encode_states(encoder, texts, device="cpu", batch_size: int = 256, precision: str = "fp32",
                  max_waste: float | None = None, bar=None, layer: int | None = None) -> list[torch.Tensor]:
    """Each text's last-layer token states [tokens, hidden] (float32, CPU), run in length-sorted batches
    (`layer` k: those output by layer k)."""
    device = torch.device(device)
    bf16 = resolve_precision(precision, device) == "bf16"
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    out: list[torch.Tensor | None] = [None] * len(texts)
    run = encoder.token_states if layer is None else partial(encoder.token_states, layer=layer)
    for idx, batch, hidden in encoded_batches(encoder, texts, device, batch_size, max_waste, run, autocast):
        hidden, mask = hidden.float().cpu(), token_mask(batch).cpu()
        lengths = mask.sum(1)
        if torch.equal(mask, torch.arange(mask.size(1))[None, :] < lengths[:, None]):  # right padding: slice
            for j, (i, n) in enumerate(zip(idx, lengths.tolist())):
                out[i] = hidden[j, :n]
        else:
            for j, i in enumerate(idx):
                out[i] = hidden[j][mask[j]]
        if bar is not None:
            bar.update(len(idx))
    return out


class TokenStateCache(TextCache):
    """Text → its frozen base's token states (float16), in memory or memory-mapped from `directory`."""

    kind = "token-state cache"

    def __init__(self, directory=None, meta: dict | None = None):
        super().__init__(directory, meta)  # index: text → (part, position in the part)
        self.parts: list[np.ndarray] = []  # float16 [tokens, hidden] per part
        self.offsets: list[np.ndarray] = []  # per part: first token row of each text, plus the end
        if self.directory is not None:
            self._load()

    def _load(self) -> None:
        self._check_meta()
        for texts_path in sorted(self.directory.glob("part-?????.json")):
            stem = texts_path.with_suffix("")
            texts = json.loads(texts_path.read_text())
            lengths = np.load(f"{stem}.lengths.npy")
            states = np.load(f"{stem}.states.npy", mmap_mode="r")
            if len(lengths) != len(texts) or int(lengths.sum()) != len(states):
                raise ValueError(f"{stem}: {len(texts)} texts, {len(lengths)} lengths and {len(states)} token rows "
                                 "do not agree: the cache is corrupt")
            self._add(texts, lengths, states)
        self._check_folding()

    def _add(self, texts: list[str], lengths: np.ndarray, states: np.ndarray) -> None:
        part = len(self.parts)
        for i, t in enumerate(texts):
            self.index.setdefault(t, (part, i))
        self.parts.append(states)
        self.offsets.append(np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]))

    def fill(self, encoder, texts, device="cpu", batch_size: int = 256, part_size: int = 20000,
             progress: bool | None = None) -> int:
        """Encode the texts not cached yet (length-sorted batches, a part at a time); returns how many were added."""
        todo = self.missing(texts)
        if not todo:
            return 0
        meta = self.meta or token_cache_meta(encoder, resolve_precision("auto", device))
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            (self.directory / "meta.json").write_text(json.dumps(meta, indent=2))
        log.info("encoding %d texts with the frozen base (%s, token states cached in %s)", len(todo),
                 meta["precision"], self.directory or "memory")
        was_training = encoder.training
        encoder.eval()
        bar = progress_bar(total=len(todo), desc="base token states", unit="text", show=progress)
        for start in range(0, len(todo), part_size):
            chunk = todo[start : start + part_size]
            states = encode_states(encoder, chunk, device, batch_size, meta["precision"], bar=bar,
                                   layer=meta.get("layer"))
            lengths = np.array([len(s) for s in states], dtype=np.int32)
            flat = torch.cat(states).numpy().astype(np.float16)
            if self.directory is not None:
                flat = self._write_part(chunk, lengths, flat)
            self._add(chunk, lengths, flat)
        bar.close()
        encoder.train(was_training)
        return len(todo)

    def _write_part(self, texts, lengths, flat) -> np.ndarray:
        stem = self.directory / f"part-{len(self.parts):05d}"
        np.save(f"{stem}.lengths.npy", lengths)
        np.save(f"{stem}.states.npy", flat)
        tmp = stem.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(texts))
        tmp.replace(stem.with_suffix(".json"))  # the texts file last: its presence marks a complete part
        return np.load(f"{stem}.states.npy", mmap_mode="r")

    def _where(self, text: str) -> tuple[int, int]:
        try:
            return self.index[text]
        except KeyError:
            raise KeyError(f"text not in the token-state cache: {text!r}") from None

    def states(self, texts) -> list[torch.Tensor]:
        """Token states [tokens, hidden] (float16) of each cached text."""
        out = []
        for t in texts:
            part, i = self._where(t)
            a, b = self.offsets[part][i : i + 2]
            out.append(torch.from_numpy(np.array(self.parts[part][a:b])))
        return out

    def lookup_states(self, texts) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded float32 token states [B, T, hidden] and mask [B, T] of cached texts."""
        return pad_states(self.states(texts))

    def pooled(self, pooling: str) -> "PooledView":
        return PooledView(self, pooling)


def pool_part(states: np.ndarray, offsets: np.ndarray, how: str, chunk: int = 4096) -> np.ndarray:
    """`encoders.pool` of every text of a part (float32 [texts, hidden]), read a chunk of texts at a time."""
    n = len(offsets) - 1
    out = np.zeros((n, states.shape[1]), dtype=np.float32)
    for s in range(0, n, chunk):
        off = offsets[s : min(n, s + chunk) + 1]
        block = np.asarray(states[off[0] : off[-1]], dtype=np.float32)
        starts = off[:-1] - off[0]
        if how == "mean":
            out[s : s + len(starts)] = np.add.reduceat(block, starts, axis=0) / np.diff(off)[:, None]
        elif how == "max":
            out[s : s + len(starts)] = np.maximum.reduceat(block, starts, axis=0)
        elif how == "cls":
            out[s : s + len(starts)] = block[starts]
        elif how == "last":
            out[s : s + len(starts)] = block[off[1:] - off[0] - 1]
        else:
            raise ValueError(f"unknown pooling {how!r}; use mean, max, cls or last")
    return out


class PooledView:
    """The pooled base output of every text of a `TokenStateCache` (float32, computed once per part)."""

    def __init__(self, cache: TokenStateCache, pooling: str):
        self.cache, self.pooling = cache, pooling
        self._parts: list[torch.Tensor] = []
        self._matrix: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.cache)

    def missing(self, texts) -> list[str]:
        return self.cache.missing(texts)

    def fill(self, encoder, texts, *args, **kwargs) -> int:
        return self.cache.fill(encoder, texts, *args, **kwargs)

    def lookup(self, texts) -> torch.Tensor:
        """Pooled base outputs [len(texts), hidden] of cached texts (KeyError naming the first missing one)."""
        c = self.cache
        for states, offsets in list(zip(c.parts, c.offsets))[len(self._parts) :]:
            self._parts.append(torch.from_numpy(pool_part(states, offsets, self.pooling)))
            self._matrix = None
        if self._matrix is None:
            self._matrix = torch.cat(self._parts) if self._parts else torch.zeros((0, 0))
        starts = np.cumsum([0] + [len(p) for p in self._parts])
        rows = [starts[p] + i for p, i in map(c._where, texts)]
        return self._matrix[rows]


class TopLayerView:
    """A cache of layer L−N's output run through `encoder`'s trained top N layers (--train-top-layers): the
    token states and pooled outputs the head and a matching head read in training. `right`: the view of the
    right tower of a pseudo-Siamese model (its own top layers over the same cache)."""

    def __init__(self, cache: TokenStateCache, encoder, right_encoder=None):
        self.cache, self.encoder = cache, encoder
        self.right = TopLayerView(cache, right_encoder) if right_encoder is not None else self
        self._last = None  # (weights version, texts, states, mask) of the last run

    def fill(self, encoder, texts, *args, **kwargs) -> int:
        """Add the texts not cached yet: the output of layer L−N (the bottom layers run, once per text)."""
        return self.cache.fill(encoder, texts, *args, **kwargs)

    def lookup(self, texts) -> torch.Tensor:
        """Pooled top-layer outputs [len(texts), hidden] (before the head), with gradients to the top layers."""
        states, mask = self.lookup_states(texts)
        return pool(states, mask, self.encoder.config["pooling"])

    def lookup_states(self, texts) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-layer token states [B, T, hidden] and mask [B, T] of cached texts. The first or last rows of the
        last run (a Siamese batch runs q1 + q2 at once) are reused while the weights and mode are unchanged."""
        texts, version = list(texts), self._version()
        if self._last is not None and self._last[0] == version:
            _, done, states, mask = self._last
            for start in (0, len(done) - len(texts)):
                if start >= 0 and done[start : start + len(texts)] == texts:
                    rows = slice(start, start + len(texts))
                    width = int(mask[rows].sum(1).max()) if texts else 0
                    return states[rows, :width], mask[rows, :width]
        x, mask = self.cache.lookup_states(texts)
        device = self.encoder.head_device
        mask = mask.to(device)
        states = self.encoder.top_states(x.to(device), mask)
        self._last = (version, texts, states, mask)
        return states, mask

    def _version(self) -> tuple:
        """Changes with every optimizer step (in-place updates bump a tensor's version) and mode switch."""
        params = [p for layer in self.encoder.top_layers for p in layer.parameters()]
        return torch.is_grad_enabled(), self.encoder.training, tuple(p._version for p in params)


def open_token_cache(encoder, directory=None, precision: str = "auto", device="cpu",
                     layer: int | None = None) -> TokenStateCache:
    """The token-state cache of `encoder`'s base in `directory` (None: memory only; `layer` k: of layer k's output)."""
    return TokenStateCache(directory, token_cache_meta(encoder, resolve_precision(precision, device), layer))


def open_cache(encoder, directory=None):
    """The pooled outputs of `encoder`'s frozen base, cached in `directory` (None: memory only).

    A new cache holds the base's token states and pools them; a directory an `EmbeddingCache`
    wrote (pooled outputs only) is read and extended as it is.
    """
    if directory is not None and is_pooled_cache(directory):
        return EmbeddingCache(directory, cache_meta(encoder))
    return open_token_cache(encoder, directory).pooled(encoder.config["pooling"])
