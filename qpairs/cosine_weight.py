"""The matching head's cosine weight: w in logit = MLP(features) + w · cos(pooled token states), chosen with the
calibration on validation after training (over a frozen base the cosine is zero-shot's)."""
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


def store_cosine_weight(run_dir: Path, model, distances, labels, method: str, threshold: str) -> None:
    """Fit the matching head's cosine weight and calibration on validation (`fit_cosine_weight`; `distances()`: the
    model's validation distances at the head's current weight) and write both into the run (config.json,
    calibration.json)."""

    def distances_at(w: float) -> np.ndarray:
        model.pair_head.cosine_weight = w
        return distances()

    w, cal = fit_cosine_weight(distances_at, labels, method, threshold)
    model.pair_head.cosine_weight = w
    config = read_json(run_dir / "config.json")
    config["pair_head"]["cosine_weight"] = w
    write_json(run_dir / "config.json", config)
    write_json(run_dir / "calibration.json", cal.to_dict())
    log.info("matching head: cosine weight %g, fitted on validation with the calibration", w)
