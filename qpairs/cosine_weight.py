"""The matching head's cosine weight: w in logit = MLP(features) + w · cos(pooled token states), chosen with the
calibration on validation after training (over a frozen base the cosine is zero-shot's); and its hand-over of
pairs longer than it was trained on to that cosine (`MatchingHead.hand_over`)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .calibration import Calibrator, fit_calibrator
from .checkpoint import read_json, write_json

log = logging.getLogger("qpairs")

COSINE_WEIGHTS = np.arange(0.0, 20.5, 0.5)


def fit_cosine_weight(distances_at, labels, method: str, threshold: str = "accuracy") -> tuple[float, Calibrator]:
    """(w, calibrator): the weight of the pooled-state cosine added to a matching head's logit, among
    `COSINE_WEIGHTS`, whose calibrated probabilities have the lowest log loss on `labels` (validation), and the
    calibrator fitted at it. `distances_at(w)`: the model's distances at weight w; they are linear in w, so
    two calls give them all."""
    from sklearn.metrics import log_loss

    d0 = np.asarray(distances_at(0.0), np.float64)
    cos = d0 - np.asarray(distances_at(1.0), np.float64)

    def loss(w: float) -> float:
        d = d0 - w * cos
        return log_loss(labels, Calibrator(method).fit(d, labels).predict_proba(d), labels=[0, 1])

    best = float(min(COSINE_WEIGHTS, key=loss))
    return best, fit_calibrator(method, d0 - best * cos, labels, threshold)


def fit_hand_over(cos, labels, calibrator: Calibrator, trained_length: int) -> dict:
    """The hand-over rule of a matching head trained on `trained_length` tokens: from that length to twice it,
    the logit moves to s · cos + t, where (s, t) give the lowest log loss of `calibrator` on the distances
    −(s · cos + t) of the validation pairs (`cos`, `labels`): the cosine alone, calibrated on the same pairs
    through the head's own calibration."""
    from scipy.optimize import minimize
    from sklearn.metrics import log_loss

    cos, labels = np.asarray(cos, np.float64), np.asarray(labels)
    start = np.polyfit(cos, np.where(labels == 1, 1.0, -1.0), 1)

    def loss(st) -> float:
        return log_loss(labels, calibrator.predict_proba(-(st[0] * cos + st[1])), labels=[0, 1])

    s, t = minimize(loss, start, method="Nelder-Mead", options=dict(xatol=1e-4, fatol=1e-7, maxiter=2000)).x
    return {"from": float(trained_length), "to": float(2 * trained_length), "slope": float(s), "bias": float(t)}


def fit_head_blend(head, distances_at, labels, method: str, threshold: str,
                   trained_length: int | None = None) -> tuple[float, dict | None, Calibrator]:
    """(w, hand-over rule or None, calibrator) of the matching `head`, all fitted on validation (`distances_at(w)`:
    the model's validation distances at cosine weight w): `fit_cosine_weight` with the hand-over off; then, with
    `trained_length` (a frozen base, whose cosine is zero-shot's), `fit_hand_over`, set on the head, and the
    calibration fitted again on the distances with the hand-over in place. Leaves the head at (w, rule)."""
    head.hand_over = None
    passes: dict = {}

    def before_hand_over(w: float) -> np.ndarray:  # each weight's distances computed once
        if w not in passes:
            passes[w] = np.asarray(distances_at(w), np.float64)
        return passes[w]

    w, cal = fit_cosine_weight(before_hand_over, labels, method, threshold)
    head.cosine_weight = w
    if trained_length is None:
        return w, None, cal
    cos = before_hand_over(0.0) - before_hand_over(1.0)
    head.hand_over = rule = fit_hand_over(cos, labels, cal, trained_length)
    return w, rule, fit_calibrator(method, distances_at(w), labels, threshold)


def store_cosine_weight(run_dir: Path, model, distances, labels, method: str, threshold: str,
                        trained_length: int | None = None) -> None:
    """Fit the matching head's cosine weight, hand-over rule (with `trained_length`) and calibration on
    validation (`fit_head_blend`; `distances()`: the model's validation distances as the head now stands) and
    write them into the run (config.json, calibration.json)."""
    head = model.pair_head

    def distances_at(w: float) -> np.ndarray:
        head.cosine_weight = w
        return distances()

    w, rule, cal = fit_head_blend(head, distances_at, labels, method, threshold, trained_length)
    config = read_json(run_dir / "config.json")
    config["pair_head"].update(cosine_weight=w, hand_over=head.hand_over)
    write_json(run_dir / "config.json", config)
    write_json(run_dir / "calibration.json", cal.to_dict())
    log.info("matching head: cosine weight %g, hand-over %s, fitted on validation with the calibration", w, rule)
