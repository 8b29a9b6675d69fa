"""Batch scoring on a Ray cluster (Ray Data), with the same `score_frame` the local scorer uses.

``qpairs score --engine ray IN -o OUT`` (needs ``pip install 'qpairs[ray]'``)::

    read_csv / read_parquet  →  number the rows  →  map_batches(actor pool)  →  write_parquet(OUT/)

* Every actor loads the model once and scores pandas batches with `qpairs.scoring.score_frame`;
  with GPUs in the cluster each actor holds one GPU.
* OUT is a directory of Parquet shards. Every input row appears once, with all its columns
  (ids included) plus ``row_number`` (0-based position in the input as Ray reads it: the
  files in listing order, then the rows of each file) and the two score columns, so
  ``pd.read_parquet(OUT).sort_values("row_number")`` restores the input order.
* Bad rows (empty, NaN, over-long questions) are found while numbering, before any scoring,
  and stop the job with a `DataError` naming the row, its id and the column.
* Every Ray task and actor asks for a fraction of a CPU (`TASK_CPUS`, ``--cpus-per-worker``):
  on a small machine, actors that each take a whole CPU leave none for the read and write
  tasks and the job waits forever.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROW_COL = "row_number"
TASK_CPUS = 0.25  # read, numbering and write tasks


def _require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ImportError("--engine ray needs Ray Data: pip install 'qpairs[ray]'") from exc
    return ray


class FrameScorer:
    """Ray Data actor: loads the model once, then scores pandas batches with `score_frame`."""

    def __init__(self, model, device: str, q1_col: str, q2_col: str, threads: int, batch_size: int | None = None):
        import torch

        from .detector import load
        from .scoring import _at_batch_size

        torch.set_num_threads(threads)
        self.det = load(model, device=device)
        if batch_size:
            self.det = _at_batch_size(self.det, batch_size)  # an ensemble's members too
        self.q1, self.q2 = q1_col, q2_col

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        from .scoring import score_frame

        return score_frame(self.det, batch, self.q1, self.q2)


def _read(ray, path: str, fmt: str, columns: list[str]):
    """The input as a Ray Dataset; CSV/TSV cells stay text exactly as written."""
    import pyarrow as pa
    from pyarrow import csv

    args = {"num_cpus": TASK_CPUS}
    if fmt == "parquet":
        return ray.data.read_parquet(path, **args)
    parse = csv.ParseOptions(delimiter="\t", quote_char=False) if fmt == "tsv" else csv.ParseOptions()
    convert = csv.ConvertOptions(column_types={c: pa.string() for c in columns}, strings_can_be_null=False,
                                 quoted_strings_can_be_null=False)
    return ray.data.read_csv(path, parse_options=parse, convert_options=convert, **args)


def first_bad_row(df: pd.DataFrame, cols, id_col: str | None, max_chars: int) -> dict | None:
    """The first row of `df` with an unscorable question (position, column, reason, id), or None."""
    from .scoring import bad_reasons

    for col in cols:
        reasons = bad_reasons(df[col].reset_index(drop=True), max_chars).to_numpy()
        hits = np.flatnonzero(reasons != "")
        if len(hits):
            i = int(hits[0])
            return {"pos": i, "column": col, "reason": reasons[i], "value": str(df[col].iloc[i])[:80],
                    "id": str(df[id_col].iloc[i]) if id_col else None}
    return None


def _numbered(ray, ds, rows_per_block: int, check: dict):
    """`ds` with a 0-based ``row_number`` column in read order, cut into blocks of ≤ `rows_per_block` rows.

    Ray Data has no global row index, so the read is materialised once: the row counts of its
    blocks give each block's offset. Small blocks also spread one big file over all actors.
    Bad rows are found in the same pass (`check`: `first_bad_row` arguments) and raise a
    `DataError` naming the row, its id and the column, before any scoring starts.
    """
    from .data import DataError

    @ray.remote(num_cpus=TASK_CPUS)
    def inspect(df):
        return len(df), first_bad_row(df, **check)

    @ray.remote(num_cpus=TASK_CPUS)
    def number(df, offset, rows):
        df = df.reset_index(drop=True)
        df.insert(0, ROW_COL, np.arange(offset, offset + len(df), dtype=np.int64))
        pieces = [df.iloc[s : s + rows] for s in range(0, len(df), rows)]
        return pieces[0] if len(pieces) == 1 else tuple(pieces)

    refs = ds.to_pandas_refs()
    found = ray.get([inspect.remote(r) for r in refs])
    counts = [n for n, _ in found]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int) if counts else []
    for (_, bad), off in zip(found, offsets):
        if bad is not None:
            ident = f" (id {bad['id']})" if bad["id"] is not None else ""
            raise DataError(f"row {off + bad['pos'] + 1}{ident}, column '{bad['column']}': {bad['reason']} "
                            f"({bad['value']!r})")
    pieces = []
    for ref, n, off in zip(refs, counts, offsets):
        if n == 0:
            continue
        k = math.ceil(n / rows_per_block)
        out = number.options(num_returns=k).remote(ref, int(off), rows_per_block)
        pieces.extend(out if k > 1 else [out])
    return ray.data.from_pandas_refs(pieces), int(sum(counts))


def _input_files(path: str) -> list[str]:
    """The files of `path`: itself, or a directory's (sorted, hidden and ``_``-prefixed ones left out)."""
    p = Path(path)
    if p.is_dir():
        files = [str(f) for f in sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith((".", "_")))]
        if not files:
            raise FileNotFoundError(f"{path}: empty directory")
        return files
    return [path]


