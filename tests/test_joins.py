"""Joins: a stream with DuckDB tables as they are at each micro-batch, and two streams joined
(interval joins and window joins, INNER/LEFT/RIGHT/FULL) or unioned, each with the batch answer
over the on-time rows. The query-generating test (test_queries.py, forms ``stream_join`` and
``window_join``) draws random ones; these pin each behaviour by name."""

from __future__ import annotations

import datetime as dt
import threading

import duckdb
import pyarrow as pa
import pytest
from test_oracle import assert_rows_equal

import velosql
from velosql.errors import SqlError
from velosql.plan.planner import plan
from velosql.runtime import operators
from velosql.sql.parser import parse_one
from velosql.testing import push_split

BASE = dt.datetime(2024, 1, 1)
# A part of the processor matrix: statements over several streams run in the job's process.
SOME = [("v1", None), ("v2:2", "hash")]


def at(*seconds: int) -> list[dt.datetime]:
    return [BASE + dt.timedelta(seconds=s) for s in seconds]


ORDERS = pa.table(
    {"id": [1, 2, 3, 4, 5, 6], "k": ["a", "b", "a", "c", "b", "d"], "ts": at(0, 30, 60, 200, 260, 400)}
)
SHIPS = pa.table(
    {"sid": [10, 11, 12, 13, 14], "k": ["a", "b", "c", "a", "e"], "ts": at(20, 100, 210, 70, 300)}
)
INPUTS = "'orders.type' = 'python', 'ships.type' = 'python', 'o.type' = 'python'"
BOUND = "s.ts BETWEEN o.ts - INTERVAL '60' SECOND AND o.ts + INTERVAL '30' SECOND"


def stream(
    select: str,
    options: str = ", 'watermark.max_out_of_orderness' = '3m'",
    orders=ORDERS,
    ships=SHIPS,
    setup: str = "",
):
    """The statement's output rows and its engine's late table, with each stream pushed in
    batches of two rows (shipment 13 comes 140 s behind shipment 12: within 3 minutes)."""
    with velosql.connect() as engine:
        if setup:
            engine.sql(setup)
        push_split(engine, "orders", orders, range(2, orders.num_rows, 2))
        push_split(engine, "ships", ships, range(2, ships.num_rows, 2))
        job = engine.execute(f"CREATE STREAM o AS {select} WITH ({INPUTS}, max_batch_size = 2{options})")
        job.wait(60)
        assert job.done and job.error is None, job.error
        late = engine.sql("SELECT _source, * EXCLUDE (_source) FROM o__late").fetchall()
        if late:
            late = engine.sql("SELECT _source, coalesce(id, sid) FROM o__late").fetchall()
        return [tuple(r.values()) for r in engine.pull("o").to_pylist()], late


def batch(select: str, orders=ORDERS, ships=SHIPS, setup: str = "") -> list[tuple]:
    con = duckdb.connect()
    if setup:
        con.execute(setup)
    con.register("orders", orders)
    con.register("ships", ships)
    return con.sql(select).fetchall()


@pytest.mark.usefixtures("processor_matrix")
@pytest.mark.parametrize("processor_matrix", SOME, ids=["v1", "v2:2-hash"], indirect=True)
@pytest.mark.parametrize("kind", ["JOIN", "LEFT JOIN", "RIGHT JOIN", "FULL OUTER JOIN"])
def test_an_interval_join_of_two_streams_is_the_batch_join(kind):
    select = f"SELECT o.id, s.sid, o.k, s.ts AS shipped FROM orders o {kind} ships s ON o.k = s.k AND {BOUND}"
    got, late = stream(select)
    assert_rows_equal(got, batch(select))
    assert late == []


@pytest.mark.parametrize("kind", ["JOIN", "LEFT JOIN", "FULL JOIN"])
def test_a_join_without_a_time_bound_keeps_its_rows_to_the_end_of_the_input(kind):
    select = f"SELECT o.id, s.sid FROM orders o {kind} ships s ON o.k = s.k"
    got, _ = stream(select)
    assert_rows_equal(got, batch(select))


def test_a_join_with_its_time_bound_in_where_as_velostream_writes_it():
    select = (
        "SELECT o.id, s.sid FROM orders o JOIN ships s ON o.k = s.k "
        "WHERE s.ts BETWEEN o.ts AND o.ts + INTERVAL '24' HOUR"
    )
    got, _ = stream(select)
    assert_rows_equal(got, batch(select))
    text = velosql.connect().explain(f"CREATE STREAM o AS {select} WITH ({INPUTS})")
    assert "s.ts - o.ts between 0s and 86400s" in text


