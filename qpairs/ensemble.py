"""Fit an ensemble of trained models on labelled validation pairs and write it as a run directory.

Each member's calibrated logit of every validation pair is computed once; then every mix of weights on a grid
(steps of `step`, adding up to 1) is calibrated (Platt) and the mix with the lowest validation log loss is kept,
with its calibration and a threshold at the chosen operating point. The directory holds ``ensemble.json`` (the
members and their weights), ``calibration.json`` and ``metrics.json``; `qpairs.load` reads it as a
`qpairs.detector.Ensemble`.

    qpairs ensemble matching fast --validation val.csv -o runs/ensemble
"""
from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path

import numpy as np

from .calibration import Calibrator
from .checkpoint import write_json
from .detector import BUNDLES, ENSEMBLE_FILE, Ensemble, bundle_name, load
from .metrics import classification_metrics
from .operating_point import OperatingPointError
from .progress import pairs_in_chunks

log = logging.getLogger("qpairs")


def weight_grid(n_members: int, step: float = 0.05) -> np.ndarray:
    """Every weight vector [n_members] on a grid of `step` whose weights add up to 1."""
    ticks = int(round(1 / step)) if 0 < step <= 1 else 0
    if not ticks or abs(ticks * step - 1) > 1e-9:
        raise ValueError(f"the weight step must divide 1 (0.05, 0.1, 0.25, …), got {step}")
    rows = [(ticks - sum(rest), *rest) for rest in itertools.product(range(ticks + 1), repeat=n_members - 1)
            if sum(rest) <= ticks]
    return np.asarray(rows, dtype=np.float64) / ticks


def _log_loss(labels, distances) -> float:
    from sklearn.metrics import log_loss

    return log_loss(labels, Calibrator("platt").fit(distances, labels).predict_proba(distances), labels=[0, 1])


