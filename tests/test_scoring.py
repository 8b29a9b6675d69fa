"""`qpairs score` / `score_file`: columns, order, formats, bad rows, temp file + rename, resume."""
from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

import qpairs
from _tiny_models import tiny_lstm_dir
from conftest import make_pairs
from qpairs.cli import main
from qpairs.data import DataError
from qpairs.scoring import PROBA_COL, PRED_COL, PairScorer, score_file, score_frame


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    return qpairs.load(tiny_lstm_dir(tmp_path_factory.mktemp("model") / "m"), device="cpu")


def kaggle_test_frame(n: int = 300, seed: int = 5) -> pd.DataFrame:
    pairs = make_pairs(n, seed=seed)
    # repeat some questions so the unique-text cache matters
    pairs.loc[pairs.index % 4 == 0, "question2"] = pairs["question1"].iloc[0]
    return pd.DataFrame({"test_id": np.arange(n), "question1": pairs["question1"], "question2": pairs["question2"]})


def write(frame: pd.DataFrame, path) -> None:
    name = str(path)
    if name.endswith(".parquet"):
        frame.to_parquet(path, index=False)
    elif name.endswith((".tsv", ".tsv.gz")):
        frame.to_csv(path, index=False, sep="\t")
    else:
        frame.to_csv(path, index=False)


def read(path) -> pd.DataFrame:
    name = str(path)
    if name.endswith(".parquet"):
        return pd.read_parquet(path)
    sep = "\t" if name.endswith((".tsv", ".tsv.gz")) else ","
    return pd.read_csv(path, sep=sep, dtype={"test_id": str, "id": str}, keep_default_na=False, na_values={
        PROBA_COL: [""], PRED_COL: [""]})


def test_score_keeps_columns_and_order_and_matches_the_detector(det, tmp_path):
    frame = kaggle_test_frame()
    frame["extra"] = [f"x{i}" for i in range(len(frame))]
    write(frame, tmp_path / "in.csv")
    r = score_file(tmp_path / "in.csv", tmp_path / "out.csv", det, chunk_size=64, progress=False)
    out = read(tmp_path / "out.csv")
    assert list(out.columns) == list(frame.columns) + [PROBA_COL, PRED_COL]
    assert out["test_id"].tolist() == [str(i) for i in range(len(frame))]
    assert out["extra"].tolist() == frame["extra"].tolist()
    expected = det.predict_proba(list(frame["question1"]), list(frame["question2"]))
    np.testing.assert_allclose(out[PROBA_COL], expected, rtol=1e-4, atol=1e-5)
    assert ((out[PROBA_COL] >= det.threshold).astype(int) == out[PRED_COL]).all()
    assert r["rows"] == len(frame) and r["bad_rows"] == 0 and r["id_col"] == "test_id"
    assert 0 < r["cache_hit_rate"] < 1  # repeated questions were not encoded twice


