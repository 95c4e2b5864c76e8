"""The DuckDB SQL each query shape runs, generated once per statement at plan time.

Every statement reads its micro-batch as ``__in``: the source's columns, ``_partition``,
``_offset``, the arrival sequence ``__seq`` and, for windowed queries, event time ``__et`` and the
watermark each row saw ``__wm`` (see :mod:`velosql.runtime.watermark`). Aggregate state lives in the
job connection's temporary table ``__state``. ``$WM`` in emission SQL is replaced by the watermark.

The *reference* SQL of a statement is the same query as plain DuckDB batch SQL over ``__in``; the
runtime runs it on an empty batch to learn the output column names and types DuckDB itself would
give, and ``velosql verify`` runs it over a whole input to check the streaming result.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from sqlglot import exp

from ..errors import Location, SqlError
from ..sql.deep import deep_call
from ..sql.statements import WindowSpec
from . import windows as W
from .aggregates import SEQ, AggSpec, aggregate_name, decompose, in_arrival_order, is_aggregate

SYSTEM = ("_partition", "_offset")
WINDOW_COLUMNS = ("_window_start", "_window_end")
ANALYTIC = {"lag", "row_number", "count", "sum", "avg", "mean", "min", "max", "first_value", "last_value"}


@dataclass(frozen=True)
class Query:
    """A SELECT analysed for streaming: its shape, keys, aggregates and rewritten clauses."""

    shape: str
    alias: str
    from_sql: str
    where_sql: str
    key_sql: tuple[str, ...]
    key_names: tuple[str, ...]
    aggregates: tuple[AggSpec, ...]
    items: tuple[str, ...]  # final select items over __k*/__ws/__we/__a* (aggregate, session)
    having_sql: str | None
    order_sql: str | None
    limit: int | None
    project_sql: str  # the projection (project shape) or the reference query (others)
    buffer_rows: int = 0
    buffer_keys: tuple[str, ...] = ()
    buffered_windows: tuple[str, ...] = ()
    plain_from: bool = False  # FROM the source alone: no join, no subquery
    local: bool = False  # reads no table but the source (so a V2 worker can run it on its own)


@dataclass(frozen=True)
class ShapeSQL:
    """The SQL a shape runs. Empty strings where a statement does not need that step."""

    project: str = ""
    partial: str = ""
    partial_all: str = ""  # the partial without the late-row filter, for batches with no late row
    late: str = ""
    emit: str = ""
    changes: str = ""
    running_input: str = ""  # EMIT CHANGES fast path: keys, __seq and arguments of the batch's rows
    running_output: str = ""  # … and the change rows from their running partials (__b)
    # … and when the change rows can be finished in Arrow: each output item as ("k", i) for key i
    # or ("a", i) for aggregate i, the source columns of the keys and arguments when they are bare
    # columns of the source with no WHERE (else the running input comes from running_input), and
    # the combined state of the keys in __keys.
    running_items: tuple[tuple[str, int], ...] = ()
    running_columns: tuple[str, ...] = ()
    running_state: str = ""
    state_update: str = ""
    # The partial aggregate as pyarrow can compute it (runtime/arrow_partials.py), when every key
    # and argument is a bare source column, no WHERE applies and each partial form is COUNT(*),
    # COUNT, SUM, MIN or MAX: the key columns, and (part column, function, argument column or
    # None) per partial column. None otherwise.
    arrow_partial: tuple[tuple[str, ...], tuple[tuple[str, str, str | None], ...]] | None = None
    # V2: the key columns rows are routed by, one row per row of __in ("" without keys or when the
    # FROM is more than the source), and whether the statements read no table but the source.
    route_keys: str = ""
    # Each routing key's lower-cased name where it is a bare column, else None.
    route_key_columns: tuple[str | None, ...] = ()
    local: bool = False
    evict: str = ""
    # Whether ``emit`` orders its rows (the query's ORDER BY): then it runs on the whole state,
    # not on each V2 worker's share of the groups.
    emit_ordered: bool = False
    # Whether the projection's outermost SELECT reads ``__in`` itself, so that a V2 job can add
    # each row's arrival sequence to it and put a split micro-batch's rows back in order.
    project_orderable: bool = True
    buffer_insert: str = ""
    session_emit: str = ""
    session_keep: str = ""
    reference: str = ""


def _sql(node: exp.Expression) -> str:
    return node.sql("duckdb")


def _col(name: str) -> exp.Column:
    return exp.column(name, quoted=True)


def analyse(select: exp.Select, source: exp.Table, window: WindowSpec | None, loc: Location) -> Query:
    """Classify ``select`` and rewrite its clauses for the runtime; errors name ``loc``."""
    select = select.copy()
    src = next(t for t in select.find_all(exp.Table) if t.name.lower() == source.name.lower())
    alias = source.alias_or_name
    replacement = exp.to_table("__in")
    replacement.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
    src.replace(replacement)
    from_ = select.args.get("from_")
    from_sql = "FROM " + _sql(from_.this) + "".join(" " + _sql(j) for j in select.args.get("joins") or [])
    where = select.args.get("where")
    where_sql = _sql(where.this) if where else "TRUE"
    limit_node = select.args.get("limit")
    limit = int(limit_node.expression.name) if limit_node is not None else None

    has_agg = any(is_aggregate(n) for item in select.expressions for n in item.walk())
    group = select.args.get("group")
    has_windows = select.find(exp.Window) is not None
    plain = not select.args.get("joins") and isinstance(from_.this, exp.Table) and from_.this.name == "__in"
    ctes = {c.alias_or_name for c in select.find_all(exp.CTE)}
    local = all(t.name == "__in" or t.name in ctes for t in select.find_all(exp.Table)) and not any(
        isinstance(t.this, exp.Anonymous) for t in select.find_all(exp.Table)
    )
    if group is not None or has_agg:
        if has_windows:
            raise SqlError("window functions (OVER …) cannot be combined with GROUP BY or aggregates", loc)
        q = _analyse_grouped(select, alias, from_sql, where_sql, window, loc, limit)
        return dataclasses.replace(q, plain_from=plain, local=local)
    if has_windows:
        q = _analyse_buffered(select, from_sql, where_sql, loc, limit, alias)
        return dataclasses.replace(q, plain_from=plain, local=local)
    items = [_expand_star(i, (*SYSTEM, SEQ)) for i in select.expressions]
    project = f"SELECT {', '.join(_sql(i) for i in items)} {from_sql} WHERE {where_sql}"
    order = select.args.get("order")
    return Query(
        shape="project", alias=alias, from_sql=from_sql, where_sql=where_sql, key_sql=(), key_names=(),
        aggregates=(), items=tuple(_sql(i) for i in items), having_sql=None,
        order_sql=_sql(order) if order else None, limit=limit, project_sql=project, plain_from=plain,
        local=local,
    )  # fmt: skip


def _expand_star(item: exp.Expression, hidden: tuple[str, ...]) -> exp.Expression:
    """``*`` → ``* EXCLUDE (system and internal columns)``: batch SQL over the input has none."""
    star = item.this if isinstance(item, exp.Column) and isinstance(item.this, exp.Star) else item
    if not isinstance(star, exp.Star):
        return item
    excluded = list(star.args.get("except_") or [])
    names = {c.name.lower() for c in excluded}
    excluded += [_col(c) for c in hidden if c not in names]
    star.set("except_", excluded)
    return item


# ---- grouped queries ----------------------------------------------------------------------------


def group_keys(select: exp.Select, loc: Location) -> list[exp.Expression]:
    group = select.args.get("group")
    if group is None:
        return []
    if group.args.get("all"):
        return [
            i.unalias()
            for i in select.expressions
            if not any(is_aggregate(n) for n in i.walk()) and not _is_window_col(i.unalias())
        ]
    aliases = {i.alias.lower(): i.unalias() for i in select.expressions if i.alias}
    keys = []
    for g in group.expressions:
        if isinstance(g, exp.Literal) and g.is_int:
            n = int(g.name)
            if not 1 <= n <= len(select.expressions):
                raise SqlError(f"GROUP BY {n}: there are {len(select.expressions)} select items", loc)
            keys.append(select.expressions[n - 1].unalias())
        elif (
            isinstance(g, exp.Column)
            and not g.table
            and g.name.lower() in aliases
            and not isinstance(aliases[g.name.lower()], exp.Column)
        ):
            keys.append(aliases[g.name.lower()])
        else:
            keys.append(g)
    return [k for k in keys if not _is_window_col(k)]


def _is_window_col(node: exp.Expression) -> bool:
    return isinstance(node, exp.Column) and node.name.lower() in WINDOW_COLUMNS


class _Rewriter:
    """Replaces keys, aggregates and window columns in select/HAVING/ORDER BY expressions."""

    def __init__(self, keys, window, loc, session=False, keep_aggs=False):
        self.keys = keys
        self.key_sql = {_sql(k): i for i, k in enumerate(keys)}
        self.key_cols = {k.name.lower(): i for i, k in enumerate(keys) if isinstance(k, exp.Column)}
        self.window, self.loc, self.session, self.keep_aggs = window, loc, session, keep_aggs
        self.aggs: dict[str, AggSpec] = {}
        self.output_aliases: set[str] = set()

    def __call__(self, node: exp.Expression, allow_aliases: bool = False) -> exp.Expression:
        def fn(n: exp.Expression) -> exp.Expression:
            text = _sql(n)
            if text in self.key_sql and not self.keep_aggs:
                return _col(f"__k{self.key_sql[text]}")
            if is_aggregate(n):
                if self.keep_aggs:
                    return n
                if text not in self.aggs:
                    self.aggs[text] = decompose(n, len(self.aggs), self.loc)
                return _col(self.aggs[text].id)
            if isinstance(n, exp.Column) and not isinstance(n.this, exp.Star):
                name = n.name.lower()
                if name in WINDOW_COLUMNS:
                    return self._window_column(name)
                if self.keep_aggs:
                    return n
                if name in self.key_cols:
                    return _col(f"__k{self.key_cols[name]}")
                if allow_aliases and name in self.output_aliases:
                    return n
                raise SqlError(
                    f"column {_sql(n)} must appear in the GROUP BY clause or be used in an "
                    "aggregate function",
                    self.loc,
                )
            if isinstance(n, exp.Star) and not self.keep_aggs:
                raise SqlError("SELECT * cannot be used with GROUP BY or aggregates", self.loc)
            return n

        return node.copy().transform(fn)

    def _window_column(self, name: str) -> exp.Expression:
        if self.window is None:
            raise SqlError(f"{name} needs a WINDOW clause", self.loc)
        if self.session:
            col = "__ss" if name == "_window_start" else "__se"
        else:
            col = "__ws" if name == "_window_start" else W.window_end(self.window)
        return exp.maybe_parse(f"make_timestamp({col})", dialect="duckdb")


def _analyse_grouped(select, alias, from_sql, where_sql, window, loc, limit) -> Query:
    session = window is not None and window.kind == "session"
    if session:  # its rows are sorted by event time to find the sessions
        select = in_arrival_order(select)
    keys = group_keys(select, loc)
    rw = _Rewriter(keys, window, loc, session=session, keep_aggs=session)
    rw.output_aliases = {i.alias.lower() for i in select.expressions if i.alias}
    items, names = [], []
    for i, item in enumerate(select.expressions):
        out = rw(item.unalias())
        names.append(item.alias or (item.name if isinstance(item, exp.Column) else ""))
        items.append(f'{_sql(out)} AS "{item.alias or f"__o{i}"}"')
    having = select.args.get("having")
    having_sql = _sql(rw(having.this)) if having else None
    order = select.args.get("order")
    order_sql = _sql(rw(order, allow_aliases=True)) if order else None
    key_names = tuple(_key_name(k, select) for k in keys)
    reference = _reference(select, keys, alias, from_sql, where_sql, window)
    return Query(
        shape="session" if session else "aggregate", alias=alias, from_sql=from_sql, where_sql=where_sql,
        key_sql=tuple(_sql(k) for k in keys), key_names=tuple(n for n in key_names if n),
        aggregates=tuple(rw.aggs.values()), items=tuple(items), having_sql=having_sql,
        order_sql=order_sql, limit=limit, project_sql=reference,
    )  # fmt: skip


def _key_name(key: exp.Expression, select: exp.Select) -> str | None:
    for item in select.expressions:
        if _sql(item.unalias()) == _sql(key) or (
            isinstance(key, exp.Column) and isinstance(item.unalias(), exp.Column)
            and item.unalias().name.lower() == key.name.lower()
        ):  # fmt: skip
            return (item.alias or item.unalias().name).lower()
    return None


def _window_relation(window: WindowSpec | None) -> tuple[str, str, str]:
    """(extra FROM, window start SQL, extra WHERE) that assign each row to its window(s)."""
    if window is None:
        return "", "", ""
    if window.kind == "tumbling":
        return "", W.tumbling_start(window), ""
    if window.kind == "sliding":
        return W.sliding_relation(window)
    return "", "", ""


def _reference(select, keys, alias, from_sql, where_sql, window) -> str:
    """The statement as batch SQL over ``__in`` (window bounds as real columns)."""
    ref = select.copy()
    if window is not None and window.kind != "session":
        extra_from, start, extra_where = _window_relation(window)
        inner = (
            f"(SELECT __in.*, make_timestamp({start}) AS _window_start, "
            f"make_timestamp({W.window_end(window, start)}) AS _window_end "
            f"FROM __in{extra_from} WHERE TRUE{extra_where})"
        )
    elif window is not None:
        inner = f"({_sessionize('__in', keys, window)})"
    else:
        return _sql(ref)
    table = next(t for t in ref.find_all(exp.Table) if t.name == "__in")
    wrapped = exp.maybe_parse(f"SELECT * FROM {inner} AS {alias}", dialect="duckdb")
    table.replace(wrapped.args["from_"].this)
    group = exp.Group(
        expressions=[k.copy() for k in keys] + [exp.column("_window_start"), exp.column("_window_end")]
    )
    ref.set("group", group)
    return _sql(ref)


def _sessionize(rel: str, keys, window: WindowSpec) -> str:
    return W.sessionize(rel, [_sql(k) for k in keys], window.size_us)


# ---- ROWS WINDOW BUFFER -------------------------------------------------------------------------


def _analyse_buffered(select, from_sql, where_sql, loc, limit, alias) -> Query:
    """``f(…) OVER (ROWS WINDOW BUFFER n ROWS PARTITION BY …)``: each window becomes ``__w<i>``,
    evaluated over the buffered rows plus the batch in arrival order."""
    select = select.copy()
    sizes: list[int] = []
    keys_sql: list[str] | None = None
    wins: list[str] = []
    for i, w in enumerate(list(select.find_all(exp.Window))):
        n = w.meta.get("buffer_rows")
        if n is None:
            raise SqlError(
                "window functions over a stream need a bounded buffer: write "
                "OVER (ROWS WINDOW BUFFER <n> ROWS PARTITION BY …)",
                loc,
            )
        part = [_sql(p) for p in w.args.get("partition_by") or []]
        if keys_sql is not None and part != keys_sql:
            raise SqlError("all ROWS WINDOW BUFFER functions of a query must use the same PARTITION BY", loc)
        keys_sql = part
        fn = w.this
        name = (fn.name if isinstance(fn, exp.Anonymous) else fn.sql("duckdb").split("(")[0]).lower()
        if name not in ANALYTIC and aggregate_name(fn) not in ANALYTIC:
            raise SqlError(
                f"{fn.sql('duckdb')} is not available over ROWS WINDOW BUFFER: use LAG, ROW_NUMBER, "
                "FIRST_VALUE, LAST_VALUE, COUNT, SUM, AVG, MIN or MAX",
                loc,
            )
        sizes.append(int(n))
        partition = _partition_by(part)
        if name == "row_number":
            expr = f"({_absolute_row_number(partition)})"
        elif name == "lag":
            expr = f"{_sql(fn)} OVER ({partition}ORDER BY {SEQ})"
        else:  # aggregates and FIRST/LAST_VALUE see the last n rows of their key
            expr = f"{_sql(fn)} OVER ({partition}ORDER BY {SEQ} ROWS BETWEEN {int(n) - 1} PRECEDING AND CURRENT ROW)"
        wins.append(f"{expr} AS __w{i}")
        w.replace(_col(f"__w{i}"))
    hidden = (*SYSTEM, SEQ, "__rn", "__old", *(f"__w{i}" for i in range(len(wins))))
    items = [_expand_star(i, hidden) for i in select.expressions]
    return Query(
        shape="buffered", alias=alias, from_sql=from_sql, where_sql=where_sql, key_sql=tuple(keys_sql or ()),
        key_names=(), aggregates=(), items=tuple(_sql(i) for i in items), having_sql=None,
        order_sql=None, limit=limit, project_sql="", buffer_rows=max(sizes),
        buffer_keys=tuple(keys_sql or ()), buffered_windows=tuple(wins),
    )  # fmt: skip


def _partition_by(keys) -> str:
    return f"PARTITION BY {', '.join(keys)} " if keys else ""


def _absolute_row_number(partition: str) -> str:
    """ROW_NUMBER over a key's whole history: the first buffered row's number (``__rn``) plus the
    row's position among the buffered and new rows."""
    return (
        f"coalesce(first_value(__rn) OVER ({partition}ORDER BY {SEQ}), 1) - 1 "
        f"+ row_number() OVER ({partition}ORDER BY {SEQ})"
    )


