"""Statements no specialised operator reads, planned as the user's whole SELECT.

Three ways, chosen by :func:`choose` from the statement's :class:`~.constructs.Constructs`:

* **per micro-batch** (shape ``project``): the stream's rows pass through per-row steps only, so
  the SELECT over each micro-batch gives that micro-batch's share of the result;
* **distinct** (shape ``distinct``): ``SELECT DISTINCT`` over such a body, the first occurrence
  of each distinct row passing;
* **general** (shape ``general``): the whole SELECT over the on-time rows of each closed window,
  or over every row at the end of a bounded input.

EMIT CHANGES of a statement that only the general operator can run has no incremental form: it is
refused here, naming the construct and the alternatives.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from ..errors import Location, SqlError
from ..sql.statements import WindowSpec
from . import sqlgen
from . import windows as W
from .constructs import SYSTEM_COLUMNS, WINDOW_COLUMNS, Constructs, stream_tables
from .operators import DistinctSpec, GeneralSpec, ProjectSpec

_PLACEHOLDER = "__velosql_stream"  # stands for the stream's rows while the SQL is generated


@dataclass(frozen=True)
class GeneralPlan:
    """What the planner takes from here: the shape, its SQL and its operator spec (or None)."""

    shape: str
    sql: sqlgen.ShapeSQL
    operator: GeneralSpec | DistinctSpec | ProjectSpec | None
    limit: int | None


def choose(
    select: exp.Expression,
    stream: str,
    found: Constructs,
    window: WindowSpec | None,
    emit: str,
    loc: Location,
) -> GeneralPlan:
    """Plan ``select``, which has constructs the specialised operators do not read."""
    batch_rows = relation("__in", window is not None, found.references, bounds=False)
    reference = over(select, stream, batch_rows)
    if window is None and found.stateless:
        limit = top_limit(select)
        project = over(without_limit(select), stream, batch_rows)
        sql = sqlgen.ShapeSQL(project=project, reference=reference, project_orderable=False)
        return GeneralPlan("project", sql, ProjectSpec(project), limit)
    if window is None and found.distinct:
        body = select.copy()
        body.set("distinct", None)
        limit = top_limit(body)
        rows = over(without_limit(body), stream, batch_rows)
        return GeneralPlan("distinct", sqlgen.ShapeSQL(reference=reference), DistinctSpec(rows), limit)
    if emit == "changes" and window is None:
        bounded = (
            "; or bound the window function: OVER (ROWS WINDOW BUFFER <n> ROWS PARTITION BY …) "
            "gives one row per input row"
            if found.general[0] == "a window function OVER (…)"
            else ""
        )
        raise SqlError(
            f"EMIT CHANGES cannot run {found.general[0]}: it has no incremental form (its result for "
            "the rows so far is not an update of the result before). Add a WINDOW (the SELECT then "
            "runs over each closed window's rows) or write EMIT FINAL (it runs once when the input "
            f"ends){bounded}",
            loc,
        )
    if emit == "changes":
        raise SqlError(
            f"EMIT CHANGES cannot run {found.general[0]} over a window: its rows are known only when "
            "the window closes; write EMIT FINAL",
            loc,
        )
    if window is None:
        rows = relation("__gbuf", False, found.references, bounds=False)
        spec = GeneralSpec(select=over(select, stream, rows), window=None, why=found.general)
        return GeneralPlan("general", sqlgen.ShapeSQL(reference=reference), spec, None)
    spec = (_sessions if window.kind == "session" else _windows)(select, stream, found, window, loc)
    late = f"SELECT * FROM __in WHERE {W.late_condition(window)}"
    return GeneralPlan("general", sqlgen.ShapeSQL(reference=reference, late=late), spec, None)


def _windows(select, stream: str, found: Constructs, window: WindowSpec, loc: Location) -> GeneralSpec:
    """The general operator over TUMBLING or SLIDING windows: the SELECT over each closed
    window's rows, a row forgotten when its last window closed."""
    rows = relation("__gbuf", True, found.references, bounds=True)
    return GeneralSpec(
        select=over(select, stream, rows),
        window=window,
        why=found.general,
        on_time=f"NOT {W.late_condition(window)}",
        starts=W.starts_sql(window, "__gbuf"),
        evict=f"DELETE FROM $BUF WHERE {W.last_end(window)} <= $WM",
    )


