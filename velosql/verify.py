"""``velosql verify``: a user's own streaming statements, streamed and as DuckDB batch SQL, compared.

For each streaming statement of a script whose input is bounded (a file source that is not
watched, or a DuckDB table), :func:`verify` runs the statement as a stream several ways, runs the
same SELECT as DuckDB batch SQL over the same input, and compares each result with the batch one:

- **file order**: the statement as written (its real source, so DuckDB's own reader, direct reads
  and the routing are exercised), under each processor (V1 and V2:2 by default), at its own batch
  size and at ``splits`` others (the source's ``batch_size`` and the job's ``max_batch_size``);
- **shuffled within the lateness**: for windowed statements with a lateness, ``orders`` arrival
  orders in which each on-time row is delayed by a random amount up to the lateness (so that none
  becomes late), pushed through a Python source in random batches, under each processor. Left
  out when the statement reads the system columns ``_partition``/``_offset``, which a Python
  source numbers its own way.

The batch answer of a run is computed over the rows that are on time in that run's arrival
order: the watermark rule (:class:`~velosql.runtime.watermark.WatermarkTracker`, over the whole
input in one pass, files in order as V1 reads them) and the window's late condition decide which
rows are late, so a stream that judged lateness differently because of its batching shows as a
difference. A windowed statement is batch SQL per window: an aggregating SELECT groups by
``_window_start`` and ``_window_end`` too (a row counts in every window that holds it); any other
SELECT runs once per window over that window's rows. A SELECT with ``ORDER BY`` and no window is
compared in order, any other as a multiset of rows. ``EMIT CHANGES`` aggregates are compared by
their last row per key (the table a ``CREATE TABLE`` keeps). Floating-point values are compared to
10 significant digits.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter
from collections.abc import Callable
from decimal import Decimal

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from .connectors.base import OFFSET_COL, PARTITION_COL, PartitionEnd, SourceContext
from .engine import Engine
from .errors import DataError, JobError, Location, SqlError
from .plan import windows as W
from .plan.constructs import aggregating
from .plan.planner import StreamPlan
from .runtime.watermark import WatermarkTracker, event_time_us
from .sql import CreateStream, DuckDBStatement, parse_script
from .testing import push_split

PROCESSORS = ("v1", "v2:2")
SHOWN_ROWS = 5  # differing rows kept per side
MIN_BATCH = 50  # rows: more micro-batches make a large input slow without finding more
_SEQ, _ET, _WID = "__seq", "__et", "__wid"
_INTERNAL = ("__seq", "__et", "__wm", "__ws", "__wid", "__sid", "__ss", "__se")
_WRITES_FILES = ("COPY", "EXPORT")  # statements verify does not run: it writes no file
_TIMEOUT = 600.0


@dataclasses.dataclass(frozen=True)
class Run:
    """One way a statement is streamed."""

    processor: str
    order: str  # "file order", or "shuffled within 5s (order 2)"
    batch_size: int | None  # None: the statement's own

    def describe(self) -> str:
        size = "its own batch size" if self.batch_size is None else f"batches of {self.batch_size} rows"
        return f"{self.processor.upper()}, {self.order}, {size}"


@dataclasses.dataclass
class Outcome:
    """What verifying one statement found. ``status``: ``identical``, ``different`` or ``skipped``
    (``note`` says why)."""

    name: str
    location: Location
    status: str
    runs: list[Run] = dataclasses.field(default_factory=list)
    columns: list[str] = dataclasses.field(default_factory=list)
    rows: int = 0  # rows of the batch answer
    late_rows: int = 0  # input rows left out as late (file order)
    differing: Run | None = None
    missing: list[tuple] = dataclasses.field(default_factory=list)  # batch rows the stream lacks
    extra: list[tuple] = dataclasses.field(default_factory=list)  # streamed rows batch SQL lacks
    missing_count: int = 0
    extra_count: int = 0
    # Values that differed only in their last rounded digit (the most in one run): see rounding_only.
    rounded: int = 0
    note: str = ""

    def compare(self, run: Run, got: pa.Table, expected: pa.Table, *, ordered: bool = False) -> bool:
        """Record ``run`` and whether its result is the batch answer; False when it differs
        (beyond the last rounded digit of a value), the differing rows kept."""
        self.runs.append(run)
        missing, extra = differences(_rows(got), _rows(expected), ordered=ordered)
        rounded = rounding_only(missing, extra)
        if rounded:
            self.rounded = max(self.rounded, rounded)
            return True
        if missing or extra:
            self.status, self.differing = "different", run
            self.missing, self.extra = missing[:SHOWN_ROWS], extra[:SHOWN_ROWS]
            self.missing_count, self.extra_count = len(missing), len(extra)
            return False
        return True


def verify(
    text: str,
    file: str | None = None,
    *,
    processors: tuple[str, ...] = PROCESSORS,
    splits: int = 2,
    orders: int = 2,
    seed: int = 0,
    config_path: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Outcome]:
    """Verify every streaming statement of the script ``text`` (see the module docstring).

    The script's other statements run too, in order, on an in-memory database of verify's own
    (so that the tables, views and macros the streaming statements read exist), except ``COPY``
    and ``EXPORT``; a verified statement's batch answer is stored as a table of its name for the
    statements after it. Nothing is written to the statements' sinks. ``progress`` is told of
    each run before it starts. Raises :class:`~velosql.errors.VelosqlError` for a script that
    does not parse or validate and for a run that fails.
    """
    statements = parse_script(text, file)
    base = Engine(":memory:")
    base.config_path = config_path
    try:
        plans = {id(s): base.plan_of(s) for s in statements if isinstance(s, CreateStream)}
        outcomes: list[Outcome] = []
        for stmt in statements:
            if isinstance(stmt, CreateStream):
                kind = _StreamsCheck if plans[id(stmt)].inputs else _Check
                check = kind(base, stmt, plans[id(stmt)], processors, splits, orders, seed)
                outcomes.append(check.run(progress))
                check.keep_answer()
            elif (
                isinstance(stmt, DuckDBStatement) and stmt.text.split(None, 1)[0].upper() not in _WRITES_FILES
            ):
                base.run_statement(stmt)
        return outcomes
    finally:
        base.close()


class _Check:
    """Verifying one statement: its input, its runs and their batch answers."""

    def __init__(self, base: Engine, stmt: CreateStream, plan: StreamPlan, processors, splits, orders, seed):
        self.base, self.stmt, self.plan = base, stmt, plan
        self.processors, self.splits, self.orders = processors, splits, orders
        self.rng = random.Random(f"{seed}:{plan.name}")
        self.reads_system = any(
            c.name.lower() in (PARTITION_COL, OFFSET_COL) for c in stmt.select.find_all(exp.Column)
        )
        # EMIT CHANGES running values: the result is each key's last row.
        self.running = plan.emit == "changes" and plan.shape == "aggregate"
        self.pieces: list[int] = []
        self.answer: pa.Table | None = None  # the batch answer over the file order's on-time rows

    def run(self, progress) -> Outcome:
        plan = self.plan
        outcome = Outcome(plan.name, plan.location, "skipped")
        outcome.note = self._unverifiable()
        events = None if outcome.note else self._read_input()
        if events is None:
            outcome.note = outcome.note or f"its source {plan.source.name} is not bounded"
            return outcome
        everything, on_time = self._on_time(events)
        outcome.late_rows = everything.num_rows - on_time.num_rows
        self.answer = self._batch(on_time)
        outcome.columns, outcome.rows = self.answer.column_names, self.answer.num_rows
        for run, arrival in self._runs(on_time):
            if progress is not None:
                progress(f"{plan.name}: {run.describe()}")
            expected = self.answer if arrival is None else self._batch(arrival)
            got = self._stream(run, arrival)
            if not outcome.compare(run, got, expected, ordered=self._ordered()):
                return outcome
        outcome.status = "identical"
        return outcome

    def _unverifiable(self) -> str:
        if self.plan.window is not None and self.plan.time.column is None:
            return "its windows run on processing time (no event-time column): no batch answer to compare"
        if self.plan.limit is not None or self.stmt.select.args.get("limit") is not None:
            return "LIMIT ends the stream after any n rows: no single batch answer to compare"
        return ""

    def _ordered(self) -> bool:
        return self.plan.window is None and self.stmt.select.args.get("order") is not None

    # ---- input ----------------------------------------------------------------------------------

    def _source_type(self) -> str:
        p = self.plan
        return p.source.type or self.base._infer_source_type(p.source.name, p)

    def _read_input(self, spec=None) -> list | None:
        """The source's (or input ``spec``'s) rows (tables) and partition ends in file order; None
        when unbounded."""
        p = self.plan
        stype = self._source_type()
        if spec is not None:
            p = dataclasses.replace(p, source=spec.source, time=spec.time)
            stype = spec.source.type or self.base._infer_source_type(spec.source.name, p)
        if stype == "table":
            name = p.source.options.get("table") or p.source.name
            rows = self.base.con.cursor().sql(f'SELECT * FROM "{name}"').to_arrow_table()
            rows = rows.append_column(PARTITION_COL, pa.array([0] * rows.num_rows, pa.int32()))
            return [rows.append_column(OFFSET_COL, pa.array(range(rows.num_rows), pa.int64()))]
        if stype != "file_source" or str(p.source.options.get("watch", False)).lower() in ("true", "1"):
            return None
        from .connectors.files import FileSource

        source = FileSource(p.source.name, p.source.options, self.base.con)
        try:
            # A record that cannot be read is a dead letter of the stream: left out of both sides.
            source.open(SourceContext(reject_fn=lambda *rejected: None))
        except DataError as exc:
            raise DataError(f"{p.location}: {exc}") from None  # the WITH clause is where to fix it
        try:
            if p.windowed:
                self.pieces = [piece[1] for piece in source.splits(1, False)]
            events = [source.schema.empty_table()]
            for e in source.read():
                if isinstance(e, pa.RecordBatch):
                    events.append(pa.Table.from_batches([e]))
                elif isinstance(e, PartitionEnd):
                    events.append(e)
        finally:
            source.close()
        return events

    def _on_time(self, events: list) -> tuple[pa.Table, pa.Table]:
        """Every row in file order and those on time, with ``__seq`` and (windowed) ``__et``."""
        p = self.plan
        table = pa.concat_tables([e for e in events if isinstance(e, pa.Table)])
        table = table.append_column(_SEQ, pa.array(range(table.num_rows), pa.int64()))
        if not p.windowed:
            return table, table
        col = next((c for c in table.column_names if c.lower() == p.time.column.lower()), None)
        if col is None:
            raise SqlError(
                f"event-time column {p.time.column!r} is not a column of source {p.source.name!r}",
                p.location,
            )
        table = table.append_column(_ET, event_time_us(table[col], p.time.format, col))
        # The watermark each row saw, by the runtime's rule, as V1 reads the files: in order,
        # each awaited until its first row when there are several.
        tracker = WatermarkTracker(p.time.lateness_us, None)
        if len(self.pieces) > 1:
            tracker.expect(self.pieces)
        seen, at = [], 0
        for e in events:
            if isinstance(e, PartitionEnd):
                tracker.end_partition(e.partition)
            elif e.num_rows:
                rows = table.slice(at, e.num_rows)
                at += e.num_rows
                valid = rows.filter(pc.is_valid(rows[_ET]))  # a NULL event time is a dead letter
                if valid.num_rows:
                    wm = tracker.observe(valid[_ET].combine_chunks(), valid[PARTITION_COL].combine_chunks())
                    seen.append(valid.append_column("__wm", wm))
        if not seen:
            return table, table.filter(pc.is_valid(table[_ET]))
        judged = pa.concat_tables(seen)
        con = duckdb.connect(config={"threads": 1})
        try:
            con.register("t", judged)
            late = con.sql(f"SELECT {W.late_condition(p.window)} AS late FROM t").to_arrow_table()["late"]
        finally:
            con.close()
        return table, judged.filter(pc.invert(late)).drop_columns(["__wm"])

    def _runs(self, on_time: pa.Table) -> list[tuple[Run, pa.Table | None]]:
        """Each run, with the arrival order of its rows when it is not the source's own."""
        n = on_time.num_rows
        sizes = [None, *(self._batch_size(n) for _ in range(self.splits))]
        runs = [(Run(proc, "file order", size), None) for proc in self.processors for size in sizes]
        lateness = self.plan.time.lateness_us
        if self.plan.windowed and lateness and not self.reads_system:
            for i in range(self.orders):
                arrival = self._shuffled(on_time)
                order = f"shuffled within {lateness / 1e6:g}s (order {i + 1})"
                runs += [(Run(proc, order, self._batch_size(n)), arrival) for proc in self.processors]
        return runs

    def _batch_size(self, n: int) -> int:
        return max(MIN_BATCH, n // self.rng.randint(2, 40) + 1)

    def _shuffled(self, on_time: pa.Table) -> pa.Table:
        """The on-time rows, each delayed by up to the lateness: none is late on arrival (the
        watermark a row sees is at most the largest earlier event time minus the lateness, and
        no earlier row's time exceeds the row's own plus the lateness)."""
        lateness = self.plan.time.lateness_us
        et = on_time[_ET].to_pylist()
        due = [t + self.rng.randint(0, lateness) for t in et]
        order = sorted(range(len(et)), key=lambda i: (due[i], i))
        shuffled = on_time.take(pa.array(order, pa.int64()))
        seq = shuffled.schema.get_field_index(_SEQ)
        return shuffled.set_column(seq, _SEQ, pa.array(range(len(order)), pa.int64()))

    # ---- the stream -----------------------------------------------------------------------------

    def _stream(self, run: Run, arrival: pa.Table | None) -> pa.Table:
        """The statement streamed as ``run`` says, into a Python sink (its sinks untouched)."""
        stmt, plan = self.stmt, self.plan
        name, src = plan.name, plan.source.name
        props = {k: v for k, v in stmt.properties.items() if not k.startswith(f"{name}.")}
        props[f"{name}.type"] = "python"
        props["processor"] = run.processor
        if run.batch_size is not None:
            props["max_batch_size"] = run.batch_size
            if arrival is None and self._source_type() == "file_source":
                props[f"{src}.batch_size"] = run.batch_size
        if arrival is not None:
            kept = (f"{src}.event.time.field", f"{src}.event.time.format")
            props = {k: v for k, v in props.items() if not k.startswith(f"{src}.") or k in kept}
            props[f"{src}.type"] = "python"
        annotations = {k: v for k, v in stmt.annotations.items() if k not in ("job_mode", "num_partitions")}
        changed = dataclasses.replace(
            stmt, properties=props, annotations=annotations, kind="table" if self.running else stmt.kind
        )
        engine = Engine(self.base.con.cursor())
        engine.config_path = self.base.config_path
        try:
            p = engine.plan_of(changed)
            if arrival is not None:
                user = [c for c in arrival.column_names if c not in (*_INTERNAL, PARTITION_COL, OFFSET_COL)]
                cuts = (
                    self.rng.sample(range(1, arrival.num_rows), min(4, arrival.num_rows - 1))
                    if arrival.num_rows > 1
                    else []
                )
                push_split(engine, src, arrival.select(user), cuts)
            (job,) = engine.deploy([p])
            if not job.wait(_TIMEOUT):
                raise JobError(f"the stream did not end within {_TIMEOUT:g}s")
            out = engine.pull(name)
        except JobError as exc:
            raise JobError(f"{plan.location}: {plan.name} ({run.describe()}): {exc}") from None
        finally:
            engine.close()
        return _last_per_key(out, p.sinks[0].key) if self.running else out

    # ---- batch SQL ------------------------------------------------------------------------------

    def _batch(self, rows: pa.Table) -> pa.Table:
        cur = self.base.con.cursor()
        try:
            return batch_answer(cur, self.stmt.select, self.plan, rows, keep_system=self.reads_system)
        except duckdb.Error as exc:
            raise SqlError(f"the SELECT as batch SQL failed: {exc}", self.plan.location) from None
        finally:
            cur.close()

    def keep_answer(self) -> None:
        """Store the batch answer as a table of the statement's name, for the statements after it."""
        if self.answer is None:
            return
        cur = self.base.con.cursor()
        try:
            cur.register("__verified", self.answer)
            cur.execute(f'CREATE OR REPLACE TABLE "{self.plan.name}" AS SELECT * FROM __verified')
        finally:
            cur.close()


class _StreamsCheck(_Check):
    """Verifying a statement over several streams (a join, a UNION ALL of streams) without a
    window: each run streams every input from its files at one batch size, and the batch answer
    is the SELECT over each stream's on-time rows (late: behind its own stream's watermark)."""

    def run(self, progress) -> Outcome:
        plan = self.plan
        outcome = Outcome(plan.name, plan.location, "skipped")
        outcome.note = self._unverifiable()
        if plan.window is not None:
            outcome.note = "a window over several streams: verify compares those without one so far"
        if outcome.note:
            return outcome
        inputs = []
        for spec in plan.inputs:
            events = self._read_input(spec)
            if events is None:
                outcome.note = f"its source {spec.source.name} is not bounded"
                return outcome
            inputs.append(self._judged(spec, events))
        outcome.late_rows = sum(n for _, n in inputs)
        self.answer = self._batch_of([t for t, _ in inputs])
        outcome.columns, outcome.rows = self.answer.column_names, self.answer.num_rows
        n = max(t.num_rows for t, _ in inputs)
        for size in [None, *(self._batch_size(n) for _ in range(self.splits))]:
            for proc in self.processors:
                run = Run(proc, "file order", size)
                if progress is not None:
                    progress(f"{plan.name}: {run.describe()}")
                if not outcome.compare(run, self._stream_all(run), self.answer):
                    return outcome
        outcome.status = "identical"
        return outcome

    def _judged(self, spec, events: list) -> tuple[pa.Table, int]:
        """An input's on-time rows (a join's: not behind its own stream's watermark, by the
        runtime's rule) and how many were late."""
        table = pa.concat_tables([e for e in events if isinstance(e, pa.Table)])
        col = spec.time.column
        if col is None or self.plan.shape != "join":
            return table, 0
        name = next((c for c in table.column_names if c.lower() == col.lower()), col)
        et = event_time_us(table[name], spec.time.format, name)
        tracker = WatermarkTracker(spec.time.lateness_us, None)
        keep, at = [], 0
        for e in events:
            if isinstance(e, PartitionEnd):
                tracker.end_partition(e.partition)
            elif e.num_rows:
                part_et = et.slice(at, e.num_rows)
                wm = tracker.observe(part_et, table[PARTITION_COL].slice(at, e.num_rows).combine_chunks())
                keep.append(pc.and_(pc.is_valid(part_et), pc.greater_equal(part_et, wm)))
                at += e.num_rows
        mask = pa.concat_arrays([k.combine_chunks() if hasattr(k, "combine_chunks") else k for k in keep])
        on_time = table.filter(mask)
        return on_time, table.num_rows - on_time.num_rows

    def _batch_of(self, tables: list[pa.Table]) -> pa.Table:
        """The SELECT as batch SQL with each stream read from its on-time rows."""
        cur = self.base.con.cursor()
        query = self.stmt.select.copy()
        refs = {c.name.lower() for c in query.find_all(exp.Column)}
        try:
            for i, (spec, rows) in enumerate(zip(self.plan.inputs, tables)):
                hidden = [c for c in (PARTITION_COL, OFFSET_COL) if c in rows.column_names and c not in refs]
                cur.register(f"__verify_rows{i}", rows.drop_columns(hidden))
                for table in list(query.find_all(exp.Table)):
                    if table.name.lower() == spec.source.name and not table.args.get("db"):
                        alias = table.alias or table.name
                        table.set("this", exp.to_identifier(f"__verify_rows{i}"))
                        table.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
            return cur.sql(query.sql(dialect="duckdb")).to_arrow_table()
        except duckdb.Error as exc:
            raise SqlError(f"the SELECT as batch SQL failed: {exc}", self.plan.location) from None
        finally:
            cur.close()

    def _stream_all(self, run: Run) -> pa.Table:
        """The statement streamed from its files as ``run`` says, into a Python sink."""
        stmt, plan = self.stmt, self.plan
        props = {k: v for k, v in stmt.properties.items() if not k.startswith(f"{plan.name}.")}
        props[f"{plan.name}.type"] = "python"
        props["processor"] = run.processor
        if run.batch_size is not None:
            props["max_batch_size"] = run.batch_size
            for spec in plan.inputs:
                if spec.source.type == "file_source":
                    props[f"{spec.source.name}.batch_size"] = run.batch_size
        annotations = {k: v for k, v in stmt.annotations.items() if k not in ("job_mode", "num_partitions")}
        engine = Engine(self.base.con.cursor())
        engine.config_path = self.base.config_path
        try:
            p = engine.plan_of(dataclasses.replace(stmt, properties=props, annotations=annotations))
            (job,) = engine.deploy([p])
            if not job.wait(_TIMEOUT):
                raise JobError(f"the stream did not end within {_TIMEOUT:g}s")
            return engine.pull(plan.name)
        except JobError as exc:
            raise JobError(f"{plan.location}: {plan.name} ({run.describe()}): {exc}") from None
        finally:
            engine.close()


def batch_answer(
    con: duckdb.DuckDBPyConnection,
    select: exp.Expression,
    plan: StreamPlan,
    rows: pa.Table,
    *,
    keep_system: bool = False,
) -> pa.Table:
    """``select`` (a streaming statement's SELECT) as DuckDB batch SQL over ``rows``.

    ``rows`` are the source's rows in arrival order with ``__seq`` (arrival index) and, for a
    windowed ``plan``, ``__et`` (event time in µs). Per window as the module docstring says. The
    system columns ``_partition`` and ``_offset`` are the source's only with ``keep_system``.
    """
    con.register("__verify_rows", rows)
    hidden = [
        c
        for c in rows.column_names
        if c in _INTERNAL or (not keep_system and c in (PARTITION_COL, OFFSET_COL))
    ]
    source = plan.source.name
    query = select.copy()
    references = 0
    for table in list(query.find_all(exp.Table)):
        if table.name.lower() == source and not table.args.get("db"):
            references += 1
            alias = table.alias or table.name
            table.set("this", exp.to_identifier("__verify_input"))
            table.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
    window = plan.window
    if window is None:
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW __verify_input AS SELECT * EXCLUDE ({_names(hidden)}) FROM __verify_rows"
        )
        return con.sql(query.sql(dialect="duckdb")).to_arrow_table()
    con.execute(f"CREATE OR REPLACE TEMP TABLE __verify_windows AS {_windowed(query, plan)}")
    hidden = _names([*hidden, "__ws", _WID, *(("__sid", "__ss", "__se") if window.kind == "session" else ())])
    group = query.args.get("group") if isinstance(query, exp.Select) else None
    if (
        aggregating(query)
        and references == 1
        and not query.find(exp.Window)
        and not (group is not None and group.args.get("all"))
    ):
        # One query: the windows are groups too.
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW __verify_input AS SELECT * EXCLUDE ({hidden}) FROM __verify_windows"
        )
        query.group_by("_window_start", "_window_end", copy=False)
        return con.sql(query.sql(dialect="duckdb")).to_arrow_table()
    parts = []
    for (wid,) in con.sql(f"SELECT DISTINCT {_WID} FROM __verify_windows ORDER BY 1").fetchall():
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW __verify_input AS SELECT * EXCLUDE ({hidden}) FROM __verify_windows "
            f"WHERE {_WID} = {wid} ORDER BY {_SEQ}"
        )
        parts.append(con.sql(query.sql(dialect="duckdb")).to_arrow_table())
    if not parts:  # no window: the answer's columns, from an empty input
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW __verify_input AS SELECT * EXCLUDE ({hidden}) FROM __verify_windows WHERE FALSE"
        )
        return con.sql(query.sql(dialect="duckdb")).to_arrow_table()
    return pa.concat_tables(parts)


