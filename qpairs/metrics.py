"""Classification metrics for duplicate probabilities."""
from __future__ import annotations

import numpy as np

METRIC_NAMES = ("accuracy", "f1", "precision", "recall", "roc_auc", "average_precision", "log_loss")
from .config import HIGHER_IS_BETTER  # noqa: F401  (re-exported)


def classification_metrics(labels, probs, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy/F1/precision/recall at `threshold`, plus ROC-AUC, average precision and log loss."""
    from sklearn import metrics as m

    y = np.asarray(labels, dtype=int)
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    pred = (p >= threshold).astype(int)
    out = {
        "accuracy": m.accuracy_score(y, pred),
        "f1": m.f1_score(y, pred, zero_division=0),
        "precision": m.precision_score(y, pred, zero_division=0),
        "recall": m.recall_score(y, pred, zero_division=0),
        "log_loss": m.log_loss(y, p, labels=[0, 1]),
    }
    both = len(np.unique(y)) == 2
    out["roc_auc"] = m.roc_auc_score(y, p) if both else float("nan")
    out["average_precision"] = m.average_precision_score(y, p) if both else float("nan")
    out["n"] = int(len(y))
    out["duplicate_rate"] = float(y.mean()) if len(y) else float("nan")
    return {k: float(v) for k, v in out.items()}


SHORT_NAMES = {"average_precision": "avg_prec"}  # table headers
NAME_WIDTH = 30  # longest row name in a table; longer ones are cut with "…"


def format_table(rows: dict[str, dict], columns=METRIC_NAMES) -> str:
    """A plain-text table: one row per named result, one column per metric (the metrics fit 100 columns)."""
    names = {name: name if len(name) <= NAME_WIDTH else name[: NAME_WIDTH - 1] + "…" for name in rows}
    width = max([len(n) for n in names.values()] + [8])
    heads = [SHORT_NAMES.get(c, c) for c in columns]
    widths = [max(len(h), 6) + 2 for h in heads]
    lines = [f"{'':<{width}}" + "".join(f"{h:>{w}}" for h, w in zip(heads, widths))]
    for name, vals in rows.items():
        lines.append(f"{names[name]:<{width}}" + "".join(f"{vals.get(c, float('nan')):>{w}.4f}"
                                                          for c, w in zip(columns, widths)))
    return "\n".join(lines)
