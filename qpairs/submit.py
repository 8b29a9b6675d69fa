"""Kaggle "Quora Question Pairs" submissions: ``test_id,is_duplicate``, validated before writing.

The test file is streamed in chunks; only the ids and one probability per row are kept
(≈ 40 MB for the 2,345,796-row Kaggle test). Probabilities are clipped to [1e-6, 1 − 1e-6]
(log loss punishes a confident miss without bound). ``test_prior`` re-weights the
calibrated probabilities from the duplicate rate the calibration was fitted at (0.37, the
natural QQP rate) to the test's rate (Kaggle's test is ≈ 0.165) with Bayes' rule.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .data import DataError

log = logging.getLogger("qpairs")

CLIP = 1e-6


def clip(probs) -> np.ndarray:
    """Probabilities clipped to [1e-6, 1 − 1e-6]."""
    return np.clip(np.asarray(probs, dtype=np.float64), CLIP, 1 - CLIP)


def validate_submission(frame: pd.DataFrame, expected_rows: int, source="submission") -> None:
    """Raise ValueError unless `frame` is a well-formed submission of `expected_rows` rows."""
    if list(frame.columns) != ["test_id", "is_duplicate"]:
        raise ValueError(f"{source}: columns must be ['test_id', 'is_duplicate'], got {list(frame.columns)}")
    if len(frame) != expected_rows:
        raise ValueError(f"{source}: {len(frame)} rows, but the test file has {expected_rows}")
    dup = frame["test_id"].duplicated()
    if dup.any():
        raise ValueError(f"{source}: test_id {str(frame['test_id'][dup].iloc[0])!r} appears more than once "
                         f"({int(dup.sum())} repeated ids)")
    p = frame["is_duplicate"].to_numpy(dtype=np.float64)
    if np.isnan(p).any():
        raise ValueError(f"{source}: is_duplicate is NaN in row {int(np.flatnonzero(np.isnan(p))[0]) + 1}")
    if (p < CLIP).any() or (p > 1 - CLIP).any():
        raise ValueError(f"{source}: is_duplicate outside [{CLIP}, {1 - CLIP}]")


def make_submission(test_file, output, model=None, *, test_prior: float | None = None, device: str = "auto",
                    batch_size: int | None = None, chunk_size: int = 50_000, q1_col: str | None = None,
                    q2_col: str | None = None, id_col: str | None = None, progress: bool | None = None,
                    backend: str = "auto", known=None, known_probability: float | None = None) -> dict:
    """Score a Kaggle test file and write ``test_id,is_duplicate`` (``.csv.gz`` → gzip), one row per test row.

    Rows with an empty or missing question cannot be scored; they get the prior duplicate
    rate (the test prior when given, else the calibration's) and are counted in the summary.
    A blank test_id, or a line with another number of fields than the header, is refused.
    The written file is read back and checked against the rows read before it replaces `output`.
    `known`: labelled pairs whose answers replace the model's (`DuplicateDetector.with_known`).
    """
    from . import tableio
    from .progress import progress_bar
    from .data import find_column
    from .scoring import PairScorer, _as_detector, resolve_columns
    from .text import bad_reasons, blank_mask

    if test_prior is not None and not 0.0 < test_prior < 1.0:
        raise ValueError(f"--test-prior is a duplicate rate: it must lie strictly between 0 and 1, not {test_prior}")
    columns = tableio.read_columns(test_file)
    q1c, q2c, idc = resolve_columns(columns, q1_col, q2_col, id_col, test_file)
    if id_col is None:
        idc = find_column(columns, ("test_id",), "test_id", test_file, required=False)  # in any case
    if idc is None:
        raise DataError(f"{test_file}: no 'test_id' column (a Kaggle test file has test_id,question1,question2); "
                        f"columns are {columns}; name the id column with --id-col")
    tableio.check_output(output, test_file)
    if not str(output).lower().endswith((".csv", ".csv.gz")):
        raise ValueError(f"{output}: a submission is a CSV file: end its name in .csv or .csv.gz")
    det = _as_detector(model, device, backend, known, known_probability)
    scorer = PairScorer(det, batch_size)
    fallback = test_prior if test_prior is not None else (det.calibrator.prior or det.threshold)
    numbers, probs, n_bad, rows_read = [], [], 0, 0
    bar = progress_bar(total=tableio.num_rows(test_file), unit="pair", unit_scale=True, desc="submission",
                       show=progress)
    for chunk in tableio.iter_table(test_file, chunk_size):
        rows_read += len(chunk.frame)
        chunk.check_fields(test_file)
        frame = chunk.frame
        blank = blank_mask(frame[idc])
        if blank.any():
            raise DataError(f"{test_file}: {chunk.where(int(np.flatnonzero(blank)[0]))}, column '{idc}': blank test_id")
        numbers.append(_id_numbers(frame[idc], chunk, test_file, idc))
        reasons = {c: bad_reasons(frame[c]) for c in (q1c, q2c)}
        _refuse_non_text(reasons, chunk, test_file)
        ok = ((reasons[q1c] == "") & (reasons[q2c] == "")).to_numpy()
        p = np.full(len(frame), fallback, dtype=np.float64)
        p[ok] = scorer.predict_proba(list(frame[q1c].to_numpy()[ok]), list(frame[q2c].to_numpy()[ok]), test_prior)
        probs.append(p)
        n_bad += int((~ok).sum())
        bar.update(len(frame))
    bar.close()
    if numbers:
        _refuse_repeated_ids(pd.Series(np.concatenate(numbers)), test_file, idc)
    frame = pd.DataFrame({"test_id": np.concatenate(numbers) if numbers else np.array([], dtype=object),
                          "is_duplicate": clip(np.concatenate(probs)) if probs else np.array([])})
    validate_submission(frame, rows_read, test_file)
    _write(frame, output, rows_read, test_file)
    if n_bad:
        log.warning("%d rows with an empty or missing question got the prior probability %.4f", n_bad, fallback)
    return {"rows": rows_read, "unscorable_rows": n_bad, "mean_probability": float(frame["is_duplicate"].mean())
            if rows_read else float("nan"), "test_prior": test_prior, "output": str(output),
            "known_answered": scorer.known_answered if det.known is not None else None}


def _refuse_non_text(reasons: dict, chunk, test_file) -> None:
    """A DataError naming the first question cell that is not text at all (a number in a typed column: the wrong
    column?), from each column's `bad_reasons`; empty and missing questions are the ones that get the prior."""
    from .text import NOT_TEXT

    for col, why in reasons.items():
        hit = np.flatnonzero(why.str.startswith(NOT_TEXT).to_numpy())
        if len(hit):
            raise DataError(f"{test_file}: {chunk.where(int(hit[0]))}, column '{col}': {why.iloc[hit[0]]}")


def _id_numbers(ids: pd.Series, chunk, test_file, column: str) -> np.ndarray:
    """The test_ids as canonical numbers, as the submission writes them (" 05" is "5"); one that is not a whole
    number (Kaggle's are) is refused, naming its line."""
    text = ids.astype(str).str.strip()
    bad = np.flatnonzero(~text.str.fullmatch(r"\d+").to_numpy())
    if len(bad):
        raise DataError(f"{test_file}: {chunk.where(int(bad[0]))}, column '{column}': test_id {text.iloc[bad[0]]!r} is "
                        "not a whole number (Kaggle's test_ids are 0, 1, 2, …)")
    return text.str.lstrip("0").replace("", "0").to_numpy()


def _refuse_repeated_ids(numbers: pd.Series, test_file, column: str) -> None:
    """Refuse the first row whose test_id number an earlier row has, naming both."""
    from .tableio import row_where

    repeated = np.flatnonzero(numbers.duplicated().to_numpy())
    if len(repeated):
        row = int(repeated[0])
        first = int(np.flatnonzero((numbers == numbers.iloc[row]).to_numpy())[0])
        raise DataError(f"{test_file}: {row_where(test_file, row)}, column '{column}': test_id {numbers.iloc[row]} "
                        f"repeats the test_id of {row_where(test_file, first)}")


def _write(frame: pd.DataFrame, output, rows_read: int, test_file) -> None:
    """Write to a temp file, read it back, check it against the `rows_read` test rows, then rename."""
    from .tableio import OutputError

    out = Path(output)
    tmp = out.parent / f".{out.name}.partial"
    gz = out.name.lower().endswith(".gz")
    try:
        frame.to_csv(tmp, index=False, float_format="%.6g", lineterminator="\n", compression="gzip" if gz else None)
        written = pd.read_csv(tmp, dtype={"test_id": str}, keep_default_na=False, na_values={"is_duplicate": [""]},
                              compression="gzip" if gz else None)
        validate_submission(written, rows_read, f"{output} (as written, for {test_file})")
        if not (written["test_id"].to_numpy() == frame["test_id"].to_numpy()).all():
            raise ValueError(f"{output}: the test_ids as written differ from those of {test_file}")
        os.replace(tmp, out)
    except OSError as exc:
        raise OutputError(f"{output}: could not write: {exc.strerror or exc}"
                          + (f" ({exc.filename})" if exc.filename else "")) from exc
    finally:
        tmp.unlink(missing_ok=True)
