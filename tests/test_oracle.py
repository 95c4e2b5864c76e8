"""The invariant: a streaming query's final result equals the same query as DuckDB batch SQL.

Random data, random batch splits, random micro-batch sizes and arrival shuffled within the allowed
lateness; every query shape and the non-decomposable aggregates; V1 and V2 processor configs.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal

import duckdb
import pyarrow as pa
import pytest
from conftest import property_test, split_entry, strategy_option
from hypothesis import strategies as st

import velosql
from velosql.runtime import running, v2
from velosql.testing import push_split, run_stream

BASE = dt.datetime(2024, 1, 1)
LATENESS_S = 30


@st.composite
def streams(draw, max_rows=60, shuffle=True, max_step=40):
    """(arrival-ordered table, batch splits, micro-batch size) with disorder within the lateness;
    consecutive event times are 0 to ``max_step`` seconds apart."""
    n = draw(st.integers(0, max_rows))
    keys = st.sampled_from(["a", "b", "c", "d", None])
    rows = []
    t = 0
    for _ in range(n):
        t += draw(st.integers(0, max_step))
        rows.append(
            {
                "k": draw(keys),
                "x": draw(st.one_of(st.none(), st.integers(-50, 50))),
                "y": draw(st.floats(-1000, 1000, allow_nan=False, width=32)),
                "s": draw(st.sampled_from(["p", "q", "r", None])),
                "t": t,
            }
        )
    if shuffle:
        # Arrival order sorted by event time plus a delay in [0, lateness]: no row is ever behind
        # the watermark of the rows that arrived before it.
        jitter = [draw(st.integers(0, LATENESS_S)) for _ in rows]
        order = sorted(range(n), key=lambda i: (rows[i]["t"] + jitter[i], i))
        rows = [rows[i] for i in order]
    table = pa.table(
        {
            "k": pa.array([r["k"] for r in rows], pa.string()),
            "x": pa.array([r["x"] for r in rows], pa.int64()),
            "y": pa.array([r["y"] for r in rows], pa.float64()),
            "s": pa.array([r["s"] for r in rows], pa.string()),
            "ts": pa.array([BASE + dt.timedelta(seconds=r["t"]) for r in rows], pa.timestamp("us")),
        }
    )
    splits = draw(st.lists(st.integers(1, max(1, n - 1)), max_size=6))
    batch = draw(st.sampled_from([1, 3, 7, 50, 262144]))
    return table, splits, batch


def oracle(sql: str, table: pa.Table) -> list[tuple]:
    """The query as DuckDB batch SQL over the arrival-ordered input (``seq`` = arrival order)."""
    con = duckdb.connect(config={"threads": 1})
    seq = pa.array(range(table.num_rows), pa.int64())
    con.register("t", table.append_column("seq", seq))
    return con.sql(sql).fetchall()


def _norm(v):
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if isinstance(v, list):
        return tuple(_norm(x) for x in v)
    return v


def _key(row):
    return tuple((x is None, str(type(x)), x if not isinstance(x, float) else round(x, 6)) for x in row)


def assert_rows_equal(actual: list[tuple], expected: list[tuple], ordered: bool = False) -> None:
    a = [tuple(_norm(v) for v in r) for r in actual]
    e = [tuple(_norm(v) for v in r) for r in expected]
    if not ordered:
        a.sort(key=_key)
        e.sort(key=_key)
    assert len(a) == len(e), f"{len(a)} rows streamed, {len(e)} batch\nstreamed={a}\nbatch={e}"
    for ra, re in zip(a, e):
        assert len(ra) == len(re)
        for va, ve in zip(ra, re):
            if isinstance(va, float) or isinstance(ve, float):
                assert va is not None and ve is not None, f"{ra} != {re}"
                assert math.isclose(va, ve, rel_tol=1e-9, abs_tol=1e-6), f"{ra} != {re}"
            else:
                assert va == ve, f"{ra} != {re}\nstreamed={a}\nbatch={e}"


def streamed(sql: str, table, splits, batch, processor) -> list[tuple]:
    """``processor``: an entry of the processor matrix (conftest.IDS).

    Inputs of an odd row count run V2 with its replies interleaved as tightly as it allows: one
    record may wait at a worker (so each send first takes replies) and partial rows are merged,
    or sent to the workers owning their groups, at every reply. Window closes then fall amid
    those sends."""
    sep = " WITH (" if " WITH (" not in sql else None
    tight = table.num_rows % 2 == 1
    opts = (
        f"'o.type' = 'python', 'max_batch_size' = {batch}, 'watermark.max_out_of_orderness' = '{LATENESS_S}s'"
        + (", queue_threshold = 1" if tight else "")
    )
    sql = sql + (f"{sep}{opts}{strategy_option(processor)})" if sep else "")
    merge = (v2.MERGE_ROWS, v2.MERGE_TABLES)
    if tight:
        v2.MERGE_ROWS = v2.MERGE_TABLES = 1
    try:
        out = run_stream(sql, table, splits=splits, processor=split_entry(processor)[0])
    finally:
        v2.MERGE_ROWS, v2.MERGE_TABLES = merge
    return [tuple(r.values()) for r in out.to_pylist()]


@property_test(data=streams())
def test_filter_and_projection(processor, data):
    table, splits, batch = data
    got = streamed("CREATE STREAM o AS SELECT k, x * 2 AS x2, upper(s) AS s, y FROM t WHERE x > 0 OR k = 'a'",
                   table, splits, batch, processor)  # fmt: skip
    want = oracle("SELECT k, x * 2 AS x2, upper(s) AS s, y FROM t WHERE x > 0 OR k = 'a' ORDER BY seq", table)
    assert_rows_equal(got, want, ordered=True)


GROUP_AGGS = (
    "count(*) AS n, count(x) AS nx, sum(x) AS sx, avg(y) AS ay, min(y) AS lo, max(x) AS hi, "
    "count(DISTINCT x) AS dx, median(x) AS mx, stddev_samp(y) AS sd, var_pop(y) AS vp, "
    "quantile_cont(y, 0.25) AS q1, mode(s) IS NOT NULL AS has_mode, bool_or(x > 10) AS big"
)


@property_test(data=streams())
def test_group_by_emit_final(processor, data):
    table, splits, batch = data
    got = streamed(f"CREATE STREAM o AS SELECT k, {GROUP_AGGS} FROM t GROUP BY k EMIT FINAL",
                   table, splits, batch, processor)  # fmt: skip
    want = oracle(f"SELECT k, {GROUP_AGGS} FROM t GROUP BY k", table)
    assert_rows_equal(got, want)


@property_test(data=streams())
def test_order_dependent_aggregates_follow_arrival(processor, data):
    table, splits, batch = data
    got = streamed(
        "CREATE STREAM o AS SELECT k, first(x) AS f, last(y) AS l, string_agg(s, '|') AS sa, list(x) AS lx "
        "FROM t GROUP BY k EMIT FINAL", table, splits, batch, processor)  # fmt: skip
    want = oracle(
        "SELECT k, first(x ORDER BY seq), last(y ORDER BY seq), string_agg(s, '|' ORDER BY seq), "
        "list(x ORDER BY seq) FROM t GROUP BY k", table)  # fmt: skip
    assert_rows_equal(got, want)


@property_test(data=streams())
def test_having_and_expressions_over_aggregates(processor, data):
    table, splits, batch = data
    sql = ("SELECT upper(k) AS uk, count(*) * 10 AS n10, sum(x) / nullif(count(x), 0) AS mean_x FROM t "
           "WHERE y > -500 GROUP BY upper(k) HAVING count(*) > 2")  # fmt: skip
    got = streamed(f"CREATE STREAM o AS {sql} EMIT FINAL", table, splits, batch, processor)
    assert_rows_equal(got, oracle(sql, table))


@property_test(data=streams())
def test_global_aggregate(processor, data):
    table, splits, batch = data
    sql = "SELECT count(*) AS n, sum(y) AS sy, max(ts) AS last_ts FROM t"
    got = streamed(f"CREATE STREAM o AS {sql} EMIT FINAL", table, splits, batch, processor)
    assert_rows_equal(got, oracle(sql, table))


WINDOW_AGGS = "count(*) AS n, sum(x) AS sx, avg(y) AS ay, median(y) AS my, count(DISTINCT s) AS ds"


@property_test(data=streams(), size=st.sampled_from([30, 60, 90]))
def test_tumbling_windows(processor, data, size):
    table, splits, batch = data
    got = streamed(
        f"CREATE STREAM o AS SELECT k, _window_start, _window_end, {WINDOW_AGGS} FROM t GROUP BY k "
        f"WINDOW TUMBLING(ts, {size}s) EMIT FINAL", table, splits, batch, processor)  # fmt: skip
    want = oracle(
        f"SELECT k, time_bucket(INTERVAL '{size} seconds', ts, TIMESTAMP '1970-01-01') AS ws, "
        f"ws + INTERVAL '{size} seconds', {WINDOW_AGGS} FROM t GROUP BY k, ws", table)  # fmt: skip
    assert_rows_equal(got, want)


@property_test(data=streams(), shape=st.sampled_from([(60, 30), (90, 30), (60, 60), (50, 20)]))
def test_sliding_windows(processor, data, shape):
    table, splits, batch = data
    size, adv = shape
    got = streamed(
        f"CREATE STREAM o AS SELECT k, _window_start, count(*) AS n, sum(x) AS sx FROM t GROUP BY k "
        f"WINDOW SLIDING(ts, {size}s, {adv}s) EMIT FINAL", table, splits, batch, processor)  # fmt: skip
    want = oracle(
        f"""WITH w AS (
              SELECT t.*, to_timestamp(ws) AS ws FROM t,
              unnest(generate_series((floor(epoch(ts) / {adv}) * {adv})::BIGINT - {-(-size // adv) * adv},
                                     (floor(epoch(ts) / {adv}) * {adv})::BIGINT, {adv})) AS g(ws)
              WHERE ws > epoch(ts) - {size} AND ws <= epoch(ts))
            SELECT k, ws::TIMESTAMP, count(*), sum(x) FROM w GROUP BY k, ws""", table)  # fmt: skip
    assert_rows_equal(got, want)


@property_test(data=streams(), gap=st.sampled_from([20, 45, 100]))
def test_session_windows(processor, data, gap):
    table, splits, batch = data
    got = streamed(
        f"CREATE STREAM o AS SELECT k, _window_start, _window_end, count(*) AS n, max(y) AS hi FROM t "
        f"GROUP BY k WINDOW SESSION(ts, {gap}s) EMIT FINAL", table, splits, batch, processor)  # fmt: skip
    # A session ends when the next row of its key is at least `gap` later; it closes gap after its last row.
    want = oracle(
        f"""WITH b AS (SELECT *, CASE WHEN epoch(ts) - lag(epoch(ts)) OVER (PARTITION BY k ORDER BY ts, seq) >= {gap}
                                  THEN 1 ELSE 0 END AS brk FROM t),
                 s AS (SELECT *, sum(brk) OVER (PARTITION BY k ORDER BY ts, seq) AS sid FROM b)
            SELECT k, min(ts), max(ts) + INTERVAL '{gap} seconds', count(*), max(y) FROM s GROUP BY k, sid""",
        table,
    )  # fmt: skip
    assert_rows_equal(got, want)


@property_test(data=streams(max_step=2))
def test_a_zero_session_gap_makes_a_session_of_each_event_time(processor, data):
    table, splits, batch = data
    got = streamed(
        "CREATE STREAM o AS SELECT k, _window_start, _window_end, count(*) AS n, max(y) AS hi FROM t "
        "GROUP BY k WINDOW SESSION(ts, 0s) EMIT FINAL", table, splits, batch, processor)  # fmt: skip
    # Rows of one key and one event time are one session, which starts and ends at that time.
    want = oracle("SELECT k, ts, ts, count(*), max(y) FROM t GROUP BY k, ts", table)
    assert_rows_equal(got, want)


@property_test(data=streams(shuffle=False))
def test_emit_changes_are_running_values(processor, data):
    table, splits, batch = data
    got = streamed(
        "CREATE STREAM o AS SELECT k, count(*) AS n, sum(x) AS sx, min(y) AS lo, avg(y) AS ay, "
        "count(DISTINCT s) AS ds, string_agg(s, ',') AS sa FROM t GROUP BY k EMIT CHANGES",
        table, splits, batch, processor)  # fmt: skip
    w = "OVER (PARTITION BY k ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
    want = oracle(
        f"SELECT k, count(*) {w}, sum(x) {w}, min(y) {w}, avg(y) {w}, count(DISTINCT s) {w}, "
        f"string_agg(s, ',') {w} FROM t ORDER BY seq", table)  # fmt: skip
    assert_rows_equal(got, want, ordered=True)


@property_test(data=streams(shuffle=False), n=st.sampled_from([1, 2, 5]))
def test_rows_window_buffer(processor, data, n):
    table, splits, batch = data
    got = streamed(
        f"CREATE STREAM o AS SELECT k, x, LAG(x, 1) OVER (ROWS WINDOW BUFFER {n} ROWS PARTITION BY k ORDER BY ts) AS px, "
        f"SUM(x) OVER (ROWS WINDOW BUFFER {n} ROWS PARTITION BY k ORDER BY ts) AS sx, "
        f"ROW_NUMBER() OVER (ROWS WINDOW BUFFER {n} ROWS PARTITION BY k ORDER BY ts) AS rn FROM t",
        table, splits, batch, processor)  # fmt: skip
    frame = f"ROWS BETWEEN {n - 1} PRECEDING AND CURRENT ROW"
    want = oracle(
        f"SELECT k, x, LAG(x, 1) OVER (PARTITION BY k ORDER BY seq), sum(x) OVER (PARTITION BY k ORDER BY seq {frame}), "
        f"row_number() OVER (PARTITION BY k ORDER BY seq) FROM t ORDER BY seq", table)  # fmt: skip
    assert_rows_equal(got, want, ordered=True)


def _on_time(
    table: pa.Table, size_s: int, lateness_s: int, partitions: list[int] | None = None
) -> list[bool]:
    """Per-row reference of lateness for tumbling windows.

    Each source partition's watermark is the largest event time it delivered minus the lateness;
    the job's watermark is the minimum over the partitions seen so far and never goes back. A row
    sees the watermark its predecessors set and is late once its window ended before it.
    """
    best: dict[int, int] = {}
    wm = None
    keep = []
    for i, ts in enumerate(table.column("ts").to_pylist()):
        t = int((ts - dt.datetime(1970, 1, 1)).total_seconds())
        end = t - t % size_s + size_s
        keep.append(wm is None or end > wm)
        p = partitions[i] if partitions else 0
        best[p] = max(best.get(p, t), t)
        low = min(best.values()) - lateness_s
        wm = low if wm is None else max(wm, low)
    return keep


@property_test(
    data=streams(),
    size=st.sampled_from([20, 60]),
    late_s=st.sampled_from([0, 5]),
    parts=st.one_of(st.none(), st.lists(st.integers(0, 3), min_size=200, max_size=200)),
)
def test_late_rows_are_judged_per_row_whatever_the_batching(processor, data, size, late_s, parts):
    """Disorder up to 30 s against a lateness of 0 or 5 s: some rows are late. The stream's result is
    the batch result over exactly the on-time rows, and the late table holds exactly the others.
    With ``parts``, the rows come from up to four upstream partitions (a ``_partition`` column)."""
    table, splits, batch = data
    partitions = parts[: table.num_rows] if parts else None
    if partitions is not None:
        table = table.append_column("_partition", pa.array(partitions, pa.int32()))
    sql = (
        f"CREATE STREAM o AS SELECT k, _window_start, count(*) AS n, sum(x) AS sx FROM t GROUP BY k "
        f"WINDOW TUMBLING(ts, {size}s) EMIT FINAL WITH ('o.type' = 'python', max_batch_size = {batch}, "
        f"'watermark.max_out_of_orderness' = '{late_s}s'{strategy_option(processor)})"
    )
    engine = velosql.connect(processor=split_entry(processor)[0])
    try:
        push_split(engine, "t", table, splits)
        engine.execute(sql).wait(60)
        got = [tuple(r.values()) for r in engine.pull("o").to_pylist()]
        late = engine.sql("SELECT x, ts FROM o__late ORDER BY _offset").fetchall()
    finally:
        engine.close()
    keep = _on_time(table, size, late_s, partitions)
    on_time = table.filter(pa.array(keep, pa.bool_()))
    if partitions is not None:
        on_time = on_time.drop_columns(["_partition"])
    want = oracle(
        f"SELECT k, time_bucket(INTERVAL '{size} seconds', ts, TIMESTAMP '1970-01-01') AS ws, count(*), "
        f"sum(x) FROM t GROUP BY k, ws", on_time)  # fmt: skip
    assert_rows_equal(got, want)
    expected_late = [(r["x"], r["ts"]) for r, k in zip(table.to_pylist(), keep) if not k]
    assert late == expected_late


@property_test(data=streams(shuffle=False))
def test_running_count_sum_avg_take_the_fast_path_and_match(processor, data):
    """COUNT/SUM/AVG over integers per key run without DuckDB's window sort; same rows as batch SQL."""
    table, splits, batch = data
    engine = velosql.connect(processor=split_entry(processor)[0])
    try:
        push_split(engine, "t", table, splits)
        job = engine.execute(
            "CREATE STREAM o AS SELECT k, count(*) AS n, count(x) AS nx, sum(x) AS sx, avg(x) AS ax, "
            "sum(x) * 2 + count(*) AS mix FROM t WHERE y > -900 GROUP BY k HAVING count(*) > 1 "
            f"WITH ('o.type' = 'python', max_batch_size = {batch}{strategy_option(processor)})"
        )
        job.wait(60)
        if processor == "v1":  # V2 workers run the plan's SQL
            assert job.executor.operator.running
        got = [tuple(r.values()) for r in engine.pull("o").to_pylist()]
    finally:
        engine.close()
    w = "OVER (PARTITION BY k ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
    want = oracle(
        f"SELECT k, n, c, s, a, m FROM (SELECT seq, k, count(*) {w} AS n, count(x) {w} AS c, sum(x) {w} AS s, "
        f"avg(x) {w} AS a, sum(x) {w} * 2 + count(*) {w} AS m FROM t WHERE y > -900) WHERE n > 1 ORDER BY seq",
        table)  # fmt: skip
    assert_rows_equal(got, want, ordered=True)


@pytest.mark.parametrize("hot", ["arrow", "snapshots", "duckdb"])
@property_test(data=streams(shuffle=False), where=st.booleans())
def test_running_values_finished_in_arrow_match(processor, hot, data, where):
    """Bare keys and COUNT/SUM/AVG in any order: the change rows are finished in Arrow from the
    key's state and the batch's running partials (rows taken straight from the batch when there
    is no WHERE); same rows as batch SQL, NULL keys and NULL values included. The keys' state is
    held in Arrow (snapshotted into DuckDB every batch, or at the end only) or, past a few keys,
    read from DuckDB again."""
    table, splits, batch = data
    cond = "WHERE y > -500 " if where else ""
    limits = {"arrow": (running.HOT_KEYS, running.CHECKPOINT_ROWS), "snapshots": (running.HOT_KEYS, 1),
              "duckdb": (2, 1)}[hot]  # fmt: skip
    saved = running.HOT_KEYS, running.CHECKPOINT_ROWS
    running.HOT_KEYS, running.CHECKPOINT_ROWS = limits
    engine = velosql.connect(processor=split_entry(processor)[0])
    try:
        push_split(engine, "t", table, splits)
        job = engine.execute(
            "CREATE STREAM o AS SELECT avg(x) AS ax, k, count(*) AS n, sum(x) AS sx, count(x) AS nx "
            f"FROM t {cond}GROUP BY k WITH ('o.type' = 'python', max_batch_size = {batch}"
            f"{strategy_option(processor)})"
        )
        job.wait(60)
        ex = job.executor
        state = None
        # V2's workers finish the change rows of their keys the same way (running.worker_changes)
        # with the limits the job saw, and hold the keys' state.
        assert job.plan.sql.running_items and ex.operator.running and ex.operator.changelog is not None
        if processor == "v1":
            assert ex.operator.plain_rows is not where
            (keys,) = oracle(f"SELECT count(DISTINCT k) + max(CASE WHEN k IS NULL THEN 1 ELSE 0 END) FROM t {cond}",
                             table)[0]  # fmt: skip
            assert (ex.operator.changelog.totals is not None) == (hot != "duckdb" or (keys or 0) <= 2)
            # Whichever way, DuckDB's state ends with each key's totals.
            state = ex.con.sql('SELECT "__k0", sum(__a1_c) FROM __state GROUP BY ALL').fetchall()
        got = [tuple(r.values()) for r in engine.pull("o").to_pylist()]
    finally:
        running.HOT_KEYS, running.CHECKPOINT_ROWS = saved
        engine.close()
    w = "OVER (PARTITION BY k ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
    want = oracle(
        f"SELECT avg(x) {w}, k, count(*) {w}, sum(x) {w}, count(x) {w} FROM t {cond}ORDER BY seq", table
    )
    assert_rows_equal(got, want, ordered=True)
    if state is not None:
        assert_rows_equal(state, oracle(f"SELECT k, count(*) FROM t {cond}GROUP BY k", table))


@pytest.mark.parametrize("split", [False, True])
def test_running_sums_beyond_int64_fall_back_to_duckdb(split):
    """A running sum that overflows int64 in Arrow (within a batch, or when merged with the
    key's state) is computed by DuckDB (HUGEINT) instead."""
    big = 2**62 - 1
    table = pa.table({"k": ["a", "a", "a", "b"], "x": pa.array([big, big, big, 1], pa.int64())})
    engine = velosql.connect()
    try:
        push_split(engine, "t", table, [2] if split else [])
        engine.execute(
            "CREATE STREAM o AS SELECT k, sum(x) AS sx FROM t GROUP BY k "
            f"WITH ('o.type' = 'python', max_batch_size = {2 if split else 100})"
        ).wait(60)
        got = [r["sx"] for r in engine.pull("o").to_pylist()]
    finally:
        engine.close()
    assert [int(v) for v in got] == [big, 2 * big, 3 * big, 1]


@st.composite
def wide_values(draw, max_rows=80):
    """Keys with NULLs, integers near the int64 limits, floats with NaN and infinities, FLOAT."""
    n = draw(st.integers(0, max_rows))
    ints = st.one_of(st.none(), st.integers(-50, 50), st.sampled_from([2**62, -(2**62), 2**63 - 1]))
    floats = st.one_of(
        st.none(), st.floats(-1e6, 1e6), st.sampled_from([math.nan, math.inf, -math.inf, -0.0])
    )
    table = pa.table(
        {
            "k": pa.array([draw(st.sampled_from(["a", "b", "c", None])) for _ in range(n)], pa.string()),
            "x": pa.array([draw(ints) for _ in range(n)], pa.int64()),
            "f": pa.array([draw(floats) for _ in range(n)], pa.float64()),
            "g": pa.array([draw(st.one_of(st.none(), st.floats(-100, 100, width=32))) for _ in range(n)],
                          pa.float32()),
        }
    )  # fmt: skip
    splits = draw(st.lists(st.integers(1, max(1, n - 1)), max_size=6))
    return table, splits, draw(st.sampled_from([1, 7, 262144]))


@property_test(data=wide_values())
def test_group_partials_computed_by_pyarrow_match(processor, data):
    """GROUP BY bare columns with COUNT/SUM/MIN/MAX/AVG: pyarrow computes the micro-batches'
    partials, except where DuckDB's semantics differ (sums beyond int64, NaN in MIN/MAX), and
    the result is DuckDB's batch result, NULL keys included."""
    table, splits, batch = data
    aggs = ("count(*), count(x), sum(x), min(x), max(x), sum(f), min(f), max(f), count(f), "
            "avg(g), sum(g), min(g)")  # fmt: skip
    engine = velosql.connect(processor=split_entry(processor)[0])
    try:
        push_split(engine, "t", table, splits)
        job = engine.execute(
            f"CREATE STREAM o AS SELECT k, {aggs} FROM t GROUP BY k EMIT FINAL "
            f"WITH ('o.type' = 'python', max_batch_size = {batch}{strategy_option(processor)})"
        )
        # V1 computes the partials with pyarrow; V2 workers run the partial SQL (none without pool).
        assert (job.executor.operator.arrow is not None) == (processor == "v1")
        job.wait(60)
        got = [tuple(r.values()) for r in engine.pull("o").to_pylist()]
    finally:
        engine.close()
    want = oracle(f"SELECT k, {aggs} FROM t GROUP BY k", table)
    assert_rows_equal([tuple("nan" if v != v else v for v in r) for r in got],
                      [tuple("nan" if v != v else v for v in r) for r in want])  # fmt: skip
