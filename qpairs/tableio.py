"""Chunked, resumable reading and writing of pair tables: CSV, TSV (gzip or not) and Parquet.

The format comes from the file name: ``.parquet``/``.pq`` → Parquet; ``.tsv``/``.txt`` → TSV
(no quoting, like QQP's ``quora_duplicate_questions.tsv``); anything else → CSV; a trailing
``.gz`` → gzip. CSV/TSV cells are read as text exactly as written (no type or NA guessing).

Writers append chunk after chunk to one temporary file and can report a `state()` after any
chunk; a writer built with that state continues from there (what ``--resume`` uses), giving
the same bytes as an uninterrupted run. Gzip output is one gzip member per chunk (valid
gzip, read by every gzip reader), so it can be cut at a chunk boundary.
"""
from __future__ import annotations

import csv
import gzip
import os
import shutil
from pathlib import Path
from typing import Iterator

import pandas as pd

from .data import DataError


def table_format(path) -> tuple[str, bool]:
    """('csv' | 'tsv' | 'parquet', gzipped?) from the file name."""
    name = str(path).lower()
    gz = name.endswith(".gz")
    name = name.removesuffix(".gz")
    if name.endswith((".parquet", ".pq")):
        if gz:
            raise ValueError(f"{path}: gzipped Parquet is not supported (Parquet compresses itself)")
        return "parquet", False
    return ("tsv" if name.endswith((".tsv", ".txt")) else "csv"), gz


def _csv_kwargs(fmt: str) -> dict:
    return dict(sep="\t", quoting=csv.QUOTE_NONE) if fmt == "tsv" else dict(sep=",")


def num_rows(path) -> int | None:
    """Row count when it is cheap to know (Parquet metadata), else None."""
    if table_format(path)[0] == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    return None


def read_columns(path) -> list[str]:
    """Column names of a table file."""
    fmt, _ = table_format(path)
    _exists(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    try:
        return list(pd.read_csv(path, nrows=0, dtype=str, **_csv_kwargs(fmt)).columns)
    except Exception as exc:
        raise DataError(f"{path}: could not be read as {fmt.upper()}: {exc}") from exc


def _exists(path) -> None:
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")


def iter_chunks(path, chunk_size: int) -> Iterator[pd.DataFrame]:
    """Frames of `chunk_size` rows (the last may be shorter), indexed by row number from 0."""
    fmt, _ = table_format(path)
    _exists(path)
    start = 0
    if fmt == "parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_size):
            frame = batch.to_pandas()
            frame.index = pd.RangeIndex(start, start + len(frame))
            start += len(frame)
            yield frame
        return
    reader = pd.read_csv(path, chunksize=chunk_size, dtype=str, keep_default_na=False, na_filter=False,
                         **_csv_kwargs(fmt))
    with reader:
        while True:
            try:
                frame = next(reader)
            except StopIteration:
                return
            except Exception as exc:  # a malformed line: pandas names the line
                raise DataError(f"{path}: could not be read as {fmt.upper()} after row {start}: {exc}") from exc
            frame.index = pd.RangeIndex(start, start + len(frame))
            start += len(frame)
            yield frame


class CSVWriter:
    """Appends frames to a CSV/TSV (gzip: one member per chunk) file; `state()` is the byte offset."""

    def __init__(self, path, fmt: str, gz: bool, state: dict | None = None, float_format: str = "%.6g"):
        self.path, self.fmt, self.gz, self.float_format = Path(path), fmt, gz, float_format
        self.offset = int(state["offset"]) if state else 0
        self.header_done = bool(state and state["header_done"])
        if state:
            if not self.path.exists() or self.path.stat().st_size < self.offset:
                raise ValueError(f"{self.path}: the partial output is shorter than its resume state says; "
                                 "start again without --resume")
            self.file = open(self.path, "r+b")
            self.file.truncate(self.offset)
            self.file.seek(self.offset)
        else:
            self.file = open(self.path, "wb")

    def write(self, frame: pd.DataFrame) -> None:
        try:
            text = frame.to_csv(index=False, header=not self.header_done, float_format=self.float_format,
                                lineterminator="\n", **_csv_kwargs(self.fmt))
        except csv.Error as exc:
            raise ValueError(f"{self.path}: a cell holds a tab or newline, which TSV without quoting cannot "
                             f"store ({exc}); write CSV or Parquet instead") from exc
        data = text.encode("utf-8")
        if self.gz:
            data = gzip.compress(data, compresslevel=6, mtime=0)
        self.file.write(data)
        self.header_done = True

    def state(self) -> dict:
        self.file.flush()
        os.fsync(self.file.fileno())
        return {"offset": self.file.tell(), "header_done": self.header_done}

    def close(self) -> None:
        self.file.close()


class ParquetWriter:
    """Writes each frame as a part file in a directory; `finish` merges them (one row group each)."""

    def __init__(self, path, state: dict | None = None):
        self.dir = Path(str(path) + ".parts")
        self.parts = int(state["parts"]) if state else 0
        if not state and self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        for extra in self.dir.glob("part-*.parquet"):  # parts written after the last checkpoint
            if int(extra.stem.split("-")[1]) >= self.parts:
                extra.unlink()

    def write(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), self.dir / f"part-{self.parts:06d}.parquet")
        self.parts += 1

    def state(self) -> dict:
        return {"parts": self.parts}

    def close(self) -> None:
        pass

    def merge_into(self, target) -> None:
        import pyarrow.parquet as pq

        import pyarrow as pa

        files = [self.dir / f"part-{i:06d}.parquet" for i in range(self.parts)]
        # a column that is all-null in one chunk has type null there: unify across chunks
        schema = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive")
        with pq.ParquetWriter(target, schema) as writer:
            for f in files:
                writer.write_table(pq.read_table(f).cast(schema))
        shutil.rmtree(self.dir)


def open_writer(name, temp_path, state: dict | None = None):
    """A chunk writer into `temp_path` for the format that the file name `name` implies."""
    fmt, gz = table_format(name)
    return ParquetWriter(temp_path, state) if fmt == "parquet" else CSVWriter(temp_path, fmt, gz, state)


def write_frame(frame: pd.DataFrame, path, name=None) -> None:
    """Write a whole (small) frame in the format that the file name `name` (default: `path`) implies."""
    fmt, gz = table_format(name or path)
    if fmt == "parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False, compression="gzip" if gz else None, lineterminator="\n", **_csv_kwargs(fmt))