# ---- generation ---------------------------------------------------------------------------------


def generate(q: Query, window: WindowSpec | None, emit: str) -> ShapeSQL:
    """The SQL statements for the query's shape and emit mode."""
    route, columns = "", ()
    if q.plain_from and q.key_sql:
        route = f'SELECT {", ".join(q.key_sql)} FROM __in AS "{q.alias}"'
        columns = tuple(_bare_column(key) for key in q.key_sql)
    return dataclasses.replace(
        _generate(q, window, emit), route_keys=route, route_key_columns=columns, local=q.local
    )


def _bare_column(sql: str) -> str | None:
    """The lower-cased name of the column ``sql`` is, or None when it is an expression."""
    node = deep_call(exp.maybe_parse, sql, dialect="duckdb", where=None)
    return node.name.lower() if isinstance(node, exp.Column) else None


def _generate(q: Query, window: WindowSpec | None, emit: str) -> ShapeSQL:
    late_cond = W.late_condition(window)
    late = f'SELECT "{q.alias}".* {q.from_sql} WHERE ({q.where_sql}) AND {late_cond}' if window else ""
    if q.shape == "project":
        return ShapeSQL(project=q.project_sql, reference=q.project_sql)
    if q.shape == "buffered":
        return _buffered_sql(q)
    if q.shape == "session":
        return _session_sql(q, window, late)
    return _aggregate_sql(q, window, emit, late, late_cond)


