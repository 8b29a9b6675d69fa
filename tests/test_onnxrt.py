"""ONNX Runtime backend: same embeddings as torch (fp32), close ones (int8), cached exports, clear errors."""
import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("onnxruntime")

from qpairs import onnxrt  # noqa: E402
from qpairs.calibration import Calibrator  # noqa: E402
from qpairs.detector import DuplicateDetector  # noqa: E402
from qpairs.encoders import build_encoder  # noqa: E402
from qpairs.model import SiameseModel  # noqa: E402

TEXTS = ["How do I learn Python quickly?", "What is the capital of France?", "a", "Why is the sky blue? " * 6,
         "How can I improve my English writing skills?"]


@pytest.fixture
def bert_detector(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.setenv("QPAIRS_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    enc = build_encoder({"type": "transformer", "pooling": "mean", "projection_dim": 16, "normalize": True,
                         "max_length": 32, "base_model": str(tiny_bert)})
    cal = Calibrator("platt").fit(np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7]), np.array([1, 1, 0, 0, 0, 1]))
    return DuplicateDetector(SiameseModel(enc, "cosine").eval(), cal, device="cpu", backend="torch")


def test_onnx_fp32_matches_torch(bert_detector):
    ref = bert_detector.encode(TEXTS)
    bert_detector.use_backend("onnx")
    assert bert_detector.backend == "onnx"
    np.testing.assert_allclose(bert_detector.encode(TEXTS), ref, atol=1e-4)


def test_onnx_int8_is_close_and_keeps_the_ranking(bert_detector):
    q1, q2 = TEXTS, TEXTS[1:] + TEXTS[:1]
    ref_emb, ref_p = bert_detector.encode(TEXTS), bert_detector.predict_proba(q1, q2)
    bert_detector.use_backend("onnx-int8")
    emb = bert_detector.encode(TEXTS)
    cos = (emb * ref_emb).sum(1)  # both L2-normalised
    assert cos.min() > 0.95
    assert not np.allclose(emb, ref_emb, atol=1e-6)  # it really ran the quantized graph
    assert np.abs(bert_detector.predict_proba(q1, q2) - ref_p).max() < 0.05


