"""How the file connectors recognise formats and decode blocks of lines into Arrow.

A text file (CSV or JSON lines) is read as blocks of whole lines. Each block is decoded by one
vectorised pyarrow call; only when that call fails is the block bisected along line boundaries to
isolate the bad lines (:func:`decode_lines`), so per-line Python runs only on the error path. The
file source runs the first call of several blocks at once on its own worker threads
(``decoder.decode(None, buf, …)``: the block only as Arrow memory, no Python copy of it).

Records are lines: a CSV value may not contain a newline, even quoted. That keeps a stray quote
from swallowing the rest of a file and lets a watched file be read up to its last complete line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import NamedTuple

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import sqlglot
from sqlglot import exp

from ..errors import DataError, OptionError
from ..options import find

# Canonical formats: "json" is read and written as JSON lines, like "jsonl".
_CANONICAL = {"csv": "csv", "csv_no_header": "csv_no_header", "json": "jsonl", "jsonl": "jsonl",
              "parquet": "parquet"}  # fmt: skip
ALLOWED_FORMATS = tuple(_CANONICAL)
EXTENSIONS = {".csv": "csv", ".tsv": "csv", ".json": "jsonl", ".jsonl": "jsonl", ".ndjson": "jsonl",
              ".parquet": "parquet", ".pq": "parquet"}  # fmt: skip

_PARSE_BLOCK = 1 << 20  # pyarrow's unit of parsing inside one block (one dictionary per CSV chunk)
_TEXT_TYPES = (pa.string(), pa.large_string(), pa.binary(), pa.large_binary())
_DICT_TEXT = pa.dictionary(pa.int32(), pa.string())


def dictionary_text(schema: pa.Schema) -> pa.Schema:
    """``schema`` with its VARCHAR columns dictionary-encoded, as the CSV and Parquet readers decode them."""
    return pa.schema([pa.field(f.name, _DICT_TEXT if f.type == pa.string() else f.type) for f in schema])


def _values(chunk: pa.Array) -> pa.Array:
    """The distinct text of a dictionary-encoded chunk (or the chunk itself)."""
    return chunk.dictionary if pa.types.is_dictionary(chunk.type) else chunk


def format_of(path: str) -> str | None:
    """The canonical format a file's extension implies, or None."""
    return EXTENSIONS.get(os.path.splitext(path)[1].lower())


def resolve_format(fmt: str | None, path: str) -> str:
    """``fmt`` (any spelling in :data:`ALLOWED_FORMATS`) or the one ``path``'s extension implies.

    Raises:
        DataError: the format is unknown, or not given and the extension implies none.
    """
    if fmt is not None:
        canonical = _CANONICAL.get(str(fmt).strip().lower())
        if canonical is None:
            raise DataError(f"unsupported file format {fmt!r}: allowed formats are {_allowed()}")
        return canonical
    canonical = format_of(path)
    if canonical is None:
        raise DataError(
            f"cannot tell the format of {path!r} from its extension: set the format option to one of "
            f"{_allowed()} (known extensions: {', '.join(EXTENSIONS)})"
        )
    return canonical


def _allowed() -> str:
    return ", ".join(repr(f) for f in ALLOWED_FORMATS)


def option(options: dict, scope: str, key: str) -> object:
    """``options[key]``, or the default :data:`velosql.options.OPTIONS` declares for it."""
    if key in options:
        return options[key]
    opt = find(scope, key)
    return opt.default if opt else None


def single_char(value: object, key: str, allow_empty: bool) -> str | None:
    """A one-character CSV option (``'\\t'`` written as two characters, or ``'tab'``, means a tab).

    Raises:
        OptionError: the value is longer (or empty, unless ``allow_empty``: then None).
    """
    if value is None:
        return None
    text = {"\\t": "\t", "tab": "\t"}.get(str(value), str(value))
    if len(text) == 1 or (allow_empty and text == ""):
        return text or None
    raise OptionError(f"invalid value {value!r} for {key!r}: expected one character")


