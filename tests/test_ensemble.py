"""Ensembles (`qpairs ensemble`, `qpairs.detector.Ensemble`): fitting, loading, the length hand-over, and every
way a model is used (score, search, dedup, adapt) going through the ensemble's own probabilities."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import qpairs
from _tiny_models import tiny_lstm_dir
from conftest import make_pairs
from qpairs.calibration import Calibrator
from qpairs.cli import main
from qpairs.detector import Ensemble
from qpairs.ensemble import fit_ensemble, weight_grid, write_ensemble


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Two different tiny BiLSTM runs, and labelled validation pairs they were not fitted on."""
    root = tmp_path_factory.mktemp("members")
    runs = [tiny_lstm_dir(root / "a", seed=0), tiny_lstm_dir(root / "b", seed=1)]
    val = make_pairs(300, seed=5)
    val.to_csv(root / "val.csv", index=False)
    return runs, root / "val.csv"


def test_weight_grid_covers_the_simplex():
    grid = weight_grid(3, 0.25)
    assert len(grid) == 15  # (4 + 2 choose 2)
    np.testing.assert_allclose(grid.sum(1), 1.0)
    assert (grid >= 0).all() and len(np.unique(grid, axis=0)) == len(grid)
    assert [1.0, 0.0] in weight_grid(2, 0.5).tolist() and [0.0, 1.0] in weight_grid(2, 0.5).tolist()
    with pytest.raises(ValueError, match="must divide 1"):
        weight_grid(2, 0.3)


def test_the_ensemble_mixes_its_members_calibrated_logits(members):
    runs, _ = members
    a, b = (qpairs.load(r, device="cpu") for r in runs)
    pairs = make_pairs(40, seed=9)
    q1, q2 = list(pairs["question1"]), list(pairs["question2"])
    ens = Ensemble([a, b], [0.6, 0.4], a.calibrator)
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    want = 0.6 * logit(a.predict_proba(q1, q2)) + 0.4 * logit(b.predict_proba(q1, q2))
    np.testing.assert_allclose(-ens.distances(q1, q2), want, atol=1e-6)
    np.testing.assert_allclose(ens.predict_proba(q1, q2), a.calibrator.predict_proba(-want), atol=1e-6)
    with pytest.raises(ValueError, match="add up to 1"):
        Ensemble([a, b], [0.6, 0.6], a.calibrator)
    with pytest.raises(ValueError, match="two or more members"):
        Ensemble([a], [1.0], a.calibrator)