def _aggregate_sql(q: Query, window, emit, late, late_cond) -> ShapeSQL:
    extra_from, ws, extra_where = _window_relation(window)
    keys = [f'{k} AS "__k{i}"' for i, k in enumerate(q.key_sql)]
    group_cols = [f'"__k{i}"' for i in range(len(q.key_sql))] + (["__ws"] if window else [])
    key_exprs = list(q.key_sql) + ([ws] if window else [])
    sel_keys = keys + ([f"{ws} AS __ws"] if window else [])
    parts = [f'{sql} AS "{name}"' for a in q.aggregates for sql, name in zip(a.partial, a.parts)]
    positions = ", ".join(str(i + 1) for i in range(len(sel_keys)))
    group_by = f" GROUP BY {positions}" if sel_keys else ""
    on_time = f"({q.where_sql}) AND NOT {late_cond}{extra_where}"
    partial = f"SELECT {', '.join(sel_keys + parts)} {q.from_sql}{extra_from} WHERE {on_time}{group_by}"
    partial_all = f"SELECT {', '.join(sel_keys + parts)} {q.from_sql}{extra_from} WHERE ({q.where_sql}){extra_where}{group_by}"

    closed = f"{W.window_end(window)} <= $WM" if window else "TRUE"
    combined = _combine_sql(q.aggregates, group_cols, "__state", closed)
    finals = ", ".join(group_cols + [f'{a.final} AS "{a.id}"' for a in q.aggregates])
    emit_sql = _final_select(q, f"SELECT {finals} FROM ({combined})")
    evict = f"DELETE FROM __state WHERE {closed}" if window else ""
    state_update = _combine_sql(q.aggregates, group_cols, "__state")
    changes = running_input = running_output = running_state = ""
    running_items: tuple[tuple[str, int], ...] = ()
    running_columns: tuple[str, ...] = ()
    if emit == "changes":
        part_by = f"PARTITION BY {', '.join(key_exprs)} " if key_exprs else ""
        running = [f'{sql} AS "{name}"' for a in q.aggregates for sql, name in zip(a.partial_w, a.parts)]
        b = (
            f"SELECT {', '.join(sel_keys + [SEQ] + running)} {q.from_sql}{extra_from} WHERE {on_time} "
            f"WINDOW __w AS ({part_by}ORDER BY {SEQ} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
        )
        on = " AND ".join(f"s.{c} IS NOT DISTINCT FROM b.{c}" for c in group_cols) or "TRUE"
        merged = [f'{m} AS "{p}"' for a in q.aggregates for m, p in zip(a.merge_sql("s", "b"), a.parts)]
        cols = ", ".join([f"b.{c}" for c in group_cols] + [f"b.{SEQ}"] + merged)
        fin = ", ".join(group_cols + [SEQ] + [f'{a.final} AS "{a.id}"' for a in q.aggregates])

        # The state may hold several partial rows per group (compaction is amortised), so the
        # change rows join the state combined per group.
        state = f"({_combine_sql(q.aggregates, group_cols, '__state')})"

        def changes_over(rows: str) -> str:
            m = f"SELECT {cols} FROM {rows} b LEFT JOIN {state} s ON {on}"
            return _final_select(q, f"SELECT {fin} FROM ({m})", order=SEQ)

        changes = changes_over(f"({b})")
        if window is None and len(q.key_sql) == 1 and all(a.running for a in q.aggregates):
            # Running COUNT/SUM/AVG: the runtime computes the running partials of __in's rows
            # (velosql.runtime.running) from these inputs and hands them back as __b.
            args = [f'{a.arg} AS "__x{i}"' for i, a in enumerate(q.aggregates) if a.arg is not None]
            running_input = f"SELECT {', '.join([*keys, SEQ, *args])} {q.from_sql} WHERE {on_time}"
            running_output = changes_over("__b")
            running_items = _bare_items(q)
            if running_items:
                running_columns = _bare_columns(q)
                running_state = (
                    f"SELECT s.* FROM ({_combine_sql(q.aggregates, group_cols, '__state')}) s "
                    'SEMI JOIN __keys k ON s."__k0" IS NOT DISTINCT FROM k."__k0"'
                )
    # Windowed partials are left to DuckDB: grouping on the window start as well, pyarrow was no
    # faster (Q_tumble 9.2M vs 9.4M rows/s).
    arrow = _arrow_partial(q) if window is None else None
    return ShapeSQL(
        partial=partial, partial_all=partial_all, late=late, running_input=running_input,
        running_output=running_output, running_items=running_items, running_columns=running_columns,
        running_state=running_state, emit=emit_sql, changes=changes, state_update=state_update,
        arrow_partial=arrow, evict=evict, reference=q.project_sql, emit_ordered=bool(q.order_sql),
    )  # fmt: skip


