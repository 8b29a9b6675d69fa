"""Known pairs: labelled pairs (and what transitivity implies) answer the pairs they settle, in every scorer."""
import numpy as np
import pandas as pd
import pytest

from conftest import make_pairs
from qpairs.cli import main
from qpairs.errors import DataError
from qpairs.known import KNOWN_DIFFERENT, KNOWN_DUPLICATE, UNKNOWN, KnownPairs

LABELLED = pd.DataFrame({
    "question1": ["How do I learn Python?", "What is the best way to learn Python?", "How do I learn Python?",
                  "Is tennis hard?", "How can I learn Python fast?"],
    "question2": ["What is the best way to learn Python?", "How can I learn Python fast?", "How do I learn Java?",
                  "How difficult is tennis?", "How do I learn Java?"],
    "is_duplicate": [1, 1, 0, 1, 0],
})


def test_lookup_follows_transitivity_and_each_pairs_own_label():
    known = KnownPairs(LABELLED)
    q1 = ["how do i learn python", "How can I learn Python fast?", "What is the best way to learn Python?",
          "How do I learn Java?", "Is tennis hard?", "Is tennis hard?", "Who are you?"]
    q2 = ["How can I learn Python fast?", "How do I learn Python?", "How do I learn Java?",
          "How can I learn Python fast?", "How difficult is tennis?", "How do I learn Python?", "Is tennis hard?"]
    assert known.lookup(q1, q2).tolist() == [
        KNOWN_DUPLICATE,  # A~B, B~C => A~C, matched after lower-casing and dropping punctuation
        KNOWN_DUPLICATE,  # either order
        UNKNOWN,  # B~A and A≁Java say nothing of B vs Java: no non-duplicate is inferred through a group
        KNOWN_DIFFERENT,  # labelled itself (as Python-fast / Java), in the other order
        KNOWN_DUPLICATE,
        UNKNOWN,  # two known questions in different groups, never labelled together
        UNKNOWN,  # a question the labels do not hold
    ]
    assert known.stats == {"pairs": 5, "questions": 6, "duplicate_groups": 2, "tied_pairs_left_to_the_model": 0}


def test_a_pairs_own_non_duplicate_label_wins_over_its_group():
    frame = pd.DataFrame({"question1": ["a x", "b y", "a x"], "question2": ["b y", "c z", "c z"],
                          "is_duplicate": [1, 1, 0]})
    assert KnownPairs(frame).lookup(["a x", "a x"], ["c z", "b y"]).tolist() == [KNOWN_DIFFERENT, KNOWN_DUPLICATE]


def test_apply_replaces_only_the_answered_pairs():
    known = KnownPairs(LABELLED, probability=0.95)
    p = np.array([0.2, 0.7, 0.4])
    out = known.apply(p, ["How do I learn Python?", "How do I learn Python?", "x"],
                      ["How can I learn Python fast?", "How do I learn Java?", "y"])
    assert out.tolist() == pytest.approx([0.95, 0.05, 0.4])
    assert p.tolist() == [0.2, 0.7, 0.4]  # the input is not changed


def test_questions_that_differ_only_in_symbols_or_script_stay_apart():
    frame = pd.DataFrame({"question1": ["How old is C++?", "Где купить Python?", "What is C#?"],
                          "question2": ["How old is C?", "Где продают Python?", "What is C# used for?"],
                          "is_duplicate": [0, 1, 0]})
    known = KnownPairs(frame)
    assert known.lookup(["how old is c++", "Где купить Python", "Python — это змея?"],
                        ["How old is C?", "Где продают Python?", "Где купить Python?"]).tolist() == [
        KNOWN_DIFFERENT, KNOWN_DUPLICATE, UNKNOWN]
    # two spellings of one question: the labels say nothing of the pair, the model answers it
    assert known.lookup(["How old is C++?"], ["how old is C++"]).tolist() == [UNKNOWN]


def test_text_with_nothing_to_match_never_matches():
    frame = pd.DataFrame({"question1": ["???", "Is tennis hard?"], "question2": ["!!!", "How difficult is tennis?"],
                          "is_duplicate": [1, 1]})
    known = KnownPairs(frame)
    assert known.stats["pairs"] == 1
    assert known.lookup(["???", "Is tennis hard?"], ["...", "¿?"]).tolist() == [UNKNOWN, UNKNOWN]


@pytest.mark.parametrize("probability", [0.5, 0.3, 1.2])
def test_a_probability_that_would_not_say_duplicate_is_refused(probability):
    with pytest.raises(ValueError, match=r"\(0.5, 1\]"):
        KnownPairs(LABELLED, probability=probability)


