"""The Python API, statement kinds, late rows, dead letters and error paths."""

from __future__ import annotations

import datetime as dt

import duckdb
import pyarrow as pa
import pytest
from conftest import SOME, SOME_IDS

import velosql
from velosql import JobProcessorConfig, OptionError, SqlError

# The API's behaviour on V1 and V2 with 2 and 3 workers (conftest.SOME): the strategies are the
# query and oracle tests' business.
pytestmark = [
    pytest.mark.usefixtures("processor_matrix"),
    pytest.mark.parametrize("processor_matrix", SOME, ids=SOME_IDS, indirect=True),
]

BASE = dt.datetime(2024, 1, 1)


def trades(rows):
    return pa.table(
        {
            "symbol": pa.array([r[0] for r in rows], pa.string()),
            "price": pa.array([float(r[1]) for r in rows], pa.float64()),
            "ts": pa.array([BASE + dt.timedelta(seconds=r[2]) for r in rows], pa.timestamp("us")),
        }
    )


@pytest.fixture
def engine():
    with velosql.connect() as e:
        yield e


def test_push_forms_pandas_dicts_arrow_and_results_as_duckdb_tables(engine, processor_matrix):
    import pandas as pd

    engine.push("t", pd.DataFrame({"k": ["a", "b"], "v": [1, 2]}))
    engine.push("t", [{"k": "a", "v": 3}])
    engine.push("t", pa.record_batch({"k": ["c"], "v": [4]}))
    engine.push("t", {"k": ["a"], "v": [5]})
    engine.close_source("t")
    job = engine.execute("CREATE TABLE totals AS SELECT k, sum(v) AS s FROM t GROUP BY k EMIT FINAL")
    assert job.wait(30)
    assert job.status == "Finished"
    rows = engine.sql("SELECT k, s FROM totals ORDER BY k").fetchall()
    assert [(k, int(s)) for k, s in rows] == [("a", 9), ("b", 2), ("c", 4)]
    m = job.metrics()
    assert m["records_in"] == 5 and m["records_out"] == 3
    assert m["processor"] == JobProcessorConfig.parse(processor_matrix[0]).description()
    if processor_matrix[0] == "v1":
        assert m["processor"] == "V1 (Single-threaded, single partition, 1x baseline)"


def test_pull_python_sink_and_push_schema_mismatch(engine):
    engine.push("t", {"x": [1, 2, 3]})
    with pytest.raises(velosql.DataError, match="does not match"):
        engine.push("t", {"y": ["nope"]})
    engine.close_source("t")
    job = engine.execute("CREATE STREAM o AS SELECT x * 10 AS y FROM t WITH ('o.type' = 'python')")
    job.wait(30)
    assert engine.pull("o").to_pydict() == {"y": [10, 20, 30]}
    assert engine.pull("o").num_rows == 0
    with pytest.raises(velosql.VelosqlError, match="no python sink"):
        engine.pull("t")


def test_create_table_with_changes_keeps_latest_row_per_key(engine):
    engine.push("tx", {"category": ["a", "b", "a", "a"], "amount": [1.0, 2.0, 3.0, 4.0]})
    engine.close_source("tx")
    job = engine.execute(
        "CREATE TABLE stats AS SELECT category PRIMARY KEY, COUNT(*) AS n, SUM(amount) AS total "
        "FROM tx GROUP BY category EMIT CHANGES"
    )
    job.wait(30)
    assert engine.sql("SELECT category, n, total FROM stats ORDER BY category").fetchall() == [
        ("a", 3, 8.0),
        ("b", 1, 2.0),
    ]


def test_stream_with_changes_appends_every_change_row(engine):
    engine.push("tx", {"category": ["a", "b", "a"], "amount": [1.0, 2.0, 3.0]})
    engine.close_source("tx")
    engine.execute("CREATE STREAM ch AS SELECT category, COUNT(*) AS n FROM tx GROUP BY category").wait(30)
    assert engine.sql("SELECT * FROM ch").fetchall() == [("a", 1), ("b", 1), ("a", 2)]


