"""Tiny random-weight BiLSTM models and generated question banks for the search/service/web tests.

The weights are random, so only distance 0 (same tokens) means "duplicate": the calibration
is set so that p(duplicate) is high at distance 0 and the threshold sits at a tiny distance.
Case does not matter to the tokenizer, so "how do i learn python?" and "How do I learn
Python?" are exact duplicates for this model, while any other wording is not.
"""
from __future__ import annotations

import random
import socket
import threading
import time
from contextlib import contextmanager

import pandas as pd
import torch

from qpairs.calibration import Calibrator
from qpairs.checkpoint import save_model, write_json
from qpairs.encoders import LSTMEncoder
from qpairs.model import SiameseModel
from qpairs.vocab import WordVocab

TOPICS = ["python", "java", "cooking", "pasta", "guitar", "piano", "football", "tennis", "bitcoin", "taxes",
          "visa", "paris", "diet", "running", "chemistry", "physics", "history", "poetry", "cats", "dogs"]
TEMPLATES = ["How do I learn {t}?", "What is the best way to learn {t}?", "Is {t} hard?", "How difficult is {t}?",
             "Why do people like {t}?", "What makes {t} so popular?", "Where can I find good {t} books?",
             "Which books about {t} are good?", "Who invented {t}?", "When should I start {t}?"]


def bank_questions() -> list[str]:
    """200 distinct questions (every template × topic)."""
    return [tpl.format(t=t) for t in TOPICS for tpl in TEMPLATES]


def make_tiny_model(directory, distance: str = "euclidean", seed: int = 0, dim: int = 16):
    """Save a random BiLSTM Siamese model + calibration (p = 0.95 up to d = 2e-5, threshold 0.5 at d ≈ 6e-5)."""
    torch.manual_seed(seed)
    texts = bank_questions()
    vocab = WordVocab.build(texts, min_freq=1)
    encoder = LSTMEncoder(vocab, embedding_dim=dim, hidden_size=dim, projection_dim=dim, dropout=0.0,
                          normalize=False)
    model = SiameseModel(encoder, distance)
    save_model(model, directory)
    cal = Calibrator("isotonic")  # distinct bank questions are ≥ 3e-4 apart under either metric
    cal.params = {"x": [0.0, 2e-5, 1e-4], "y": [0.95, 0.95, 1e-4]}
    cal.threshold, cal.prior = 0.5, 0.37
    write_json(directory / "calibration.json", cal.to_dict())
    return directory


def bank_csv(path, questions=None, ids=None) -> pd.DataFrame:
    """Write a question bank CSV (id,question) and return it."""
    questions = questions if questions is not None else bank_questions()
    ids = ids if ids is not None else [f"q{i}" for i in range(len(questions))]
    frame = pd.DataFrame({"id": ids, "question": questions})
    frame.to_csv(path, index=False)
    return frame


def groups_with_copies(seed: int = 0) -> tuple[list[str], list[int]]:
    """Questions where some appear 2–3 times with other casing; returns (texts, true group per text)."""
    rng = random.Random(seed)
    base = bank_questions()[:60]
    texts, groups = [], []
    for g, q in enumerate(base):
        copies = rng.choice([1, 1, 2, 3])
        variants = [q, q.lower(), q.upper()][:copies]
        for v in variants:
            texts.append(v)
            groups.append(g)
    order = list(range(len(texts)))
    rng.shuffle(order)
    return [texts[i] for i in order], [groups[i] for i in order]


@contextmanager
def serving(app, timeout: float = 30.0):
    """Run `app` with uvicorn in a thread on a free loopback port; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
