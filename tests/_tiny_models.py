"""Tiny model directories for the scoring/submit/API tests (built directly: no training loop)."""
from __future__ import annotations

from pathlib import Path

import torch

from conftest import make_pairs


def tiny_lstm_dir(directory, seed: int = 0) -> Path:
    """A random BiLSTM Siamese model with a small vocabulary, calibrated on generated pairs."""
    from qpairs.calibration import Calibrator
    from qpairs.checkpoint import save_model, write_json
    from qpairs.detector import DuplicateDetector
    from qpairs.encoders import LSTMEncoder
    from qpairs.model import SiameseModel
    from qpairs.vocab import WordVocab

    torch.manual_seed(seed)
    pairs = make_pairs(300, seed=seed)
    vocab = WordVocab.build(list(pairs["question1"]) + list(pairs["question2"]), min_freq=1)
    model = SiameseModel(LSTMEncoder(vocab, embedding_dim=8, hidden_size=8, projection_dim=8, max_length=20))
    directory = Path(directory)
    save_model(model, directory)
    cal = Calibrator("platt")
    det = DuplicateDetector(model, cal)
    d = det.distances(list(pairs["question1"]), list(pairs["question2"]))
    cal.fit(d, pairs["is_duplicate"].to_numpy())
    write_json(directory / "calibration.json", cal.to_dict())
    return directory


def tiny_matching_dir(directory, base_model, seed: int = 0) -> Path:
    """A random matching-head model on a frozen tiny transformer base, with a fixed increasing calibration."""
    from qpairs.calibration import Calibrator
    from qpairs.checkpoint import save_model, write_json
    from qpairs.encoders import build_encoder
    from qpairs.matching import MatchingHead
    from qpairs.model import SiameseModel

    torch.manual_seed(seed)
    encoder = build_encoder({"type": "transformer", "pooling": "mean", "max_length": 32, "base_model": str(base_model),
                             "head": "residual", "frozen_base": True})
    hidden = int(encoder.config["hf_config"]["hidden_size"])
    model = SiameseModel(encoder, "cosine", pair_head=MatchingHead(hidden, encoder.dim, proj=16, mlp=16))
    directory = Path(directory)
    save_model(model, directory)
    cal = Calibrator("platt")
    cal.params, cal.threshold, cal.prior = {"coef": -40.0, "intercept": 0.0}, 0.5, 0.37  # spreads the random logits
    write_json(directory / "calibration.json", cal.to_dict())
    return directory