def test_late_rows_are_counted_kept_and_excluded(engine):
    # lateness 10s: the row at t=5 arrives after t=200 moved the watermark to 190.
    engine.push("tr", trades([("A", 1, 0), ("A", 2, 70), ("A", 3, 200), ("A", 4, 5), ("A", 5, 65)]))
    engine.close_source("tr")
    job = engine.execute(
        "CREATE STREAM w AS SELECT symbol, COUNT(*) AS n, SUM(price) AS s, _window_start FROM tr "
        "GROUP BY symbol WINDOW TUMBLING(ts, 1m) EMIT FINAL WITH ('watermark.max_out_of_orderness' = '10s')"
    )
    job.wait(30)
    assert job.metrics()["late_rows"] == 2
    late = engine.sql("SELECT price, _event_time, _watermark FROM w__late ORDER BY price").fetchall()
    assert [r[0] for r in late] == [4.0, 5.0]
    assert late[0][2] == BASE + dt.timedelta(seconds=190)
    got = engine.sql("SELECT n, s, _window_start FROM w ORDER BY _window_start").fetchall()
    assert got == [
        (1, 1.0, BASE),
        (1, 2.0, BASE + dt.timedelta(minutes=1)),
        (1, 3.0, BASE + dt.timedelta(minutes=3)),
    ]


def test_late_data_strategy_drop_keeps_only_the_count(engine):
    engine.push("tr", trades([("A", 1, 100), ("A", 2, 0)]))
    engine.close_source("tr")
    job = engine.execute(
        "CREATE STREAM w AS SELECT COUNT(*) AS n FROM tr WINDOW TUMBLING(ts, 10s) "
        "WITH ('late.data.strategy' = 'drop')"
    )
    job.wait(30)
    assert job.metrics()["late_rows"] == 1
    assert engine.sql("SELECT count(*) FROM w__late").fetchall() == [(0,)]


def test_null_event_time_goes_to_dead_letters_with_its_place(engine):
    t = pa.table({"v": [1, 2, 3], "ts": pa.array([BASE, None, BASE], pa.timestamp("us"))})
    engine.push("s", t)
    engine.close_source("s")
    job = engine.execute("CREATE STREAM w AS SELECT COUNT(*) AS n FROM s WINDOW TUMBLING(ts, 1m)")
    job.wait(30)
    assert engine.sql("SELECT n FROM w").fetchall() == [(2,)]
    dlq = engine.sql("SELECT source, location, error FROM w__dlq").fetchall()
    assert dlq == [("s", "s partition 0 offset 1", "event-time column 'ts' is NULL")]
    assert job.metrics()["dead_letters"] == 1


def test_fail_batch_strategy_fails_the_job_naming_the_record(engine):
    t = pa.table({"v": [1, 2], "ts": pa.array([None, BASE], pa.timestamp("us"))})
    engine.push("s", t)
    engine.close_source("s")
    job = engine.execute(
        "CREATE STREAM w AS SELECT COUNT(*) AS n FROM s WINDOW TUMBLING(ts, 1m) WITH (failure_strategy = 'FailBatch')"
    )
    with pytest.raises(velosql.DataError, match="s partition 0 offset 0: event-time column 'ts' is NULL"):
        job.wait(30)
    assert job.status == "Error"


