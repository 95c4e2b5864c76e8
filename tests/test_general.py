"""Statements of no specialised shape: each runs on the operator EXPLAIN names, with the batch
answer, or is refused at creation naming its construct. Every test runs on each processor of the
matrix (conftest.py)."""

from __future__ import annotations

import datetime as dt

import duckdb
import pyarrow as pa
import pytest
from conftest import SOME, SOME_IDS
from test_oracle import assert_rows_equal, oracle

import velosql
from velosql.errors import SqlError
from velosql.testing import push_split

# A part of the processor matrix: V2 runs these operators in the job's process, and the
# query-generating test (test_queries.py) covers every entry.
pytestmark = [
    pytest.mark.usefixtures("processor_matrix"),
    pytest.mark.parametrize("processor_matrix", SOME, ids=SOME_IDS, indirect=True),
]

BASE = dt.datetime(2024, 1, 1)
ROWS = pa.table(
    {
        "k": ["a", "b", "a", "c", "b", "a", None, "c"],
        "name": ["x", "y", "x", "z", "y", "x", "x", None],
        "qty": [50, 150, 200, 10, 300, 120, 7, 180],
        "v": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.5, -1.0],
        "ts": [BASE + dt.timedelta(seconds=s) for s in (0, 10, 20, 70, 80, 130, 135, 200)],
    }
)
SPLITS = [3, 5]
WITH = "WITH ('o.type' = 'python', max_batch_size = 2, 'watermark.max_out_of_orderness' = '5s')"


def stream(sql: str, table: pa.Table = ROWS, setup: str | None = None) -> list[tuple]:
    with velosql.connect() as engine:
        if setup:
            engine.sql(setup)
        push_split(engine, "t", table, SPLITS)
        engine.execute(f"CREATE STREAM o AS {sql} {WITH}").wait(60)
        return [tuple(r.values()) for r in engine.pull("o").to_pylist()]


def batch(sql: str, table: pa.Table = ROWS, setup: str | None = None) -> list[tuple]:
    if setup is None:
        return oracle(sql, table)
    con = duckdb.connect()
    con.execute(setup)
    con.register("t", table)
    return con.sql(sql).fetchall()


def per_window(sql: str, size_s: int, table: pa.Table = ROWS) -> list[tuple]:
    """``sql`` over each tumbling window's rows (with ``_window_start``), as batch SQL."""
    con = duckdb.connect()
    con.register("input", table)
    starts = sorted({int((ts - dt.datetime(1970, 1, 1)).total_seconds()) // size_s * size_s
                     for ts in table.column("ts").to_pylist()})  # fmt: skip
    rows = []
    for start in starts:
        ws = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=start)
        con.execute(
            f"CREATE OR REPLACE VIEW t AS SELECT *, TIMESTAMP '{ws}' AS _window_start FROM input "
            f"WHERE ts >= TIMESTAMP '{ws}' AND ts < TIMESTAMP '{ws}' + INTERVAL {size_s} SECOND"
        )
        rows += con.sql(sql).fetchall()
    return rows


RUNNING = "OVER (PARTITION BY k ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"


def test_a_cte_filters_the_stream_as_batch_sql():
    sql = "WITH big AS (SELECT * FROM t WHERE qty > 100) SELECT k, qty FROM big"
    assert_rows_equal(stream(sql), batch(sql))
    assert len(stream(sql)) == 5 < ROWS.num_rows  # the CTE's filter applies (it was once dropped)


def test_select_distinct_emit_changes_passes_each_distinct_row_once():
    got = stream("SELECT DISTINCT name FROM t EMIT CHANGES")
    assert got == [("x",), ("y",), ("z",), (None,)]  # first occurrences, in arrival order


def test_select_distinct_in_a_window_is_distinct_per_window():
    got = stream("SELECT DISTINCT name, _window_start FROM t WINDOW TUMBLING(ts, 60s)")
    assert_rows_equal(got, per_window("SELECT DISTINCT name, _window_start FROM t", 60))


@pytest.mark.parametrize("fn", ["stddev(v)", "stddev_pop(v)", "variance(v)", "var_pop(v)", "median(v)",
                                "quantile_cont(v, 0.75)"])  # fmt: skip
def test_holistic_and_variance_aggregates_emit_changes_as_running_values(fn):
    got = stream(f"SELECT k, {fn} AS a FROM t GROUP BY k EMIT CHANGES")
    want = batch(f"SELECT k, {fn} {RUNNING} FROM t ORDER BY seq")
    assert_rows_equal(got, want, ordered=True)


