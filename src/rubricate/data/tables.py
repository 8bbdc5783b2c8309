"""One streaming reader for every table rubricate reads: CSV, TSV, JSONL and Parquet.

Line numbers, encodings, resume offsets and malformed rows are easy to get subtly wrong, so they are got
right once, here, and every reader (loaders, ``predict``, the agents, reports, the server's upload) uses it.

* :func:`detect_format` maps a file suffix to a format (:data:`SUFFIX_FORMATS`, the only such map).
* :func:`open_table` returns a :class:`Table`: ``table.columns`` is the header (None for JSONL, whose rows
  carry their own keys) and ``table.rows()`` yields :class:`Row` objects lazily - a file of a million rows
  never sits in memory (CSV/JSONL line by line, Parquet in record batches of ``batch_rows``).
* ``Row.line`` is the **physical line** where the row starts (the header is line 1; a quoted CSV field
  spanning lines counts every line); for Parquet, which has no lines, the 1-based row number.
* ``Row.end`` is the :class:`Position` just after the row (byte offset and line for CSV/TSV/JSONL, rows
  read for Parquet); ``open_table(..., start=position)`` continues from there (what ``predict`` resumes from).
* Text is decoded as ``encoding`` (UTF-8 by default) with a leading byte-order mark dropped.

**Row-level problems are data, not exceptions** (``Row.problem``, a :class:`RowProblem`), so that each
caller decides: the loaders raise ``row.error(path)``, ``predict`` writes the row to its problems file.
They are: undecodable bytes (``encoding``, with the column for CSV/TSV), invalid JSON or a JSON value that
is not an object (``json``), a wrong number of fields (``too_many_fields`` / ``too_few_fields``, the row
padded with empty cells), and a malformed quote (``quote``). An unterminated quote never swallows the rows
after it: a row that cannot be parsed, or that spans several lines with the wrong number of fields, is
reported as a problem at its first line, holding that line only, and reading goes on at the next line.

File-level problems (a missing or empty file, an unparsable, undecodable or duplicated header, an unreadable
Parquet file) raise :class:`~rubricate.errors.InputError` from :func:`open_table`.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Literal, Sequence

from rubricate.errors import InputError

Format = Literal["csv", "tsv", "jsonl", "parquet"]
FORMATS: tuple[Format, ...] = ("csv", "tsv", "jsonl", "parquet")
#: The one suffix -> format map.
SUFFIX_FORMATS: dict[str, Format] = {
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".parquet": "parquet", ".pq": "parquet",
}
#: Field separator of each delimited format (``open_table(sep=...)`` overrides it).
SEPARATORS: dict[str, str] = {"csv": ",", "tsv": "\t"}

ProblemKind = Literal["encoding", "json", "quote", "too_many_fields", "too_few_fields"]
_ESCAPED = re.compile("[\udc80-\udcff]")  # undecodable bytes, kept by the "surrogateescape" error handler


def detect_format(path: str | Path, explicit: str | None = None) -> Format:
    """``explicit`` when given (checked), else the format of the file suffix (:data:`SUFFIX_FORMATS`)."""
    if explicit:
        if explicit not in FORMATS:
            raise InputError(f"unknown format '{explicit}' (formats: {', '.join(FORMATS)})", file=path)
        return explicit  # type: ignore[return-value]
    suffix = Path(path).suffix.lower()
    try:
        return SUFFIX_FORMATS[suffix]
    except KeyError:
        raise InputError(f"unknown file type '{suffix}' (use one of {sorted(SUFFIX_FORMATS)} or name the format)",
                         file=path) from None


@dataclass(frozen=True)
class Position:
    """Where reading stands: after ``rows`` data rows; for line formats also the byte ``offset`` and ``line``."""

    rows: int = 0
    offset: int = 0
    line: int = 0

    def to_dict(self) -> dict[str, int]:
        """JSON form kept in progress files (``pos`` is the byte offset)."""
        return {"rows": self.rows, "pos": self.offset, "line": self.line}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Position:
        d = d or {}
        return cls(rows=int(d.get("rows", 0)), offset=int(d.get("pos", 0)), line=int(d.get("line", 0)))


@dataclass(frozen=True)
class RowProblem:
    """Why a row is malformed; ``column`` names the field when it is known."""

    kind: ProblemKind
    message: str
    column: str | None = None


@dataclass
class Row:
    """One data row: its first physical line (Parquet: row number), its values, where reading resumes after it."""

    line: int
    values: dict[str, Any]
    end: Position
    problem: RowProblem | None = None

    def error(self, file: str | Path) -> InputError:
        """The row's problem as the error a strict caller raises (file, line, column)."""
        if self.problem is None:
            raise ValueError("the row has no problem")
        return InputError(self.problem.message, file=file, line=self.line, column=self.problem.column)


