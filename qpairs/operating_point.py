"""Operating points: where the decision threshold sits on the calibrated probabilities.

A rule names what the threshold is chosen for on validation data:

* ``accuracy`` (default): the cut with the highest accuracy;
* ``f1``: the cut with the highest F1;
* ``precision:P``: the lowest cut whose precision is at least P (the most recall at that precision);
* ``recall:R``: the highest cut whose recall is at least R (the most precision at that recall).

A precision target counts as reached only by a cut that flags at least `MIN_FLAGGED` pairs as
duplicates (all of them when the data has fewer), so one lucky pair cannot make it. Calibrated
probabilities never change; only the decision moves.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RULES = ("accuracy", "f1", "precision:P", "recall:R")
MIN_FLAGGED = 10


class OperatingPointError(ValueError):
    """The asked-for operating point cannot be reached on the data."""


@dataclass(frozen=True)
class Rule:
    kind: str  # accuracy | f1 | precision | recall
    target: float | None = None

    def __str__(self) -> str:
        return self.kind if self.target is None else f"{self.kind}:{self.target:g}"


def parse_rule(text) -> Rule:
    """'accuracy', 'f1', 'precision:0.95' or 'recall:0.9' → `Rule` (ValueError naming the forms otherwise)."""
    if isinstance(text, Rule):
        return text
    kind, _, value = str(text).strip().lower().partition(":")
    if kind in ("accuracy", "f1") and not value:
        return Rule(kind)
    if kind in ("precision", "recall") and value:
        try:
            target = float(value)
        except ValueError:
            target = float("nan")
        if not 0 < target <= 1:
            raise ValueError(f"--threshold {text}: the {kind} target must be a number in (0, 1], e.g. {kind}:0.9")
        return Rule(kind, target)
    raise ValueError(f"--threshold must be one of {', '.join(RULES)} (e.g. precision:0.95), not {text!r}")


def _cuts(probs, labels):
    """Sorted probabilities and, per cut k (the top k pairs predicted duplicate), TP, FP and validity."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=int)
    order = np.argsort(-p, kind="stable")
    p_sorted, y_sorted = p[order], y[order]
    tp = np.concatenate([[0], np.cumsum(y_sorted)])
    fp = np.concatenate([[0], np.cumsum(1 - y_sorted)])
    valid = np.concatenate([[True], p_sorted[1:] != p_sorted[:-1], [True]])  # only cut between distinct values
    return p_sorted, tp, fp, valid


def _threshold_at(p_sorted, k: int) -> float:
    if k == 0:
        return float(np.nextafter(p_sorted[0], np.inf)) if len(p_sorted) else 0.5
    if k == len(p_sorted):
        return float(p_sorted[-1])
    return float((p_sorted[k - 1] + p_sorted[k]) / 2)


def choose(probs, labels, rule="accuracy") -> tuple[float, dict]:
    """(threshold, operating point) for `rule` on labelled data.

    The operating point records the rule and the precision and recall reached at the threshold;
    `OperatingPointError` when a precision target is out of reach (the message names the best).
    """
    rule = parse_rule(rule)
    y = np.asarray(labels, dtype=int)
    p_sorted, tp, fp, valid = _cuts(probs, y)
    n, pos = len(y), int(y.sum())
    flagged = tp + fp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(flagged > 0, tp / np.maximum(flagged, 1), 0.0)  # as the metrics count it
        recall = tp / pos if pos else np.zeros_like(tp, dtype=float)
    if rule.kind == "accuracy":
        score = (tp + (n - pos - fp)) / max(n, 1)
    elif rule.kind == "f1":
        score = np.where(tp > 0, 2 * tp / np.maximum(flagged + pos, 1), 0.0)
    elif rule.kind == "precision":
        enough = flagged >= min(MIN_FLAGGED, pos)
        ok = valid & enough & (precision >= rule.target - 1e-12)
        if not ok.any():
            best = float(np.max(np.where(valid & enough & (flagged > 0), precision, 0.0)))
            raise OperatingPointError(
                f"precision {rule.target:g} is not reachable on these {n} pairs: the best precision of a cut that "
                f"flags at least {min(MIN_FLAGGED, pos)} pairs is {best:.4f}; ask for precision:{np.floor(best * 100) / 100:g} "
                f"or less")
        score = np.where(ok, flagged, -1)  # the lowest such cut: most pairs flagged
    else:  # recall: the highest cut that still reaches the target
        ok = valid & (recall >= rule.target - 1e-12)
        score = np.where(ok, -flagged, -np.inf)
    k = int(np.argmax(np.where(valid, score, -np.inf)))
    point = {"rule": str(rule), "precision": float(precision[k]), "recall": float(recall[k]), "n": n}
    return _threshold_at(p_sorted, k), point


def describe(point: dict | None, reached: dict) -> str | None:
    """One line: precision and recall reached on some data next to the ones the operating point promised."""
    if not point:
        return None
    return (f"operating point {point['rule']} (threshold {reached.get('threshold', float('nan')):.4f}), promised on "
            f"{point.get('measured_on', 'validation')} ({point['n']} pairs):\n"
            f"  precision {reached['precision']:.4f} here vs {point['precision']:.4f} promised, "
            f"recall {reached['recall']:.4f} vs {point['recall']:.4f}")
