"""`qpairs adapt`: fit a trained run to a site's own labelled pairs without training code.

The run's encoder stays as it is. On the user's pairs, adapt refits the calibration and the
decision threshold (an operating-point rule, `qpairs.operating_point`) and, with ``head=True``,
the small trainable head on top of the frozen encoder: the pair classifier head when the run
has one, else the encoder's output head (projection or residual MLP), trained for a few epochs
of binary cross-entropy plus an L2 penalty toward its starting weights so that a few hundred
pairs cannot pull it far. Every text is encoded once.

Figures are k-fold cross-validated (stratified, seeded): each pair is scored by a calibration
(and head) fitted on the other folds, so nothing is measured on the pairs it was fitted on. The
stored model is then fitted on all pairs. The output is an ordinary run directory that records
where it came from (``adapted_from`` in config.json, ``adapt`` in metrics.json) with a report.

Data too small or too one-sided to trust is refused: at least `MIN_PAIRS` labelled pairs and
`MIN_PER_CLASS` of each class (and at least as many of each class as folds).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from .calibration import Calibrator
from .checkpoint import _dedupe_shared, copy_run_files, read_json, state_to_save, write_json
from .config import ADAPT_MIN_PAIRS, ADAPT_MIN_PER_CLASS
from .metrics import classification_metrics, format_table
from .operating_point import OperatingPointError

MIN_PAIRS, MIN_PER_CLASS = ADAPT_MIN_PAIRS, ADAPT_MIN_PER_CLASS
LOAD_FILES = ("config.json", "model.safetensors", "encoder", "right_encoder")
REPORT_COLUMNS = ("accuracy", "f1", "precision", "recall", "roc_auc", "log_loss")


class AdaptError(ValueError):
    """The pairs cannot support an adaptation (too few, one-sided) or the run cannot be adapted as asked."""


def check_pairs(labels, folds: int, source: str = "the data") -> None:
    """Refuse data too small or one-sided for `folds`-fold cross-validation."""
    y = np.asarray(labels, dtype=int)
    dup, non = int(y.sum()), int(len(y) - y.sum())
    if folds < 2:
        raise AdaptError(f"--folds must be at least 2, not {folds}")
    need = max(MIN_PER_CLASS, folds)
    if len(y) < MIN_PAIRS or dup < need or non < need:
        raise AdaptError(f"{source}: {len(y)} labelled pairs ({dup} duplicates, {non} non-duplicates) are too few "
                         f"to adapt on; need at least {MIN_PAIRS} pairs with at least {need} of each class")


# ---------------------------------------------------------------- the trainable head on frozen features

class HeadScorer:
    """The head adapt trains, on features of the frozen encoder: 'pair' (the classifier head on the embeddings;
    score −logit) or 'encoder' (the encoder's output head on its pooled features; score = the run's distance)."""

    def __init__(self, model):
        from .losses import pair_distance

        from .matching import needs_tokens

        self.model, self._distance = model, pair_distance
        if needs_tokens(model):
            raise AdaptError("--head retrains a pair classifier head or an encoder's output head on pooled features; "
                             "this run's matching head compares the questions' token states, which adapt does not "
                             "retrain (bundled models included): adapt without --head refits its calibration and "
                             "threshold")
        if model.pair_head is not None:
            self.kind, self.module = "pair", model.pair_head
        elif model.single_encoder() is not None and any(True for _ in model.encoder.head.parameters()):
            self.kind, self.module = "encoder", model.encoder.head
        else:
            raise AdaptError("--head needs a run with a pair classifier head or a Siamese encoder with a trainable "
                             "output head (projection or residual); this run has neither")

    def features(self, det, q1, q2) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pair inputs of the head (each unique text encoded once, the head itself left out)."""
        enc = self.model.encoder
        if self.kind == "encoder":
            enc.head = torch.nn.Identity()
        try:
            a, b = det.embeddings(q1, q2)
        finally:
            if self.kind == "encoder":
                enc.head = self.module
        return torch.from_numpy(a), torch.from_numpy(b)

    def scores(self, module, a, b) -> torch.Tensor:
        """Smaller = more similar, as `SiameseModel.decision_distance` scores pairs."""
        if self.kind == "pair":
            return -module(a, b)
        return self._distance(module(a), module(b), self.model.distance_metric)

    @torch.no_grad()
    def distances(self, module, a, b) -> np.ndarray:
        return self.scores(module, a, b).double().numpy()

    def fit(self, a, b, y, epochs: int, lr: float, penalty: float, seed: int) -> torch.nn.Module:
        """A copy of the head trained on the pairs: BCE of a Platt-scaled score + penalty·‖θ − θ₀‖²."""
        torch.manual_seed(seed)
        module = copy.deepcopy(self.module).float().train()
        start = [p.detach().clone() for p in module.parameters()]
        platt = Calibrator("platt").fit(self.distances(module, a, b), y).params
        coef = torch.tensor(platt["coef"], dtype=torch.float32, requires_grad=True)
        bias = torch.tensor(platt["intercept"], dtype=torch.float32, requires_grad=True)
        opt = torch.optim.Adam([*module.parameters(), coef, bias], lr=lr)
        target = torch.tensor(np.asarray(y, dtype=np.float32))
        rng = np.random.default_rng(seed)
        for _ in range(epochs):
            for idx in np.array_split(rng.permutation(len(y)), max(1, len(y) // 64)):
                logit = coef * self.scores(module, a[idx], b[idx]) + bias
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, target[idx])
                loss = loss + penalty * sum(((p - p0) ** 2).sum() for p, p0 in zip(module.parameters(), start))
                opt.zero_grad()
                loss.backward()
                opt.step()
        return module.eval()


# ---------------------------------------------------------------- cross-validated refit

def _fit_calibrator(method, d, y, rule, where: str) -> Calibrator:
    try:
        return Calibrator(method).fit(d, y, rule)
    except OperatingPointError as exc:
        raise OperatingPointError(f"--threshold {rule} ({where}): {exc}") from exc


def cross_validate(d0, y, folds: int, seed: int, method: str, rule: str, head_fit=None):
    """Out-of-fold probabilities and per-pair thresholds (and distances) of the refit.

    `head_fit(train_idx) -> distances of all pairs` refits the head on a fold's training pairs; None keeps `d0`.
    """
    from sklearn.model_selection import StratifiedKFold

    probs, cuts, dists = np.zeros(len(y)), np.zeros(len(y)), np.zeros(len(y))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (tr, te) in enumerate(splitter.split(np.zeros(len(y)), y), 1):
        d = head_fit(tr) if head_fit is not None else d0
        cal = _fit_calibrator(method, d[tr], y[tr], rule, f"fold {k} of {folds}")
        probs[te], cuts[te], dists[te] = cal.predict_proba(d[te]), cal.threshold, d[te]
    return probs, cuts, dists


def _left_to_model(frame, known):
    """The pairs of `frame` that the known pairs (a file or a `KnownPairs`) do not answer."""
    from .known import UNKNOWN, KnownPairs

    known = known if isinstance(known, KnownPairs) else KnownPairs.from_file(known)
    left = known.lookup(list(frame["question1"]), list(frame["question2"])) == UNKNOWN
    print(f"{int((~left).sum())} of the {len(frame)} labelled pairs are answered by {known}; fitting on the "
          f"other {int(left.sum())}")
    return frame[left].reset_index(drop=True)


def adapt(run, data, out, threshold: str = "accuracy", folds: int = 5, head: bool = False, seed: int = 0,
          calibration: str | None = None, epochs: int = 20, lr: float = 1e-2, penalty: float = 0.1,
          device: str = "cpu", on_bad_row: str = "error", known=None, **column_names) -> dict:
    """`qpairs adapt RUN --data FILES -o OUT`: refit calibration, threshold (and head) on labelled pairs.

    `known` (labelled pairs, a file or a `qpairs.known.KnownPairs`): fit on the pairs those leave to the model
    only, for scoring with the same `--known` pairs later."""
    from .data import load_pairs
    from .detector import Ensemble, load
    from .operating_point import parse_rule

    rule = str(parse_rule(threshold))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"-o {out} is a file: give a folder for the adapted model")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} already exists and is not empty: choose another -o")
    files = [data] if isinstance(data, (str, Path)) else list(data)
    det = load(run, device=device, backend="torch")
    if head and isinstance(det, Ensemble):
        raise ValueError(f"{run} is an ensemble: --head retrains one model's head; adapt an ensemble without --head "
                         "(its calibration and threshold), or adapt a member and run `qpairs ensemble` again")
    frame = load_pairs(files, on_bad_row=on_bad_row, **column_names)
    frame = frame[frame["is_duplicate"] >= 0].reset_index(drop=True)
    if known is not None:
        frame = _left_to_model(frame, known)
    y = frame["is_duplicate"].to_numpy(dtype=int)
    check_pairs(y, folds, ", ".join(str(f) for f in files))
    method = calibration or det.calibrator.method
    q1, q2 = list(frame["question1"]), list(frame["question2"])

    from .progress import pairs_in_chunks

    d0 = pairs_in_chunks(det.distances, q1, q2, "scoring pairs").astype(np.float64)
    before = classification_metrics(y, det.calibrator.predict_proba(d0), det.threshold)
    head_fit, scorer = None, None
    if head:
        scorer = HeadScorer(det.model)
        a, b = scorer.features(det, q1, q2)

        def head_fit(idx):
            return scorer.distances(scorer.fit(a[idx], b[idx], y[idx], epochs, lr, penalty, seed), a, b)

    probs, cuts, d_cv = cross_validate(d0, y, folds, seed, method, rule, head_fit)
    after = classification_metrics(y, probs, cuts)

    d_final = d0
    if head:
        trained = scorer.fit(a, b, y, epochs, lr, penalty, seed)
        scorer.module.load_state_dict(trained.state_dict())
        d_final = scorer.distances(scorer.module, a, b)
    cal = _fit_calibrator(method, d_final, y, rule, f"all {len(y)} pairs")
    cal.operating_point.update(precision=after["precision"], recall=after["recall"], n=len(y),
                               measured_on=f"{folds}-fold cross-validation",
                               fitted_precision=cal.operating_point["precision"],
                               fitted_recall=cal.operating_point["recall"])

    origin = {"run": str(det.path.resolve()), "data": [str(f) for f in files], "pairs": len(y),
              "duplicates": int(y.sum()), "folds": folds, "seed": seed, "head": scorer.kind if head else None,
              "threshold": rule, "calibration": method, "known": None if known is None else str(known)}
    write_run(det, out, cal, origin, head)
    results = {"before": before, "after (cross-validated)": after}
    report = write_report(out / "report", y, results, (det.calibrator.predict_proba(d0), d0), (probs, d_cv))
    write_json(out / "metrics.json", {"adapt": {**origin, "before": before, "after_cross_validated": after,
                                                "threshold": cal.threshold}})
    print(format_table(results, REPORT_COLUMNS))
    print("(scored in fp32 PyTorch, where calibrations are fitted; `score` and `evaluate` run the CPU's default "
          "backend, whose figures may differ slightly: `--backend torch` gives these)")
    print(f"threshold {cal.threshold:.4f} ({rule}; was {det.threshold:.4f}); cross-validated precision "
          f"{after['precision']:.4f}, recall {after['recall']:.4f} over {folds} folds of {len(y)} pairs")
    print(f"adapted model written to {out}, report in {report}")
    return {"before": before, "after": after, "threshold": cal.threshold, "out": str(out)}


