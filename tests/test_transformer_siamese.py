"""Transformer Siamese encoder with every loss: training, saving and exact reloading (tiny random BERT, no hub)."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import qpairs
from qpairs.config import TrainConfig
from qpairs.objective import LOSSES, Objective
from qpairs.builders import build_model
from qpairs.train import train
from conftest import make_pairs


def _cfg(tmp_path, base, data, **kw):
    base_kw = dict(out=str(tmp_path / "run"), data=[str(data)], encoder="transformer", base_model=str(base),
                   epochs=1, batch_size=32, lr=1e-3, max_length=16, device="cpu", progress=False)
    return TrainConfig(**{**base_kw, **kw})


def _repeated_pairs(n=300, seed=0):
    """Pairs whose questions recur: chains of paraphrases (so transitivity has work) and cross-topic negatives."""
    rng = np.random.default_rng(seed)
    forms = ["How do I learn {t}?", "What is the best way to learn {t}?", "How can I get good at {t}?"]
    topics = [f"{t} {k}" for t in ("python", "java", "guitar", "tennis", "cooking") for k in range(6)]
    rows = []
    for _ in range(n):
        t = topics[rng.integers(len(topics))]
        if rng.random() < 0.5:
            i = int(rng.integers(2))  # chain: form 0 ~ form 1, form 1 ~ form 2
            rows.append((forms[i].format(t=t), forms[i + 1].format(t=t), 1))
        else:
            other = topics[rng.integers(len(topics))]
            if other != t:
                rows.append((forms[rng.integers(3)].format(t=t), forms[rng.integers(3)].format(t=other), 0))
    return pd.DataFrame(rows, columns=["question1", "question2", "is_duplicate"])


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_gives_a_finite_loss_and_gradients(tiny_bert, tmp_path, loss):
    frame = _repeated_pairs()
    cfg = _cfg(tmp_path, tiny_bert, "unused.csv", loss=loss, distance="cosine" if loss != "triplet" else "euclidean",
               mining={"triplet": "semi_hard", "mnrl": "batch_hard"}.get(loss, "none"), pair_head="classifier").resolved()
    model = build_model(cfg, [])
    from qpairs.objective import make_pair_head

    model.pair_head = make_pair_head(cfg, model.dim)
    objective = Objective(cfg, frame)
    batch = next(objective.batches(16, seed=0))
    value = objective.step_loss(model, batch)
    assert torch.isfinite(value) and value.item() > 0
    value.backward()
    assert model.pair_head.net.weight.grad.abs().sum() > 0
    assert model.encoder.model.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_triplet_objective_uses_transitive_positives_and_labelled_negatives(tiny_bert, tmp_path):
    frame = _repeated_pairs()
    cfg = _cfg(tmp_path, tiny_bert, "unused.csv", loss="triplet").resolved()
    objective = Objective(cfg, frame)
    stats = objective.stats
    assert len(objective) == stats["labelled_positive_pairs"] + stats["transitive_pairs_added"]
    assert stats["transitive_pairs_added"] > 0
    _, _, _, counts = objective.sampler.epoch(0)
    assert counts["labelled"] > 0


def test_transformer_run_saves_and_reloads_exactly_without_its_base(tiny_bert, tmp_path):
    base = tmp_path / "base_copy"
    shutil.copytree(tiny_bert, base)
    data = tmp_path / "pairs.csv"
    make_pairs(300, seed=3).to_csv(data, index=False)
    run = train(_cfg(tmp_path, base, data, loss="triplet", pair_head="classifier", projection_dim=16, pooling="cls"))
    shutil.rmtree(base)  # the run directory alone must rebuild the model
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["encoder"]["type"] == "transformer" and cfg["encoder"]["pooling"] == "cls"
    assert cfg["pair_head"]["type"] == "classifier"
    det = qpairs.load(run, device="cpu")
    saved = load_file(run / "model.safetensors")
    state = det.model.state_dict()
    assert set(saved) <= set(state)
    for k, v in saved.items():
        assert torch.equal(state[k], v), k
    q1 = ["How do I learn python? (case 1)", "Is java hard? (case 2)"]
    q2 = ["What is the best way to learn python? (case 1)", "Why do people like tennis? (case 2)"]
    p = det.predict_proba(q1, q2)
    np.testing.assert_array_equal(p, qpairs.load(run, device="cpu").predict_proba(q1, q2))
    # the head makes the score symmetric and the stored test metrics reproducible from the loaded model
    np.testing.assert_allclose(p, det.predict_proba(q2, q1), rtol=1e-5)
    assert det.encode(q1).shape == (2, 16)
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0


def test_config_errors_are_clear(tiny_bert, tmp_path):
    frame = _repeated_pairs(50)
    with pytest.raises(ValueError, match="unknown loss"):
        Objective(_cfg(tmp_path, tiny_bert, "x.csv", loss="hinge").resolved(), frame)
    with pytest.raises(ValueError, match="triplet losses"):
        Objective(_cfg(tmp_path, tiny_bert, "x.csv", mining="batch_hard").resolved(), frame)
    with pytest.raises(ValueError, match="--metric loss"):
        Objective(_cfg(tmp_path, tiny_bert, "x.csv", loss="mnrl", metric="loss").resolved(), frame)
