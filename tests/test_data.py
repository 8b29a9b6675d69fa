import gzip

import numpy as np
import pandas as pd
import pytest

from qpairs import data as qd
from conftest import make_pairs


def test_loads_kaggle_schema_and_gzip(tmp_path):
    df = make_pairs(50)
    path = tmp_path / "train.csv.gz"
    with gzip.open(path, "wt") as fh:
        df.to_csv(fh, index=False)
    out = qd.load_pairs(path)
    assert list(out.columns) == ["pair_id", "question1", "question2", "is_duplicate", "source"]
    assert len(out) == len(df.drop_duplicates(["question1", "question2"]))
    assert set(out["is_duplicate"]) <= {0, 1}


def test_loads_quora_tsv_with_quotes(tmp_path):
    path = tmp_path / "quora_duplicate_questions.tsv"
    path.write_text('id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n'
                    '0\t1\t2\tWhat is "AI"?\tWhat does AI mean?\t1\n'
                    '1\t3\t4\tHow to cook rice?\tWhy is the sky blue?\t0\n')
    out = qd.load_pairs(path)
    assert out["question1"].tolist() == ['What is "AI"?', "How to cook rice?"]
    assert out["is_duplicate"].tolist() == [1, 0]


@pytest.mark.parametrize("suffix, opener", [(".bz2", "bz2"), (".xz", "lzma")])
def test_bz2_and_xz_files_load_like_plain_ones_and_name_their_lines(tmp_path, suffix, opener):
    import importlib

    text = make_pairs(30).to_csv(sep="\t", index=False)
    plain, packed = tmp_path / "pairs.tsv", tmp_path / f"pairs.tsv{suffix}"
    plain.write_text(text)
    packed.write_bytes(importlib.import_module(opener).compress(text.encode()))
    pd.testing.assert_frame_equal(qd.load_pairs(packed).drop(columns="source"), qd.load_pairs(plain).drop(columns="source"))
    lines = text.split("\n")
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\tmaybe"  # data row 3
    packed.write_bytes(importlib.import_module(opener).compress("\n".join(lines).encode()))
    with pytest.raises(qd.DataError, match=rf"pairs\.tsv\{suffix}: row 3 \(line 4\), column 'is_duplicate'"):
        qd.load_pairs(packed)


def test_kaggle_test_schema_is_unlabelled(tmp_path):
    path = tmp_path / "test.csv"
    pd.DataFrame({"test_id": [0, 1], "question1": ["a b", "c d"], "question2": ["e f", "g h"]}).to_csv(path, index=False)
    out = qd.load_file(path, require_labels=False)
    assert out["is_duplicate"].tolist() == [-1, -1]
    assert out["pair_id"].tolist() == ["0", "1"]


