"""How far a pair lies from the questions a model was trained for, and the rule that hands unfamiliar pairs to
the zero-shot cosine.

A Gaussian is fitted to the normalised pooled base vectors (zero-shot all-MiniLM-L6-v2 for a frozen-base matching
model) of the training questions. A text's unfamiliarity is its squared Mahalanobis distance from it; a pair's is
the larger of its two texts'. An ensemble with this rule mixes its logit with the cosine's calibrated logit:

    logit = (1 − a) · logit + a · (slope · cos + bias),   a = share · clip((m − from) / (to − from), 0, 1)

`from` and `to` are the 50th and 99th percentiles of the validation pairs' unfamiliarity (a typical training
question hands nothing over, a rare one hands over `share`); slope and bias calibrate the cosine on the same
validation pairs. ``qpairs ensemble --familiar FILE --unfamiliar-share A`` fits it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

FAMILIARITY_FILE = "familiarity.npz"  # in an ensemble's directory, beside ensemble.json
MAX_QUESTIONS = 20_000  # training questions the Gaussian is fitted on (a seeded sample beyond that)
RIDGE = 1e-3  # added to the covariance's diagonal


def unit_rows(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class Familiarity:
    """The Gaussian of the training questions' pooled vectors and the hand-over rule (None until fitted)."""

    def __init__(self, mean, precision, rule: dict | None = None):
        # held at the float32 precision they are saved in: the same model, fitted or loaded, scores alike
        self.mean = np.asarray(mean, dtype=np.float32).astype(np.float64)
        self.precision = np.asarray(precision, dtype=np.float32).astype(np.float64)
        if self.precision.shape != (len(self.mean), len(self.mean)):
            raise ValueError(f"precision must be {len(self.mean)}×{len(self.mean)}, got {self.precision.shape}")
        self.rule = None if rule is None else {k: float(rule[k]) for k in ("share", "from", "to", "slope", "bias")}

    @classmethod
    def fit(cls, vectors) -> "Familiarity":
        """The Gaussian of the pooled vectors [n, dim] of the training questions (normalised here)."""
        x = unit_rows(vectors)
        if len(x) < 2:
            raise ValueError(f"need two or more training questions, got {len(x)}")
        cov = np.cov(x, rowvar=False) + RIDGE * np.eye(x.shape[1])
        return cls(x.mean(0), np.linalg.inv(cov))

    def distance(self, vectors) -> np.ndarray:
        """Squared Mahalanobis distance of each pooled vector [n, dim] (normalised here)."""
        d = unit_rows(vectors) - self.mean
        return np.einsum("ij,ij->i", d @ self.precision, d)  # the product through BLAS

    def pair_distance(self, a, b) -> np.ndarray:
        """Each pair's unfamiliarity: the larger of its two texts' distances."""
        return np.maximum(self.distance(a), self.distance(b))

    def fit_rule(self, a, b, labels, share: float, ramp: tuple[float, float] = (50, 99)) -> dict:
        """Set the rule from the validation pairs' pooled vectors (a, b) and labels; see the module docstring."""
        from sklearn.linear_model import LogisticRegression

        if not 0.0 <= share <= 1.0:
            raise ValueError(f"the unfamiliar share must lie in [0, 1], got {share}")
        m = self.pair_distance(a, b)
        cos = cosine(a, b)
        platt = LogisticRegression(C=1e6).fit(cos[:, None], np.asarray(labels, dtype=int))
        lo, hi = np.percentile(m, list(ramp))
        self.rule = {"share": float(share), "from": float(lo), "to": float(max(hi, lo + 1e-6)),
                     "slope": float(platt.coef_[0, 0]), "bias": float(platt.intercept_[0])}
        return self.rule

    def shares(self, a, b) -> np.ndarray:
        """a per pair: the share of its logit handed to the cosine (0 without a rule)."""
        if self.rule is None:
            return np.zeros(len(a))
        return self._share(self.distance(a), self.distance(b))

    def _share(self, dist_a: np.ndarray, dist_b: np.ndarray) -> np.ndarray:
        r = self.rule
        return r["share"] * np.clip((np.maximum(dist_a, dist_b) - r["from"]) / (r["to"] - r["from"]), 0.0, 1.0)

    def apply_rows(self, logits, vectors, rows_a, rows_b) -> np.ndarray:
        """The pairs' logits with the rule applied; pair i joins the texts whose pooled vectors are
        vectors[rows_a[i]] and vectors[rows_b[i]] (each text's distance computed once)."""
        logits = np.asarray(logits, dtype=np.float64)
        if self.rule is None:
            return logits
        unit = unit_rows(vectors)
        dist = self.distance(unit)
        share = self._share(dist[rows_a], dist[rows_b])
        cos = (unit[rows_a] * unit[rows_b]).sum(1)
        return (1 - share) * logits + share * (self.rule["slope"] * cos + self.rule["bias"])

    def apply(self, logits, a, b) -> np.ndarray:
        """`apply_rows` for the pooled vectors a, b [pairs, dim] of the pairs' two texts."""
        n = len(a)
        return self.apply_rows(logits, np.vstack([a, b]), np.arange(n), n + np.arange(n))

    def save(self, directory) -> Path:
        path = Path(directory) / FAMILIARITY_FILE
        np.savez(path, mean=self.mean.astype(np.float32), precision=self.precision.astype(np.float32))
        return path

    @classmethod
    def load(cls, directory, rule) -> "Familiarity":
        """The rule of an ensemble's directory: `rule` as ensemble.json holds it, the Gaussian from its file."""
        from .checkpoint import ModelDirError

        keys = ("share", "from", "to", "slope", "bias")
        if not isinstance(rule, dict) or not all(isinstance(rule.get(k), (int, float)) for k in keys):
            raise ModelDirError(f"{Path(directory) / 'ensemble.json'}: \"unfamiliar\" must map {', '.join(keys)} to "
                                f"numbers, got {rule!r}")
        path = Path(directory) / FAMILIARITY_FILE
        try:
            with np.load(path) as f:
                return cls(f["mean"], f["precision"], rule)
        except (OSError, KeyError, ValueError) as exc:
            what = "is missing" if isinstance(exc, FileNotFoundError) else "is unreadable or corrupt"
            raise ModelDirError(f"{path} {what}: the ensemble's unfamiliar-pair rule reads it "
                                f"({type(exc).__name__}: {exc})") from None


