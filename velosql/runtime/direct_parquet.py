"""V2 direct read of Parquet by DuckDB's own reader: no Arrow between the file and the SQL.

Decoding a micro-batch with pyarrow and then scanning that Arrow in DuckDB cost a worker about
twice what DuckDB's Parquet reader feeding the partition-local statement directly costs
(2.5M trades rows on one thread: filter 0.117 s against 0.059 s). So where a worker reads its
own Parquet pieces (see direct.py), each read is one run of whole row groups
(``FileSource.parquet_runs``) and ``__in`` is a view over ``read_parquet`` of the run's row
numbers with what the pyarrow path adds: the source's columns cast to the types DuckDB gives them
in an Arrow batch (a Parquet timestamp in milliseconds is a TIMESTAMP to the reader but a
TIMESTAMP_MS from Arrow), ``_partition``, the row number in the file as ``_offset`` and ``__seq``;
with event time also ``__et`` and the read's watermark ``__wm``, rows whose event time is NULL
going to the dead letters and late rows to the job, as ``direct.read`` does; a row group
DuckDB cannot read is a dead letter and the run is read without it. Event time is
computed in SQL only where it is exactly pyarrow's (:func:`event_time_sql`); other event-time
columns are read by pyarrow.

The job builds each run's view (:func:`views`); the worker's side (:func:`open_runs`,
:func:`read_run`) imports nothing beyond what a worker has loaded at start: a job's first
micro-batch waits for it.
"""

from __future__ import annotations

import collections

import duckdb
import pyarrow as pa

from ..errors import DataError


def event_time_sql(field: pa.Field) -> str | None:
    """DuckDB's expression for a column's event time in microseconds, for the column types where
    it is exactly what pyarrow's ``watermark.event_time_us`` computes: timestamps in seconds,
    milliseconds or microseconds (with or without a time zone) and dates. None for the others
    (nanoseconds, numbers, text), which pyarrow reads."""
    from ..connectors.duckdb_table import quote

    t = field.type
    if pa.types.is_timestamp(t) and t.unit in ("s", "ms", "us"):
        return f"epoch_us({quote(field.name)})"
    if pa.types.is_date32(t):
        return f"epoch_us(CAST({quote(field.name)} AS TIMESTAMP))"
    return None


def views(
    con: duckdb.DuckDBPyConnection, schema: pa.Schema, runs: list, seq_shift: int, event_time: str | None
) -> list[tuple]:
    """For each run: the parts of the statement making the view ``__run`` its rows (see
    :func:`_view`; the job watermark of the read goes between the first two), its row count, the unit it ends (or None), its unit
    and where it is (for errors). ``schema``: the source's columns as the job sees them;
    ``event_time``: the expression of :func:`event_time_sql`, None for a plan without event time."""
    from ..connectors.base import OFFSET_COL, PARTITION_COL, SYSTEM_COLUMNS, empty_table
    from ..connectors.duckdb_table import quote

    con.register("__types", empty_table(schema))
    try:
        types = {row[0]: row[1] for row in con.sql("DESCRIBE SELECT * FROM __types").fetchall()}
    finally:
        con.unregister("__types")
    columns = ", ".join(
        f"CAST({quote(n)} AS {types[n]}) AS {quote(n)}" for n in schema.names if n not in SYSTEM_COLUMNS
    )
    out = []
    for run in runs:
        path = run.path.replace("'", "''")
        head = (
            f"SELECT {columns}, "
            f"CAST({run.partition} AS INTEGER) AS {PARTITION_COL}, file_row_number AS {OFFSET_COL}, "
            f"file_row_number + {run.partition << seq_shift} AS __seq"
        )
        if event_time is not None:
            head += f", {event_time} AS __et, CAST("
        tail = " AS BIGINT) AS __wm" if event_time is not None else ""
        tail += f" FROM read_parquet('{path}', file_row_number = true)"
        place = f"{run.path}, rows {run.first}-{run.end - 1}"
        ends = run.unit if run.last else None
        out.append(
            (
                (head, tail, run.path, [(run.first, run.end)]),
                run.end - run.first,
                ends,
                run.unit,
                place,
                run.event_time,
            )
        )
    return out


def _view(head: str, tail: str, ranges: list[tuple[int, int]], watermark: str) -> str:
    """The statement making ``__run`` the rows ``ranges`` (of row numbers) of the run's file: one
    scan per range, so that a row group left out is never read."""
    scans = [
        f"{head}{watermark}{tail} WHERE file_row_number >= {first} AND file_row_number < {end}"
        for first, end in ranges
    ]
    return "CREATE OR REPLACE TEMP VIEW __run AS " + " UNION ALL ".join(
        scans or [f"{head}{watermark}{tail} LIMIT 0"]
    )


