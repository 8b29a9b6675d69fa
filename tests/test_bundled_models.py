"""Named bundled models ('default', 'fast'), fp16 weights, scripts/make_fast_model.py."""
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import qpairs
from conftest import make_pairs
from qpairs import detector
from qpairs.checkpoint import ModelDirError
from qpairs.cli import main

ROOT = Path(__file__).resolve().parent.parent


def make_fast_model():
    spec = importlib.util.spec_from_file_location("make_fast_model", ROOT / "scripts" / "make_fast_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def bundles(tmp_path, monkeypatch):
    """An empty package folder for bundled models."""
    root = tmp_path / "pkg"
    root.mkdir()
    monkeypatch.setattr(detector, "BUNDLE_ROOT", root)
    return root


def test_a_missing_bundle_is_a_clear_error(bundles, tmp_path, capsys):
    with pytest.raises(ModelDirError, match="bundled model 'fast' is not installed"):
        qpairs.load("fast")
    data = tmp_path / "pairs.csv"
    make_pairs(20).to_csv(data, index=False)
    assert main(["score", str(data), "-o", str(tmp_path / "out.csv"), "--model", "fast"]) == 2
    assert "bundled model 'fast' is not installed" in capsys.readouterr().err


def test_fast_bundle_is_fp16_and_scores_like_its_run(tiny_run, bundles, tmp_path, monkeypatch, capsys):
    from safetensors import safe_open

    r = make_fast_model().package(tiny_run, bundles / "fast_model")
    assert r["bytes"] < 15 * 2**20 and r["max_probability_change"] < 1e-3
    with safe_open(bundles / "fast_model" / "model.safetensors", "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys() if f.get_tensor(k).is_floating_point()} == {"torch.float16"}
    pairs = make_pairs(100, seed=7)
    q1, q2 = list(pairs["question1"]), list(pairs["question2"])
    fast, full = qpairs.load("fast", device="cpu", backend="torch"), qpairs.load(tiny_run, device="cpu", backend="torch")
    assert fast.path == bundles / "fast_model"
    assert next(fast.model.parameters()).dtype.is_floating_point and str(next(fast.model.parameters()).dtype) == "torch.float32"
    assert np.abs(fast.predict_proba(q1, q2) - full.predict_proba(q1, q2)).max() < 1e-3
    data = tmp_path / "pairs.csv"
    pairs.to_csv(data, index=False)
    assert main(["score", str(data), "-o", str(tmp_path / "out.csv"), "--model", "fast", "--device", "cpu"]) == 0


def test_a_bare_name_means_the_bundle_and_an_explicit_path_the_folder(tiny_run, bundles, tmp_path, monkeypatch):
    from _tiny_models import tiny_lstm_dir

    shutil.copytree(tiny_run, bundles / "fast_model")
    monkeypatch.chdir(tmp_path)
    tiny_lstm_dir(tmp_path / "fast")  # a run folder that happens to be called fast
    assert qpairs.load("fast", device="cpu").path == bundles / "fast_model"
    assert qpairs.load("./fast", device="cpu").path == Path("./fast")
    assert qpairs.load(Path("fast"), device="cpu").path == Path("fast")
    with pytest.raises(ModelDirError, match="bundled model .default. is not installed"):
        detector.resolve_model_path(None)  # None is the bundled default, not installed in this package folder


def test_make_fast_model_refuses_a_transformer_run(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text('{"encoder": {"type": "transformer"}}')
    with pytest.raises(SystemExit, match="Siamese BiLSTM"):
        make_fast_model().package(tmp_path / "run", tmp_path / "out")


def test_the_shipped_fast_model_loads_offline_and_tells_a_duplicate_from_a_different_question(monkeypatch):
    from qpairs.matching import MatchingHead

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    bundle = detector.bundled_model_dir("fast")
    assert sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file()) < 15 * 2**20
    fast = qpairs.load("fast", device="cpu")
    assert fast.model.encoder.config["type"] == "lstm" and isinstance(fast.model.pair_head, MatchingHead)
    p = fast.predict_proba(["How do I learn Python quickly?", "How do I learn Python quickly?"],
                           ["What is the fastest way to learn Python?", "What is the capital of Australia?"])
    assert p[0] > fast.threshold > p[1]
    np.testing.assert_allclose(fast.predict_proba(["What is the fastest way to learn Python?"],
                                                  ["How do I learn Python quickly?"]), p[:1], rtol=0, atol=1e-6)


def test_the_default_model_reads_long_questions_to_the_end():
    """Forum questions run long: two that share their first 60 words but end differently are not the same."""
    det = qpairs.load(device="cpu")
    preamble = ("I moved to a new city last month for work and I have been trying to settle in, meet people, "
                "find my way around the neighbourhood, sort out the paperwork, open a bank account, get a phone "
                "plan, and figure out how the buses and trains work here, which has taken most of my evenings "
                "and weekends so far, honestly. ")
    assert len(preamble.split()) >= 60
    ask, other = preamble + "Where can I buy a good second-hand bicycle?", preamble + "How do I cook rice in a pot?"
    same, different = det.predict_proba([ask, ask], [ask + " ", other])
    assert same - different > 0.1, (same, different)


def test_an_index_of_the_earlier_default_points_to_matching_and_one_of_the_current_default_does_not(
        bundles, tmp_path, capsys):
    from _tiny_models import tiny_lstm_dir

    for name, seed in (("default_model", 1), ("matching_model", 1), ("fast_model", 2)):  # the default was matching
        tiny_lstm_dir(bundles / name, seed=seed)
    bank = tmp_path / "bank.csv"
    bank.write_text("id,question\n1,how do i learn python\n2,what is the capital of france\n")
    assert main(["index", str(bank), "-o", str(tmp_path / "old")]) == 0
    shutil.rmtree(bundles / "default_model")
    tiny_lstm_dir(bundles / "default_model", seed=0)  # the default changes
    assert main(["index", str(bank), "-o", str(tmp_path / "new")]) == 0
    hint = "opens with --model matching"
    capsys.readouterr()
    assert main(["search", str(tmp_path / "old"), "learn python", "--model", "fast"]) == 2
    assert hint in capsys.readouterr().err
    assert main(["search", str(tmp_path / "old"), "learn python", "--model", "matching"]) == 0
    assert main(["search", str(tmp_path / "new"), "learn python", "--model", "fast"]) == 2
    err = capsys.readouterr().err
    assert "was built with model" in err and hint not in err  # built by today's default: no advice to use matching


def test_make_fast_model_leaves_the_target_alone_when_the_bundle_is_over_the_limit(tiny_run, tmp_path, monkeypatch):
    module = make_fast_model()
    target = tmp_path / "fast_model"
    target.mkdir()
    (target / "keep.txt").write_text("the bundle in place")
    monkeypatch.setattr(module, "MAX_BYTES", 10)
    with pytest.raises(SystemExit, match="over the 0 MB limit.*left as it was"):
        module.package(tiny_run, target)
    assert [p.name for p in tmp_path.iterdir()] == ["fast_model"] and (target / "keep.txt").exists()


@pytest.mark.parametrize("backend", ["bf16", "onnx-int8"])
def test_the_bundled_matching_model_scores_a_pair_alone_as_in_a_batch(backend):
    """On real questions of differing lengths, a pair's probability does not depend on the rest of its batch."""
    from qpairs import onnxrt

    if backend == "bf16" and not onnxrt.native_bf16():
        pytest.skip("bf16 needs a CPU with native bf16")
    pairs = pd.read_csv(ROOT / "data" / "sample_pairs.csv")
    q1, q2 = list(pairs["question1"]), list(pairs["question2"])
    det = qpairs.load("matching", device="cpu", backend=backend)
    batch = det.predict_proba(q1, q2)
    alone = [det.predict_proba(a, b) for a, b in zip(q1, q2)]
    np.testing.assert_allclose(batch, alone, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["fast", "matching"])
def test_a_question_reads_the_same_however_its_characters_are_encoded(name):
    """A decomposed accent (text pasted from a Mac), a zero-width space or a soft hyphen inside a word, or
    full-width letters do not change the answer; emoji are read as the things they show."""
    import unicodedata

    det = qpairs.load(name, device="cpu")
    a, b = "How do I pronounce naïve and résumé?", "What is the pronunciation of naïve and résumé?"
    p = det.predict_proba([a, "What's the best way to learn Python?", "What's the best way to learn Python?"],
                          [b, "How do I learn Python quickly?", "How do I learn Python quickly?"])
    q = det.predict_proba([unicodedata.normalize("NFD", a), "What's the best way to learn Py\u200bthon?",
                           "What's the best way to learn Ｐｙｔｈｏｎ?"],
                          [unicodedata.normalize("NFD", b), "How do I learn Py\u00adthon quickly?",
                           "How do I learn Python quickly?"])
    np.testing.assert_allclose(q, p, rtol=0, atol=1e-6)
    pizza, salad = det.predict_proba(["Is 🍕 healthy?", "Is 🍕 healthy?"], ["Is pizza healthy?", "Is 🥗 healthy?"])
    assert pizza > det.threshold > salad