def _bare_items(q: Query) -> tuple[tuple[str, int], ...]:
    """Each output item as ("k", i) or ("a", i) when every one is a bare key or aggregate and
    nothing filters or orders the rows; () otherwise."""
    if q.having_sql or q.order_sql:
        return ()
    out = []
    for item in q.items:
        node = exp.maybe_parse(item, dialect="duckdb").unalias()
        m = re.fullmatch(r"__([ka])(\d+)", node.name) if isinstance(node, exp.Column) else None
        if m is None or node.table:
            return ()
        out.append((m.group(1), int(m.group(2))))
    return tuple(out)


_ARROW_FUNCTIONS = {exp.Count: "count", exp.Sum: "sum", exp.Min: "min", exp.Max: "max"}


def _source_column(node: exp.Expression, q: Query) -> str | None:
    """The name of the source column ``node`` is, when it is a bare column of the source."""
    if isinstance(node, exp.Column) and node.table in ("", q.alias) and not isinstance(node.this, exp.Star):
        return node.name
    return None


def _rows_as_read(q: Query) -> bool:
    """Whether the query reads the source alone with no WHERE: its rows are the batch's rows."""
    return q.plain_from and q.where_sql == "TRUE"


def _arrow_partial(q: Query):
    """See ``ShapeSQL.arrow_partial``."""
    if not _rows_as_read(q) or not q.key_sql:
        return None
    keys = [_source_column(exp.maybe_parse(text, dialect="duckdb"), q) for text in q.key_sql]
    if None in keys or len(set(keys)) < len(keys):
        return None
    parts = []
    for a in q.aggregates:
        if a.pre:
            return None
        for text, part in zip(a.partial, a.parts):
            node = exp.maybe_parse(text, dialect="duckdb")
            fn = _ARROW_FUNCTIONS.get(type(node))
            arg = node.this if fn else None
            column = _source_column(arg, q) if arg is not None else None
            if isinstance(arg, exp.Star) and fn == "count":
                parts.append((part, "count_all", None))
            elif column is not None and not node.args.get("distinct"):
                parts.append((part, fn, column))
            else:
                return None
    return tuple(keys), tuple(parts)


