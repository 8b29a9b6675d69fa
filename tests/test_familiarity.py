"""The unfamiliar-pair rule (`qpairs.familiarity`): the Gaussian of the training questions, the hand-over of pairs
far from it to the zero-shot cosine, and an ensemble that carries the rule through fit, save, load and scoring."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

import qpairs
from _tiny_models import tiny_lstm_dir, tiny_matching_dir
from conftest import make_pairs
from qpairs.checkpoint import ModelDirError
from qpairs.cli import main
from qpairs.detector import Ensemble
from qpairs.ensemble import fit_ensemble, write_ensemble
from qpairs.familiarity import FAMILIARITY_FILE, Familiarity, cosine, pooled_vectors, unit_rows


def _cloud(n, dim=8, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)) * np.linspace(0.2, 1.0, dim)
    x[:, 0] += 3.0  # vectors around one direction, as sentence vectors are
    x[:, 1] += shift
    return x


def test_the_distance_is_the_squared_mahalanobis_distance_from_the_training_questions():
    train = _cloud(4000)
    fam = Familiarity.fit(train)
    x = unit_rows(train)
    cov = np.cov(x, rowvar=False) + 1e-3 * np.eye(x.shape[1])
    probe = _cloud(5, seed=1)
    d = unit_rows(probe) - x.mean(0)
    np.testing.assert_allclose(fam.distance(probe), np.einsum("ij,jk,ik->i", d, np.linalg.inv(cov), d), rtol=1e-5)  # kept in float32
    near, far = fam.distance(_cloud(500, seed=2)), fam.distance(_cloud(500, shift=3.0, seed=3))
    assert np.median(far) > 3 * np.median(near)
    np.testing.assert_allclose(fam.pair_distance(probe[:3], probe[2:]), np.maximum(fam.distance(probe[:3]),
                                                                                  fam.distance(probe[2:])))
    with pytest.raises(ValueError, match="two or more"):
        Familiarity.fit(train[:1])


def test_the_rule_hands_nothing_below_the_validation_median_and_its_share_past_the_99th_percentile():
    fam = Familiarity.fit(_cloud(4000))
    a, b = _cloud(2000, seed=4), _cloud(2000, seed=5)
    labels = (cosine(a, b) > np.median(cosine(a, b))).astype(int)
    rule = fam.fit_rule(a, b, labels, share=0.4)
    m = fam.pair_distance(a, b)
    assert rule["from"] == pytest.approx(np.percentile(m, 50)) and rule["to"] == pytest.approx(np.percentile(m, 99))
    assert rule["slope"] > 0  # a higher cosine, a likelier duplicate
    share = fam.shares(a, b)
    assert (share[m <= rule["from"]] == 0).all() and np.allclose(share[m >= rule["to"]], 0.4)
    assert ((share >= 0) & (share <= 0.4)).all()
    logits = np.linspace(-3, 3, len(a))
    mixed = fam.apply(logits, a, b)
    np.testing.assert_allclose(mixed[share == 0], logits[share == 0])
    top = m >= rule["to"]
    np.testing.assert_allclose(mixed[top], 0.6 * logits[top] + 0.4 * (rule["slope"] * cosine(a, b)[top] + rule["bias"]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fam.fit_rule(a, b, labels, share=1.5)


@pytest.fixture(scope="module")
def fitted(tiny_bert, tmp_path_factory):
    """An ensemble of a tiny matching model and a tiny BiLSTM with the rule, fitted and written to a directory."""
    root = tmp_path_factory.mktemp("familiar")
    runs = [tiny_matching_dir(root / "m", tiny_bert), tiny_lstm_dir(root / "l", seed=0)]
    dets = [qpairs.load(r, device="cpu", backend="torch") for r in runs]
    train, val = make_pairs(200, seed=1), make_pairs(300, seed=5)
    train.to_csv(root / "train.csv", index=False)
    val.to_csv(root / "val.csv", index=False)
    texts = list(dict.fromkeys(list(train["question1"]) + list(train["question2"])))
    fam = Familiarity.fit(pooled_vectors(dets[0], texts))
    ens, report = fit_ensemble(dets, list(val["question1"]), list(val["question2"]), val["is_duplicate"].to_numpy(),
                               step=0.5, familiarity=fam, unfamiliar_share=0.5)
    write_ensemble(ens, runs, root / "ens", report)
    return runs, root, ens, report


def test_an_ensemble_applies_the_rule_to_its_mixed_logit_with_the_primarys_mean_token_states(fitted):
    runs, root, ens, report = fitted
    assert report["unfamiliar"] == ens.familiarity.rule and ens.familiarity.rule["share"] == 0.5
    pairs = make_pairs(40, seed=9)
    q1, q2 = list(pairs["question1"]), ["Why is the sky blue at noon?"] * 20 + list(pairs["question2"])[20:]
    plain = Ensemble(ens.members, ens.weights, ens.calibrator)  # the same mix without the rule
    primary = ens.members[0]
    want = ens.familiarity.apply(-plain.distances(q1, q2), pooled_vectors(primary, q1), pooled_vectors(primary, q2))
    np.testing.assert_allclose(-ens.distances(q1, q2), want, atol=1e-5)
    assert (ens.familiarity.shares(pooled_vectors(primary, q1), pooled_vectors(primary, q2)) > 0).any()
    alone = np.array([ens.predict_proba(a, b) for a, b in zip(q1[:5], q2[:5])])
    np.testing.assert_allclose(alone, ens.predict_proba(q1, q2)[:5], atol=1e-6)  # whatever the batch


def test_the_rule_reads_the_first_frozen_matching_member_when_the_primary_is_not_one(fitted):
    """A BiLSTM primary: the rule reads the matching member's pooled states, whatever the order."""
    runs, root, ens, _ = fitted
    matching, lstm = ens.members
    val = make_pairs(300, seed=5)
    fam = Familiarity(ens.familiarity.mean, ens.familiarity.precision)
    swapped, _ = fit_ensemble([lstm, matching], list(val["question1"]), list(val["question2"]),
                              val["is_duplicate"].to_numpy(), step=0.5, familiarity=fam, unfamiliar_share=0.5)
    assert swapped.reference == 1
    pairs = make_pairs(40, seed=9)
    q1, q2 = list(pairs["question1"]), ["Why is the sky blue at noon?"] * 20 + list(pairs["question2"])[20:]
    plain = Ensemble(swapped.members, swapped.weights, swapped.calibrator)
    a, b = pooled_vectors(matching, q1), pooled_vectors(matching, q2)
    assert (fam.shares(a, b) > 0).any()
    np.testing.assert_allclose(-swapped.distances(q1, q2), fam.apply(-plain.distances(q1, q2), a, b), atol=1e-5)


