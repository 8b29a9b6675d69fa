"""Token-state cache of a frozen base (fill, resume, memory-mapped reads, pooled view) and the matching pair head."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_pairs

from qpairs import onnxrt


@pytest.fixture
def frozen_encoder(tiny_bert):
    from qpairs.encoders import build_encoder

    return build_encoder({"type": "transformer", "pooling": "mean", "max_length": 32, "base_model": str(tiny_bert),
                          "head": "residual", "frozen_base": True}).eval()


def _texts(n=60):
    pairs = make_pairs(n)
    return list(dict.fromkeys(list(pairs["question1"]) + list(pairs["question2"])))


@torch.inference_mode()
def _direct_states(encoder, text):
    batch = encoder.tokenize([text])
    return encoder.token_states(**batch)[0]


def test_token_cache_fill_resume_and_mmap_reads_equal_direct_encoding(frozen_encoder, tmp_path):
    from qpairs.tokencache import TokenStateCache, open_token_cache

    texts = _texts()
    cache = open_token_cache(frozen_encoder, tmp_path / "tc", precision="fp32")
    assert cache.fill(frozen_encoder, texts[:40], part_size=16, progress=False) == 40  # parts of 16, 16, 8
    (tmp_path / "tc" / "part-00002.json").unlink()  # an interrupted fill: the last part never completed
    resumed = open_token_cache(frozen_encoder, tmp_path / "tc", precision="fp32")
    assert len(resumed) == 32 and resumed.missing(texts[31:33]) == [texts[32]]
    assert resumed.fill(frozen_encoder, texts, part_size=16, progress=False) == len(texts) - 32  # finished parts kept

    reopened = TokenStateCache(tmp_path / "tc", json.loads((tmp_path / "tc" / "meta.json").read_text()))
    assert len(reopened) == len(texts)
    assert all(isinstance(p, np.memmap) and p.dtype == np.float16 for p in reopened.parts)
    for text, states in zip(texts, reopened.states(texts)):
        direct = _direct_states(frozen_encoder, text)
        assert states.shape == direct.shape
        torch.testing.assert_close(states.float(), direct, atol=2e-3, rtol=1e-3)
    x, mask = reopened.lookup_states(texts[:5])
    assert x.dtype == torch.float32 and mask.sum(1).tolist() == [len(s) for s in reopened.states(texts[:5])]
    with pytest.raises(KeyError, match="not in the token-state cache"):
        reopened.states(["never seen"])


def test_token_cache_of_other_weights_or_length_is_refused(frozen_encoder, tmp_path):
    from qpairs.tokencache import open_token_cache

    open_token_cache(frozen_encoder, tmp_path / "tc", precision="fp32").fill(frozen_encoder, _texts(5), progress=False)
    frozen_encoder.config["max_length"] = 16
    with pytest.raises(ValueError, match="token-state cache was made with"):
        open_token_cache(frozen_encoder, tmp_path / "tc", precision="fp32")


@pytest.mark.parametrize("pooling", ["mean", "max", "cls"])
def test_pooled_view_equals_pooled_encoding(frozen_encoder, tmp_path, pooling):
    from qpairs.embcache import EmbeddingCache, cache_meta
    from qpairs.tokencache import open_token_cache

    frozen_encoder.config["pooling"] = pooling
    texts = _texts()
    view = open_token_cache(frozen_encoder, tmp_path / "tc", precision="fp32").pooled(pooling)
    view.fill(frozen_encoder, texts[:30], part_size=16, progress=False)
    first = view.lookup(texts[:30])
    view.fill(frozen_encoder, texts, part_size=16, progress=False)  # grows after a lookup
    pooled = EmbeddingCache(None, cache_meta(frozen_encoder))
    pooled.fill(frozen_encoder, texts, progress=False)
    torch.testing.assert_close(view.lookup(texts), pooled.lookup(texts), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(view.lookup(texts[:30]), first)


def test_open_cache_is_the_token_cache_view_and_still_reads_a_pooled_cache(frozen_encoder, tmp_path):
    from qpairs.embcache import EmbeddingCache
    from qpairs.tokencache import open_cache
    from qpairs.tokencache import PooledView

    texts = _texts(10)
    view = open_cache(frozen_encoder, tmp_path / "new")
    assert isinstance(view, PooledView)
    view.fill(frozen_encoder, texts, progress=False)
    assert json.loads((tmp_path / "new" / "meta.json").read_text())["kind"] == "token_states"
    legacy = EmbeddingCache(tmp_path / "legacy", {"base_model": str(frozen_encoder.config["base_model"]),
                                                   "pooling": "mean", "max_length": 32, "hidden_size": 32})
    legacy.fill(frozen_encoder, texts, progress=False)
    again = open_cache(frozen_encoder, tmp_path / "legacy")
    assert isinstance(again, EmbeddingCache) and len(again) == len(texts)


def _token_batch(lengths, hidden, seed):
    from qpairs.tokencache import pad_states

    g = torch.Generator().manual_seed(seed)
    return pad_states([torch.randn(n, hidden, generator=g) for n in lengths])


def test_matching_head_is_symmetric_in_the_two_questions():
    from qpairs.matching import MatchingHead

    torch.manual_seed(0)
    head = MatchingHead(hidden=24, dim=16).eval()
    ta, tb = _token_batch([5, 2, 7], 24, 1), _token_batch([3, 9, 1], 24, 2)
    u, v = torch.randn(3, 16), torch.randn(3, 16)
    with torch.no_grad():
        forward, swapped = head(u, v, ta, tb), head(v, u, tb, ta)
    assert torch.equal(forward, swapped)
    assert not torch.allclose(forward[:1], forward[1:2])  # it does depend on the pair
    minilm_sized = MatchingHead(hidden=384, dim=384)
    assert 0.7e6 < sum(p.numel() for p in minilm_sized.parameters()) < 1.3e6


def test_cosine_weight_adds_the_pooled_cosine_to_the_logit_and_keeps_symmetry():
    from qpairs.matching import MatchingHead

    torch.manual_seed(0)
    head = MatchingHead(hidden=24, dim=16).eval()
    ta, tb = _token_batch([5, 2, 7], 24, 1), _token_batch([3, 9, 1], 24, 2)
    u, v = torch.randn(3, 16), torch.randn(3, 16)
    pa = ta[0].sum(1) / ta[1].sum(1, keepdim=True)  # mean pooling over the valid tokens
    pb = tb[0].sum(1) / tb[1].sum(1, keepdim=True)
    with torch.no_grad():
        plain = head(u, v, ta, tb)
        head.cosine_weight = 2.5
        blended, swapped = head(u, v, ta, tb), head(v, u, tb, ta)
    cos = torch.nn.functional.cosine_similarity(pa, pb, dim=-1)
    torch.testing.assert_close(blended, plain + 2.5 * cos)
    assert torch.equal(blended, swapped) and head.config["cosine_weight"] == 2.5


def test_cosine_weight_is_fitted_on_validation_log_loss():
    from sklearn.metrics import log_loss

    from qpairs.calibration import Calibrator
    from qpairs.cosine_weight import fit_cosine_weight

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 3000)
    logit = 1.0 * y + rng.normal(0, 1.5, len(y))  # a weak head
    informative, noise = 0.4 * y + rng.normal(0, 0.2, len(y)), rng.normal(0, 0.2, len(y))
    for cos, low, high in ((informative, 2.0, 20.0), (noise, 0.0, 0.5)):
        w, cal = fit_cosine_weight(lambda weight: -(logit + weight * cos), y, "platt")
        assert low <= w <= high
        d = -(logit + w * cos)
        assert cal.operating_point["rule"] == "accuracy"
        at_zero = Calibrator("platt").fit(-logit, y)
        assert log_loss(y, cal.predict_proba(d)) <= log_loss(y, at_zero.predict_proba(-logit)) + 1e-12


def test_hand_over_moves_pairs_longer_than_training_to_the_cosine():
    from qpairs.matching import MatchingHead

    torch.manual_seed(0)
    head = MatchingHead(hidden=24, dim=16, cosine_weight=1.5).eval()
    ta, tb = _token_batch([3, 9, 6], 24, 1), _token_batch([2, 5, 2], 24, 2)  # longer side 3, 9, 6 tokens
    u, v = torch.randn(3, 16), torch.randn(3, 16)
    pa, pb = (t[0].sum(1) / t[1].sum(1, keepdim=True) for t in (ta, tb))
    cos = torch.nn.functional.cosine_similarity(pa, pb, dim=-1)
    with torch.no_grad():
        plain = head(u, v, ta, tb)
        head.hand_over = {"from": 4, "to": 8, "slope": 3.0, "bias": -1.0}
        handed, swapped = head(u, v, ta, tb), head(v, u, tb, ta)
    share = torch.tensor([0.0, 1.0, 0.5])  # within the trained length, past twice it, halfway
    torch.testing.assert_close(handed, (1 - share) * plain + share * (3.0 * cos - 1.0))
    assert handed[0] == plain[0] and torch.equal(handed, swapped)
    assert head.config["hand_over"] == {"from": 4.0, "to": 8.0, "slope": 3.0, "bias": -1.0}


def test_hand_over_is_the_cosine_calibrated_through_the_heads_calibration():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    from qpairs.calibration import Calibrator
    from qpairs.cosine_weight import fit_hand_over

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 4000)
    logit, cos = 2.0 * y + rng.normal(0, 1.0, len(y)), 0.5 + 0.2 * y + rng.normal(0, 0.1, len(y))
    cal = Calibrator("platt").fit(-logit, y)
    rule = fit_hand_over(cos, y, cal, trained_length=40)
    assert (rule["from"], rule["to"]) == (40.0, 80.0) and rule["slope"] > 0
    handed = cal.predict_proba(-(rule["slope"] * cos + rule["bias"]))
    best = LogisticRegression(C=1e6).fit(cos[:, None], y).predict_proba(cos[:, None])[:, 1]
    assert log_loss(y, handed) < log_loss(y, best) + 1e-4  # as good as the cosine's own logistic fit


def test_matching_head_ignores_padding():
    from qpairs.matching import MatchingHead

    torch.manual_seed(0)
    head = MatchingHead(hidden=8, dim=4).eval()
    (a, ma), (b, mb) = _token_batch([4], 8, 1), _token_batch([3], 8, 2)
    pad = lambda x, m, n: (torch.cat([x, torch.full((1, n, 8), 7.0)], 1), torch.cat([m, torch.zeros(1, n, dtype=bool)], 1))
    u, v = torch.randn(1, 4), torch.randn(1, 4)
    with torch.no_grad():
        torch.testing.assert_close(head(u, v, (a, ma), (b, mb)), head(u, v, pad(a, ma, 3), pad(b, mb, 5)))


def _pairs_csv(tmp_path, n=240):
    data = tmp_path / "pairs.csv"
    make_pairs(n, seed=3).to_csv(data, index=False)
    return data


def test_train_freeze_base_matching_head_trains_saves_loads_and_scores(tiny_bert, tmp_path):
    from qpairs import load
    from qpairs.cli import main
    from qpairs.matching import MatchingHead
    from qpairs.pair_scores import pair_distances
    from qpairs.scoring import PairScorer

    data = _pairs_csv(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "--encoder", "transformer", "--base-model", str(tiny_bert), "--freeze-base",
                 "--head", "residual", "--pair-head", "matching", "--data", str(data), "--out", str(run),
                 "--epochs", "2", "--batch-size", "32", "--max-length", "32", "--lr", "3e-3", "--distance", "cosine",
                 "--device", "cpu", "--no-progress"]) == 0
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 2 and history[1]["train_loss"] < history[0]["train_loss"]
    pair_head = json.loads((run / "config.json").read_text())["pair_head"]
    assert pair_head["type"] == "matching"
    assert (pair_head["hand_over"]["from"], pair_head["hand_over"]["to"]) == (32.0, 64.0)  # from --max-length
    meta = json.loads((run / "embedding_cache" / "meta.json").read_text())
    assert meta["kind"] == "token_states"  # training read token states from the cache
    from qpairs.checkpoint import load_model
    from qpairs.tokencache import open_cache

    saved, _ = load_model(run, "cpu")  # the saved run's lazy base keys the cache as training did
    texts = pd.read_csv(data)["question1"].head(5).tolist()
    assert open_cache(saved.encoder, run / "embedding_cache").missing(texts) == []

    det = load(run, device="cpu", backend="torch")
    assert isinstance(det.model.pair_head, MatchingHead)
    from qpairs import onnxrt

    if onnxrt.available():  # on the CPU, 'auto' runs token states in ONNX int8, as for pooled outputs
        assert onnxrt.resolve_backend("auto", torch.device("cpu"), det.model) == onnxrt.AUTO_CPU_BACKEND
    pairs = make_pairs(30, seed=9)
    q1, q2 = list(pairs["question1"]), list(pairs["question2"])
    batch = det.predict_proba(q1, q2)
    alone = [det.predict_proba(a, b) for a, b in zip(q1[:4], q2[:4])]
    np.testing.assert_allclose(batch[:4], alone, rtol=0, atol=1e-6)  # batch-invariant
    np.testing.assert_allclose(det.predict_proba(q2, q1), batch, rtol=0, atol=1e-6)  # symmetric
    # another batch size: the same numbers summed in another order (scoring.md promises 1e-4)
    np.testing.assert_allclose(PairScorer(det, batch_size=8).predict_proba(q1, q2), batch, rtol=0, atol=1e-5)
    if onnxrt.native_bf16():  # the CPU's bf16 path: close to fp32, and batch-invariant and symmetric itself
        fast = load(run, device="cpu", backend="bf16")
        half = fast.predict_proba(q1, q2)
        np.testing.assert_allclose(half, batch, rtol=0, atol=0.03)
        np.testing.assert_allclose([fast.predict_proba(a, b) for a, b in zip(q1[:4], q2[:4])], half[:4], rtol=0, atol=1e-6)
        np.testing.assert_allclose(fast.predict_proba(q2, q1), half, rtol=0, atol=1e-6)
    blocks = pair_distances(det.model, q1, q2, "cpu", batch_size=4, block=7)  # memory-bounded blocks of pairs
    np.testing.assert_allclose(det.calibrator.predict_proba(blocks.numpy()), batch, rtol=0, atol=1e-6)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["validation"]["roc_auc"] > 0.5

    pairs[["id", "question1", "question2"]].to_csv(tmp_path / "in.csv", index=False)
    assert main(["score", str(tmp_path / "in.csv"), "--model", str(run), "--output", str(tmp_path / "out.csv"),
                 "--device", "cpu", "--backend", "torch"]) == 0
    scored = pd.read_csv(tmp_path / "out.csv")
    np.testing.assert_allclose(scored["duplicate_probability"], batch, rtol=0, atol=1e-6)
    onnx = load(run, device="cpu", backend="onnx")  # token states through ONNX Runtime
    assert onnx.model.encoder.token_runtime is not None and onnx.model.encoder.runtime is None
    np.testing.assert_allclose(onnx.predict_proba(q1, q2), batch, rtol=0, atol=1e-4)
    onnx.use_backend("onnx", threads=2)  # two sessions, each batch split in row shards of their own widths
    assert len(onnx.model.encoder.token_runtime.sessions) == 2
    batch_ids = det.model.encoder.tokenize(["Hi?", "What is the best way to learn java in a month or two?"])
    mask = batch_ids["attention_mask"].bool()
    with torch.inference_mode():  # the short row's shard runs at its own width and is padded back
        torch.testing.assert_close(onnx.model.encoder.token_states(**batch_ids)[mask],
                                   det.model.encoder.token_states(**batch_ids)[mask], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(onnx.predict_proba(q1, q2), batch, rtol=0, atol=1e-4)


def test_bilstm_matching_head_trains_on_its_own_token_states_and_scores_as_it_was_evaluated(tmp_path):
    from sklearn.metrics import roc_auc_score

    from qpairs import load
    from qpairs.cli import main
    from qpairs.matching import MatchingHead
    from qpairs.scoring import PairScorer

    data = _pairs_csv(tmp_path, 400)
    run = tmp_path / "run"
    assert main(["train", "--encoder", "lstm", "--no-glove", "--embedding-dim", "16", "--hidden-size", "16",
                 "--pair-head", "matching", "--matching-dim", "24", "--data", str(data), "--out", str(run),
                 "--epochs", "3", "--batch-size", "32", "--lr", "3e-3", "--device", "cpu", "--no-progress"]) == 0
    history = json.loads((run / "history.json").read_text())
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert not (run / "embedding_cache").exists()  # the BiLSTM trains: its token states come from each step
    det = load(run, device="cpu", backend="torch")  # fp32, as the training path evaluated it
    assert isinstance(det.model.pair_head, MatchingHead) and det.model.pair_head.config["hidden"] == 32
    test = pd.read_csv(run / "splits" / "test.csv.gz")
    q1, q2 = list(test["question1"]), list(test["question2"])
    batch = det.predict_proba(q1, q2)
    metrics = json.loads((run / "metrics.json").read_text())["test"]  # computed by the training path
    assert metrics["roc_auc"] > 0.8
    assert roc_auc_score(test["is_duplicate"], batch) == pytest.approx(metrics["roc_auc"], abs=1e-9)
    alone = [det.predict_proba(a, b) for a, b in zip(q1[:4], q2[:4])]
    np.testing.assert_allclose(batch[:4], alone, rtol=0, atol=1e-6)  # batch-invariant
    np.testing.assert_allclose(det.predict_proba(q2, q1), batch, rtol=0, atol=1e-6)  # symmetric
    # another batch size: the same numbers summed in another order (scoring.md promises 1e-4)
    np.testing.assert_allclose(PairScorer(det, batch_size=8).predict_proba(q1, q2), batch, rtol=0, atol=1e-5)


def test_matching_head_needs_a_frozen_transformer_and_pair_losses(tiny_bert, tmp_path):
    from qpairs.config import TrainConfig
    from qpairs.train import train

    data = _pairs_csv(tmp_path, 80)
    base = dict(data=[str(data)], epochs=1, batch_size=16, device="cpu", progress=False, pair_head="matching")
    with pytest.raises(ValueError, match="--freeze-base"):
        train(TrainConfig(out=str(tmp_path / "a"), encoder="transformer", base_model=str(tiny_bert), **base))
    with pytest.raises(ValueError, match="pair loss"):
        train(TrainConfig(out=str(tmp_path / "b"), encoder="transformer", base_model=str(tiny_bert), freeze_base=True,
                          loss="mnrl", **base))


def test_a_cache_made_before_text_folding_serves_unless_a_text_folds_otherwise(tmp_path):
    import json

    from qpairs.embcache import EmbeddingCache

    meta = {"base_model": "b", "pooling": "mean", "max_length": 8, "hidden_size": 2}
    for name, texts in (("plain", ["How do I learn Python?"]), ("zero_width", ["How do I learn Py\u200bthon?"])):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "meta.json").write_text(json.dumps(meta))  # as written before the folding was recorded
        np.save(folder / "part-00000.npy", np.ones((1, 2), dtype=np.float32))
        (folder / "part-00000.json").write_text(json.dumps(texts))
    now = {**meta, "text_folding": 1}
    assert len(EmbeddingCache(tmp_path / "plain", now)) == 1
    with pytest.raises(ValueError, match="made before qpairs read Unicode text in folded form"):
        EmbeddingCache(tmp_path / "zero_width", now)
    with pytest.raises(ValueError, match="was made with"):  # any other difference is refused as before
        EmbeddingCache(tmp_path / "plain", {**now, "max_length": 16})
