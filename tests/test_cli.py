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