def test_the_rule_is_saved_and_loaded_with_the_ensemble(fitted):
    runs, root, ens, _ = fitted
    spec = json.loads((root / "ens" / "ensemble.json").read_text())
    assert spec["unfamiliar"] == pytest.approx(ens.familiarity.rule) and (root / "ens" / FAMILIARITY_FILE).exists()
    loaded = qpairs.load(root / "ens", device="cpu", backend="torch")
    pairs = make_pairs(30, seed=12)
    q1, q2 = list(pairs["question1"]), list(pairs["question2"])
    np.testing.assert_allclose(loaded.predict_proba(q1, q2), ens.predict_proba(q1, q2), atol=1e-5)
    assert "unfamiliar pairs hand up to 50% to the zero-shot cosine" in str(loaded)
    broken = root / "broken"  # beside "ens": the members' relative paths still hold
    shutil.copytree(root / "ens", broken)
    (broken / FAMILIARITY_FILE).unlink()
    with pytest.raises(ModelDirError, match=FAMILIARITY_FILE):
        qpairs.load(broken, device="cpu")


def test_cli_fits_the_rule_from_training_files_and_refuses_members_without_token_states(fitted, tmp_path, capsys):
    runs, root, _, _ = fitted
    out = tmp_path / "ens"
    assert main(["ensemble", *map(str, runs), "--validation", str(root / "val.csv"), "-o", str(out), "--step", "0.5",
                 "--familiar", str(root / "train.csv"), "--unfamiliar-share", "0.3"]) == 0
    said = capsys.readouterr().out
    assert "unfamiliar pairs: up to 30% of the logit goes to the zero-shot cosine" in said
    assert json.loads((out / "ensemble.json").read_text())["unfamiliar"]["share"] == 0.3
    other_lstm = tiny_lstm_dir(tmp_path / "l2", seed=1)
    assert main(["ensemble", str(runs[1]), str(other_lstm), "--validation", str(root / "val.csv"), "-o",
                 str(tmp_path / "x"), "--familiar", str(root / "train.csv")]) == 2
    err = capsys.readouterr().err
    assert "needs a member that is a frozen-base matching model" in err and "is not a matching-head" in err
    scored = tmp_path / "scored.csv"
    make_pairs(20, seed=3).to_csv(tmp_path / "in.csv", index=False)
    assert main(["score", str(tmp_path / "in.csv"), "-o", str(scored), "--model", str(out)]) == 0
    assert len(pd.read_csv(scored)) == 20
    assert main(["adapt", str(out), "--data", str(root / "val.csv"), "-o", str(tmp_path / "adapted")]) == 0
    adapted = qpairs.load(tmp_path / "adapted", device="cpu", backend="torch")
    assert adapted.familiarity.rule == pytest.approx(qpairs.load(out, device="cpu").familiarity.rule)


