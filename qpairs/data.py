"""Loading, validating, deduplicating and splitting question-pair files.

Files are read through `qpairs.tableio` (CSV, TSV or Parquet). Every recognised
schema is mapped onto one frame with the columns::

    pair_id, question1, question2, is_duplicate (0/1, or -1 when unlabelled), source

Nothing is ever dropped silently: bad rows raise a `DataError` naming the file, the row
and the column, unless ``on_bad_row="drop"`` is asked for, in which case the dropped rows
are counted and reported.

Longer than 350 lines because every rule about pair and question files (columns, labels, bad rows, splits) is
here.
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("qpairs")

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
from .config import NATURAL_DUPLICATE_RATE
from .errors import DataError, MissingColumnError  # noqa: F401  (re-exported)
from .tableio import check_field_counts, check_unique_columns, read_frame, row_where, table_format  # noqa: F401
from .text import bad_mask, bad_reasons, blank_mask, model_text, normalize_question  # noqa: F401  (re-exported)

# Column names accepted for each role, first match wins.
Q1_COLUMNS = ("question1", "sentence1", "q1", "text1", "title")
Q2_COLUMNS = ("question2", "sentence2", "q2", "text2", "body", "content")  # content: a Stack Exchange post body
LABEL_COLUMNS = ("is_duplicate", "label", "duplicate")
ID_COLUMNS = ("id", "test_id", "pair_id", "pairID")
# ... and in a file of questions (`read_questions`).
QUESTION_TEXT_COLUMNS = ("question", "text", "question_text", "title", "question1", "sentence")
QUESTION_ID_COLUMNS = ("id", "qid", "question_id")


def default_data_dir() -> Path | None:
    """`../shared/data` beside the project checkout when it exists, else None."""
    env = os.environ.get("QPAIRS_DATA")
    for cand in ([Path(env)] if env else []) + [DEFAULT_DATA_DIR, Path.cwd().parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


def split_key(text: str) -> str:
    """The coarser key that keeps questions on one side of a question-disjoint split: lower case, ASCII letters
    and digits only. Spellings that differ in anything else ("C++" and "C") stay together, which never leaks a
    question across splits, and the seeded splits stay those every recorded result used."""
    return re.sub(r"[^a-z0-9]", "", str(text).lower())


def pair_key(q1: str, q2: str) -> str:
    """Unordered, normalised key of a pair."""
    a, b = sorted((normalize_question(q1), normalize_question(q2)))
    return a + "\x1f" + b


def find_column(columns, candidates, role: str, path, required: bool = True):
    """The first of `candidates` among `columns`, by name, else in any case ('ID', 'Question1'); a name that two
    columns share once case is folded is ambiguous (a `DataError`)."""
    for name in candidates:
        if name in columns:
            return name
    for name in candidates:
        found = [c for c in columns if isinstance(c, str) and c.casefold() == name.casefold()]
        if len(found) > 1:
            raise DataError(f"{path}: columns {found} could each be the {role} column; name the one to use")
        if found:
            return found[0]
    if required:
        raise MissingColumnError(f"{path}: no {role} column; expected one of {list(candidates)}, found "
                                 f"{list(columns)}{_separator_hint(columns, path)}", role)
    return None


def _separator_hint(columns, path) -> str:
    """A hint when the whole header was read as one column that another separator would split."""
    if len(columns) != 1:
        return ""
    seps = [name for sep, name in ((";", "semicolons"), ("\t", "tabs"), (",", "commas"), ("|", "bars"))
            if sep in str(columns[0])]
    if not seps:
        return ""
    reads = "tabs (.tsv, .txt)" if table_format(path)[0] == "tsv" else "commas (.csv)"
    return f" (the header reads as one column holding {seps[0]}: this file is read as separated by {reads})"


def named_column(columns, name: str | None, option: str, path) -> str | None:
    """The column the user named with `option` (e.g. '--q1-col'): by name, else the one that matches it in any
    case; a `DataError` when none does (None stays None)."""
    if name is None or name in columns:
        return name
    found = [c for c in columns if isinstance(c, str) and c.casefold() == name.casefold()]
    if len(found) == 1:
        return found[0]
    raise DataError(f"{path}: {option} column '{name}' not found" + (f" (it matches {found} in another case; name one "
                    "exactly)" if found else "") + f"; columns are {list(columns)}")


def distinct_question_columns(q1c: str, q2c: str, path) -> None:
    """Refuse one column as both questions (every pair would be a question against itself)."""
    if q1c == q2c:
        raise DataError(f"{path}: '{q1c}' is named as both the first and the second question column; the two must "
                        "differ")


def read_table(path) -> pd.DataFrame:
    """One CSV/TSV (gzip, bz2, xz or plain) or Parquet file through `qpairs.tableio`, every cell as text
    (missing Parquet cells as '', which validation reports)."""
    return as_cell_text(read_frame(path), path)


def as_cell_text(frame: pd.DataFrame, path) -> pd.DataFrame:
    """A frame `read_frame` read from `path`, every cell as text (a CSV/TSV's are already)."""
    return frame.apply(lambda col: col.map(_cell_text)) if table_format(path)[0] == "parquet" else frame


def _cell_text(value) -> str:
    """A Parquet cell as text: '' when missing (None, NaN, NA, NaT); a list or array cell is never missing."""
    missing = value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value))
    return "" if missing else str(value)


