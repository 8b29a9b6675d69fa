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
    with pytest.raises(ValueError, match="cannot resume.*options"):
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