def schema_from_sql(text: str, key: str, database: duckdb.DuckDBPyConnection | None = None) -> pa.Schema:
    """Arrow schema of DuckDB column definitions such as ``'station VARCHAR, temperature DOUBLE'``.

    The text is never run as SQL: sqlglot's DuckDB dialect parses it as the column list of a
    ``CREATE TABLE``, every node is checked to be a column name, a type or a type's literal
    parameter (no constraint, default, expression or second statement), and DuckDB then creates
    an empty temporary table from the statement sqlglot generates out of those checked nodes. So
    every DuckDB type name, alias and parameterised type is understood as the engine understands
    it. The table lives on a new cursor of ``database`` when given (opening a private in-memory
    database instead costs ~15 ms, a noticeable part of a short ``velosql run``).

    Raises:
        OptionError: the text is not a list of column definitions; ``key`` names the option.
    """
    columns = _column_list(text, key)
    con = database.cursor() if database is not None else duckdb.connect()
    try:
        con.execute(f"CREATE TEMP TABLE velosql_schema ({columns})")
        schema = con.sql("SELECT * FROM velosql_schema").to_arrow_table().schema
    except duckdb.Error as exc:
        raise OptionError(
            f"invalid value {text!r} for {key!r}: {str(exc).splitlines()[0]}; expected column names with "
            "DuckDB types, e.g. 'station VARCHAR, temperature DOUBLE'"
        ) from None
    finally:
        con.close()
    return pa.schema([pa.field(f.name, _readable(f.type)) for f in schema])


# The only nodes a column list may hold: names, types (nested ones hold column definitions) and the
# literal parameters of a type (DECIMAL(10, 2), ENUM('a', 'b'), INT[3]).
_SCHEMA_NODES = (exp.ColumnDef, exp.Identifier, exp.DataType, exp.DataTypeParam, exp.Literal)


def _column_list(text: str, key: str) -> str:
    """``text`` checked to be column definitions only, as DuckDB SQL generated from its parse.

    Raises:
        OptionError: anything else (a second statement, a constraint or default, a subquery, a
            comment): ``key`` names the option.
    """

    def refuse(why: str) -> OptionError:
        return OptionError(
            f"invalid value {text!r} for {key!r}: {why}; expected column names with DuckDB types, "
            "e.g. 'station VARCHAR, temperature DOUBLE'"
        )

    if not isinstance(text, str) or not text.strip():
        raise refuse("no columns")
    try:
        parsed = sqlglot.parse(f"CREATE TABLE velosql_schema ({text})", read="duckdb")
    except sqlglot.errors.SqlglotError as exc:
        raise refuse(f"not a column list ({str(exc).splitlines()[0]})") from None
    create = parsed[0] if len(parsed) == 1 else None
    schema = create.this if isinstance(create, exp.Create) else None
    extra = create is None or any(create.args.get(k) for k in ("expression", "properties"))
    if not isinstance(schema, exp.Schema) or create.args.get("kind") != "TABLE" or extra:
        raise refuse("not a column list")
    for column in schema.expressions:
        if not isinstance(column, exp.ColumnDef) or not isinstance(column.args.get("kind"), exp.DataType):
            raise refuse(f"{column.sql('duckdb')!r} is not a column name and type")
        for node in column.walk():
            if not isinstance(node, _SCHEMA_NODES) or node.comments:
                what = "a comment" if node.comments else node.sql("duckdb")
                raise refuse(f"{what!r} in column {column.name!r}: only a name and a type are allowed")
    columns = ", ".join(column.sql("duckdb") for column in schema.expressions)
    # Nothing around the list either (a trailing AS SELECT, WITH, …): the whole statement must be
    # the one these columns make.
    if create.sql("duckdb") != f"CREATE TABLE velosql_schema ({columns})":
        raise refuse("not a column list")
    return columns


def _readable(t: pa.DataType) -> pa.DataType:
    """The type the readers produce for ``t``: one string type for text, enums as their values."""
    if pa.types.is_dictionary(t):
        return _readable(t.value_type)
    if t in (pa.large_string(), pa.null()) or str(t) == "string_view":
        return pa.string()
    return t


def normalise(schema: pa.Schema) -> pa.Schema:
    """Inferred schema → the one fixed for the rest of the stream.

    A column of nulls becomes text, and timestamps microseconds (pyarrow infers seconds from
    ``10:00:00`` and would then refuse a later ``10:00:00.5``).
    """
    fields = []
    for f in schema:
        t = _readable(f.type)
        fields.append(pa.field(f.name, pa.timestamp("us", t.tz) if pa.types.is_timestamp(t) else t))
    return pa.schema(fields)