def _parse_labels(values: pd.Series, path, column: str, on_bad_row: str) -> tuple[np.ndarray, np.ndarray]:
    text = values.astype(str).str.strip()
    mapping = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1}
    labels = text.str.lower().map(mapping)
    bad = labels.isna().to_numpy()
    if bad.any() and on_bad_row == "error":
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: {row_where(path, row)}, column '{column}': label {text.iloc[row]!r} is not 0 or 1"
        )
    return labels.fillna(-1).astype(int).to_numpy(), bad


@dataclass
class LoadReport:
    """What loading did: rows read, rows dropped and why, duplicates and label conflicts."""

    rows_read: int = 0
    dropped_bad: dict = field(default_factory=dict)
    duplicates_removed: int = 0
    label_conflicts: int = 0
    ties_dropped: int = 0  # pairs labelled both ways equally often, where a tie is not kept

    def __str__(self) -> str:
        parts = [f"{self.rows_read} rows read"]
        if self.dropped_bad:
            parts.append("dropped bad rows: " + ", ".join(f"{k}: {v}" for k, v in self.dropped_bad.items()))
        parts.append(f"{self.duplicates_removed} repeated pairs merged")
        parts.append(f"{self.label_conflicts} pairs with conflicting labels (majority kept; a tie counts as duplicate)")
        return "; ".join(parts)


def read_questions(path, text_col: str | None = None, id_col: str | None = None) -> tuple[list[str] | None, list[str]]:
    """(ids, texts) from a CSV/TSV of questions, ids None when the file has no id column (an index numbers such
    questions after those it holds); empty questions and repeated ids raise `DataError`."""
    frame = read_table(path)
    cols = list(frame.columns)
    tc = named_column(cols, text_col, "--text-col", path) or find_column(cols, QUESTION_TEXT_COLUMNS,
                                                                         "question text", path)
    ic = named_column(cols, id_col, "--id-col", path) or find_column(cols, QUESTION_ID_COLUMNS, "id", path,
                                                                     required=False)
    if not len(frame):
        raise DataError(f"{path}: no questions (the file holds its header only)")
    empty = np.flatnonzero(bad_mask(frame[tc]))
    texts = frame[tc].fillna("").astype(str)
    if len(empty):
        r = int(empty[0])
        raise DataError(f"{path}: {row_where(path, r)}, column '{tc}': empty or missing question "
                        f"({len(empty)} such rows)")
    if ic is None:
        return None, texts.tolist()
    blank = np.flatnonzero(blank_mask(frame[ic]))
    if len(blank):
        raise DataError(f"{path}: {row_where(path, int(blank[0]))}, column '{ic}': empty id ({len(blank)} such rows); "
                        "every question needs an id")
    ids = frame[ic].astype(str)
    repeated = ids.duplicated(keep=False).to_numpy()
    if repeated.any():
        rows = np.flatnonzero(ids.to_numpy() == ids.to_numpy()[repeated][0])[:2]
        raise DataError(f"{path}: {row_where(path, int(rows[0]))} and {row_where(path, int(rows[1]))}, column '{ic}': "
                        f"repeated id {ids.iloc[rows[0]]!r}; ids must be unique")
    return ids.tolist(), texts.tolist()


