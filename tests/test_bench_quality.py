"""scripts/bench_quality.py's resume guards and scripts/make_aux_pairs.py's held-out sets."""
import pandas as pd
import pytest


def test_resume_refuses_other_settings_and_accepts_the_same(tmp_path, load_script):
    bq = load_script("bench_quality")
    bq.check_settings(bq.parse_args(["--max-eval-pairs", "400"]), tmp_path)
    bq.check_settings(bq.parse_args(["--max-eval-pairs", "400", "--resume"]), tmp_path)  # same: accepted
    with pytest.raises(SystemExit, match=r"--max-eval-pairs 400 then, None now"):
        bq.check_settings(bq.parse_args(["--resume"]), tmp_path)


def test_a_row_whose_inputs_will_not_exist_is_refused_before_any_training(load_script):
    bq = load_script("bench_quality")
    with pytest.raises(SystemExit, match="the default row needs the fast row"):
        bq.check_needs(["matching", "default"], done={})
    bq.check_needs(["default"], done={"matching": {}, "fast": {}})  # finished earlier: fine
    bq.check_needs(["matching", "fast", "default"], done={})  # run first, in row order: fine
    with pytest.raises(SystemExit, match="the warm1 row needs the matching row"):  # it starts from that head
        bq.check_needs(["top1", "warm1"], done={})


def test_held_out_pairs_share_no_sentence_with_training_pairs(load_script):
    aux = load_script("make_aux_pairs")
    train = pd.DataFrame({"question1": ["A cat sits.", "The sky is blue."], "question2": ["A dog runs.", "Rain."]})
    held = pd.DataFrame({"question1": ["a cat sits", "Birds fly.", "Fish swim."],
                         "question2": ["Something new.", "Rain.", "Trees grow."]})
    kept = aux.without_training_sentences(held, train)
    assert kept["question1"].tolist() == ["Fish swim."]  # the others share a (normalised) training sentence