def _bare_columns(q: Query) -> tuple[str, ...]:
    """The source columns of the keys and aggregate arguments, when all are bare columns of the
    source alone and no WHERE applies; () otherwise."""
    if not _rows_as_read(q):
        return ()
    texts = [*q.key_sql, *(a.arg for a in q.aggregates if a.arg is not None)]
    names = [_source_column(exp.maybe_parse(text, dialect="duckdb"), q) for text in texts]
    return () if None in names else tuple(names)


def _combine_sql(aggs: tuple[AggSpec, ...], group_cols: list[str], table: str, where: str = "TRUE") -> str:
    """Merge the partial rows of ``table`` per group (the combine forms, after any pre-windows)."""
    part = ", ".join(group_cols) if group_cols else "NULL"
    pre = "".join(f", {sql.format(part=part)} AS {col}" for a in aggs for col, sql in a.pre)
    combs = [f'{c} AS "{p}"' for a in aggs for c, p in zip(a.combine, a.parts)]
    group_by = f" GROUP BY {', '.join(group_cols)}" if group_cols else ""
    return f"SELECT {', '.join(group_cols + combs)} FROM (SELECT *{pre} FROM {table} WHERE {where}) AS __p{group_by}"


def _final_select(q: Query, rel: str, order: str | None = None) -> str:
    sql = f"SELECT {', '.join(q.items)} FROM ({rel}) AS __f"
    if q.having_sql:
        sql += f" WHERE {q.having_sql}"
    if order:
        sql += f" ORDER BY {order}"
    elif q.order_sql:
        sql += f" {q.order_sql}"
    return sql