def unreadable_fields(decoder, schema: pa.Schema) -> list[pa.Field]:
    """The fields of ``schema`` the decoder's pyarrow reader cannot convert to (e.g. INTERVAL)."""
    bad = []
    for f in schema:
        decoder.fix(pa.schema([f]))
        try:
            decoder.decode(decoder.probe, arrow_copy(decoder.probe), 0, len(decoder.probe))
        except pa.ArrowNotImplementedError:
            bad.append(f)
    return bad


def arrow_copy(data: bytes) -> pa.Buffer:
    """``data`` copied into memory Arrow owns, for pyarrow's threaded readers.

    A threaded reader may drop its input on a worker thread after it returned. When the input wraps
    a Python object (``pa.py_buffer``), that needs the GIL, and at interpreter exit the worker is
    killed while holding C++ frames: the process aborts (seen in about 1 run in 50). A copy of an
    8 MiB block costs about 1 ms.
    """
    out = pa.BufferOutputStream()
    out.write(data)
    return out.getvalue()


class BadLine(NamedTuple):
    """A line that could not be decoded: where it starts in the block's bytes, why, and its text."""

    start: int
    error: str
    raw: str


class BlockError(Exception):
    """A block of lines did not decode as a whole (the message is pyarrow's, made readable)."""


def _convert_options(**kwargs) -> pcsv.ConvertOptions:
    # As DuckDB reads CSV: only an empty field is NULL (also for text; a quoted "" is an empty
    # string), so that values such as 'NA' or 'null' stay text.
    return pcsv.ConvertOptions(
        null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False, **kwargs
    )