def test_median_and_stddev_emit_changes_without_group_by():
    got = stream("SELECT median(v) AS m, stddev(v) AS sd FROM t WHERE qty > 0 EMIT CHANGES")
    w = "OVER (ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
    want = batch(f"SELECT median(v) {w}, stddev(v) {w} FROM t WHERE qty > 0 ORDER BY seq")
    assert_rows_equal(got, want, ordered=True)


def test_percentile_cont_within_group_runs_at_end_of_input():
    sql = "SELECT k, PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY v) AS p FROM t GROUP BY k"
    assert_rows_equal(stream(f"{sql} EMIT FINAL"), batch(sql))


def test_a_select_item_may_use_an_earlier_items_alias_with_group_by():
    sql = (
        "SELECT CASE WHEN qty > 100 THEN 'big' ELSE 'small' END AS cls, "
        "CASE WHEN cls = 'big' THEN 1 ELSE 0 END AS flag, count(*) AS n, n * 2 AS n2 FROM t GROUP BY ALL"
    )
    assert_rows_equal(stream(f"{sql} EMIT FINAL"), batch(sql))


def test_a_scalar_subquery_with_an_aggregate_in_the_select_list():
    dim = "CREATE TABLE dim AS SELECT * FROM (VALUES ('a', 10), ('b', 20)) v(k, w)"
    sql = "SELECT k, count(*) AS n, (SELECT max(w) FROM dim) AS top FROM t GROUP BY k"
    assert_rows_equal(stream(f"{sql} EMIT FINAL", setup=dim), batch(sql, setup=dim))
    over_stream = "SELECT k, qty FROM t WHERE qty > (SELECT avg(qty) FROM t)"
    assert_rows_equal(stream(f"{over_stream} EMIT FINAL"), batch(over_stream))


def test_a_cte_over_a_duckdb_table_joins_the_stream():
    dim = "CREATE TABLE dim AS SELECT * FROM (VALUES ('a', 'alpha'), ('c', 'gamma')) v(k, label)"
    sql = "WITH d AS (SELECT k, upper(label) AS label FROM dim) SELECT t.k, d.label, t.qty FROM t JOIN d ON t.k = d.k"
    assert_rows_equal(stream(sql, setup=dim), batch(sql, setup=dim))


def test_a_subquery_in_from_aggregates_at_end_of_input():
    sql = "SELECT k, n FROM (SELECT k, count(*) AS n FROM t GROUP BY k) WHERE n > 1"
    assert_rows_equal(stream(f"{sql} EMIT FINAL"), batch(sql))


def test_a_window_function_without_a_buffer_runs_per_closed_window():
    sql = "SELECT k, v, sum(v) OVER (PARTITION BY k ORDER BY ts) AS s, _window_start FROM t"
    got = stream(f"{sql} WINDOW TUMBLING(ts, 60s) EMIT FINAL")
    assert_rows_equal(got, per_window(sql, 60))
    qualify = "SELECT k, v FROM t QUALIFY row_number() OVER (PARTITION BY k ORDER BY v DESC) = 1"
    assert_rows_equal(stream(f"{qualify} EMIT FINAL"), batch(qualify))


@pytest.mark.parametrize(
    ("sql", "construct"),
    [
        ("SELECT k, v, sum(v) OVER (PARTITION BY k ORDER BY ts) AS s FROM t", "a window function OVER"),
        ("SELECT k, n FROM (SELECT k, count(*) AS n FROM t GROUP BY k)", "a subquery in FROM"),
        ("SELECT k, qty FROM t WHERE qty > (SELECT avg(qty) FROM t)", "a subquery over the stream"),
        ("SELECT k, PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY v) AS p FROM t GROUP BY k", "WITHIN GROUP"),
        ("SELECT k, arg_max(name, v) AS top FROM t GROUP BY k", "the aggregate arg_max()"),
        ("SELECT DISTINCT ON (k) k, v FROM t", "DISTINCT ON"),
    ],
)
def test_emit_changes_without_an_incremental_form_is_refused_naming_the_construct(sql, construct):
    with pytest.raises(SqlError) as err:
        stream(f"{sql} EMIT CHANGES")
    assert f"EMIT CHANGES cannot run {construct}" in str(err.value)
    assert "EMIT FINAL" in str(err.value) and "WINDOW" in str(err.value)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) AS n FROM t EMIT FINAL",
        "SELECT count(*) AS n FROM t EMIT CHANGES",
        "SELECT 1 AS one FROM t",
        "SELECT _window_start, count(*) AS n FROM t WINDOW TUMBLING(ts, 60s)",
    ],
)
def test_queries_that_read_no_source_column_run(sql):
    got = stream(sql)
    if "WINDOW" in sql:
        want = per_window("SELECT _window_start, count(*) FROM t GROUP BY 1", 60)
    elif "CHANGES" in sql:
        want = [(i + 1,) for i in range(ROWS.num_rows)]
    else:
        want = batch(sql.replace(" EMIT FINAL", ""))
    assert_rows_equal(got, want)


