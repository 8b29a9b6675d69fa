"""`qpairs submit`: Kaggle format, order, clipping, validation, prior shift, gzip."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import qpairs
from _tiny_models import tiny_lstm_dir
from conftest import make_pairs
from qpairs.calibration import shift_prior
from qpairs.cli import main
from qpairs.data import default_data_dir
from qpairs.submit import CLIP, make_submission, validate_submission


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    return qpairs.load(tiny_lstm_dir(tmp_path_factory.mktemp("submit") / "m"), device="cpu")


def kaggle_test(n: int, seed: int = 2) -> pd.DataFrame:
    pairs = make_pairs(n, seed=seed)
    ids = np.random.default_rng(seed).permutation(n)  # ids in no particular order: the output keeps input order
    return pd.DataFrame({"test_id": ids, "question1": pairs["question1"], "question2": pairs["question2"]})


def test_generated_test_file(det, tmp_path):
    frame = kaggle_test(600)
    frame.to_csv(tmp_path / "test.csv", index=False)
    r = make_submission(tmp_path / "test.csv", tmp_path / "sub.csv.gz", det, chunk_size=250, progress=False)
    sub = pd.read_csv(tmp_path / "sub.csv.gz")
    assert list(sub.columns) == ["test_id", "is_duplicate"]
    assert sub["test_id"].tolist() == frame["test_id"].tolist()
    expected = np.clip(det.predict_proba(list(frame["question1"]), list(frame["question2"])), CLIP, 1 - CLIP)
    np.testing.assert_allclose(sub["is_duplicate"], expected, rtol=1e-5, atol=1e-6)
    assert r["rows"] == 600 and r["unscorable_rows"] == 0
    assert (tmp_path / "sub.csv.gz").read_bytes()[:2] == b"\x1f\x8b"


def test_kaggle_test_head(det, tmp_path):
    data = default_data_dir()
    path = data / "qqp" / "kaggle_test_head20.csv.gz" if data else None
    if path is None or not path.exists():
        pytest.skip("shared data not available")
    src = pd.read_csv(path, dtype=str)
    assert main(["submit", str(path), "-o", str(tmp_path / "sub.csv"), "--model", str(det.path), "--device", "cpu"]) == 0
    sub = pd.read_csv(tmp_path / "sub.csv", dtype={"test_id": str})
    assert sub["test_id"].tolist() == src["test_id"].tolist() and len(sub) == 20
    assert sub["is_duplicate"].between(CLIP, 1 - CLIP).all()
    assert (tmp_path / "sub.csv").read_text().startswith("test_id,is_duplicate\n")


def test_test_prior_shifts_by_bayes(det, tmp_path):
    frame = kaggle_test(100)
    frame.to_csv(tmp_path / "test.csv", index=False)
    make_submission(tmp_path / "test.csv", tmp_path / "a.csv", det, progress=False)
    make_submission(tmp_path / "test.csv", tmp_path / "b.csv", det, test_prior=0.165, progress=False)
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    assert b["is_duplicate"].mean() < a["is_duplicate"].mean()
    np.testing.assert_allclose(b["is_duplicate"], shift_prior(a["is_duplicate"], det.calibrator.prior, 0.165),
                               rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        make_submission(tmp_path / "test.csv", tmp_path / "c.csv", det, test_prior=1.5, progress=False)


def test_unscorable_rows_get_the_prior_and_every_id_is_kept(det, tmp_path):
    frame = kaggle_test(50)
    frame.loc[[3, 9], "question2"] = ""
    frame.to_csv(tmp_path / "test.csv", index=False)
    r = make_submission(tmp_path / "test.csv", tmp_path / "sub.csv", det, test_prior=0.165, progress=False)
    sub = pd.read_csv(tmp_path / "sub.csv")
    assert len(sub) == 50 and r["unscorable_rows"] == 2
    assert sub["is_duplicate"].iloc[[3, 9]].tolist() == [0.165, 0.165]


def test_validation_catches_bad_submissions():
    good = pd.DataFrame({"test_id": [0, 1], "is_duplicate": [0.2, 0.9]})
    validate_submission(good, 2)
    with pytest.raises(ValueError, match="3 rows, but the test file has 2"):
        validate_submission(pd.concat([good, good.iloc[:1]]), 2)
    with pytest.raises(ValueError, match="test_id .0. appears more than once"):
        validate_submission(pd.DataFrame({"test_id": [0, 0], "is_duplicate": [0.2, 0.9]}), 2)
    with pytest.raises(ValueError, match="NaN in row 2"):
        validate_submission(pd.DataFrame({"test_id": [0, 1], "is_duplicate": [0.2, np.nan]}), 2)
    with pytest.raises(ValueError, match="outside"):
        validate_submission(pd.DataFrame({"test_id": [0, 1], "is_duplicate": [0.0, 1.0]}), 2)


def test_duplicate_ids_in_the_input_are_refused_before_writing(det, tmp_path):
    frame = kaggle_test(20)
    frame.loc[5, "test_id"] = frame.loc[6, "test_id"]
    frame.to_csv(tmp_path / "test.csv", index=False)
    with pytest.raises(ValueError, match=r"row 7 \(line 8\), column 'test_id': test_id \d+ repeats the test_id of "
                                         r"row 6 \(line 7\)"):
        make_submission(tmp_path / "test.csv", tmp_path / "sub.csv", det, progress=False)
    assert not (tmp_path / "sub.csv").exists()


@pytest.mark.parametrize("ids, message", [
    (["0", "1", "abc"], r"row 3 \(line 4\), column 'test_id': test_id 'abc' is not a whole number"),
    (["0", "7.5", "2"], r"row 2 \(line 3\), column 'test_id': test_id '7.5' is not a whole number"),
    (["5", "1", "05"], r"row 3 \(line 4\), column 'test_id': test_id 5 repeats the test_id of row 1 \(line 2\)"),
])
def test_test_ids_must_be_distinct_whole_numbers(det, tmp_path, ids, message):
    frame = kaggle_test(3)
    frame["test_id"] = ids
    frame.to_csv(tmp_path / "test.csv", index=False)
    with pytest.raises(ValueError, match=message):
        make_submission(tmp_path / "test.csv", tmp_path / "sub.csv", det, progress=False)
    assert not (tmp_path / "sub.csv").exists()


@pytest.mark.parametrize("prior", [0.0, 1.5, -3.0])
def test_a_test_prior_outside_0_1_is_refused_before_any_work(det, tmp_path, prior):
    with pytest.raises(ValueError, match="--test-prior is a duplicate rate"):
        make_submission(tmp_path / "missing.csv", tmp_path / "sub.csv", det, test_prior=prior, progress=False)


def test_a_submission_named_other_than_csv_is_refused(det, tmp_path):
    kaggle_test(5).to_csv(tmp_path / "test.csv", index=False)
    with pytest.raises(ValueError, match="end its name in .csv or .csv.gz"):
        make_submission(tmp_path / "test.csv", tmp_path / "sub.parquet", det)
    assert not (tmp_path / "sub.parquet").exists()


def test_missing_test_id_column(det, tmp_path):
    pd.DataFrame({"question1": ["a"], "question2": ["b"]}).to_csv(tmp_path / "t.csv", index=False)
    assert main(["submit", str(tmp_path / "t.csv"), "-o", str(tmp_path / "s.csv"), "--model", str(det.path)]) == 2


def test_invisible_questions_get_the_prior(det, tmp_path):
    frame = kaggle_test(20)
    frame.loc[4, "question1"] = "\u200b\u2060"
    frame.loc[6, "question2"] = "\x00"
    frame.to_csv(tmp_path / "test.csv", index=False)
    r = make_submission(tmp_path / "test.csv", tmp_path / "sub.csv", det, test_prior=0.165, progress=False)
    assert r["unscorable_rows"] == 2
    assert pd.read_csv(tmp_path / "sub.csv")["is_duplicate"].iloc[[4, 6]].tolist() == [0.165, 0.165]


def test_a_blank_test_id_is_refused_with_file_and_line(det, tmp_path):
    (tmp_path / "test.csv").write_text('test_id,question1,question2\n0,"Is it\nhard?",Is it easy?\n ,a?,b?\n')
    with pytest.raises(ValueError, match=r"test.csv: row 2 \(line 4\), column 'test_id': blank test_id"):
        make_submission(tmp_path / "test.csv", tmp_path / "sub.csv", det, progress=False)
    assert not (tmp_path / "sub.csv").exists()


def test_the_written_file_is_checked_against_the_rows_read(det, tmp_path, monkeypatch):
    kaggle_test(30).to_csv(tmp_path / "test.csv", index=False)
    to_csv = pd.DataFrame.to_csv

    def lossy(self, path, *args, **kwargs):  # a writer that loses the last row
        return to_csv(self.iloc[:-1] if list(self.columns) == ["test_id", "is_duplicate"] else self, path,
                      *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", lossy)
    with pytest.raises(ValueError, match="29 rows, but the test file has 30"):
        make_submission(tmp_path / "test.csv", tmp_path / "sub.csv", det, progress=False)
    assert not (tmp_path / "sub.csv").exists() and not list(tmp_path.glob(".sub.csv*"))


@pytest.mark.parametrize("dst", ["test.csv", "./test.csv", "link.csv"])
def test_output_that_is_the_input_is_refused(det, tmp_path, monkeypatch, dst):
    kaggle_test(10).to_csv(tmp_path / "test.csv", index=False)
    before = (tmp_path / "test.csv").read_bytes()
    (tmp_path / "link.csv").symlink_to(tmp_path / "test.csv")
    monkeypatch.chdir(tmp_path)
    assert main(["submit", "test.csv", "-o", dst, "--model", str(det.path), "--device", "cpu"]) == 2
    assert (tmp_path / "test.csv").read_bytes() == before


def test_output_that_is_a_directory_is_refused(det, tmp_path, capsys):
    kaggle_test(10).to_csv(tmp_path / "test.csv", index=False)
    (tmp_path / "sub").mkdir()
    assert main(["submit", str(tmp_path / "test.csv"), "-o", str(tmp_path / "sub"), "--model", str(det.path)]) == 2
    assert "sub: is a directory" in capsys.readouterr().err


def test_test_ids_are_written_as_plain_whole_numbers(det, tmp_path):
    frame = kaggle_test(3)
    frame["test_id"] = [" 0 ", "007", "2"]
    frame.to_csv(tmp_path / "test.csv", index=False)
    make_submission(tmp_path / "test.csv", tmp_path / "sub.csv", det, progress=False)
    assert [line.split(",")[0] for line in (tmp_path / "sub.csv").read_text().splitlines()] == ["test_id", "0", "7", "2"]


def test_a_test_id_column_is_found_in_any_case(det, tmp_path):
    frame = kaggle_test(3)
    frame.rename(columns={"test_id": "Test_ID"}).to_csv(tmp_path / "test.csv", index=False)
    make_submission(tmp_path / "test.csv", tmp_path / "sub.csv", det, progress=False)
    assert pd.read_csv(tmp_path / "sub.csv")["test_id"].tolist() == frame["test_id"].tolist()