class _Lines:
    """Physical lines of a binary file, decoded, with byte offsets; it can seek to any line start (and go on
    after the end of the file was reached once, which a generator could not)."""

    def __init__(self, f: BinaryIO, encoding: str) -> None:
        self.f, self.encoding = f, encoding
        self.offset = 0
        self.line = 0
        self.bad: dict[int, tuple[int, int]] = {}  # line -> (first undecodable byte, its offset in the line)
        self.ends: dict[int, int] = {}  # line -> byte offset after it (lines of the row being read)

    def seek(self, offset: int, line: int) -> None:
        self.f.seek(offset)
        self.offset, self.line = offset, line

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        raw = self.f.readline()
        if not raw:
            raise StopIteration
        at_start = self.offset == 0
        self.offset += len(raw)
        self.line += 1
        self.ends[self.line] = self.offset
        try:
            text = raw.decode(self.encoding)
        except UnicodeDecodeError as e:
            self.bad[self.line] = (raw[e.start], e.start)
            text = raw.decode(self.encoding, "surrogateescape")
        if at_start and text.startswith("\ufeff"):
            text = text[1:]
        return text

    def encoding_problem(self, first: int, last: int, column: str | None) -> RowProblem | None:
        """The undecodable bytes on lines ``first..last`` as a problem, or None."""
        for n in range(first, last + 1):
            if n in self.bad:
                byte, at = self.bad[n]
                return RowProblem("encoding", f"undecodable bytes (not {self.encoding}): byte 0x{byte:02x} at "
                                  f"offset {at} of line {n}; re-save the file as UTF-8 or pass the right encoding",
                                  column)
        return None

    def forget_before(self, line: int) -> None:
        """Drop what is kept about lines before ``line`` (memory stays bounded by one row)."""
        self.ends.clear()
        for n in [n for n in self.bad if n < line]:
            del self.bad[n]


def _clean(value: Any) -> Any:
    """Undecodable bytes (escaped as lone surrogates) -> U+FFFD, so a value can always be written out."""
    if isinstance(value, str):
        return _ESCAPED.sub("\ufffd", value)
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    return value


