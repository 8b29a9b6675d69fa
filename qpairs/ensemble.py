"""Fit an ensemble of trained models on labelled validation pairs and write it as a run directory.

Each member's calibrated logit of every validation pair is computed once; then every mix of weights on a grid
(steps of `step`, adding up to 1) is calibrated (Platt) and the mix with the lowest validation log loss is kept,
with its calibration and a threshold at the chosen operating point. The directory holds ``ensemble.json`` (the
members and their weights), ``calibration.json`` and ``metrics.json``; `qpairs.load` reads it as a
`qpairs.detector.Ensemble`.

    qpairs ensemble default fast --validation val.csv -o runs/ensemble
"""
from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path

import numpy as np

from .calibration import Calibrator, fit_calibrator
from .checkpoint import write_json
from .detector import BUNDLES, ENSEMBLE_FILE, Ensemble, bundled_model_dir, load
from .metrics import classification_metrics

log = logging.getLogger("qpairs")


def weight_grid(n_members: int, step: float = 0.05) -> np.ndarray:
    """Every weight vector [n_members] on a grid of `step` whose weights add up to 1."""
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    ticks = int(round(1 / step))
    rows = [(ticks - sum(rest), *rest) for rest in itertools.product(range(ticks + 1), repeat=n_members - 1)
            if sum(rest) <= ticks]
    return np.asarray(rows, dtype=np.float64) / ticks


def _log_loss(labels, distances) -> float:
    from sklearn.metrics import log_loss

    return log_loss(labels, Calibrator("platt").fit(distances, labels).predict_proba(distances), labels=[0, 1])


def fit_ensemble(members: list, q1: list[str], q2: list[str], labels, step: float = 0.05,
                 threshold: str = "accuracy") -> tuple[Ensemble, dict]:
    """The `Ensemble` of the loaded detectors `members` (the first one primary) whose weights and calibration give
    the lowest log loss on the validation pairs (q1, q2, labels); and a report: validation metrics of each member
    alone (in order) and of the ensemble."""
    labels = np.asarray(labels, dtype=int)
    probe = Ensemble(members, np.eye(len(members))[0], Calibrator("platt"), backend="auto")
    logits = probe.member_logits(q1, q2)

    def distances(weights) -> np.ndarray:
        probe.weights = np.asarray(weights, dtype=np.float64)
        return -(probe.shares(q1, q2) * logits).sum(0)

    grid = weight_grid(len(members), step)
    losses = [_log_loss(labels, distances(w)) for w in grid]
    best = grid[int(np.argmin(losses))]
    d = distances(best)
    calibrator = fit_calibrator("platt", d, labels, threshold)
    ensemble = Ensemble(members, best, calibrator, backend="auto")
    report = {"validation_pairs": int(len(labels)), "weights": best.tolist(),
              "members": [classification_metrics(labels, 1 / (1 + np.exp(-lg)), m.threshold)
                          for m, lg in zip(members, logits)],
              "ensemble": classification_metrics(labels, calibrator.predict_proba(d), calibrator.threshold)}
    return ensemble, report


def member_reference(model, out: Path) -> str:
    """How ensemble.json names a member: a bundled model by its name (given as the name or as its folder), a run
    directory by its path relative to the ensemble's directory (absolute when they share no root)."""
    if isinstance(model, str) and model in BUNDLES:
        return model
    path = Path(model).resolve()
    bundled = [name for name in BUNDLES if bundled_model_dir(name).resolve() == path]
    if bundled:
        return bundled[0]
    try:
        return os.path.relpath(path, out.resolve())
    except ValueError:  # another drive
        return str(path)


def write_ensemble(ensemble: Ensemble, models: list, out, report: dict | None = None) -> Path:
    """Write `ensemble` (members given as `models`: bundled names or run directories) into the directory `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    members = [{"model": member_reference(m, out), "weight": float(w)} for m, w in zip(models, ensemble.weights)]
    write_json(out / ENSEMBLE_FILE, {"members": members})
    write_json(out / "calibration.json", ensemble.calibrator.to_dict())
    if report is not None:
        write_json(out / "metrics.json", report)
    return out


def ensemble_command(models: list, validation: list, out, step: float = 0.05, threshold: str = "accuracy",
                     device: str = "cpu", on_bad_row: str = "error", **columns) -> dict:
    """`qpairs ensemble`: load the members, fit on the validation files, write OUT; returns the report."""
    from .data import load_pairs

    out = Path(out)
    if (out / ENSEMBLE_FILE).exists() or (out / "config.json").exists():
        raise FileExistsError(f"{out} already holds a model; pick another -o")
    frame = load_pairs(validation, on_bad_row=on_bad_row, **columns)
    frame = frame[frame["is_duplicate"] >= 0]
    members = [load(m, device=device) for m in models]
    ensemble, report = fit_ensemble(members, list(frame["question1"]), list(frame["question2"]),
                                    frame["is_duplicate"].to_numpy(), step, threshold)
    report["validation_files"] = [str(f) for f in validation]
    report["member_models"] = [str(m) for m in models]
    write_ensemble(ensemble, models, out, report)
    return report