def _windowed(query: exp.Expression, plan: StreamPlan) -> str:
    """The rows once per window holding them, with ``_window_start``/``_window_end``, the
    window's start ``__ws`` and a number ``__wid`` per window, in arrival order."""
    w = plan.window
    if w.kind == "session":
        where = query.args.get("where") if isinstance(query, exp.Select) else None
        group = query.args.get("group") if isinstance(query, exp.Select) else None
        keys = [_unqualified(k).sql(dialect="duckdb") for k in (group.expressions if group else [])]
        alias = plan.source.alias
        kept = f" WHERE {where.this.sql(dialect='duckdb')}" if where is not None else ""
        # Sessions form from the rows the WHERE keeps, per GROUP BY key.
        rel = f'(SELECT * FROM __verify_rows AS "{alias}"{kept})'
        sessions = W.sessionize(rel, keys, w.size_us)
        order = ", ".join([*keys, "__sid"])
        return f"SELECT *, __ss AS __ws, dense_rank() OVER (ORDER BY {order}) AS {_WID} FROM ({sessions}) ORDER BY {_SEQ}"
    if w.kind == "tumbling":
        extra_from, start, extra_where = "", W.tumbling_start(w), ""
    else:
        extra_from, start, extra_where = W.sliding_relation(w)
    rows = f"SELECT __verify_rows.*, {start} AS __ws FROM __verify_rows{extra_from} WHERE {_ET} IS NOT NULL{extra_where}"
    return (
        f"SELECT *, make_timestamp(__ws) AS _window_start, make_timestamp(__ws + {w.size_us}) AS _window_end, "
        f"dense_rank() OVER (ORDER BY __ws) AS {_WID} FROM ({rows}) ORDER BY __ws, {_SEQ}"
    )