class Table:
    """An open table; read its rows once with :meth:`rows`. Use :func:`open_table` to make one."""

    def __init__(self, path: Path, format: Format, *, encoding: str, sep: str | None, quote: bool,
                 start: Position, columns: Sequence[str] | None, batch_rows: int) -> None:
        self.path, self.format, self.encoding, self.start = path, format, encoding, start
        self.sep = sep or SEPARATORS.get(format, ",")
        self.quoting = csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE
        self.batch_rows = batch_rows
        self._want = list(columns) if columns is not None else None
        self.columns: list[str] | None = None
        self.num_rows: int | None = None  #: known up front for Parquet only
        self._file: BinaryIO | None = None
        self._parquet: Any = None
        if format == "parquet":
            self._open_parquet()
        else:
            self._file = path.open("rb")
            self._lines = _Lines(self._file, encoding)
            if format in ("csv", "tsv"):
                self._read_header()
            if start.offset:
                self._lines.seek(start.offset, start.line)

    # -- opening -------------------------------------------------------------------------------------------
    def _open_parquet(self) -> None:
        import pyarrow.parquet as pq

        try:
            self._parquet = pq.ParquetFile(str(self.path))
        except Exception as e:  # pyarrow raises several types for corrupt files
            raise InputError(f"cannot read Parquet file: {e}", file=self.path) from None
        self.columns = list(self._parquet.schema_arrow.names)
        self.num_rows = self._parquet.metadata.num_rows

    def _read_header(self) -> None:
        self._reader = csv.reader(self._lines, delimiter=self.sep, quoting=self.quoting, strict=True)
        try:
            header = next(self._reader)
        except StopIteration:
            header = []
        except csv.Error as e:
            self.close()
            raise InputError(f"cannot parse the header: {e}", file=self.path, line=1) from None
        problem = self._lines.encoding_problem(1, self._lines.line, None)
        header = [h.strip() for h in header]
        dupes = sorted({h for h in header if header.count(h) > 1})
        if problem or not any(header) or dupes:
            self.close()
            if problem:
                raise InputError(f"in the header: {problem.message}", file=self.path, line=1)
            if not any(header):
                raise InputError("the file is empty (no header line)", file=self.path, line=1)
            raise InputError(f"duplicate column names in the header: {dupes}", file=self.path, line=1)
        self.columns = header

    # -- reading -------------------------------------------------------------------------------------------
    def rows(self) -> Iterator[Row]:
        """The rows after :attr:`start`, lazily, each with its line, values, end position and problem."""
        if self.format == "parquet":
            return self._parquet_rows()
        if self.format == "jsonl":
            return self._jsonl_rows()
        return self._delimited_rows()

    def _delimited_rows(self) -> Iterator[Row]:
        lines, header, n_rows = self._lines, self.columns or [], self.start.rows
        while True:
            begin, first = lines.offset, lines.line + 1
            lines.forget_before(first)
            try:
                cells: list[str] | None = next(self._reader)
                error = None
            except StopIteration:
                return
            except csv.Error as e:
                cells, error = None, str(e)
            last = lines.line
            if cells is not None and (not cells or (len(cells) == 1 and not cells[0].strip())):
                continue  # a blank line is not a row
            if error is not None or (last > first and cells is not None and len(cells) != len(header)):
                problem = self._quote_problem(error, cells, header, first, last)
                cells = self._reread_line(begin, first)
                last = first
            else:
                problem = None
            assert cells is not None
            if problem is None and len(cells) != len(header):
                kind = "too_many_fields" if len(cells) > len(header) else "too_few_fields"
                hint = " (an unescaped separator or quote?)" if kind == "too_many_fields" else ""
                problem = RowProblem(kind, f"{len(cells)} fields but the header has {len(header)}{hint}")
            values = dict(zip(header, cells + [""] * (len(header) - len(cells))))
            if lines.bad:
                column = next((h for h, v in values.items() if _ESCAPED.search(v)), None)
                problem = problem or lines.encoding_problem(first, last, column)
                values = _clean(values)
            n_rows += 1
            yield Row(first, values, Position(n_rows, lines.offset, lines.line), problem)

    @staticmethod
    def _quote_problem(error: str | None, cells: list[str] | None, header: list[str], first: int,
                       last: int) -> RowProblem:
        cause = (f"malformed row ({error})" if error is not None
                 else f"the row spanning lines {first}-{last} has {len(cells or [])} fields but the header has "
                      f"{len(header)}")
        return RowProblem("quote", f"{cause}: an unterminated or stray quote? Only line {first} is taken as this "
                          f"row; reading goes on at line {first + 1}")

    def _reread_line(self, begin: int, first: int) -> list[str]:
        """Seek back to line ``first``, read it alone (leniently) and leave the reader at the next line."""
        self._lines.seek(begin, first - 1)
        text = next(self._lines).rstrip("\r\n")
        try:
            return next(csv.reader([text], delimiter=self.sep, quoting=self.quoting)) or [""]
        except (csv.Error, StopIteration):
            return [text]

    def _jsonl_rows(self) -> Iterator[Row]:
        lines, n_rows = self._lines, self.start.rows
        for text in lines:
            n = lines.line
            lines.forget_before(n)
            if not text.strip():
                continue  # blank lines are allowed
            values: dict[str, Any] = {}
            problem: RowProblem | None = None
            try:
                obj = json.loads(text)
                if isinstance(obj, dict):
                    values = obj
                else:
                    problem = RowProblem("json", f"expected a JSON object, got {type(obj).__name__}")
            except json.JSONDecodeError as e:
                problem = RowProblem("json", f"invalid JSON: {e.msg} (character {e.pos})")
            if n in lines.bad:
                problem = lines.encoding_problem(n, n, None)
                values = _clean(values)
            n_rows += 1
            yield Row(n, values, Position(n_rows, lines.offset, n), problem)

    def _parquet_rows(self) -> Iterator[Row]:
        pf, skip = self._parquet, self.start.rows
        meta = pf.metadata
        seen, group = 0, 0
        while group < meta.num_row_groups and seen + meta.row_group(group).num_rows <= skip:
            seen += meta.row_group(group).num_rows  # whole row groups before the start are not read at all
            group += 1
        if group >= meta.num_row_groups:
            return
        cols = [c for c in self._want if c in (self.columns or [])] if self._want is not None else None
        batches = pf.iter_batches(batch_size=self.batch_rows, row_groups=range(group, meta.num_row_groups),
                                  columns=cols)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as e:  # a corrupt page: nothing after it can be read
                raise InputError(f"cannot read Parquet file: {e}", file=self.path, line=seen + 1) from None
            for values in batch.to_pylist():
                seen += 1
                if seen > skip:
                    yield Row(seen, values, Position(rows=seen))

    # -- lifetime ------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Table:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_table(path: str | Path, format: str | None = None, *, encoding: str = "utf-8", sep: str | None = None,
               quote: bool = True, start: Position | None = None, columns: Sequence[str] | None = None,
               batch_rows: int = 1024) -> Table:
    """Open ``path`` for streaming (see the module docs); use it as a context manager.

    ``format`` defaults to the suffix's (:func:`detect_format`); ``sep`` overrides the separator of CSV/TSV;
    ``quote=False`` reads CSV/TSV without quoting (one row per physical line, quotes kept as text);
    ``start`` continues from a :class:`Position` a previous read reported; ``columns`` limits what Parquet
    reads; ``batch_rows`` is the Parquet record-batch size (the memory bound).
    """
    path = Path(path)
    fmt = detect_format(path, format)
    if not path.is_file():
        raise InputError("file not found", file=path)
    return Table(path, fmt, encoding=encoding, sep=sep, quote=quote, start=start or Position(), columns=columns,
                 batch_rows=batch_rows)