def test_arrival_ordered_aggregates_over_several_files_follow_the_files_order(tmp_path):
    """STRING_AGG and LIST keep arrival order (file after file) when V2 workers read the files
    themselves, each several of them: partials are merged by each value's arrival number."""
    for i in range(4):
        rows = [f"{'abc'[(i + j) % 3]},{i}_{j},2024-01-01 00:{j // 20:02d}:{j % 60:02d}" for j in range(60)]
        (tmp_path / f"part{i}.csv").write_text("k,v,ts\n" + "\n".join(rows) + "\n")
    sql = (
        "CREATE STREAM o AS SELECT k, _window_start, string_agg(v, '|') AS sa, list(v) AS lv FROM src "
        "GROUP BY k WINDOW TUMBLING(ts, 60s) EMIT FINAL WITH ('src.type' = 'file_source', "
        f"'src.path' = '{tmp_path}/*.csv', 'src.format' = 'csv', 'watermark.max_out_of_orderness' = '1h')"
    )
    with velosql.connect() as engine:
        engine.execute(sql).wait(60)
        got = engine.sql("SELECT k, _window_start, sa, lv FROM o").fetchall()
    want = (
        duckdb.connect(config={"threads": 1})
        .sql(
            "SELECT k, time_bucket(INTERVAL 60 SECOND, ts::TIMESTAMP, TIMESTAMP '1970-01-01'), string_agg(v, '|'), "
            f"list(v) FROM read_csv('{tmp_path}/*.csv') GROUP BY ALL"
        )
        .fetchall()
    )
    assert_rows_equal(got, want)


def test_explain_names_the_operator_and_why(processor_matrix):
    with velosql.connect() as engine:
        engine.push("t", ROWS)
        text = engine.explain(
            f"CREATE STREAM o AS SELECT DISTINCT name, _window_start FROM t WINDOW TUMBLING(ts, 1m) {WITH}"
        )
        assert "operator:    general: the whole SELECT runs over each window's on-time rows" in text
        assert "SELECT DISTINCT" in text.split("operator:")[1].splitlines()[0]
        text = engine.explain(f"CREATE STREAM o AS SELECT DISTINCT name FROM t {WITH}")
        assert "operator:    distinct" in text
        text = engine.explain(
            f"CREATE STREAM o AS WITH b AS (SELECT * FROM t WHERE v > 1) SELECT k FROM b {WITH}"
        )
        assert "operator:    project: stateless, the whole SELECT runs on each micro-batch" in text
        if processor_matrix[0].startswith("v2"):
            general = engine.explain(f"CREATE STREAM o AS SELECT DISTINCT name FROM t {WITH}")
            assert "routing:     one partition (the V1 engine) in the job's process: DISTINCT" in general


def test_order_sensitive_aggregates_in_session_windows_follow_arrival_order():
    """A session's rows are sorted by event time to find the session; FIRST, LAST, STRING_AGG and
    LIST still see them in arrival order, as everywhere else (docs/sql.md)."""
    late = pa.table(
        {
            "k": ["a"] * 5,
            "s": ["p", "q", "r", "s", "t"],
            "ts": [BASE + dt.timedelta(seconds=x) for x in (5, 1, 3, 2, 4)],
        }
    )
    aggs = "string_agg(s, ',') AS sa, first(s) AS f, last(s) AS l, list(s) AS ls"
    got = stream(f"SELECT k, {aggs} FROM t GROUP BY k WINDOW SESSION(ts, 30s)", late)
    want = batch(
        "SELECT k, string_agg(s, ',' ORDER BY seq), first(s ORDER BY seq), last(s ORDER BY seq), "
        "list(s ORDER BY seq) FROM t GROUP BY k",
        late,
    )
    assert got == want == [("a", "p,q,r,s,t", "p", "t", ["p", "q", "r", "s", "t"])]