class CsvDecoder:
    """Decodes blocks of CSV lines into tables of a fixed schema with pyarrow's CSV reader."""

    probe = b"\n"  # a line every schema decodes (see unreadable_fields)

    def __init__(self, delimiter: str, quote: str | None, escape: str | None) -> None:
        self.quote = quote.encode() if quote else b""
        self.parse_options = pcsv.ParseOptions(
            delimiter=delimiter,
            quote_char=quote or False,
            escape_char=escape or False,
            double_quote=escape is None,
            newlines_in_values=False,
        )
        self.schema: pa.Schema | None = None

    def header(self, line: bytes) -> list[str]:
        """Column names from a header line (quoting and delimiter applied as for data)."""
        ro = pcsv.ReadOptions(use_threads=False)
        return pcsv.read_csv(
            pa.BufferReader(arrow_copy(line)), read_options=ro, parse_options=self.parse_options
        ).column_names

    def infer(self, sample: bytes, names: list[str] | None) -> pa.Schema:
        """Column types pyarrow infers from ``sample`` (malformed rows ignored); names given or ``columnN``."""
        po = pcsv.ParseOptions(
            delimiter=self.parse_options.delimiter,
            quote_char=self.parse_options.quote_char,
            escape_char=self.parse_options.escape_char,
            double_quote=self.parse_options.double_quote,
            invalid_row_handler=lambda row: "skip",
        )
        ro = pcsv.ReadOptions(column_names=names, autogenerate_column_names=names is None, use_threads=False)
        table = pcsv.read_csv(
            pa.BufferReader(arrow_copy(sample)),
            read_options=ro,
            parse_options=po,
            convert_options=_convert_options(),
        )
        fields = (
            table.schema if names else [pa.field(f"column{i}", f.type) for i, f in enumerate(table.schema)]
        )
        return normalise(pa.schema(fields))

    @staticmethod
    def decoded_schema(schema: pa.Schema) -> pa.Schema:
        """The schema of the decoded batches: text columns dictionary-encoded (see :meth:`fix`)."""
        return dictionary_text(schema)

    def fix(self, schema: pa.Schema) -> None:
        """Fix the schema every later block is decoded to."""
        self.schema = schema
        self._read_options = pcsv.ReadOptions(column_names=schema.names, block_size=_PARSE_BLOCK)
        # Whole blocks (``data`` None) decode serially: the file source decodes several blocks at
        # once on its own threads, which costs less CPU than pyarrow's thread pool inside each
        # block. The small pieces of the error path keep the threaded reader: its fixed cost per
        # call is lower (35 vs 50 us). Chunks stay 1 MiB either way: a text column has one
        # dictionary per chunk, and a batch cut from a larger chunk would carry all of it (and
        # cost more to combine with the next chunk: 2M rows of a high-cardinality text column
        # read 30% slower with 4 MiB chunks).
        self._serial_options = pcsv.ReadOptions(
            column_names=schema.names, block_size=_PARSE_BLOCK, use_threads=False
        )
        # Text decodes dictionary-encoded: parsing costs the same, and DuckDB groups and joins on
        # dictionary vectors about 3x faster than on plain strings (1BRC: 51 -> 18 ms per 2M rows).
        types = {f.name: _DICT_TEXT if f.type == pa.string() else f.type for f in schema}
        self._convert_options = _convert_options(column_types=types)
        self._text_columns = [i for i, f in enumerate(schema) if f.type in _TEXT_TYPES]

    def decode(
        self, data: bytes | None, buf: pa.Buffer, start: int, end: int, serial: bool = False
    ) -> pa.Table:
        """Decode ``data[start:end]`` (whole lines, the last ending with a newline); ``buf`` holds ``data``.

        ``data`` None: a whole block whose bytes are only in ``buf``, decoded on one of the file
        source's worker threads (pyarrow's own threads are not used then). ``serial``: decode on
        this thread, converting the columns in order, so that a line with several bad values is
        named by its first.

        Raises:
            BlockError: a line has the wrong number of fields, a value does not convert to its
                column's type, or a quoted value is not closed on its line.
        """
        piece = buf.slice(start, end - start)
        read_options = self._serial_options if data is None or serial else self._read_options
        try:
            table = self._read(piece, read_options)
        except pa.ArrowInvalid as exc:
            if "straddl" not in str(exc):
                raise BlockError(self._message(str(exc))) from None
            # A row longer than pyarrow's parse block: read the piece as one block.
            try:
                table = self._read(piece, _with_block_size(read_options, len(piece) + 1))
            except pa.ArrowInvalid as again:
                raise BlockError(self._message(str(again))) from None
        # An unclosed quote makes pyarrow take the following newline(s) into the value; values can
        # never hold a newline otherwise, so looking for one (only when a quote occurs) finds them.
        if self.quote and self._text_columns and _has(self.quote, data, piece, start, end):
            for i in self._text_columns:
                if any(pc.any(pc.match_substring(_values(c), "\n")).as_py() for c in table.column(i).chunks):
                    raise BlockError("unterminated quoted value")
        return table

    def _read(self, piece: pa.Buffer, read_options: pcsv.ReadOptions) -> pa.Table:
        return pcsv.read_csv(
            pa.BufferReader(piece),
            read_options=read_options,
            parse_options=self.parse_options,
            convert_options=self._convert_options,
        )

    def explain(self, line: bytes, error: str) -> str:
        """The message for one bad line: an unclosed quote is named as such."""
        if self.quote and line.count(self.quote) % 2:
            return "unterminated quoted value"
        return error

    def _message(self, text: str) -> str:
        text = text.split("\n")[0]
        # The serial reader names the row ("Row #1: "), the threaded one does not.
        m = re.match(r"CSV parse error: (?:Row #\d+: )?Expected (\d+) columns, got (\d+)", text)
        if m:
            return f"expected {m.group(1)} fields, got {m.group(2)}"
        m = re.match(r"In CSV column #(\d+): (?:Row #\d+: )?CSV conversion error to (.+?): (.*)", text)
        if m and self.schema is not None:
            name = self.schema.names[int(m.group(1))]
            return f"column {name!r}: cannot convert to {m.group(2)}: {m.group(3)}"
        return text


def _with_block_size(options: pcsv.ReadOptions, size: int) -> pcsv.ReadOptions:
    return pcsv.ReadOptions(
        column_names=options.column_names, block_size=size, use_threads=options.use_threads
    )