def require_question_model(det, name=None) -> None:
    """The rule reads a matching-head model's pooled token states of both questions alike, from a frozen base (its
    cosine is then zero-shot): refuse any other model."""
    from .matching import needs_tokens

    who = name or "the model"
    if not needs_tokens(det.model) or det.model.prepares_sides:
        raise ValueError(f"{who} is not a matching-head question model (the rule reads such a model's pooled token "
                         "states of both questions alike; a title/body run or a model without token states has none)")
    if not det.model.encoder.config.get("frozen_base"):
        raise ValueError(f"{who} trained its encoder's layers (--train-top-layers or full fine-tuning), so its "
                         "cosine is no longer zero-shot")


def reference_member(members: list, names: list | None = None) -> int:
    """Where the rule reads its pooled states: the index of the first member that is a frozen-base matching model
    reading both questions alike (its cosine is zero-shot). Refuses members without one."""
    reasons = []
    for i, det in enumerate(members):
        try:
            require_question_model(det, names[i] if names else None)
            return i
        except ValueError as exc:
            reasons.append(str(exc))
    raise ValueError("the unfamiliar-pair rule needs a member that is a frozen-base matching model (--freeze-base "
                     "--pair-head matching), whose cosine is zero-shot: " + "; ".join(reasons))


def cosine(a, b) -> np.ndarray:
    return (unit_rows(a) * unit_rows(b)).sum(1)


def pooled_vectors(det, texts: list[str], chunk: int = 2048, progress: bool | None = False) -> np.ndarray:
    """The mean token state [n, hidden] of each text as `det` (a matching-head model whose two sides read texts
    alike) encodes it: the vectors `pair_distances` hands to the rule. `progress`: a bar (None: on a terminal)."""
    from .progress import progress_bar

    from .tokencache import encode_states

    require_question_model(det)
    texts = list(texts)
    out = []
    with progress_bar(total=len(texts), desc="training questions", unit="q", show=progress) as bar:
        for start in range(0, len(texts), chunk):
            states = encode_states(det.model.encoder, texts[start : start + chunk], det.device,
                                   det.batch_size or 64, bar=bar)
            out.extend(s.float().mean(0).numpy() for s in states)
    return np.stack(out)


def training_questions(paths, seed: int = 0, limit: int = MAX_QUESTIONS, on_bad_row: str = "error",
                       **columns) -> list[str]:
    """The distinct questions of labelled or unlabelled pair files (question1/question2, or the `columns` of
    `qpairs.data.load_pairs`), a seeded sample of `limit` beyond that."""
    from .data import load_pairs

    frame = load_pairs(paths, on_bad_row=on_bad_row, dedupe=False, require_labels=False, **columns)
    texts = list(dict.fromkeys(list(frame["question1"]) + list(frame["question2"])))
    if len(texts) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(texts), limit, replace=False))
        texts = [texts[i] for i in keep]
    return texts