def _sessions(select, stream: str, found: Constructs, window: WindowSpec, loc: Location) -> GeneralSpec:
    """The general operator over SESSION windows: sessions per GROUP BY key of the outermost
    SELECT (over the whole stream when it has none), the SELECT run over each closed session's
    rows."""
    keys = []
    if isinstance(select, exp.Select) and select.args.get("group") is not None:
        keys = [unqualified(k) for k in sqlgen.group_keys(select, loc)]
    sessions = W.sessionize("__gbuf", keys, window.size_us)
    on_time = f"NOT {W.late_condition(window)}"
    kept = _session_filter(select, stream)
    if kept is not None:  # sessions form from the rows the statement keeps, as in batch SQL
        on_time = f"({kept}) AND {on_time}"
    order = ", ".join(["__ss", "__se", *keys])
    hidden = ["__seq", "__et", "__wm", "__ss", "__se", "__sid", "__sn"]
    hidden += [c for c in (*SYSTEM_COLUMNS, *WINDOW_COLUMNS) if c not in found.references]
    rows = f"(SELECT * EXCLUDE ({', '.join(hidden)}) FROM __gsess WHERE __sn = $SN)"
    return GeneralSpec(
        select=over(select, stream, rows),
        window=window,
        why=found.general,
        on_time=on_time,
        close=(
            f"CREATE OR REPLACE TEMP TABLE __gsess AS SELECT *, dense_rank() OVER (ORDER BY {order}) AS __sn "
            f"FROM ({sessions}) WHERE {W.session_closed(window)} ORDER BY __sn, __seq"
        ),
        keep=(
            "CREATE OR REPLACE TEMP TABLE __gbuf AS SELECT * EXCLUDE (__ss, __se, __sid, _window_start, "
            f"_window_end) FROM ({sessions}) WHERE NOT ({W.session_closed(window)}) ORDER BY __seq"
        ),
    )


def _session_filter(select: exp.Expression, stream: str) -> str | None:
    """The WHERE of an outermost SELECT that reads the stream alone (no join, no subquery in
    the condition), as SQL over the stream's rows; None otherwise (sessions then form from
    every on-time row)."""
    if not isinstance(select, exp.Select) or select.args.get("joins") or select.args.get("where") is None:
        return None
    from_ = select.args.get("from_")
    table = from_.this if from_ is not None else None
    if not (isinstance(table, exp.Table) and table.name.lower() == stream):
        return None
    where = select.args["where"].this
    if any(isinstance(n, (exp.Subquery, exp.Exists)) for n in where.walk()):
        return None
    return unqualified(where)


def unqualified(key: exp.Expression) -> str:
    """A GROUP BY key as SQL over the buffered rows (no table or alias qualifies a column there)."""
    return (
        key.copy()
        .transform(lambda n: exp.column(n.name, quoted=True) if isinstance(n, exp.Column) else n)
        .sql("duckdb")
    )


def relation(table: str, windowed: bool, references: frozenset[str], bounds: bool) -> str:
    """The stream's rows as the user's SELECT reads them from ``table``: the source's columns,
    the system columns the statement names, and (``bounds``) the rows of the window
    ``[$WS, $WE)`` with its bounds as ``_window_start``/``_window_end`` where named."""
    hidden = ["__seq", *(("__et", "__wm") if windowed else ())]
    hidden += [c for c in SYSTEM_COLUMNS if c not in references]
    extra = where = ""
    if windowed and bounds:
        named = [c for c in WINDOW_COLUMNS if c in references]
        extra = "".join(f", make_timestamp(${'WS' if c == '_window_start' else 'WE'}) AS {c}" for c in named)
        where = " WHERE __et >= $WS AND __et < $WE"
    return f"(SELECT * EXCLUDE ({', '.join(hidden)}){extra} FROM {table}{where})"


def over(select: exp.Expression, stream: str, rows: str) -> str:
    """``select`` as SQL with every read of the stream reading ``rows`` instead (aliases kept)."""
    return over_streams(select, {stream: rows})


def over_streams(select: exp.Expression, rows: dict[str, str]) -> str:
    """``select`` as SQL with every read of each stream reading its ``rows`` (aliases kept)."""
    copy = select.copy()
    marks = {}
    for i, (stream, sql) in enumerate(rows.items()):
        mark = f"{_PLACEHOLDER}{i}_"
        marks[mark] = sql
        for table in stream_tables(copy, stream):
            table.replace(exp.to_table(mark).as_(table.alias or table.name, quoted=True))
    text = copy.sql("duckdb")
    for mark, sql in marks.items():
        text = text.replace(mark, sql)
    return text


def top_limit(select: exp.Expression) -> int | None:
    limit = select.args.get("limit")
    if limit is None or not isinstance(limit.expression, exp.Literal):
        return None
    return int(limit.expression.name)


def without_limit(select: exp.Expression) -> exp.Expression:
    """The statement without its outermost LIMIT: the job stops after that many rows itself."""
    if select.args.get("limit") is None:
        return select
    copy = select.copy()
    copy.set("limit", None)
    return copy
