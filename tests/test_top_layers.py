"""--train-top-layers N: the bottom layers' output cached once, the top N layers and the head trained on it."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import make_pairs, make_tiny_bert

LAYERS = 3
TOL = 1e-3  # the cache holds the lower layer's states in float16; inference runs them in float32


@pytest.fixture(scope="module")
def tiny_bert3(tmp_path_factory):
    """A tiny random 3-layer BertModel with the MiniLM tokenizer in a directory (no hub)."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert3"), LAYERS)


@pytest.fixture
def fp32_cache(monkeypatch):
    """Fill caches in fp32 on every CPU (bf16 autocast would round the cached states beyond fp16's)."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)


def _train_args(base, data, run, *extra):
    return ["train", "--train-top-layers", "1", "--base-model", str(base), "--data", str(data), "--out", str(run),
            "--epochs", "1", "--batch-size", "32", "--max-length", "32", "--lr", "1e-3", "--device", "cpu",
            "--no-progress", *extra]


def _data(tmp_path, n=300):
    path = tmp_path / "pairs.csv"
    make_pairs(n, seed=3).to_csv(path, index=False)
    return path


def _base_state(base):
    from qpairs.encoders import load_base

    return load_base(str(base)).state_dict()


def _validation_probabilities(run, det):
    """The probabilities of the run's validation pairs as training's validation computes them: the top layers
    and the head on the cached lower-layer states, through the run's calibrator."""
    from qpairs.checkpoint import load_model
    from qpairs.config import TrainConfig
    from qpairs.objective import Objective
    from qpairs.train import base_cache, validate_and_calibrate

    cfg = TrainConfig(**json.loads((run / "config.json").read_text())["train"]).resolved()
    val = pd.read_csv(run / "splits" / "validation.csv.gz")
    model, _ = load_model(run)
    cache = base_cache(cfg, model, run, (val,), torch.device("cpu"), False)
    assert len(cache.cache.missing(list(val["question1"]) + list(val["question2"]))) == 0  # filled in training
    _, _, d = validate_and_calibrate(model, Objective(cfg, val, None, torch.device("cpu"), cache), val,
                                     cfg.batch_size, cfg.calibration, cfg.threshold)
    return val, det.calibrator.predict_proba(d)