@pytest.mark.parametrize("dst", ["out.xlsx", "out.json", "out", "out.parquet.bz2x", "out.csv.bz2", "out.tsv.xz"])
def test_an_output_name_without_a_format_is_refused_before_any_work(det, tmp_path, dst):
    write(kaggle_test_frame(5), tmp_path / "in.csv")
    with pytest.raises(ValueError, match="the output's name gives its format"):
        score_file(tmp_path / "in.csv", tmp_path / dst, det, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


@pytest.mark.parametrize("src,dst", [("in.tsv", "out.csv.gz"), ("in.csv.gz", "out.parquet"),
                                     ("in.parquet", "out.tsv.gz"), ("in.parquet", "out.parquet")])
def test_formats_round_trip(det, tmp_path, src, dst):
    frame = kaggle_test_frame(120)
    write(frame, tmp_path / src)
    score_file(tmp_path / src, tmp_path / dst, det, chunk_size=50, progress=False)
    out = read(tmp_path / dst)
    assert len(out) == len(frame)
    assert out["test_id"].astype(str).tolist() == [str(i) for i in range(len(frame))]
    assert out["question2"].tolist() == frame["question2"].tolist()
    np.testing.assert_allclose(out[PROBA_COL], det.predict_proba(list(frame["question1"]), list(frame["question2"])),
                               rtol=1e-4, atol=1e-5)
    if dst.endswith(".gz"):
        with gzip.open(tmp_path / dst) as fh:  # a real gzip file (one member per chunk)
            assert fh.read(7) == b"test_id"


def test_qqp_tsv_schema_is_detected_and_quotes_are_text(det, tmp_path):
    path = tmp_path / "quora_duplicate_questions.tsv"
    path.write_text('id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n'
                    '0\t1\t2\tWhat is "AI"?\tWhat does AI mean?\t1\n'
                    '1\t3\t4\tHow do I cook rice?\tIs Paris big?\t0\n')
    r = score_file(path, tmp_path / "out.tsv", det, progress=False)
    out = pd.read_csv(tmp_path / "out.tsv", sep="\t", quoting=3, dtype=str)
    assert r["q1_col"] == "question1" and r["id_col"] == "id"
    assert out["question1"].tolist() == ['What is "AI"?', "How do I cook rice?"]
    assert out["is_duplicate"].tolist() == ["1", "0"]


def test_explicit_columns_and_missing_column_error(det, tmp_path):
    frame = pd.DataFrame({"a": ["How do I learn python?"], "b": ["What is the best way to learn python?"]})
    write(frame, tmp_path / "in.csv")
    score_file(tmp_path / "in.csv", tmp_path / "out.csv", det, q1_col="a", q2_col="b", progress=False)
    assert len(read(tmp_path / "out.csv")) == 1
    with pytest.raises(DataError, match="no first-question column"):
        score_file(tmp_path / "in.csv", tmp_path / "out2.csv", det, progress=False)
    with pytest.raises(DataError, match="'nope' not found"):
        score_file(tmp_path / "in.csv", tmp_path / "out2.csv", det, q1_col="nope", q2_col="b", progress=False)


def bad_frame() -> pd.DataFrame:
    frame = kaggle_test_frame(40)
    frame.loc[7, "question2"] = "   "
    frame.loc[21, "question1"] = "x" * 300
    return frame


def test_bad_row_stops_with_file_row_and_column(det, tmp_path):
    write(bad_frame(), tmp_path / "in.csv")
    with pytest.raises(DataError) as err:
        score_file(tmp_path / "in.csv", tmp_path / "out.csv", det, chunk_size=16, progress=False)
    msg = str(err.value)
    assert "in.csv" in msg and "row 8 (line 9)" in msg and "'question2'" in msg and "empty question" in msg
    assert not (tmp_path / "out.csv").exists()
    assert not list(tmp_path.glob(".out.csv*"))  # temp files cleaned up


def test_mark_scores_bad_rows_as_missing_and_reports_them(det, tmp_path):
    write(bad_frame(), tmp_path / "in.csv")
    r = score_file(tmp_path / "in.csv", tmp_path / "out.csv", det, chunk_size=16, on_bad_row="mark",
                   max_chars=200, progress=False)
    out = read(tmp_path / "out.csv")
    assert len(out) == 40 and r["bad_rows"] == 2
    assert out[PROBA_COL].isna().tolist() == [i in (7, 21) for i in range(40)]
    assert out[PRED_COL].isna().sum() == 2
    report = pd.read_csv(r["bad_rows_report"])
    assert report["row"].tolist() == [8, 22]
    assert report["id"].tolist() == [7, 21]
    assert report["column"].tolist() == ["question2", "question1"]
    assert "over-long" in report["reason"].iloc[1]


def test_parquet_nan_and_non_text_cells(det, tmp_path):
    frame = kaggle_test_frame(10)
    frame["question2"] = frame["question2"].astype(object)
    frame.loc[2, "question2"] = None
    import pyarrow as pa
    import pyarrow.parquet as pq

    q2 = pa.array([None if v is None else str(v) for v in frame["question2"]])
    table = pa.table({"test_id": frame["test_id"], "question1": frame["question1"],
                      "question2": q2, "n": pa.array([1] * 10)})
    pq.write_table(table, tmp_path / "in.parquet")
    with pytest.raises(DataError, match=r"row 3, column 'question2': missing question"):
        score_file(tmp_path / "in.parquet", tmp_path / "out.parquet", det, progress=False)
    table = pa.table({"test_id": frame["test_id"], "question1": pa.array([1] * 10), "question2": q2})
    pq.write_table(table, tmp_path / "in2.parquet")
    with pytest.raises(DataError, match=r"column 'question1': not text \(int\)"):
        score_file(tmp_path / "in2.parquet", tmp_path / "out.parquet", det, progress=False)


@pytest.mark.parametrize("name", ["out.csv.gz", "out.parquet", "out.tsv"])
def test_resume_gives_the_same_bytes(det, tmp_path, name):
    frame = kaggle_test_frame(150)
    frame.loc[33, "question1"] = ""
    write(frame, tmp_path / "in.csv")
    opts = dict(chunk_size=20, checkpoint_rows=40, on_bad_row="mark", progress=False)
    full = tmp_path / "full" / name
    full.parent.mkdir()
    score_file(tmp_path / "in.csv", full, det, **opts)

    out = tmp_path / name
    with pytest.raises(KeyboardInterrupt):
        score_file(tmp_path / "in.csv", out, det, _stop_after_chunks=7, **opts)  # after a checkpoint + 1 chunk
    assert not out.exists()  # only a temp file so far
    r = score_file(tmp_path / "in.csv", out, det, resume=True, **opts)
    assert out.read_bytes() == full.read_bytes()
    assert (tmp_path / f"{name}.bad_rows.csv").read_bytes() == (full.parent / f"{name}.bad_rows.csv").read_bytes()
    assert r["rows"] == 150 and r["bad_rows"] == 1
    assert not list(tmp_path.glob(f".{name}*"))  # temp and state files gone


def test_resume_refuses_other_options(det, tmp_path):
    write(kaggle_test_frame(200), tmp_path / "in.csv")
    with pytest.raises(KeyboardInterrupt):
        score_file(tmp_path / "in.csv", tmp_path / "out.csv", det, chunk_size=40, checkpoint_rows=40,
                   _stop_after_chunks=2, progress=False)
    with pytest.raises(ValueError, match=r"cannot resume.*options differ .*\(chunk_size 40 → 50; every"):
        score_file(tmp_path / "in.csv", tmp_path / "out.csv", det, chunk_size=50, resume=True, progress=False)


def test_unique_texts_are_encoded_once_across_chunks(det):
    scorer = PairScorer(det, batch_size=8)
    q1 = ["How do I learn python?", "Is tennis hard?"] * 50
    q2 = ["What is the best way to learn python?"] * 100
    p_first = scorer.predict_proba(q1[:50], q2[:50])
    p_second = scorer.predict_proba(q1[50:], q2[50:])
    assert scorer.encoded == 3  # three distinct texts in 200 slots
    np.testing.assert_array_equal(p_first, p_second)
    np.testing.assert_allclose(p_first, det.predict_proba(q1[:50], q2[:50]), rtol=1e-4, atol=1e-6)


def test_bounded_cache_is_cleared_when_full(det):
    scorer = PairScorer(det, batch_size=4, cache_size=6)
    texts = [f"question number {i}?" for i in range(10)]
    p = scorer.predict_proba(texts[:3], texts[3:6])
    p2 = scorer.predict_proba(texts[6:9], texts[:3])  # 3 new + 3 old > 6: cache restarts
    assert len(scorer.store("left").slot) <= 6
    np.testing.assert_allclose(np.concatenate([p, p2]), det.predict_proba(texts[:3] + texts[6:9], texts[3:6] + texts[:3]),
                               rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="smaller --chunk-size"):
        scorer.predict_proba(texts[:5], texts[5:])


def test_empty_input_gives_header_only(det, tmp_path):
    (tmp_path / "in.csv").write_text("test_id,question1,question2\n")
    score_file(tmp_path / "in.csv", tmp_path / "out.csv", det, progress=False)
    assert (tmp_path / "out.csv").read_text().strip() == f"test_id,question1,question2,{PROBA_COL},{PRED_COL}"


def test_score_frame_is_engine_neutral(det):
    frame = kaggle_test_frame(20)
    out = score_frame(det, frame, "question1", "question2")
    assert list(out.index) == list(frame.index) and PROBA_COL in out and set(out[PRED_COL]) <= {0, 1}
    frame = frame.set_index(frame.index + 100)
    frame.loc[107, "question2"] = np.nan  # what a Spark or pandas batch holds for a missing question
    with pytest.raises(ValueError, match=r"row 107, column 'question2': missing question \(NaN/null\) \(1 such rows"):
        score_frame(det, frame, "question1", "question2")


def test_cli_score_and_clear_error(det, tmp_path, capsys):
    write(bad_frame(), tmp_path / "in.csv")
    assert main(["score", str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.csv"), "--model", str(det.path),
                 "--device", "cpu"]) == 2
    assert "row 8" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.csv"), "--model", str(det.path),
                 "--device", "cpu", "--on-bad-row", "mark", "--max-chars", "200"]) == 0
    printed = capsys.readouterr().out
    assert "scored 40 pairs" in printed and "2 bad cells" in printed
    assert len(read(tmp_path / "o.csv")) == 40


