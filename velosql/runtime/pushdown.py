"""Scan pushdown: DuckDB's own reader reads a bounded file source and computes the partials.

A GROUP BY without a window that emits FINAL over bounded files emits nothing before the end of
its input, and event time plays no part in it: its result is the query's batch result over the
files' rows. Decoding every row into Arrow and handing it to DuckDB costs most of such a job
(1BRC: ~0.6 s of decode for 0.2 s of aggregation), while DuckDB's CSV and Parquet readers feed
its hash aggregate without materialising rows, on all usable cores. So the job runs the plan's
partial-aggregate SQL over ``read_csv``/``read_parquet`` of the files, in a DuckDB database of its
own (the job's connection stays single-threaded), and merges the one row per group it returns
into ``__state``; the final step is the usual one.

The pushdown reads what the file source would read, record for record: the same files, columns
and types (only column types whose text parsing the two readers share: floating point and
text), an empty unquoted field as NULL, a quoted ``""`` as an empty string. Records DuckDB
cannot read are skipped and reported with file and line (``store_rejects``) and go to the
dead-letter table like the file source's bad records. It is not used when the partial SQL needs
the stream's own columns (arrival order for FIRST/LAST, ``_partition``, ``_offset``), and
``scan_pushdown = false`` turns it off. ``tests/test_pushdown.py`` checks that both ways give the
same result, dead letters included.
"""

from __future__ import annotations

import csv
import json
import os
import re
import threading

import duckdb
import pyarrow as pa

from ..config import usable_cpus
from ..connectors.base import empty_table
from ..connectors.files_source import ScanSpec

# DuckDB types whose CSV parsing agrees with pyarrow's for every input the tests try. Not the
# integers: DuckDB reads '1.5' into a BIGINT column as 2, where pyarrow rejects the record.
CSV_TYPES = {"FLOAT", "DOUBLE", "VARCHAR"}
STREAM_COLUMNS = ("__seq", "__et", "__wm", "_partition", "_offset")


def eligible(plan) -> bool:
    """Whether the plan's shape allows the pushdown (the source decides the rest at run time)."""
    return (
        plan.shape == "aggregate"
        and plan.window is None
        and plan.emit == "final"
        and plan.job_options.get("scan_pushdown", True) is not False
        and not any(c in plan.sql.partial_all for c in STREAM_COLUMNS)
    )


