"""Operating points: the threshold rule chosen on validation, stored in calibration.json, checked by evaluate."""
import json

import numpy as np
import pytest

from conftest import make_pairs
from qpairs.calibration import Calibrator, choose_threshold
from qpairs.cli import main
from qpairs.operating_point import OperatingPointError, choose, parse_rule


def scores(n=2000, seed=0):
    """Distances of a decent detector: duplicates (rate 0.37) nearer than non-duplicates, overlapping."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.37).astype(int)
    return rng.normal(np.where(y == 1, 0.6, 1.4), 0.35), y


def reached(cal, d, y):
    pred = cal.predict(d)
    return (pred & (y == 1)).sum() / pred.sum(), (pred & (y == 1)).sum() / (y == 1).sum()


def test_precision_target_is_met_and_stored_with_its_recall():
    d, y = scores()
    cal = Calibrator().fit(d, y, "precision:0.95")
    precision, recall = reached(cal, d, y)
    assert precision >= 0.95
    assert cal.operating_point == {"rule": "precision:0.95", "precision": pytest.approx(precision),
                                   "recall": pytest.approx(recall), "n": len(y)}
    looser = Calibrator().fit(d, y)  # accuracy: a lower cut, more recall, less precision
    assert looser.threshold < cal.threshold and reached(looser, d, y)[0] < 0.95
    # the lowest such cut: flagging the next pair down breaks the target
    p = cal.predict_proba(d)
    nxt = np.max(p[p < cal.threshold])
    flagged = p >= nxt
    assert (flagged & (y == 1)).sum() / flagged.sum() < 0.95
    again = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert again.threshold == cal.threshold and again.operating_point == cal.operating_point


def test_recall_and_f1_rules():
    d, y = scores()
    cal = Calibrator().fit(d, y, "recall:0.9")
    assert reached(cal, d, y)[1] >= 0.9 and cal.operating_point["rule"] == "recall:0.9"
    p = cal.predict_proba(d)
    lowest = np.min(p[p >= cal.threshold])  # the highest such cut: raising it past the lowest flagged pair breaks it
    assert ((p > lowest) & (y == 1)).sum() / (y == 1).sum() < 0.9
    f1 = Calibrator().fit(d, y, "f1")
    assert f1.operating_point["rule"] == "f1" and f1.threshold < Calibrator().fit(d, y).threshold + 0.2


def test_accuracy_rule_is_the_old_threshold():
    d, y = scores(500, seed=3)
    p = Calibrator().fit(d, y).predict_proba(d)
    t = choose_threshold(p, y)
    best = max(np.mean((p >= c) == y) for c in np.unique(np.concatenate([p, [np.inf]])))
    assert np.mean((p >= t) == y) == pytest.approx(best)
    assert choose(p, y, "accuracy")[0] == t


def test_unreachable_precision_is_refused_naming_the_best():
    d, y = scores()
    weak = d + np.random.default_rng(1).normal(0, 3.0, len(d))  # a poor detector: its top pairs are mixed
    with pytest.raises(OperatingPointError, match=r"precision 0\.999 is not reachable .* best precision .* is 0\.\d{4}"):
        Calibrator().fit(weak, y, "precision:0.999")


@pytest.mark.parametrize("bad", ["precision", "precision:1.5", "recall:abc", "speed", "f1:0.3"])
def test_bad_rules_are_refused(bad):
    with pytest.raises(ValueError, match="--threshold"):
        parse_rule(bad)


def test_old_calibration_files_still_load():
    old = {"method": "platt", "params": {"coef": -3.0, "intercept": 2.0}, "threshold": 0.41, "prior": 0.37}
    cal = Calibrator.from_dict(old)
    assert cal.operating_point is None and cal.threshold == 0.41 and cal.to_dict() == old


def _train(tmp_path, threshold):
    data = tmp_path / "pairs.csv"
    make_pairs(600, seed=1).to_csv(data, index=False)
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), "--data", str(data), "--epochs", "2", "--batch-size", "32",
                 "--no-glove", "--embedding-dim", "16", "--hidden-size", "16", "--projection-dim", "16",
                 "--min-freq", "1", "--device", "cpu", "--no-progress", "--threshold", threshold])
    return code, out


def test_train_stores_a_reachable_precision_target_and_evaluate_reports_it(tmp_path, capsys):
    code, run = _train(tmp_path, "precision:0.45")
    assert code == 0
    cal = json.loads((run / "calibration.json").read_text())
    point = cal["operating_point"]
    assert point["rule"] == "precision:0.45" and point["precision"] >= 0.45 and 0 < point["recall"] <= 1
    import pandas as pd

    import qpairs

    val = pd.read_csv(run / "splits" / "validation.csv.gz")
    pred = qpairs.load(run, device="cpu").predict(list(val["question1"]), list(val["question2"]))
    y = val["is_duplicate"].to_numpy() == 1
    assert (pred & y).sum() / pred.sum() == pytest.approx(point["precision"], abs=1e-6)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "ev"),
                 "--device", "cpu"]) == 0
    assert "operating point precision:0.45" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["promised_precision"] == pytest.approx(point["precision"]) and "precision" in metrics


def test_train_refuses_an_unreachable_precision_target(tmp_path, capsys):
    code, run = _train(tmp_path, "precision:0.999")
    assert code == 2
    err = capsys.readouterr().err
    assert "precision 0.999 is not reachable" in err and "best precision" in err and len(err.strip().splitlines()) == 1


def test_a_cut_that_flags_nothing_promises_no_precision():
    """All-negative validation data: the accuracy cut flags nothing, so it promises precision 0 (as the metrics
    count an empty prediction), not a perfect 1.0."""
    p = np.array([0.1, 0.2, 0.3, 0.4])
    threshold, point = choose(p, np.zeros(4, dtype=int), "accuracy")
    assert threshold > p.max()
    assert point["precision"] == 0.0 and point["recall"] == 0.0
