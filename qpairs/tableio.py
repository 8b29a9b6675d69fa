"""Chunked, resumable reading and writing of pair tables: CSV, TSV (gzip or not) and Parquet.

The format comes from the file name: ``.parquet``/``.pq`` → Parquet; ``.tsv``/``.txt`` → TSV
(no quoting, like QQP's ``quora_duplicate_questions.tsv``); anything else → CSV; a trailing
``.gz`` → gzip (readers also take ``.bz2`` and ``.xz``). CSV/TSV cells are read as text exactly as
written (no type or NA guessing).

Readers yield `Chunk`s: the rows as text, the physical line each row starts on and any row
whose field count differs from the header's (an unquoted separator shifts columns: never guessed).
Writers append chunk after chunk to one temporary file and can report a `state()` after any
chunk; a writer built with that state continues from there (what ``--resume`` uses), giving
the same bytes as an uninterrupted run. Gzip output is one gzip member per chunk (valid
gzip, read by every gzip reader), so it can be cut at a chunk boundary.

Longer than 350 lines because the CSV/TSV/Parquet readers and writers share their format rules and resume
state.
"""
from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import io
import lzma
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from .errors import DataError


def table_format(path) -> tuple[str, bool]:
    """('csv' | 'tsv' | 'parquet', gzipped?) from the file name."""
    name = str(path).lower()
    gz = name.endswith(".gz")
    name = name.removesuffix(".gz").removesuffix(".bz2").removesuffix(".xz")
    if name.endswith((".parquet", ".pq")):
        if gz:
            raise ValueError(f"{path}: gzipped Parquet is not supported (Parquet compresses itself)")
        return "parquet", False
    return ("tsv" if name.endswith((".tsv", ".txt")) else "csv"), gz


def _decompressed(raw, path):
    """The bytes of `raw` (a binary file) decompressed as `path`'s suffix says: gzip, bz2, xz or none."""
    name = str(path).lower()
    for suffix, kind in ((".gz", gzip.GzipFile), (".bz2", bz2.BZ2File), (".xz", lzma.LZMAFile)):
        if name.endswith(suffix):
            return kind(raw, mode="rb") if kind is not gzip.GzipFile else kind(fileobj=raw, mode="rb")
    return raw


def _csv_kwargs(fmt: str) -> dict:
    return dict(sep="\t", quoting=csv.QUOTE_NONE) if fmt == "tsv" else dict(sep=",")


class OutputError(OSError):
    """The output cannot be written (a directory, a missing or read-only folder, the input itself, a full disk)."""