def test_show_describe_explain_drop(engine):
    engine.push("t", {"k": ["a"], "v": [1]})
    job = engine.execute("CREATE STREAM agg AS SELECT k, max(v) AS hi FROM t GROUP BY k EMIT CHANGES")
    streams = engine.execute("SHOW STREAMS").to_pylist()
    assert streams[0]["name"] == "agg" and streams[0]["emit"] == "CHANGES"
    desc = engine.execute("DESCRIBE agg").to_pydict()
    assert desc == {"column_name": ["k", "hi"], "column_type": ["VARCHAR", "BIGINT"]}  # DuckDB's names
    jobs = engine.execute("SHOW JOBS").to_pylist()
    assert jobs[0]["name"] == "agg" and "records_in" in jobs[0]
    plan = engine.execute(
        "EXPLAIN CREATE STREAM x AS SELECT k, avg(v) FROM t GROUP BY k WINDOW TUMBLING(v, 1m) "
        "WITH ('watermark.max_out_of_orderness' = '5s', processor = 'v2:4')"
    )
    for needle in (
        "source:",
        "group keys:  k",
        "TUMBLING 1m",
        "partial: sum(v), count(v)",
        "5s",
        "V2 (Multi-partition: 4",
    ):
        assert needle in plan
    engine.execute("DROP STREAM agg")
    assert job.done and job.status == "Stopped"
    assert engine.execute("SHOW STREAMS").num_rows == 0
    with pytest.raises(SqlError, match="no stream named 'agg'"):
        engine.execute("DROP STREAM agg")
    engine.execute("DROP STREAM IF EXISTS agg")


def test_terminate_stops_the_job_and_keeps_it_listed(engine):
    engine.push("t", {"k": ["a"], "v": [1]})
    job = engine.execute("CREATE STREAM agg AS SELECT k, max(v) AS hi FROM t GROUP BY k EMIT CHANGES")
    engine.execute("TERMINATE agg")
    assert job.done and job.status == "Stopped"
    assert engine.execute("SHOW STREAMS").to_pylist()[0]["status"] == "Stopped"
    with pytest.raises(SqlError, match="no stream named 'nope'"):
        engine.execute("TERMINATE nope")


def test_duckdb_statements_pass_through_and_tables_are_sources(engine):
    engine.execute("CREATE TABLE dim AS SELECT * FROM (VALUES ('a', 'Alpha'), ('b', 'Beta')) v(k, name)")
    engine.execute("CREATE TABLE facts AS SELECT * FROM (VALUES ('a', 1), ('b', 2), ('a', 3)) v(k, x)")
    job = engine.execute(
        "CREATE STREAM enriched AS SELECT f.k, d.name, f.x FROM facts f JOIN dim d ON f.k = d.k WHERE f.x > 1"
    )
    job.wait(30)
    assert sorted(engine.sql("SELECT * FROM enriched").fetchall()) == [("a", "Alpha", 3), ("b", "Beta", 2)]


def test_nothing_starts_when_a_later_statement_fails(engine):
    engine.push("t", {"v": [1]})
    script = "CREATE STREAM ok AS SELECT v FROM t;\nCREATE STREAM bad AS SELECT nope FROM t;"
    with pytest.raises(SqlError) as err:
        engine.execute(script)
    assert err.value.location.line == 2
    assert "nope" in str(err.value)
    assert engine.jobs() == []