def _unqualified(node: exp.Expression) -> exp.Expression:
    """``node`` with its columns' table qualifiers removed (they name the source's alias)."""
    node = node.copy()
    for column in list(node.find_all(exp.Column)):
        column.set("table", None)
    return node


def _names(columns: list[str]) -> str:
    return ", ".join(f'"{c}"' for c in columns)


def _rows(table: pa.Table) -> list[tuple]:
    return list(zip(*(col.to_pylist() for col in table.columns))) if table.num_columns else []


def _last_per_key(out: pa.Table, key: tuple[str, ...]) -> pa.Table:
    """The last row of each key (the whole table's last row without a key)."""
    names = [n.lower() for n in out.column_names]
    idx = [names.index(k.lower()) for k in key if k.lower() in names]
    last: dict[tuple, int] = {}
    for i, row in enumerate(_rows(out.select(idx)) if idx else [()] * out.num_rows):
        last[row] = i
    return out.take(pa.array(sorted(last.values()), pa.int64()))


def _norm(value):
    """A value as compared: exact decimals and floats to 10 significant digits, NaN equal to NaN."""
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else float(f"{value:.10g}")
    if isinstance(value, list):
        return tuple(_norm(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _norm(v)) for k, v in value.items())
    return value


def differences(actual: list[tuple], expected: list[tuple], *, ordered: bool = False) -> tuple[list, list]:
    """(rows ``expected`` has and ``actual`` lacks, rows ``actual`` has and ``expected`` lacks),
    as multisets; ``ordered``: from the first position where the two sequences differ."""
    a = [tuple(_norm(v) for v in row) for row in actual]
    e = [tuple(_norm(v) for v in row) for row in expected]
    if ordered:
        first = next((i for i, (x, y) in enumerate(zip(a, e)) if x != y), min(len(a), len(e)))
        return e[first:], a[first:]
    return _minus(e, a), _minus(a, e)


