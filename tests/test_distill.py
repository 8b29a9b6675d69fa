"""`qpairs train --teacher RUN`: the teacher scores the training pairs, the student learns soft targets."""
import json
import logging

import numpy as np
import pandas as pd
import pytest

import qpairs
import qpairs.train as qt
from qpairs import data as qd
from qpairs.cli import main
from qpairs.config import TrainConfig
from qpairs.distill import TEACHER_LABELS, TeacherLeakError, check_teacher_split
from qpairs.checkpoint import model_fingerprint
from qpairs.train import train
from conftest import make_pairs
from test_train import _tiny_cfg, interrupted_run


def _cfg(out, data, **kw):
    return _tiny_cfg(out.parent, data, **{"out": str(out), "epochs": 1, **kw})


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """(teacher run directory, its data file): a tiny BiLSTM trained on generated pairs with seed 0."""
    tmp = tmp_path_factory.mktemp("teacher")
    data = tmp / "pairs.csv"
    make_pairs(300, seed=2).to_csv(data, index=False)
    return train(_cfg(tmp / "teacher", data)), data


@pytest.fixture
def seen(monkeypatch):
    """{'train': the training frame the last `train` call handed to its objective}."""
    seen = {}
    real_objective = qt.Objective

    def recording(cfg, train_df, *args):
        seen["train"] = train_df
        return real_objective(cfg, train_df, *args)

    monkeypatch.setattr(qt, "Objective", recording)
    return seen


def test_student_learns_the_teachers_soft_targets(teacher, tmp_path, seen):
    run, data = teacher
    student = train(_cfg(tmp_path / "student", data, teacher=str(run), distill_weight=0.25))

    labels = pd.read_csv(student / TEACHER_LABELS, keep_default_na=False)
    det = qpairs.load(run, device="cpu", backend="torch")
    expected = det.predict_proba(labels["question1"].tolist(), labels["question2"].tolist())
    np.testing.assert_allclose(labels["teacher_probability"], expected, atol=1e-9)
    splits, _ = qd.make_splits(qd.load_pairs([str(data)]), seed=0, eval_rate=TrainConfig.eval_rate)
    assert len(labels) == len(splits["train"])  # every training pair, no validation or test pair
    keys = lambda f: {qd.pair_key(a, b) for a, b in zip(f["question1"], f["question2"])}  # noqa: E731
    assert not (keys(splits["validation"]) | keys(splits["test"])) & keys(labels)

    p = dict(zip(zip(labels["question1"], labels["question2"]), labels["teacher_probability"]))
    frame = seen["train"]
    for _, row in frame.head(10).iterrows():
        target = 0.75 * row["is_duplicate"] + 0.25 * p[(row["question1"], row["question2"])]
        assert row["target"] == pytest.approx(target)
    assert frame["target"].ne(frame["is_duplicate"]).any()

    saved = json.loads((student / "config.json").read_text())["train"]
    assert saved["teacher"] == str(run)
    assert saved["teacher_fingerprint"] == model_fingerprint(det)


def test_teacher_that_may_have_seen_the_students_held_out_pairs_is_refused(teacher, tmp_path, capsys):
    run, data = teacher
    out = tmp_path / "student"
    rc = main(["train", "--out", str(out), "--data", str(data), "--teacher", str(run), "--seed", "1",
               "--epochs", "1", "--no-glove", "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "of this run's" in err and "validation/test pairs are not held out by the teacher" in err
    assert not (out / TEACHER_LABELS).exists()


def test_teacher_without_saved_splits_needs_teacher_unchecked(tmp_path, caplog):
    from _tiny_models import tiny_lstm_dir

    bare = tiny_lstm_dir(tmp_path / "bare")
    held_out = [make_pairs(20)]
    with pytest.raises(TeacherLeakError, match="no saved splits .* --teacher-unchecked"):
        check_teacher_split(bare, held_out)
    with caplog.at_level(logging.WARNING, logger="qpairs"):
        check_teacher_split(bare, held_out, unchecked=True)
    assert "may have trained on this run's validation or test pairs" in caplog.text


def test_teacher_and_teacher_labels_are_exclusive(teacher, tmp_path, capsys):
    run, data = teacher
    rc = main(["train", "--out", str(tmp_path / "s"), "--data", str(data), "--teacher", str(run),
               "--teacher-labels", str(data), "--device", "cpu"])
    assert rc == 2
    assert "--teacher and --teacher-labels are exclusive" in capsys.readouterr().err
    with pytest.raises(ValueError, match="title/body data"):
        TrainConfig(teacher=str(run), left_col="title", right_col="body").resolved()


def test_resume_reuses_the_saved_teacher_labels(teacher, tmp_path, monkeypatch):
    run, data = teacher
    interrupted_run(monkeypatch, _cfg(tmp_path / "student", data, teacher=str(run), epochs=2, patience=5))
    labels = (tmp_path / "student" / TEACHER_LABELS).read_bytes()

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was loaded again on resume")

    monkeypatch.setattr(qpairs, "load", no_teacher)
    student = train(TrainConfig(out=str(tmp_path / "student"), resume=True, epochs=None, device="cpu", progress=False))
    assert (student / TEACHER_LABELS).read_bytes() == labels
    assert [h["epoch"] for h in json.loads((student / "history.json").read_text())] == [1, 2]
    assert json.loads((student / "metrics.json").read_text())["test"]


def test_teacher_scores_only_the_training_pairs_that_are_kept(teacher, tmp_path, seen):
    run, data = teacher
    student = train(_cfg(tmp_path / "student", data, teacher=str(run), max_train_pairs=40))

    labels = pd.read_csv(student / TEACHER_LABELS, keep_default_na=False)
    keys = lambda f: {qd.pair_key(a, b) for a, b in zip(f["question1"], f["question2"])}  # noqa: E731
    assert len(seen["train"]) == 40
    assert keys(labels) == keys(seen["train"])  # the 40 kept pairs, not the whole training split
    assert seen["train"]["target"].ne(seen["train"]["is_duplicate"]).all()  # every kept pair got a soft target