def _session_sql(q: Query, window: WindowSpec, late: str) -> ShapeSQL:
    keys = [exp.maybe_parse(k, dialect="duckdb") for k in q.key_sql]
    insert = f'SELECT "{q.alias}".* {q.from_sql} WHERE ({q.where_sql}) AND NOT {W.late_condition(window)}'
    sessions = _sessionize("__sbuf", keys, window)
    group = ", ".join([*q.key_sql, "__ss", "__se"])
    items = ", ".join(q.items)
    closed = W.session_closed(window)
    emit = f"SELECT {items} FROM ({sessions}) WHERE {closed} GROUP BY {group}"
    if q.having_sql:
        emit += f" HAVING {q.having_sql}"
    if q.order_sql:
        emit += f" {q.order_sql}"
    keep = f"SELECT * EXCLUDE (__ss, __se, __sid, _window_start, _window_end) FROM ({sessions}) WHERE NOT ({closed})"
    return ShapeSQL(
        late=late, buffer_insert=insert, session_emit=emit, session_keep=keep, reference=q.project_sql
    )


def _buffered_sql(q: Query) -> ShapeSQL:
    rows = f'SELECT "{q.alias}".*, NULL::BIGINT AS __rn, FALSE AS __old {q.from_sql} WHERE {q.where_sql}'
    union = f"SELECT * FROM __rbuf UNION ALL BY NAME {rows}"
    inner = f"SELECT *, {', '.join(q.buffered_windows)} FROM ({union})"
    project = f"SELECT {', '.join(q.items)} FROM ({inner}) AS __u WHERE NOT __old ORDER BY {SEQ}"
    part = _partition_by(q.buffer_keys)
    rn = _absolute_row_number(part)
    keep = (
        f"SELECT * REPLACE ({rn} AS __rn, TRUE AS __old) FROM ({union}) "
        f"QUALIFY row_number() OVER ({part}ORDER BY {SEQ} DESC) <= {q.buffer_rows}"
    )
    return ShapeSQL(project=project, buffer_insert=rows, state_update=keep)