@pytest.fixture(scope="module")
def tiny_mpnet3(tmp_path_factory):
    """A tiny random 3-layer MPNetModel: its layers also take the encoder's relative-position bias."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_mpnet3"), LAYERS, kind="mpnet")


@pytest.mark.parametrize("base", ["tiny_bert3", "tiny_mpnet3"])
def test_bottom_layers_then_top_layers_give_the_full_model(base, request):
    from qpairs.encoders import build_encoder

    enc = build_encoder({"type": "transformer", "pooling": "mean", "max_length": 32,
                         "base_model": str(request.getfixturevalue(base)), "train_top_layers": 2}).eval()
    from qpairs.toplayers import layer_prefixes

    assert enc.cut == 1 and layer_prefixes(enc.model, enc.top_layers) == ["encoder.layer.1.", "encoder.layer.2."]
    trainable = {n.split(".")[3] for n, p in enc.named_parameters() if p.requires_grad and n.startswith("model.")}
    assert trainable == {"1", "2"}  # embeddings, layer 0 and the pooler stay frozen
    batch = enc.tokenize(["Hi?", "What is the best way to learn python in a week or two?"])  # padded rows
    with torch.no_grad():
        low = enc.token_states(**batch, layer=enc.cut)
        mask = batch["attention_mask"].bool()
        torch.testing.assert_close(enc.top_states(low, batch["attention_mask"])[mask], enc.token_states(**batch)[mask])


@pytest.mark.parametrize("pair_head", ["none", "matching"])
def test_train_top_layers_trains_the_top_only_and_scores_as_validation(tiny_bert3, tmp_path, fp32_cache, pair_head):
    from qpairs import load
    from qpairs.cli import main

    run = tmp_path / "run"
    extra = ["--pair-head", pair_head, "--distance", "cosine"] if pair_head == "matching" else []
    assert main(_train_args(tiny_bert3, _data(tmp_path), run, *extra)) == 0

    # (a) the run stores the top layer and the head only; the bottom layers are the base's, the top one moved
    saved = load_file(run / "model.safetensors")
    base_keys = {k.split(".", 2)[2] for k in saved if k.startswith("encoder.model.")}
    assert base_keys and all(k.startswith(f"encoder.layer.{LAYERS - 1}.") for k in base_keys)
    det = load(run, device="cpu", backend="torch")
    state, base = det.model.encoder.model.state_dict(), _base_state(tiny_bert3)
    assert set(state) == set(base)
    top = f"encoder.layer.{LAYERS - 1}."
    assert all(torch.equal(state[k], v) for k, v in base.items() if not k.startswith(top))
    assert not torch.equal(state[top + "attention.self.query.weight"], base[top + "attention.self.query.weight"])
    assert not torch.equal(state[top + "output.dense.weight"], base[top + "output.dense.weight"])

    # (b) inference (torch, ONNX, `qpairs score`) gives the probabilities training's validation computed
    val, at_training = _validation_probabilities(run, det)
    q1, q2 = list(val["question1"]), list(val["question2"])
    np.testing.assert_allclose(det.predict_proba(q1, q2), at_training, rtol=0, atol=TOL)
    onnx = load(run, device="cpu", backend="onnx")
    np.testing.assert_allclose(onnx.predict_proba(q1, q2), at_training, rtol=0, atol=TOL)
    val[["question1", "question2"]].to_csv(tmp_path / "in.csv", index=False)
    assert main(["score", str(tmp_path / "in.csv"), "--model", str(run), "--output", str(tmp_path / "out.csv"),
                 "--device", "cpu", "--backend", "torch"]) == 0
    scored = pd.read_csv(tmp_path / "out.csv")["duplicate_probability"]
    np.testing.assert_allclose(scored, at_training, rtol=0, atol=TOL)
    history = json.loads((run / "history.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    weight = json.loads((run / "config.json").read_text()).get("pair_head", {}).get("cosine_weight", 0.0)
    if weight == 0.0:
        assert history[0]["val_log_loss"] == pytest.approx(metrics["validation"]["log_loss"], abs=1e-4)
    else:  # a matching head's cosine weight, fitted on validation after the epoch (which ran at 0)
        assert metrics["validation"]["log_loss"] < history[0]["val_log_loss"]

    # (c) the cache holds layer L−1's output, and a last-layer cache is never read from it
    meta = json.loads((run / "embedding_cache" / "meta.json").read_text())
    assert meta["kind"] == "token_states" and meta["layer"] == LAYERS - 1
    from qpairs.tokencache import open_token_cache

    with pytest.raises(ValueError, match="token-state cache was made with"):
        open_token_cache(det.model.encoder, run / "embedding_cache", precision="fp32")


def test_train_top_layers_resumes_without_refilling_the_cache(tiny_bert3, tmp_path, fp32_cache, caplog):
    from qpairs.cli import main

    run = tmp_path / "run"
    assert main(_train_args(tiny_bert3, _data(tmp_path), run)) == 0
    top = load_file(run / "last" / "model.safetensors")
    caplog.clear()
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2", "--device", "cpu", "--no-progress"]) == 0
    assert "with the frozen base" not in caplog.text  # the cache of the first epoch serves the resumed run
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    resumed = load_file(run / "last" / "model.safetensors")
    assert set(resumed) == set(top) and any(not torch.equal(resumed[k], top[k]) for k in top)  # trained on
    assert json.loads((run / "config.json").read_text())["encoder"]["train_top_layers"] == 1


@pytest.mark.parametrize("n", [str(LAYERS), "-1"])
def test_bad_number_of_top_layers_is_a_one_line_error_naming_the_layers(tiny_bert3, tmp_path, capsys, n):
    from qpairs.cli import main

    args = _train_args(tiny_bert3, _data(tmp_path, 80), tmp_path / "run")
    args[args.index("--train-top-layers") + 1] = n
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"the base has {LAYERS} layers" in err and f"got {n}" in err
    assert not (tmp_path / "run").exists()  # refused before the data is read
    assert main([*args[:2], "1", *args[3:], "--freeze-base"]) == 2
    assert "exclusive" in capsys.readouterr().err


def test_init_from_a_frozen_base_run_starts_the_top_layers_at_its_head(tiny_bert3, tmp_path, fp32_cache):
    """--freeze-base, then --train-top-layers --init-from it: at --lr 0 the second run is the first one."""
    from qpairs.cli import main

    data, head = _data(tmp_path), tmp_path / "head"
    matching = ["--pair-head", "matching", "--distance", "cosine", "--head", "residual", "--projection-dim", "32"]
    frozen = _train_args(tiny_bert3, data, head, *matching)
    frozen[1:3] = ["--freeze-base", "--encoder", "transformer"]
    assert main(frozen) == 0
    run = tmp_path / "top"
    assert main(_train_args(tiny_bert3, data, run, *matching, "--init-from", str(head), "--lr", "0")) == 0
    start, kept = load_file(head / "model.safetensors"), load_file(run / "model.safetensors")
    assert set(start) < set(kept) and any(k.startswith("encoder.model.") for k in kept)
    for k in start:  # the head and the pair head as the frozen run left them (--lr 0 moved nothing)
        torch.testing.assert_close(kept[k], start[k])
    before = json.loads((head / "history.json").read_text())[-1]
    after = json.loads((run / "history.json").read_text())[0]
    assert after["val_log_loss"] == pytest.approx(before["val_log_loss"], abs=1e-3)
    assert json.loads((run / "config.json").read_text())["train"]["init_from"] == str(head)


def test_init_from_refuses_a_run_that_does_not_fit_or_may_have_seen_the_held_out_pairs(tiny_bert3, tmp_path,
                                                                                      fp32_cache, capsys):
    from qpairs.cli import main

    data, head, top2 = _data(tmp_path), tmp_path / "head", tmp_path / "top2"
    matching = ["--pair-head", "matching", "--distance", "cosine", "--matching-dim", "16"]
    frozen = _train_args(tiny_bert3, data, head, *matching)
    frozen[1:3] = ["--freeze-base", "--encoder", "transformer"]
    assert main(frozen) == 0
    assert main(_train_args(tiny_bert3, data, top2, *matching, "--train-top-layers", "2")) == 0
    cases = [  # (the second run's options, what its one-line refusal says)
        (["--matching-dim", "32", "--init-from", str(head)], "do not fit this model"),
        (["--pooling", "max", "--init-from", str(head)], "built otherwise (encoder pooling 'mean' there, 'max' here)"),
        (["--seed", "1", "--init-from", str(head)], "not held out by the --init-from run"),
        (["--init-from", str(top2)], "trained layers this model keeps frozen"),
        (["--init-from", "matching"], "a bundled model keeps no held-out splits"),
        (["--init-from", str(tmp_path / "nowhere")], "config.json is missing"),
    ]
    for n, (extra, says) in enumerate(cases):
        out = tmp_path / f"refused{n}"
        assert main(_train_args(tiny_bert3, data, out, *matching, *extra)) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and says in err, (extra, err)
        assert not (out / "embedding_cache").exists()  # refused before the cache is filled


def test_init_from_refuses_a_bilstm_whose_vocabulary_is_its_own():
    from qpairs.config import TrainConfig

    with pytest.raises(ValueError, match="--init-from takes transformer encoders"):
        TrainConfig(encoder="lstm", init_from="runs/x").resolved()
    TrainConfig(encoder="transformer", init_from="runs/x").resolved()  # checked when the run starts


def test_pseudo_towers_train_their_own_top_layers_over_one_cache(tiny_bert3, tmp_path, fp32_cache):
    from qpairs import load
    from qpairs.cli import main

    run = tmp_path / "run"
    assert main(_train_args(tiny_bert3, _data(tmp_path), run, "--variant", "pseudo", "--right-max-length", "32",
                            "--right-pooling", "max", "--right-lr", "2e-3")) == 0
    saved = load_file(run / "model.safetensors")
    for side in ("encoder", "right_encoder"):
        keys = {k.split(".", 2)[2] for k in saved if k.startswith(f"{side}.model.")}
        assert keys and all(k.startswith(f"encoder.layer.{LAYERS - 1}.") for k in keys)
    top = f"model.encoder.layer.{LAYERS - 1}.output.dense.weight"
    left, right = saved["encoder." + top], saved["right_encoder." + top]
    assert not torch.equal(left, right)  # each tower trained its own top layer
    assert len(list((run / "embedding_cache").glob("part-*.json"))) == 1  # one cache of the shared bottom
    det = load(run, device="cpu", backend="torch")
    val, at_training = _validation_probabilities(run, det)
    np.testing.assert_allclose(det.predict_proba(list(val["question1"]), list(val["question2"])), at_training,
                               rtol=0, atol=TOL)


def test_pseudo_top_layers_need_transformer_towers(tiny_bert3, tmp_path):
    from qpairs.config import TrainConfig
    from qpairs.train import train

    cfg = TrainConfig(out=str(tmp_path / "run"), data=[str(_data(tmp_path, 80))], train_top_layers=1,
                      base_model=str(tiny_bert3), variant="pseudo", right_encoder="lstm", epochs=1, device="cpu",
                      progress=False)
    with pytest.raises(ValueError, match="needs transformer towers"):
        train(cfg)


def test_top_layer_view_reuses_a_batch_run_only_while_the_weights_stand(tiny_bert3):
    from qpairs.encoders import build_encoder
    from qpairs.tokencache import TopLayerView, open_token_cache

    enc = build_encoder({"type": "transformer", "pooling": "mean", "max_length": 32, "base_model": str(tiny_bert3),
                         "train_top_layers": 1}).eval()
    texts = list(dict.fromkeys(make_pairs(20)["question1"]))[:6]
    view = TopLayerView(open_token_cache(enc, None, precision="fp32", layer=enc.cut), enc)
    view.fill(enc, texts, progress=False)
    both = view.lookup(texts)  # one run of the top layer over a batch of both sides
    left, mask = view.lookup_states(texts[:2])  # the first rows of that run, cut to their own width
    assert left.shape[1] == int(mask.sum(1).max())
    fresh = TopLayerView(view.cache, enc)
    torch.testing.assert_close(left[mask], fresh.lookup_states(texts[:2])[0][mask])
    torch.testing.assert_close(both, fresh.lookup(texts))
    with torch.no_grad():
        enc.top_layers[0].output.dense.weight.add_(1.0)  # an optimizer step: the last run is stale
    moved, _ = view.lookup_states(texts[:2])
    assert not torch.allclose(moved[mask], left[mask])
    torch.testing.assert_close(moved[mask], TopLayerView(view.cache, enc).lookup_states(texts[:2])[0][mask])


def test_trained_top_layers_drop_no_attention_probabilities(tiny_bert3):
    """Attention dropout would force attention off the fused CPU kernel; the other dropouts stay."""
    from qpairs.encoders import build_encoder

    enc = build_encoder({"type": "transformer", "pooling": "mean", "max_length": 32, "base_model": str(tiny_bert3),
                         "train_top_layers": 1})
    layers = enc.model.encoder.layer
    p = enc.model.config.attention_probs_dropout_prob
    assert p > 0 and layers[-1].attention.self.dropout.p == 0.0
    assert [layer.attention.self.dropout.p for layer in layers[:-1]] == [p] * (LAYERS - 1)
    assert layers[-1].output.dropout.p == enc.model.config.hidden_dropout_prob > 0


def test_mpnet_top_layers_drop_no_attention_probabilities(tiny_mpnet3):
    from qpairs.encoders import build_encoder

    enc = build_encoder({"type": "transformer", "pooling": "mean", "max_length": 32, "base_model": str(tiny_mpnet3),
                         "train_top_layers": 1})
    layers = enc.model.encoder.layer
    assert layers[-1].attention.attn.dropout.p == 0.0 < layers[0].attention.attn.dropout.p


@pytest.mark.parametrize("variant", ["siamese", "pseudo"])
def test_top_layers_lr_sets_the_trained_layers_apart_from_the_head(tiny_bert3, variant):
    from qpairs.builders import build_model, build_pseudo_model, param_groups
    from qpairs.config import TrainConfig

    cfg = TrainConfig(encoder="transformer", base_model=str(tiny_bert3), train_top_layers=1, lr=1e-3,
                      top_layers_lr=5e-5, variant=variant, right_lr=2e-3, head="residual",
                      projection_dim=32).resolved()
    texts = pd.DataFrame({"question1": ["a title"], "question2": ["a body"]})
    model = build_pseudo_model(cfg, texts) if variant == "pseudo" else build_model(cfg, None)
    groups = param_groups(model, cfg)
    top = {id(p) for tower in (model.encoder, model.right_encoder) if tower is not None
           for layer in tower.top_layers for p in layer.parameters()}
    layer_groups = [g for g in groups if g["lr"] == 5e-5]
    assert len(layer_groups) == (2 if variant == "pseudo" else 1)
    assert {id(p) for g in layer_groups for p in g["params"]} == top
    rest = [g for g in groups if g["lr"] != 5e-5]
    assert sorted(g["lr"] for g in rest) == ([1e-3, 2e-3] if variant == "pseudo" else [1e-3])
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    assert not {id(p) for g in rest for p in g["params"]} & top
    cfg.top_layers_lr = None  # without it one rate per tower, as before
    assert [g["lr"] for g in param_groups(model, cfg)] == ([1e-3, 2e-3] if variant == "pseudo" else [1e-3])
    with pytest.raises(ValueError, match="give --train-top-layers N with it"):
        TrainConfig(encoder="transformer", freeze_base=True, top_layers_lr=5e-5).resolved()


@pytest.mark.parametrize("supported, bf16, on", [(True, True, True), (True, False, False), (False, True, False)])
def test_bf16_training_steps_autocast_only_where_the_cpu_has_bf16(monkeypatch, supported, bf16, on):
    from qpairs.objective import step_autocast

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: supported)
    with step_autocast(torch.device("cpu"), bf16):
        assert torch.is_autocast_enabled("cpu") is on
        y = torch.nn.Linear(8, 8)(torch.ones(2, 8))
    assert y.dtype == (torch.bfloat16 if on else torch.float32)


@pytest.mark.parametrize("supported", [True, False])
def test_bf16_asked_on_a_cpu_without_it_says_the_steps_run_in_fp32(monkeypatch, caplog, supported):
    from qpairs.config import TrainConfig
    from qpairs.train import warn_if_bf16_is_slow

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: supported)
    with caplog.at_level("WARNING", logger="qpairs"):
        warn_if_bf16_is_slow(TrainConfig(bf16=True), torch.device("cpu"))
        warn_if_bf16_is_slow(TrainConfig(bf16=False), torch.device("cpu"))
    warned = [r.getMessage() for r in caplog.records if "--bf16" in r.getMessage()]
    if supported:
        assert warned == []
    else:  # one line, for the run that asked for bf16
        assert len(warned) == 1 and "training steps run in float32" in warned[0]


def test_bf16_training_runs_its_steps_in_bf16_and_validates_in_fp32(tiny_bert3, tmp_path, fp32_cache, monkeypatch):
    from contextlib import nullcontext

    import qpairs.objective as objective
    from qpairs import load
    from qpairs.cli import main

    # the cache fills in fp32 (fp32_cache); --bf16 reaches the steps' autocast, which runs bf16 on any CPU here
    monkeypatch.setattr(objective, "step_autocast", lambda device, bf16: torch.autocast("cpu", dtype=torch.bfloat16)
                        if bf16 else nullcontext())
    data = _data(tmp_path)
    runs = {flag: tmp_path / f"run{flag}" for flag in ("", "--bf16")}
    for flag, run in runs.items():
        assert main(_train_args(tiny_bert3, data, run, *([flag] if flag else []))) == 0
    h = {f: json.loads((r / "history.json").read_text())[0]["train_loss"] for f, r in runs.items()}
    assert h[""] != h["--bf16"]  # the steps ran in another precision
    assert json.loads((runs["--bf16"] / "config.json").read_text())["train"]["bf16"] is True
    det = load(runs["--bf16"], device="cpu", backend="torch")
    val, at_training = _validation_probabilities(runs["--bf16"], det)  # validation: fp32, as inference
    np.testing.assert_allclose(det.predict_proba(list(val["question1"]), list(val["question2"])), at_training,
                               rtol=0, atol=TOL)