def fit_ensemble(members: list, q1: list[str], q2: list[str], labels, step: float = 0.05,
                 threshold: str = "accuracy", familiarity=None, unfamiliar_share: float = 1.0) -> tuple[Ensemble, dict]:
    """The `Ensemble` of the loaded detectors `members` (the first one primary; each keeps its backend) whose weights
    and calibration give the lowest log loss on the validation pairs (q1, q2, labels); and a report: validation
    metrics of each member alone (in order) and of the ensemble. With `familiarity` (a fitted Gaussian,
    `qpairs.familiarity.Familiarity.fit`), its hand-over rule is fitted on the same pairs after the weights, at
    `unfamiliar_share`, and the calibration with the rule in place."""
    labels = np.asarray(labels, dtype=int)
    grid = weight_grid(len(members), step)
    probe = Ensemble(members, grid[0], Calibrator("platt"), familiarity=familiarity)  # no rule yet: the plain mix
    pooled: dict = {}
    logits = pairs_in_chunks(lambda a, b: probe.member_logits(a, b, pooled=pooled), q1, q2,
                             f"scoring validation pairs with {len(members)} members")

    def distances(weights) -> np.ndarray:
        probe.weights = np.asarray(weights, dtype=np.float64)
        return probe.mix(logits, q1, q2, pooled)

    losses = [_log_loss(labels, distances(w)) for w in grid]
    best = grid[int(np.argmin(losses))]
    if familiarity is not None:
        familiarity.fit_rule(*probe.pooled_pairs(pooled, q1, q2), labels, unfamiliar_share)
    d = distances(best)
    try:
        calibrator = Calibrator("platt").fit(d, labels, threshold)
    except OperatingPointError as exc:  # refused, as train and adapt refuse it
        raise OperatingPointError(f"--threshold {threshold}: {exc} (on the validation pairs); nothing written") from None
    ensemble = Ensemble(members, best, calibrator, familiarity=familiarity)
    report = {"validation_pairs": int(len(labels)), "weights": best.tolist(),
              "unfamiliar": None if familiarity is None else familiarity.rule,
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
    name = bundle_name(path)
    if name:
        return name
    try:
        return os.path.relpath(path, out.resolve())
    except ValueError:  # another drive
        return str(path)


def write_ensemble(ensemble: Ensemble, models: list, out, report: dict | None = None,
                   calibrator: Calibrator | None = None) -> Path:
    """Write `ensemble` (members given as `models`: bundled names or run directories) into the directory `out`,
    with `calibrator` instead of its own when given."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    members = [{"model": member_reference(m, out), "weight": float(w)} for m, w in zip(models, ensemble.weights)]
    spec = {"members": members}
    if ensemble.familiarity is not None:
        spec["unfamiliar"] = ensemble.familiarity.rule
        ensemble.familiarity.save(out)
    write_json(out / ENSEMBLE_FILE, spec)
    write_json(out / "calibration.json", (calibrator or ensemble.calibrator).to_dict())
    if report is not None:
        write_json(out / "metrics.json", report)
    return out


def check_members(models: list, members: list, validation) -> None:
    """Refuse members that cannot make one ensemble: the same model twice, models that read different inputs
    (title/body posts against question pairs), or a member whose saved training split holds validation pairs (it
    would look best for having seen them)."""
    from .search import model_fingerprint
    from .splits import among_pairs

    seen: dict[str, str] = {}
    for name, det in zip(models, members):
        fingerprint = model_fingerprint(det)
        if fingerprint in seen:
            raise ValueError(f"{name} is the same model as {seen[fingerprint]}: list each member once")
        seen[fingerprint] = name
    kinds = {name: "title/body posts" if (det.config.get("train") or {}).get("left_col") else "question pairs"
             for name, det in zip(models, members)}
    if len(set(kinds.values())) > 1:
        raise ValueError("the members read different inputs (" + ", ".join(f"{n}: {k}" for n, k in kinds.items())
                         + "): an ensemble mixes models of one kind")
    for name, det in zip(models, members):
        trained = Path(det.path or "") / "splits" / "train.csv.gz"
        if det.path is not None and trained.exists():
            from .data import read_table

            seen_pairs = len(among_pairs(validation, [read_table(trained)]))
            if seen_pairs:
                raise ValueError(f"{seen_pairs} of the {len(validation)} validation pairs are training pairs of "
                                 f"{name} ({trained}): give validation pairs that no member trained on")


def ensemble_command(models: list, validation: list, out, step: float = 0.05, threshold: str = "accuracy",
                     device: str = "cpu", on_bad_row: str = "error", familiar: list | None = None,
                     unfamiliar_share: float = 1.0, **columns) -> dict:
    """`qpairs ensemble`: load the members, fit on the validation files, write OUT; returns the report. Members run
    in PyTorch here (fp32 on a CPU), as every run's own calibration was fitted; they load with the usual CPU
    backends afterwards. `familiar`: pair files of the members' training questions, for the unfamiliar-pair
    rule (`qpairs.familiarity`)."""
    from .data import load_pairs

    out = Path(out)
    if len(models) < 2:
        raise ValueError(f"an ensemble needs two or more models, got {len(models)}")
    for f in validation:
        if f in BUNDLES or Path(f).is_dir():
            raise ValueError(f"--validation takes labelled pair files, and {f!r} is a model: list the MODELs "
                             "before --validation")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"-o {out} is a file: give a folder for the ensemble")
    if (out / ENSEMBLE_FILE).exists() or (out / "config.json").exists():
        raise FileExistsError(f"{out} already holds a model; remove it or pick another -o")
    frame = load_pairs(validation, on_bad_row=on_bad_row, **columns)
    frame = frame[frame["is_duplicate"] >= 0]
    members = [load(m, device=device, backend="torch") for m in models]
    nested = [m for m, det in zip(models, members) if isinstance(det, Ensemble)]
    if nested:
        raise ValueError(f"{nested[0]} is an ensemble itself: list its members instead (an ensemble's members are "
                         "single models)")
    check_members(models, members, frame)
    familiarity = None
    if familiar:
        from .familiarity import Familiarity, pooled_vectors, reference_member, training_questions

        reference = members[reference_member(members, models)]  # checked before encoding the training questions
        texts = training_questions(familiar, on_bad_row=on_bad_row, **{k: v for k, v in columns.items()
                                                                        if k in ("q1_col", "q2_col")})
        log.info("unfamiliar-pair rule: the Gaussian of %d training questions", len(texts))
        familiarity = Familiarity.fit(pooled_vectors(reference, texts, progress=None))
    ensemble, report = fit_ensemble(members, list(frame["question1"]), list(frame["question2"]),
                                    frame["is_duplicate"].to_numpy(), step, threshold, familiarity, unfamiliar_share)
    report["familiar_files"] = [str(f) for f in familiar or []]
    report["validation_files"] = [str(f) for f in validation]
    report["member_models"] = [str(m) for m in models]
    write_ensemble(ensemble, models, out, report)
    return report