class Scan:
    """The plan's partial aggregation over DuckDB's reader of a file source."""

    def __init__(self, con: duckdb.DuckDBPyConnection, partial: str, spec: ScanSpec) -> None:
        self.con = con
        self.partial = partial
        self.spec = spec
        self.estimated_rows = estimate_rows(spec)  # for progress while the scan runs

    def run(self, stop: threading.Event, progress=None) -> tuple[pa.Table, int] | None:
        """The partials and the number of records read; None when ``stop`` interrupted the scan.

        ``progress(percent)`` is called about every 0.1 s with DuckDB's estimate of how far the
        query is (the scan is most of it).
        """
        if stop.is_set():
            return None
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                if stop.wait(0.1) and not done.is_set():
                    self.con.interrupt()
                    return
                try:
                    percent = self.con.query_progress()
                except duckdb.Error:  # progress is a nicety: the stop above must keep working
                    continue
                if progress is not None and percent > 0 and not done.is_set():
                    progress(min(percent, 100.0))

        watcher = threading.Thread(target=watch, daemon=True, name="velosql-scan-stop")
        watcher.start()
        try:
            partials = self.con.sql(self.partial).to_arrow_table()
        except duckdb.InterruptException:
            return None
        finally:
            done.set()
            watcher.join()
        return partials, _rows_scanned(self.con)

    def rejects(self) -> list[tuple[str, str, str]]:
        """Records the reader skipped: (``path:line``, error, raw line), in file and line order."""
        if self.spec.fmt != "csv":
            return []
        rows = self.con.execute(
            # One dead letter per record, named by its first problem as the file source names it:
            # a wrong field count, then an unclosed quote, then the first field that fails.
            "SELECT s.file_path, e.line, arg_min(e.error_type, e.rank), arg_min(e.column_name, e.rank), "
            "arg_min(e.error_message, e.rank), any_value(e.csv_line) FROM (SELECT *, CASE WHEN "
            "error_type IN ('MISSING COLUMNS', 'TOO MANY COLUMNS') THEN 0 WHEN error_type = "
            "'UNQUOTED VALUE' THEN 1 ELSE 2 END * 1000000 + column_idx AS rank FROM reject_errors) e "
            "JOIN reject_scans s USING (scan_id, file_id) "
            "GROUP BY s.file_id, s.file_path, e.line ORDER BY s.file_id, e.line"
        ).fetchall()
        # DuckDB's copy of the line can carry the newlines of blank lines before it.
        return [
            (
                f"{path}:{line}",
                self._dead_letter_text(kind, column, error, (raw or "").strip("\r\n")),
                (raw or "").strip("\r\n"),
            )
            for path, line, kind, column, error, raw in rows
        ]

    def _dead_letter_text(self, kind: str, column: str | None, message: str, raw: str) -> str:
        """DuckDB's reason for rejecting a record, worded as the file source words it."""
        schema = self.spec.schema
        cast = re.search(r'Could not convert string "(.*)" to', message or "")
        if kind == "CAST" and cast and column in schema.names:
            return f"column {column!r}: cannot convert to {schema.field(column).type}: invalid value '{cast.group(1)}'"
        if kind in ("MISSING COLUMNS", "TOO MANY COLUMNS"):
            # DuckDB stops counting at the first extra field; the file source counts them all.
            quote = self.spec.quote
            fields = next(
                csv.reader(
                    [raw],
                    delimiter=self.spec.delimiter,
                    quotechar=quote or '"',
                    quoting=csv.QUOTE_MINIMAL if quote else csv.QUOTE_NONE,
                    escapechar=self.spec.escape if self.spec.escape not in (None, quote) else None,
                    doublequote=self.spec.escape in (None, quote),
                ),
                [],
            )
            return f"expected {len(schema)} fields, got {len(fields)}"
        if kind == "UNQUOTED VALUE":
            return "unterminated quoted value"
        return _first_line(message)

    def close(self) -> None:
        self.con.close()


def prepare(plan, source) -> Scan | None:
    """A :class:`Scan` for this plan and source when both allow it, else None."""
    spec_of = getattr(source, "scan_spec", None)
    if not eligible(plan) or spec_of is None:
        return None
    spec = spec_of()
    if spec is None or not spec.paths:
        return None
    con = duckdb.connect(config={"threads": usable_cpus()})
    try:
        sandbox = getattr(source, "sandbox", None)
        if sandbox is not None:  # the statement's SQL runs here: it may read the scanned files only
            sandbox.lock(con, spec.paths)
        table = _table_sql(con, spec)
        if table is None:
            con.close()
            return None
        con.execute("SET enable_profiling = 'no_output'")
        con.execute("SET enable_progress_bar = true")  # query_progress() for the job's progress
        con.execute("SET enable_progress_bar_print = false")
        con.execute(f"CREATE TEMP VIEW __in AS {table}")
        con.execute(f"SELECT * FROM ({plan.sql.partial_all}) LIMIT 0").fetchall()
        if spec.fmt == "csv":
            # Every field must be converted, as the file source converts it, even where the query
            # does not use it: a record with a bad value is a dead letter either way. DuckDB
            # leaves out the columns a query does not read, but not those a filter it cannot fold
            # reads (hashing every column would cost ~15% of 1BRC: only the unread ones are).
            read = _columns_read(con, plan.sql.partial_all)
            unread = [n for n in spec.schema.names if read is None or n not in read]
            if unread:
                touch = f"hash({', '.join(_ident(n) for n in unread)}) IS NOT NULL"
                con.execute(f"CREATE OR REPLACE TEMP VIEW __in AS {table} WHERE {touch}")
    except duckdb.Error:
        con.close()
        return None
    return Scan(con, plan.sql.partial_all, spec)


