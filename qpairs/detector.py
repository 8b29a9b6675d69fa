"""`DuplicateDetector`: a trained model plus its calibration, with a scikit-learn-like API; `Ensemble`: several of
them mixed; `load`: either from a run directory or a bundled model name.

Longer than 350 lines because the loader builds both kinds of detector, and the ensemble, being one, belongs
beside the class it extends.
"""
from __future__ import annotations

import os
import re
import threading
from contextlib import nullcontext
from pathlib import Path
import numpy as np
import torch

from .calibration import Calibrator
from .checkpoint import ModelDirError, load_model, read_json
from .errors import require_count
from .matching import needs_tokens
from .model import SiameseModel
from .pair_scores import pair_distances
from .text import as_text_list, refuse_non_questions, same_questions


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' → CUDA when available, else CPU; 'cpu', 'cuda' or 'cuda:N' as asked (a ValueError for another name, or
    for CUDA on a machine without a GPU)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", str(device)):
        raise ValueError(f"device {str(device)!r}: use auto, cpu, cuda or cuda:N")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but no CUDA GPU is available")
    return torch.device(device)


def _pair_lists(q1, q2) -> tuple[list[str], list[str]]:
    """Both sides of the pairs as lists of strings of the same length (else a TypeError or ValueError)."""
    a, b = as_text_list(q1, "q1"), as_text_list(q2, "q2")
    if len(a) != len(b):
        raise ValueError(f"q1 and q2 must have the same length, got {len(a)} and {len(b)}")
    return a, b