def test_a_member_hands_pairs_longer_than_it_reads_to_the_primary(members):
    runs, _ = members
    a, b = (qpairs.load(r, device="cpu") for r in runs)
    ens = Ensemble([a, b], [0.5, 0.5], a.calibrator)
    reads = b.model.encoder.config["max_length"]
    short, mid, long = " ".join(["word"] * reads), " ".join(["word"] * (reads * 3 // 2)), " ".join(["word"] * 2 * reads)
    shares = ens.shares([short, mid, long, "a question"], ["x", "x", "x", long])
    np.testing.assert_allclose(shares[1], [0.5, 0.25, 0.0, 0.0])
    np.testing.assert_allclose(shares.sum(0), 1.0)
    np.testing.assert_allclose(-ens.distances([long], ["a question"]),
                               np.log(a.predict_proba([long], ["a question"]) /
                                      (1 - a.predict_proba([long], ["a question"]))), atol=1e-6)


def test_fit_picks_the_weights_with_the_lowest_validation_log_loss(members):
    from sklearn.metrics import log_loss

    runs, val_csv = members
    val = pd.read_csv(val_csv)
    q1, q2, y = list(val["question1"]), list(val["question2"]), val["is_duplicate"].to_numpy()
    dets = [qpairs.load(r, device="cpu") for r in runs]
    ens, report = fit_ensemble(dets, q1, q2, y, step=0.1)
    best = log_loss(y, ens.predict_proba(q1, q2))
    for w in weight_grid(2, 0.1):  # no grid point, calibrated on the same pairs, does better
        d = Ensemble(dets, w, ens.calibrator).distances(q1, q2)
        assert log_loss(y, Calibrator("platt").fit(d, y).predict_proba(d)) >= best - 1e-9
    assert report["ensemble"]["log_loss"] == pytest.approx(best)
    assert len(report["members"]) == 2 and report["validation_pairs"] == len(y)


def test_cli_writes_an_ensemble_that_scores_a_file_row_for_row(members, tmp_path, capsys):
    runs, val_csv = members
    out = tmp_path / "ens"
    assert main(["ensemble", str(runs[0]), str(runs[1]), "--validation", str(val_csv), "-o", str(out),
                 "--step", "0.25"]) == 0
    said = capsys.readouterr().out
    assert "ensemble written to" in said and "weights:" in said
    spec = json.loads((out / "ensemble.json").read_text())
    assert all(not Path(m["model"]).is_absolute() and (out / m["model"]).resolve() == r.resolve()
               for m, r in zip(spec["members"], runs))  # relative: the folders move together
    assert sum(m["weight"] for m in spec["members"]) == pytest.approx(1.0)
    ens = qpairs.load(out, device="cpu")
    assert isinstance(ens, Ensemble) and ens.path == out
    pairs = make_pairs(30, seed=11)
    pairs["id"] = [f"p{i}" for i in range(len(pairs))]
    pairs.to_csv(tmp_path / "in.csv", index=False)
    assert main(["score", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.csv"), "--model", str(out)]) == 0
    scored = pd.read_csv(tmp_path / "out.csv")
    assert list(scored["id"]) == list(pairs["id"])
    np.testing.assert_allclose(scored["duplicate_probability"],
                               ens.predict_proba(list(pairs["question1"]), list(pairs["question2"])), atol=1e-6)
    assert main(["ensemble", str(runs[0]), str(runs[1]), "--validation", str(val_csv), "-o", str(out)]) == 2
    assert "already holds a model" in capsys.readouterr().err


def test_a_pair_gets_the_same_probability_whatever_its_batch(members):
    runs, _ = members
    ens = Ensemble([qpairs.load(r, device="cpu") for r in runs], [0.7, 0.3], qpairs.load(runs[0]).calibrator)
    pairs = make_pairs(50, seed=3)
    q1, q2 = list(pairs["question1"]), list(pairs["question2"])
    together = ens.predict_proba(q1, q2)
    alone = np.array([ens.predict_proba(a, b) for a, b in zip(q1[:10], q2[:10])])
    np.testing.assert_allclose(alone, together[:10], atol=1e-6)


def test_search_and_dedup_rank_by_the_ensembles_probabilities(members, tmp_path):
    pytest.importorskip("faiss")
    from qpairs.dedup import dedup
    from qpairs.search import QuestionIndex

    runs, val_csv = members
    out = tmp_path / "ens"
    assert main(["ensemble", *map(str, runs), "--validation", str(val_csv), "-o", str(out), "--step", "0.5"]) == 0
    ens = qpairs.load(out, device="cpu")
    bank = list(dict.fromkeys(make_pairs(60, seed=2)["question1"]))
    index = QuestionIndex.build(ens, bank, kind="flat")
    hits = ens.search(index, bank[0], k=5)
    np.testing.assert_allclose([h.probability for h in hits],
                               ens.predict_proba([bank[0]] * len(hits), [h.text for h in hits]), atol=1e-5)
    assert [h.probability for h in hits] == sorted((h.probability for h in hits), reverse=True)
    with pytest.raises(Exception, match="was built with model"):
        qpairs.load(runs[0], device="cpu").search(index, bank[0])  # the primary alone is another model
    groups = dedup(ens, bank, k=5)
    assert len(groups) == len(bank)
    best = groups[groups["best_match"] != ""].iloc[0]
    assert best["best_probability"] == pytest.approx(ens.predict_proba(best["text"], bank[int(best["best_match"])]),
                                                     abs=1e-5)


def test_adapt_refits_an_ensembles_calibration_and_refuses_head(members, tmp_path, capsys):
    runs, val_csv = members
    dets = [qpairs.load(r, device="cpu", backend="torch") for r in runs]  # as adapt loads them
    ens = Ensemble(dets, [0.5, 0.5], dets[0].calibrator)
    write_ensemble(ens, runs, tmp_path / "ens")
    data = tmp_path / "site.csv"
    make_pairs(200, seed=21).to_csv(data, index=False)
    assert main(["adapt", str(tmp_path / "ens"), "--data", str(data), "-o", str(tmp_path / "adapted")]) == 0
    adapted = qpairs.load(tmp_path / "adapted", device="cpu")
    assert isinstance(adapted, Ensemble)
    np.testing.assert_allclose(adapted.weights, [0.5, 0.5])
    from qpairs.data import load_pairs

    site = load_pairs([data])  # as adapt reads it (repeated pairs merged)
    d = ens.distances(list(site["question1"]), list(site["question2"]))  # the mix's distances, not the primary's
    want = Calibrator("platt").fit(d, site["is_duplicate"].to_numpy()).params
    assert adapted.calibrator.params == pytest.approx(want, rel=1e-4)
    assert main(["adapt", str(tmp_path / "ens"), "--data", str(data), "-o", str(tmp_path / "head"), "--head"]) == 2
    assert "is an ensemble" in capsys.readouterr().err


def test_a_broken_ensemble_file_is_a_clear_error(members, tmp_path):
    from qpairs.checkpoint import ModelDirError

    (tmp_path / "ens").mkdir()
    (tmp_path / "ens" / "ensemble.json").write_text(json.dumps({"members": [{"path": "a"}]}))
    (tmp_path / "ens" / "calibration.json").write_text(json.dumps(qpairs.load(members[0][0]).calibrator.to_dict()))
    with pytest.raises(ModelDirError, match="ensemble.json: expected"):
        qpairs.load(tmp_path / "ens")


def test_the_fingerprint_follows_every_member_and_its_calibration(members):
    from qpairs.checkpoint import model_fingerprint

    runs, _ = members
    a, b = (qpairs.load(r, device="cpu") for r in runs)
    first = model_fingerprint(Ensemble([a, b], [0.5, 0.5], a.calibrator))
    assert first == model_fingerprint(Ensemble([a, b], [0.5, 0.5], b.calibrator))  # the mix's own calibration: not the model
    assert first != model_fingerprint(Ensemble([a, b], [0.6, 0.4], a.calibrator))
    assert first != model_fingerprint(Ensemble([b, a], [0.5, 0.5], a.calibrator))
    b.calibrator.params = {**b.calibrator.params, "intercept": b.calibrator.params["intercept"] + 1}
    assert first != model_fingerprint(Ensemble([a, b], [0.5, 0.5], a.calibrator))


def test_a_transformer_primary_takes_onnx_and_its_token_states_while_the_bilstm_stays_in_torch(members, tiny_bert,
                                                                                                 tmp_path):
    pytest.importorskip("onnxruntime")
    from _tiny_models import tiny_matching_dir
    from qpairs.pair_scores import StateMemo

    primary = qpairs.load(tiny_matching_dir(tmp_path / "m", tiny_bert), device="cpu", backend="torch")
    lstm = qpairs.load(members[0][0], device="cpu", backend="torch")
    ens = Ensemble([primary, lstm], [0.6, 0.4], primary.calibrator)
    assert ens.backend == "torch+torch" and ens.scores_texts
    pairs = make_pairs(24, seed=13)
    q1, q2 = list(pairs["question1"]), list(pairs["question2"])
    in_torch = ens.predict_proba(q1, q2)
    memo = StateMemo()
    np.testing.assert_allclose(ens.calibrator.predict_proba(ens.distances(q1, q2, states=memo)), in_torch, atol=1e-6)
    assert len(memo) == len(set(q1) | set(q2))  # the primary kept every text's states
    ens.use_backend("onnx")
    assert ens.backend == "onnx+torch"
    np.testing.assert_allclose(ens.predict_proba(q1, q2), in_torch, atol=1e-3)
    ens.use_backend(ens.backend)  # the joined form round-trips (as `qpairs serve` sets threads)
    assert ens.backend == "onnx+torch"
    with pytest.raises(ValueError, match="names 3 backends for 2 members"):
        ens.use_backend("torch+torch+torch")


def test_members_that_cannot_make_one_ensemble_are_refused(members, tmp_path, capsys):
    import shutil

    runs, val_csv = members
    copy = tmp_path / "copy"
    shutil.copytree(runs[0], copy)  # the same model under another name
    assert main(["ensemble", str(runs[0]), str(copy), "--validation", str(val_csv), "-o", str(tmp_path / "e1")]) == 2
    assert "is the same model as" in capsys.readouterr().err
    seen = tmp_path / "seen"
    shutil.copytree(runs[1], seen)
    (seen / "splits").mkdir(exist_ok=True)
    pd.read_csv(val_csv).head(40).to_csv(seen / "splits" / "train.csv.gz", index=False)  # it trained on 40 of them
    assert main(["ensemble", str(runs[0]), str(seen), "--validation", str(val_csv), "-o", str(tmp_path / "e2")]) == 2
    assert "40 of the 300 validation pairs are training pairs of" in capsys.readouterr().err
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2" / "ensemble.json").exists()


def test_unfamiliar_share_without_familiar_is_refused(capsys):
    from qpairs.cli import main

    assert main(["ensemble", "matching", "fast", "--validation", "data/sample_pairs.csv", "-o", "unused",
                 "--unfamiliar-share", "0.5"]) == 2
    assert "--unfamiliar-share sets how much --familiar hands over" in capsys.readouterr().err
