import argparse
import os
import json
import subprocess
import sys

import pandas as pd
import pytest

import qpairs
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


def _train_help(capsys) -> str:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    return capsys.readouterr().out


def test_train_help_names_the_distance_each_loss_defaults_to(capsys):
    help_text = " ".join(_train_help(capsys).split())
    assert "(default: cosine for --loss online_contrastive, as sentence-transformers' OnlineContrastiveLoss; " \
           "euclidean otherwise)" in help_text


def test_train_help_is_grouped_with_choices_and_real_defaults(capsys):
    text = _train_help(capsys)
    for group in ("data:", "model:", "loss:", "optimisation and validation:", "output and run:"):
        assert f"\n{group}\n" in text
    assert "--encoder {lstm,transformer}" in text
    assert "--loss {contrastive,online_contrastive,triplet,mnrl}" in text
    assert "default: None" not in text and "(default: [])" not in text
    assert "--checkpoint-minutes" in text and "--num-workers" not in text
    model = text[text.index("\nmodel:\n"):text.index("\nloss:\n")]
    assert "--encoder" in model and "--hidden-size" in model and "--epochs" not in model
    with pytest.raises(SystemExit):
        main(["train", "--loss", "hinge"])
    assert "invalid choice: 'hinge'" in capsys.readouterr().err


def test_every_evaluate_option_has_help(capsys):
    from qpairs.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    ev = sub.choices["evaluate"]
    assert ev.description
    assert all(a.help for a in ev._actions), [a.dest for a in ev._actions if not a.help]


def test_evaluate_bundled_model_writes_to_the_working_directory(tiny_run, tmp_path, monkeypatch, capsys):
    """A run placed as the bundled model is read, never written: the report goes to ./qpairs-eval/."""
    import shutil

    import qpairs.detector

    package_model = tmp_path / "package" / "default_model"
    shutil.copytree(tiny_run, package_model, ignore=shutil.ignore_patterns("eval", "report", "last", "splits"))
    (package_model / "history.json").unlink()  # a model without a training history
    bundled = qpairs.detector.bundled_model_dir
    monkeypatch.setattr(qpairs.detector, "bundled_model_dir",
                        lambda name="default": package_model.resolve() if name == "default" else bundled(name))
    before = sorted(p.relative_to(package_model) for p in package_model.rglob("*"))
    data = tmp_path / "pairs.csv"
    make_pairs(120, seed=7).to_csv(data, index=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["evaluate", "--data", str(data), "--device", "cpu"]) == 0  # no RUN: the bundled model
    assert sorted(p.relative_to(package_model) for p in package_model.rglob("*")) == before
    report = work / "qpairs-eval" / "pairs"
    assert (report / "metrics.json").exists() and (report / "roc.png").exists()
    assert not (report / "training_curves.png").exists()
    printed = capsys.readouterr().out
    assert max(len(line) for line in printed.splitlines()) <= 100 and "qpairs-eval" in printed


def test_evaluate_accepts_options_in_any_order(tiny_run, tmp_path, capsys):
    data = tmp_path / "eval.csv"
    make_pairs(100, seed=8).to_csv(data, index=False)
    outs = [tmp_path / n for n in ("a", "b", "c")]
    assert main(["evaluate", "--data", str(data), str(tiny_run), "-o", str(outs[0]), "--device", "cpu"]) == 0
    assert main(["evaluate", "-o", str(outs[1]), "--device", "cpu", "--data", str(data), "--model", str(tiny_run)]) == 0
    assert main(["evaluate", str(tiny_run), "--device", "cpu", "--data", str(data), "--out", str(outs[2])]) == 0
    got = [json.loads((o / "metrics.json").read_text()) for o in outs]
    assert got[0]["n"] == 100 and got[0] == got[1] == got[2]
    assert (outs[0] / "training_curves.png").exists()  # the run has a training history