def check_output(output, input=None) -> None:
    """Refuse, before any work, an output path that cannot be written, that is `input` itself or whose name implies
    no table format (`output_format`)."""
    out = Path(output)
    folder = out.parent
    if out.is_dir():
        raise OutputError(f"{out}: is a directory; give an output file name")
    if not folder.is_dir():
        raise OutputError(f"{out}: the folder {folder} does not exist")
    if input is not None and os.path.exists(input) and (
            os.path.realpath(out) == os.path.realpath(input) or (out.exists() and os.path.samefile(out, input))):
        raise OutputError(f"{out}: is the input file; write the output to another file")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{out.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise OutputError(f"{out}: cannot write in {folder} ({exc.strerror or exc})") from None
    output_format(out)


def _parquet_file(path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError without the file name
        raise DataError(f"{path}: could not be read as Parquet: {exc}") from None


_UNNAMED_INDEX = re.compile(r"__index_level_\d+__")


def _pandas_index(parquet) -> tuple[list[str], list[tuple[str, range]]]:
    """The pandas index a Parquet file keeps, per its metadata: the index columns stored with values (an unnamed
    index's included) and the named RangeIndexes kept as start and step only."""
    index = (parquet.schema_arrow.pandas_metadata or {}).get("index_columns", [])
    ranges = [(i["name"], range(i["start"], i["stop"], i["step"])) for i in index
              if isinstance(i, dict) and i.get("kind") == "range" and i.get("name") is not None]
    return [name for name in index if isinstance(name, str)], ranges


def _parquet_layout(parquet) -> tuple[list[str], list[tuple[str, range]]]:
    """The columns a reader sees in a Parquet file, and the named pandas RangeIndexes kept in its metadata only.

    A frame that pandas wrote with a named index (``df.set_index('id').to_parquet(...)``) keeps that index as a
    column, first, as ``reset_index`` would give it, whether pandas stored its values or, for a range, only its
    start and step; the index pandas stores of an unnamed index is not a column of the data."""
    stored, ranges = _pandas_index(parquet)
    physical = [name for name in stored + [n for n in parquet.schema_arrow.names if n not in stored]
                if not _UNNAMED_INDEX.fullmatch(name)]
    return [name for name, _ in ranges] + physical, ranges


def pandas_index_columns(path) -> list[str]:
    """The columns of a Parquet file that hold (or, for a range, stand for) a pandas index; [] for a CSV/TSV."""
    if table_format(path)[0] != "parquet":
        return []
    stored, ranges = _pandas_index(_parquet_file(path))
    return [name for name, _ in ranges] + stored


def num_rows(path) -> int | None:
    """Row count when it is cheap to know (Parquet metadata), else None."""
    if table_format(path)[0] == "parquet":
        return _parquet_file(path).metadata.num_rows
    return None


def read_columns(path) -> list[str]:
    """Column names of a table file (a header naming a column twice is refused)."""
    fmt, _ = table_format(path)
    _exists(path)
    if fmt == "parquet":
        names = _parquet_layout(_parquet_file(path))[0]
    else:
        reader = _CSVReader(path, fmt)
        try:
            names = reader.header
        finally:
            reader.close()
    check_unique_columns(names, path)
    return names


def check_unique_columns(names, path) -> None:
    """Refuse a header that names a column twice."""
    seen = set()
    for name in names:
        if name in seen:
            raise DataError(f"{path}: the header names column '{name}' twice; column names must be unique")
        seen.add(name)


def _exists(path) -> None:
    """Refuse a missing input, a folder, or a pipe (stdin, `<(…)`): a table is read more than once (columns, row
    count, rows), which a stream cannot give."""
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    if os.path.isdir(path):
        raise DataError(f"{path}: a folder, not a file")
    if not os.path.isfile(path):
        raise DataError(f"{path}: not a regular file (a pipe or standard input?); save the data to a file and pass "
                        "its path")


@dataclass
class Chunk:
    """Rows `start`.. of a table: the frame (indexed by row number from 0), where each row starts in the
    file (`lines`, CSV/TSV only) and the rows whose line holds another number of fields than the header."""

    frame: pd.DataFrame
    lines: np.ndarray | None = None
    odd_fields: dict = field(default_factory=dict)  # position in the chunk -> fields on that row's line
    odd_records: dict = field(default_factory=dict)  # position in the chunk -> that line's fields as read
    n_fields: int = 0
    end_byte: int | None = None  # CSV/TSV: bytes of the file (compressed for gzip) read up to the chunk's end

    def where(self, i: int) -> str:
        """'row N (line L)' of the chunk's `i`-th row (1-based row N; L is the file's physical line)."""
        label = f"row {int(self.frame.index[i]) + 1}"
        return label + (f" (line {int(self.lines[i])})" if self.lines is not None else "")

    def odd_record(self, i: int, delimiter: str = ",") -> str:
        """The `i`-th row's fields as its line held them, written back as one CSV line (nothing cut)."""
        out = io.StringIO()
        csv.writer(out, delimiter=delimiter, lineterminator="").writerow(self.odd_records.get(i, []))
        return out.getvalue()

    def field_count_problem(self, i: int) -> str:
        return f"field count (the header has {self.n_fields} fields, this line has {self.odd_fields[i]})"

    def check_fields(self, path, hint: str = "") -> None:
        """Raise `DataError` on the first row whose field count differs from the header's."""
        if self.odd_fields:
            i = min(self.odd_fields)
            raise DataError(f"{path}: {self.where(i)}: {self.field_count_problem(i)}; an unquoted separator "
                            f"or a missing field shifts the columns{hint}")


class _CSVReader:
    """Records of a CSV/TSV file (gzip or not) with the physical line each starts on.

    A byte that is not UTF-8 is reported with its line, byte offset and column."""

    def __init__(self, path, fmt: str):
        self.path, self.fmt = path, fmt
        csv.field_size_limit(2**31 - 1)
        self.dialect = dict(delimiter="\t", quoting=csv.QUOTE_NONE) if fmt == "tsv" else dict(delimiter=",")
        try:
            self.raw = open(path, "rb")
        except OSError as exc:
            raise DataError(f"{path}: cannot be read: {exc.strerror or exc}") from None
        binary = _decompressed(self.raw, path)
        self.file = io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")  # a BOM goes before parsing
        self.records = csv.reader(self.file, strict=True, **self.dialect)
        self.header: list[str] = []
        self.line = 0  # physical lines consumed
        with self._errors():
            first = next((rec for rec in self.records if rec), None)
        if first is None:
            raise DataError(f"{path}: empty file (no header line)")
        self.line = self.records.line_num
        first[0] = first[0].removeprefix("\ufeff")
        self.header = [name or f"Unnamed: {i}" for i, name in enumerate(first)]  # as pandas names a blank one

    @contextlib.contextmanager
    def _errors(self):
        """Turn decoding, parsing and gzip errors into `DataError`s that name the place."""
        try:
            yield
        except UnicodeDecodeError:
            raise self._bad_bytes() from None
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                raise DataError(f"{self.path}: line {self.line + 1}: a quoted field opened in the record starting "
                                "on this line is never closed (the file ends inside it)") from None
            raise DataError(f"{self.path}: line {self.records.line_num}: could not be read as {self.fmt.upper()}: "
                            f"{exc}") from None
        except (OSError, EOFError, lzma.LZMAError) as exc:  # a corrupt or truncated compressed stream
            raise DataError(f"{self.path}: could not be read after line {self.line}: {exc}") from None

    def _bad_bytes(self) -> DataError:
        """The error for the first line that is not UTF-8: line, byte offset and column (or what the whole file is,
        when it starts as another format does)."""
        with open(self.path, "rb") as raw, _decompressed(raw, self.path) as fh:
            start = fh.read(4)
        kind = next((what for magic, what in _OTHER_FORMATS if start.startswith(magic)), None)
        if kind:
            return DataError(f"{self.path}: not UTF-8 text: the file is {kind}")
        offset, header = 0, self.header
        with open(self.path, "rb") as raw, _decompressed(raw, self.path) as fh:
            for n, raw in enumerate(fh, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    where = f"line {n} (byte {offset + exc.start})"
                    if header:
                        before = raw[: exc.start].decode("utf-8", errors="replace")
                        fields = next(csv.reader([before], **self.dialect), [""])
                        where += f", column '{header[max(0, min(len(fields), len(header)) - 1)]}'"
                    return DataError(f"{self.path}: {where}: not valid UTF-8 ({exc.reason}); save the file as UTF-8")
                if n == 1 and not header:  # the error came while decoding ahead of the header line
                    header = next(csv.reader([text.removeprefix("\ufeff").rstrip("\r\n")], **self.dialect), [])
                offset += len(raw)
        return DataError(f"{self.path}: not valid UTF-8")

    def chunks(self, chunk_size: int) -> Iterator[Chunk]:
        """Data rows in frames of `chunk_size`. Blank lines are skipped, except inside a one-column file, where
        such a line is an empty value (blank lines at its end are still skipped)."""
        n, row, records = len(self.header), 0, self.records
        rows, lines, odd, odd_records = [], [], {}, {}
        blank_lines: list[int] = []
        with self._errors():
            for rec in records:
                start, self.line = self.line + 1, records.line_num
                if not rec:
                    if n == 1:
                        blank_lines.append(start)
                    continue
                for line in blank_lines:  # a one-column file's blank lines before this row are empty values
                    rows.append([""])
                    lines.append(line)
                blank_lines = []
                if len(rec) != n:
                    odd[len(rows)], odd_records[len(rows)] = len(rec), rec
                    rec = (rec + [""] * n)[:n]
                rows.append(rec)
                lines.append(start)
                if len(rows) >= chunk_size:
                    yield self._chunk(rows, lines, odd, odd_records, row)
                    row += len(rows)
                    rows, lines, odd, odd_records = [], [], {}, {}
        if rows:
            yield self._chunk(rows, lines, odd, odd_records, row)

    def _chunk(self, rows, lines, odd, odd_records, row: int) -> Chunk:
        frame = pd.DataFrame(rows, columns=self.header, dtype=object, index=pd.RangeIndex(row, row + len(rows)))
        return Chunk(frame, np.asarray(lines, dtype=np.int64), odd, odd_records, len(self.header), self.raw.tell())

    def close(self) -> None:
        self.file.close()
        self.raw.close()


def line_of_row(path, row: int) -> int | None:
    """Physical line on which data row `row` (from 0) of a CSV/TSV starts; None when not known."""
    fmt, _ = table_format(path)
    if fmt == "parquet" or not os.path.exists(path):
        return None
    try:
        reader = _CSVReader(path, fmt)
        try:
            for chunk in reader.chunks(65536):
                if row <= chunk.frame.index[-1]:
                    return int(chunk.lines[row - chunk.frame.index[0]])
        finally:
            reader.close()
    except DataError:
        pass
    return None


def check_field_counts(path) -> None:
    """Raise `DataError` on the first CSV/TSV row whose field count differs from the header's."""
    for chunk in iter_table(path, 65536):
        chunk.check_fields(path)


def row_where(path, row: int) -> str:
    """'row N (line L)' of data row `row` (from 0), naming the physical line when it is known."""
    line = line_of_row(path, row)
    return f"row {row + 1}" + (f" (line {line})" if line is not None else "")


def _nullable_int(arrow_type):
    """The pandas nullable integer dtype of an Arrow integer type (None for other types)."""
    import pyarrow as pa

    if not pa.types.is_integer(arrow_type):
        return None
    return pd.api.types.pandas_dtype(str(arrow_type).replace("uint", "UInt").replace("int", "Int"))


def iter_table(path, chunk_size: int) -> Iterator[Chunk]:
    """`Chunk`s of `chunk_size` rows (the last may be shorter), in file order."""
    fmt, _ = table_format(path)
    _exists(path)
    if fmt == "parquet":
        start = 0
        try:
            parquet = _parquet_file(path)
            names, ranges = _parquet_layout(parquet)
            for batch in parquet.iter_batches(batch_size=chunk_size):
                # an int column with nulls stays int; pandas' index columns stay columns
                frame = batch.to_pandas(types_mapper=_nullable_int, ignore_metadata=True)
                for name, values in ranges:
                    frame[name] = np.asarray(values[start : start + len(frame)], dtype=np.int64)
                frame = frame[names]
                frame.index = pd.RangeIndex(start, start + len(frame))
                start += len(frame)
                yield Chunk(frame, n_fields=frame.shape[1])
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{path}: could not be read as Parquet after row {start}: {exc}") from None
        return
    reader = _CSVReader(path, fmt)
    try:
        yield from reader.chunks(chunk_size)
    finally:
        reader.close()


def read_frame(path, chunk_size: int = 65536) -> pd.DataFrame:
    """A whole table (CSV/TSV cells as text), refusing a row whose field count differs from the header's."""
    chunks = []
    for chunk in iter_table(path, chunk_size):
        if not chunks:
            check_unique_columns(chunk.frame.columns, path)
        chunk.check_fields(path)
        chunks.append(chunk.frame)
    if not chunks:  # no rows: the header's columns (a Parquet file's with their types)
        if table_format(path)[0] == "parquet":
            return _parquet_file(path).schema_arrow.empty_table().to_pandas(types_mapper=_nullable_int,
                                                                           ignore_metadata=True)
        return pd.DataFrame(columns=read_columns(path), dtype=object)
    return pd.concat(chunks) if len(chunks) > 1 else chunks[0]


_OTHER_FORMATS = ((b"\x1f\x8b", "gzip-compressed: end its name in .gz"),
                  (b"\xff\xfe", "UTF-16 text (Excel's 'Unicode text'?): save it as UTF-8 CSV"),
                  (b"\xfe\xff", "UTF-16 text: save it as UTF-8 CSV"),
                  (b"PK\x03\x04", "a ZIP archive (an Excel workbook?): save it as UTF-8 CSV"),
                  (b"PAR1", "Parquet: end its name in .parquet"),
                  (b"BZh", "bzip2-compressed: end its name in .bz2"),
                  (b"\xfd7zXZ", "xz-compressed: end its name in .xz"))
_TSV_BREAK = re.compile("[\t\n\r]")  # what ends a TSV field or row (no quoting to protect it)
_LONE_CR = re.compile("\r(?!\n)")


def _first_cell_matching(frame: pd.DataFrame, pattern: re.Pattern):
    """(index label, column) of the first text cell that `pattern` finds something in, column by column; else None.
    Every column that is not numeric is looked at (object, string and categorical ones)."""
    for col in frame.columns:
        if pd.api.types.is_numeric_dtype(frame[col].dtype) or pd.api.types.is_bool_dtype(frame[col].dtype):
            continue
        texts = [v if isinstance(v, str) else "" for v in frame[col].astype(object)]
        if pattern.search("\x00".join(texts)) is None:  # the common case, at C speed
            continue
        hit = next(i for i, v in enumerate(texts) if pattern.search(v))
        return frame.index[hit], col
    return None


class CSVWriter:
    """Appends frames to a CSV/TSV (gzip: one member per chunk) file; `state()` is the byte offset."""

    def __init__(self, path, fmt: str, gz: bool, state: dict | None = None, rounded: tuple = (), name=None):
        self.path, self.fmt, self.gz, self.rounded = Path(path), fmt, gz, tuple(rounded)  # written at 6 digits
        self.name = name or self.path
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
        kwargs = _csv_kwargs(self.fmt)
        if self.fmt == "tsv":
            self._refuse_tsv_breaks(frame)
        elif _first_cell_matching(frame, _LONE_CR) is not None:  # csv quotes a field for '\n' but not a lone '\r',
            kwargs["quoting"] = csv.QUOTE_NONNUMERIC              # which readers take as a line break: quote text
        rounded = {c: frame[c].map(lambda v: "" if pd.isna(v) else f"{v:.6g}") for c in self.rounded if c in frame}
        try:
            text = frame.assign(**rounded).to_csv(index=False, header=not self.header_done, lineterminator="\n",
                                                  **kwargs)
        except csv.Error as exc:  # a cell the checks above did not see (e.g. in a column of another type)
            raise ValueError(f"{self.name}: a cell cannot be written as {self.fmt.upper()} ({exc}); write CSV or "
                             "Parquet instead") from exc
        data = text.encode("utf-8")
        if self.gz:
            data = gzip.compress(data, compresslevel=6, mtime=0)
        self.file.write(data)
        self.header_done = True

    def _refuse_tsv_breaks(self, frame: pd.DataFrame) -> None:
        """A ValueError naming the first cell holding a tab, newline or carriage return: TSV without quoting cannot
        store one (a reader would split the row there)."""
        hit = _first_cell_matching(frame, _TSV_BREAK)
        if hit is not None:
            label, col = hit
            row = f"row {label + 1}" if isinstance(label, (int, np.integer)) else f"row {label!r}"
            raise ValueError(f"{self.name}: {row}, column {col!r} holds a tab, newline or carriage return, which "
                             "TSV without quoting cannot store; write CSV or Parquet instead")

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


OUTPUT_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq")


def output_format(name) -> tuple[str, bool]:
    """`table_format` of an output file name, refusing a name that implies no format (``.xlsx``, ``.json``, none)
    rather than writing CSV under it."""
    base = str(name).lower().removesuffix(".gz")  # the one compression written (.bz2 and .xz are read only)
    if not base.endswith(OUTPUT_SUFFIXES):
        raise ValueError(f"{name}: the output's name gives its format: end it in .csv, .tsv, .txt or .parquet "
                         "(.csv.gz, .tsv.gz and .txt.gz compressed)")
    return table_format(name)


def open_writer(name, temp_path, state: dict | None = None, rounded: tuple = ()):
    """A chunk writer into `temp_path` for the format that the file name `name` implies (`rounded`: float columns
    a CSV/TSV holds at 6 significant digits; every other column as it is)."""
    fmt, gz = output_format(name)
    if fmt == "parquet":
        return ParquetWriter(temp_path, state)
    return CSVWriter(temp_path, fmt, gz, state, rounded, name=name)


def write_frame(frame: pd.DataFrame, path, name=None) -> None:
    """Write a whole (small) frame in the format that the file name `name` (default: `path`) implies, through a
    temporary file, so that a failure (a tab in a TSV cell, a full disk) leaves no partial file under `path`."""
    name = name or path
    fmt, gz = output_format(name)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.partial")
    try:
        if fmt == "parquet":
            frame.to_parquet(temp, index=False)
        else:
            writer = CSVWriter(temp, fmt, gz, name=name)
            try:
                writer.write(frame)
            finally:
                writer.close()
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
