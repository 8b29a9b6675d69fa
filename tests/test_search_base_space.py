"""Base-space search: a frozen-base transformer's index stores the pooled base vectors, ranks by base cosine plus
a character n-gram cosine, and reports the model's own calibrated probabilities."""
import numpy as np
import pytest
import torch

from qpairs import search
from qpairs.calibration import Calibrator
from qpairs.dedup import dedup
from qpairs.detector import DuplicateDetector
from qpairs.encoders import build_encoder
from qpairs.losses import PairClassifier
from qpairs.model import SiameseModel
from qpairs.search import QuestionIndex, lexical_similarity
from tiny_search_model import bank_questions


@pytest.fixture(scope="module")
def frozen_det(tiny_bert):
    torch.manual_seed(0)
    enc = build_encoder({"type": "transformer", "pooling": "mean", "projection_dim": 48, "normalize": True,
                         "max_length": 32, "base_model": str(tiny_bert), "head": "residual", "frozen_base": True})
    torch.nn.init.normal_(enc.head.proj.fc2.weight, std=0.3)  # a head that really moves the embeddings
    model = SiameseModel(enc, "cosine", pair_head=PairClassifier(enc.dim, hidden=8)).eval()
    cal = Calibrator("platt").fit(np.array([-2.0, -1.0, 1.0, 2.0, -0.5, 0.5]), np.array([1, 1, 0, 0, 1, 0]))
    return DuplicateDetector(model, cal, device="cpu", backend="torch")


def test_lexical_similarity():
    sims = lexical_similarity("How do I learn Python?", ["how do i learn python?", "Who invented tennis?", "Python"])
    assert sims[0] == pytest.approx(1.0)  # case does not matter
    assert sims[2] > sims[1] >= 0.0


def test_base_space_ranks_by_base_cosine_plus_lexical_and_scores_with_the_model(frozen_det, monkeypatch, tmp_path):
    bank = bank_questions()[:60]
    monkeypatch.setattr(search, "RERANK_EXTRA", len(bank))  # every question becomes a candidate: brute force
    index = QuestionIndex.build(frozen_det, bank, [f"q{i}" for i in range(len(bank))])
    assert index.space == "base" and index.meta["dim"] == 32 and index.meta["metric"] == "cosine"
    query = "how can I learn java?"
    hits = index.search(frozen_det, query, k=5)

    base = frozen_det.encode(bank, pooled=True)
    q = frozen_det.encode([query], pooled=True)[0]
    cosine = base @ q / np.linalg.norm(base, axis=1) / np.linalg.norm(q)
    want = cosine + search.LEXICAL_WEIGHT * lexical_similarity(query, bank)
    best = np.argsort(-want, kind="stable")[:5]
    assert [h.text for h in hits] == [bank[i] for i in best]
    np.testing.assert_allclose([h.score for h in hits], want[best], atol=1e-5)
    # probabilities are the model's own (head + pair classifier), not the ranking score
    np.testing.assert_allclose([h.probability for h in hits],
                               frozen_det.predict_proba([query] * 5, [bank[i] for i in best]), atol=1e-5)
    assert not np.allclose(np.argsort([-h.probability for h in hits]), np.arange(5))  # the two orders differ here

    index.save(tmp_path / "idx")
    loaded = QuestionIndex.load(tmp_path / "idx")
    assert loaded.space == "base" and np.array_equal(loaded.norms, index.norms)
    assert [h.to_dict() for h in loaded.search(frozen_det, query, k=5)] == [h.to_dict() for h in hits]
    (tmp_path / "idx" / "norms.npy").unlink()
    with pytest.raises(search.SearchIndexError, match="norms.npy is missing"):
        QuestionIndex.load(tmp_path / "idx")


def test_model_space_can_be_asked_for_and_base_space_needs_a_frozen_base(frozen_det, tiny_bert):
    bank = bank_questions()[:40]
    index = QuestionIndex.build(frozen_det, bank, space="model")
    hits = index.search(frozen_det, "Is java hard?", k=4)
    assert index.space == "model" and [h.distance for h in hits] == sorted(h.distance for h in hits)
    enc = build_encoder({"type": "transformer", "pooling": "mean", "max_length": 32, "base_model": str(tiny_bert)})
    tuned = DuplicateDetector(SiameseModel(enc, "cosine").eval(), frozen_det.calibrator, device="cpu", backend="torch")
    assert QuestionIndex.empty(tuned).space == "model"
    with pytest.raises(ValueError, match="frozen base"):
        QuestionIndex.empty(tuned, space="base")


def test_dedup_in_base_space_uses_model_probabilities(frozen_det):
    texts = bank_questions()[:30] + bank_questions()[:5]  # five exact copies
    out = dedup(frozen_det, texts, k=5, threshold=0.0)
    assert (out["best_probability"] > 0).all()
    for i in range(30, 35):
        match = int(out.loc[i, "best_match"])
        assert out.loc[i, "best_probability"] == pytest.approx(
            float(frozen_det.predict_proba([texts[i]], [texts[match]])[0]), abs=1e-5)
