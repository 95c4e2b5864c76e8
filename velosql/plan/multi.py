"""Statements that read several streams: UNION ALL of streams, joins of two streams, and any
SELECT over several streams per closed window or at the end of the input.

Three ways, chosen by :func:`choose`:

* **union** — the streams' rows never meet (each SELECT reads one stream, row by row): each
  input's micro-batch goes through the statement with the other streams read as empty.
* **join** — two streams joined (INNER, LEFT, RIGHT or FULL) in one SELECT that is otherwise
  row by row: incremental. A pair is produced when its later row arrives; a row waits while a
  row of the other side can still match it. The ON condition's bound on the two sides' event
  times (``b.ts BETWEEN a.ts - INTERVAL '5' MINUTE AND a.ts``) says how long: a row is dropped
  once the statement's watermark (the minimum of the streams' own) is past the last event time a
  match could have, and an outer row is produced then, when it is known to have no match.
  Without such a bound rows wait to the end of the input.
* **general** — anything else (aggregates over a join, DISTINCT, window functions, …): the
  whole SELECT over each closed TUMBLING or SLIDING window's rows of every stream (a window
  join), or over every row at the end of a bounded input (EMIT FINAL).

Each stream has its own event time (``'<src>.event.time.field'``, else the window's column or
the job's ``event.time.field``, else for a join the columns its ON condition bounds); a join
whose streams have none has no watermark: no row is late and every row waits to the end.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from ..durations import parse_duration
from ..errors import Location, SqlError
from ..sql.statements import WindowSpec
from . import windows as W
from .constructs import SYSTEM_COLUMNS, WINDOW_COLUMNS, Constructs, aggregating, inspect, meeting
from .general import over_streams, relation, top_limit, unqualified, without_limit
from .operators import GeneralSpec, JoinSpec, UnionSpec

_HIDDEN = ("__seq", "__et", "__wm")
_JOIN_SIDES = {None: "inner", "LEFT": "left", "RIGHT": "right", "FULL": "full"}
_ON_TIME = "__et >= __wm"  # a join's rows: late once behind the watermark they saw


@dataclass(frozen=True)
class MultiPlan:
    """What the planner takes from here: the streams in input order, each one's event-time
    column (None: none), the operator, the condition a row is late on, and the output LIMIT."""

    shape: str
    streams: tuple[str, ...]
    times: tuple[str | None, ...]
    operator: UnionSpec | JoinSpec | GeneralSpec
    late: str
    limit: int | None


def order_streams(select: exp.Expression, names: list[str]) -> list[str]:
    """``names`` in input order: a join's FROM stream first, else as the statement reads them."""
    if isinstance(select, exp.Select) and select.args.get("from_") is not None:
        first = select.args["from_"].this
        if isinstance(first, exp.Table) and first.name.lower() in names:
            return [first.name.lower(), *(n for n in names if n != first.name.lower())]
    return names