def test_cli_cuda_without_gpu_is_a_clear_error(det, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    write(kaggle_test_frame(5), tmp_path / "in.csv")
    assert main(["score", str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.csv"), "--model", str(det.path),
                 "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["index", "dedup", "search", "serve", "evaluate"])
def test_every_command_names_a_device_it_cannot_use(det, tmp_path, capsys, command):
    import torch

    bank, model = tmp_path / "bank.csv", str(det.path)
    bank.write_text("id,question\n1,How do I learn Python?\n2,What is love?\n")
    assert main(["index", str(bank), "-o", str(tmp_path / "ix"), "--model", model]) == 0
    args = {"index": ["index", str(bank), "-o", str(tmp_path / "ix2"), "--model", model],
            "dedup": ["dedup", str(bank), "-o", str(tmp_path / "g.csv"), "--model", model],
            "search": ["search", str(tmp_path / "ix"), "How?", "--model", model],
            "serve": ["serve", "--port", "0", "--model", model],
            "evaluate": ["evaluate", model, "--data", str(bank)]}[command]
    capsys.readouterr()
    assert main(args + ["--device", "gpu"]) == 2
    assert "device 'gpu': use auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(args + ["--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err


# ---------------------------------------------------------------- field counts, lines, bytes

def test_rows_with_another_field_count_than_the_header_stop_the_run(det, tmp_path):
    cases = {"extra.csv": "id,question1,question2\n1,What is a?,What is b?,extra\n2,Hello?,Hi?,more\n",
             "trailing.csv": "id,question1,question2\n1,What is a?,What is b?,\n",
             "short.csv": "id,question1,question2\n1,What is a?,What is b?\n2,Hello?\n"}
    lines = {"extra.csv": 2, "trailing.csv": 2, "short.csv": 3}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError) as err:
            score_file(tmp_path / name, tmp_path / "out.csv", det, progress=False)
        msg = str(err.value)
        fields = 2 if name == "short.csv" else 4
        assert f"{name}: " in msg and f"(line {lines[name]})" in msg, msg
        assert f"the header has 3 fields, this line has {fields}" in msg, msg
        assert not (tmp_path / "out.csv").exists()


def test_mark_reports_a_field_count_row_and_scores_it_as_missing(det, tmp_path):
    (tmp_path / "in.csv").write_text("id,question1,question2\n7,How do I learn python?,Is tennis hard?\n"
                                     "8,What is it, really?,What is b?\n9,Is java hard?,How difficult is java?\n")
    r = score_file(tmp_path / "in.csv", tmp_path / "out.csv", det, on_bad_row="mark", progress=False)
    out = read(tmp_path / "out.csv")
    assert out["id"].tolist() == ["7", "8", "9"] and r["bad_rows"] == 1
    assert out.loc[1, ["question1", "question2"]].tolist() == ["", ""]  # not the shifted " really?" as question2
    assert out[PROBA_COL].isna().tolist() == [False, True, False]
    report = pd.read_csv(r["bad_rows_report"], dtype=str, keep_default_na=False)
    assert report[["row", "line", "id"]].values.tolist() == [["2", "3", "8"]]
    assert report["reason"].iloc[0].startswith("field count")
    assert report["value"].iloc[0] == "8,What is it, really?,What is b?"  # the whole line: nothing is lost


def test_submit_refuses_a_field_count_row(det, tmp_path):
    from qpairs.submit import make_submission

    (tmp_path / "test.csv").write_text("test_id,question1,question2\n0,What is a?,What is b?,extra\n")
    with pytest.raises(DataError, match=r"row 1 \(line 2\).*header has 3 fields, this line has 4"):
        make_submission(tmp_path / "test.csv", tmp_path / "sub.csv", det, progress=False)
    assert not (tmp_path / "sub.csv").exists()


def test_errors_name_the_physical_line_after_multiline_cells(det, tmp_path):
    (tmp_path / "in.csv").write_text('id,question1,question2\n0,"How do\nI cook\nrice?",Is it easy?\n1,Hello?,   \n')
    with pytest.raises(DataError, match=r"row 2 \(line 5\), column 'question2': empty question"):
        score_file(tmp_path / "in.csv", tmp_path / "out.csv", det, progress=False)


def test_a_bad_byte_is_named_by_line_byte_offset_and_column(det, tmp_path):
    lines = ["id,question1,question2"] + [f"{i},How do I learn python {i}?,Is tennis hard {i}?" for i in range(2500)]
    data = ("\n".join(lines) + "\n").encode()
    cut = data.index(b"Is tennis hard 2100?")
    (tmp_path / "in.csv").write_bytes(data[:cut] + b"\xff" + data[cut:])
    with pytest.raises(DataError) as err:
        score_file(tmp_path / "in.csv", tmp_path / "out.csv", det, chunk_size=1000, progress=False)
    assert f"line 2102 (byte {cut}), column 'question2': not valid UTF-8" in str(err.value)


def test_a_corrupt_parquet_file_is_named(det, tmp_path):
    (tmp_path / "in.parquet").write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(DataError, match=r"in\.parquet: could not be read as Parquet"):
        score_file(tmp_path / "in.parquet", tmp_path / "out.csv", det, progress=False)


def test_duplicate_header_names_are_refused(det, tmp_path):
    (tmp_path / "in.csv").write_text("id,question1,question1,question2\n0,a?,b?,c?\n")
    with pytest.raises(DataError, match=r"in\.csv: the header names column 'question1' twice"):
        score_file(tmp_path / "in.csv", tmp_path / "out.csv", det, progress=False)


@pytest.mark.parametrize("text", ["\u200b", "\u200c\u200d", "\u2060 ", "\ufeff", "\x00", " \x07\t"])
def test_invisible_questions_are_empty(det, tmp_path, text):
    frame = kaggle_test_frame(5)
    frame.loc[3, "question1"] = text
    write(frame, tmp_path / "in.csv")
    with pytest.raises(DataError, match=r"row 4 \(line 5\), column 'question1': empty question"):
        score_file(tmp_path / "in.csv", tmp_path / "out.csv", det, progress=False)


def test_non_positive_max_chars_is_refused(det, tmp_path):
    write(kaggle_test_frame(5), tmp_path / "in.csv")
    with pytest.raises(ValueError, match="--max-chars must be positive, got -5"):
        score_file(tmp_path / "in.csv", tmp_path / "out.csv", det, max_chars=-5, progress=False)


# ---------------------------------------------------------------- output checks and clean failures

@pytest.mark.parametrize("how", ["same", "relative", "symlink"])
def test_output_that_is_the_input_is_refused(det, tmp_path, monkeypatch, how):
    write(kaggle_test_frame(5), tmp_path / "in.csv")
    before = (tmp_path / "in.csv").read_bytes()
    monkeypatch.chdir(tmp_path)
    src, dst = {"same": ("in.csv", str(tmp_path / "in.csv")), "relative": (str(tmp_path / "in.csv"), "./in.csv"),
                "symlink": ("link.csv", "in.csv")}[how]
    if how == "symlink":
        (tmp_path / "link.csv").symlink_to(tmp_path / "in.csv")
    assert main(["score", src, "-o", dst, "--model", str(det.path), "--device", "cpu"]) == 2
    assert (tmp_path / "in.csv").read_bytes() == before
    assert not list(tmp_path.glob(".in.csv*"))


def partial_files(folder) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_output_that_is_a_directory_fails_before_scoring(det, tmp_path, capsys, monkeypatch):
    import qpairs.scoring

    write(kaggle_test_frame(5), tmp_path / "in.csv")
    (tmp_path / "out").mkdir()
    monkeypatch.setattr(qpairs.scoring, "_as_detector", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["score", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out"), "--model", str(det.path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "out: is a directory" in err and len(err.splitlines()) == 1
    assert partial_files(tmp_path) == []


def test_read_only_output_folder_fails_before_scoring(det, tmp_path, capsys):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    write(kaggle_test_frame(5), tmp_path / "in.csv")
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        assert main(["score", str(tmp_path / "in.csv"), "-o", str(tmp_path / "ro" / "o.csv"), "--model",
                     str(det.path)]) == 2
    finally:
        (tmp_path / "ro").chmod(0o755)
    assert "cannot write in" in capsys.readouterr().err
    assert list((tmp_path / "ro").iterdir()) == []


def test_a_full_disk_is_one_line_and_leaves_nothing(det, tmp_path, capsys, monkeypatch):
    import errno

    from qpairs import tableio

    write(kaggle_test_frame(100), tmp_path / "in.csv")
    original, calls = tableio.CSVWriter.write, []

    def write_until_full(self, frame):
        calls.append(1)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(self, frame)

    monkeypatch.setattr(tableio.CSVWriter, "write", write_until_full)
    assert main(["score", str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.csv"), "--model", str(det.path),
                 "--device", "cpu", "--chunk-size", "20"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"qpairs score: error: {tmp_path / 'o.csv'}: could not write: No space left on device"
    assert partial_files(tmp_path) == [] and not (tmp_path / "o.csv").exists()


def test_a_real_file_size_limit_is_one_line_and_leaves_nothing(det, tmp_path):
    import resource
    import subprocess
    import sys

    write(kaggle_test_frame(3000), tmp_path / "in.csv")
    proc = subprocess.run([sys.executable, "-m", "qpairs", "score", str(tmp_path / "in.csv"), "-o",
                           str(tmp_path / "o.csv"), "--model", str(det.path), "--device", "cpu", "--chunk-size", "500"],
                          capture_output=True, text=True, env=_env(), timeout=300,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000)))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().endswith("o.csv: could not write: File too large"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert partial_files(tmp_path) == [] and not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("case", ["cache", "tsv"])
def test_failures_mid_run_leave_no_partial_files(det, tmp_path, capsys, case):
    frame = kaggle_test_frame(60)
    if case == "tsv":
        frame.loc[30, "question1"] = "How do I\nlearn python?"
    write(frame, tmp_path / "in.csv")
    out = tmp_path / ("o.tsv" if case == "tsv" else "o.csv")
    extra = ["--cache-size", "10"] if case == "cache" else []
    assert main(["score", str(tmp_path / "in.csv"), "-o", str(out), "--model", str(det.path), "--device", "cpu",
                 "--chunk-size", "20", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert ("more than the cache holds (10)" if case == "cache"
            else "o.tsv: row 31, column 'question1' holds a tab, newline or carriage return") in err
    assert partial_files(tmp_path) == [] and not out.exists()


# ---------------------------------------------------------------- resume: checkpoints and fingerprints

def _env() -> dict:
    import os
    from pathlib import Path

    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(qpairs.__file__).resolve().parent.parent),
                                         env.get("PYTHONPATH", "")])
    return env


def test_sigkill_mid_file_then_resume_gives_the_same_bytes(det, tmp_path):
    import hashlib
    import signal
    import subprocess
    import sys
    import time

    frame = kaggle_test_frame(6000, seed=9)
    write(frame, tmp_path / "in.csv")

    def cmd(out, *extra):
        return [sys.executable, "-m", "qpairs", "score", str(tmp_path / "in.csv"), "-o", str(out), "--model",
                str(det.path), "--device", "cpu", "--chunk-size", "200", "--checkpoint-rows", "400", *extra]

    (tmp_path / "full").mkdir()
    subprocess.run(cmd(tmp_path / "full" / "out.csv"), check=True, env=_env(), capture_output=True, timeout=300)
    out = tmp_path / "out.csv"
    proc = subprocess.Popen(cmd(out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / ".out.csv.resume.json"
    deadline = time.monotonic() + 240
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists() and not out.exists()  # killed mid-file, after a checkpoint
    subprocess.run(cmd(out, "--resume"), check=True, env=_env(), capture_output=True, timeout=300)
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (out, tmp_path / "full" / "out.csv")]
    assert digest[0] == digest[1]
    assert partial_files(tmp_path) == []


def _interrupted(det, path, out, **opts):
    with pytest.raises(KeyboardInterrupt):
        score_file(path, out, det, chunk_size=20, checkpoint_rows=20, _stop_after_chunks=3, progress=False, **opts)


def test_resume_refuses_an_input_whose_scored_rows_changed(det, tmp_path):
    import os

    frame = kaggle_test_frame(100)
    write(frame, tmp_path / "in.csv")
    _interrupted(det, tmp_path / "in.csv", tmp_path / "out.csv")
    st = os.stat(tmp_path / "in.csv")
    data = (tmp_path / "in.csv").read_bytes()
    changed = data.replace(b"How", b"Why", 1)  # same size, inside the rows already scored
    assert len(changed) == len(data) and changed != data
    (tmp_path / "in.csv").write_bytes(changed)
    os.utime(tmp_path / "in.csv", ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ValueError, match="cannot resume.*not those the interrupted run scored"):
        score_file(tmp_path / "in.csv", tmp_path / "out.csv", det, chunk_size=20, checkpoint_rows=20, resume=True,
                   progress=False)
    assert (tmp_path / ".out.csv.resume.json").exists()  # the interrupted run can still be resumed on its input


def test_resume_refuses_a_model_whose_weights_changed(det, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    write(kaggle_test_frame(100), tmp_path / "in.csv")
    _interrupted(det, tmp_path / "in.csv", tmp_path / "out.csv")
    other = tmp_path / "other_model"
    shutil.copytree(det.path, other)
    weights = load_file(other / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + torch.full_like(weights[name], 0.5)
    save_file(weights, other / "model.safetensors")
    det2 = qpairs.load(other, device="cpu")
    with pytest.raises(ValueError, match="cannot resume.*options"):
        score_file(tmp_path / "in.csv", tmp_path / "out.csv", det2, chunk_size=20, checkpoint_rows=20, resume=True,
                   progress=False)


def test_a_corrupt_resume_state_is_a_one_line_error(det, tmp_path, capsys):
    write(kaggle_test_frame(100), tmp_path / "in.csv")
    _interrupted(det, tmp_path / "in.csv", tmp_path / "out.csv")
    state = tmp_path / ".out.csv.resume.json"
    state.write_text(state.read_text()[:40])
    assert main(["score", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.csv"), "--model", str(det.path),
                 "--device", "cpu", "--chunk-size", "20", "--checkpoint-rows", "20", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{state}: the resume state is unreadable" in err


def test_the_weights_are_hashed_once_per_model_load(tmp_path, monkeypatch):
    import qpairs.checkpoint as fp  # model_fingerprint calls the weights hash through checkpoint

    calls = []
    original = fp.weights_hash
    monkeypatch.setattr(fp, "weights_hash", lambda *a, **k: calls.append(1) or original(*a, **k))
    fresh = qpairs.load(tiny_lstm_dir(tmp_path / "m"), device="cpu")
    write(kaggle_test_frame(100), tmp_path / "in.csv")
    for name in ("a.csv", "b.csv"):
        score_file(tmp_path / "in.csv", tmp_path / name, fresh, chunk_size=10, checkpoint_rows=10, progress=False)
    assert len(calls) == 1
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_the_summary_time_includes_the_model_load(det, tmp_path, monkeypatch, capsys):
    import time

    from qpairs import detector

    def slow_load(*args, **kwargs):
        time.sleep(0.5)
        return det

    monkeypatch.setattr(detector, "load", slow_load)
    write(kaggle_test_frame(40), tmp_path / "in.csv")
    r = score_file(tmp_path / "in.csv", tmp_path / "out.csv", "some/run", progress=False)
    assert r["load_seconds"] >= 0.5 and r["seconds"] >= r["load_seconds"] + r["scoring_seconds"]
    assert r["pairs_per_s"] == pytest.approx(40 / r["scoring_seconds"])
    assert main(["score", str(tmp_path / "in.csv"), "-o", str(tmp_path / "cli.csv"), "--model", "some/run"]) == 0
    line = capsys.readouterr().out
    seconds, load = (float(x) for x in __import__("re").search(r"in ([\d.]+) s \(model load ([\d.]+) s\)", line).groups())
    assert load >= 0.5 and seconds >= load


@pytest.mark.parametrize("name", ["in.csv", "in.tsv.gz", "in.parquet"])
def test_the_progress_bar_knows_its_total(det, tmp_path, monkeypatch, name):
    import os

    from qpairs import scoring

    bars = []

    class Recorded(scoring.ScoreProgress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self.bar)

    monkeypatch.setattr(scoring, "ScoreProgress", Recorded)
    frame = kaggle_test_frame(300)
    if name.endswith(".csv"):
        frame.loc[7, "question1"] = "a question\nover two lines"  # rows ≠ lines: bytes are what is counted
    write(frame, tmp_path / name)
    score_file(tmp_path / name, tmp_path / "out.csv", det, chunk_size=64, progress=True)
    (bar,) = bars
    total = 300 if name.endswith(".parquet") else os.path.getsize(tmp_path / name)  # gzip: compressed bytes
    assert bar.total == total and bar.n == total
    if not name.endswith(".parquet"):
        assert bar.unit == "B" and "300 pairs" in bar.postfix and "pairs/s" in bar.postfix


def test_a_resumed_run_starts_its_byte_bar_where_the_scored_rows_end(det, tmp_path, monkeypatch):
    import os

    from qpairs import scoring

    starts = []

    class Recorded(scoring.ScoreProgress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            starts.append((self.bar.n, self.bar.total))

    monkeypatch.setattr(scoring, "ScoreProgress", Recorded)
    write(kaggle_test_frame(300), tmp_path / "in.csv")
    with pytest.raises(KeyboardInterrupt):
        score_file(tmp_path / "in.csv", tmp_path / "out.csv", det, chunk_size=64, checkpoint_rows=64,
                   progress=True, _stop_after_chunks=2)
    score_file(tmp_path / "in.csv", tmp_path / "out.csv", det, chunk_size=64, checkpoint_rows=64, progress=True,
               resume=True)
    size = os.path.getsize(tmp_path / "in.csv")
    assert starts[0] == (0, size) and 0 < starts[1][0] < size and starts[1][1] == size


def test_a_bom_before_a_quoted_header_is_not_part_of_the_first_name(det, tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b'\xef\xbb\xbf"id","question1","question2"\r\n"007","How do I learn Python?","Is tennis hard?"\r\n')
    score_file(path, tmp_path / "out.csv", det, progress=False)
    out = pd.read_csv(tmp_path / "out.csv", dtype=str)
    assert list(out.columns[:3]) == ["id", "question1", "question2"] and out["id"].tolist() == ["007"]


def test_a_quote_never_closed_is_an_error_naming_its_line(det, tmp_path):
    path = tmp_path / "open.csv"
    path.write_text('id,question1,question2\n1,a b,a c\n2,d e,"d f\n3,g h,g i\n4,j k,j l\n')
    with pytest.raises(DataError, match=r"open\.csv: line 3: a quoted field .* never closed"):
        score_file(path, tmp_path / "out.csv", det, progress=False)
    assert not (tmp_path / "out.csv").exists()


def test_other_columns_of_a_parquet_input_keep_their_values_in_csv_and_parquet(det, tmp_path):
    frame = make_pairs(6, seed=3)[["question1", "question2"]].assign(
        price=[0.123456789, 1234567.5, 2.0, 3.25, 1e-9, 7.0],
        big=pd.array([9007199254740993, None, 1, 2, 3, 4], dtype="Int64"))
    frame.to_parquet(tmp_path / "in.parquet", index=False)
    score_file(tmp_path / "in.parquet", tmp_path / "out.csv", det, progress=False)
    score_file(tmp_path / "in.parquet", tmp_path / "out.parquet", det, progress=False)
    text = pd.read_csv(tmp_path / "out.csv", dtype=str, keep_default_na=False)
    assert text["price"].tolist() == ["0.123456789", "1234567.5", "2.0", "3.25", "1e-09", "7.0"]
    assert text["big"].tolist() == ["9007199254740993", "", "1", "2", "3", "4"]
    assert all(len(v.replace("0.", "").replace("e-", "")) <= 8 for v in text[PROBA_COL])  # 6 significant digits
    back = pd.read_parquet(tmp_path / "out.parquet")
    assert back["big"].iloc[0] == 9007199254740993 and pd.isna(back["big"].iloc[1])
    assert back["price"].tolist() == frame["price"].tolist()


@pytest.mark.parametrize("ids", [[7, 3, 9, 12, 5], [0, 1, 2, 3, 4]])  # stored values; a range pandas keeps in metadata
def test_a_parquet_file_written_with_a_named_index_keeps_it_as_its_id_column(det, tmp_path, ids):
    frame = make_pairs(5, seed=4)[["question1", "question2"]].assign(id=ids)
    frame.set_index("id").to_parquet(tmp_path / "in.parquet")
    frame.set_index(pd.Index([10, 11, 14, 15, 16])).to_parquet(tmp_path / "unnamed.parquet")  # no name: no column
    score_file(tmp_path / "in.parquet", tmp_path / "out.csv", det, chunk_size=2, progress=False)
    out = pd.read_csv(tmp_path / "out.csv")
    assert out.columns[0] == "id" and out["id"].tolist() == ids
    expected = det.predict_proba(list(frame["question1"]), list(frame["question2"]))
    np.testing.assert_allclose(out[PROBA_COL], expected, rtol=0, atol=1e-6)
    score_file(tmp_path / "unnamed.parquet", tmp_path / "unnamed.csv", det, progress=False)
    assert pd.read_csv(tmp_path / "unnamed.csv").columns.tolist()[:3] == ["question1", "question2", "id"]


def test_resume_refuses_another_backend(det, tmp_path):
    write(kaggle_test_frame(120), tmp_path / "in.csv")
    with pytest.raises(KeyboardInterrupt):
        score_file(tmp_path / "in.csv", tmp_path / "out.csv", det, chunk_size=40, checkpoint_rows=40,
                   _stop_after_chunks=2, progress=False)
    first = det.backend  # "bf16" on a CPU with native bf16, else "torch"
    det.backend = "torch" if first == "bf16" else "bf16"  # what another --backend gives the run's identity
    try:
        with pytest.raises(ValueError, match="cannot resume"):
            score_file(tmp_path / "in.csv", tmp_path / "out.csv", det, chunk_size=40, checkpoint_rows=40,
                       resume=True, progress=False)
    finally:
        det.backend = first


def test_a_blank_column_name_reads_as_pandas_names_it(det, tmp_path):
    """What pandas' to_csv writes with its index: a header beginning with a blank name, which reads as 'Unnamed: 0'
    (and can be named: --id-col 'Unnamed: 0')."""
    frame = make_pairs(4, seed=2)[["question1", "question2"]]
    frame.to_csv(tmp_path / "in.csv")  # ',question1,question2'
    score_file(tmp_path / "in.csv", tmp_path / "out.csv", det, id_col="Unnamed: 0", progress=False)
    out = pd.read_csv(tmp_path / "out.csv")
    assert out.columns.tolist() == ["Unnamed: 0", "question1", "question2", PROBA_COL, PRED_COL]
    assert out["Unnamed: 0"].tolist() == [0, 1, 2, 3]


def test_a_resumed_score_says_how_many_pairs_this_run_scored(det, tmp_path, capsys):
    write(kaggle_test_frame(120), tmp_path / "in.csv")
    with pytest.raises(KeyboardInterrupt):
        score_file(tmp_path / "in.csv", tmp_path / "out.csv", det, chunk_size=40, checkpoint_rows=40,
                   _stop_after_chunks=2, progress=False)
    assert main(["score", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.csv"), "--model", str(det.path),
                 "--chunk-size", "40", "--checkpoint-rows", "40", "--resume", "--backend", det.backend]) == 0
    assert "scored 120 pairs (question1 vs question2; 40 in this run, 80 before it)" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "out.csv")) == 120


def test_a_parquet_file_without_rows_keeps_its_column_types(det, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": pa.array([], pa.int64()), "question1": pa.array([], pa.string()),
                             "question2": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    score_file(tmp_path / "empty.parquet", tmp_path / "out.parquet", det, progress=False)
    types = dict(zip(pq.read_schema(tmp_path / "out.parquet").names, pq.read_schema(tmp_path / "out.parquet").types))
    assert types["id"] == pa.int64() and types[PROBA_COL] == pa.float64() and types[PRED_COL] == pa.int8()
