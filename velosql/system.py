"""System tables: the engine's live state as views, queryable with SQL like any table.

``velosql_streams``, ``velosql_jobs``, ``velosql_partitions``, ``velosql_watermarks`` and
``velosql_open_windows`` are declared once in :data:`TABLES` (name, columns with their DuckDB
types and meaning, and the function that reads the rows); the docs' table of columns comes from
the same declaration (``tests/test_system_tables.py`` checks it).

How they are views and not copies: DuckDB's Python API has no table functions, and its Python
scalar functions need numpy, which the core does not depend on. But DuckDB scans any Python object
that exports an Arrow stream (``__arrow_c_stream__``, the Arrow PyCapsule interface) and asks the
object for its stream each time a query reads it. Each system table is such an object,
registered on the engine's connection under the table's name (which makes it a temporary view of
that connection), whose stream is the rows read from the jobs at that moment. They are registered
by the first statement run through the engine (``engine.sql``, ``engine.execute``, the shell,
``-c``, ``run``) that names one; from then on ``engine.con`` sees them too. Every query that reads the view
sees the state as of that query. The views are temporary: they belong to the engine's connection
(``engine.sql``, ``engine.execute``, the shell, ``-c``, ``run``), are never written into a database
file, and other connections and cursors of the same database do not see them. Being temporary,
they are found before a table of the same name in the database, which stays readable with its
catalog's name (``mydb.main.velosql_jobs``).

The functions read Python attributes the jobs update as they run (counters, the watermark
tracker, the partition workers' metrics) without locks: each value read is one attribute, so a
row may mix values read a moment apart, never a torn value.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from .runtime.watermark import NOT_YET

_EPOCH = dt.datetime(1970, 1, 1)
_END = 2**62  # watermarks from here on are the end of input (+inf)
_ARROW = {
    "VARCHAR": pa.string(),
    "BIGINT": pa.int64(),
    "INTEGER": pa.int32(),
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
    "TIMESTAMP": pa.timestamp("us"),
    "INTEGER[]": pa.list_(pa.int32()),
}


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # DuckDB's type name
    help: str


@dataclass(frozen=True)
class SystemTable:
    """One system table: its name, columns and the function reading its rows from an engine."""

    name: str
    help: str
    columns: tuple[Column, ...]
    rows: Callable[[object], list[dict]]

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([(c.name, _ARROW[c.type]) for c in self.columns])

    def read(self, engine) -> list[dict]:
        names = [c.name for c in self.columns]
        return [{n: row.get(n) for n in names} for row in self.rows(engine)]


def _ts(us: int | None) -> dt.datetime | None:
    """Microseconds since the epoch as a TIMESTAMP value; None for no watermark yet or +inf."""
    if us is None or us <= NOT_YET or us >= _END:
        return None
    return _EPOCH + dt.timedelta(microseconds=us)


def _window_text(plan) -> str | None:
    w = plan.window
    if w is None:
        return None
    if w.kind == "sliding":
        return f"SLIDING {w.size_us / 1e6:g}s/{w.advance_us / 1e6:g}s"
    return f"{w.kind.upper()} {w.size_us / 1e6:g}s"


# ---- velosql_streams -----------------------------------------------------------------------------


def _streams(engine) -> list[dict]:
    rows = []
    for job in engine.jobs():
        p = job.plan
        rows.append(
            {
                "name": job.name,
                "kind": p.kind.upper(),
                "source": p.source.name,
                "sinks": ", ".join(s.type for s in p.sinks),
                "emit": p.emit.upper(),
                "window": _window_text(p) or "",
                "status": job.status,
                "source_type": p.source.type or _inferred_type(job),
                "processor": job.processor.description(),
                "late_table": p.late_table if p.windowed else None,
                "dlq_table": p.dlq_table,
                "statement": p.text,
            }
        )
    return rows


def _inferred_type(job) -> str | None:
    """The type of a source the statement does not declare, from what the engine opened."""
    kind = type(getattr(job.executor, "source", None)).__name__
    return {"DuckDBTableSource": "table", "PythonSource": "python", "FileSource": "file_source"}.get(kind)


# ---- velosql_jobs --------------------------------------------------------------------------------


def _jobs(engine) -> list[dict]:
    rows = []
    for job in engine.jobs():
        m = job.metrics()
        data = job.metrics_data
        elapsed = m["elapsed_seconds"]
        parts = m.get("partitions")
        error = None
        if job.error is not None:
            error = str(job.error) or type(job.error).__name__
        rows.append(
            {
                **{k: m.get(k) for k in ("name", "status", "processor", "records_in", "records_out")},
                "batches": m["batches"],
                "in_rows_per_second": round(m["records_in"] / elapsed, 1) if elapsed > 0 else None,
                "out_rows_per_second": round(m["records_out"] / elapsed, 1) if elapsed > 0 else None,
                "late_rows": m["late_rows"],
                "dead_letters": m["dead_letters"],
                "sink_retries": m["sink_retries"],
                "watermark": _ts(data.watermark),
                "elapsed_seconds": elapsed,
                "busy_seconds": m["busy_seconds"],
                "waiting_seconds": m["waiting_seconds"],
                "partitions": len(parts) if parts else None,
                "skew": m.get("skew"),
                "workers_start_seconds": m.get("workers_start_seconds"),
                "error": error,
            }
        )
    return rows


# ---- velosql_partitions --------------------------------------------------------------------------


def _partitions(engine) -> list[dict]:
    rows = []
    for job in engine.jobs():
        executor = job.executor
        metrics = getattr(executor, "partition_metrics", None)
        if metrics is None:
            continue
        parts = metrics()
        if not parts:
            continue
        mean = sum(p["records_in"] for p in parts) / len(parts)
        elapsed = job.metrics()["elapsed_seconds"]
        raw_wm = getattr(executor, "part_wm", None) or []
        for p in parts:
            i = p["partition"]
            rows.append(
                {
                    "stream": job.name,
                    "partition": i,
                    "pid": p["pid"],
                    "cores": p["cores"],
                    "affinity_error": p["affinity_error"],
                    "reader": p["reader"],
                    "batches": p["batches"],
                    "records_in": p["records_in"],
                    "records_out": p["records_out"],
                    "queue_depth": p["queue_depth"],
                    "queue_records": p["queue_records"],
                    "queue_peak": p["queue_peak"],
                    "late_rows": p["late_rows"],
                    "watermark": _ts(raw_wm[i]) if i < len(raw_wm) else None,
                    "busy_seconds": p["busy_seconds"],
                    "waiting_seconds": p["waiting_seconds"],
                    "busy_share": round(p["busy_seconds"] / elapsed, 3) if elapsed > 0 else None,
                    "skew": round(p["records_in"] / mean, 3) if mean else None,
                }
            )
    return rows


# ---- velosql_watermarks --------------------------------------------------------------------------


def _watermarks(engine) -> list[dict]:
    rows = []
    now = time.monotonic()
    for job in engine.jobs():
        executor = job.executor
        trackers = getattr(executor, "trackers", None)  # a statement over several streams: one each
        tracker = getattr(executor, "tracker", None)
        if trackers is None and (tracker is None or not job.plan.windowed):
            continue  # only windowed statements track event time
        if trackers is not None and not job.plan.windowed and job.plan.time.column is None:
            continue  # a join without event time
        names = [i.source.name for i in job.plan.inputs] if trackers is not None else [None]
        trackers = trackers or [tracker]
        maxima_each = [t.max_by_partition.copy() for t in trackers]
        newest = max((m for maxima in maxima_each for m in maxima.values() if m > NOT_YET), default=None)

        def row(
            scope: str, partition: int | None, wm: int | None, newest_here, idle=None, job=job, newest=newest
        ):
            known = wm is not None and NOT_YET < wm < _END
            return {
                "stream": job.name,
                "scope": scope,
                "partition": partition,
                "watermark": _ts(wm),
                "ended": wm is not None and wm >= _END,
                "idle": idle,
                "newest_event": _ts(newest_here),
                "lag_seconds": (newest - wm) / 1e6 if known and newest is not None else None,
            }

        job_wm = executor._watermark() if len(trackers) > 1 else tracker.watermark
        rows.append(row("job", None, job_wm, newest))
        for name, tracker, maxima in zip(names, trackers, maxima_each):
            seen = tracker.last_seen.copy()
            scope = "source partition" if name is None else f"source {name} partition"
            for p in sorted(maxima):
                mx = maxima[p] if maxima[p] > NOT_YET else None  # NOT_YET: expected, nothing read yet
                idle = tracker.idle_timeout is not None and now - seen.get(p, now) > tracker.idle_timeout
                rows.append(row(scope, p, None if mx is None else mx - tracker.lateness, mx, idle))
        if getattr(executor, "pool", None) is not None:  # V2 with workers
            for i, wm in enumerate(executor.part_wm):
                rows.append(row("worker", i, wm, None))
    return rows


# ---- velosql_open_windows ------------------------------------------------------------------------


def _open_windows(engine) -> list[dict]:
    rows = []
    for job in engine.jobs():
        p, executor = job.plan, job.executor
        if p.window is None or executor is None or job.done:
            continue
        if getattr(executor, "operator", None) is None:
            continue  # a group member: its partitions' tasks hold the windows
        first_end, held, kind = _held_state(executor)
        if held == 0:
            continue  # nothing open
        maxima = [m for m in executor.tracker.max_by_partition.values() if m > NOT_YET]
        newest = max(maxima, default=None)
        first_start = last_end = count = None
        if p.window.kind != "session" and first_end is not None and first_end > NOT_YET:
            first_start = first_end - p.window.size_us
            if newest is not None:
                step = p.window.size_us if p.window.kind == "tumbling" else p.window.advance_us
                last_end = newest - newest % step + p.window.size_us  # the latest window holding it
                count = max(0, (last_end - first_end) // step + 1)
        rows.append(
            {
                "stream": job.name,
                "window": _window_text(p),
                "first_start": _ts(first_start),
                "last_end": _ts(last_end),
                "windows": count,
                "keys": None,
                "rows_held": held,
                "rows_kind": kind,
            }
        )
    return rows


def _held_state(executor) -> tuple[int | None, int | None, str | None]:
    """(the earliest end of an open window, rows held, what they are) as far as the job's
    process knows them without reading its state tables."""
    operator = getattr(executor, "operator", None)
    if executor.plan.shape == "general":
        return operator.min_open_end, operator.rows, "input rows"
    in_workers = getattr(executor, "pool", None) is not None and (
        getattr(executor, "combined", False) or executor.route.mode == "keyed"
    )
    if executor.plan.shape == "aggregate" and not in_workers:
        return operator.min_open_end, operator.state_rows, "partial rows"
    return None, None, None


def _cols(*specs: tuple[str, str, str]) -> tuple[Column, ...]:
    return tuple(Column(*s) for s in specs)


TABLES: tuple[SystemTable, ...] = (
    SystemTable(
        "velosql_streams",
        "one row per deployed streaming statement (SHOW STREAMS shows its first seven columns)",
        _cols(
            ("name", "VARCHAR", "the stream or table the statement creates"),
            ("kind", "VARCHAR", "STREAM or TABLE"),
            ("source", "VARCHAR", "the source it reads"),
            ("sinks", "VARCHAR", "the types of its sinks"),
            ("emit", "VARCHAR", "CHANGES or FINAL"),
            ("window", "VARCHAR", "its window, e.g. TUMBLING 60s; empty without one"),
            ("status", "VARCHAR", "Starting, Running, Stopping, Stopped, Finished or Error"),
            ("source_type", "VARCHAR", "file_source, python, table, …"),
            ("processor", "VARCHAR", "the processor running it"),
            ("late_table", "VARCHAR", "the table of its late rows (windowed statements)"),
            ("dlq_table", "VARCHAR", "the table of its dead letters"),
            ("statement", "VARCHAR", "the statement as written"),
        ),
        _streams,
    ),
    SystemTable(
        "velosql_jobs",
        "one row per job: its status and counters",
        _cols(
            ("name", "VARCHAR", "the job's stream"),
            ("status", "VARCHAR", "as in velosql_streams"),
            ("processor", "VARCHAR", "the processor running it"),
            ("records_in", "BIGINT", "records read from the source"),
            ("records_out", "BIGINT", "rows written to the sinks"),
            ("batches", "BIGINT", "micro-batches processed"),
            ("in_rows_per_second", "DOUBLE", "records_in over elapsed_seconds"),
            ("out_rows_per_second", "DOUBLE", "records_out over elapsed_seconds"),
            ("late_rows", "BIGINT", "rows that arrived after their window closed (kept in late_table)"),
            ("dead_letters", "BIGINT", "records that could not be read or processed (kept in dlq_table)"),
            ("sink_retries", "BIGINT", "writes to a sink that were retried"),
            ("watermark", "TIMESTAMP", "the job's watermark; NULL before the first one and after the end of input"),
            ("elapsed_seconds", "DOUBLE", "since the job started (until it ended)"),
            ("busy_seconds", "DOUBLE", "time spent processing"),
            ("waiting_seconds", "DOUBLE", "time spent waiting for input"),
            ("partitions", "INTEGER", "V2: its worker count; NULL when it runs no workers"),
            ("skew", "DOUBLE", "V2: the busiest worker's records_in over the mean (1.0 is even)"),
            ("workers_start_seconds", "DOUBLE", "V2: how long starting the workers took"),
            ("error", "VARCHAR", "why the job failed"),
        ),
        _jobs,
    ),
    SystemTable(
        "velosql_partitions",
        "one row per V2 partition worker (V1 jobs and V2 jobs running without workers have none)",
        _cols(
            ("stream", "VARCHAR", "the job's stream"),
            ("partition", "INTEGER", "the worker's index"),
            ("pid", "BIGINT", "its process id"),
            ("cores", "INTEGER[]", "the cores it is pinned to; NULL when unpinned"),
            ("affinity_error", "VARCHAR", "why pinning failed"),
            ("reader", "VARCHAR", "direct read: duckdb or pyarrow; NULL when the job sends it rows"),
            ("batches", "BIGINT", "micro-batches (or their parts) it was sent or read"),
            ("records_in", "BIGINT", "rows it was sent or read"),
            ("records_out", "BIGINT", "rows it sent back: output rows or partial aggregates"),
            ("queue_depth", "BIGINT", "requests sent to it and not answered yet"),
            ("queue_records", "BIGINT", "records waiting behind the one it works on"),
            ("queue_peak", "BIGINT", "the most records ever waiting at it"),
            ("late_rows", "BIGINT", "late rows found in its own reads"),
            ("watermark", "TIMESTAMP", "the watermark it last worked with"),
            ("busy_seconds", "DOUBLE", "time it spent working"),
            ("waiting_seconds", "DOUBLE", "time the job spent waiting for it or writing to it"),
            ("busy_share", "DOUBLE", "busy_seconds over the job's elapsed_seconds"),
            ("skew", "DOUBLE", "its records_in over the mean of the job's workers (1.0 is even)"),
        ),
        _partitions,
    ),
    SystemTable(
        "velosql_watermarks",
        "the watermarks of every windowed job: the job's, each source partition's, each worker's",
        _cols(
            ("stream", "VARCHAR", "the job's stream"),
            ("scope", "VARCHAR", "job, source partition or worker"),
            ("partition", "INTEGER", "the source partition or worker index; NULL for the job"),
            ("watermark", "TIMESTAMP", "NULL before the first one and at the end of input"),
            ("ended", "BOOLEAN", "the input has ended: every window is closed"),
            ("idle", "BOOLEAN", "source partition: idle past watermark.idle_timeout, so it no longer holds the job's watermark back"),
            ("newest_event", "TIMESTAMP", "the newest event time seen (by the job, or in the partition)"),
            ("lag_seconds", "DOUBLE", "how far the watermark is behind the newest event time the job has seen"),
        ),
        _watermarks,
    ),
    SystemTable(
        "velosql_open_windows",
        "one row per running windowed job holding rows of windows not closed yet (an estimate: see the guide)",
        _cols(
            ("stream", "VARCHAR", "the job's stream"),
            ("window", "VARCHAR", "its window"),
            ("first_start", "TIMESTAMP", "the start of the earliest window still open (tumbling, sliding)"),
            ("last_end", "TIMESTAMP", "the end of the latest window holding the newest event (tumbling, sliding)"),
            ("windows", "BIGINT", "window instances from first_start to last_end (some may hold no row)"),
            ("keys", "BIGINT", "keys held: NULL, the job's state is not read to count them"),
            ("rows_held", "BIGINT", "rows the job's state holds; NULL where the workers hold it"),
            ("rows_kind", "VARCHAR", "what rows_held counts: input rows, or partial rows (one per key and micro-batch until compacted)"),
        ),
        _open_windows,
    ),
)  # fmt: skip
NAMES = tuple(t.name for t in TABLES)


def install(engine) -> bool:
    """Create the system tables on the engine's connection (see the module doc); whether they
    were created. Each is registered under its own name: a registered object is a temporary view
    of the connection that registered it."""
    for table in TABLES:
        engine.con.register(table.name, _Live(table, engine))
    return True


def install_for(engine, sql: str) -> bool:
    """:func:`install` when ``sql`` names a system table; whether installed. The engine installs
    them only then: DuckDB's ``register`` imports pandas where it is installed (~0.2 s), which no
    job and no command that does not read them should pay."""
    if "velosql_" not in sql.lower():
        return False
    return install(engine)


class _Live:
    """A system table's rows as of each read: DuckDB asks for the Arrow stream at every scan."""

    def __init__(self, table: SystemTable, engine) -> None:
        self.table, self.engine = table, engine

    def __arrow_c_stream__(self, requested_schema=None):
        rows = self.table.read(self.engine)
        schema = self.table.schema
        data = pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()
        return data.__arrow_c_stream__(requested_schema)


def uninstall(engine) -> None:
    """Drop the views and their registered objects from a connection the engine does not own."""
    for table in TABLES:
        engine.con.unregister(table.name)


def show(engine, name: str) -> pa.Table:
    """A system table's rows as an Arrow table of strings (``SHOW STREAMS`` reads
    ``velosql_streams``; read in Python, so that it needs neither numpy nor the views)."""
    table = next(t for t in TABLES if t.name == name)
    rows = table.read(engine)
    return pa.table({c.name: pa.array([r[c.name] for r in rows], pa.string()) for c in table.columns})


def markdown() -> str:
    """The columns of every system table as the docs show them (``docs/shell.md``; a test
    keeps the two equal)."""
    parts = []
    for table in TABLES:
        lines = [f"#### `{table.name}`", "", f"{table.help[0].upper()}{table.help[1:]}.", ""]
        lines += ["| column | type | meaning |", "|---|---|---|"]
        lines += [f"| `{c.name}` | {c.type} | {c.help} |" for c in table.columns]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"