def orderable(sql: str) -> bool:
    """Whether :func:`with_arrival_order` can add the arrival sequence to the statement's output."""
    return sql.startswith("SELECT ") and not sql.startswith("SELECT DISTINCT")


def with_arrival_order(sql: str) -> str:
    """``sql`` (a SELECT over rows that carry ``__seq``) with each row's arrival sequence as a
    first column ``__order``."""
    return f"SELECT {SEQ} AS __order, " + sql[len("SELECT ") :]


def referenced_columns(statements: str | tuple[str, ...]) -> frozenset[str] | None:
    """The lower-cased names of the columns ``statements`` read, or None when that cannot be
    told: a ``*`` other than ``count(*)``'s, ``COLUMNS(…)``, a column by position (``#2``), a
    NATURAL join, a table's name used as a value (its whole row), SQL sqlglot cannot parse."""
    from sqlglot.errors import SqlglotError

    names: set[str] = set()
    for sql in (statements,) if isinstance(statements, str) else statements:
        try:
            tree = deep_call(exp.maybe_parse, sql, dialect="duckdb", where=None)
        except (SqlglotError, SqlError):  # DuckDB runs it as it is: every column may be read
            return None
        tables = {n.lower() for t in tree.find_all(exp.Table) for n in (t.name, t.alias) if n}
        for node in tree.walk():
            if isinstance(node, exp.Star) and not isinstance(node.parent, exp.Count):
                return None
            if isinstance(node, (exp.Columns, exp.PositionalColumn)) or (
                isinstance(node, exp.Anonymous) and str(node.this).lower() == "columns"
            ):
                return None  # columns by pattern or by position (``#2``)
            if isinstance(node, exp.Join):
                if "NATURAL" in str(node.args.get("method") or "").upper():
                    return None  # joins on every column the two sides share
                names.update(u.name.lower() for u in node.args.get("using") or ())
            if isinstance(node, exp.Column):  # every part: in ``s.x`` the column may be ``s``
                if not node.table and node.name.lower() in tables:
                    return None  # ``to_json(src)``: the row of ``src``, every column
                names.update(part.name.lower() for part in node.parts)
    return frozenset(names)