def test_a_bad_row_in_the_known_file_names_file_line_and_column(tmp_path):
    path = tmp_path / "known.csv"
    path.write_text("question1,question2,is_duplicate\nHow?,Why?,1\n,What?,0\n")
    with pytest.raises(DataError, match=r"known\.csv.*line 3.*question1"):
        KnownPairs.from_file(path)


def test_a_known_file_without_labelled_pairs_is_refused(tmp_path):
    path = tmp_path / "known.csv"
    path.write_text("question1,question2,is_duplicate\n")
    with pytest.raises(DataError, match=r"known\.csv: no labelled pairs"):
        KnownPairs.from_file(path)


def test_detector_answers_known_pairs_whatever_else_is_in_the_batch(tiny_run, tmp_path):
    import qpairs

    path = tmp_path / "known.csv"
    LABELLED.to_csv(path, index=False)
    plain = qpairs.load(tiny_run, device="cpu")
    det = qpairs.load(tiny_run, device="cpu").with_known(path, probability=0.97)
    others = make_pairs(30, seed=4)
    q1 = list(others["question1"]) + ["How do I learn Python?"]
    q2 = list(others["question2"]) + ["How can I learn Python fast?"]
    p = det.predict_proba(q1, q2)
    assert p[-1] == pytest.approx(0.97)
    assert np.allclose(p[:-1], plain.predict_proba(q1[:-1], q2[:-1]))
    assert det.predict_proba("How can I learn Python fast?", "How do I learn Java?") == pytest.approx(0.03)
    with pytest.raises(ValueError, match="answer 0.97, not 0.9"):
        det.with_known(det.known, probability=0.9)
    assert det.with_known(None).predict_proba(q1[-1], q2[-1]) == pytest.approx(plain.predict_proba(q1[-1], q2[-1]))


def test_score_submit_and_adapt_take_known_pairs(tiny_run, tmp_path, capsys):
    known = tmp_path / "known.csv"
    LABELLED.to_csv(known, index=False)
    pairs = make_pairs(40, seed=6)[["id", "question1", "question2"]]
    pairs.loc[len(pairs)] = [999, "What is the best way to learn Python?", "How do I learn Java?"]
    pairs.loc[len(pairs)] = [1000, "Is tennis hard?", "How difficult is tennis?"]
    pairs.to_csv(tmp_path / "in.csv", index=False)
    base = ["score", str(tmp_path / "in.csv"), "--model", str(tiny_run), "--device", "cpu"]
    assert main(base + ["-o", str(tmp_path / "plain.csv")]) == 0
    assert main(base + ["-o", str(tmp_path / "known.csv.out.csv"), "--known", str(known)]) == 0
    assert "1 pairs scored in this run were answered by the known pairs" in capsys.readouterr().out
    plain, with_known = pd.read_csv(tmp_path / "plain.csv"), pd.read_csv(tmp_path / "known.csv.out.csv")
    assert with_known["id"].tolist() == pairs["id"].tolist()
    assert with_known["duplicate_probability"].iloc[-1] == pytest.approx(0.99)
    assert with_known["predicted_duplicate"].iloc[-1] == 1
    assert np.allclose(with_known["duplicate_probability"].iloc[:-1], plain["duplicate_probability"].iloc[:-1])

    test = pairs.rename(columns={"id": "test_id"})
    test.to_csv(tmp_path / "test.csv", index=False)
    assert main(["submit", str(tmp_path / "test.csv"), "-o", str(tmp_path / "sub.csv"), "--model", str(tiny_run),
                 "--device", "cpu", "--known", str(known), "--known-probability", "0.9"]) == 0
    assert main(["submit", str(tmp_path / "test.csv"), "-o", str(tmp_path / "sub.csv"), "--model", str(tiny_run),
                 "--device", "cpu", "--known", str(known), "--known-probability", "0.9", "--test-prior", "0.165"]) == 0
    sub = pd.read_csv(tmp_path / "sub.csv")["is_duplicate"]
    assert sub.iloc[-1] == pytest.approx(0.9)  # the prior shift moves the model's answers, not the known ones
    assert "1 pairs scored in this run were answered" in capsys.readouterr().out
    assert main(["submit", str(tmp_path / "test.csv"), "-o", str(tmp_path / "sub2.csv"), "--model", str(tiny_run),
                 "--device", "cpu", "--test-prior", "0.165"]) == 0
    assert np.allclose(pd.read_csv(tmp_path / "sub2.csv")["is_duplicate"].iloc[:-1], sub.iloc[:-1])
    assert main(base + ["-o", str(tmp_path / "x.csv"), "--known-probability", "0.9"]) == 2
    assert "give --known too" in capsys.readouterr().err

    labelled = make_pairs(200, seed=7)
    labelled.loc[len(labelled)] = [0, 0, 0, "Is tennis hard?", "How difficult is tennis?", 1]
    labelled.to_csv(tmp_path / "mine.csv", index=False)
    assert main(["adapt", str(tiny_run), "--data", str(tmp_path / "mine.csv"), "--known", str(known),
                 "-o", str(tmp_path / "adapted")]) == 0
    assert "1 of the 201 labelled pairs are answered by" in capsys.readouterr().out
    import json
    assert json.loads((tmp_path / "adapted" / "config.json").read_text())["adapted_from"]["pairs"] == 200