def choose(
    select: exp.Expression,
    streams: list[str],
    declared: list[str | None],
    window: WindowSpec | None,
    emit: str,
    loc: Location,
    hints: dict | None = None,
) -> MultiPlan:
    """Plan ``select`` over ``streams`` (in input order; ``declared``: each one's declared
    event-time column or None; ``hints``: the job's ``join.*`` options, checked against the
    SELECT)."""
    hints = hints or {}
    found = [inspect(select, s) for s in streams]
    refs = frozenset().union(*(f.references for f in found))
    body = without_limit(select)
    limit = top_limit(select)
    n = len(streams)
    if window is None and not meeting(select, streams) and all(f.stateless for f in found):
        empty = {s: f"(SELECT * EXCLUDE ({_hide(refs)}) FROM __empty{i})" for i, s in enumerate(streams)}
        selects = tuple(
            over_streams(body, {**empty, s: relation("__in", True, refs, bounds=False)}) for s in streams
        )
        return MultiPlan("union", tuple(streams), (None,) * n, UnionSpec(selects), "FALSE", limit)
    why = ("a SELECT over several streams", *(c for f in found for c in f.general))
    if window is None:
        join = _join(select, streams, declared, found, refs, loc)
        if join is not None:
            times, spec = join
            _check_hints(hints, spec, loc)
            return MultiPlan("join", tuple(streams), times, spec, f"NOT ({_ON_TIME})", limit)
    if any(hints.get(k) is not None for k in ("join.lower_bound", "join.upper_bound")) or (
        hints.get("join.type") == "interval"
    ):
        raise SqlError(
            "WITH 'join.type' = 'interval' (or a 'join.*_bound') asks for an interval join, but this "
            "statement is not one SELECT joining two streams row by row: "
            + ("it has a WINDOW" if window is not None else f"it is {_what(select, streams, found)}"),
            loc,
        )
    if window is None:
        if emit == "changes":
            raise SqlError(
                f"EMIT CHANGES cannot run {_what(select, streams, found)}: it has no incremental form "
                "(its result for the rows so far is not an update of the result before). Add a WINDOW "
                "(the SELECT then runs over each closed window's rows of every stream), write EMIT "
                "FINAL (it runs once when the inputs end), or join two streams in a statement of "
                "their own and use its output in the next one",
                loc,
            )
        buffers = tuple(f"__gbuf{i}" for i in range(n))
        rows = {s: relation(buffers[i], True, refs, bounds=False) for i, s in enumerate(streams)}
        spec = GeneralSpec(select=over_streams(select, rows), window=None, why=why, buffers=buffers)
        return MultiPlan("general", tuple(streams), tuple(declared), spec, "FALSE", None)
    if window.kind == "session":
        raise SqlError(
            "a SESSION window over several streams is not supported yet (which stream's rows would "
            "extend a session is not defined): join the streams in a statement of their own and "
            "window its output by SESSION in the next one, or use TUMBLING or SLIDING windows, or an "
            "interval join (ON … AND b.ts BETWEEN a.ts - INTERVAL … AND a.ts)",
            loc,
        )
    if emit == "changes" and (aggregating(select) or any(f.general for f in found)):
        raise SqlError(
            f"EMIT CHANGES cannot run {_what(select, streams, found)} over a window: its rows are known "
            "only when the window closes; write EMIT FINAL, or an interval join without a WINDOW",
            loc,
        )
    # A window join's rows (EMIT CHANGES too) are produced when their window closes: a pair is
    # known to be in one window of both streams only then, and is never retracted.
    buffers = tuple(f"__gbuf{i}" for i in range(n))
    # The window's bounds are columns of the first stream's rows only: one value, unambiguous.
    rows = {
        s: relation(buffers[i], True, refs if i == 0 else refs - set(WINDOW_COLUMNS), bounds=True)
        for i, s in enumerate(streams)
    }
    spec = GeneralSpec(
        select=over_streams(select, rows),
        window=window,
        why=why,
        on_time=f"NOT {W.late_condition(window)}",
        starts=" UNION ".join(W.starts_sql(window, b) for b in buffers),
        evict=f"DELETE FROM $BUF WHERE {W.last_end(window)} <= $WM",
        buffers=buffers,
    )
    late = W.late_condition(window)
    times = tuple(d or window.time_column for d in declared)
    return MultiPlan("general", tuple(streams), times, spec, late, None)