def load_file(path, on_bad_row: str = "error", q1_col=None, q2_col=None, label_col=None, id_col=None,
              require_labels: bool = True, report: LoadReport | None = None) -> pd.DataFrame:
    """Load one pair file into the common schema, validating every row.

    on_bad_row: "error" (default) raises on the first bad row; "drop" drops and counts them.
    """
    if on_bad_row not in ("error", "drop"):
        raise ValueError(f"on_bad_row must be 'error' or 'drop', not {on_bad_row!r}")
    cells = read_frame(path)  # as typed (a Parquet number in a question column is refused, not read as text)
    raw = as_cell_text(cells, path)
    cols = list(raw.columns)
    q1c = named_column(cols, q1_col, "--q1-col", path) or find_column(cols, Q1_COLUMNS, "first-question", path)
    q2c = named_column(cols, q2_col, "--q2-col", path) or find_column(cols, Q2_COLUMNS, "second-question", path)
    distinct_question_columns(q1c, q2c, path)
    lc = named_column(cols, label_col, "--label-col", path) or find_column(cols, LABEL_COLUMNS, "label", path,
                                                                           required=require_labels)
    idc = named_column(cols, id_col, "--id-col", path) or find_column(cols, ID_COLUMNS, "id", path, required=False)

    bad = np.zeros(len(raw), dtype=bool)
    reasons: dict[str, int] = {}
    for c in (q1c, q2c):
        problems = bad_reasons(cells[c])
        mask = (problems != "").to_numpy()
        if mask.any() and on_bad_row == "error":
            row = int(np.flatnonzero(mask)[0])
            raise DataError(f"{path}: {row_where(path, row)}, column '{c}': {problems.iloc[row]}")
        reasons[f"bad {c}"] = int(mask.sum())
        bad |= mask
    if lc is not None:
        labels, bad_label = _parse_labels(raw[lc], path, lc, on_bad_row)
        reasons[f"bad {lc}"] = int(bad_label.sum())
        bad |= bad_label
    else:
        labels = np.full(len(raw), -1)

    frame = pd.DataFrame({
        "pair_id": raw[idc].astype(str) if idc else pd.Series(np.arange(len(raw))).astype(str),
        "question1": raw[q1c].astype(str),
        "question2": raw[q2c].astype(str),
        "is_duplicate": labels,
        "source": Path(path).name,
    })
    frame = frame[~bad].reset_index(drop=True)
    if report is not None:
        report.rows_read += len(raw)
        for k, v in reasons.items():
            if v:
                report.dropped_bad[f"{Path(path).name}: {k}"] = v
    if bad.any():
        log.warning("%s: dropped %d bad rows (%s)", path, int(bad.sum()),
                    ", ".join(f"{k}={v}" for k, v in reasons.items() if v))
    return frame