def _operator(select: str):
    """The operator of ``select`` and a connection it is bound to (each input's empty batch)."""
    p = plan(parse_one(f"CREATE STREAM o AS {select} WITH ({INPUTS})"))
    op = operators.build(p.operator)
    con = duckdb.connect()
    empties = [_stamped(ORDERS.slice(0, 0), 0), _stamped(SHIPS.slice(0, 0), 0)]
    for i, e in enumerate(empties):
        con.register(f"__in{i}", e)
    op.bind(con, empties)
    return op, con


def _stamped(table: pa.Table, seq: int, partition: int = 0) -> pa.Table:
    n = table.num_rows
    et = [int((t - dt.datetime(1970, 1, 1)).total_seconds() * 1e6) for t in table["ts"].to_pylist()]
    return (
        table.append_column("_partition", pa.array([partition] * n, pa.int32()))
        .append_column("_offset", pa.array(range(n), pa.int64()))
        .append_column("__seq", pa.array(range(seq, seq + n), pa.int64()))
        .append_column("__et", pa.array(et, pa.int64()))
        .append_column("__wm", pa.array([-(2**63)] * n, pa.int64()))
    )


def _process(op, con, table: pa.Table, side: int):
    con.register("__in", table)
    try:
        return op.process(table, side)
    finally:
        con.unregister("__in")


def _us(seconds: int) -> int:
    return int((BASE + dt.timedelta(seconds=seconds) - dt.datetime(1970, 1, 1)).total_seconds() * 1e6)


def test_join_state_is_dropped_once_no_row_of_the_other_stream_can_match():
    # s.ts - o.ts in [-60s, 30s]: an order can match ships up to 30 s after it, a shipment
    # orders up to 60 s after it.
    op, con = _operator(f"SELECT o.id, s.sid FROM orders o JOIN ships s ON o.k = s.k AND {BOUND}")
    _process(op, con, _stamped(ORDERS.slice(0, 1), 0), 0)  # order 1 at 0 s
    out = _process(op, con, _stamped(SHIPS.slice(0, 1), 1), 1)  # shipment 10 at 20 s: a match
    assert out.to_pylist() == [{"id": 1, "sid": 10}]
    assert op.held == [1, 1]
    op.on_watermark(_us(30))  # no shipment before 30 s is to come: order 1 (to 30 s) is kept
    assert op.held == [1, 1]
    op.on_watermark(_us(31))
    assert op.held == [0, 1]
    op.on_watermark(_us(81))  # shipment 10 can meet orders up to 80 s
    assert op.held == [0, 0]


def test_an_outer_row_comes_when_its_row_can_match_no_more():
    op, con = _operator(f"SELECT o.id, s.sid FROM orders o LEFT JOIN ships s ON o.k = s.k AND {BOUND}")
    assert _process(op, con, _stamped(ORDERS.slice(3, 1), 0), 0).num_rows == 0  # order 4 at 200 s, c
    assert op.on_watermark(_us(230)) is None  # a shipment up to 230 s may still match it
    rows = op.on_watermark(_us(231))
    assert rows.to_pylist() == [{"id": 4, "sid": None}]
    assert op.held == [0, 0]


def test_a_matched_row_gives_no_outer_row_when_it_expires():
    op, con = _operator(f"SELECT o.id, s.sid FROM orders o FULL JOIN ships s ON o.k = s.k AND {BOUND}")
    _process(op, con, _stamped(SHIPS.slice(2, 1), 0), 1)  # shipment 12 at 210 s, c
    assert _process(op, con, _stamped(ORDERS.slice(3, 1), 1), 0).to_pylist() == [{"id": 4, "sid": 12}]
    assert op.on_watermark(_us(400)) is None
    assert op.held == [0, 0]


