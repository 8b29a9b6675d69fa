"""Each input side's text preparation lives in the model: saved in its config, derived for older title/body runs."""
import json

import numpy as np
import pytest
import torch

import qpairs
from qpairs.calibration import Calibrator
from qpairs.checkpoint import ModelDirError, save_model, write_json
from qpairs.encoders import LSTMEncoder
from qpairs.model import SiameseModel
from qpairs.scoring import PairScorer
from qpairs.sides import clean_body
from qpairs.vocab import WordVocab

TITLES = ["How do I fix python 3 with pasta?", "Why is my guitar out of tune?", "How do I fix python 3 with pasta?"]
BODIES = ["<p>My <code>python 3</code> code</p><pre>import pasta\nprint(1)</pre>" + " more words" * 30,
          "<p>The guitar goes flat after an hour of playing.</p>",
          "plain text body about pasta and python " * 10]
TRAIN = {"left_col": "title", "right_col": "body", "body_truncation": "head", "body_max_words": 12}


def _encoder(vocab, seed):
    torch.manual_seed(seed)
    return LSTMEncoder(vocab, embedding_dim=8, hidden_size=8, projection_dim=8, max_length=24)


def _run(directory, right: bool, train: dict | None = TRAIN, sides: dict | None = None):
    """A tiny calibrated run: pseudo-Siamese (two LSTMs) when `right`, saved with `train` settings."""
    vocab = WordVocab.build(TITLES + [clean_body(b, None) for b in BODIES], min_freq=1)
    model = SiameseModel(_encoder(vocab, 0), "euclidean", _encoder(vocab, 1) if right else None, sides=sides).eval()
    save_model(model, directory, train)
    write_json(directory / "calibration.json", Calibrator("platt").fit(np.array([0.1, 0.2, 1.5, 2.0]),
                                                                       np.array([1, 1, 0, 0])).to_dict())
    return directory


def _drop_sides(directory):
    """Rewrite config.json as a run saved before configs held `sides`."""
    cfg = json.loads((directory / "config.json").read_text())
    cfg.pop("sides", None)
    (directory / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("left_col, body_side", [("title", "right"), ("body", "left"), ("content", "left")])
def test_an_older_title_body_run_prepares_its_body_side_from_its_training_settings(tmp_path, left_col, body_side):
    train = {**TRAIN, "left_col": left_col}
    run = _run(tmp_path / "run", right=True, train=train)
    assert json.loads((run / "config.json").read_text())["sides"] == {
        body_side: {"clean_body": {"max_words": 12, "policy": "head"}}}
    new = qpairs.load(run, device="cpu", backend="torch")
    _drop_sides(run)
    old = qpairs.load(run, device="cpu", backend="torch")
    assert old.model.sides == new.model.sides
    other = "left" if body_side == "right" else "right"
    assert old.preprocess(BODIES, body_side) == [clean_body(b, 12, "head") for b in BODIES]
    assert old.preprocess(BODIES, other) == BODIES
    assert "<p>" not in " ".join(old.preprocess(BODIES, body_side))
    np.testing.assert_array_equal(old.predict_proba(TITLES, BODIES), new.predict_proba(TITLES, BODIES))


def test_a_question_pair_run_prepares_nothing(tmp_path):
    run = _run(tmp_path / "run", right=False, train={"left_col": None, "body_max_words": 100})
    assert "sides" not in json.loads((run / "config.json").read_text())
    det = qpairs.load(run, device="cpu", backend="torch")
    assert det.model.sides == {} and det.preprocess(BODIES, "right") == BODIES


@pytest.mark.parametrize("right", [True, False])
def test_scores_come_from_the_model_side_encode(tmp_path, right):
    run = _run(tmp_path / "run", right=right)
    det = qpairs.load(run, device="cpu", backend="torch")
    with torch.inference_mode():
        e1 = det.model.encode(TITLES, "left", device="cpu", batch_size=2)
        e2 = det.model.encode(BODIES, "right", device="cpu", batch_size=2)
        want = det.calibrator.predict_proba(det.model.decision_distance(e1, e2).numpy())
    np.testing.assert_allclose(det.predict_proba(TITLES, BODIES), want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(PairScorer(det, batch_size=2).predict_proba(TITLES, BODIES), want, rtol=0, atol=1e-6)
    assert (det.model.right_encoder is not None) == right
    if right:  # the two inputs run through different encoders
        assert not np.allclose(det.predict_proba(TITLES, BODIES), det.predict_proba(BODIES, TITLES))


@pytest.mark.parametrize("sides, message", [
    ({"middle": {}}, "unknown side 'middle'"),
    ({"right": {"shout": {}}}, "sides.right.shout: unknown step"),
    ({"right": {"clean_body": {"policy": "tail"}}}, "sides.right.clean_body.policy must be one of"),
    ([1], "sides must be an object"),
])
def test_a_bad_sides_config_names_the_file_and_field(tmp_path, sides, message):
    run = _run(tmp_path / "run", right=True)
    cfg = json.loads((run / "config.json").read_text())
    cfg["sides"] = sides
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelDirError, match=message) as err:
        qpairs.load(run, device="cpu")
    assert "config.json" in str(err.value)


@pytest.mark.parametrize("right", [True, False])
def test_a_search_index_prepares_stored_bodies_as_predict_proba_does(tmp_path, right):
    from qpairs.search import QuestionIndex

    det = qpairs.load(_run(tmp_path / "run", right=right), device="cpu", backend="torch")
    index = QuestionIndex.build(det, BODIES, progress=False)
    hits = det.search(index, TITLES[1], k=len(BODIES))
    want = det.predict_proba([TITLES[1]] * len(BODIES), BODIES)
    got = {h.id: h.probability for h in hits}
    np.testing.assert_allclose([got[str(i)] for i in range(len(BODIES))], want, rtol=0, atol=1e-6)