def write_run(det, out: Path, cal: Calibrator, origin: dict, head: bool) -> None:
    """`out` as a run directory: the source run's loading files, the new calibration (and head weights); for an
    ensemble, its members (named from `out`) and the new calibration."""
    from .detector import Ensemble

    if isinstance(det, Ensemble):
        from .ensemble import write_ensemble

        write_ensemble(det, [m.path for m in det.members], out, calibrator=cal)
        write_json(out / "adapted_from.json", origin)
        return
    copy_run_files(det.path, out, LOAD_FILES)
    if head:
        from safetensors.torch import save_file

        save_file(_dedupe_shared(state_to_save(det.model)), out / "model.safetensors")
    cfg = read_json(out / "config.json")
    cfg["adapted_from"] = origin
    write_json(out / "config.json", cfg)
    write_json(out / "calibration.json", cal.to_dict())


def write_report(directory: Path, y, results: dict, before, after) -> Path:
    """Before/after table (summary.txt, metrics.json) and plots (ROC, reliability, …) for each."""
    from .plots import save_report_plots

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "summary.txt").write_text(format_table(results, REPORT_COLUMNS) + "\n")
    write_json(directory / "metrics.json", results)
    for name, (probs, dists) in (("before", before), ("after", after)):
        save_report_plots(directory / name, y, probs, dists, subject=f"{name} adapting, cross-validated")
    return directory