@pytest.mark.parametrize("column,value,message", [
    ("question2", "", "row 3 (line 4), column 'question2': empty question"),
    ("question2", "\u200b\u200d", "row 3 (line 4), column 'question2': empty question"),
    ("question1", "\ufeff\x00", "row 3 (line 4), column 'question1': empty question"),
    ("is_duplicate", "2", "row 3 (line 4), column 'is_duplicate': label '2' is not 0 or 1"),
    ("is_duplicate", "yes", "column 'is_duplicate'"),
])
def test_bad_rows_raise_with_file_row_and_column(tmp_path, column, value, message):
    df = make_pairs(10).astype(str)
    df.loc[2, column] = value
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    with pytest.raises(qd.DataError) as err:
        qd.load_pairs(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_errors_name_the_physical_line_after_a_multiline_cell(tmp_path):
    path = tmp_path / "multi.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write('id,question1,question2,is_duplicate\n0,"How do\nI cook\nrice?",Is it easy?,1\n1,Hello?,\u200b,0\n')
    with pytest.raises(qd.DataError, match=r"row 2 \(line 5\), column 'question2': empty question"):
        qd.load_pairs(path)


def test_a_row_with_an_extra_field_is_refused(tmp_path):
    path = tmp_path / "extra.csv"
    path.write_text("id,question1,question2,is_duplicate\n0,a?,b?,1\n1,c?,d?,0,\n")
    with pytest.raises(qd.DataError, match=r"extra.csv: row 2 \(line 3\): field count \(the header has 4 fields, "
                                           r"this line has 5\)"):
        qd.load_pairs(path)


def test_a_header_naming_a_column_twice_is_refused(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("id,question1,question1,is_duplicate\n0,a?,b?,1\n")
    with pytest.raises(qd.DataError, match=r"dup.csv: the header names column 'question1' twice"):
        qd.load_pairs(path)


def test_missing_column_names_file_and_columns(tmp_path):
    path = tmp_path / "nocol.csv"
    pd.DataFrame({"question1": ["a"], "is_duplicate": [1]}).to_csv(path, index=False)
    with pytest.raises(qd.DataError, match="nocol.csv: no second-question column"):
        qd.load_pairs(path)


def test_drop_option_counts_and_reports(tmp_path):
    df = make_pairs(20).astype(str)
    df.loc[[1, 5], "question1"] = ""
    df.loc[7, "is_duplicate"] = "x"
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    report = qd.LoadReport()
    out = qd.load_pairs(path, on_bad_row="drop", dedupe=False, report=report)
    assert len(out) == 17
    assert report.dropped_bad == {"bad.csv: bad question1": 2, "bad.csv: bad is_duplicate": 1}
    assert "dropped bad rows" in str(report)


def test_dedupe_is_unordered_normalised_and_reports_conflicts():
    frame = pd.DataFrame({
        "pair_id": ["a", "b", "c", "d", "e"],
        "question1": ["What is X?", "what is x", "How?", "How?", "How?"],
        "question2": ["Define X", "define x!", "Why?", "why", "WHY"],
        "is_duplicate": [1, 1, 0, 1, 1],
        "source": "s",
    })
    report = qd.LoadReport()
    out = qd.deduplicate(frame, report)
    assert len(out) == 2
    assert report.duplicates_removed == 3 and report.label_conflicts == 1
    assert out.set_index("pair_id").loc["c", "is_duplicate"] == 1  # majority of 0,1,1
    assert qd.pair_key("a b?", "C") == qd.pair_key("c", "A B")
    assert qd.pair_key("ab", "c") != qd.pair_key("a b", "c")  # words stay apart: "ice cream" is not "icecream"
    assert qd.normalize_question("What 's up , do n't you know ?") == qd.normalize_question("What's up, don't you know?")
    assert qd.normalize_question("₹ 500 notes") == qd.normalize_question("₹500 notes")  # no spaces around a symbol


def test_question_split_is_disjoint_and_reproducible():
    frame = make_pairs(500)
    s1 = qd.split_by_question(frame, seed=3)
    s2 = qd.split_by_question(frame, seed=3)
    for name in s1:
        pd.testing.assert_frame_equal(s1[name], s2[name])
    qs = {name: set(pd.concat([p["question1"], p["question2"]]).map(qd.normalize_question)) for name, p in s1.items()}
    assert not qs["train"] & qs["validation"] and not qs["train"] & qs["test"] and not qs["validation"] & qs["test"]
    assert sum(len(p) for p in s1.values()) == len(frame)
    assert qd.split_by_question(frame, seed=4)["test"]["pair_id" if "pair_id" in frame else "id"].tolist() != \
        s1["test"]["id"].tolist()


def test_pair_split_covers_every_pair_once():
    frame = make_pairs(100)
    parts = qd.split_by_pair(frame, seed=0)
    ids = np.concatenate([p["id"].to_numpy() for p in parts.values()])
    assert sorted(ids) == list(range(100))
    assert [len(p) for p in parts.values()] == [80, 10, 10]


def test_balance_subsample_and_weights():
    frame = pd.DataFrame({"is_duplicate": [1] * 80 + [0] * 20})
    sub = qd.subsample_to_rate(frame, 0.37, seed=0)
    assert abs(sub["is_duplicate"].mean() - 0.37) < 0.02 and (sub["is_duplicate"] == 0).sum() == 20
    w = qd.class_weights(frame["is_duplicate"].to_numpy(), 0.5)
    y = frame["is_duplicate"].to_numpy()
    assert np.isclose(w[y == 1].sum(), w[y == 0].sum()) and np.isclose(w.mean(), 1.0)


def test_make_splits_uses_mixed_sources_at_natural_rate():
    frame = make_pairs(1500).rename(columns={"id": "pair_id"})
    frame["source"] = "natural.csv"
    pos = make_pairs(1500, seed=9).rename(columns={"id": "pair_id"})
    pos = pos[pos["is_duplicate"] == 1].assign(source="positives.csv",
                                                 question1=lambda d: "Pos " + d["question1"])
    both = pd.concat([frame, pos], ignore_index=True)
    splits, info = qd.make_splits(both, seed=0)
    assert info["eval_sources"] == ["natural.csv"]
    whole = qd.split_by_question(both, seed=0)  # the parts before filtering and subsampling
    for name in ("validation", "test"):
        assert set(splits[name]["source"]) == {"natural.csv"}
        assert abs(splits[name]["is_duplicate"].mean() - 0.37) < 0.03
        aside = info["set_aside"][name]  # every validation/test pair accounted for
        assert aside["from_one_label_files"] == (whole[name]["source"] == "positives.csv").sum() > 0
        assert aside["to_reach_eval_rate"] > 0
        assert len(splits[name]) + aside["from_one_label_files"] + aside["to_reach_eval_rate"] == len(whole[name])
        natural = whole[name][whole[name]["source"] == "natural.csv"]
        assert aside["own_duplicate_rate"] == pytest.approx(natural["is_duplicate"].mean())


def test_own_files_at_another_duplicate_rate_are_named_with_the_option_that_keeps_it(tmp_path, caplog):
    from qpairs.config import TrainConfig
    from qpairs.splits import load_splits

    frame = make_pairs(1500)
    skewed = pd.concat([frame[frame["is_duplicate"] == 1], frame[frame["is_duplicate"] == 0].head(150)])
    skewed.to_csv(tmp_path / "mine.csv", index=False)
    own_rate = skewed["is_duplicate"].mean()
    with caplog.at_level("INFO", logger="qpairs"):
        splits = load_splits(TrainConfig(data=[str(tmp_path / "mine.csv")], out=str(tmp_path / "run")),
                             tmp_path / "run", write=False)
    assert abs(splits["validation"]["is_duplicate"].mean() - 0.37) < 0.03
    assert "pairs set aside to bring the duplicate rate from" in caplog.text
    warning = next(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "pass --eval-rate 0.8" in warning and abs(own_rate - 0.8) < 0.06

    caplog.clear()
    with caplog.at_level("INFO", logger="qpairs"):
        splits = load_splits(TrainConfig(data=[str(tmp_path / "mine.csv")], out=str(tmp_path / "run"),
                                         eval_rate=0.8), tmp_path / "run", write=False)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert abs(splits["validation"]["is_duplicate"].mean() - own_rate) < 0.05


def test_shared_qqp_files_load_when_present():
    root = qd.default_data_dir()
    if root is None:
        pytest.skip("shared data not present")
    path = root / "qqp" / "kaggle_train_head10k.csv.gz"
    out = qd.load_pairs(path)
    assert len(out) > 8000 and 0.3 < out["is_duplicate"].mean() < 0.42


def test_pairs_that_differ_in_symbols_numbers_or_any_script_are_not_merged():
    from qpairs.data import deduplicate

    q1 = ["Is C++ like Java?", "Is C# like Java?", "How many pounds is 1.5 kg?", "What is -5 squared?",
          "What is 😀?", "दिन क्या है?", "Что такое любовь?", "How do I learn Python?"]
    q2 = ["Is C like Java?", "Is C like Java?", "How many pounds is 15 kg?", "What is 5 squared?",
          "What is 😎?", "दान क्या है?", "Что такое жизнь?", "What's the best way to learn Python?"]
    frame = pd.DataFrame({"question1": q1 + ["how do i learn python"], "question2": q2 + ["Whats the best way to learn python"],
                          "is_duplicate": [0] * 9})
    out = deduplicate(frame)
    assert len(out) == 8  # only the last row, the same pair spelt otherwise, merges
    assert out["question1"].tolist() == q1


def test_the_split_keeps_spellings_together_that_deduplication_keeps_apart():
    frame = pd.DataFrame({"question1": ["Is C++ hard?", "Is C hard?"], "question2": ["Is Java hard?", "Is Go hard?"],
                          "is_duplicate": [0, 0]})
    assert len(qd.deduplicate(frame)) == 2  # two different pairs
    comp = qd.question_components(frame)
    assert comp[0] == comp[1]  # "Is C++ hard?" and "Is C hard?" share a split key: one side of any split


@pytest.mark.parametrize("option", ["label_col", "id_col"])
def test_a_named_label_or_id_column_that_is_missing_is_a_clear_error(tmp_path, option):
    path = tmp_path / "pairs.csv"
    path.write_text("question1,question2,is_duplicate\na?,b?,1\nc?,d?,0\n")
    with pytest.raises(qd.DataError, match=r"pairs.csv: --[a-z]+-col column 'nope' not found; columns are \['question1'"):
        qd.load_file(path, **{option: "nope"})


def test_labels_may_be_spelled_true_and_false_in_any_case(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("question1,question2,is_duplicate\na?,b?,true\nc?,d?,FALSE\ne?,f?,True\n")
    assert qd.load_file(path)["is_duplicate"].tolist() == [1, 0, 1]


def test_a_data_folder_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(qd.DataError, match="nowhere: no such folder"):
        qd.data_folder(tmp_path / "nowhere")
    assert qd.data_folder(tmp_path) == tmp_path


def test_the_question_key_reads_text_as_the_encoders_do():
    assert qd.normalize_question("How do I pronounce nai\u0308ve?") == qd.normalize_question("How do I pronounce naïve?")
    assert qd.normalize_question("Learn Py\u200bthon?") == qd.normalize_question("learn python")
    assert qd.normalize_question("Is 🍕 healthy?") != qd.normalize_question("Is 🥗 healthy?")
    assert qd.normalize_question("Learn Ｐｙｔｈｏｎ ﬁrst?") == qd.normalize_question("learn python first")
    for a, b in (("What is 10³?", "What is 103?"), ("Is H₂O safe?", "Is H2O safe?"), ("½ cup?", "1/2 cup?")):
        assert qd.normalize_question(a) != qd.normalize_question(b)  # the same digits, another meaning


def test_columns_are_found_in_any_case_and_an_ambiguous_one_is_refused(tmp_path):
    (tmp_path / "bank.csv").write_text("ID,Question\n501,How do I learn Python?\n502,What is love?\n")
    ids, texts = qd.read_questions(tmp_path / "bank.csv")
    assert ids == ["501", "502"] and texts == ["How do I learn Python?", "What is love?"]
    (tmp_path / "pairs.csv").write_text("Question1,QUESTION2,Is_Duplicate\nHow?,Why?,1\nWho?,What?,0\n")
    assert qd.load_pairs(tmp_path / "pairs.csv")["is_duplicate"].tolist() == [1, 0]
    (tmp_path / "two.csv").write_text("Id,ID,question\n1,2,How?\n")
    with pytest.raises(qd.DataError, match=r"columns \['Id', 'ID'\] could each be the id column"):
        qd.read_questions(tmp_path / "two.csv")


def test_extra_training_pairs_never_bring_a_held_out_question_into_training(tmp_path, caplog):
    from qpairs.config import TrainConfig
    from qpairs.splits import load_splits

    make_pairs(600).to_csv(tmp_path / "mine.csv", index=False)
    cfg = TrainConfig(data=[str(tmp_path / "mine.csv")], out=str(tmp_path / "run"))
    plain = load_splits(cfg, tmp_path / "run", write=False)
    test, train = plain["test"], plain["train"]
    extra = pd.DataFrame({  # test questions paired up anew, a test pair, a training pair, two new questions
        "question1": list(test["question1"][:5]) + [test["question1"].iloc[0], train["question1"].iloc[0], "New a?"],
        "question2": list(test["question2"][5:10]) + [test["question2"].iloc[0], train["question2"].iloc[0], "New b?"],
        "is_duplicate": [1, 0, 1, 0, 1, 1, 1 - int(train["is_duplicate"].iloc[0]), 1]})
    extra.to_csv(tmp_path / "extra.csv", index=False)
    cfg.extra_train = [str(tmp_path / "extra.csv")]
    with caplog.at_level("INFO", logger="qpairs"):
        splits = load_splits(cfg, tmp_path / "run", write=False)
    held = {qd.split_key(q) for part in ("validation", "test") for q in pd.concat(
        [splits[part]["question1"], splits[part]["question2"]])}
    trained = pd.concat([splits["train"]["question1"], splits["train"]["question2"]]).map(qd.split_key)
    assert not trained.isin(held).any()
    assert len(splits["train"]) == len(train) + 1  # only the pair of new questions joins
    assert ("+1 of the 8 labelled pairs of" in caplog.text and "1 validation/test pairs" in caplog.text
            and "5 with a validation/test question" in caplog.text and "1 already training pairs" in caplog.text)


def test_a_typed_number_in_a_parquet_question_column_is_refused_not_read_as_text(tmp_path):
    path = tmp_path / "typed.parquet"
    pd.DataFrame({"question1": [42, 7], "question2": ["What is 42?", "What is 7?"], "is_duplicate": [0, 1]}).to_parquet(path)
    with pytest.raises(qd.DataError, match=r"row 1, column 'question1': not text \(int"):
        qd.load_pairs(path)


def test_named_columns_match_in_any_case_and_one_column_cannot_be_both_questions(tmp_path):
    path = tmp_path / "p.csv"
    make_pairs(4).to_csv(path, index=False)
    out = qd.load_file(path, q1_col="QUESTION1", q2_col="Question2")
    assert len(out) == 4
    with pytest.raises(qd.DataError, match="both the first and the second question column"):
        qd.load_file(path, q1_col="question2", q2_col="question2")
    with pytest.raises(qd.DataError, match="--q1-col column 'nope' not found"):
        qd.load_file(path, q1_col="nope")


def test_files_of_another_kind_are_named_for_what_they_are(tmp_path):
    csv_text = "id,question1,question2,is_duplicate\n1,How do I cook rice?,How is rice cooked?,1\n"
    (tmp_path / "gz.csv").write_bytes(gzip.compress(csv_text.encode()))
    (tmp_path / "u16.csv").write_bytes(csv_text.encode("utf-16"))
    (tmp_path / "semi.csv").write_text(csv_text.replace(",", ";"))
    with pytest.raises(qd.DataError, match="gz.csv: not UTF-8 text: the file is gzip-compressed"):
        qd.load_pairs(tmp_path / "gz.csv")
    with pytest.raises(qd.DataError, match="u16.csv: not UTF-8 text: the file is UTF-16"):
        qd.load_pairs(tmp_path / "u16.csv")
    with pytest.raises(qd.DataError, match="one column holding semicolons"):
        qd.load_pairs(tmp_path / "semi.csv")


def test_a_pipe_is_refused_with_a_clear_error(tmp_path):
    import os

    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    with pytest.raises(qd.DataError, match="pipe.csv: not a regular file"):
        qd.load_pairs(fifo)