def _check_hints(hints: dict, spec: JoinSpec, loc: Location) -> None:
    """Velostream's ``join.*`` options must say what the ON condition says: the result is the
    batch result of the SELECT as written, never of a bound the SELECT does not state."""
    lo, hi = spec.interval
    if hints.get("join.type") == "window":
        raise SqlError("WITH 'join.type' = 'window' needs a WINDOW clause (TUMBLING or SLIDING)", loc)
    for key, have in (("join.lower_bound", lo), ("join.upper_bound", hi)):
        want = hints.get(key)
        if want is not None and want != have:
            stated = "no such bound" if have is None else f"{have / 1e6:g}s"
            raise SqlError(
                f"WITH {key!r} = {want / 1e6:g}s is not the bound the ON condition puts on the streams' "
                f"event times ({stated}): write it in ON, as `AND b.ts BETWEEN a.ts + <lower> AND "
                "a.ts + <upper>`, so that the result is the batch result of the SELECT as written",
                loc,
            )
    keep = hints.get("join.retention")
    if keep is not None:
        need = None if lo is None or hi is None else max(abs(lo), abs(hi))
        if need is None or keep < need:
            raise SqlError(
                f"WITH 'join.retention' = {keep / 1e6:g}s would drop rows that can still match "
                f"({'the ON condition bounds no time difference' if need is None else f'the ON bound needs {need / 1e6:g}s'}): "
                "rows are dropped by the watermark once they can match no more; leave it out",
                loc,
            )


def _what(select: exp.Expression, streams: list[str], found: list[Constructs]) -> str:
    for f in found:
        if f.general:
            return f"{f.general[0]} over several streams"
    if aggregating(select):
        return "an aggregate over a join of streams"
    if len(streams) > 2 and meeting(select, streams):
        return (
            f"a join of {len(streams)} streams ({', '.join(streams)}): two at a time are joined incrementally"
        )
    return f"this SELECT over the streams {', '.join(streams)}"


# ---- joins ----------------------------------------------------------------------------------


def _join(select, streams, declared, found, refs, loc):
    """The incremental join of ``select``, or None when it is not one SELECT joining two
    streams with row-by-row steps around the join."""
    if len(streams) != 2 or not isinstance(select, exp.Select) or any(f.general for f in found):
        return None
    if aggregating(select) or select.args.get("distinct") is not None or select.find(exp.Window):
        return None
    if any(select.args.get(k) is not None for k in ("having", "qualify", "offset")):
        return None
    first = select.args["from_"].this
    if not (isinstance(first, exp.Table) and first.name.lower() == streams[0]):
        return None
    joins = select.args.get("joins") or []
    at = [
        i for i, j in enumerate(joins) if isinstance(j.this, exp.Table) and j.this.name.lower() == streams[1]
    ]
    if len(at) != 1:
        return None
    join = joins[at[0]]
    if join.args.get("method") or (join.args.get("kind") or "INNER").upper() not in ("INNER", "OUTER"):
        return None
    side = (join.args.get("side") or "").upper() or None
    if side not in _JOIN_SIDES or (join.args.get("on") is None and not join.args.get("using")):
        return None
    aliases = ((first.alias or first.name).lower(), (join.this.alias or join.this.name).lower())
    on = join.args.get("on")
    if on is not None and any(c.table.lower() not in aliases for c in on.find_all(exp.Column)):
        return None  # the pairs are decided on the two streams' columns alone
    kind = _JOIN_SIDES[side]
    conds = list(_conjuncts(on)) if on is not None else []
    if kind == "inner" and select.args.get("where") is not None:
        conds += list(_conjuncts(select.args["where"].this))
    lo, hi, cols = _bound(conds, aliases, declared)
    times = tuple(declared)
    if cols is not None:
        times = cols
    if None in times:
        times, lo, hi = (None, None), None, None  # no watermark: nothing is late, rows wait to the end
    inner = select.copy()
    inner_join = inner.args["joins"][at[0]]
    inner_join.set("side", None)
    inner_join.set("kind", None)
    inner = without_limit(inner)
    arriving = f"(SELECT * EXCLUDE ({_hide(refs)}) FROM __in WHERE {_ON_TIME})"
    held = [f"(SELECT * EXCLUDE ({_hide(refs)}, __m) FROM __jb{i})" for i in (0, 1)]
    a, b = streams
    delta = (
        over_streams(inner, {a: arriving, b: held[1]}),
        over_streams(inner, {a: held[0], b: arriving}),
    )
    outer_sides = {"inner": (), "left": (0,), "right": (1,), "full": (0, 1)}[kind]
    pairs = ("", "")
    if outer_sides:
        pairs = (_pairs(select, join, aliases, 0), _pairs(select, join, aliases, 1))
    outer = ["", ""]
    for i in outer_sides:
        gone = f"(SELECT * EXCLUDE ({_hide(refs)}, __m) FROM __jb{i} WHERE NOT __m AND ($EXPIRED))"
        none = f"(SELECT * EXCLUDE ({_hide(refs)}, __m) FROM __jb{1 - i} WHERE FALSE)"
        outer[i] = over_streams(without_limit(select), {streams[i]: gone, streams[1 - i]: none})
    # Side 0 (a) can match a future b (b.et >= wm) while a.et + hi >= wm; b a future a while
    # b.et - lo >= wm.
    expired = (f"__et + {hi} < $WM" if hi is not None else "", f"__et - {lo} < $WM" if lo is not None else "")
    spec = JoinSpec(
        kind=kind,
        delta=delta,
        pairs=pairs,
        outer=(outer[0], outer[1]),
        expired=expired,
        on_time=_ON_TIME,
        bound=_describe(lo, hi, aliases, times),
        interval=(lo, hi),
        keys=_keys(join, aliases),
        why=(f"{'an' if kind == 'inner' else 'a'} {kind.upper()} JOIN of two streams",),
    )
    return times, spec


