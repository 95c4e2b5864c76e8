"""Random SELECTs as streams, against DuckDB batch SQL over the same rows.

Each example draws a query from a small grammar — projections, WHERE, GROUP BY/HAVING, DISTINCT,
CASE, CTEs, subqueries in FROM, WHERE and SELECT, joins with a DuckDB table, window functions,
QUALIFY and the aggregate catalogue — with or without a TUMBLING or SLIDING window, EMIT CHANGES
or FINAL; runs it under every processor of the matrix over random batch splits and arrival within
the lateness; and compares the result with DuckDB running the same SELECT over the input (per
window: over each window's rows). A statement the engine refuses must be refused when it is
created, with a reason listed in docs/sql.md ("What is refused"); refusals are counted per
construct and reported.
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import pathlib
import re

import duckdb
import pyarrow as pa
import pytest
from conftest import property_test, split_entry, strategy_option
from hypothesis import assume
from hypothesis import strategies as st
from test_oracle import LATENESS_S, assert_rows_equal, streams

import velosql
from velosql.errors import SqlError
from velosql.testing import push_split

# V1's examples per form (scaled by the profile); V2 entries take VELOSQL_V2_EXAMPLES.
QUERY_EXAMPLES = int(os.environ.get("VELOSQL_QUERY_EXAMPLES", "80"))
DOCS = pathlib.Path(__file__).parent.parent / "docs" / "sql.md"
EPOCH = dt.datetime(1970, 1, 1)
DIM = "SELECT * FROM (VALUES ('a', 'alpha', 1.5), ('b', 'beta', -2.0), ('e', 'eps', 0.0)) v(k, label, w)"
REFUSALS: collections.Counter = collections.Counter()
COMPARED: collections.Counter = collections.Counter()  # examples compared, by form and window

VALUES = [
    "x", "y", "s", "x + 1", "x * 2 - y", "abs(y)", "round(y, 1)", "coalesce(x, 0)", "upper(s)",
    "length(s)", "k || '-' || coalesce(s, '?')",
    "CASE WHEN x > 0 THEN 'pos' WHEN x < 0 THEN 'neg' ELSE 'zero' END",
]  # fmt: skip
PREDICATES = ["x > 0", "y < 100", "s IS NOT NULL", "k = 'a' OR x IS NULL", "x BETWEEN -10 AND 10", "y > -500"]
AGGREGATES = [
    "count(*)", "count(x)", "sum(x)", "avg(y)", "min(y)", "max(x)", "stddev_samp(y)", "var_pop(y)",
    "median(x)", "quantile_cont(y, 0.25)", "count(DISTINCT s)", "bool_or(x > 10)",
    "string_agg(s, ',' ORDER BY s)", "PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY y)", "max(length(s))",
]  # fmt: skip
WINDOW_FUNCTIONS = [
    "row_number() OVER (PARTITION BY k ORDER BY ts, x, y, s)",
    "sum(x) OVER (PARTITION BY k)",
    "lag(y) OVER (PARTITION BY k ORDER BY ts, x, y, s)",
    "count(*) OVER ()",
]


FORMS = [
    "project",
    "aggregate",
    "distinct",
    "window_function",
    "subquery",
    "union",
    "stream_join",
    "window_join",
]
# Time bounds of an interval join between streams t and u (none: a join kept to the end of input).
BOUNDS = [
    "",
    " AND u.ts BETWEEN t.ts - INTERVAL 30 SECOND AND t.ts + INTERVAL 10 SECOND",
    " AND u.ts >= t.ts AND u.ts < t.ts + INTERVAL '1' MINUTE",
    " AND t.ts = u.ts",
]
JOIN_ITEMS = ["t.k", "t.x", "u.x", "u.y", "t.s", "u.s", "t.y + coalesce(u.x, 0)", "t.ts"]


@st.composite
def queries(draw, form: str):
    """A SELECT of ``form``: (the SELECT, window, emit, whether its result is a keyed table of
    running values, form)."""
    window = draw(st.sampled_from([None, None, ("tumbling", 60), ("sliding", 60, 30), ("session", 45)]))
    source = draw(st.sampled_from(["t", "t", "subquery", "cte"]))
    # Sessions form from the rows a statement keeps: a join would filter them as well (an inner
    # join before the session, which the batch side here does not model).
    join = draw(st.booleans()) and form in ("project", "aggregate") and (window or ("",))[0] != "session"
    where = draw(st.one_of(st.none(), st.sampled_from(PREDICATES)))
    relation, cte = "t", ""
    if source == "subquery":
        inner = draw(st.sampled_from(PREDICATES))
        relation = f"(SELECT * FROM t WHERE {inner}) AS t"
    elif source == "cte":
        inner = draw(st.sampled_from(PREDICATES))
        cte, relation = f"WITH v AS (SELECT * FROM t WHERE {inner}) ", "v"
    if join:
        relation += f" {draw(st.sampled_from(['JOIN', 'LEFT JOIN']))} dim USING (k)"
    bounds = ["_window_start"] if window else []
    keyed = False
    keys: list[str] = []  # the outermost GROUP BY: what sessions are formed by
    place = None  # where the subquery form's subquery stands
    if form in ("stream_join", "window_join"):
        return _join_query(draw, form)
    if form == "project":
        items = draw(
            st.lists(st.sampled_from(VALUES + (["label", "w"] if join else [])), min_size=1, max_size=4)
        )
        select = f"SELECT {_items(items)} FROM {relation}"
    elif form == "aggregate":
        aggs = draw(st.lists(st.sampled_from(AGGREGATES), min_size=1, max_size=4))
        keys = draw(st.sampled_from([["k"], ["k", "s"], [], ["upper(k)"]]))  # sessions form per these
        items = _items(bounds + keys + aggs)
        select = f"SELECT {items} FROM {relation}"
        keyed = bool(keys)
    elif form == "distinct":
        items = draw(st.lists(st.sampled_from(["k", "s", "upper(s)", "x > 0"]), min_size=1, max_size=2))
        select = f"SELECT DISTINCT {_items(bounds + items)} FROM {relation}"
    elif form == "window_function":
        fn = draw(st.sampled_from(WINDOW_FUNCTIONS))
        select = f"SELECT {_items(bounds)}{', ' if bounds else ''}k, x, y, {fn} AS f FROM {relation}"
    elif form == "union":
        first, second = draw(st.lists(st.sampled_from(PREDICATES), min_size=2, max_size=2))
        lead = f"{_items(bounds)}, " if bounds else ""
        word = draw(st.sampled_from(["UNION ALL", "UNION ALL", "UNION"]))
        select = (
            f"SELECT {lead}k, x FROM {relation} WHERE {first} {word} "
            f"SELECT {lead}k, x + 100 FROM {relation} WHERE {second}"
        )
        where = None
    else:
        sub, place = draw(
            st.sampled_from(
                [
                    ("SELECT k, x, (SELECT max(w) FROM dim) AS mw FROM {r}", "select"),
                    ("SELECT k, y FROM {r} WHERE k IN (SELECT k FROM dim)", "where"),
                    ("SELECT k, x FROM {r} WHERE x > (SELECT avg(x) FROM t)", "stream"),
                ]
            )
        )
        select = sub.format(r=relation).replace(
            "SELECT k", f"SELECT {_items(bounds)}{', ' if bounds else ''}k", 1
        )
    if where is not None:  # the subquery forms have a WHERE of their own
        select += f" {'AND' if form == 'subquery' and ' WHERE ' in sub else 'WHERE'} {where}"
    if form == "aggregate" and (keys or bounds):
        select += f" GROUP BY {', '.join(str(i + 1) for i in range(len(bounds) + len(keys)))}"
    if form == "aggregate" and keyed:
        if draw(st.booleans()):
            select += " HAVING count(*) > 1"  # monotone: a key that passed never leaves the table
    if form == "window_function" and draw(st.booleans()):
        select += " QUALIFY f IS NOT NULL"
    emit = "FINAL" if window else draw(st.sampled_from(["FINAL", "CHANGES"]))
    # The rows sessions form from: those the outermost SELECT's WHERE keeps, when it reads t.
    plain_where = form in ("project", "aggregate", "distinct", "window_function") or (
        form == "subquery" and place == "select"
    )
    kept = where if relation == "t" and plain_where else None
    select = cte + select
    return select, window, emit, keyed and emit == "CHANGES", form, (keys, kept)


def _join_query(draw, form: str):
    """A join of streams t and u: an interval join (INNER, LEFT, RIGHT or FULL, with or without
    a time bound), an aggregate over one (EMIT FINAL, or refused under EMIT CHANGES), or a
    window join (both sides' rows in the same TUMBLING or SLIDING window)."""
    kind = draw(st.sampled_from(["JOIN", "LEFT JOIN", "RIGHT JOIN", "FULL JOIN"]))
    window = None if form == "stream_join" else draw(st.sampled_from([("tumbling", 60), ("sliding", 60, 30)]))
    bound = draw(st.sampled_from(BOUNDS)) if window is None else ""
    relation = f"t {kind} u ON t.k = u.k{bound}"
    where = draw(
        st.one_of(st.none(), st.sampled_from(["t.x > 0", "u.y < 100", "t.s IS NOT NULL OR u.s = 'p'"]))
    )
    lead = ["_window_start"] if window else []
    aggregate = draw(st.booleans())
    if aggregate:
        aggs = draw(
            st.lists(
                st.sampled_from(["count(*)", "sum(u.x)", "max(t.y)", "count(u.s)"]), min_size=1, max_size=3
            )
        )
        select = f"SELECT {_items(lead + ['t.k'] + aggs)} FROM {relation}"
    else:
        select = f"SELECT {_items(lead + draw(st.lists(st.sampled_from(JOIN_ITEMS), min_size=1, max_size=4)))} FROM {relation}"
    if where is not None:
        select += f" WHERE {where}"
    if aggregate:
        select += f" GROUP BY {', '.join(str(i + 1) for i in range(len(lead) + 1))}"
    emit = "FINAL" if window else draw(st.sampled_from(["FINAL", "CHANGES"]))
    return select, window, emit, False, form, ([], None)


def _items(items: list[str]) -> str:
    """Select items named c0, c1, … (the window's start keeps its name)."""
    return ", ".join(item if item == "_window_start" else f"{item} AS c{i}" for i, item in enumerate(items))


def _clause(window) -> str:
    if window is None:
        return ""
    if window[0] == "sliding":
        return f" WINDOW SLIDING(ts, {window[1]}s, {window[2]}s)"
    return f" WINDOW {window[0].upper()}(ts, {window[1]}s)"


def batch(
    select: str, table: pa.Table, window, sessions: tuple, other: pa.Table | None = None
) -> list[tuple] | None:
    """The SELECT as DuckDB batch SQL over ``table`` as t (and ``other`` as u) (per window: each
    window's rows of each, with ``_window_start`` on t's; sessions per ``sessions`` = (keys, the
    condition of the rows they form from)); None when DuckDB refuses it."""
    con = duckdb.connect(config={"threads": 1})
    con.execute(f"CREATE TABLE dim AS {DIM}")
    con.register("input", table.append_column("seq", pa.array(range(table.num_rows), pa.int64())))
    if other is not None:
        con.register("other", other)
    try:
        if window is None:
            con.execute("CREATE VIEW t AS SELECT * EXCLUDE (seq) FROM input")
            if other is not None:
                con.execute("CREATE VIEW u AS SELECT * FROM other")
            return con.sql(select).fetchall()
        if window[0] == "session":
            return _per_session(con, select, window[1], *sessions)
        size, step = window[1], window[-1]
        times = table.column("ts").to_pylist() + (other.column("ts").to_pylist() if other is not None else [])
        seconds = sorted({int((ts - EPOCH).total_seconds()) for ts in times})
        starts = sorted({t - t % step - j * step for t in seconds for j in range(size // step)})
        rows = []
        for start in starts:
            if not any(start <= t < start + size for t in seconds):
                continue
            ws = EPOCH + dt.timedelta(seconds=start)
            con.execute(
                f"CREATE OR REPLACE VIEW t AS SELECT * EXCLUDE (seq), TIMESTAMP '{ws}' AS _window_start FROM input "
                f"WHERE ts >= TIMESTAMP '{ws}' AND ts < TIMESTAMP '{ws}' + INTERVAL {size} SECOND"
            )
            if other is not None:
                con.execute(
                    f"CREATE OR REPLACE VIEW u AS SELECT * FROM other "
                    f"WHERE ts >= TIMESTAMP '{ws}' AND ts < TIMESTAMP '{ws}' + INTERVAL {size} SECOND"
                )
            rows += con.sql(select).fetchall()
        return rows
    except duckdb.Error:
        return None
    finally:
        con.close()


def _per_session(con, select: str, gap: int, keys: list[str], kept: str | None) -> list[tuple]:
    """``select`` over each session's rows: sessions per ``keys`` (none: the whole input) over
    the rows ``kept`` keeps, a new one where the gap to the key's previous row is at least ``gap``
    seconds."""
    part = f"PARTITION BY {', '.join(keys)} " if keys else ""
    con.execute(
        f"""CREATE TABLE s AS
            WITH b AS (SELECT *, CASE WHEN epoch(ts) - lag(epoch(ts)) OVER ({part}ORDER BY ts, seq) >= {gap}
                                 THEN 1 ELSE 0 END AS brk FROM input WHERE {kept or "TRUE"}),
                 c AS (SELECT *, sum(brk) OVER ({part}ORDER BY ts, seq) AS sid FROM b)
            SELECT *, dense_rank() OVER (ORDER BY {", ".join([*keys, "sid"])}) AS sn FROM c"""
    )
    rows = []
    for (sn,) in con.sql("SELECT DISTINCT sn FROM s").fetchall():
        con.execute(
            "CREATE OR REPLACE VIEW t AS SELECT * EXCLUDE (brk, sid, sn, seq), min(ts) OVER () AS _window_start "
            f"FROM s WHERE sn = {sn} ORDER BY seq"
        )
        rows += con.sql(select).fetchall()
    return rows


def refused_reasons() -> list[str]:
    """The refusals docs/sql.md lists: each bullet of its "What is refused" section starts with
    the message's first words in backticks."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## What is refused", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^- `([^`]+)`", section, flags=re.M)


@pytest.mark.parametrize("form", FORMS)
@property_test(v1_examples=QUERY_EXAMPLES, data=streams(max_rows=40), draw=st.data())
def test_random_selects_stream_to_the_batch_result(processor, form, data, draw):
    table, splits, size = data
    select, window, emit, keyed, form, sessions = draw.draw(queries(form), label="query")
    other, other_splits = None, ()
    if form in ("stream_join", "window_join"):
        other, other_splits, _ = draw.draw(streams(max_rows=30), label="stream u")
    expected = batch(select, table, window, sessions, other)
    assume(expected is not None)  # the grammar drew SQL DuckDB itself refuses
    kind = "TABLE" if keyed else "STREAM"
    sink = "" if keyed else "'o.type' = 'python', "
    if other is not None:
        sink += "'t.type' = 'python', 'u.type' = 'python', "
    sql = (
        f"CREATE {kind} o AS {select}{_clause(window)} EMIT {emit} WITH ({sink}max_batch_size = {size}, "
        f"'watermark.max_out_of_orderness' = '{LATENESS_S}s'{strategy_option(processor)})"
    )
    engine = velosql.connect(processor=split_entry(processor)[0])
    try:
        engine.sql(f"CREATE TABLE dim AS {DIM}")
        push_split(engine, "t", table, splits)
        if other is not None:
            push_split(engine, "u", other, other_splits)
        try:
            job = engine.execute(sql)
        except SqlError as exc:
            reason = next((r for r in refused_reasons() if r in str(exc)), None)
            assert reason is not None, f"refused without a documented reason: {exc}\n{sql}"
            REFUSALS[reason] += 1
            return
        job.wait(60)
        assert job.done
        if keyed:
            got = engine.sql("SELECT * FROM o").fetchall()
        else:
            got = [tuple(r.values()) for r in engine.pull("o").to_pylist()]
    finally:
        engine.close()
    if emit == "CHANGES" and form == "aggregate" and not keyed:
        got = got[-1:]  # a global aggregate's running values: the last is the result
        expected = expected[-1:]
    assert_rows_equal(got, expected)
    COMPARED[(form, window[0] if window else None, emit, "cte" if "WITH v" in select else "")] += 1


@pytest.fixture(scope="module", autouse=True)
def _report_refusals():
    yield
    print("\ncompared with batch SQL:", dict(COMPARED))
    print("refused at creation, by reason:", dict(REFUSALS))
