"""Pairs whose answer labelled data already gives: the last step of scoring, after calibration.

A user often holds labelled pairs already (a forum's merged duplicates, a training file). Duplicates are
transitive, so those labels answer more pairs than they name: A~B and B~C labelled give A~C.
`KnownPairs` holds them (questions matched by `qpairs.text.normalize_question`) and answers:

* a pair inside one duplicate group (labelled, or implied by transitivity): `probability`;
* a pair labelled non-duplicate itself: 1 − `probability`;
* any other pair, and a pair of two spellings of one question: the model's own probability, unchanged.

A pair labelled more than once takes its majority label; a pair labelled both ways equally often is left to the model.

A non-duplicate is not inferred through a group (A≁C, A~A' ⇒ A'≁C): non-duplicate labels are too noisy for it.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from .data import normalize_question
from .errors import DataError

KNOWN_DUPLICATE, KNOWN_DIFFERENT, UNKNOWN = 1, 0, -1


def _one_label_per_pair(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The labelled pairs of `frame` with text to match, one row per pair with the majority label
    (`qpairs.data.deduplicate`, a tie dropped); also the number of ties dropped."""
    from .data import LoadReport, deduplicate

    frame = frame[frame["is_duplicate"] >= 0]
    frame = frame[(frame["question1"].map(normalize_question) != "") &
                  (frame["question2"].map(normalize_question) != "")]  # nothing left to match on
    report = LoadReport()
    return deduplicate(frame, report, drop_ties=True), report.ties_dropped


class KnownPairs:
    """Labelled pairs (a pair frame, or `from_file`) and their duplicate groups; `apply` answers the pairs they imply."""

    def __init__(self, frame: pd.DataFrame, probability: float = 0.99, source: str = "labelled pairs"):
        from .triplets import DuplicateGraph

        if not 0.5 < probability <= 1.0:
            raise ValueError(f"the probability of a known duplicate must be in (0.5, 1], got {probability}")
        labelled, tied = _one_label_per_pair(frame)
        if not len(labelled):
            raise DataError(f"{source}: no labelled pairs with text to match (is_duplicate 0 or 1)")
        graph = DuplicateGraph.from_pairs(labelled)
        self.probability, self.source = float(probability), source
        self.nodes = pd.Index(pd.Series(graph.texts, dtype=object).map(normalize_question))
        self.group = graph.group
        self.different = {(int(u), int(v)) for u, v in graph.neg_edges}
        self.stats = {"pairs": len(labelled), "questions": len(self.nodes),
                      "duplicate_groups": int((np.bincount(self.group) > 1).sum()) if len(self.group) else 0,
                      "tied_pairs_left_to_the_model": tied}
        self.digest = hashlib.sha256("\n".join(
            [str(self.probability), *self.nodes, self.group.tobytes().hex(), repr(sorted(self.different))]
        ).encode()).hexdigest()

    @classmethod
    def from_file(cls, path, probability: float = 0.99, **column_names) -> "KnownPairs":
        """Read a labelled pair file (any format `qpairs.data.load_pairs` reads; a bad row is an error)."""
        from .data import load_pairs

        return cls(load_pairs([path], dedupe=False, **column_names), probability, source=str(path))

    def lookup(self, q1: list[str], q2: list[str]) -> np.ndarray:
        """Per pair: KNOWN_DUPLICATE (one duplicate group), KNOWN_DIFFERENT (labelled non-duplicate) or UNKNOWN."""
        i = self.nodes.get_indexer([normalize_question(t) for t in q1])
        j = self.nodes.get_indexer([normalize_question(t) for t in q2])
        out = np.full(len(i), UNKNOWN, dtype=np.int64)
        both = (i >= 0) & (j >= 0) & (i != j)  # one question spelt twice: the labels say nothing of it
        out[both & (self.group[i] == self.group[j])] = KNOWN_DUPLICATE
        for k in np.flatnonzero(both):
            if (min(i[k], j[k]), max(i[k], j[k])) in self.different:
                out[k] = KNOWN_DIFFERENT  # a pair's own label wins over its group
        return out

    def apply(self, probabilities: np.ndarray, q1: list[str], q2: list[str], found: np.ndarray | None = None
              ) -> np.ndarray:
        """`probabilities` with every pair the labels answer replaced by their answer (`found`: `lookup`'s)."""
        found = self.lookup(q1, q2) if found is None else found
        out = np.array(probabilities, dtype=np.float64, copy=True)
        out[found == KNOWN_DUPLICATE] = self.probability
        out[found == KNOWN_DIFFERENT] = 1.0 - self.probability
        return out

    def __str__(self) -> str:
        s = self.stats
        tied = f", {s['tied_pairs_left_to_the_model']:,} labelled both ways left to the model" if s[
            "tied_pairs_left_to_the_model"] else ""
        return (f"{s['pairs']:,} known pairs from {self.source} ({s['questions']:,} questions, "
                f"{s['duplicate_groups']:,} duplicate groups{tied})")