def test_late_rows_of_either_stream_go_to_the_late_table_with_their_stream():
    orders = pa.table({"id": [1, 2, 3], "k": ["a", "a", "a"], "ts": at(100, 200, 50)})  # 3 is late
    ships = pa.table({"sid": [10, 11, 12], "k": ["a", "a", "a"], "ts": at(90, 190, 20)})  # 12 is late
    select = f"SELECT o.id, s.sid FROM orders o JOIN ships s ON o.k = s.k AND {BOUND}"
    got, late = stream(select, ", 'watermark.max_out_of_orderness' = '5s'", orders, ships)
    on_time = batch(select, orders.slice(0, 2), ships.slice(0, 2))
    assert_rows_equal(got, on_time)
    assert sorted((r[0], r[1]) for r in late) == [("orders", 3), ("ships", 12)]


def test_a_window_join_runs_each_window_over_both_streams_rows():
    select = (
        "SELECT _window_start AS ws, o.k, count(*) AS n, max(s.sid) AS last FROM orders o "
        "JOIN ships s ON o.k = s.k GROUP BY ALL WINDOW TUMBLING(ts, INTERVAL '2' MINUTE)"
    )
    got, _ = stream(select)
    expected = batch(
        "SELECT time_bucket(INTERVAL 2 MINUTE, o.ts) AS ws, o.k, count(*), max(s.sid) FROM orders o "
        "JOIN ships s ON o.k = s.k AND time_bucket(INTERVAL 2 MINUTE, o.ts) = time_bucket(INTERVAL 2 MINUTE, s.ts) "
        "GROUP BY ALL"
    )
    assert expected and got
    assert_rows_equal(got, expected)


def test_a_window_join_without_aggregates_emits_changes_when_its_window_closes():
    # Velostream's window join: WINDOW TUMBLING(INTERVAL …) EMIT CHANGES, event time from WITH.
    select = (
        "SELECT o.id, s.sid FROM orders o JOIN ships s ON o.k = s.k "
        "WINDOW TUMBLING(INTERVAL '2' MINUTE) EMIT CHANGES"
    )
    got, _ = stream(select, ", 'event.time.field' = 'ts', 'watermark.max_out_of_orderness' = '3m'")
    expected = batch(
        "SELECT o.id, s.sid FROM orders o JOIN ships s ON o.k = s.k "
        "AND time_bucket(INTERVAL 2 MINUTE, o.ts) = time_bucket(INTERVAL 2 MINUTE, s.ts)"
    )
    assert_rows_equal(got, expected)


def test_union_all_of_two_streams_passes_each_streams_rows():
    select = "SELECT id AS n, k FROM orders WHERE k <> 'b' UNION ALL SELECT sid, upper(k) FROM ships"
    got, _ = stream(select)
    assert_rows_equal(got, batch(select))


def test_a_stream_table_join_sees_the_table_as_it_is_at_each_micro_batch():
    with velosql.connect() as engine:
        engine.sql("CREATE TABLE rates AS SELECT 'a' AS k, 1.0 AS rate")
        channel = engine.channel("orders")
        channel.push(pa.table({"id": [1], "k": ["a"]}))
        job = engine.execute(
            "CREATE STREAM o AS SELECT id, rate FROM orders JOIN rates USING (k) "
            "WITH ('orders.type' = 'python', 'o.type' = 'python')"
        )
        _wait_for_rows(engine, job, 1)
        engine.sql("UPDATE rates SET rate = 2.0")
        channel.push(pa.table({"id": [2], "k": ["a"]}))
        channel.close()
        job.wait(60)
        assert sorted(tuple(r.values()) for r in engine.pull("o").to_pylist()) == [(1, 1.0), (2, 2.0)]


def _wait_for_rows(engine, job, n: int) -> None:
    """Until the job has written ``n`` rows (its metrics say so), or fail after 60 s."""
    done = threading.Event()
    for _ in range(6000):
        if job.metrics_data.records_out >= n or job.done:
            break
        done.wait(0.01)
    assert job.metrics_data.records_out >= n


def test_an_aggregate_over_a_join_of_streams_is_refused_under_emit_changes():
    with pytest.raises(SqlError, match="EMIT CHANGES cannot run an aggregate over a join of streams"):
        stream("SELECT o.k, count(*) FROM orders o JOIN ships s ON o.k = s.k GROUP BY o.k")


def test_an_aggregate_over_a_join_of_streams_runs_at_the_end_under_emit_final():
    select = "SELECT o.k, count(*), max(s.sid) FROM orders o LEFT JOIN ships s ON o.k = s.k GROUP BY o.k"
    got, _ = stream(select + " EMIT FINAL")
    assert_rows_equal(got, batch(select))