def _keys(join: exp.Join, aliases: tuple[str, str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The expressions ON (or USING) sets equal between the two sides, each side's as SQL over
    its own rows."""
    using = join.args.get("using")
    if using:
        names = tuple(exp.column(u.name, quoted=True).sql("duckdb") for u in using)
        return names, names
    left, right = [], []
    for cond in _conjuncts(join.args["on"]):
        if not isinstance(cond, exp.EQ):
            continue
        sides = [{c.table.lower() for c in e.find_all(exp.Column)} for e in (cond.this, cond.expression)]
        if sides == [{aliases[0]}, {aliases[1]}]:
            pair = (cond.this, cond.expression)
        elif sides == [{aliases[1]}, {aliases[0]}]:
            pair = (cond.expression, cond.this)
        else:
            continue
        if any(e.find(exp.Subquery) for e in pair):
            continue
        left.append(unqualified(pair[0]))
        right.append(unqualified(pair[1]))
    return tuple(left), tuple(right)


def _pairs(select: exp.Select, join: exp.Join, aliases: tuple[str, str], side: int) -> str:
    """The ``(__s, __o)`` sequence numbers of the rows of side ``side``'s micro-batch and of the
    other side's buffer that the ON condition matches."""
    this, other = aliases[side], aliases[1 - side]
    rows = {
        side: f"(SELECT * EXCLUDE (__et, __wm) FROM __in WHERE {_ON_TIME})",
        1 - side: f"(SELECT * EXCLUDE (__et, __wm, __m) FROM __jb{1 - side})",
    }
    left = exp.to_table("__velosql_side0").as_(aliases[0], quoted=True)
    right = join.copy()
    right.set("this", exp.to_table("__velosql_side1").as_(aliases[1], quoted=True))
    right.set("side", None)
    right.set("kind", None)
    query = (
        exp.select(
            exp.column("__seq", table=this, quoted=True).as_("__s"),
            exp.column("__seq", table=other, quoted=True).as_("__o"),
        )
        .distinct()
        .from_(left)
    )
    query.set("joins", [right])
    sql = query.sql("duckdb")
    return sql.replace("__velosql_side0", rows[0]).replace("__velosql_side1", rows[1])


def _conjuncts(node: exp.Expression):
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And):
        yield from _conjuncts(node.this)
        yield from _conjuncts(node.expression)
    else:
        yield node


_MIRROR = {exp.GT: exp.LT, exp.GTE: exp.LTE, exp.LT: exp.GT, exp.LTE: exp.GTE, exp.EQ: exp.EQ}


def _comparisons(node: exp.Expression):
    """``(op, left, right)`` for a comparison, two for a BETWEEN."""
    if isinstance(node, exp.Between):
        yield exp.GTE, node.this, node.args["low"]
        yield exp.LTE, node.this, node.args["high"]
    elif type(node) in _MIRROR:
        yield type(node), node.this, node.expression


def _bound(conds, aliases: tuple[str, str], declared):
    """The bound ``lo <= b.t - a.t <= hi`` (microseconds, None: unbounded) that ``conds`` put on
    the two sides' time columns ``t``, and those columns: the declared event-time columns, else
    the first pair of columns an inequality compares (an equality of two columns is a key's)."""
    terms = []  # (op, c, a's column, b's column) for each ``b.t - a.t op c``
    for cond in conds:
        for op, left, right in _comparisons(cond):
            lt, rt = _term(left), _term(right)
            if lt is None or rt is None or {lt[0], rt[0]} != set(aliases):
                continue
            if lt[0] == aliases[0]:  # a + ox op b + oy  ⇔  b - a op' ox - oy
                terms.append((_MIRROR[op], lt[2] - rt[2], lt[1], rt[1]))
            else:  # b + ox op a + oy  ⇔  b - a op oy - ox
                terms.append((op, rt[2] - lt[2], rt[1], lt[1]))
    cols = [d.lower() if d else None for d in declared]
    if None in cols:
        first = next(
            (t for t in terms if t[0] is not exp.EQ and all(c in (None, x) for c, x in zip(cols, t[2:]))),
            None,
        )
        if first is None:
            return None, None, None
        cols = list(first[2:])
    lo = hi = None
    for op, c, a, b in terms:
        if (a, b) != tuple(cols):
            continue  # not the event-time columns: says nothing about the watermark
        if op in (exp.GT, exp.GTE, exp.EQ):
            lo = c if lo is None else max(lo, c)
        if op in (exp.LT, exp.LTE, exp.EQ):
            hi = c if hi is None else min(hi, c)
    return lo, hi, tuple(cols)


def _term(node: exp.Expression) -> tuple[str, str, int] | None:
    """``alias.column ± INTERVAL …`` as (alias, column, offset µs), or None."""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Column):
        return (node.table.lower(), node.name.lower(), 0) if node.table else None
    if isinstance(node, (exp.Add, exp.Sub)):
        col, off = node.this, _interval(node.expression)
        if off is None and isinstance(node, exp.Add):
            col, off = node.expression, _interval(node.this)
        base = _term(col) if off is not None else None
        if base is None or base[2]:
            return None
        return base[0], base[1], off if isinstance(node, exp.Add) else -off
    return None


def _interval(node: exp.Expression) -> int | None:
    if not isinstance(node, exp.Interval) or not isinstance(node.this, exp.Literal):
        return None
    unit = node.args.get("unit")
    try:
        return parse_duration(f"{node.this.name} {unit.name}" if unit is not None else node.this.name)
    except (ValueError, TypeError):
        return None


def _describe(lo, hi, aliases, times) -> str:
    if times == (None, None):
        return "no event time on either stream: every row is kept to the end of the input"
    a, b = (f"{al}.{t}" for al, t in zip(aliases, times))
    if lo is None and hi is None:
        return f"no bound on {b} - {a} in ON: every row is kept to the end of the input"

    def fmt(v):
        return "unbounded" if v is None else f"{v / 1e6:g}s"

    return f"{b} - {a} between {fmt(lo)} and {fmt(hi)}: a row is dropped once the watermark passes it"


def _hide(refs: frozenset[str]) -> str:
    return ", ".join([*_HIDDEN, *(c for c in SYSTEM_COLUMNS if c not in refs)])