class DuplicateDetector:
    """Calibrated duplicate probabilities for pairs of texts.

    >>> det = qpairs.load("runs/lstm")
    >>> det.predict_proba("How do I learn Python?", "What is the best way to learn Python?")

    Argument order matters for a pseudo-Siamese (title/body) run: the first argument goes through
    the left encoder (titles), the second through the right one (bodies, raw HTML accepted):
    ``det.predict_proba(titles, bodies)``.
    """

    known = None  # a `qpairs.known.KnownPairs` (see `with_known`), or None

    def __init__(self, model: SiameseModel, calibrator: Calibrator, config: dict | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 256, path=None, backend: str = "torch"):
        self.model = model.eval()
        self.calibrator = calibrator
        self.config = config or {}
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.path = Path(path) if path else None
        self.backend = "torch"
        self.use_backend(backend)

    def preprocess(self, texts: list[str], side: str = "left") -> list[str]:
        """Texts as the run was trained on them (`SiameseModel.prepare`: for a title/body run, the body side
        stripped of HTML and truncated by its policy); `distances`/`predict_proba` call this, `encode` does not."""
        return self.model.prepare(texts, side)

    def emptied(self, texts: list[str], side: str = "left") -> np.ndarray:
        """Which texts the preparation of `side` leaves without a visible character (an HTML body with no text)."""
        from .text import is_blank

        if not self.model.prepares_sides:  # texts go in as they are: a blank one was refused already
            return np.zeros(len(texts), dtype=bool)
        return np.array([is_blank(t) for t in self.preprocess(texts, side)], dtype=bool)

    def refuse_emptied(self, texts: list[str], name: str, side: str = "left", single: bool = False) -> None:
        """A ValueError naming the first text that `emptied` finds."""
        hit = np.flatnonzero(self.emptied(texts, side))
        if len(hit):
            i = int(hit[0])
            raise ValueError(f"{name}{'' if single else f'[{i}]'} is not a question: empty once prepared for the model "
                             f"(an HTML body with no text?) ({texts[i][:80]!r})")

    def use_backend(self, backend: str = "auto", threads: int | None = None) -> "DuplicateDetector":
        """Run transformer encoders with 'torch', ONNX Runtime 'onnx' (fp32) or 'onnx-int8' (CPU only), or any
        model in torch under the CPU's bf16 autocast ('bf16'); 'auto' picks ONNX int8 for a transformer on the
        CPU (unless int8 changes its outputs: `onnxrt.auto_backend`), bf16 for a BiLSTM model on a CPU with native
        bf16, else torch.
        `threads`: ONNX Runtime's intra-op threads (default: torch's current count)."""
        from . import onnxrt

        if threads is not None:
            require_count(threads, "threads")
        chosen = onnxrt.resolve_backend(backend, self.device, self.model)
        if chosen != self.backend or chosen == "torch" or threads is not None:
            auto = backend in (None, "auto")
            try:
                if auto and chosen == "onnx-int8":
                    chosen = onnxrt.auto_backend(self.model)
                onnxrt.enable(self.model, chosen, threads)
            except Exception as exc:  # noqa: BLE001 - e.g. a read-only cache folder, an architecture ONNX can't export
                if not auto:
                    raise
                import logging

                logging.getLogger("qpairs").warning("ONNX Runtime unavailable for this model (%s: %s); running "
                                                    "it in PyTorch", type(exc).__name__, exc)
                onnxrt.enable(self.model, "torch")
                chosen = "torch"
            self.backend = chosen
        return self

    @property
    def max_waste(self) -> float | None:
        """Padding allowed per batch: tight on a CPU (compute grows with padded tokens), free on a GPU and for
        ONNX int8, which runs each text alone at its own length (so a pair's two texts share one batch and run at
        once on two sessions)."""
        return 0.25 if self.device.type == "cpu" and self.backend != "onnx-int8" else None

    @property
    def threshold(self) -> float:
        return self.calibrator.threshold

    def _autocast(self):
        if self.device.type == "cuda" or self.backend == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    @property
    def _unpadded(self) -> bool:
        """bf16 on a CPU batches a transformer's texts only with texts of the same token count: bf16 rounding would
        make a padded text's states depend on its neighbours (the BiLSTM reads each text unpadded anyway)."""
        from .onnxrt import has_transformer

        return self.backend == "bf16" and self.device.type == "cpu" and has_transformer(self.model)

    def encode(self, texts, side: str = "left", batch_size: int | None = None, pooled: bool = False) -> np.ndarray:
        """Embeddings [n, dim] (float32) of `texts`, taken as already prepared (see `preprocess`); `side` picks
        the encoder of a pseudo-Siamese model.

        `pooled`: a transformer's pooled base output before its head (what `QuestionIndex` stores for a
        frozen-base model); `embed_pooled` maps it to the embedding.
        """
        texts = as_text_list(texts, "texts")
        if batch_size is not None:
            require_count(batch_size, "batch_size")
        return self.encode_tensor(texts, side, batch_size, pooled).cpu().numpy()

    def encode_tensor(self, texts: list[str], side: str = "left", batch_size: int | None = None,
                      pooled: bool = False, prefetch: int = 2) -> torch.Tensor:
        """`encode` as a float32 tensor on the detector's device: the model's side encode on this detector's
        device, batch size, padding budget and autocast."""
        encoder = self.model.side(side)
        if pooled and not hasattr(encoder, "pooled"):
            raise ValueError(f"pooled=True needs a transformer encoder, not {type(encoder).__name__}")
        max_waste = 0 if self._unpadded else self.max_waste
        return self.model.encode(texts, side, prepare=False, pooled=pooled, device=self.device,
                                 batch_size=batch_size or self.batch_size, max_waste=max_waste,
                                 autocast=self._autocast, prefetch=prefetch)

    @torch.inference_mode()
    def embed_pooled(self, pooled: np.ndarray, side: str = "left") -> np.ndarray:
        """Embeddings from pooled base outputs (`encode(..., pooled=True)`): the encoder's head alone."""
        head = self.model.side(side).head
        x = torch.from_numpy(np.ascontiguousarray(pooled, dtype=np.float32)).to(self.device)
        return head(x).float().cpu().numpy()

    def distances(self, q1, q2, states: dict | None = None, pooled: dict | None = None,
                  same_floor: bool = True) -> np.ndarray:
        """Distances between the pairs (each unique text is encoded once), with `same_question_floor` applied
        (`same_floor`). For a matching head: `states`, token states already computed
        (`qpairs.pair_scores.pair_distances`), e.g. a `StateMemo` shared across calls; `pooled`, a dict that
        receives each prepared text's mean token state."""
        a, b = _pair_lists(q1, q2)
        if needs_tokens(self.model):  # a matching head compares the two sides' token states
            pa, pb = self.preprocess(a, "left"), self.preprocess(b, "right")
            unpadded = self._unpadded  # then the texts in unpadded bf16 batches, the matching head in fp32
            with nullcontext() if unpadded else self._autocast():
                d = pair_distances(self.model, pa, pb, self.device, self.batch_size, self.max_waste, states=states,
                                   pooled=pooled, unpadded_bf16=unpadded).float().cpu().numpy()
        else:
            e1, e2 = self.embeddings(a, b)
            d = self.model.decision_distance(torch.from_numpy(e1), torch.from_numpy(e2)).numpy()
        return self.same_question_floor(d, a, b) if same_floor else d

    @property
    def closest_distance(self) -> float:
        """The distance of two spellings of one question: −`SAME_QUESTION_LOGIT` for a pair head (its distance is
        −logit), else 0 (an embedding distance)."""
        return -SAME_QUESTION_LOGIT if self.model.pair_head is not None else 0.0

    def same_question_floor(self, distances: np.ndarray, q1: list[str], q2: list[str]) -> np.ndarray:
        """`distances` with each pair of two spellings of one question (`qpairs.text.same_questions`: a question and
        itself, up to case, spaces, apostrophes and its closing mark) at most `closest_distance`: the top of the
        calibration, whatever the encoder makes of the words (a BiLSTM reads unknown words as one token). Every
        scoring path applies it once. Not for a model of two kinds of text (a title is not its post's body)."""
        if self.model.variant != "siamese" or self.model.prepares_sides or not len(distances):
            return distances
        same = same_questions(q1, q2)
        if not same.any():
            return distances
        return np.where(same, np.minimum(distances, self.closest_distance), distances).astype(distances.dtype,
                                                                                           copy=False)

    def embeddings(self, q1: list[str], q2: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Both inputs' embeddings of the pairs, prepared as in training (each unique text encoded once)."""
        return self.model.embed_pairs(self.preprocess(q1, "left"), self.preprocess(q2, "right"), self._embed_unique)

    def _embed_unique(self, texts: list[str], side: str) -> np.ndarray:
        uniq = list(dict.fromkeys(texts))
        pos = {t: i for i, t in enumerate(uniq)}
        return self.encode_tensor(uniq, side).cpu().numpy()[[pos[t] for t in texts]]

    @property
    def scores_texts(self) -> bool:
        """True when a pair's distance needs both texts (a pair head on token states, an ensemble), not only the
        two embeddings: search and scoring then hand the texts to `distances`."""
        return needs_tokens(self.model)

    def predict_proba(self, q1, q2):
        """Calibrated duplicate probability: a float for two strings, else a numpy array."""
        single = isinstance(q1, str) and isinstance(q2, str)
        if isinstance(q1, str) != isinstance(q2, str):
            raise TypeError("pass two strings or two equal-length sequences of strings")
        a, b = _pair_lists(q1, q2)
        refuse_non_questions(a, "q1", single)
        refuse_non_questions(b, "q2", single)
        self.refuse_emptied(a, "q1", "left", single)
        self.refuse_emptied(b, "q2", "right", single)
        p = self.calibrated(self.distances(a, b), a, b)
        return float(p[0]) if single else p

    def calibrated(self, distances: np.ndarray, q1: list[str], q2: list[str], prior: float | None = None,
                   found: np.ndarray | None = None) -> np.ndarray:
        """The pairs' probabilities from their distances: the calibration (re-weighted to duplicate rate `prior`,
        if given), then the answers of the `known` pairs (`found`: their `lookup` of the pairs, if done)."""
        p = self.calibrator.at_prior(self.calibrator.predict_proba(distances), prior)
        return p if self.known is None else self.known.apply(p, q1, q2, found)

    def with_known(self, known, probability: float | None = None) -> "DuplicateDetector":
        """Answer the pairs that labelled pairs settle from those labels, duplicates' transitivity included, in
        place: `known` is a `qpairs.known.KnownPairs`, or a labelled pair file read into one with `probability`
        (default 0.99); `None` drops them. Pair scoring (`predict_proba`, `qpairs score`/`submit`) uses them;
        search and dedup do not."""
        from .known import KnownPairs

        if isinstance(known, KnownPairs):
            if probability is not None and probability != known.probability:
                raise ValueError(f"these known pairs answer {known.probability}, not {probability}: build them "
                                 "with that probability")
        elif isinstance(known, (str, os.PathLike)):
            known = KnownPairs.from_file(known, 0.99 if probability is None else probability)
        elif known is not None:
            raise TypeError(f"known must be a labelled pair file's path or a qpairs.known.KnownPairs, not "
                            f"{type(known).__name__} (a DataFrame with question1, question2 and is_duplicate: "
                            "KnownPairs(frame))")
        if known is not None and not 1.0 - known.probability < self.threshold <= known.probability:
            raise ValueError(f"a known duplicate's probability {known.probability} (and a known non-duplicate's "
                             f"{1.0 - known.probability:g}) must fall on its side of this model's threshold "
                             f"{self.threshold:.4f}: raise --known-probability")
        self.known = known
        return self

    def predict(self, q1, q2):
        """True where the pair is predicted duplicate, at the model's stored threshold."""
        p = self.predict_proba(q1, q2)
        return bool(p >= self.threshold) if isinstance(p, float) else p >= self.threshold

    def search(self, index, question, k: int = 10, rerank: int | None = None):
        """The k most likely duplicates in a `qpairs.search.QuestionIndex` (or its directory), best first.

        Returns a list of `Hit(id, text, probability, distance, duplicate, score)` (ranked by `score`: see the
        index spaces in `qpairs.search`; `rerank`: see `QuestionIndex.search_many`); a list of questions
        gives one such list per question. The index must have been built with this model.
        """
        from .search import open_index

        index = open_index(index)
        search = index.search if isinstance(question, str) else index.search_many
        return search(self, question, k, rerank)

    def __repr__(self) -> str:
        enc = self.config.get("encoder", {}).get("type", "?")
        return (f"DuplicateDetector({self.model.variant}, encoder={enc}, path={self.path}, device={self.device}, "
                f"backend={self.backend})")

    def __str__(self) -> str:
        enc = self.config.get("encoder", {}).get("type", "?")
        return f"{describe_path(self.path)} ({self.model.variant} {enc}, {self.device.type}, {self.backend})"


class Ensemble(DuplicateDetector):
    """Several trained detectors scoring the same pairs: each member's calibrated logit, mixed with weights, then
    one calibration of the mix (`qpairs.ensemble.fit_ensemble` fits weights and calibration on validation).

    The first member is the primary: search indexes hold its vectors and its token states are reused across
    calls. Every other member reads `reads` words of a question (its encoder's max length); for a pair whose
    longer question runs past that, its share falls linearly to 0 at twice that length and goes to the primary.
    With `familiarity` (`qpairs.familiarity`), pairs far from the training questions hand part of the mixed logit
    to the zero-shot cosine of the reference's pooled token states: the first member with a frozen-base matching
    head (`qpairs.familiarity.reference_member`).
    `backend` names each member's, joined by '+' (e.g. 'onnx-int8+bf16'), and `use_backend` takes that form too.
    """

    def __init__(self, members: list[DuplicateDetector], weights, calibrator: Calibrator, path=None,
                 backend: str | None = None, familiarity=None):
        if len(members) < 2 or len(weights) != len(members):
            raise ValueError(f"an ensemble needs two or more members and one weight each, got {len(members)} "
                             f"members and {len(weights)} weights")
        self.members, self.weights = list(members), ensemble_weights(weights)
        primary = self.members[0]
        self.familiarity = familiarity  # a `qpairs.familiarity.Familiarity` (its rule applied to the mix) or None
        self.reference = 0  # the member whose pooled token states the rule reads
        if familiarity is not None:
            from .familiarity import reference_member

            self.reference = reference_member(self.members)
        self.reads = [int(m.model.encoder.config.get("max_length") or 0) for m in self.members]
        config = {**primary.config, "ensemble": {"members": [str(Path(m.path).resolve()) if m.path else None
                                                             for m in self.members],
                                                 "weights": self.weights.tolist()}}
        super().__init__(primary.model, calibrator, config, primary.device, primary.batch_size, path,
                         backend or "+".join(m.backend for m in self.members))

    def use_backend(self, backend: str = "auto", threads: int | None = None) -> "Ensemble":
        """`DuplicateDetector.use_backend` for every member: 'a+b+…' gives member i the i-th; one name goes to
        every member, except that an ONNX backend goes to the transformer members only (the others: torch)."""
        from .onnxrt import has_transformer, resolve_backend

        backend = backend or "auto"
        each = backend.split("+")
        if len(each) not in (1, len(self.members)):
            raise ValueError(f"backend {backend!r} names {len(each)} backends for {len(self.members)} members")
        chosen = [each[i] if len(each) > 1 else backend for i in range(len(self.members))]
        chosen = ["torch" if c.startswith("onnx") and not has_transformer(m.model) else c
                  for c, m in zip(chosen, self.members)]
        for i, (c, member) in enumerate(zip(chosen, self.members)):  # every name checked before any member switches
            try:
                resolve_backend(c, member.device, member.model)
            except ValueError as exc:
                raise ValueError(f"member {i + 1} ({describe_path(member.path)}): {exc}") from None
        before = [m.backend for m in self.members]
        try:
            for c, member in zip(chosen, self.members):
                member.use_backend(c, threads)
        except Exception:  # e.g. an ONNX export that fails: the members switched so far go back
            for b, member in zip(before, self.members):
                member.use_backend(b)
            raise
        self.backend = "+".join(m.backend for m in self.members)
        return self

    @property
    def scores_texts(self) -> bool:
        return True

    @property
    def closest_distance(self) -> float:
        return -SAME_QUESTION_LOGIT  # an ensemble's distance is −(mixed logit), whatever its members'

    @property
    def _qpairs_fingerprint(self) -> str:  # what `checkpoint.model_fingerprint` returns: every member, and the mix
        import hashlib
        import json

        from .checkpoint import model_fingerprint

        fam = self.familiarity
        blob = json.dumps({"members": [model_fingerprint(m) for m in self.members],
                           "calibrations": [m.calibrator.to_dict() for m in self.members],
                           "reads": self.reads, "weights": self.weights.tolist(),
                           "unfamiliar": None if fam is None else [fam.rule, hashlib.sha256(
                               fam.mean.tobytes() + fam.precision.tobytes()).hexdigest()]},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def shares(self, q1: list[str], q2: list[str]) -> np.ndarray:
        """Each member's weight for each pair [members, pairs]: the stored weights, less what members hand to the
        primary for questions longer than they read."""
        words = np.array([max(len(a.split()), len(b.split())) for a, b in zip(q1, q2)], dtype=np.float64)
        out = np.repeat(self.weights[:, None], len(words), axis=1)
        for i, reads in enumerate(self.reads[1:], 1):
            if reads:
                out[i] *= np.clip(2.0 - words / reads, 0.0, 1.0)
        out[0] = 1.0 - out[1:].sum(0)
        return out

    def member_logits(self, q1: list[str], q2: list[str], states: dict | None = None,
                      pooled: dict | None = None) -> np.ndarray:
        """Each member's calibrated logit of each pair [members, pairs] (`states`: the primary's token states;
        `pooled` receives the reference member's pooled token states, see `DuplicateDetector.distances`)."""
        from .calibration import _logit

        def logits(i: int, member: DuplicateDetector) -> np.ndarray:  # the ensemble floors its own distance, once
            d = member.distances(q1, q2, states if i == 0 else None, pooled if i == self.reference else None,
                                 same_floor=False)
            return _logit(member.calibrator.predict_proba(d))

        return np.stack([logits(i, m) for i, m in enumerate(self.members)])

    def pooled_rows(self, pooled: dict, q1: list[str], q2: list[str]) -> tuple[np.ndarray, list, list]:
        """The reference member's pooled vectors of the pairs' distinct texts [texts, dim] (from the dict
        `member_logits` filled), and each pair's two rows in it."""
        reference = self.members[self.reference]
        a, b = reference.preprocess(q1, "left"), reference.preprocess(q2, "right")
        row = {t: i for i, t in enumerate(dict.fromkeys(a + b))}
        return np.stack([pooled[t] for t in row]), [row[t] for t in a], [row[t] for t in b]

    def pooled_pairs(self, pooled: dict, q1: list[str], q2: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The reference member's pooled vectors [pairs, dim] of both sides (`pooled_rows`, one row per pair and side)."""
        vectors, rows_a, rows_b = self.pooled_rows(pooled, q1, q2)
        return vectors[rows_a], vectors[rows_b]

    def mix(self, logits: np.ndarray, q1: list[str], q2: list[str], pooled: dict | None = None) -> np.ndarray:
        """The distance of the pairs from their members' logits (`member_logits`): −(logits mixed by `shares`),
        with the unfamiliar-pair rule applied when there is one (`pooled`: the reference member's pooled states)."""
        mixed = (self.shares(q1, q2) * logits).sum(0)
        if self.familiarity is not None and len(q1):
            if pooled is None:
                raise ValueError("this ensemble hands unfamiliar pairs to the cosine: pass the `pooled` dict that "
                                 "`member_logits` filled")
            mixed = self.familiarity.apply_rows(mixed, *self.pooled_rows(pooled, q1, q2))
        return -mixed

    def distances(self, q1, q2, states: dict | None = None, same_floor: bool = True) -> np.ndarray:
        """The distance this ensemble's calibration reads (`mix` of `member_logits`, `same_question_floor`)."""
        a, b = _pair_lists(q1, q2)
        pooled: dict = {}
        d = self.mix(self.member_logits(a, b, states, pooled), a, b, pooled)
        return self.same_question_floor(d, a, b) if same_floor else d

    def __repr__(self) -> str:
        return f"Ensemble({', '.join(f'{m.path} × {w:g}' for m, w in zip(self.members, self.weights))}, path={self.path})"

    def __str__(self) -> str:
        mix = " + ".join(f"{w:.2f} × {describe_path(m.path)}" for m, w in zip(self.members, self.weights))
        fam = self.familiarity
        hand_over = "" if fam is None or fam.rule is None else \
            f"; unfamiliar pairs hand up to {fam.rule['share']:.0%} to the zero-shot cosine"
        return f"{describe_path(self.path)}: an ensemble of {mix}{hand_over} ({self.device.type}, {self.backend})"


SAME_QUESTION_LOGIT = 12.0  # a pair head's logit for two spellings of one question: past any calibration's top
BUNDLES = {"default": "default_model", "matching": "matching_model", "fast": "fast_model"}  # name → folder in the package
# default: an ensemble of matching (a matching head on frozen all-MiniLM-L6-v2) and fast (a distilled BiLSTM)
BUNDLE_ROOT = Path(__file__).resolve().parent
ENSEMBLE_FILE = "ensemble.json"  # in a run directory: the run is an `Ensemble` of the runs it names


def bundled_model_dir(name: str = "default") -> Path:
    """Where the bundled model `name` lives (it may not be installed)."""
    return BUNDLE_ROOT / BUNDLES[name]


def bundle_name(path) -> str | None:
    """The bundled model's name whose folder `path` is, else None."""
    if path is None:
        return None
    where = Path(path).resolve()
    return next((name for name in BUNDLES if bundled_model_dir(name).resolve() == where), None)


def describe_path(path) -> str:
    """How messages name a model: "the bundled 'fast' model", else its path."""
    name = bundle_name(path)
    return f"the bundled {name!r} model" if name else str(path) if path is not None else "a model"


def default_model_dir() -> Path:
    return bundled_model_dir("default")


def resolve_model_path(model=None) -> Path:
    """A run directory for `model`: None → the bundled default; a bare bundled name as a string ('default',
    'fast') → that bundle, even when a folder of that name exists here (spell it ./fast to load the folder);
    anything else → a path."""
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a bundled model's name or a run directory's path, not {type(model).__name__}")
    if isinstance(model, str) and not model.strip():
        raise ValueError("model is an empty name: pass a bundled model's name, a run directory's path, or None for "
                         "the default model")
    if model is not None and not (isinstance(model, str) and model in BUNDLES):
        return Path(model)
    name = model or "default"
    path = bundled_model_dir(name)
    if not path.is_dir():
        raise ModelDirError(f"the bundled model {name!r} is not installed ({path}); reinstall qpairs, or pass a "
                            "run directory written by `qpairs train`"
                            + (f" (a folder called {name} here loads as ./{name})" if Path(name).is_dir() else ""))
    if model is not None and Path(model).is_dir():
        import logging

        logging.getLogger("qpairs").warning("%r names the bundled model; the folder %s here is not used (pass "
                                            "./%s to load it)", model, Path(model).resolve(), model)
    return path


_LOAD_LOCK = threading.RLock()  # one load at a time: transformers' lazy imports are not thread-safe


def load(path=None, device: str = "auto", backend: str = "auto") -> DuplicateDetector:
    """Load a run directory or a bundled model by name (None → the bundled default model, 'fast' → the bundled
    BiLSTM; see `resolve_model_path`) as a `DuplicateDetector`. Safe to call from several threads at once.

    `backend`: 'auto', 'torch', 'onnx' (fp32), 'onnx-int8' or 'bf16'; see `DuplicateDetector.use_backend`."""
    with _LOAD_LOCK:
        return _load(path, device, backend)


def _load(path, device: str, backend: str) -> DuplicateDetector:
    path = resolve_model_path(path)
    dev = resolve_device(device)
    if (path / ENSEMBLE_FILE).exists():
        spec = read_json(path / ENSEMBLE_FILE)
        try:
            refs, weights = zip(*((m["model"], m["weight"]) for m in spec["members"]))
            ensemble_weights(weights)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelDirError(f"{path / ENSEMBLE_FILE}: expected {{\"members\": [{{\"model\": …, \"weight\": …}}, …]}} "
                                f"({type(exc).__name__}: {exc})") from None
        members = [load(member_path(path, ref), device, "torch") for ref in refs]  # backends set by the ensemble
        familiarity = None
        if spec.get("unfamiliar"):
            from .familiarity import Familiarity

            familiarity = Familiarity.load(path, spec["unfamiliar"])
        return Ensemble(members, weights, _read_calibration(path), path=path, backend=backend, familiarity=familiarity)
    model, cfg = load_model(path, dev)
    return DuplicateDetector(model, _read_calibration(path), cfg, dev, path=path, backend=backend)


def ensemble_weights(weights) -> np.ndarray:
    """An ensemble's member weights as an array: numbers (not strings or booleans), non-negative, adding up to 1."""
    if not all(isinstance(w, (int, float, np.number)) and not isinstance(w, (bool, np.bool_)) for w in weights):
        raise TypeError(f"ensemble weights must be numbers, got {list(weights)!r}")
    out = np.asarray(weights, dtype=np.float64)
    if not np.isfinite(out).all() or (out < 0).any() or abs(out.sum() - 1) > 1e-6:
        raise ValueError(f"ensemble weights must be non-negative and add up to 1, got {list(weights)}")
    return out


def member_path(ensemble_dir: Path, ref: str) -> Path:
    """An ensemble member's run directory: a bundled model name, or a path (relative ones from the ensemble's
    directory)."""
    if ref in BUNDLES:
        return resolve_model_path(ref)
    ref = Path(ref)
    return ref if ref.is_absolute() else ensemble_dir / ref


def _read_calibration(path: Path) -> Calibrator:
    cal_path = path / "calibration.json"
    if not cal_path.exists():
        raise ModelDirError(f"{cal_path} is missing: the run finished without calibration?")
    try:
        return Calibrator.from_dict(read_json(cal_path))
    except ValueError as exc:
        if isinstance(exc, ModelDirError):
            raise
        raise ModelDirError(f"{cal_path} is corrupt: {exc}") from exc
