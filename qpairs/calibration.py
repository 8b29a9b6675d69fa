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

    fit(distances, labels) → predict_proba(distances). `threshold` is a probability cut chosen on the
    same validation data by an operating-point rule (`qpairs.operating_point`: accuracy by default);
    `operating_point` records the rule and the precision and recall reached there (None in older files).
    """

    def __init__(self, method: str = "platt"):
        if method not in ("platt", "isotonic"):
            raise ValueError(f"calibration method must be 'platt' or 'isotonic', not {method!r}")
        self.method = method
        self.params: dict = {}
        self.threshold = 0.5
        self.prior = None  # duplicate rate of the data it was fitted on
        self.operating_point: dict | None = None

    def fit(self, distances, labels, threshold: str = "accuracy") -> "Calibrator":
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
        self.set_operating_point(d, y, threshold)
        return self

    def set_operating_point(self, distances, labels, rule: str = "accuracy") -> "Calibrator":
        """Move the decision threshold to `rule` on labelled data (probabilities unchanged)."""
        from .operating_point import choose

        self.threshold, self.operating_point = choose(self.predict_proba(distances), labels, rule)
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
        out = {"method": self.method, "params": self.params, "threshold": self.threshold, "prior": self.prior}
        if self.operating_point is not None:
            out["operating_point"] = self.operating_point
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Calibrator":
        """A calibrator from `to_dict`'s output; a missing, non-finite or out-of-range field is a ValueError
        naming it (e.g. ``threshold must be a finite number in [0, 1], got nan``)."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        cal = cls(_field(data, "method", str))
        params = _field(data, "params", dict)
        names = ("coef", "intercept") if cal.method == "platt" else ("x", "y")
        cal.params = {k: _numbers(_field(params, k, object, "params."), "params." + k) for k in names}
        if cal.method == "isotonic" and not 0 < len(cal.params["x"]) == len(cal.params["y"]):
            raise ValueError("params.x and params.y must be non-empty lists of the same length")
        cal.threshold = _number(_field(data, "threshold", object), "threshold", 0, 1)
        prior = data.get("prior")
        cal.prior = None if prior is None else _number(prior, "prior", 0, 1)
        if cal.prior in (0.0, 1.0):
            raise ValueError(f"prior must be strictly between 0 and 1, got {prior!r}")
        op = data.get("operating_point")
        if op is not None and not isinstance(op, dict):
            raise ValueError(f"operating_point must be a JSON object, got {op!r}")
        cal.operating_point = op
        return cal


def _field(data: dict, name: str, kind: type, prefix: str = ""):
    if name not in data:
        raise ValueError(f"{prefix}{name} is missing")
    value = data[name]
    if not isinstance(value, kind):
        raise ValueError(f"{prefix}{name} must be a {'JSON object' if kind is dict else 'string'}, got {value!r}")
    return value


def _number(value, name: str, low: float = -np.inf, high: float = np.inf) -> float:
    """`value` as a float, or a ValueError naming `name` unless it is a finite number in [low, high]."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) and low <= value <= high
    if not ok:
        where = f" in [{low:g}, {high:g}]" if np.isfinite(low) else ""
        raise ValueError(f"{name} must be a finite number{where}, got {value!r}")
    return float(value)


def _numbers(value, name: str):
    """A finite number, or a list of finite numbers (isotonic knots), checked as `_number` does."""
    if isinstance(value, list):
        return [_number(v, f"{name}[{i}]") for i, v in enumerate(value)]
    return _number(value, name)


def choose_threshold(probs, labels) -> float:
    """The probability cut that maximises accuracy on (validation) data."""
    from .operating_point import choose

    return choose(probs, labels, "accuracy")[0]


def shift_prior(probs, from_rate: float, to_rate: float) -> np.ndarray:
    """Re-weight probabilities calibrated at duplicate rate `from_rate` to a test rate `to_rate` (Bayes)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12)
    shift = _logit(to_rate) - _logit(from_rate)
    return 1.0 / (1.0 + np.exp(-(_logit(p) + shift)))


def fit_calibrator(method: str, distances, labels, threshold: str = "accuracy") -> Calibrator:
    """A calibrator at the `threshold` rule; an out-of-reach precision target keeps the accuracy cut and is
    marked 'unreachable' (`check_operating_point` refuses it once training is over)."""
    from .operating_point import OperatingPointError

    try:
        return Calibrator(method).fit(distances, labels, threshold)
    except OperatingPointError as exc:
        cal = Calibrator(method).fit(distances, labels)
        cal.operating_point["unreachable"] = f"--threshold {threshold}: {exc}"
        return cal