def _has(needle: bytes, data: bytes | None, piece: pa.Buffer, start: int, end: int) -> bool:
    """Whether ``needle`` occurs in ``data[start:end]``, or in ``piece`` when there is no ``data``.

    A copy of a 4 MiB block into Python costs about 0.3 ms; Arrow has no byte search of its own
    that is faster (a binary-array substring match is ~10x slower than ``bytes.find``).
    """
    if data is None:
        return piece.to_pybytes().find(needle) != -1
    return data.find(needle, start, end) != -1


class JsonDecoder:
    """Decodes blocks of JSON lines with pyarrow's JSON reader (fields not in the schema are ignored)."""

    quote = b""
    probe = b"{}\n"
    schema: pa.Schema | None = None
    _dates: list[int] = []

    def infer(self, sample: bytes) -> pa.Schema:
        """Field types inferred from the decodable lines of ``sample``; ISO date-times become timestamps."""
        if not sample.endswith(b"\n"):
            sample += b"\n"
        tables = [t for t in decode_lines(self, sample) if isinstance(t, pa.Table)]
        fields: dict[str, pa.Field] = {}
        for table in tables:
            for f in table.schema:
                fields.setdefault(f.name, f)
        return _timestamps_in_strings(normalise(pa.schema(list(fields.values()))), tables)

    @staticmethod
    def decoded_schema(schema: pa.Schema) -> pa.Schema:
        """JSON lines decode to the schema as it is."""
        return schema

    def fix(self, schema: pa.Schema) -> None:
        """Fix the schema every later block is decoded to."""
        self.schema = schema
        # pyarrow's JSON reader takes dates only as numbers: read ISO text and cast it afterwards.
        self._dates = [i for i, f in enumerate(schema) if pa.types.is_date(f.type)]
        self._read_schema = pa.schema(
            [pa.field(f.name, pa.string()) if i in self._dates else f for i, f in enumerate(schema)]
        )

    def decode(self, data: bytes, buf: pa.Buffer, start: int, end: int, serial: bool = False) -> pa.Table:
        """Decode ``data[start:end]`` (whole JSON lines); ``buf`` holds ``data``.

        Raises:
            BlockError: a line is not a JSON object or a value does not fit its field's type.
        """
        buf = buf.slice(start, end - start)
        # pyarrow reads a line ``null`` as a row of NULLs, and crashes when the first line is one.
        if not _starts_with_object(buf):
            raise BlockError("the line is not a JSON object")
        if self.schema is None:
            po = pjson.ParseOptions(unexpected_field_behavior="infer")
        else:
            po = pjson.ParseOptions(explicit_schema=self._read_schema, unexpected_field_behavior="ignore")
        size = len(buf)
        # A line longer than pyarrow's block size cannot be parsed in parallel chunks.
        for block_size in (_PARSE_BLOCK if size > 2 * _PARSE_BLOCK else size + 1, size + 1):
            try:
                ro = pjson.ReadOptions(block_size=block_size)
                table = pjson.read_json(pa.BufferReader(buf), read_options=ro, parse_options=po)
                break
            except pa.ArrowInvalid as exc:
                if "straddling" not in str(exc) or block_size > size:
                    raise BlockError(_json_message(str(exc))) from None
        _check_utf8(table)
        if _has_empty_rows(table) and _NULL_LINE.search(buf.to_pybytes()):
            raise BlockError("the line is not a JSON object")
        if self.schema is None:
            return table
        if table.schema.names != self.schema.names:
            table = table.select(self.schema.names)
        for i in self._dates:
            f = self.schema.field(i)
            try:
                table = table.set_column(i, f, pc.cast(table.column(i), f.type))
            except pa.ArrowInvalid as exc:
                raise BlockError(f"field {f.name!r}: cannot convert to {f.type}: {exc}") from None
        return table

    def explain(self, line: bytes, error: str) -> str:
        return error


# A line ending in ``null`` that pyarrow read: only a line ``null`` (a JSON string holds no newline).
_NULL_LINE = re.compile(rb"null[ \t\r]*\n")


_NOT_BLANK = re.compile(rb"[^ \t\r\n]")


def _starts_with_object(buf: pa.Buffer) -> bool:
    """Whether the first line of ``buf`` that is not blank starts an object (or every line is blank)."""
    size = 256
    while True:
        head = buf.slice(0, min(size, len(buf))).to_pybytes()
        found = _NOT_BLANK.search(head)
        if found is not None:
            return head[found.start()] == ord("{")
        if size >= len(buf):
            return True
        size *= 16


