import json
import subprocess
import sys

import pytest

from qpairs.cli import main
from conftest import make_pairs


def test_help_is_instant_and_light():
    code = ("import sys; from qpairs.cli import build_parser; build_parser(); "
            "heavy = [m for m in ('torch', 'transformers', 'datasets', 'sklearn', 'pandas') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_train_help_lists_knobs(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--epochs", "--batch-size", "--lr", "--margin", "--max-length", "--seed", "--device", "--resume"):
        assert flag in text


def test_evaluate_writes_report(tiny_run, tmp_path, capsys):
    data = tmp_path / "eval.csv"
    make_pairs(200, seed=5).to_csv(data, index=False)
    out = tmp_path / "report"
    assert main(["evaluate", str(tiny_run), "--data", str(data), "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "roc_auc" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 200 and 0 <= metrics["accuracy"] <= 1
    assert (out / "roc.png").stat().st_size > 1000


def test_bad_input_is_a_clear_cli_error(tiny_run, tmp_path, capsys):
    data = tmp_path / "bad.csv"
    df = make_pairs(5).astype(str)
    df.loc[3, "question1"] = ""
    df.to_csv(data, index=False)
    assert main(["evaluate", str(tiny_run), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "bad.csv: row 4 (line 5), column 'question1'" in err


def test_missing_model_dir_is_a_clear_error(tmp_path, capsys):
    data = tmp_path / "d.csv"
    make_pairs(5).to_csv(data, index=False)
    assert main(["evaluate", str(tmp_path / "nope"), "--data", str(data)]) == 2
    assert "model directory not found" in capsys.readouterr().err


def test_evaluate_test_prior_reweights_before_the_threshold(tiny_run, tmp_path, capsys):
    data = tmp_path / "eval.csv"
    make_pairs(300, seed=6).to_csv(data, index=False)
    prior = json.loads((tiny_run / "calibration.json").read_text())["prior"]
    metrics = {}
    for name, extra in [("stored", []), ("same", ["--test-prior", str(prior)]),
                        ("low", ["--test-prior", "0.05"]), ("high", ["--test-prior", "0.95"])]:
        out = tmp_path / name
        assert main(["evaluate", str(tiny_run), "--data", str(data), "--out", str(out), "--device", "cpu", *extra]) == 0
        metrics[name] = json.loads((out / "metrics.json").read_text())
    assert metrics["same"]["accuracy"] == pytest.approx(metrics["stored"]["accuracy"])
    assert metrics["same"]["log_loss"] == pytest.approx(metrics["stored"]["log_loss"], rel=1e-6)
    assert metrics["high"]["test_prior"] == 0.95 and metrics["stored"]["test_prior"] is None
    # a higher duplicate rate calls more pairs duplicates: recall up, precision's denominator grows
    assert metrics["low"]["recall"] <= metrics["stored"]["recall"] <= metrics["high"]["recall"]
    assert metrics["low"]["recall"] < metrics["high"]["recall"]
    assert metrics["stored"]["roc_auc"] == pytest.approx(metrics["high"]["roc_auc"])  # ranking unchanged
    assert "re-weighted from duplicate rate" in capsys.readouterr().out
    assert main(["evaluate", str(tiny_run), "--data", str(data), "--test-prior", "1.5"]) == 2
    assert "--test-prior must be strictly between 0 and 1, got 1.5" in capsys.readouterr().err