def rounding_only(missing: list[tuple], extra: list[tuple]) -> int:
    """How many values differ when the rows that differ pair up and differ only in floating-point
    values, each by at most one unit of its last decimal digit; 0 otherwise.

    Floating-point addition is not associative: a sum (or average) of DOUBLEs added up micro-batch
    by micro-batch can differ from DuckDB's sum in its last bit, and ROUND(…, 2) of a value at
    x.xx5 turns that bit into 0.01. Such a result is as right as the batch one; verify reports it
    apart from real differences."""
    if not missing or len(missing) != len(extra):
        return 0
    count = 0
    for want, got in zip(sorted(missing, key=repr), sorted(extra, key=repr)):
        if len(want) != len(got):
            return 0
        for a, b in zip(want, got):
            if a == b:
                continue
            if not (isinstance(a, float) and isinstance(b, float)):
                return 0
            digits = max(_decimals(a), _decimals(b))
            if abs(a - b) > 10.0**-digits * (1 + 1e-9):
                return 0
            count += 1
    return count


def _decimals(value: float) -> int:
    text = repr(value)
    return len(text.split(".", 1)[1]) if "." in text and "e" not in text else 0


def _minus(rows: list[tuple], other: list[tuple]) -> list[tuple]:
    """The rows of ``rows`` not matched by one of ``other`` (multisets), in ``rows``' order."""
    left = Counter(other)
    out = []
    for row in rows:
        if left[row] > 0:
            left[row] -= 1
        else:
            out.append(row)
    return out