def deduplicate(frame: pd.DataFrame, report: LoadReport | None = None, drop_ties: bool = False) -> pd.DataFrame:
    """Merge repeated pairs (unordered, normalised key); conflicting labels get the majority vote, a tie
    counting as duplicate (`drop_ties`: the pair is dropped, counted in `report.ties_dropped`)."""
    keys = [pair_key(a, b) for a, b in zip(frame["question1"], frame["question2"])]
    frame = frame.assign(_key=keys)
    labelled = frame[frame["is_duplicate"] >= 0]
    stats = labelled.groupby("_key")["is_duplicate"].agg(["min", "max", "mean"])
    conflicts = stats[stats["min"] != stats["max"]]
    majority = (stats["mean"] >= 0.5).astype(int)
    tied = stats.index[stats["mean"] == 0.5] if drop_ties else stats.index[:0]
    out = frame[~frame["_key"].isin(tied)].drop_duplicates("_key", keep="first").copy()
    has_label = out["_key"].isin(majority.index)
    out.loc[has_label, "is_duplicate"] = out.loc[has_label, "_key"].map(majority).to_numpy()
    if report is not None:
        report.duplicates_removed += len(frame) - len(out) - int(frame["_key"].isin(tied).sum())
        report.label_conflicts += len(conflicts)
        report.ties_dropped += len(tied)
    if len(conflicts):
        log.info("%d pairs had conflicting labels; kept the majority label (%s)", len(conflicts),
                 f"{len(tied)} ties dropped" if drop_ties else "a tie: duplicate")
    return out.drop(columns="_key").reset_index(drop=True)


def load_pairs(paths, on_bad_row: str = "error", dedupe: bool = True, report: LoadReport | None = None,
               **column_names) -> pd.DataFrame:
    """Load and combine several pair files (see `load_file`), then deduplicate across them."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    report = report if report is not None else LoadReport()
    frames = [load_file(p, on_bad_row=on_bad_row, report=report, **column_names) for p in paths]
    if not frames:
        raise DataError("no input files given")
    frame = pd.concat(frames, ignore_index=True)
    return deduplicate(frame, report) if dedupe else frame


# ---------------------------------------------------------------- splits

def question_components(frame: pd.DataFrame) -> np.ndarray:
    """Connected-component id of every pair in the graph whose nodes are questions under `split_key`."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    k1 = frame["question1"].map(split_key)
    k2 = frame["question2"].map(split_key)
    nodes = pd.Index(pd.unique(pd.concat([k1, k2], ignore_index=True)))
    i, j = nodes.get_indexer(k1), nodes.get_indexer(k2)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(len(nodes), len(nodes)))
    _, labels = connected_components(graph, directed=False)
    return labels[i]


