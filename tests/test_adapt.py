"""qpairs adapt: refit calibration, threshold (and head) of a run on a user's own labelled pairs."""
import json

import numpy as np
import pandas as pd
import pytest

from conftest import make_pairs
from qpairs.cli import main


def site_pairs(n_dup, n_non, seed=5):
    """Generated pairs at a chosen duplicate rate (another site's mix)."""
    f = make_pairs(8 * (n_dup + n_non), seed=seed)
    return pd.concat([f[f.is_duplicate == 1].head(n_dup), f[f.is_duplicate == 0].head(n_non)]).sample(
        frac=1, random_state=0).reset_index(drop=True)


def test_adapt_moves_the_threshold_to_a_new_duplicate_rate(tiny_run, tmp_path, capsys):
    import qpairs

    data = tmp_path / "mine.parquet"
    mine = site_pairs(20, 180)  # duplicate rate 0.1, the run was calibrated at ~0.37
    mine.to_parquet(data)
    out = tmp_path / "run2"
    assert main(["adapt", str(tiny_run), "--data", str(data), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "before" in printed and "after (cross-validated)" in printed
    old, new = qpairs.load(tiny_run, device="cpu"), qpairs.load(out, device="cpu")
    q1, q2, y = list(mine["question1"]), list(mine["question2"]), mine["is_duplicate"].to_numpy()
    assert new.calibrator.prior == pytest.approx(0.1)
    assert new.predict(q1, q2).mean() < old.predict(q1, q2).mean()  # fewer pairs flagged at the rarer rate
    assert new.predict_proba(q1, q2).mean() == pytest.approx(0.1, abs=0.03)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["adapted_from"]["pairs"] == 200 and cfg["adapted_from"]["folds"] == 5
    assert cfg["adapted_from"]["run"] == str(tiny_run.resolve())
    m = json.loads((out / "metrics.json").read_text())["adapt"]
    assert m["after_cross_validated"]["log_loss"] < m["before"]["log_loss"]
    assert m["after_cross_validated"]["n"] == 200
    point = json.loads((out / "calibration.json").read_text())["operating_point"]
    assert point["measured_on"] == "5-fold cross-validation"
    assert point["precision"] == pytest.approx(m["after_cross_validated"]["precision"])
    for name in ("summary.txt", "before/reliability.png", "after/reliability.png", "after/roc.png"):
        assert (out / "report" / name).stat().st_size > 0
    # RUN2 is an ordinary run directory: score uses it unchanged
    scored = tmp_path / "scored.csv"
    assert main(["score", str(data), "-o", str(scored), "--model", str(out), "--device", "cpu"]) == 0
    probs = pd.read_csv(scored)["duplicate_probability"].to_numpy()
    assert np.allclose(probs, new.predict_proba(q1, q2), atol=1e-6)


def test_adapt_head_retrains_the_encoder_head_and_keeps_the_encoder(tiny_run, tmp_path):
    from safetensors.torch import load_file

    data = tmp_path / "mine.csv"
    site_pairs(60, 140).to_csv(data, index=False)
    out = tmp_path / "run2"
    assert main(["adapt", str(tiny_run), "--data", str(data), "-o", str(out), "--head", "--threshold", "f1"]) == 0
    before, after = load_file(tiny_run / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    changed = {k for k in before if not np.array_equal(before[k].numpy(), after[k].numpy())}
    assert changed and all(k.startswith("encoder.head.") for k in changed)
    m = json.loads((out / "metrics.json").read_text())["adapt"]
    assert m["head"] == "encoder" and m["threshold"] > 0
    assert m["after_cross_validated"]["roc_auc"] > m["before"]["roc_auc"]
    assert json.loads((out / "calibration.json").read_text())["operating_point"]["rule"] == "f1"


def test_adapt_head_on_a_pair_classifier(tmp_path):
    import torch

    from _tiny_models import tiny_lstm_dir
    from qpairs.adapt import adapt
    from qpairs.checkpoint import load_model, save_model
    from qpairs.losses import PairClassifier

    run = tiny_lstm_dir(tmp_path / "plain")
    model, _ = load_model(run)
    model.pair_head = PairClassifier(model.dim)
    save_model(model, tmp_path / "head_run")
    (tmp_path / "head_run" / "calibration.json").write_text((run / "calibration.json").read_text())
    data = tmp_path / "mine.csv"
    site_pairs(30, 70).to_csv(data, index=False)
    r = adapt(tmp_path / "head_run", [data], tmp_path / "run2", head=True, folds=3)
    tuned, _ = load_model(tmp_path / "run2")
    assert not torch.equal(tuned.pair_head.net.weight, model.pair_head.net.weight)
    assert torch.equal(tuned.encoder.lstm.weight_ih_l0, model.encoder.lstm.weight_ih_l0)
    assert r["after"]["n"] == 100


@pytest.mark.parametrize("dups,nons,needed", [(10, 30, "need at least 50 pairs"), (5, 95, "at least 10 of each class"),
                                              (0, 80, "0 duplicates")])
def test_adapt_refuses_small_or_one_sided_data(tiny_run, tmp_path, capsys, dups, nons, needed):
    data = tmp_path / "mine.csv"
    site_pairs(dups, nons).to_csv(data, index=False)
    assert main(["adapt", str(tiny_run), "--data", str(data), "-o", str(tmp_path / "run2")]) == 2
    err = capsys.readouterr().err
    assert needed in err and f"{dups + nons} labelled pairs" in err and str(data) in err
    assert not (tmp_path / "run2").exists()


def test_adapt_refuses_an_unreachable_precision(tiny_run, tmp_path, capsys):
    data = tmp_path / "mine.csv"
    site_pairs(40, 60).to_csv(data, index=False)
    assert main(["adapt", str(tiny_run), "--data", str(data), "-o", str(tmp_path / "run2"),
                 "--threshold", "precision:0.9999"]) == 2
    err = capsys.readouterr().err
    assert "precision 0.9999 is not reachable" in err and "fold 1 of 5" in err and "best precision" in err


def test_adapt_head_refuses_a_matching_head_by_name(tiny_bert, tmp_path, capsys):
    from _tiny_models import tiny_matching_dir

    run = tiny_matching_dir(tmp_path / "matching", tiny_bert)
    data = tmp_path / "mine.csv"
    site_pairs(30, 70).to_csv(data, index=False)
    assert main(["adapt", str(run), "--data", str(data), "-o", str(tmp_path / "out"), "--head"]) == 2
    err = capsys.readouterr().err
    assert "matching head compares the questions' token states" in err and "adapt without --head" in err
    assert not (tmp_path / "out").exists()