def open_runs(con: duckdb.DuckDBPyConnection, state: dict, spec: dict):
    """Keep the worker's runs (``spec["runs"]``, from :func:`views`) and what :func:`read_run`
    needs of the read spec (see ``V2Executor._open_direct``)."""
    # Each run's query would parse its file's footer again: ~10% of a 262144-row run's time.
    con.execute("SET parquet_metadata_cache = true")
    state.update(runs=collections.deque(spec["runs"]), spec=spec, bound=False)
    return None, None


def read_run(con: duckdb.DuckDBPyConnection, state: dict, watermark: int):
    """The next run through the partition-local statement, replied as ``direct.read`` replies
    (which this follows step for step, in SQL). A read after the last run (the job asks ahead
    before it knows) finds nothing. A row group DuckDB cannot read is a dead letter naming the
    file and the row group, and the run is read again without it."""
    runs, spec = state["runs"], state["spec"]
    info = {"rows": 0, "ended": [], "done": True, "maxima": [], "late": None, "low": None, "rejects": []}
    if not runs:
        return info, None
    (head, tail, path, ranges), rows, ends, unit, place, known = runs.popleft()
    info.update(rows=rows, ended=[] if ends is None else [ends], done=not runs)
    wm = str(int(watermark)) if spec["windowed"] else ""
    try:
        return info, _read(con, state, spec, _view(head, tail, ranges, wm), unit, watermark, known, info)
    except duckdb.Error as exc:
        error = exc
    bad = _bad_row_groups(con, head, tail, path, ranges, wm)
    if not bad:  # not the file's data: the statement itself failed
        raise DataError(f"{place}: {error}") from None
    for group, first, end, reason in bad:
        info["rejects"].append(
            (
                f"{path}, row group {group} (rows {first}-{end - 1})",
                f"cannot read the row group: {reason}",
                None,
            )
        )
        info["rows"] -= end - first
    good = _without(ranges, [(first, end) for _, first, end, _ in bad])
    info.update(maxima=[], late=None, low=None)
    try:
        return info, _read(con, state, spec, _view(head, tail, good, wm), unit, watermark, None, info)
    except duckdb.Error as exc:  # name the place: the file and its rows
        raise DataError(f"{place}: {exc}") from None


def _read(con, state: dict, spec: dict, view: str, unit: int, watermark: int, known, info: dict) -> pa.Table:
    statements = spec["out"]
    con.execute(view)
    if not state["bound"]:  # a view is bound when created: once __run exists
        where = " WHERE __et IS NOT NULL" if spec["windowed"] else ""
        con.execute(f"CREATE OR REPLACE TEMP VIEW __in AS SELECT * FROM __run{where}")
        state["bound"] = True
    if spec["windowed"]:
        if known is not None:  # from the row groups' statistics: no pass over the rows
            low, high, nulls = known
        else:
            low, high, nulls = con.execute(
                "SELECT min(__et), max(__et), count(*) - count(__et) FROM __run"
            ).fetchall()[0]
        behind = low is not None and low < watermark
        if high is not None:
            info["maxima"] = [(unit, high)]
        if nulls:
            error = f"event-time column {spec['time']!r} is NULL"
            info["rejects"] += [
                (f"{spec['source']} partition {part} offset {offset}", error, None)
                for part, offset in con.execute(
                    "SELECT _partition, _offset FROM __run WHERE __et IS NULL ORDER BY _offset"
                ).fetchall()
            ]
        info["low"] = low
        if behind and spec["window"] is not None:  # a row behind the watermark: is it late?
            late = con.sql(spec["late"]).to_arrow_table()
            if late.num_rows:
                from .protocol import ipc_buffer

                info["late"] = ipc_buffer(late).to_pybytes()
                statements = spec["out_late"]
        if low is not None and low >= 0 and len(statements) > 1:
            statements = statements[1:]
    return con.sql(statements[0]).to_arrow_table()


def _bad_row_groups(con, head: str, tail: str, path: str, ranges: list, wm: str) -> list[tuple]:
    """The row groups of ``ranges`` that DuckDB cannot read: (group, first row, end row, error)."""
    quoted = path.replace("'", "''")
    sizes = con.execute(
        f"SELECT row_group_id, any_value(row_group_num_rows) FROM parquet_metadata('{quoted}') "
        "GROUP BY ALL ORDER BY row_group_id"
    ).fetchall()
    bad, first = [], 0
    for group, size in sizes:
        end = first + size
        if size and any(first < hi and lo < end for lo, hi in ranges):
            try:
                con.execute(
                    f"{head}{wm or 0}{tail} WHERE file_row_number >= {first} AND file_row_number < {end}"
                )
                con.fetchall()
            except duckdb.Error as exc:
                bad.append((group, first, end, str(exc).splitlines()[0]))
        first = end
    return bad


def _without(ranges: list[tuple[int, int]], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` of row numbers minus ``holes`` (whole row groups inside them)."""
    out = []
    for lo, hi in ranges:
        for a, b in sorted(holes):
            if a >= hi or b <= lo:
                continue
            if a > lo:
                out.append((lo, a))
            lo = max(lo, b)
        if lo < hi:
            out.append((lo, hi))
    return out