def test_a_session_window_over_two_streams_is_refused_for_now():
    with pytest.raises(SqlError, match="a SESSION window over several streams is not supported yet"):
        stream(
            "SELECT o.k, count(*) FROM orders o JOIN ships s ON o.k = s.k GROUP BY o.k WINDOW SESSION(ts, 1m)"
        )


def test_sessions_of_a_join_run_as_the_pipeline_the_refusal_suggests():
    """The join in one statement, its output windowed by SESSION in the next: the batch answer of
    sessions over the joined rows (a gap of 60 s, by the shipment's time). A pair comes out when its
    later row arrives, so the join's rows are out of event-time order by up to its inputs'
    lateness plus the join's bound: the next statement allows for that."""
    join = f"SELECT o.k, s.ts FROM orders o JOIN ships s ON o.k = s.k AND {BOUND}"
    with velosql.connect() as engine:
        push_split(engine, "orders", ORDERS, range(2, ORDERS.num_rows, 2))
        push_split(engine, "ships", SHIPS, range(2, SHIPS.num_rows, 2))
        _, sessions = engine.run(
            f"CREATE STREAM j AS {join} WITH ('orders.type' = 'python', 'ships.type' = 'python', "
            "'watermark.max_out_of_orderness' = '3m');\n"
            "CREATE STREAM per_session AS SELECT k, _window_start AS ws, count(*) AS n FROM j GROUP BY k "
            "WINDOW SESSION(ts, 60s) EMIT FINAL WITH ('per_session.type' = 'python', "
            "'watermark.max_out_of_orderness' = '10m')",
            wait=False,
        )
        sessions.wait(60)
        assert sessions.done and sessions.error is None, sessions.error
        got = [tuple(r.values()) for r in engine.pull("per_session").to_pylist()]
    want = batch(
        f"""WITH j AS ({join}),
             b AS (SELECT *, CASE WHEN epoch(ts) - lag(epoch(ts)) OVER (PARTITION BY k ORDER BY ts) >= 60
                                  THEN 1 ELSE 0 END AS brk FROM j),
             s AS (SELECT *, sum(brk) OVER (PARTITION BY k ORDER BY ts) AS sid FROM b)
        SELECT k, min(ts), count(*) FROM s GROUP BY k, sid"""
    )
    assert len(want) >= 2
    assert_rows_equal(got, want)


def test_velostreams_join_bounds_in_with_must_match_the_on_condition():
    select = f"SELECT o.id, s.sid FROM orders o JOIN ships s ON o.k = s.k AND {BOUND}"
    # The bound as written: s.ts - o.ts in [-60 s, 30 s]; 'join.lower_bound' is non-negative.
    got, _ = stream(
        select,
        ", 'join.type' = 'interval', 'join.upper_bound' = '30s', 'join.retention' = '2m', 'watermark.max_out_of_orderness' = '3m'",
    )
    assert_rows_equal(got, batch(select))
    with pytest.raises(SqlError, match="'join.upper_bound' = 3600s is not the bound"):
        stream(select, ", 'join.upper_bound' = '1h'")
    with pytest.raises(SqlError, match="'join.retention' = 10s would drop rows"):
        stream(select, ", 'join.retention' = '10s'")


def test_explain_names_the_join_operator_its_state_bound_and_where_v2_runs_it():
    text = velosql.connect().explain(
        f"CREATE STREAM o AS SELECT o.id FROM orders o LEFT JOIN ships s ON o.k = s.k AND {BOUND} "
        f"WITH ({INPUTS}, processor = 'v2:2')"
    )
    assert "join: a LEFT JOIN of two streams, incremental" in text
    assert "s.ts - o.ts between -60s and 30s" in text
    assert (
        'each stream\'s rows go to the worker of their join key\'s hash ("k" = "k"), over 2 workers' in text
    )


