"""Batch scoring of question pairs.

The core is engine-neutral: `score_frame` maps a pandas frame of pairs to the same frame
plus score columns. The local streaming scorer (`score_file`, ``qpairs score``), Ray Data
and Spark's `mapInPandas` all call it or the `PairScorer` under it.

`score_file` reads the input in chunks and writes every chunk as soon as it is scored, so
memory stays flat in the file size (file formats: `qpairs.tableio`).

Longer than 350 lines because the chunked, resumable scoring of a file and its column and row checks belong
together.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import CHECKPOINT_ROWS

PROBA_COL = "duplicate_probability"
PRED_COL = "predicted_duplicate"


def score_frame(det, frame: pd.DataFrame, q1_col: str = "question1", q2_col: str = "question2") -> pd.DataFrame:
    """Return `frame` with `duplicate_probability` and `predicted_duplicate` columns added (row order kept). A cell
    that is not a question (missing, empty, not text: `qpairs.text`) is a ValueError naming its row and column."""
    for col in (q1_col, q2_col):
        reasons = bad_reasons(frame[col]).to_numpy()
        bad = np.flatnonzero(reasons != "")
        if len(bad):
            raise ValueError(f"row {frame.index[bad[0]]!r}, column '{col}': {reasons[bad[0]]} ({len(bad)} such rows in "
                             "this frame); drop or fill them before scoring")
    out = frame.copy()
    probs = det.predict_proba(list(frame[q1_col]), list(frame[q2_col]))
    out[PROBA_COL] = np.asarray(probs, dtype=np.float64)
    out[PRED_COL] = (out[PROBA_COL] >= det.threshold).astype(int)
    return out


class EmbeddingStore:
    """Bounded text → embedding cache kept on the model's device.

    Slots are handed out in order; when the store is full it is cleared (deterministic, so
    two runs over the same input compute the same batches). `clear()` is also called at
    every resume checkpoint of `score_file`.
    """

    def __init__(self, capacity: int, dim: int, device):
        self.capacity = max(1, int(capacity))
        self.table = torch.empty((0, dim), dtype=torch.float32, device=device)
        self.dim, self.device = dim, device
        self.slot: dict[str, int] = {}

    def clear(self) -> None:
        self.slot.clear()

    def _grow(self, need: int) -> None:
        if need > len(self.table):  # grow geometrically up to the capacity
            size = min(self.capacity, max(need, 2 * len(self.table), 1024))
            table = torch.empty((size, self.dim), dtype=torch.float32, device=self.device)
            table[: len(self.table)] = self.table
            self.table = table

    def add(self, texts: list[str], emb: torch.Tensor) -> None:
        start = len(self.slot)
        self._grow(start + len(texts))
        self.table[start : start + len(texts)] = emb
        for i, t in enumerate(texts):
            self.slot[t] = start + i


def _at_batch_size(det, batch_size: int):
    """A shallow copy of `det` (and of an ensemble's members) that runs `batch_size` texts or pairs at a time."""
    import copy

    det = copy.copy(det)
    det.batch_size = batch_size
    if hasattr(det, "members"):
        det.members = [_at_batch_size(m, batch_size) for m in det.members]
    return det


class PairScorer:
    """Calibrated probabilities for many pairs, encoding each unique text once (bounded cache).

    Texts missing from the cache go through the detector's encode (`DuplicateDetector.encode_tensor`:
    length-sorted batches, tokenized in a background thread while the model runs, bf16 autocast on a GPU).
    """

    def __init__(self, det, batch_size: int | None = None, cache_size: int | None = None, prefetch: int = 2):
        self.det = det
        cuda = det.device.type == "cuda"
        lstm = det.model.encoder.config.get("type") == "lstm"  # packed sequences: padding costs a BiLSTM nothing
        if det.scores_texts:  # the detector's own path (see `distances`): its batch size, no embedding cache
            if cache_size is not None:
                raise ValueError("--cache-size sizes the embedding cache of a model that compares pooled embeddings; "
                                 "this model compares token states, each unique text of a chunk once (--chunk-size "
                                 "bounds that): leave --cache-size out")
            if batch_size is not None:
                self.det = det = _at_batch_size(det, batch_size)
            batch_size = det.batch_size
        self.batch_size = batch_size or (1024 if cuda else 256 if lstm else 64)
        self.cache_size = cache_size or (2_000_000 if cuda else 200_000)
        self.prefetch = prefetch
        sides = dict.fromkeys(det.model.encoder_side(s) for s in ("left", "right"))  # one store per encoder
        self.stores = {s: EmbeddingStore(self.cache_size, det.model.dim, det.device) for s in sides}
        self.encoded = 0  # texts run through the encoder
        self.looked_up = 0  # text slots served (cache hits + encoded)
        self.known_answered = 0  # pairs the detector's known pairs answered

    def store(self, side: str) -> EmbeddingStore:
        return self.stores[self.det.model.encoder_side(side)]

    def clear(self) -> None:
        for s in self.stores.values():
            s.clear()

    def _slots(self, texts: list[str], side: str) -> np.ndarray:
        """Cache slots of `texts` (encoding the missing unique ones first)."""
        store = self.store(side)
        uniq = pd.unique(np.asarray(texts, dtype=object))
        if len(uniq) > store.capacity:
            raise ValueError(f"a chunk has {len(uniq)} unique texts, more than the cache holds ({store.capacity}): "
                             "use a smaller --chunk-size")
        missing = [t for t in uniq if t not in store.slot]
        if len(store.slot) + len(missing) > store.capacity:
            store.clear()
            missing = list(uniq)
        if missing:
            store.add(missing, self.det.encode_tensor(missing, side, self.batch_size, prefetch=self.prefetch))
            self.encoded += len(missing)
        self.looked_up += len(texts)
        return np.fromiter((store.slot[t] for t in texts), dtype=np.int64, count=len(texts))

    def _rows(self, texts: list[str], side: str) -> torch.Tensor:
        """Embeddings of `texts` (each unique one encoded once per cache lifetime), gathered from the cache."""
        slots = torch.as_tensor(self._slots(texts, side), device=self.det.device)
        return self.store(side).table[slots]

    @torch.inference_mode()
    def distances(self, q1: list[str], q2: list[str]) -> np.ndarray:
        """Distances of the pairs (the model's `distance`: embedding distance or −logit of a pair head)."""
        model = self.det.model
        if self.det.scores_texts:  # a pair head on token states, an ensemble: the detector's own path, per chunk
            self.encoded += len(set(q1) | set(q2))
            self.looked_up += 2 * len(q1)
            return np.asarray(self.det.distances(list(q1), list(q2)), dtype=np.float64)
        e1, e2 = model.embed_pairs(model.prepare(q1, "left"), model.prepare(q2, "right"), self._rows)
        d = model.decision_distance(e1, e2).cpu().numpy().astype(np.float64)
        return self.det.same_question_floor(d, list(q1), list(q2))

    def predict_proba(self, q1: list[str], q2: list[str], prior: float | None = None) -> np.ndarray:
        """Calibrated duplicate probabilities of the pairs (float64 array; `prior`: re-weighted to that duplicate
        rate, before the known pairs answer theirs)."""
        from .known import UNKNOWN

        if len(q1) != len(q2):
            raise ValueError(f"q1 and q2 must have the same length, got {len(q1)} and {len(q2)}")
        if not len(q1):
            return np.zeros(0)
        found = None if self.det.known is None else self.det.known.lookup(q1, q2)
        if found is not None:
            self.known_answered += int((found != UNKNOWN).sum())
        return self.det.calibrated(self.distances(q1, q2), q1, q2, prior, found)

    @property
    def cache_hit_rate(self) -> float:
        return 1.0 - self.encoded / self.looked_up if self.looked_up else math.nan


# ---------------------------------------------------------------- bad rows

from .text import MISSING_TEXTS, TEXT_FOLDING, bad_reasons  # noqa: E402,F401  (the one text rule; Ray imports it here)


# ---------------------------------------------------------------- file scorer

def resolve_columns(columns, q1_col=None, q2_col=None, id_col=None, path="input") -> tuple[str, str, str | None]:
    """(question 1, question 2, id) column names: given, or detected for the Kaggle/QQP schemas."""
    from .data import (ID_COLUMNS, Q1_COLUMNS, Q2_COLUMNS, DataError, distinct_question_columns, find_column,
                       named_column)

    q1 = named_column(columns, q1_col, "--q1-col", path) or find_column(columns, Q1_COLUMNS, "first-question", path)
    q2 = named_column(columns, q2_col, "--q2-col", path) or find_column(columns, Q2_COLUMNS, "second-question", path)
    distinct_question_columns(q1, q2, path)
    idc = named_column(columns, id_col, "--id-col", path) or find_column(columns, ID_COLUMNS, "id", path,
                                                                         required=False)
    for c in (PROBA_COL, PRED_COL):
        if c in columns:
            raise DataError(f"{path}: already has a '{c}' column (a scored file?); rename it first")
    return q1, q2, idc


def model_order(det, q1c: str, q2c: str) -> tuple[str, str]:
    """A post file's title and body columns, found by name, in the order a title/body run reads them: a run trained
    with its bodies on the left (``--left-col body``) takes the body first."""
    from .sides import title_body_sides

    if (q1c.casefold() == "title" and q2c.casefold() in ("body", "content")
            and title_body_sides(det.config.get("train"))[0] == "right"):
        return q2c, q1c
    return q1c, q2c


def _paths(output) -> dict:
    out = Path(output)
    hidden = out.parent / f".{out.name}"
    return {"out": out, "tmp": Path(f"{hidden}.partial"), "state": Path(f"{hidden}.resume.json"),
            "bad": out.parent / f"{out.name}.bad_rows.csv", "bad_tmp": Path(f"{hidden}.bad_rows.partial")}


def _fingerprint(det) -> str:
    import hashlib
    import json

    from .checkpoint import model_fingerprint

    blob = json.dumps({"cal": det.calibrator.to_dict(), "cfg": det.config, "weights": model_fingerprint(det),
                       "known": det.known.digest if det.known is not None else None},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _rows_digest(digest, frame: pd.DataFrame) -> None:
    """Add the content of `frame`'s rows to `digest` (resume checks that the scored part is unchanged)."""
    try:
        hashes = pd.util.hash_pandas_object(frame, index=False)
    except TypeError:  # unhashable cells (e.g. Parquet lists)
        hashes = pd.util.hash_pandas_object(frame.astype(str), index=False)
    digest.update(hashes.to_numpy().tobytes())


def _check_options(on_bad_row: str, chunk_size: int, max_chars: int, checkpoint_rows: int, cache_size) -> None:
    if on_bad_row not in ("error", "mark"):
        raise ValueError(f"on_bad_row must be 'error' or 'mark', not {on_bad_row!r}")
    for flag, value in (("--chunk-size", chunk_size), ("--max-chars", max_chars),
                        ("--checkpoint-rows", checkpoint_rows), ("--cache-size", cache_size)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be positive, got {value}")


def score_file(input, output, model=None, *, q1_col: str | None = None, q2_col: str | None = None,
               id_col: str | None = None, device: str = "auto", batch_size: int | None = None,
               chunk_size: int = 50_000, on_bad_row: str = "error", resume: bool = False, max_chars: int = 10_000,
               cache_size: int | None = None, checkpoint_rows: int = CHECKPOINT_ROWS, progress: bool | None = None,
               backend: str = "auto", known=None, known_probability: float | None = None,
               _stop_after_chunks: int | None = None) -> dict:
    """Score every pair of a CSV/TSV/gzip/Parquet file into `output` (same columns + two score columns).

    One output row per input row, in input order. Reads and writes `chunk_size` rows at a
    time; every `checkpoint_rows` rows (rounded down to whole chunks, at least one) the
    resume state is saved and the embedding cache restarts, so each unique question is
    encoded once per such segment.
    on_bad_row: 'error' stops at the first bad row (empty, NaN, non-text, over `max_chars`,
    or a line with another number of fields than the header); 'mark' leaves its probability
    empty and lists it in ``OUTPUT.bad_rows.csv``.
    The output appears only when complete (temp file + rename); on an error the temp files
    are removed, on an interrupt they stay and `resume=True` continues the run, giving the
    same bytes. `known`: labelled pairs (a file or a `qpairs.known.KnownPairs`) that answer the pairs
    they settle (`DuplicateDetector.with_known`). Returns a summary dict: `seconds` is the call's wall
    time, model load included (`load_seconds`); `pairs_per_s` is over the scoring alone
    (`scoring_seconds`); `known_answered`, the pairs the known pairs answered (None without them).
    """
    import hashlib
    import time

    from . import tableio

    started = time.perf_counter()
    _check_options(on_bad_row, chunk_size, max_chars, checkpoint_rows, cache_size)
    columns = tableio.read_columns(input)
    q1c, q2c, idc = resolve_columns(columns, q1_col, q2_col, id_col, input)
    tableio.check_output(output, input)
    det = _as_detector(model, device, backend, known, known_probability)
    if q1_col is None and q2_col is None:
        q1c, q2c = model_order(det, q1c, q2c)
    load_seconds = time.perf_counter() - started
    scorer = PairScorer(det, batch_size, cache_size)
    p = _paths(output)
    every = max(1, checkpoint_rows // chunk_size)
    st = os.stat(input)
    ident = {"input": str(Path(input).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
             "options": {"q1": q1c, "q2": q2c, "id": idc, "chunk_size": chunk_size, "every": every,
                         "on_bad_row": on_bad_row, "max_chars": max_chars, "batch_size": scorer.batch_size,
                         "cache_size": scorer.cache_size, "device": det.device.type, "backend": det.backend,
                         "text_folding": TEXT_FOLDING,
                         "model": _fingerprint(det)}}
    state = _resume_state(p, ident) if resume else None
    chunks, digest = tableio.iter_table(input, chunk_size), hashlib.sha256()
    skipped = _skip_scored(chunks, digest, state, p, input) if state else None
    chunks_done, rows_done, n_bad = (state["chunks"], state["rows"], state["bad_rows"]) if state else (0, 0, 0)
    bar = ScoreProgress(input, rows_done, skipped, progress)
    t0, scored = time.perf_counter(), 0
    writers = []
    try:
        writer = tableio.open_writer(output, p["tmp"], state and state["writer"], rounded=(PROBA_COL,))
        writers.append(writer)
        bad_writer = tableio.CSVWriter(p["bad_tmp"], "csv", False, state and state["bad_writer"], name=p["bad"])
        writers.append(bad_writer)
        delimiter = "\t" if tableio.table_format(input)[0] == "tsv" else ","  # of a field-count row's line
        for k, chunk in enumerate(chunks, start=chunks_done):
            _rows_digest(digest, chunk.frame)
            reasons, ok = _chunk_reasons(chunk, (q1c, q2c), max_chars, det)
            report = _bad_rows_frame(chunk, reasons, idc, delimiter)
            if len(report) and on_bad_row == "error":
                _raise_bad_row(input, chunk, report.iloc[0])
            try:
                out = _score_chunk(scorer, chunk.frame, q1c, q2c, ok, odd=list(chunk.odd_fields))
            except ValueError as exc:  # e.g. more unique texts than --cache-size
                raise ValueError(f"{input}: {chunk.where(0)} to {chunk.where(-1)}: {exc}") from None
            writer.write(out)
            if len(report):
                bad_writer.write(report)
            n_bad += len(report)
            rows_done += len(chunk.frame)
            scored += len(chunk.frame)
            bar.update(chunk, rows_done, scored / max(time.perf_counter() - t0, 1e-9))
            if (k + 1) % every == 0:  # checkpoint; the cache restarts so a resumed run computes the same
                _save_state(p, ident, writer, bad_writer, k + 1, rows_done, n_bad, digest.hexdigest())
                scorer.clear()
            if _stop_after_chunks is not None and k + 1 >= _stop_after_chunks:
                raise KeyboardInterrupt("stopped for a test")
        bar.close()
        scoring_seconds = time.perf_counter() - t0
        _finish(p, writer, bad_writer, n_bad, rows_done, output, input)
        seconds = time.perf_counter() - started
    except Exception as exc:  # an error: nothing half-written stays behind
        _close(writers, bar)
        _cleanup(p)
        if isinstance(exc, OSError) and not isinstance(exc, tableio.OutputError):
            raise tableio.OutputError(f"{output}: could not write: {exc.strerror or exc}"
                                      + (f" ({exc.filename})" if exc.filename else "")) from exc
        raise
    except BaseException:  # an interrupt: the resume state stays
        _close(writers, bar)
        raise
    return {"rows": rows_done, "rows_this_run": scored, "bad_rows": n_bad, "seconds": seconds,
            "load_seconds": load_seconds,
            "scoring_seconds": scoring_seconds, "pairs_per_s": scored / max(scoring_seconds, 1e-9),
            "texts_encoded": scorer.encoded, "cache_hit_rate": scorer.cache_hit_rate, "output": str(output),
            "bad_rows_report": str(p["bad"]) if n_bad else None, "q1_col": q1c, "q2_col": q2c, "id_col": idc,
            "known_answered": scorer.known_answered if det.known is not None else None}


def _close(writers, bar) -> None:
    for w in writers:
        w.close()
    bar.close()


def _skip_scored(chunks, digest, state: dict, p: dict, input):
    """Read past the chunks the interrupted run scored (returns the last one read); refuse when their content
    changed since."""
    last = None
    for _ in range(state["chunks"]):
        chunk = next(chunks, None)
        if chunk is None:
            break
        _rows_digest(digest, chunk.frame)
        last = chunk
    if digest.hexdigest() != state.get("input_sha256"):
        raise ValueError(f"cannot resume {p['out']}: the first {state['rows']} rows of {input} are not those the "
                         "interrupted run scored (the file changed); rerun without --resume")
    return last


class ScoreProgress:
    """The progress bar of `score_file`: rows out of the row count where the file states it (Parquet), else
    bytes of the file read (compressed bytes for gzip) out of its size, with the pairs done and pairs/s."""

    def __init__(self, input, rows_done: int, resumed_chunk=None, progress: bool | None = None):
        from . import tableio
        from .progress import progress_bar

        rows = tableio.num_rows(input)
        self.by_rows = rows is not None
        done = rows_done if self.by_rows else getattr(resumed_chunk, "end_byte", None) or 0
        self.bar = progress_bar(total=rows if self.by_rows else os.path.getsize(input), initial=done,
                        unit="pair" if self.by_rows else "B", unit_scale=True, unit_divisor=1000 if self.by_rows else 1024,
                        desc="scoring", show=progress, smoothing=0.05)

    def update(self, chunk, rows_done: int, pairs_per_s: float) -> None:
        if not self.by_rows:
            self.bar.set_postfix_str(f"{rows_done:,} pairs, {pairs_per_s:,.0f} pairs/s", refresh=False)
        self.bar.update(len(chunk.frame) if self.by_rows else chunk.end_byte - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def _chunk_reasons(chunk, cols, max_chars: int, det) -> tuple[dict, np.ndarray]:
    """Per question column, why each cell is bad ('' if fine); and which rows can be scored."""
    odd = np.zeros(len(chunk.frame), dtype=bool)
    odd[list(chunk.odd_fields)] = True
    reasons = {c: bad_reasons(chunk.frame[c], max_chars).mask(odd, "") for c in cols}
    for c, side in zip(cols, ("left", "right")):  # e.g. an HTML body with no text, once stripped
        fine = np.flatnonzero((reasons[c] == "").to_numpy())
        emptied = fine[det.emptied(list(chunk.frame[c].to_numpy()[fine]), side)]
        reasons[c].iloc[emptied] = "empty once prepared for the model (an HTML body with no text?)"
    ok = ~odd
    for r in reasons.values():
        ok &= (r == "").to_numpy()
    return reasons, ok


def _raise_bad_row(input, chunk, r) -> None:
    from .data import DataError

    if r["column"] == "":
        chunk.check_fields(input, hint="; pass --on-bad-row mark to score it as missing")
    i = int(r["row"]) - 1 - int(chunk.frame.index[0])
    raise DataError(f"{input}: {chunk.where(i)}, column '{r['column']}': {r['reason']} ({r['value']!r}); "
                    "pass --on-bad-row mark to score it as missing")


def _as_detector(model, device, backend: str = "auto", known=None, known_probability: float | None = None):
    """The detector that scores: `model` itself or loaded from it; with `known`, a copy that answers those pairs."""
    import copy

    from .detector import DuplicateDetector, load

    if isinstance(model, DuplicateDetector):
        det = model if known is None else copy.copy(model)
    else:
        det = load(model, device=device, backend=backend)
    return det if known is None else det.with_known(known, known_probability)


def _score_chunk(scorer: PairScorer, chunk: pd.DataFrame, q1c: str, q2c: str, ok: np.ndarray,
                 odd: list | None = None) -> pd.DataFrame:
    """The chunk with its probability and decision columns (empty where not `ok`). `odd`: positions of rows whose
    field count differs from the header's: their fields after the first may sit in the wrong columns, so those are
    left empty (the bad-rows file holds the line as read)."""
    probs = np.full(len(chunk), np.nan)
    probs[ok] = scorer.predict_proba(list(chunk[q1c].to_numpy()[ok]), list(chunk[q2c].to_numpy()[ok]))
    out = chunk.copy()
    if odd:
        for col in out.columns[1:]:
            out[col] = out[col].astype(object)
            out.iloc[odd, out.columns.get_loc(col)] = None
    out[PROBA_COL] = probs
    pred = pd.array((probs >= scorer.det.threshold).astype(np.int8), dtype="Int8")
    pred[~ok] = pd.NA
    out[PRED_COL] = pred
    return out


def _bad_rows_frame(chunk, bad: dict, idc: str | None, delimiter: str = ",") -> pd.DataFrame:
    """The bad-row report of a chunk: row, line (CSV/TSV), id, column ('' for a field-count problem), reason, value
    (for a field-count problem, the whole line as read, since the output row cannot hold it)."""
    frame, start = chunk.frame, int(chunk.frame.index[0])
    hits = [(i, "", chunk.field_count_problem(i), chunk.odd_record(i, delimiter)) for i in chunk.odd_fields]
    for col, reasons in bad.items():
        for row, reason in reasons[reasons != ""].items():
            hits.append((int(row) - start, col, reason, str(frame.at[row, col])[:80]))
    rows = [{"row": start + i + 1, "line": int(chunk.lines[i]) if chunk.lines is not None else "",
             "id": frame.iat[i, frame.columns.get_loc(idc)] if idc else "", "column": col, "reason": reason,
             "value": value} for i, col, reason, value in hits]
    return pd.DataFrame(rows, columns=["row", "line", "id", "column", "reason", "value"]).sort_values(
        ["row", "column"], kind="stable").reset_index(drop=True)


def _save_state(p: dict, ident: dict, writer, bad_writer, chunks: int, rows: int, n_bad: int,
                input_sha256: str) -> None:
    import json

    state = {**ident, "writer": writer.state(), "bad_writer": bad_writer.state(), "chunks": chunks,
             "rows": rows, "bad_rows": n_bad, "input_sha256": input_sha256}
    tmp = Path(str(p["state"]) + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, p["state"])


def _resume_state(p: dict, ident: dict) -> dict | None:
    import json
    import logging

    if not p["state"].exists():
        logging.getLogger("qpairs").warning("%s: nothing to resume, starting from the first row", p["out"])
        return None
    try:
        state = json.loads(p["state"].read_text())
        missing = [k for k in ("writer", "bad_writer", "chunks", "rows", "bad_rows", "input_sha256")
                   if k not in state] if isinstance(state, dict) else ["all"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{p['state']}: the resume state is unreadable ({exc}); rerun without --resume") from None
    if missing:
        raise ValueError(f"{p['state']}: the resume state is incomplete (no {', '.join(missing)}); "
                         "rerun without --resume")
    for key in ("input", "size", "mtime_ns"):
        if state.get(key) != ident[key]:
            raise ValueError(f"cannot resume {p['out']}: the interrupted run had {key} = {state.get(key)}, "
                             f"this one has {ident[key]}; rerun with the same input, or without --resume")
    before, now = state.get("options") or {}, ident["options"]
    changed = [f"{k} {before.get(k)!r} → {now.get(k)!r}" for k in sorted({*before, *now}) if before.get(k) != now.get(k)]
    if changed:
        raise ValueError(f"cannot resume {p['out']}: options differ from the interrupted run's ({'; '.join(changed)}); "
                         "rerun with the same options, or without --resume")
    return state


def _cleanup(p: dict) -> None:
    import shutil

    for key in ("tmp", "state", "bad_tmp"):
        Path(p[key]).unlink(missing_ok=True)
    shutil.rmtree(str(p["tmp"]) + ".parts", ignore_errors=True)


def _finish(p: dict, writer, bad_writer, n_bad: int, rows: int, output, input) -> None:
    from . import tableio

    writer.close()
    bad_writer.close()
    if rows == 0:  # header only: the input's columns (a Parquet file's types too) and the two added
        empty = tableio.read_frame(input).assign(**{PROBA_COL: pd.Series(dtype="float64"),
                                                    PRED_COL: pd.Series(dtype="Int8")})
        tableio.write_frame(empty, p["tmp"], name=output)
    elif isinstance(writer, tableio.ParquetWriter):
        writer.merge_into(p["tmp"])
    os.replace(p["tmp"], p["out"])
    if n_bad:
        os.replace(p["bad_tmp"], p["bad"])
    else:
        p["bad"].unlink(missing_ok=True)  # a stale report of an earlier run would mislead
    _cleanup(p)