def test_missing_column_error_names_the_flags(tiny_run, tmp_path, capsys):
    data = tmp_path / "odd.csv"
    pd.DataFrame({"a": ["How?"], "b": ["Why?"], "is_duplicate": [1]}).to_csv(data, index=False)
    assert main(["score", str(data), "-o", str(tmp_path / "s.csv"), "--model", str(tiny_run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "no first-question column" in err and "--q1-col and --q2-col" in err and "--id-col" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command, frame, hint, absent", [
    ("train", {"a": ["How?"], "b": ["Why?"], "is_duplicate": [1]}, "rename the file's columns", "--q1-col"),
    ("evaluate", {"question1": ["How?"], "question2": ["Why?"]}, "name it with --label-col", "--id-col"),
])
def test_missing_column_error_names_only_options_the_command_has(command, frame, hint, absent, tmp_path, capsys):
    data = tmp_path / "odd.csv"
    pd.DataFrame(frame).to_csv(data, index=False)
    args = ["--out", str(tmp_path / "run")] if command == "train" else ["-o", str(tmp_path / "ev")]
    assert main([command, "--data", str(data), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"qpairs {command}: error: {data}: no ") and hint in err and absent not in err


def test_limits_are_stated_in_help_and_on_the_web_page(capsys):
    from pathlib import Path

    import qpairs

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "English text only" in capsys.readouterr().out and "Quora" in qpairs.cli.LIMITS
    page = (Path(qpairs.__file__).parent / "web" / "index.html").read_text()
    assert "English only" in page and "Quora" in page


def test_train_resume_keeps_the_runs_epochs_and_interrupt_is_one_line(tmp_path, monkeypatch, capsys, caplog):
    import qpairs.train

    data = tmp_path / "pairs.csv"
    make_pairs(200, seed=9).to_csv(data, index=False)
    flags = ["--data", str(data), "--out", str(tmp_path / "run"), "--no-glove", "--embedding-dim", "8",
             "--hidden-size", "8", "--projection-dim", "8", "--min-freq", "1", "--device", "cpu", "--no-progress"]
    assert main(["train", *flags, "--epochs", "1"]) == 0
    assert main(["train", *flags, "--resume"]) == 0  # no --epochs: the run's own 1, nothing left to train
    assert [h["epoch"] for h in json.loads((tmp_path / "run" / "history.json").read_text())] == [1]
    with caplog.at_level("WARNING", logger="qpairs"):  # settings that differ from the run's: said, not taken
        assert main(["train", *flags, "--resume", "--lr", "0.5", "--hidden-size", "16"]) == 0
    warning = next(r.getMessage() for r in caplog.records if "ignored:" in r.getMessage())
    assert "--hidden-size 16" in warning and "--lr 0.5" in warning and "--data" not in warning

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(qpairs.train, "train", interrupted)
    capsys.readouterr()
    assert main(["train", *flags]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--out {tmp_path / 'run'} --resume" in err


def test_models_print_as_short_readable_lines(tiny_run):
    import qpairs

    text = str(qpairs.load(tiny_run, device="cpu", backend="torch"))
    assert text == f"{tiny_run} (siamese lstm, cpu, torch)"


def test_console_command_exits_with_the_code_of_main(tmp_path):
    """`python -m qpairs` (the console command's entry, `qpairs.cli:run`): main's exit code, its error message."""
    ok = subprocess.run([sys.executable, "-m", "qpairs", "--version"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip()
    missing = tmp_path / "missing.csv"
    bad = subprocess.run([sys.executable, "-m", "qpairs", "score", str(missing), "-o", str(tmp_path / "o.csv")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "missing.csv" in bad.stderr


def test_console_command_leaves_complete_output_and_flushed_streams(tiny_run, tmp_path):
    """The console command exits without tearing torch down: its output file, its piped (block-buffered)
    stdout and its exit handlers still all complete."""
    pairs = tmp_path / "pairs.csv"
    make_pairs(300, seed=5).to_csv(pairs, index=False)
    out = tmp_path / "scored.csv"
    code = ("import atexit, pathlib, sys; atexit.register(pathlib.Path(sys.argv[1]).touch); "
            "sys.argv[1:2] = []; from qpairs.cli import run; run()")
    marker = tmp_path / "exit-handler-ran"
    done = subprocess.run([sys.executable, "-c", code, str(marker), "score", str(pairs), "-o", str(out),
                           "--model", str(tiny_run), "--device", "cpu"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "scored 300 pairs" in done.stdout + done.stderr and marker.exists()
    assert len(pd.read_csv(out)) == 300


@pytest.mark.parametrize("argv, message", [
    (["dedup", "q.csv", "-o", "d.csv", "-k", "0"], "expected a whole number of at least 1, got 0"),
    (["dedup", "q.csv", "-o", "d.csv", "--threshold", "1.5"], "expected a number in [0, 1], got 1.5"),
    (["score", "p.csv", "-o", "s.csv", "--batch-size", "0"], "expected a whole number of at least 1, got 0"),
    (["submit", "t.csv", "-o", "s.csv", "--batch-size", "-3"], "expected a whole number of at least 1, got -3"),
    (["index", "q.csv", "-o", "idx", "--batch-size", "x"], "expected a whole number of at least 1, got 'x'"),
    (["search", "idx", "q?", "-k", "0"], "expected a whole number of at least 1, got 0"),
    (["serve", "--port", "99999"], "expected a port number in [0, 65535], got 99999"),
    (["serve", "--max-wait-ms", "-5"], "expected a number in [0, 60000], got -5"),
    (["serve", "--threads", "-2"], "expected a whole number in [0, 1024], got -2"),
])
def test_counts_and_probabilities_out_of_range_are_refused_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_an_interrupted_score_says_how_to_resume_in_one_line(monkeypatch, tmp_path, capsys):
    import qpairs.scoring

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(qpairs.scoring, "score_file", interrupted)
    out = tmp_path / "my scores.csv"
    assert main(["score", "in.csv", "-o", str(out), "--model", "fast", "--chunk-size", "500"]) == 130
    err = capsys.readouterr().err.strip()  # the command as given, options and all, so that it can be pasted
    assert err == (f"qpairs score: interrupted; `qpairs score in.csv -o '{out}' --model fast --chunk-size 500 "
                   "--resume` continues from the last checkpoint")


def test_a_missing_column_error_survives_a_trip_between_processes():
    import pickle

    from qpairs.errors import MissingColumnError

    back = pickle.loads(pickle.dumps(MissingColumnError("f.csv: no label column", "label")))
    assert isinstance(back, MissingColumnError) and str(back) == "f.csv: no label column" and back.role == "label"


def test_evaluate_reports_of_two_versions_of_a_file_do_not_overwrite_and_a_file_is_no_report_folder(
        tiny_run, tmp_path, capsys):
    for name in ("q.v1.csv", "q.v2.csv.gz"):
        make_pairs(80, seed=7).to_csv(tmp_path / name, index=False)
        assert main(["evaluate", str(tiny_run), "--data", str(tmp_path / name), "--device", "cpu"]) == 0
    assert (tiny_run / "eval" / "q.v1" / "metrics.json").exists() and (tiny_run / "eval" / "q.v2" / "metrics.json").exists()
    (tmp_path / "afile").write_text("x")
    assert main(["evaluate", str(tiny_run), "--data", str(tmp_path / "q.v1.csv"), "-o", str(tmp_path / "afile"),
                 "--device", "cpu"]) == 2
    assert "afile is a file: the report goes into a folder" in capsys.readouterr().err
    twice = pd.concat([make_pairs(80, seed=7)] * 2)
    twice.to_csv(tmp_path / "twice.csv", index=False)
    assert main(["evaluate", str(tiny_run), "--data", str(tmp_path / "twice.csv"), "--device", "cpu"]) == 0
    assert "160 rows read; 80 repeated pairs merged" in capsys.readouterr().out


def test_evaluate_keeps_the_reports_of_same_named_files_apart_and_never_writes_into_a_model(tiny_run, tmp_path, capsys):
    import json

    for part, seed in (("a", 7), ("b", 8)):
        (tmp_path / part).mkdir()
        make_pairs(80, seed=seed).to_csv(tmp_path / part / "test.csv", index=False)
        assert main(["evaluate", str(tiny_run), "--data", str(tmp_path / part / "test.csv"), "--device", "cpu"]) == 0
    first, second = tiny_run / "eval" / "test", tiny_run / "eval" / "test-2"
    assert json.loads((first / "metrics.json").read_text())["data"] == [str(tmp_path / "a" / "test.csv")]
    assert json.loads((second / "metrics.json").read_text())["data"] == [str(tmp_path / "b" / "test.csv")]
    assert (second / "roc.png").exists()
    one_class = make_pairs(80, seed=8)
    one_class[one_class["is_duplicate"] == 1].to_csv(tmp_path / "b" / "test.csv", index=False)  # the file changes
    assert main(["evaluate", str(tiny_run), "--data", str(tmp_path / "b" / "test.csv"), "--device", "cpu"]) == 0
    assert not (second / "roc.png").exists()  # no ROC for one class: the earlier one is not left beside it
    before = (tiny_run / "metrics.json").read_text()
    assert main(["evaluate", str(tiny_run), "--data", str(tmp_path / "a" / "test.csv"), "-o", str(tiny_run),
                 "--device", "cpu"]) == 2
    assert "is a model folder" in capsys.readouterr().err and (tiny_run / "metrics.json").read_text() == before


def test_a_bundled_model_name_after_the_data_files_is_the_run(tmp_path):
    from qpairs.cli import _evaluate_run_dir

    data = tmp_path / "eval.csv"
    data.write_text("question1,question2,is_duplicate\na,b,1\n")
    args = argparse.Namespace(run=None, model=None, data=[str(data), "fast"])
    assert _evaluate_run_dir(args) == "fast" and args.data == [str(data)]
    (tmp_path / "fast").write_text("a data file that happens to be called fast\n")
    args = argparse.Namespace(run=None, model=None, data=[str(data), str(tmp_path / "fast")])
    assert _evaluate_run_dir(args) is None and len(args.data) == 2


def test_a_run_given_after_a_file_list_is_taken_as_the_run(capsys, tmp_path):
    from qpairs.cli import _trailing_runs

    data = tmp_path / "pairs.csv"
    data.write_text("question1,question2,is_duplicate\na?,b?,1\n")
    run = tmp_path / "run"
    run.mkdir()
    assert _trailing_runs([str(data), str(run), "fast"]) == ([str(data)], [str(run), "fast"])
    assert _trailing_runs([str(data), "fast"], 1) == ([str(data)], ["fast"])
    assert _trailing_runs(["fast"]) == (["fast"], [])  # a file list keeps one item
    assert main(["adapt", "--data", str(data), "-o", str(tmp_path / "out")]) == 2
    assert "no run to adapt: give RUN" in capsys.readouterr().err


def test_evaluate_refuses_its_report_folder_before_scoring(tmp_path, capsys, monkeypatch):
    import qpairs.detector

    monkeypatch.setattr(qpairs.detector, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "report.csv").write_text("")
    assert main(["evaluate", "fast", "--data", "data/sample_pairs.csv", "-o", str(tmp_path / "report.csv")]) == 2
    assert "is a file: the report goes into a folder" in capsys.readouterr().err


def test_training_lifts_only_the_isa_cap_qpairs_set(monkeypatch):
    """`import qpairs` caps oneDNN at AVX-512 BF16 (batch-invariant bf16 sums); `qpairs train` lifts that cap for its
    own steps, never a value the user chose."""
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    seen = subprocess.run([sys.executable, "-c", "import os, qpairs; print(os.environ['ONEDNN_MAX_CPU_ISA'])"],
                          env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert seen == qpairs._ISA_CAP
    monkeypatch.setattr(qpairs, "_ISA_CAPPED_HERE", True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", qpairs._ISA_CAP)
    assert qpairs._lift_isa_cap() and os.environ["ONEDNN_MAX_CPU_ISA"] == "ALL"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # the user's own choice stays
    assert not qpairs._lift_isa_cap() and os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    monkeypatch.setattr(qpairs, "_ISA_CAPPED_HERE", False)  # set by the user before the import, to the cap's value
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", qpairs._ISA_CAP)
    assert not qpairs._lift_isa_cap() and os.environ["ONEDNN_MAX_CPU_ISA"] == qpairs._ISA_CAP