@pytest.mark.parametrize(
    "sql, message",
    [
        (
            "CREATE STREAM o AS SELECT v FROM t WITH ('t.pathx' = 'a')",
            "unknown WITH key 't.pathx' for source 't'",
        ),
        ("CREATE STREAM o AS SELECT v FROM t WITH (bogus = 1)", "unknown WITH key 'bogus'"),
        ("CREATE STREAM o AS SELECT v FROM t WITH ('t.type' = 'ftp')", "allowed values are 'file_source'"),
        ("CREATE STREAM o AS SELECT v FROM t WITH ('t.type' = 'file_source')", "has no 't.path'"),
        (
            "CREATE STREAM o AS SELECT v FROM t WITH (failure_strategy = 'Explode')",
            "'SendToDLQ', 'LogAndContinue'",
        ),
        ("CREATE STREAM o AS SELECT v FROM t WITH (queue_threshold = 'many')", "expected an integer"),
        (
            "CREATE STREAM o AS SELECT v FROM t WITH ('watermark.max_out_of_orderness' = 'soon')",
            "invalid value 'soon' for 'watermark.max_out_of_orderness': expected a duration such as",
        ),
        ("CREATE STREAM o AS SELECT v FROM t WITH (processor = 'v3')", "Unknown processor architecture"),
        ("CREATE STREAM o AS SELECT v FROM t WITH ('x.type' = 'file_source')", "names 'x', which is neither"),
        (
            "CREATE STREAM o AS SELECT v FROM t WITH ('o.type' = 'kafka_sink')",
            "is a kafka_sink but has no 'o.topic.name'",
        ),
        ("CREATE STREAM o AS SELECT v, count(*) FROM t GROUP BY 1 + 1", "must appear in the GROUP BY"),
        ("CREATE STREAM o AS SELECT approx_count_distinct(v) FROM t", "approximate"),
        ("CREATE STREAM o AS SELECT v, lag(v) OVER (ORDER BY v) FROM t", "ROWS WINDOW BUFFER"),
        ("CREATE STREAM o AS SELECT DISTINCT v FROM t WINDOW TUMBLING(1m) EMIT CHANGES", "EMIT FINAL"),
        ("CREATE STREAM o AS SELECT count(*) FROM t WINDOW SESSION(v, 1m) EMIT CHANGES", "SESSION"),
        ("CREATE STREAM o AS SELECT _window_start, count(*) FROM t", "needs a WINDOW"),
        ("CREATE STREAM o AS SELECT v FROM missing_source", "source 'missing_source' is not defined"),
    ],
)
def test_validation_errors_name_the_problem_and_place(engine, sql, message):
    engine.push("t", {"v": [1]})
    with pytest.raises((SqlError, OptionError)) as err:
        engine.execute("\n" + sql)
    assert message in str(err.value)
    assert str(err.value).startswith("<sql>:2:")


def test_processor_choice_from_statement_annotation_and_engine_default():
    with velosql.connect(processor="v2:2") as e:
        e.push("t", {"v": [1]})
        e.close_source("t")
        job = e.execute("CREATE STREAM a AS SELECT v FROM t")
        job.wait(30)
        assert job.processor.processor_version() == "V2" and job.processor.num_partitions() == 2
        job = e.execute("-- @job_mode: v1\nCREATE STREAM b AS SELECT v FROM t")
        job.wait(30)
        assert job.processor.config == JobProcessorConfig.V1


def test_stop_emits_open_state_and_ends_the_job(engine):
    engine.push("t", {"k": ["a", "a", "b"]})
    job = engine.execute("CREATE STREAM c AS SELECT k, count(*) AS n FROM t GROUP BY k EMIT FINAL")
    assert not job.wait(0.3)  # the python source is still open: the job keeps running
    job.stop()
    assert job.status == "Stopped"
    assert sorted(engine.sql("SELECT * FROM c").fetchall()) == [("a", 2), ("b", 1)]


class FlakySink:
    """A real sink wrapper that fails its first ``failures`` writes."""

    def __init__(self, failures):
        self.failures, self.tables = failures, []

    def open(self, schema):
        pass

    def write(self, table):
        if self.failures:
            self.failures -= 1
            raise OSError("disk unavailable")
        self.tables.append(table)

    def flush(self):
        pass

    def close(self):
        pass

    def describe(self):
        return "flaky sink"


@pytest.mark.parametrize("failures, ok", [(2, True), (5, False)])
def test_retry_with_backoff_retries_sink_writes(engine, monkeypatch, failures, ok):
    sink = FlakySink(failures)
    monkeypatch.setattr(engine, "_make_sinks", lambda plan, con: [sink])
    engine.push("t", {"v": [1, 2]})
    engine.close_source("t")
    job = engine.execute(
        "CREATE STREAM o AS SELECT v FROM t WITH (failure_strategy = 'RetryWithBackoff', "
        "max_retries = 3, retry_backoff = '1ms')"
    )
    if ok:
        job.wait(30)
        assert pa.concat_tables(sink.tables).to_pydict() == {"v": [1, 2]}
        assert job.metrics()["sink_retries"] == 2
    else:
        with pytest.raises(velosql.JobError, match="failed after 4 attempts: disk unavailable"):
            job.wait(30)