def test_a_join_under_v2_sends_both_streams_rows_to_the_worker_of_their_key():
    select = f"SELECT o.id, s.sid FROM orders o FULL JOIN ships s ON o.k = s.k AND {BOUND}"
    with velosql.connect() as engine:
        push_split(engine, "orders", ORDERS, [2, 4])
        push_split(engine, "ships", SHIPS, [2, 4])
        job = engine.execute(
            f"CREATE STREAM o AS {select} WITH ({INPUTS}, processor = 'v2:2', "
            "'watermark.max_out_of_orderness' = '3m')"
        )
        job.wait(60)
        got = [tuple(r.values()) for r in engine.pull("o").to_pylist()]
        parts = job.metrics()["partitions"]
        workers = engine.sql("SELECT count(*) FROM velosql_partitions").fetchall()[0][0]
        marks = engine.sql("SELECT scope FROM velosql_watermarks WHERE scope = 'worker'").fetchall()
    assert workers == 2 and len(marks) == 2
    assert_rows_equal(got, batch(select))
    assert len(parts) == 2 and len({p["pid"] for p in parts}) == 2
    assert sum(p["records_in"] for p in parts) == ORDERS.num_rows + SHIPS.num_rows


def test_a_keyed_create_table_read_in_a_join_gives_the_latest_row_per_key():
    ticks = pa.table({"k": ["a", "b", "a", "b", "a"], "price": [1.0, 2.0, 3.0, 4.0, 5.0]})
    with velosql.connect() as engine:
        push_split(engine, "ticks", ticks, [2])
        engine.execute(
            "CREATE TABLE prices AS SELECT k, last(price) AS price, count(*) AS n FROM ticks GROUP BY k "
            "EMIT CHANGES WITH ('ticks.type' = 'python')"
        ).wait(60)
        push_split(engine, "orders", ORDERS, [3])
        engine.execute(
            "CREATE STREAM o AS SELECT o.id, p.price, p.n FROM orders o JOIN prices p USING (k) "
            "WITH ('orders.type' = 'python', 'o.type' = 'python')"
        ).wait(60)
        got = sorted(tuple(r.values()) for r in engine.pull("o").to_pylist())
    assert got == [(1, 5.0, 3), (2, 4.0, 2), (3, 5.0, 3), (5, 4.0, 2)]


def test_a_stream_far_ahead_of_the_other_waits_for_it(tmp_path):
    """The orders file could be read to its end at once; while no shipment has come, its reader
    waits after the first micro-batches instead of filling the join's state with every order."""
    n = 20_000
    orders = pa.table({"id": list(range(n)), "k": [f"k{i % 7}" for i in range(n)], "ts": at(*range(n))})
    path = tmp_path / "orders.csv"
    duckdb.from_arrow(orders).write_csv(str(path))
    ships = pa.table(
        {"sid": list(range(40)), "k": [f"k{i % 7}" for i in range(40)], "ts": at(*range(3, n, 500))}
    )
    select = "SELECT o.id, s.sid FROM orders o JOIN ships s ON o.k = s.k AND s.ts BETWEEN o.ts AND o.ts + INTERVAL 5 SECOND"
    with velosql.connect() as engine:
        job = engine.execute(
            f"CREATE STREAM o AS {select} WITH ('orders.type' = 'file_source', 'orders.path' = '{path}', "
            "'orders.batch_size' = 100, 'ships.type' = 'python', "
            "'ships.schema' = 'sid BIGINT, k VARCHAR, ts TIMESTAMP', 'o.type' = 'python', max_batch_size = 200)"
        )
        gate, tick = job.executor.gates[0], threading.Event()
        for _ in range(3000):  # until the orders' reader is held back, at most 30 s
            if not gate.is_set():
                break
            tick.wait(0.01)
        assert not gate.is_set()
        assert job.metrics_data.records_in < 2_000
        push_split(engine, "ships", ships, [10, 20])
        job.wait(60)
        assert job.error is None
        got = [tuple(r.values()) for r in engine.pull("o").to_pylist()]
    assert_rows_equal(got, batch(select, orders, ships))


def test_two_streams_pushed_from_python_join_without_with_keys():
    """Data pushed to two names makes both streams: no WITH key has to declare them."""
    select = f"SELECT o.id, s.sid FROM orders o LEFT JOIN ships s ON o.k = s.k AND {BOUND}"
    with velosql.connect() as engine:
        push_split(engine, "orders", ORDERS, [3])
        push_split(engine, "ships", SHIPS, [2])
        job = engine.execute(
            f"CREATE STREAM o AS {select} WITH ('o.type' = 'python', 'watermark.max_out_of_orderness' = '3m')"
        )
        job.wait(60)
        assert job.plan.shape == "join" and [i.source.name for i in job.plan.inputs] == ["orders", "ships"]
        got = [tuple(r.values()) for r in engine.pull("o").to_pylist()]
    assert_rows_equal(got, batch(select))