def test_search_and_dedup_state_memos_and_a_reload_give_the_same_scores_and_fingerprint(fitted):
    from qpairs.checkpoint import model_fingerprint
    from qpairs.pair_scores import StateMemo

    runs, root, ens, _ = fitted
    pairs = make_pairs(30, seed=14)
    q1, q2 = list(pairs["question1"]), list(pairs["question2"])
    fresh = ens.distances(q1, q2)
    memo = StateMemo()
    np.testing.assert_allclose(ens.distances(q1, q2, states=memo), fresh, atol=1e-6)
    np.testing.assert_allclose(ens.distances(q1, q2, states=memo), fresh, atol=1e-6)  # every text from the memo now
    loaded = qpairs.load(root / "ens", device="cpu", backend="torch")
    assert model_fingerprint(loaded) == model_fingerprint(ens)
    assert model_fingerprint(loaded) != model_fingerprint(Ensemble(ens.members, ens.weights, ens.calibrator))
    with pytest.raises(ValueError, match="pass the `pooled` dict"):
        ens.mix(ens.member_logits(q1, q2), q1, q2)


def test_a_broken_rule_a_trained_base_or_a_title_body_primary_is_refused(fitted, tmp_path, monkeypatch):
    runs, root, ens, _ = fitted
    bad = tmp_path / "bad"
    shutil.copytree(root / "ens", bad)
    spec = json.loads((bad / "ensemble.json").read_text())
    spec["members"] = [{**m, "model": str((root / "ens" / m["model"]).resolve())} for m in spec["members"]]
    del spec["unfamiliar"]["slope"]
    (bad / "ensemble.json").write_text(json.dumps(spec))
    with pytest.raises(ModelDirError, match=r"ensemble.json.*\"unfamiliar\" must map"):
        qpairs.load(bad, device="cpu")
    primary = ens.members[0]
    with monkeypatch.context() as m:  # as a --train-top-layers run's config says
        m.setitem(primary.model.encoder.config, "frozen_base", False)
        with pytest.raises(ValueError, match="trained its encoder's layers.*no longer zero-shot"):
            pooled_vectors(primary, ["How do I learn Python?"])
    pooled_vectors(primary, ["How do I learn Python?"])  # the frozen base itself is accepted
    monkeypatch.setattr(primary.model, "_prepare", {"left": None, "right": str.lower})  # sides read differently
    with pytest.raises(ValueError, match="is not a matching-head question model"):
        pooled_vectors(primary, ["How do I learn Python?"])
