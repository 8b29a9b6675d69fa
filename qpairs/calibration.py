"""Map a distance (or any score where smaller = more similar) to a calibrated duplicate probability.

Fitted on validation data only, stored as JSON in the run directory.
"""
from __future__ import annotations

import numpy as np


def _logit(p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


class Calibrator:
    """Platt (logistic on the distance) or isotonic calibration plus a decision threshold.

    fit(distances, labels) → predict_proba(distances). `threshold` is a probability cut
    chosen on the same validation data to maximise accuracy.
    """

    def __init__(self, method: str = "platt"):
        if method not in ("platt", "isotonic"):
            raise ValueError(f"calibration method must be 'platt' or 'isotonic', not {method!r}")
        self.method = method
        self.params: dict = {}
        self.threshold = 0.5
        self.prior = None  # duplicate rate of the data it was fitted on

    def fit(self, distances, labels) -> "Calibrator":
        d = np.asarray(distances, dtype=np.float64)
        y = np.asarray(labels, dtype=int)
        if len(np.unique(y)) < 2:
            raise ValueError("calibration needs both duplicates and non-duplicates in the validation data")
        if self.method == "platt":
            from sklearn.linear_model import LogisticRegression

            lr = LogisticRegression(C=1e4).fit(d[:, None], y)
            self.params = {"coef": float(lr.coef_[0, 0]), "intercept": float(lr.intercept_[0])}
        else:
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(increasing=False, out_of_bounds="clip", y_min=1e-4, y_max=1 - 1e-4).fit(d, y)
            self.params = {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
        self.prior = float(y.mean())
        self.threshold = choose_threshold(self.predict_proba(d), y)
        return self

    def predict_proba(self, distances) -> np.ndarray:
        d = np.asarray(distances, dtype=np.float64)
        if not self.params:
            raise RuntimeError("calibrator is not fitted")
        if self.method == "platt":
            z = self.params["coef"] * d + self.params["intercept"]
            return 1.0 / (1.0 + np.exp(-z))
        return np.interp(d, self.params["x"], self.params["y"])

    def predict(self, distances) -> np.ndarray:
        return self.predict_proba(distances) >= self.threshold

    def at_prior(self, probs, test_prior: float | None) -> np.ndarray:
        """Calibrated probabilities re-weighted from the fitted duplicate rate to `test_prior` (None: unchanged)."""
        if test_prior is None:
            return np.asarray(probs, dtype=np.float64)
        if not 0 < test_prior < 1:
            raise ValueError(f"--test-prior must be strictly between 0 and 1, got {test_prior}")
        if self.prior is None:
            raise ValueError("the model's calibration.json stores no 'prior' (duplicate rate it was fitted at), "
                             "so --test-prior cannot be applied")
        return shift_prior(probs, self.prior, test_prior)

    def to_dict(self) -> dict:
        return {"method": self.method, "params": self.params, "threshold": self.threshold, "prior": self.prior}

    @classmethod
    def from_dict(cls, data: dict) -> "Calibrator":
        cal = cls(data["method"])
        cal.params, cal.threshold, cal.prior = data["params"], float(data["threshold"]), data.get("prior")
        return cal


def choose_threshold(probs, labels) -> float:
    """The probability cut that maximises accuracy on (validation) data."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=int)
    order = np.argsort(-p)
    p_sorted, y_sorted = p[order], y[order]
    # predicting the top-k as duplicates: correct = TP(k) + TN(k)
    tp = np.concatenate([[0], np.cumsum(y_sorted)])
    fp = np.concatenate([[0], np.cumsum(1 - y_sorted)])
    tn = (len(y) - y.sum()) - fp
    acc = (tp + tn) / len(y)
    # only cut between distinct values
    valid = np.concatenate([[True], p_sorted[1:] != p_sorted[:-1], [True]])
    acc = np.where(valid, acc, -1)
    k = int(np.argmax(acc))
    if k == 0:
        return float(np.nextafter(p_sorted[0], np.inf))
    if k == len(p):
        return float(p_sorted[-1])
    return float((p_sorted[k - 1] + p_sorted[k]) / 2)


def shift_prior(probs, from_rate: float, to_rate: float) -> np.ndarray:
    """Re-weight probabilities calibrated at duplicate rate `from_rate` to a test rate `to_rate` (Bayes)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12)
    shift = _logit(to_rate) - _logit(from_rate)
    return 1.0 / (1.0 + np.exp(-(_logit(p) + shift)))