def test_python_source_needs_data_or_a_declared_schema_before_deploy(engine):
    with pytest.raises(velosql.DataError, match="has no schema yet"):
        engine.execute("CREATE STREAM s AS SELECT k FROM t WITH ('t.type' = 'python')")
    job = engine.execute(
        "CREATE STREAM s AS SELECT k, v + 1 AS w FROM t GROUP BY ALL EMIT FINAL "
        "WITH ('t.type' = 'python', 't.schema' = 'k VARCHAR, v INTEGER')"
    )
    engine.push("t", [{"k": "a", "v": 1}])
    engine.close_source("t")
    job.wait(30)
    assert engine.sql("SELECT * FROM s").fetchall() == [("a", 2)]


def test_pushed_partition_column_is_the_source_partition(engine):
    # Two upstream partitions; the watermark is their minimum, so partition 1 (behind) holds it back
    # and no row of partition 1 is late although partition 0 is far ahead.
    t = trades([("A", 1, 0), ("B", 2, 300), ("A", 3, 10), ("B", 4, 310), ("A", 5, 20)])
    t = t.append_column("_partition", pa.array([1, 0, 1, 0, 1], pa.int32()))
    engine.push("tr", t)
    engine.close_source("tr")
    job = engine.execute(
        "CREATE STREAM w AS SELECT symbol, COUNT(*) AS n, MIN(_partition) AS p FROM tr GROUP BY symbol "
        "WINDOW TUMBLING(ts, 1m) EMIT FINAL"
    )
    job.wait(30)
    assert job.metrics()["late_rows"] == 0
    assert sorted(engine.sql("SELECT symbol, n, p FROM w").fetchall()) == [("A", 3, 1), ("B", 2, 0)]
    star = engine.execute(
        "CREATE STREAM s2 AS SELECT * FROM tr2 WITH ('tr2.type' = 'python', 'tr2.schema' = 'x INTEGER, _partition INTEGER')"
    )
    engine.push("tr2", {"x": [1], "_partition": [3]})
    engine.close_source("tr2")
    star.wait(30)
    assert engine.sql("SELECT * FROM s2").fetchall() == [(1,)]


def test_windows_before_1970_use_floor_not_truncation(engine):
    # Negative event times take the positive-modulo window start; non-negative ones a faster form.
    times = [dt.datetime(1969, 12, 31, 23, 59, 10), dt.datetime(1969, 12, 31, 23, 58, 50), BASE]
    engine.push("tr", pa.table({"v": [1, 2, 3], "ts": pa.array(times, pa.timestamp("us"))}))
    engine.close_source("tr")
    engine.execute(
        "CREATE STREAM w AS SELECT _window_start AS ws, count(*) AS n FROM tr WINDOW TUMBLING(ts, 1m) "
        "WITH ('watermark.max_out_of_orderness' = '1m')"
    ).wait(30)
    got = sorted(engine.sql("SELECT ws, n FROM w").fetchall())
    assert got == [(dt.datetime(1969, 12, 31, 23, 58), 1), (dt.datetime(1969, 12, 31, 23, 59), 1), (BASE, 1)]


def test_reader_queue_is_bounded_by_rows_not_items():
    """The reader runs up to one micro-batch ahead of the job thread, never more."""
    import queue

    from velosql.runtime.v1 import RowQueue

    def batch(n: int) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays([pa.nulls(n, pa.int64())], names=["x"])

    q = RowQueue(limit=100)
    q.put(batch(500), timeout=0)  # an empty queue takes any batch, however large
    with pytest.raises(queue.Full):
        q.put(batch(1), timeout=0)
    assert q.get(timeout=0).num_rows == 500
    for _ in range(10):
        q.put(batch(10), timeout=0)  # 100 rows: full now
    with pytest.raises(queue.Full):
        q.put(batch(10), timeout=0)
    assert [q.get(timeout=0).num_rows for _ in range(10)] == [10] * 10
    with pytest.raises(queue.Empty):
        q.get(timeout=0)