def _first_file(path: str) -> str:
    return _input_files(path)[0]


def _locate_parse_error(path: str, fmt: str) -> None:
    """After Ray's reader failed: raise the `DataError` (file, row, line) of the first text row whose field count
    differs from its header's, if there is one (the local engine's check, run only on this error path)."""
    from . import tableio

    if fmt != "parquet":
        for file in _input_files(path):
            tableio.check_field_counts(file)


def score_with_ray(input, output, model=None, *, q1_col: str | None = None, q2_col: str | None = None,
                   id_col: str | None = None, device: str = "auto", workers: int | None = None,
                   cpus_per_worker: float = 0.5, gpus_per_worker: float | None = None, rows_per_batch: int = 4096,
                   batch_size: int | None = None, max_chars: int = 10_000, address: str | None = None) -> dict:
    """Score every pair of `input` (CSV/TSV/Parquet file or directory of them) into the Parquet directory `output`.

    Joins the Ray cluster at `address` (None: the one in ``RAY_ADDRESS``, else a local
    instance). `workers` actors (default: one per GPU, else one) each load the model once and
    score batches of `rows_per_batch` rows; `gpus_per_worker` defaults to 1 when the cluster
    has GPUs. Bad rows (empty, NaN, over `max_chars`) stop the job with an error naming the
    row, the id and the column. Returns a summary dict.
    """
    import time

    from . import tableio
    from .data import DataError
    from .scoring import PRED_COL, PROBA_COL, resolve_columns

    ray = _require_ray()
    model = str(model) if model is not None else None
    input, output = str(input), str(output)
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise FileExistsError(f"{output} already exists: --engine ray writes a new directory of Parquet shards")
    first = _first_file(input)
    fmt, _ = tableio.table_format(first)
    columns = tableio.read_columns(first)
    if tableio.pandas_index_columns(first):
        raise DataError(f"{first}: keeps a pandas index ({', '.join(tableio.pandas_index_columns(first))}), which "
                        "Ray reads differently: score it with --engine local, or write it with index=False")
    q1c, q2c, idc = resolve_columns(columns, q1_col, q2_col, id_col, first)
    if ROW_COL in columns:
        raise DataError(f"{first}: already has a '{ROW_COL}' column; rename it first")

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    saved = ctx.execution_options.preserve_order, ctx.enable_progress_bars
    ctx.enable_progress_bars = sys.stderr.isatty()  # like qpairs' own bars: off when not on a terminal
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        gpus_per_worker = (1.0 if gpus else 0.0) if gpus_per_worker is None else gpus_per_worker
        workers = workers or (int(gpus // gpus_per_worker) if gpus_per_worker else 1) or 1
        run_device = ("cuda" if gpus_per_worker else "cpu") if device == "auto" else device

        t0 = time.perf_counter()
        check = dict(cols=(q1c, q2c), id_col=idc, max_chars=max_chars)
        ctx.execution_options.preserve_order = True  # row numbers follow the input order
        try:
            ds, n_in = _numbered(ray, _read(ray, input, fmt, columns), rows_per_batch, check)
        except DataError as exc:
            raise DataError(f"{input}: {exc}") from None
        except Exception:
            _locate_parse_error(input, fmt)
            raise
        t_read = time.perf_counter() - t0
        ctx.execution_options.preserve_order = False  # batches may finish in any order: row_number restores it
        scored = ds.map_batches(
            FrameScorer, batch_format="pandas", batch_size=rows_per_batch,
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None,
            fn_constructor_kwargs=dict(model=model, device=run_device, q1_col=q1c, q2_col=q2c,
                                       threads=max(1, round(cpus_per_worker)), batch_size=batch_size))
        scored.write_parquet(output, ray_remote_args={"num_cpus": TASK_CPUS})
        seconds = time.perf_counter() - t0
        n_out = ray.data.read_parquet(output, num_cpus=TASK_CPUS).count()
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
        if started_here:
            ray.shutdown()
    if n_out != n_in:
        raise RuntimeError(f"{output}: {n_out} rows written for {n_in} input rows")
    return {"rows": n_in, "seconds": seconds, "read_seconds": t_read, "pairs_per_s": n_in / max(seconds, 1e-9),
            "workers": workers, "gpus_per_worker": gpus_per_worker, "cpus_per_worker": cpus_per_worker,
            "output": output, "q1_col": q1c, "q2_col": q2c, "id_col": idc,
            "columns": [ROW_COL, *columns, PROBA_COL, PRED_COL]}
