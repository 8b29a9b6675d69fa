"""PNG plots for evaluation reports (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

REPORT_PLOTS = ("roc.png", "precision_recall.png", "reliability.png", "distance_histogram.png", "training_curves.png")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_report_plots(directory, labels, probs, distances, history: list[dict] | None = None, subject: str = "",
                      threshold: float | None = None) -> list[Path]:
    """ROC, precision-recall, distance histograms, reliability curve and training curves; `subject` (what was scored
    on what, e.g. "fast on test.csv.gz") heads each plot, and `threshold` (the decision threshold) is marked."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import precision_recall_curve, roc_curve

    plt = _plt()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in REPORT_PLOTS:  # an earlier report's plots that this one may not draw (one class, no history)
        (directory / name).unlink(missing_ok=True)
    y = np.asarray(labels, dtype=int)
    p = np.asarray(probs, dtype=float)
    d = np.asarray(distances, dtype=float)
    written = []

    pairs = f"{len(y):,} pairs"
    heading = f"{subject} ({pairs})" if subject else pairs

    def save(fig, name):
        path = directory / name
        fig.suptitle(heading, fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    if len(np.unique(y)) == 2:
        from sklearn.metrics import average_precision_score, roc_auc_score

        flagged = p >= threshold if threshold is not None else None
        fpr, tpr, _ = roc_curve(y, p)
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot(fpr, tpr, label=f"model (ROC-AUC {roc_auc_score(y, p):.3f})")
        ax.plot([0, 1], [0, 1], "--", color="grey", label="chance")
        if flagged is not None:
            ax.plot(flagged[y == 0].mean(), flagged[y == 1].mean(), "o", color="black",
                    label=f"threshold {threshold:.3f}")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
        ax.legend()
        save(fig, "roc.png")

        prec, rec, _ = precision_recall_curve(y, p)
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot(rec, prec, label=f"model (average precision {average_precision_score(y, p):.3f})")
        ax.axhline(y.mean(), ls="--", color="grey", label=f"duplicate rate {y.mean():.2f}")
        if flagged is not None and flagged.any():
            ax.plot(flagged[y == 1].mean(), y[flagged].mean(), "o", color="black", label=f"threshold {threshold:.3f}")
        ax.set(xlabel="recall", ylabel="precision", title="Precision-recall")
        ax.legend()
        save(fig, "precision_recall.png")

        frac, mean_pred = calibration_curve(y, p, n_bins=10, strategy="quantile")
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot(mean_pred, frac, "o-", label="model, deciles of its probabilities")
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
        ax.set(xlabel="predicted probability", ylabel="observed duplicate rate", title="Reliability")
        ax.legend()
        save(fig, "reliability.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(np.nanmin(d), np.nanmax(d), 50) if len(d) else 10
    for lab, name in ((1, "duplicates"), (0, "non-duplicates")):
        if (y == lab).any():
            ax.hist(d[y == lab], bins=bins, alpha=0.6, density=True, label=name)
    ax.set(xlabel="distance (lower = more alike; −logit for a pair head or an ensemble)", ylabel="density",
           title="Distance by class")
    ax.legend()
    save(fig, "distance_histogram.png")

    if history:
        epochs = [h["epoch"] for h in history]
        keys = [k for k in ("train_loss", "val_loss", "val_roc_auc", "val_accuracy") if k in history[0]]
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5))
        for ax, k in zip(np.atleast_1d(axes), keys):
            ax.plot(epochs, [h.get(k) for h in history], "o-")
            ax.set(xlabel="epoch", title=k)
            ax.set_xticks(epochs if len(epochs) <= 12 else ax.get_xticks())  # whole epochs, even for one
        save(fig, "training_curves.png")
    return written