def strict_rows(path: str | Path, format: str | None = None, *, tolerate: Sequence[ProblemKind] = (),
                **options: Any) -> tuple[list[str] | None, Iterator[tuple[int, dict[str, Any]]]]:
    """``(header, rows)`` for strict readers: each row as ``(line, values)``, the first row problem raised as an
    :class:`InputError` - except the kinds in ``tolerate`` (e.g. ``too_few_fields``: the row comes padded with
    empty cells). The file is opened, and its header checked, before this returns; ``options`` go to
    :func:`open_table`."""
    table = open_table(path, format, **options)

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        with table:
            for row in table.rows():
                if row.problem is not None and row.problem.kind not in tolerate:
                    raise row.error(path)
                yield row.line, row.values

    return table.columns, rows()


def read_rows(path: str | Path, format: str | None = None, **options: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, values)`` of every row, the first row problem raised as an :class:`InputError`."""
    return strict_rows(path, format, **options)[1]


def require_columns(path: str | Path, columns: Sequence[str], needed: Sequence[str], line: int = 1,
                    hint: str = "") -> None:
    """A ``needed`` column missing from ``columns`` (a header, or a JSONL row's keys) is an InputError at
    ``line`` naming the file, the first missing column, all the missing ones and what is available."""
    have = list(columns)
    missing = [c for c in needed if c not in have]
    if missing:
        what = "missing column" if len(missing) == 1 else f"missing columns {missing}"
        raise InputError(f"{what} (available: {', '.join(map(str, have[:30]))}){hint}", file=path, line=line,
                         column=missing[0])
