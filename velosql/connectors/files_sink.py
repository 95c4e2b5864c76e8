"""FileSink: a job's result rows written to one CSV, JSON-lines or Parquet file."""

from __future__ import annotations

import os
import re

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DataError, OptionError
from .base import Sink, text_scalar
from .files_formats import option, resolve_format, single_char

_TRAILING_ZEROS = r"\.0+$|(\.\d*?[1-9])0+$"  # "10:00:00.120000" → "10:00:00.12", ".000000" → ""


class FileSink(Sink):
    """Writes result rows to one file: CSV (header by default), JSON lines or Parquet.

    :meth:`open` creates the parent directories and the file (a CSV gets its header at once, a
    Parquet file its schema at :meth:`close`, so a sink that received no rows still leaves a valid
    empty file). With ``append_if_exists`` a non-empty CSV or JSON-lines file is appended to,
    without a second header. Timestamps are written to CSV and JSON as ISO-8601 text
    (``2024-01-01T10:00:00.5``, with ``Z`` when the column has a time zone). :meth:`flush` makes
    CSV and JSON rows visible to readers; Parquet rows become readable when the file is closed.

    Args:
        name: the sink's name (the stream or table being created).
        options: the sink's WITH options without the ``<name>.`` prefix; a missing key takes its
            default from ``OPTIONS``.

    Raises:
        OptionError: no path, a delimiter that is not one character, or ``append_if_exists``
            with Parquet.
        DataError: an unknown format.
    """

    def __init__(self, name: str, options: dict) -> None:
        self.name = name
        opt = lambda key: option(options, "sink", key)  # noqa: E731
        self._path = opt("path")
        if not self._path:
            raise OptionError(f"file sink {name!r} has no path: set '{name}.path'")
        self._format = resolve_format(opt("format"), str(self._path))
        self._delimiter = single_char(opt("delimiter"), f"{name}.delimiter", allow_empty=False) or ","
        self._header = bool(opt("has_headers")) and self._format == "csv"
        self._append = bool(opt("append_if_exists"))
        if self._append and self._format == "parquet":
            raise OptionError(
                f"'{name}.append_if_exists' works for CSV and JSON-lines files, not Parquet ({self._path!r})"
            )
        compression = opt("compression")
        self._compression = (
            "snappy" if compression is None else None if compression == "none" else compression
        )
        self._writer: _Writer | None = None

    def open(self, schema: pa.Schema) -> None:
        """Create the directories and the file; write the CSV header unless appending."""
        parent = os.path.dirname(os.path.abspath(self._path))
        os.makedirs(parent, exist_ok=True)
        if self._format == "parquet":
            self._writer = _ParquetWriter(self._path, schema, self._compression)
        elif self._format == "jsonl":
            self._writer = _JsonWriter(self._path, schema, self._append)
        else:
            self._writer = _CsvWriter(self._path, schema, self._append, self._delimiter, self._header)

    def write(self, table: pa.Table) -> None:
        """Append ``table``'s rows (columns in the order of the schema given to :meth:`open`)."""
        if table.num_rows:
            self._writer.write(table)

    def flush(self) -> None:
        """Hand the rows written so far to the operating system (CSV and JSON lines)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the file (writes the Parquet footer). Safe to call twice."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    def describe(self) -> str:
        fmt = "csv_no_header" if self._format == "csv" and not self._header else self._format
        return f"file_sink {fmt} {self._path}" + (" (append)" if self._append else "")


class _Writer:
    def write(self, table: pa.Table) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class _TextWriter(_Writer):
    """A CSV or JSON-lines file opened for writing or appending; columns made text-friendly."""

    def __init__(self, path: str, schema: pa.Schema, append: bool) -> None:
        self.schema = schema
        existing = os.path.getsize(path) if append and os.path.isfile(path) else 0
        self.appending = existing > 0
        self.file = open(path, "ab" if self.appending else "wb")  # noqa: SIM115 - closed in close()
        if self.appending:
            with open(path, "rb") as fh:
                fh.seek(existing - 1)
                if fh.read(1) != b"\n":
                    self.file.write(b"\n")  # the last row of the existing file was not terminated

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _text_columns(table: pa.Table) -> pa.Table:
    """Timestamps as ISO-8601 text and dictionaries decoded, for the CSV and JSON writers."""
    columns = []
    for col in table.columns:
        t = col.type
        if pa.types.is_dictionary(t):
            col = col.cast(t.value_type)
        elif pa.types.is_timestamp(t):
            utc = t.tz is not None
            if utc:
                col = col.cast(pa.timestamp(t.unit, "UTC"))
            text = pc.replace_substring_regex(
                pc.strftime(col, format="%Y-%m-%dT%H:%M:%S"), _TRAILING_ZEROS, r"\1"
            )
            col = pc.binary_join_element_wise(text, _Z, _EMPTY) if utc else text
        columns.append(col)
    return pa.table(columns, names=table.column_names)


class _CsvWriter(_TextWriter):
    """CSV text built column-wise with pyarrow compute: values quoted only when they need it."""

    def __init__(self, path: str, schema: pa.Schema, append: bool, delimiter: str, header: bool) -> None:
        nested = [f for f in schema if pa.types.is_nested(f.type)]
        if nested:
            raise DataError(
                f"cannot write column {nested[0].name!r} of type {nested[0].type} to the CSV file "
                f"{path!r}: use format 'jsonl' or 'parquet'"
            )
        super().__init__(path, schema, append)
        self.delimiter = delimiter
        self._delimiter_scalar = text_scalar(delimiter)
        # Quote empty strings too, so that they read back as '' and an empty field as NULL.
        self.needs_quotes = f'[{re.escape(delimiter)}"\r\n]|^$'
        if header and not self.appending:
            # The header in Python (a few names): converting them to Arrow would import pandas.
            names = [
                f'"{n.replace(chr(34), chr(34) * 2)}"' if re.search(self.needs_quotes, n) else n
                for n in schema.names
            ]
            self.file.write((delimiter.join(names) + "\n").encode())

    def write(self, table: pa.Table) -> None:
        table = _text_columns(table)
        for batch in table.to_batches():
            fields = [_csv_field(col, self.delimiter, self.needs_quotes) for col in batch.columns]
            rows = pc.binary_join_element_wise(*fields, self._delimiter_scalar)
            self.file.write(_string_bytes(pc.binary_join_element_wise(rows, _NEWLINE, _EMPTY)))


# Literal operands of the compute calls, built without pyarrow's conversion (see text_scalar).
_EMPTY, _Z, _NEWLINE, _POINT_ZERO, _QUOTE = (text_scalar(t) for t in ("", "Z", "\n", ".0", '"'))
_FALSE = pa.Array.from_buffers(pa.bool_(), 1, [None, pa.py_buffer(b"\x00")])[0]


def _csv_field(col: pa.Array, delimiter: str, needs_quotes: str) -> pa.Array:
    """One column as CSV field text: NULL empty, quoted (quotes doubled) where needed."""
    if not pa.types.is_string(col.type):
        text = pc.cast(col, pa.string())
        if pa.types.is_floating(col.type):
            # "1.0", not pyarrow's "1": a reader must not infer an integer column from it.
            integral = pc.fill_null(pc.match_substring_regex(text, r"^-?\d+$"), _FALSE)
            if pc.any(integral).as_py():
                suffixed = pc.binary_join_element_wise(pc.filter(text, integral), _POINT_ZERO, _EMPTY)
                text = pc.replace_with_mask(text, integral, suffixed)
        if not pa.types.is_binary(col.type) and not (delimiter.isalnum() or delimiter in ".-+:"):
            return pc.fill_null(text, _EMPTY)  # a number's, date's or flag's text cannot need quotes
    else:
        text = col
    needs = pc.match_substring_regex(text, needs_quotes)
    if pc.any(needs).as_py():
        chosen = pc.filter(text, needs)
        quoted = pc.binary_join_element_wise(_QUOTE, pc.replace_substring(chosen, '"', '""'), _QUOTE, _EMPTY)
        text = pc.replace_with_mask(text, pc.fill_null(needs, _FALSE), quoted)
    return pc.fill_null(text, _EMPTY)


class _JsonWriter(_TextWriter):
    """One JSON object per row, encoded by DuckDB's ``to_json`` (no per-row Python)."""

    def __init__(self, path: str, schema: pa.Schema, append: bool) -> None:
        super().__init__(path, schema, append)
        self.con = duckdb.connect()

    def write(self, table: pa.Table) -> None:
        self.con.register("velosql_sink_rows", _text_columns(table))
        try:
            lines = self.con.sql("SELECT to_json(t) || chr(10) FROM velosql_sink_rows AS t").to_arrow_table()
        finally:
            self.con.unregister("velosql_sink_rows")
        for chunk in lines.column(0).chunks:
            self.file.write(_string_bytes(chunk))

    def close(self) -> None:
        super().close()
        self.con.close()


def _string_bytes(arr: pa.Array) -> pa.Buffer:
    """The concatenated characters of a string array without nulls, as one zero-copy buffer."""
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.large_string())
    offset_type = pa.int32() if pa.types.is_string(arr.type) else pa.int64()
    offsets = pa.Array.from_buffers(offset_type, len(arr) + 1, [None, arr.buffers()[1]], offset=arr.offset)
    first, last = offsets[0].as_py(), offsets[len(arr)].as_py()
    return arr.buffers()[2].slice(first, last - first)


class _ParquetWriter(_Writer):
    def __init__(self, path: str, schema: pa.Schema, compression: str | None) -> None:
        self.schema = schema
        import pyarrow.parquet as pq  # here: most jobs write no Parquet

        self.writer = pq.ParquetWriter(path, schema, compression=compression or "none")

    def write(self, table: pa.Table) -> None:
        if not table.schema.equals(self.schema):
            table = table.cast(self.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        self.writer.close()