def split_by_question(frame: pd.DataFrame, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict[str, pd.DataFrame]:
    """Train/validation/test splits in which no question appears in two splits.

    Whole connected components of the question graph go to one split, so the split is
    disjoint by question (after normalisation), seeded and reproducible.
    """
    if not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    comp = question_components(frame)
    unique = np.unique(comp)
    rng = np.random.default_rng(seed)
    order = rng.permutation(unique)
    # Fill splits by pair count so fractions hold in pairs, not in components.
    sizes = pd.Series(comp).value_counts().reindex(order).to_numpy()
    cum = np.cumsum(sizes) / sizes.sum()
    bounds = np.cumsum(fractions)[:-1]
    which = np.searchsorted(bounds, cum, side="left")
    assign = pd.Series(which, index=order)
    split_of_pair = assign.reindex(comp).to_numpy()
    names = ("train", "validation", "test")[: len(fractions)]
    return {name: frame[split_of_pair == k].reset_index(drop=True) for k, name in enumerate(names)}


def split_by_pair(frame: pd.DataFrame, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict[str, pd.DataFrame]:
    """Plain random pair-level split (questions may repeat across splits), for published-number comparisons."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(frame))
    cuts = (np.cumsum(fractions)[:-1] * len(frame)).astype(int)
    names = ("train", "validation", "test")[: len(fractions)]
    return {name: frame.iloc[np.sort(part)].reset_index(drop=True) for name, part in zip(names, np.split(idx, cuts))}


def subsample_to_rate(frame: pd.DataFrame, rate: float, seed: int = 0) -> pd.DataFrame:
    """Drop random rows of the majority class so the duplicate rate becomes `rate`."""
    pos = frame[frame["is_duplicate"] == 1]
    neg = frame[frame["is_duplicate"] == 0]
    if len(pos) == 0 or len(neg) == 0:
        return frame
    current = len(pos) / (len(pos) + len(neg))
    if current > rate:
        pos = pos.sample(n=int(round(rate / (1 - rate) * len(neg))), random_state=seed)
    elif current < rate:
        neg = neg.sample(n=int(round((1 - rate) / rate * len(pos))), random_state=seed)
    return pd.concat([pos, neg]).sort_index().reset_index(drop=True)


def class_weights(labels: np.ndarray, target_rate: float = 0.5) -> np.ndarray:
    """Per-pair weights that make the weighted duplicate rate equal `target_rate` (mean weight 1)."""
    labels = np.asarray(labels)
    rate = labels.mean()
    if rate in (0.0, 1.0):
        return np.ones(len(labels))
    w = np.where(labels == 1, target_rate / rate, (1 - target_rate) / (1 - rate))
    return w / w.mean()


def mixed_label_sources(frame: pd.DataFrame) -> list[str]:
    """Sources that hold both duplicates and non-duplicates (natural-distribution files)."""
    by = frame[frame["is_duplicate"] >= 0].groupby("source")["is_duplicate"].agg(["min", "max"])
    return sorted(by[(by["min"] == 0) & (by["max"] == 1)].index)


def make_splits(frame: pd.DataFrame, seed: int = 0, fractions=(0.8, 0.1, 0.1), by: str = "question",
                eval_rate: float | None = NATURAL_DUPLICATE_RATE) -> tuple[dict[str, pd.DataFrame], dict]:
    """The project's standard splits plus a report of what was done.

    Validation and test keep only pairs from files with both labels (positives-only
    files would skew them) and are subsampled to the natural duplicate rate `eval_rate`.
    """
    splitter = split_by_question if by == "question" else split_by_pair
    splits = splitter(frame, fractions, seed)
    natural = mixed_label_sources(frame)
    info = {"by": by, "seed": seed, "fractions": list(fractions), "eval_sources": natural, "eval_rate": eval_rate,
            "set_aside": {}}
    for name in ("validation", "test"):
        if name not in splits:
            continue
        part = splits[name]
        one_label = len(part)
        if natural:
            part = part[part["source"].isin(natural)]
        own_rate = float(part["is_duplicate"].mean()) if len(part) else None
        kept = len(part)
        if eval_rate is not None:
            part = subsample_to_rate(part, eval_rate, seed)
        splits[name] = part.reset_index(drop=True)
        info["set_aside"][name] = {"from_one_label_files": one_label - kept, "own_duplicate_rate": own_rate,
                                   "to_reach_eval_rate": kept - len(part)}
    info["sizes"] = {k: int(len(v)) for k, v in splits.items()}
    info["duplicate_rate"] = {k: float(v["is_duplicate"].mean()) for k, v in splits.items() if len(v)}
    return splits, info


def data_folder(given=None) -> Path:
    """`given`, else the default data folder (`default_data_dir`); a `DataError` when there is none."""
    folder = Path(given) if given else default_data_dir()
    if folder is None or not folder.is_dir():
        raise DataError(f"{given}: no such folder" if given else "no data folder (../shared/data beside the checkout, "
                        "or QPAIRS_DATA): pass the data with --data")
    return folder


def qqp_files(data_dir=None) -> list[Path]:
    """The labelled QQP files in the shared data folder."""
    data_dir = data_folder(data_dir)
    files = sorted(p for p in (data_dir / "qqp").glob("*.csv.gz") if "test_head" not in p.name)
    if not files:
        raise DataError(f"{data_dir}/qqp: no labelled *.csv.gz files")
    return files
