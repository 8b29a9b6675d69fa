"""Fresh models for `qpairs train`: a Siamese or pseudo-Siamese BiLSTM/transformer, and its optimizer groups."""
from __future__ import annotations

import logging

from .config import TrainConfig
from .encoders import DEFAULT_BASE, LSTMEncoder, build_encoder, resolve_base_model
from .model import SiameseModel
from .toplayers import check_top_layers
from .vocab import PieceVocab, WordVocab, glove_vectors, glove_words, minilm_piece_vectors, minilm_word_vectors

log = logging.getLogger("qpairs")


def lstm_inputs(cfg: TrainConfig, train_texts):
    """(vocabulary, initial vectors or None, embedding size) of a BiLSTM: words of the training texts with
    GloVe / MiniLM-derived vectors, or MiniLM's WordPiece tokens with their own vectors (--tokens)."""
    if cfg.tokens == "wordpiece":
        vocab = PieceVocab.from_base(cfg.base_model)
        vectors = minilm_piece_vectors(cfg.embedding_dim, cfg.base_model) if cfg.word_vectors == "minilm" else None
        log.info("WordPiece tokens: %d pieces, %s", len(vocab),
                 "MiniLM piece vectors" if vectors is not None else "random vectors")
    else:
        keep = glove_words() if cfg.word_vectors != "none" else ()  # rare words worth a pretrained vector
        vocab = WordVocab.build(train_texts, min_freq=cfg.min_freq, keep=keep)
        vectors, hits = {"glove": lambda: glove_vectors(vocab), "none": lambda: (None, 0),
                         "minilm": lambda: minilm_word_vectors(vocab, cfg.embedding_dim)}[cfg.word_vectors]()
        if vectors is not None:
            log.info("%s word vectors (%d-d): %d of %d vocabulary words initialised", cfg.word_vectors,
                     vectors.shape[1], hits, len(vocab))
    return vocab, vectors, cfg.embedding_dim if vectors is None else vectors.shape[1]


def build_model(cfg: TrainConfig, train_texts) -> SiameseModel:
    """A fresh Siamese model for `cfg` (the LSTM vocabulary comes from the training texts)."""
    if cfg.encoder == "lstm":
        vocab, vectors, embedding_dim = lstm_inputs(cfg, train_texts)
        encoder = LSTMEncoder(vocab, embedding_dim=embedding_dim, hidden_size=cfg.hidden_size,
                              num_layers=cfg.num_layers, pooling=cfg.pooling, projection_dim=cfg.projection_dim,
                              normalize=cfg.normalize, dropout=cfg.dropout, max_length=cfg.max_length,
                              embeddings=vectors, tokens=cfg.tokens)
        if cfg.freeze_embeddings:
            encoder.embedding.weight.requires_grad_(False)
    elif cfg.encoder == "transformer":
        encoder = build_encoder(dict(type="transformer", base_model=cfg.base_model or DEFAULT_BASE,
                                     pooling=cfg.pooling, projection_dim=cfg.projection_dim,
                                     normalize=cfg.normalize, max_length=cfg.max_length,
                                     head=cfg.head, frozen_base=cfg.freeze_base,
                                     train_top_layers=cfg.train_top_layers))
    else:
        raise ValueError(f"unknown encoder {cfg.encoder!r}; use lstm or transformer")
    return SiameseModel(encoder, cfg.distance)


def build_pseudo_model(cfg: TrainConfig, train_df) -> SiameseModel:
    """A pseudo-Siamese model: left and right encoders with unshared weights, projected into one space.

    Each side is built as `build_model` builds a Siamese encoder, from its own texts (an LSTM's
    vocabulary) and settings (right: --right-encoder, --right-pooling, --right-max-length). A BiLSTM
    beside a transformer projects to the transformer's size. Two encoders of one type start from the
    same weights (two BiLSTMs share one vocabulary of both sides' texts; two transformers the same
    head), so training starts at the Siamese solution and lets the sides drift apart. With
    --freeze-base (or --train-top-layers) both sides read at --right-max-length, so one cache of the frozen
    base (or of its frozen bottom layers) serves both heads (or both towers' top layers).
    """
    from dataclasses import replace

    left_len = cfg.right_max_length if cfg.freeze_base or cfg.train_top_layers else cfg.max_length
    left_texts, right_texts = list(train_df["question1"]), list(train_df["question2"])
    if cfg.left_encoder == cfg.right_encoder == "lstm":
        left_texts = right_texts = left_texts + right_texts
    sides = {"left": (replace(cfg, encoder=cfg.left_encoder, max_length=left_len), left_texts),
             "right": (replace(cfg, encoder=cfg.right_encoder, pooling=cfg.right_pooling,
                               max_length=cfg.right_max_length), right_texts)}
    built = {}
    for side in sorted(sides, key=lambda s: sides[s][0].encoder != "transformer"):  # transformers first
        side_cfg, texts = sides[side]
        if side_cfg.encoder == "lstm" and built:
            side_cfg = replace(side_cfg, projection_dim=next(iter(built.values())).dim)
        built[side] = build_model(side_cfg, texts).encoder
    left, right = built["left"], built["right"]
    if left.config["type"] == right.config["type"] == "transformer":
        right.head.load_state_dict(left.head.state_dict())
    elif left.config["type"] == right.config["type"] == "lstm":
        right.load_state_dict(left.state_dict())
    return SiameseModel(left, cfg.distance, right)


def check_base_layers(cfg: TrainConfig) -> None:
    """Refuse a bad --train-top-layers before any data is read: the base's config alone is read."""
    if not cfg.train_top_layers:
        return
    from transformers import AutoConfig

    base = AutoConfig.from_pretrained(resolve_base_model(cfg.base_model), local_files_only=True)
    check_top_layers(cfg.train_top_layers, base.num_hidden_layers)


def param_groups(model: SiameseModel, cfg: TrainConfig) -> list[dict]:
    """AdamW parameter groups: the right encoder of a pseudo-Siamese model trains at --right-lr, and the base
    layers that --train-top-layers trains at --top-layers-lr when it is given."""
    pseudo = model.variant == "pseudo"
    right = {id(p) for p in model.right_encoder.parameters()} if pseudo else set()
    towers = [model.encoder, model.right_encoder] if pseudo else [model.encoder]
    layers = {id(p) for tower in towers for layer in getattr(tower, "top_layers", []) for p in layer.parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for p in (p for p in model.parameters() if p.requires_grad):
        groups.setdefault((id(p) in right, cfg.top_layers_lr is not None and id(p) in layers), []).append(p)

    def lr(key: tuple[bool, bool]) -> float:
        on_right, base_layer = key
        return cfg.top_layers_lr if base_layer else (cfg.right_lr or cfg.lr) if on_right else cfg.lr

    return [{"params": groups[key], "lr": lr(key)} for key in sorted(groups)]