def test_a_statement_reads_an_earlier_statements_output_as_a_stream():
    """Chained statements: the later ones read every row the earlier one emits (they once read its
    table when it was still empty: 0 records in)."""
    many = pa.table(
        {"k": ["a", "b", "a", "c", "b", "a"] * 50, "qty": list(range(300)),
         "ts": [BASE + dt.timedelta(seconds=i) for i in range(300)]}
    )  # fmt: skip
    with velosql.connect() as engine:
        push_split(engine, "t", many, [100, 200])
        jobs = engine.run(
            "CREATE STREAM big AS SELECT k, qty, ts FROM t WHERE qty % 3 = 0 WITH (max_batch_size = 7);\n"
            "CREATE STREAM per_k AS SELECT k, count(*) AS n, sum(qty) AS s FROM big GROUP BY k EMIT FINAL;\n"
            "CREATE STREAM per_min AS SELECT _window_start, count(*) AS n FROM big "
            "WINDOW TUMBLING(ts, 60s) EMIT FINAL;",
            timeout=60,
        )
        assert [j.metrics()["records_in"] for j in jobs] == [300, 100, 100]
        per_k = engine.sql("SELECT * FROM per_k").fetchall()
        per_min = engine.sql("SELECT * FROM per_min").fetchall()
    big = "(SELECT * FROM t WHERE qty % 3 = 0)"
    assert_rows_equal(per_k, batch(f"SELECT k, count(*), sum(qty) FROM {big} GROUP BY k", many))
    want = batch(
        f"SELECT time_bucket(INTERVAL 60 SECOND, ts, TIMESTAMP '1970-01-01') AS w, count(*) FROM {big} GROUP BY w",
        many,
    )
    assert_rows_equal(per_min, want)


def test_union_all_of_the_stream_runs_per_micro_batch_and_per_window():
    union = "SELECT k, qty FROM t WHERE qty > 100 UNION ALL SELECT k, -qty FROM t WHERE v < 3"
    assert_rows_equal(stream(f"{union} EMIT CHANGES"), batch(union))
    windowed = (
        "SELECT k, _window_start, count(*) AS n FROM t WHERE qty > 100 GROUP BY ALL "
        "UNION ALL SELECT 'all', _window_start, count(*) FROM t GROUP BY ALL"
    )
    got = stream(f"{windowed} WINDOW TUMBLING(ts, 60s) EMIT FINAL")
    assert_rows_equal(got, per_window(windowed, 60))
    distinct = "SELECT k FROM t WHERE qty > 100 UNION SELECT k FROM t WHERE v < 3"
    assert_rows_equal(stream(f"{distinct} EMIT FINAL"), batch(distinct))


def sessions_batch(sql: str, gap_s: int, key: str | None, table: pa.Table = ROWS) -> list[tuple]:
    """``sql`` over each session's rows as batch SQL: sessions per ``key`` (None: the whole
    input), a new one where the gap to the key's previous row is at least ``gap_s``."""
    con = duckdb.connect()
    con.register("input", table.append_column("seq", pa.array(range(table.num_rows), pa.int64())))
    part = f"PARTITION BY {key} " if key else ""
    con.execute(
        f"""CREATE TABLE s AS WITH b AS (SELECT *, CASE WHEN epoch(ts) - lag(epoch(ts)) OVER ({part}ORDER BY ts, seq)
                >= {gap_s} THEN 1 ELSE 0 END AS brk FROM input)
            SELECT *, sum(brk) OVER ({part}ORDER BY ts, seq) AS sid FROM b"""
    )
    sessions = con.sql(f"SELECT DISTINCT {key or 'NULL'}, sid FROM s").fetchall()
    rows = []
    for k, sid in sessions:
        match = f"{key} IS NOT DISTINCT FROM {'NULL' if k is None else repr(k)} AND " if key else ""
        con.execute(
            f"CREATE OR REPLACE VIEW t AS SELECT * EXCLUDE (brk, sid, seq), min(ts) OVER () AS _window_start "
            f"FROM s WHERE {match}sid = {sid} ORDER BY seq"
        )
        rows += con.sql(sql).fetchall()
    return rows


def test_session_windows_run_any_select_per_closed_session():
    per_key = "SELECT k, _window_start, PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY v) AS p, count(DISTINCT name) AS d FROM t GROUP BY k, _window_start"
    got = stream(f"{per_key} WINDOW SESSION(ts, 30s)")
    assert_rows_equal(got, sessions_batch(per_key, 30, "k"))
    whole = "SELECT DISTINCT name FROM t"
    assert_rows_equal(stream(f"{whole} WINDOW SESSION(ts, 60s)"), sessions_batch(whole, 60, None))