def estimate_rows(spec: ScanSpec) -> int:
    """How many records the files hold, roughly: Parquet's row counts; for CSV the files' size
    over the bytes per line of the first 256 KiB of the first file."""
    if spec.fmt == "parquet":
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(p).metadata.num_rows for p in spec.paths)
    with open(spec.paths[0], "rb") as fh:
        sample = fh.read(256 << 10)
    lines = sample.count(b"\n")
    if not lines:
        return 0
    return int(sum(os.path.getsize(p) for p in spec.paths) * lines / len(sample))


def _table_sql(con: duckdb.DuckDBPyConnection, spec: ScanSpec) -> str | None:
    types = _duckdb_types(con, spec.schema)
    paths = "[" + ", ".join(_lit(p) for p in spec.paths) + "]"
    names = ", ".join(_ident(n) for n in spec.schema.names)
    if spec.fmt == "parquet":
        for path in spec.paths:
            described = con.execute(f"DESCRIBE SELECT * FROM read_parquet({_lit(path)})").fetchall()
            have = {row[0]: row[1] for row in described}
            if any(have.get(n) != t for n, t in types.items()):
                return None  # the file source would cast: pyarrow's casts are not DuckDB's
        return f"SELECT {names} FROM read_parquet({paths})"
    if any(t not in CSV_TYPES for t in types.values()):
        return None
    columns = "{" + ", ".join(f"{_lit(n)}: {_lit(t)}" for n, t in types.items()) + "}"
    quote = spec.quote or ""
    escape = spec.escape if spec.escape is not None else quote
    return (
        f"SELECT {names} FROM read_csv({paths}, columns = {columns}, delim = {_lit(spec.delimiter)}, "
        f"quote = {_lit(quote)}, escape = {_lit(escape)}, header = {str(spec.header).lower()}, "
        f"skip = {spec.skip}, auto_detect = false, allow_quoted_nulls = false, store_rejects = true)"
    )


def _duckdb_types(con: duckdb.DuckDBPyConnection, schema: pa.Schema) -> dict[str, str]:
    con.register("__schema", empty_table(schema))
    try:
        return {row[0]: row[1] for row in con.execute("DESCRIBE __schema").fetchall()}
    finally:
        con.unregister("__schema")


def _columns_read(con: duckdb.DuckDBPyConnection, query: str) -> set[str] | None:
    """The columns DuckDB's plan for ``query`` has the CSV reader produce (None: not found)."""
    plan = json.loads(con.execute(f"EXPLAIN (FORMAT json) {query}").fetchall()[0][1])
    stack = list(plan if isinstance(plan, list) else [plan])
    while stack:
        node = stack.pop()
        info = node.get("extra_info") or {}
        if isinstance(info, dict) and info.get("Function") == "READ_CSV":
            columns = info.get("Projections", "")
            return set(columns if isinstance(columns, list) else [columns] if columns else [])
        stack.extend(node.get("children") or [])
    return None


def _rows_scanned(con: duckdb.DuckDBPyConnection) -> int:
    """Records the reader produced in the last query (from DuckDB's profile of it)."""
    profile = json.loads(con.get_profiling_information(format="json"))
    stack = list(profile.get("operator") or profile.get("children") or [])
    rows = 0
    while stack:
        node = stack.pop()
        if node.get("type") == "TABLE_SCAN":
            rows += int(node.get("intermediate_rows") or 0)
        stack.extend(node.get("children") or [])
    return rows


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _first_line(text: str) -> str:
    text = (text or "").strip()
    return text.splitlines()[0] if text else "unreadable record"