def test_exports_are_cached_per_weights(bert_detector, tmp_path):
    bert_detector.use_backend("onnx-int8")
    files = sorted((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert [f.name.rsplit("-", 1)[1] for f in files] == ["fp32.onnx", "int8.onnx"]
    stamps = [f.stat().st_mtime_ns for f in files]
    bert_detector.use_backend("torch").use_backend("onnx-int8")  # a second load reuses the files
    assert [f.stat().st_mtime_ns for f in files] == stamps
    with torch.no_grad():  # other weights → another file
        bert_detector.model.encoder.model.embeddings.word_embeddings.weight.add_(0.01)
    bert_detector.use_backend("onnx")
    assert len(list((tmp_path / "cache" / "onnx").glob("*-fp32.onnx"))) == 2


def test_int8_fidelity_is_measured_once_and_kept(bert_detector, tmp_path, monkeypatch):
    enc = bert_detector.model.encoder
    cosine = onnxrt.int8_fidelity(enc)
    assert 0.9 < cosine < 1.0  # int8 really ran: close to fp32, not equal
    assert list((tmp_path / "cache" / "onnx").glob("*-int8-fidelity.json"))
    monkeypatch.setattr(onnxrt, "OnnxPooler", None)  # a second measurement would fail
    assert onnxrt.int8_fidelity(enc) == cosine


@pytest.mark.parametrize("bf16", [True, False])
def test_auto_keeps_int8_only_where_it_keeps_the_outputs(bert_detector, monkeypatch, caplog, bf16):
    monkeypatch.setattr(onnxrt, "native_bf16", lambda: bf16)
    monkeypatch.setattr(onnxrt, "int8_fidelity", lambda encoder, tokens=False: 0.999)
    assert bert_detector.use_backend("auto").backend == "onnx-int8"
    bert_detector.use_backend("torch")
    monkeypatch.setattr(onnxrt, "int8_fidelity", lambda encoder, tokens=False: 0.9)
    with caplog.at_level("INFO", logger="qpairs"):
        assert bert_detector.use_backend("auto").backend == ("bf16" if bf16 else "onnx")
    assert "mean cosine 0.900" in caplog.text
    assert bert_detector.use_backend("onnx-int8").backend == "onnx-int8"  # asked for by name: given


def test_training_never_uses_the_runtime(bert_detector):
    bert_detector.use_backend("onnx")
    enc = bert_detector.model.encoder
    batch = enc.tokenize(TEXTS[:2])
    enc.train()
    out = enc(**batch)
    assert out.requires_grad  # torch graph, not the ONNX session
    enc.eval()


@pytest.mark.parametrize("bf16", [True, False])
def test_auto_backend_choices(bert_detector, tiny_run, monkeypatch, bf16):
    from qpairs import load

    monkeypatch.setattr(onnxrt, "native_bf16", lambda: bf16)  # transformers: int8 on any CPU; BiLSTMs: bf16 if native
    assert onnxrt.resolve_backend("auto", torch.device("cpu"), bert_detector.model) == onnxrt.AUTO_CPU_BACKEND
    assert onnxrt.resolve_backend("auto", torch.device("cuda"), bert_detector.model) == "torch"
    lstm = load(tiny_run, device="cpu")
    assert lstm.backend == ("bf16" if bf16 else "torch")
    with pytest.raises(ValueError, match="transformer encoders"):
        load(tiny_run, device="cpu", backend="onnx")
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        bert_detector.use_backend("tensorrt")
    with pytest.raises(ValueError, match="CPU only"):
        onnxrt.resolve_backend("onnx-int8", torch.device("cuda"), bert_detector.model)


def test_bf16_backend_is_refused_where_it_cannot_run(tiny_run, monkeypatch):
    from qpairs import load

    with pytest.raises(ValueError, match="on cuda bf16 is used already"):
        onnxrt.resolve_backend("bf16", torch.device("cuda"), load(tiny_run, device="cpu", backend="torch").model)
    monkeypatch.setattr(onnxrt, "native_bf16", lambda: False)
    assert load(tiny_run, device="cpu").backend == "torch"
    with pytest.raises(ValueError, match="needs a CPU with native bf16"):
        load(tiny_run, device="cpu", backend="bf16")


def test_score_cli_backend_flag(bert_detector, tmp_path):
    from qpairs.checkpoint import save_model, write_json
    from qpairs.cli import main

    run = tmp_path / "run"
    save_model(bert_detector.model, run)
    write_json(run / "calibration.json", bert_detector.calibrator.to_dict())
    pairs = pd.DataFrame({"question1": TEXTS, "question2": TEXTS[::-1]})
    pairs.to_csv(tmp_path / "in.csv", index=False)
    outs = {}
    for backend in ("torch", "onnx"):
        assert main(["score", str(tmp_path / "in.csv"), "-o", str(tmp_path / f"{backend}.csv"), "--model", str(run),
                     "--device", "cpu", "--backend", backend]) == 0
        outs[backend] = pd.read_csv(tmp_path / f"{backend}.csv")
    np.testing.assert_allclose(outs["onnx"]["duplicate_probability"], outs["torch"]["duplicate_probability"],
                               atol=1e-4)
    with pytest.raises(SystemExit):  # argparse rejects an unknown backend
        main(["score", str(tmp_path / "in.csv"), "-o", str(tmp_path / "x.csv"), "--backend", "fast"])


def test_auto_falls_back_to_torch_when_the_export_fails(bert_detector, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise OSError("read-only file system")

    monkeypatch.setattr(onnxrt, "export", broken)
    monkeypatch.setattr(onnxrt, "native_bf16", lambda: False)  # where auto picks ONNX for a transformer
    ref = bert_detector.encode(TEXTS)
    with caplog.at_level("WARNING", logger="qpairs"):
        bert_detector.use_backend("auto")
    assert bert_detector.backend == "torch" and "read-only file system" in caplog.text
    np.testing.assert_array_equal(bert_detector.encode(TEXTS), ref)
    with pytest.raises(OSError, match="read-only"):  # asked for by name: the error surfaces
        bert_detector.use_backend("onnx")


def test_sharded_sessions_give_the_single_session_result(bert_detector):
    """A batch split over 3 single-threaded sessions (each shard trimmed to its own padding) = one session."""
    bert_detector.use_backend("onnx")
    path = bert_detector.model.encoder.runtime.path
    batch = bert_detector.model.encoder.tokenize(TEXTS)
    one = onnxrt.OnnxPooler(path, threads=1)(**batch)
    three = onnxrt.OnnxPooler(path, threads=3)
    assert len(three.sessions) == 3
    np.testing.assert_allclose(three(**batch).numpy(), one.numpy(), atol=1e-5)
    single = bert_detector.model.encoder.tokenize(TEXTS[3:4])  # fewer rows than sessions
    np.testing.assert_allclose(three(**single).numpy(), one[3:4].numpy(), atol=1e-5)



MIXED = ["What?", "How do I cook rice in a pressure cooker without burning it at the bottom of the pot? " * 3,
         "Is it worth learning Rust in 2024?", "Why do cats purr when they are happy or stressed?", "Hi",
         "Which laptop is best for programming and light gaming under one thousand dollars?"] * 2


def add_outlier_feature(encoder, token: str = "cats") -> None:
    """Give `token` a large activation in one feed-forward unit, like the outlier features of real transformers:
    a batch holding it has a much wider activation range than one without it."""
    tok = encoder.tokenizer.convert_tokens_to_ids(token)
    with torch.no_grad():
        words = encoder.model.embeddings.word_embeddings.weight
        words[tok] = 0
        words[tok, 0] = 50
        ff = encoder.model.encoder.layer[0].intermediate.dense
        ff.weight[0] = 0
        ff.weight[0, 0] = 1000
        ff.bias[0] = -3000


@pytest.mark.parametrize("backend", ["torch", "onnx", "onnx-int8"])  # bf16: test_bundled_models (a real model)
@pytest.mark.parametrize("threads", [1, 3])
def test_every_backend_is_batch_invariant(bert_detector, backend, threads):
    """A pair's probability does not depend on the other texts of its batch (nor on their padding)."""
    det = bert_detector
    add_outlier_feature(det.model.encoder)
    det.use_backend(backend, threads=threads)
    enc, q1, q2 = det.model.encoder, TEXTS, TEXTS[1:] + TEXTS[:1]

    def proba(e1, e2):
        return det.calibrator.predict_proba(det.model.decision_distance(torch.from_numpy(e1), torch.from_numpy(e2)).numpy())

    with torch.inference_mode():  # one padded batch, as a service's micro-batch reaches the encoder
        alone = np.concatenate([enc(**enc.tokenize([t])).numpy() for t in TEXTS])
        mixed = enc(**enc.tokenize(MIXED + TEXTS)).numpy()[len(MIXED):]
    order = list(range(1, len(TEXTS))) + [0]
    np.testing.assert_allclose(proba(mixed, mixed[order]), proba(alone, alone[order]), atol=1e-4, rtol=0)
    one_by_one = np.array([det.predict_proba(a, b) for a, b in zip(q1, q2)])
    in_a_crowd = det.predict_proba(MIXED + q1, MIXED[::-1] + q2)[len(MIXED):]
    np.testing.assert_allclose(in_a_crowd, one_by_one, atol=1e-4, rtol=0)


def frozen_run(base_dir, run_dir):
    """A saved frozen-base run on `base_dir` (its head random, its calibration fitted) and the in-memory model."""
    from qpairs.checkpoint import save_model, write_json

    torch.manual_seed(1)
    enc = build_encoder({"type": "transformer", "pooling": "mean", "projection_dim": 16, "normalize": True,
                         "max_length": 32, "base_model": str(base_dir), "head": "residual", "frozen_base": True})
    torch.nn.init.normal_(enc.head.proj.fc2.weight, std=0.1)
    model = SiameseModel(enc, "cosine").eval()
    cal = Calibrator("platt").fit(np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7]), np.array([1, 1, 0, 0, 0, 1]))
    save_model(model, run_dir)
    write_json(run_dir / "calibration.json", cal.to_dict())
    return DuplicateDetector(model, cal, device="cpu", backend="torch")


def test_a_saved_frozen_base_scores_through_onnx_without_building_the_torch_base(tiny_bert, tmp_path, monkeypatch):
    from qpairs import encoders, load
    from qpairs.checkpoint import model_fingerprint

    monkeypatch.setenv("QPAIRS_CACHE", str(tmp_path / "cache"))
    eager = frozen_run(tiny_bert, tmp_path / "run")
    q1, q2 = TEXTS, TEXTS[1:] + TEXTS[:1]
    load(tmp_path / "run", device="cpu", backend="onnx-int8")  # the first load exports, building the base
    built, real = [], encoders.load_base
    monkeypatch.setattr(encoders, "load_base", lambda path: built.append(path) or real(path))
    det = load(tmp_path / "run", device="cpu", backend="onnx-int8")
    p = det.predict_proba(q1, q2)
    assert built == [] and not det.model.encoder.base_loaded  # the cached export is all it ran
    assert det.model.encoder.config == eager.model.encoder.config  # hf_config included
    assert model_fingerprint(det) == model_fingerprint(eager)
    np.testing.assert_array_equal(p, eager.use_backend("onnx-int8").predict_proba(q1, q2))
    det.use_backend("torch")
    assert det.model.encoder.base_loaded and len(built) == 1  # torch runs it: built when chosen
    np.testing.assert_array_equal(det.predict_proba(q1, q2), eager.use_backend("torch").predict_proba(q1, q2))
    assert load(tmp_path / "run", device="cpu", backend="torch").model.encoder.base_loaded  # built at load


def test_training_builds_a_lazy_base_in_its_frozen_mode(tiny_bert, tmp_path):
    from qpairs.checkpoint import load_model

    frozen_run(tiny_bert, tmp_path / "run")
    model, _ = load_model(tmp_path / "run")
    assert not model.encoder.base_loaded
    model.train()
    assert model.encoder.base_loaded and not model.encoder.model.training
    assert not any(p.requires_grad for p in model.encoder.model.parameters())


def test_the_cache_key_of_a_lazy_base_follows_its_weight_files(tiny_bert, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from qpairs.checkpoint import load_model

    base = tmp_path / "base"
    shutil.copytree(tiny_bert, base)
    frozen_run(base, tmp_path / "run")
    key = onnxrt.weights_key(load_model(tmp_path / "run")[0].encoder)
    assert onnxrt.weights_key(load_model(tmp_path / "run")[0].encoder) == key
    weights = load_file(base / "model.safetensors")
    weights["embeddings.word_embeddings.weight"][5, 0] += 0.01
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    encoder = load_model(tmp_path / "run")[0].encoder
    assert onnxrt.weights_key(encoder) != key and not encoder.base_loaded


def test_a_saved_frozen_run_whose_base_lost_its_safetensors_is_refused_at_load(tiny_bert, tmp_path):
    import shutil

    from qpairs import load
    from qpairs.checkpoint import ModelDirError

    base = tmp_path / "base"
    shutil.copytree(tiny_bert, base)
    frozen_run(base, tmp_path / "run")
    (base / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, base / "pytorch_model.bin")
    with pytest.raises(ModelDirError, match=f"base model directory {base}: no \\*.safetensors weights"):
        load(tmp_path / "run", device="cpu", backend="onnx-int8")


def test_scoring_a_cached_export_imports_neither_the_base_model_code_nor_onnx(tiny_bert, tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    from qpairs import load

    monkeypatch.setenv("QPAIRS_CACHE", str(tmp_path / "cache"))
    frozen_run(tiny_bert, tmp_path / "run")
    load(tmp_path / "run", device="cpu", backend="onnx-int8")  # exports once
    code = (f"import sys, qpairs; det = qpairs.load({str(tmp_path / 'run')!r}, device='cpu', "
            "backend='onnx-int8'); "
            "det.predict_proba('How do I learn Python?', 'Is Java hard?'); "
            "print(det.backend, sorted(m for m in ('onnx', 'transformers.models.bert.modeling_bert') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}).stdout
    assert out.strip() == "onnx-int8 []"