def test_resume_refuses_other_known_pairs(tiny_run, tmp_path):
    from qpairs.scoring import score_file

    known = tmp_path / "known.csv"
    LABELLED.to_csv(known, index=False)
    make_pairs(120, seed=8)[["id", "question1", "question2"]].to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(KeyboardInterrupt):
        score_file(tmp_path / "in.csv", tmp_path / "out.csv", str(tiny_run), device="cpu", chunk_size=40,
                   checkpoint_rows=40, known=known, _stop_after_chunks=2, progress=False)
    with pytest.raises(ValueError, match="cannot resume"):
        score_file(tmp_path / "in.csv", tmp_path / "out.csv", str(tiny_run), device="cpu", chunk_size=40,
                   checkpoint_rows=40, resume=True, progress=False)


def test_numbers_keep_their_points_and_signs():
    frame = pd.DataFrame({"question1": ["How many pounds is 1.5 kg?", "What is -5 squared?", "Is sleeping 2-3 hours enough?"],
                          "question2": ["What is 1.5 kg in pounds?", "What is minus five squared?", "Is 2 to 3 hours of sleep enough?"],
                          "is_duplicate": [1, 1, 1]})
    known = KnownPairs(frame)
    assert known.lookup(["How many pounds is 15 kg?", "What is 5 squared?", "Is sleeping 23 hours enough?",
                         "how many pounds is 1.5 kg"],
                        ["What is 1.5 kg in pounds?", "What is minus five squared?", "Is 2 to 3 hours of sleep enough?",
                         "What is 1.5 kg in pounds?"]).tolist() == [UNKNOWN, UNKNOWN, UNKNOWN, KNOWN_DUPLICATE]


def test_every_pair_keeps_its_own_label_in_any_script_and_ties_go_to_the_model(tmp_path, caplog):
    path = tmp_path / "known.csv"
    pd.DataFrame({"question1": ["Что такое любовь?", "Как похудеть?", "愛とは何ですか？", "How old is C++?",
                                "How old is C?", "Is tennis hard?", "Is tennis hard?", "Is golf hard?"],
                  "question2": ["Что значит любовь?", "Как сбросить вес?", "愛の意味は？", "How old is Python?",
                                "How old is Python?", "How difficult is tennis?", "How difficult is tennis?",
                                "Is golf easy?"],
                  "is_duplicate": [1, 1, 0, 1, 0, 1, 0, 1]}).to_csv(path, index=False)
    with caplog.at_level("INFO", logger="qpairs"):
        known = KnownPairs.from_file(path)
    assert "1 pairs had conflicting labels; kept the majority label (1 ties dropped)" in caplog.text
    assert known.stats["pairs"] == 6 and known.stats["tied_pairs_left_to_the_model"] == 1
    assert known.lookup(["Что такое любовь?", "Как похудеть?", "愛とは何ですか？", "How old is C?", "Is tennis hard?",
                         "How old is C++?"],
                        ["Что значит любовь?", "Как сбросить вес?", "愛の意味は？", "How old is Python?",
                         "How difficult is tennis?", "How old is C?"]).tolist() == [
        KNOWN_DUPLICATE, KNOWN_DUPLICATE, KNOWN_DIFFERENT, KNOWN_DIFFERENT, UNKNOWN, UNKNOWN]
    assert "1 labelled both ways left to the model" in str(known)


def test_a_known_probability_on_the_wrong_side_of_the_threshold_is_refused(tiny_run):
    import qpairs

    det = qpairs.load(tiny_run, device="cpu")
    det.calibrator.threshold = 0.62
    with pytest.raises(ValueError, match="threshold 0.6200: raise --known-probability"):
        det.with_known(KnownPairs(LABELLED, probability=0.55))