def _has_empty_rows(table: pa.Table) -> bool:
    """Whether a row has every field NULL, as a ``null`` line gives (or ``{}``: the caller looks).
    Only a block where every column holds a NULL is looked at row by row."""
    if table.num_rows == 0:
        return False
    if table.num_columns == 0:
        return True
    if any(column.null_count == 0 for column in table.columns):
        return False
    empty = pc.is_null(table.column(0))
    for column in table.columns[1:]:
        empty = pc.and_(empty, pc.is_null(column))
    return pc.any(empty).as_py()


def _check_utf8(table: pa.Table) -> None:
    """pyarrow's JSON reader copies string bytes unchecked: invalid UTF-8 must not go further."""
    for name, column in zip(table.column_names, table.columns):
        if not (pa.types.is_primitive(column.type) or pa.types.is_temporal(column.type)):
            try:
                column.validate(full=True)
            except pa.ArrowInvalid:
                raise BlockError(f"field {name!r}: invalid UTF-8") from None


def _json_message(text: str) -> str:
    text = re.sub(r" in row \d+$", "", text.split("\n")[0])
    return re.sub(r"Column\(/?([^)]*)\)", lambda m: f"field {m.group(1) or '(top level)'!r}", text)


_DATETIME = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}"


def _timestamps_in_strings(schema: pa.Schema, tables: list[pa.Table]) -> pa.Schema:
    """String fields whose sampled values are all ISO date-times become ``timestamp[us]``."""
    fields = []
    for f in schema:
        cols = [t.column(f.name) for t in tables if f.name in t.column_names]
        values = [c.drop_null() for c in cols if c.type == pa.string()]
        if f.type == pa.string() and values and len(values) == len(cols) and sum(map(len, values)):
            col = pa.chunked_array(values, pa.string())
            if pc.all(pc.match_substring_regex(col, _DATETIME)).as_py():
                try:
                    pc.cast(col, pa.timestamp("us"))
                    f = pa.field(f.name, pa.timestamp("us"))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    pass
        fields.append(f)
    return pa.schema(fields)


def decode_lines(
    decoder,
    data: bytes,
    start: int = 0,
    end: int | None = None,
    buf: pa.Buffer | None = None,
    failed: bool = False,
) -> Iterator[pa.Table | BadLine]:
    """Decode ``data[start:end]``, whole lines each ending with a newline, in order.

    Fast path: one vectorised call for the whole block. When it fails, the block is bisected at line
    boundaries until every failing piece is a single line; those are yielded as :class:`BadLine`,
    the pieces around them as tables. Line numbers are left to the caller: counting newlines costs
    as much as a fifth of the decoding, so it is done only when a line is bad. ``buf``: ``data``
    as an Arrow-owned buffer (see :func:`arrow_copy`), made here when not given. ``failed``: the
    whole block is already known not to decode (it is split at once).
    """
    buf = arrow_copy(data) if buf is None else buf
    end = len(data) if end is None else end
    mid = _middle_line_start(data, start, end) if failed and start < end else None
    stack = [(start, end)] if mid is None else [(mid, end), (start, mid)]
    while stack:
        lo, hi = stack.pop()
        if lo >= hi:
            continue  # pyarrow refuses empty input
        try:
            table = decoder.decode(data, buf, lo, hi)
        except BlockError as exc:
            mid = _middle_line_start(data, lo, hi)
            if mid is None:
                error = str(exc)
                try:  # again, column by column: the threaded reader names whichever failed first
                    decoder.decode(data, buf, lo, hi, serial=True)
                except BlockError as first:
                    error = str(first)
                raw = data[lo:hi]
                text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                yield BadLine(lo, decoder.explain(raw, error), text)
                continue
            stack.append((mid, hi))
            stack.append((lo, mid))
        else:
            yield table


def _middle_line_start(data: bytes, lo: int, hi: int) -> int | None:
    """Start of a line near the middle of ``data[lo:hi]``, or None when it holds one line."""
    half = (lo + hi) // 2
    nl = data.find(b"\n", half, hi - 1)
    if nl == -1:
        nl = data.rfind(b"\n", lo, half)
    return None if nl == -1 else nl + 1