def test_a_zero_session_gap_keeps_rows_of_one_time_together_across_micro_batches(engine):
    # With no lateness the second ('A', 1s) row arrives when the watermark is already at 1s: it is
    # not late, so the session of that instant must still be open for it.
    rows = [
        ("A", 1, 0),
        ("A", 2, 0),
        ("A", 3, 1),
        ("B", 4, 1),
        ("A", 5, 1),
        ("A", 6, 3),
        ("B", 7, 3),
        ("A", 8, 10),
    ]
    for i in range(0, len(rows), 2):
        engine.push("tr", trades(rows[i : i + 2]))
    engine.close_source("tr")
    engine.execute(
        "CREATE STREAM sz AS SELECT symbol, _window_start AS ws, _window_end AS we, count(*) AS n, "
        "sum(price) AS total FROM tr GROUP BY symbol WINDOW SESSION(ts, 0s) EMIT FINAL "
        "WITH (max_batch_size = 2)"
    ).wait(60)
    got = sorted(engine.sql("SELECT * FROM sz").fetchall())
    batch = duckdb.connect()
    batch.register("tr", trades(rows))
    want = sorted(
        batch.sql("SELECT symbol, ts, ts, count(*), sum(price) FROM tr GROUP BY symbol, ts").fetchall()
    )
    assert len(want) == 6
    assert got == want


def test_execute_runs_a_script_starting_with_a_bom(engine):
    engine.push("tr", trades([("A", 1, 0), ("B", 2, 1)]))
    engine.close_source("tr")
    engine.execute("\ufeffCREATE STREAM bom AS SELECT symbol, price * 2 AS p2 FROM tr EMIT CHANGES").wait(60)
    assert sorted(engine.sql("SELECT * FROM bom").fetchall()) == [("A", 2.0), ("B", 4.0)]


# ---- DuckDB's errors: its hint kept, the place as the user wrote it -----------------------------
# "▸" marks the place the error must name; the statement starts on line 3, column 3 of app.sql.
BINDER_ERRORS = [
    (
        "CREATE STREAM s AS\nSELECT symbol,\n       SUM(▸prize) AS total\nFROM trades GROUP BY symbol",
        'Binder Error: Referenced column "prize" not found in FROM clause! Candidate bindings: "price"',
    ),
    (
        "CREATE STREAM s AS SELECT symbol FROM trades WHERE ▸qtty > 1",
        'Binder Error: Referenced column "qtty" not found in FROM clause! Candidate bindings: "qty"',
    ),
    (
        "CREATE STREAM s AS SELECT ▸nosuch(price) FROM trades",
        'Catalog Error: Scalar Function with name nosuch does not exist! Did you mean "',
    ),
]


@pytest.mark.parametrize(("statement", "message"), BINDER_ERRORS)
def test_a_binder_error_keeps_duckdbs_hint_and_points_at_the_column(engine, statement, message):
    engine.sql("CREATE TABLE trades AS SELECT 'A' AS symbol, 1.5 AS price, 3 AS qty")
    script = "SELECT 1;\n\n  " + statement + " EMIT CHANGES WITH ('trades.type' = 'table')"
    before = script[: script.index("▸")]
    where = f"app.sql:{before.count(chr(10)) + 1}:{len(before) - before.rfind(chr(10))}"
    with pytest.raises(SqlError) as raised:
        engine.execute(script.replace("▸", ""), file="app.sql")
    assert str(raised.value).startswith(f"{where}: {message}")
    assert "__" not in str(raised.value)  # no name velosql made up


def test_a_duckdb_error_in_plain_sql_points_at_its_place(engine):
    with pytest.raises(SqlError) as raised:
        engine.execute("SELECT 1;\n  SELECT a\n  FORM range(3) t", file="app.sql")
    assert str(raised.value) == 'app.sql:3:8: Parser Error: syntax error at or near "range"'
