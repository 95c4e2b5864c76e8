"""Grammar tables for the Velosql dialect and the script parser: one line per case."""

from __future__ import annotations

import pytest
import sqlglot
from sqlglot import exp
from velostream_quickstart import AGGREGATE_SQL as AGGREGATE
from velostream_quickstart import FILTER_SQL as FILTER
from velostream_quickstart import HELLO_WORLD_SQL as HELLO_WORLD
from velostream_quickstart import TRANSFORM_SQL as TRANSFORM
from velostream_quickstart import WINDOW_SQL as WINDOW

from velosql.errors import Location, SqlError
from velosql.sql import (
    CreateStream,
    Describe,
    DropStream,
    DuckDBStatement,
    Explain,
    ShowJobs,
    ShowStreams,
    Terminate,
    Velosql,
    WindowSpec,
    parse_one,
    parse_script,
)

MS, S, MIN, H, D = 1_000, 1_000_000, 60_000_000, 3_600_000_000, 86_400_000_000


def stream(tail: str, select: str = "SELECT * FROM t") -> CreateStream:
    statement = parse_one(f"CREATE STREAM s AS {select} {tail}")
    assert isinstance(statement, CreateStream)
    return statement


# ---- windows -------------------------------------------------------------------------------------
WINDOWS = [
    ("TUMBLING(1m)", WindowSpec("tumbling", MIN)),
    ("TUMBLING(INTERVAL '5' MINUTE)", WindowSpec("tumbling", 5 * MIN)),
    ("TUMBLING(ts, INTERVAL '1' MINUTE)", WindowSpec("tumbling", MIN, None, "ts")),
    ("TUMBLING(ts, 1m)", WindowSpec("tumbling", MIN, None, "ts")),
    ("TUMBLING(timestamp, 30s)", WindowSpec("tumbling", 30 * S, None, "timestamp")),
    ("TUMBLING(t.ts, 1m)", WindowSpec("tumbling", MIN, None, "t.ts")),
    ('TUMBLING("event time", 1m)', WindowSpec("tumbling", MIN, None, "event time")),
    ("tumbling(1m)", WindowSpec("tumbling", MIN)),
    ("SLIDING(10m, 2m)", WindowSpec("sliding", 10 * MIN, 2 * MIN)),
    ("SLIDING(ts, 5m, 1m)", WindowSpec("sliding", 5 * MIN, MIN, "ts")),
    ("SLIDING(ts, INTERVAL '5' MINUTE, INTERVAL '30' SECOND)", WindowSpec("sliding", 5 * MIN, 30 * S, "ts")),
    ("HOPPING(10m, 2m)", WindowSpec("sliding", 10 * MIN, 2 * MIN)),
    ("HOPPING(ts, 1h, 15m)", WindowSpec("sliding", H, 15 * MIN, "ts")),
    ("SESSION(30s)", WindowSpec("session", 30 * S)),
    ("SESSION(ts, INTERVAL '5' MINUTE)", WindowSpec("session", 5 * MIN, None, "ts")),
    ("SESSION(user_ts, 10)", WindowSpec("session", 10 * S, None, "user_ts")),
    ("SESSION(ts, 0s)", WindowSpec("session", 0, None, "ts")),
    ("SESSION(ts, INTERVAL '0' SECOND)", WindowSpec("session", 0, None, "ts")),
]


@pytest.mark.parametrize(("clause", "spec"), WINDOWS)
def test_window_clause(clause, spec):
    assert stream(f"WINDOW {clause}", "SELECT a, COUNT(*) FROM t GROUP BY a").window == spec


SIZES = [
    ("1m", MIN),
    ("30s", 30 * S),
    ("500ms", 500 * MS),
    ("2h", 2 * H),
    ("1d", D),
    ("5", 5 * S),
    ("1.5m", 90 * S),
    ("10 minutes", 10 * MIN),
    ("3 sec", 3 * S),
    ("'45s'", 45 * S),
    ("INTERVAL '5' MINUTE", 5 * MIN),
    ("INTERVAL '5' MINUTES", 5 * MIN),
    ("INTERVAL 5 MINUTES", 5 * MIN),
    ("INTERVAL '1 minute'", MIN),
    ("INTERVAL '90 seconds'", 90 * S),
    ("INTERVAL '1 hour 30 minutes'", 90 * MIN),
    ("INTERVAL '2' SECOND", 2 * S),
    ("INTERVAL '2' SECONDS", 2 * S),
    ("INTERVAL '1' HOUR", H),
    ("INTERVAL '3' HOURS", 3 * H),
    ("INTERVAL '1' DAY", D),
    ("INTERVAL '7' DAYS", 7 * D),
    ("INTERVAL '250' MILLISECOND", 250 * MS),
    ("INTERVAL '250' MILLISECONDS", 250 * MS),
]


@pytest.mark.parametrize(("size", "us"), SIZES)
def test_window_size(size, us):
    assert stream(f"WINDOW TUMBLING({size})").window.size_us == us
    assert stream(f"WINDOW SESSION(ts, {size})").window.size_us == us
    assert stream(f"WINDOW SLIDING(1d, {size})").window.advance_us == us


# ---- EMIT ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tail", "emit"),
    [
        ("", None),
        ("EMIT CHANGES", "changes"),
        ("EMIT FINAL", "final"),
        ("emit changes", "changes"),
        ("Emit Final", "final"),
        ("EMIT\n  -- why\n  FINAL", "final"),
        ("WINDOW TUMBLING(1m) EMIT FINAL", "final"),
        ("EMIT CHANGES WITH ('a' = 1)", "changes"),
    ],
)
def test_emit(tail, emit):
    assert stream(tail).emit == emit


@pytest.mark.parametrize(
    "select",
    [
        "SELECT * FROM input_data",
        "SELECT * FROM input_data AS i",
        "SELECT * FROM input_data i",
        "SELECT x FROM a JOIN b ON a.id = b.id",
        "SELECT x FROM t WHERE x > 1",
        "SELECT x, COUNT(*) FROM t GROUP BY x HAVING COUNT(*) > 1",
        "SELECT x FROM t ORDER BY x LIMIT 5",
        "SELECT * FROM (SELECT * FROM t) AS sub",
        "SELECT 1 AS x",
    ],
)
def test_emit_is_never_an_alias(select):
    statement = stream("EMIT CHANGES", select)
    assert statement.emit == "changes"
    assert "EMIT" not in statement.select.sql(dialect="duckdb").upper()


@pytest.mark.parametrize(
    ("select", "duckdb"),
    [
        (
            "WITH emit AS (SELECT 1 AS a) SELECT * FROM emit",
            "WITH emit AS (SELECT 1 AS a) SELECT * FROM emit",
        ),
        ("SELECT x emit FROM t emit WHERE emit.x > 1", "SELECT x AS emit FROM t AS emit WHERE emit.x > 1"),
        ("SELECT emit FROM t AS emit", "SELECT emit FROM t AS emit"),
    ],
)
def test_emit_can_still_be_a_name(select, duckdb):
    statement = stream("EMIT FINAL", select)
    assert (statement.emit, statement.select.sql(dialect="duckdb")) == ("final", duckdb)


# ---- PRIMARY KEY ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("select", "key", "duckdb"),
    [
        (
            "SELECT category PRIMARY KEY, COUNT(*) AS n FROM t GROUP BY category",
            ("category",),
            "SELECT category, COUNT(*) AS n FROM t GROUP BY category",
        ),
        ("SELECT a PRIMARY KEY, b PRIMARY KEY, SUM(x) FROM t GROUP BY a, b", ("a", "b"), None),
        ("SELECT a AS k PRIMARY KEY, b FROM t", ("k",), "SELECT a AS k, b FROM t"),
        ("SELECT a PRIMARY KEY AS k, b FROM t", ("k",), "SELECT a AS k, b FROM t"),
        ("SELECT t.a PRIMARY KEY FROM t", ("a",), "SELECT t.a FROM t"),
        ("SELECT UPPER(a) AS u PRIMARY KEY FROM t", ("u",), "SELECT UPPER(a) AS u FROM t"),
        ("SELECT a, b FROM t", (), "SELECT a, b FROM t"),
    ],
)
def test_primary_key(select, key, duckdb):
    statement = stream("EMIT CHANGES", select)
    assert statement.primary_key == key
    assert "PRIMARY" not in statement.select.sql(dialect="duckdb")
    if duckdb:
        assert statement.select.sql(dialect="duckdb") == duckdb


# ---- WITH properties -----------------------------------------------------------------------------
PROPERTIES = [
    ("WITH ('trades.type' = 'kafka_source')", {"trades.type": "kafka_source"}),
    ("WITH ('Trades.Type' = 'Kafka_Source')", {"trades.type": "Kafka_Source"}),
    ("WITH (processor = 'v2:8')", {"processor": "v2:8"}),
    ("WITH (PROCESSOR = 'v2')", {"processor": "v2"}),
    ("WITH (event.time.field = 'ts')", {"event.time.field": "ts"}),
    ("WITH (watermark.max_out_of_orderness = '5s')", {"watermark.max_out_of_orderness": "5s"}),
    ("WITH (enable_affinity = true, 'x.watch' = FALSE)", {"enable_affinity": True, "x.watch": False}),
    ("WITH (queue_threshold = 1000)", {"queue_threshold": 1000}),
    ("WITH (ratio = 0.25, offset = -3)", {"ratio": 0.25, "offset": -3}),
    ("WITH (mode = transactional)", {"mode": "transactional"}),
    ("WITH ('a' = 1,)", {"a": 1}),
    ("WITH ()", {}),
    (
        "WITH (\n  -- the source\n  'a.type' = 'file_source', /* inline */ 'a.path' = 'x;y.csv' -- end\n)",
        {"a.type": "file_source", "a.path": "x;y.csv"},
    ),
]


@pytest.mark.parametrize(("clause", "expected"), PROPERTIES)
def test_with_properties(clause, expected):
    assert stream(clause).properties == expected
    assert stream(f"EMIT CHANGES {clause}").properties == expected


def test_with_property_locations():
    statement = parse_script(
        "SELECT 1;\nCREATE STREAM s AS SELECT * FROM t\nWITH (\n  'a.type' = 'x',\n   b = 2);"
    )[1]
    assert statement.property_locations == {"a.type": Location(None, 4, 3), "b": Location(None, 5, 4)}


def test_with_after_table_is_not_a_table_hint():
    statement = stream("WITH ('t.type' = 'file_source')")
    assert statement.select.sql(dialect="duckdb") == "SELECT * FROM t"


# ---- OVER (ROWS WINDOW BUFFER n ROWS …) ----------------------------------------------------------
@pytest.mark.parametrize(
    ("over", "rows", "duckdb"),
    [
        (
            "OVER (ROWS WINDOW BUFFER 10 ROWS PARTITION BY symbol ORDER BY timestamp)",
            10,
            "OVER (PARTITION BY symbol ORDER BY timestamp)",
        ),
        ("OVER ( ROWS WINDOW BUFFER 5 ROWS ORDER BY ts )", 5, "OVER (ORDER BY ts)"),
        ("OVER (ROWS WINDOW BUFFER 100 ROWS)", 100, "OVER ()"),
        ("OVER (PARTITION BY symbol ORDER BY ts)", None, "OVER (PARTITION BY symbol ORDER BY ts)"),
    ],
)
def test_rows_window_buffer(over, rows, duckdb):
    statement = stream("EMIT CHANGES", f"SELECT symbol, LAG(price, 1) {over} AS prev FROM t")
    window = statement.select.find(exp.Window)
    assert window.meta.get("buffer_rows") == rows
    assert statement.select.sql(dialect="duckdb") == f"SELECT symbol, LAG(price, 1) {duckdb} AS prev FROM t"


def test_rows_window_buffer_makes_create_table_streaming():
    sql = "CREATE TABLE t AS SELECT LAG(x) OVER (ROWS WINDOW BUFFER 3 ROWS ORDER BY ts) FROM s"
    assert isinstance(parse_one(sql), CreateStream)


# ---- the planner's view: a plain DuckDB select ---------------------------------------------------
@pytest.mark.parametrize(
    ("sql", "duckdb"),
    [
        (
            "CREATE STREAM s AS SELECT a, COUNT(*) AS n FROM t WHERE b > 1 GROUP BY a HAVING COUNT(*) > 2 "
            "WINDOW TUMBLING(ts, 1m) ORDER BY a LIMIT 5 EMIT FINAL WITH ('t.type' = 'x')",
            "SELECT a, COUNT(*) AS n FROM t WHERE b > 1 GROUP BY a HAVING COUNT(*) > 2 ORDER BY a LIMIT 5",
        ),
        (
            "CREATE STREAM s AS SELECT a.x, b.y FROM a LEFT JOIN b ON a.id = b.id WINDOW SESSION(30s)",
            "SELECT a.x, b.y FROM a LEFT JOIN b ON a.id = b.id",
        ),
        (
            "CREATE STREAM s AS WITH c AS (SELECT 1 AS x) SELECT * FROM c EMIT CHANGES",
            "WITH c AS (SELECT 1 AS x) SELECT * FROM c",
        ),
        ("CREATE STREAM s AS (SELECT * FROM t WHERE a > 1) EMIT CHANGES", "SELECT * FROM t WHERE a > 1"),
        (
            "CREATE STREAM s AS SELECT list_transform([1, 2], x -> x + 1) AS l, s.a::INT AS i FROM s",
            "SELECT LIST_TRANSFORM([1, 2], LAMBDA x : x + 1) AS l, CAST(s.a AS INT) AS i FROM s",
        ),
        (
            "CREATE STREAM s AS SELECT a, ROW_NUMBER() OVER w FROM t WINDOW w AS (PARTITION BY a) EMIT CHANGES",
            "SELECT a, ROW_NUMBER() OVER w FROM t WINDOW w AS (PARTITION BY a)",
        ),
    ],
)
def test_select_is_plain_duckdb(sql, duckdb):
    select = parse_one(sql).select
    assert isinstance(select, exp.Select) and select.parent is None
    assert select.sql(dialect="duckdb") == duckdb
    assert sqlglot.parse_one(duckdb, read="duckdb").sql(dialect="duckdb") == duckdb


@pytest.mark.parametrize(
    ("sql", "kind", "name"),
    [
        ("CREATE STREAM s AS SELECT * FROM t", "stream", "s"),
        ("create stream S2 as select * from t", "stream", "S2"),
        ("CREATE TABLE totals AS SELECT a PRIMARY KEY, COUNT(*) FROM t GROUP BY a", "table", "totals"),
        ("CREATE OR REPLACE STREAM s AS SELECT * FROM t", "stream", "s"),
        ("CREATE TABLE IF NOT EXISTS s AS SELECT * FROM t EMIT CHANGES", "table", "s"),
        ('CREATE STREAM "My Stream" AS SELECT * FROM t', "stream", "My Stream"),
        ("CREATE STREAM db.s AS SELECT * FROM t", "stream", "db.s"),
    ],
)
def test_create_kind_and_name(sql, kind, name):
    statement = parse_one(sql)
    assert (statement.kind, statement.name) == (kind, name)


# ---- the Velosql dialect itself: parse → generate ------------------------------------------------
IDENTITY = [
    ("CREATE STREAM s AS SELECT * FROM t EMIT CHANGES", None),
    ("CREATE TABLE s AS SELECT a PRIMARY KEY, COUNT(*) FROM t GROUP BY a EMIT FINAL", None),
    ("CREATE STREAM s AS SELECT * FROM t WINDOW TUMBLING(ts, INTERVAL '1' MINUTE) EMIT FINAL", None),
    ("CREATE STREAM s AS SELECT * FROM t WINDOW TUMBLING(1m)", "CREATE STREAM s AS SELECT * FROM t WINDOW TUMBLING(INTERVAL '1' MINUTE)"),
    ("CREATE STREAM s AS SELECT * FROM t WINDOW HOPPING(ts, 5m, 500ms)", "CREATE STREAM s AS SELECT * FROM t WINDOW HOPPING(ts, INTERVAL '5' MINUTE, INTERVAL '500' MILLISECOND)"),
    ("CREATE STREAM s AS SELECT * FROM t WINDOW SESSION(5)", "CREATE STREAM s AS SELECT * FROM t WINDOW SESSION(INTERVAL '5' SECOND)"),
    ("CREATE STREAM s AS SELECT * FROM t WITH ('t.type' = 'file_source', processor = 'v2', x = 1, y = TRUE)", None),
    ("CREATE OR REPLACE STREAM s AS SELECT * FROM t", None),
    ("SELECT LAG(p, 1) OVER (ROWS WINDOW BUFFER 10 ROWS PARTITION BY s ORDER BY ts) FROM t", None),
    ("SELECT LAG(p, 1) OVER (ROWS WINDOW BUFFER 10 ROWS) FROM t", None),
    ("SELECT a FROM t WINDOW w AS (PARTITION BY a)", None),
    ("CREATE TABLE t AS SELECT 1", None),
    ("SELECT 1 AS emit", None),
]  # fmt: skip


@pytest.mark.parametrize(("sql", "expected"), IDENTITY)
def test_velosql_dialect_identity(sql, expected):
    assert sqlglot.parse_one(sql, read=Velosql).sql(dialect=Velosql) == (expected or sql)


# ---- annotations ---------------------------------------------------------------------------------
ANNOTATED = """\
-- SQL Application: trading
-- Version: 2.1.0
-- Description: Trading analytics
-- @job_mode: v2
-- @num_partitions: 4
-- @metric: trades_total counter
-- just prose, not an annotation: @ignored here

-- @name: first_job
CREATE STREAM a AS SELECT * FROM t;

-- @num_partitions: 8
-- @batch_size: 500
CREATE STREAM b AS SELECT * FROM t;
SELECT 1;
CREATE STREAM c AS
-- @inside: is not an annotation
SELECT * FROM t;
"""


@pytest.mark.parametrize(
    ("index", "annotations"),
    [
        (
            0,
            {"app": "trading", "version": "2.1.0", "description": "Trading analytics", "job_mode": "v2",
             "num_partitions": "4", "metric": "trades_total counter", "name": "first_job"},
        ),
        (
            1,
            {"app": "trading", "version": "2.1.0", "description": "Trading analytics", "job_mode": "v2",
             "num_partitions": "8", "metric": "trades_total counter", "name": "first_job", "batch_size": "500"},
        ),
        (
            3,
            {"app": "trading", "version": "2.1.0", "description": "Trading analytics", "job_mode": "v2",
             "num_partitions": "4", "metric": "trades_total counter", "name": "first_job"},
        ),
    ],
)  # fmt: skip
def test_annotations(index, annotations):
    assert parse_script(ANNOTATED)[index].annotations == annotations


# ---- splitting scripts and DuckDB pass-through ---------------------------------------------------
DUCKDB_STATEMENTS = [
    "SELECT 1",
    "SELECT 'a;b' AS s, \"we;ird\" FROM t",
    "SELECT $$dollar;quoted$$",
    "SELECT 1 /* block; comment */ + 2",
    "CREATE TABLE t AS SELECT 1",
    "CREATE TABLE t (a INT PRIMARY KEY, b VARCHAR)",
    "CREATE TABLE t AS SELECT a, ROW_NUMBER() OVER w FROM s WINDOW w AS (PARTITION BY a)",
    "CREATE TABLE t AS WITH c AS (SELECT 1) SELECT * FROM c",
    "CREATE OR REPLACE TABLE t AS SELECT emit FROM s",
    "INSERT INTO t VALUES (1, 'x;y')",
    "INSTALL httpfs",
    "LOAD httpfs",
    "PRAGMA enable_profiling",
    "PRAGMA table_info('t')",
    "SET threads = 1",
    "SET threads=1",
    "RESET threads",
    "COPY t TO 'out;put.csv' (HEADER, DELIMITER ';')",
    "COPY (SELECT * FROM t) TO 'x.parquet' (FORMAT parquet)",
    "CREATE MACRO add_one(a) AS a + 1",
    "CREATE MACRO tbl(n) AS TABLE SELECT * FROM range(n)",
    "ATTACH 'other.db' AS other (READ_ONLY)",
    "DETACH other",
    "CALL pragma_version()",
    "EXPLAIN SELECT 1",
    "EXPLAIN ANALYZE SELECT * FROM t",
    "EXPLAIN CREATE TABLE t AS SELECT 1",
    "DESCRIBE SELECT 1",
    "SUMMARIZE t",
    "SHOW TABLES",
    "SHOW ALL TABLES",
    "DROP TABLE IF EXISTS t",
    "CREATE VIEW v AS SELECT * FROM t",
    "PIVOT t ON a USING SUM(b)",
    "FROM t SELECT a",
    "UPDATE t SET a = 1 WHERE b = 'c'",
    "BEGIN TRANSACTION",
    "COMMIT",
    "CHECKPOINT",
    "CREATE SEQUENCE seq START 1",
    "PREPARE q AS SELECT $1",
    "EXECUTE q(1)",
    "VACUUM",
    "SELECT E'esc\\';aped'",
    "SELECT 1 AS x\n  -- trailing; comment\n  , 2 AS y",
]


@pytest.mark.parametrize("sql", DUCKDB_STATEMENTS)
def test_duckdb_statement_keeps_original_text(sql):
    script = f"CREATE STREAM s AS SELECT * FROM t;\n  {sql} ;\nSHOW STREAMS"
    statements = parse_script(script)
    assert [type(s) for s in statements] == [CreateStream, DuckDBStatement, ShowStreams]
    assert statements[1].text == sql
    assert statements[1].location == Location(None, 2, 3)


def test_script_texts_and_locations():
    script = (
        "-- header\n"
        "SELECT ';' AS a; SELECT 2;\n"
        "/* between; */ CREATE STREAM s AS\n"
        "  SELECT * FROM t -- done;\n"
        "  EMIT CHANGES;;\n"
        "\n"
        "    DESCRIBE s"
    )
    statements = parse_script(script, "x.sql")
    assert [(s.text, str(s.location)) for s in statements] == [
        ("SELECT ';' AS a", "x.sql:2:1"),
        ("SELECT 2", "x.sql:2:18"),
        ("CREATE STREAM s AS\n  SELECT * FROM t -- done;\n  EMIT CHANGES", "x.sql:3:16"),
        ("DESCRIBE s", "x.sql:7:5"),
    ]


@pytest.mark.parametrize("script", ["", ";", "  -- only a comment\n", ";;\n/* x */;"])
def test_empty_scripts(script):
    assert parse_script(script) == []


# ---- SHOW / DESCRIBE / DROP / EXPLAIN ------------------------------------------------------------
@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SHOW STREAMS", ShowStreams("SHOW STREAMS", Location(None, 1, 1))),
        ("show jobs", ShowJobs("show jobs", Location(None, 1, 1))),
        ("DESCRIBE trades_1m", Describe("DESCRIBE trades_1m", Location(None, 1, 1), name="trades_1m")),
        ("DESC trades", Describe("DESC trades", Location(None, 1, 1), name="trades")),
        ("DESCRIBE STREAM s", Describe("DESCRIBE STREAM s", Location(None, 1, 1), name="s")),
        ('DESCRIBE "My Stream"', Describe('DESCRIBE "My Stream"', Location(None, 1, 1), name="My Stream")),
        ("DROP STREAM s", DropStream("DROP STREAM s", Location(None, 1, 1), name="s")),
        ("drop stream if exists s", DropStream("drop stream if exists s", Location(None, 1, 1), name="s", if_exists=True)),
        ("DESCRIBE SELECT 1", DuckDBStatement("DESCRIBE SELECT 1", Location(None, 1, 1))),
        ("SHOW STREAMS x", DuckDBStatement("SHOW STREAMS x", Location(None, 1, 1))),
        ("DROP TABLE s", DuckDBStatement("DROP TABLE s", Location(None, 1, 1))),
    ],
)  # fmt: skip
def test_management_statements(sql, expected):
    assert parse_one(sql) == expected


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("TERMINATE s", Terminate("TERMINATE s", Location(None, 1, 1), name="s")),
        ('terminate "My Stream"', Terminate('terminate "My Stream"', Location(None, 1, 1), name="My Stream")),
    ],
)  # fmt: skip
def test_terminate(sql, expected):
    assert parse_one(sql) == expected


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("TERMINATE", "1:1: expected TERMINATE <name>, found the end of the statement"),
        ("TERMINATE a b", "1:13: expected TERMINATE <name>, found 'b'"),
    ],
)
def test_terminate_errors(sql, message):
    with pytest.raises(SqlError, match=message):
        parse_one(sql)


@pytest.mark.parametrize(
    ("sql", "analyze", "inner_text"),
    [
        ("EXPLAIN CREATE STREAM s AS SELECT * FROM t", False, "CREATE STREAM s AS SELECT * FROM t"),
        (
            "EXPLAIN ANALYZE CREATE TABLE s AS SELECT a PRIMARY KEY FROM t EMIT CHANGES",
            True,
            "CREATE TABLE s AS SELECT a PRIMARY KEY FROM t EMIT CHANGES",
        ),
    ],
)
def test_explain(sql, analyze, inner_text):
    statement = parse_one(f"-- @job_mode: v1\n{sql}")
    assert isinstance(statement, Explain)
    assert (statement.text, statement.analyze, statement.statement.text) == (sql, analyze, inner_text)
    assert statement.statement.location == Location(None, 2, len(sql) - len(inner_text) + 1)
    assert statement.statement.annotations == {"job_mode": "v1"}


# ---- errors: message and place in the whole file -------------------------------------------------
# The statement under test follows these lines; "▸" marks where the error must be reported.
ERROR_FILE_PREFIX = """\
-- SQL Application: broken
CREATE STREAM ok AS SELECT * FROM t EMIT CHANGES;

SELECT 'not; a split' AS x;
INSTALL httpfs;
"""

DURATIONS = "1m, 30s, 500ms, '10 minutes' or INTERVAL '1' MINUTE"
WINDOW_SIZE = f"expected a window size such as {DURATIONS}"
ERRORS = [
    ("CREATE STREAM s AS\nSELECT * FROM t\nWINDOW TUMBLING(▸foo)", f"{WINDOW_SIZE}, found 'foo'"),
    ("CREATE STREAM s AS SELECT * FROM t WINDOW TUMBLING(ts, ▸)", f"{WINDOW_SIZE}, found ')'"),
    ("CREATE STREAM s AS SELECT * FROM t WINDOW TUMBLING(▸INTERVAL '1' MONTH)", f"{WINDOW_SIZE}, found \"INTERVAL '1' MONTH\""),
    ("CREATE STREAM s AS SELECT * FROM t WINDOW TUMBLING(▸0s)", "a window size must be greater than zero, found '0s'"),
    ("CREATE STREAM s AS SELECT * FROM t WINDOW SLIDING(1m, ▸0)", "a window advance must be greater than zero, found '0'"),
    ("CREATE STREAM s AS SELECT * FROM t WINDOW TUMBLING(▸'10 lightyears')", f"{WINDOW_SIZE}, found \"'10 lightyears'\""),
    ("CREATE STREAM s AS SELECT * FROM t WINDOW SESSION(▸ts)", f"expected a session gap such as {DURATIONS}, found 'ts'"),
    ("CREATE STREAM s AS SELECT * FROM t\n  WINDOW ▸HOPPINGX(1m)", "unknown window kind: expected TUMBLING, SLIDING, HOPPING or SESSION, found 'HOPPINGX'"),
    ("CREATE STREAM s AS SELECT * FROM t WINDOW SLIDING(1m▸)", "expected ',' and the advance after the size of a SLIDING window, found ')'"),
    ("CREATE STREAM s AS SELECT * FROM t WINDOW SLIDING(1m, ▸x)", f"expected a window advance such as {DURATIONS}, found 'x'"),
    ("CREATE STREAM s AS SELECT * FROM t WINDOW TUMBLING(1▸m", "expected ')' to close WINDOW TUMBLING(…), found the end of the statement"),
    ("CREATE STREAM s AS SELECT * FROM t WINDOW TUMBLING(1m▸, 2m)", "expected ')' to close WINDOW TUMBLING(…), found ','"),
    ("CREATE STREAM s\n▸SELECT * FROM t", "expected AS after CREATE STREAM s, found 'SELECT'"),
    ("CREATE STREAM ▸AS SELECT * FROM t", "expected the name of the stream, found 'AS'"),
    ("CREATE STREAM s ▸AS", "expected a SELECT after AS, found the end of the statement"),
    ("CREATE STREAM s AS SELECT * FROM t\nEMIT ▸SOMETIMES", "expected CHANGES or FINAL after EMIT, found 'SOMETIMES'"),
    ("CREATE TABLE t AS SELECT * FROM s EMIT ▸NOW", "expected CHANGES or FINAL after EMIT, found 'NOW'"),
    ("CREATE STREAM s AS SELECT * FROM t EMIT CHANGES\nWITH (\n  'a' = 1,\n  'b' = ▸2", "expected ',' or ')' in WITH (…), found the end of the statement"),
    ("CREATE STREAM s AS SELECT * FROM t WITH ('a' = 1 ▸'b' = 2)", "expected ',' or ')' in WITH (…), found 'b'"),
    ("CREATE STREAM s AS SELECT * FROM t WITH ('a' ▸1)", "expected '=' after the WITH key 'a', found '1'"),
    ("CREATE STREAM s AS SELECT * FROM t WITH ('a' = ▸)", "expected a string, number, true or false as the value of 'a', found ')'"),
    ("CREATE STREAM s AS SELECT * FROM t WITH ▸'a' = 1", "expected '(' after WITH, found 'a'"),
    ("CREATE STREAM s AS SELECT * FROM t WITH (▸= 1)", "expected a WITH key such as 'source.type' or processor, found '='"),
    ("CREATE STREAM s AS SELECT * FROM t WITH (a.▸= 1)", "expected a WITH key such as 'source.type' or processor, found '='"),
    ("CREATE STREAM s AS SELECT * FROM t WITH ('a' = 1, ▸'a' = 2)", "WITH key 'a' is given twice (first at app.sql:6:42)"),
    ("CREATE STREAM s AS SELECT * FROM t EMIT CHANGES ▸oops", "expected WITH (…) or the end of the statement, found 'oops'"),
    ("CREATE STREAM s AS SELECT * FROM t oops ▸more", "expected EMIT, WITH (…) or the end of the statement, found 'more'"),
    ("CREATE STREAM s AS SELECT (a ▸FROM t", "expected ')', found 'FROM'"),
    ("CREATE STREAM s AS SELECT a FROM t WHERE ▸GROUP BY a", "incomplete Where, found 'GROUP BY'"),
    ("CREATE STREAM s AS SELECT LAG(x) OVER (ROWS WINDOW BUFFER ▸many ROWS) FROM t", "expected a number of rows after ROWS WINDOW BUFFER, found 'many'"),
    ("CREATE STREAM s AS SELECT LAG(x) OVER (ROWS WINDOW BUFFER 5 ▸PARTITION BY a) FROM t", "expected ROWS after ROWS WINDOW BUFFER 5, found 'PARTITION BY'"),
    ("CREATE STREAM s AS SELECT * FROM (SELECT * FROM t WINDOW ▸TUMBLING(1m)) AS x", "WINDOW is only allowed in the outermost SELECT"),
    ("CREATE STREAM s AS SELECT * FROM (SELECT a ▸PRIMARY KEY FROM t) AS x", "PRIMARY KEY is only allowed in the outermost SELECT"),
    ("EXPLAIN CREATE STREAM s AS SELECT * FROM t ▸EMIT", "expected CHANGES or FINAL after EMIT, found the end of the statement"),
    ("DROP ▸STREAM", "expected DROP STREAM [IF EXISTS] <name>, found the end of the statement"),
    ("DROP STREAM a ▸b", "expected DROP STREAM [IF EXISTS] <name>, found 'b'"),
    ("SELECT 1;\n  SELECT ▸'unterminated", "unterminated string starting with \"'unterminated"),
    ('SELECT ▸"unterminated', "unterminated quoted identifier starting with '\"unterminated"),
    ("SELECT 1 ▸/* open", "unterminated comment starting with '/* open"),
]  # fmt: skip


@pytest.mark.parametrize(("bad", "message"), ERRORS)
def test_error_message_and_location(bad, message):
    script = f"{ERROR_FILE_PREFIX}{bad};\nSELECT 1;\n"
    before = script[: script.index("▸")]
    where = Location("app.sql", before.count("\n") + 1, len(before) - before.rfind("\n"))
    with pytest.raises(SqlError) as raised:
        parse_script(script.replace("▸", ""), "app.sql")
    assert (raised.value.location, raised.value.message[: len(message)]) == (where, message)
    assert str(raised.value).startswith(f"{where}: {message}")


# Typos: the grammar fails after them (GROUPBY is read as an alias); the message names the typo.
W = "EMIT CHANGES WITH ('t.type' = 'python')"
TYPOS = [
    (f"CREATE STREAM s AS SELECT k, COUNT(*) FROM t\n▸GROUPBY k {W}", "GROUPBY is not a keyword: did you mean GROUP BY?"),
    (f"CREATE STREAM s AS SELECT k FROM t WHERE k > 1 ▸ORDERBY k {W}", "ORDERBY is not a keyword: did you mean ORDER BY?"),
    (f"CREATE STREAM s AS SELECT k FROM t ▸PARTITIONBY k {W}", "PARTITIONBY is not a keyword: did you mean PARTITION BY?"),
    (f"CREATE STREAM s AS SELECT k, COUNT(*) FROM t ▸GROUP k {W}", "GROUP must be followed by BY: did you mean GROUP BY?"),
    (f"CREATE STREAM s AS SELECT k FROM t GROUP BY k ▸order k {W}", "order must be followed by BY: did you mean ORDER BY?"),
    (f"CREATE STREAM s AS SELECT k ▸FORM t {W}", "FORM is not a keyword: did you mean FROM?"),
    (f"CREATE STREAM s AS SELECT k FROM t ▸WERE k > 1 {W}", "WERE is not a keyword: did you mean WHERE?"),
    (f"CREATE STREAM s AS SELECT k, COUNT(*) FROM t GROUP BY k ▸HAVNG COUNT(*) > 1 {W}", "HAVNG is not a keyword: did you mean HAVING?"),
    (f"CREATE STREAM s AS SELECT k FROM t ▸LIMT 5 {W}", "LIMT is not a keyword: did you mean LIMIT?"),
    (f"CREATE STREAM s AS SELECT k FROM t ▸JION u ON t.k = u.k {W}", "JION is not a keyword: did you mean JOIN?"),
    ("CREATE STREAM s AS SELECT k FROM t ▸EMITS CHANGES", "EMITS is not a keyword: did you mean EMIT?"),
    ("CREATE STREAM s AS SELECT k FROM t EMIT CHANGES ▸WIHT ('t.type' = 'python')", "WIHT is not a keyword: did you mean WITH?"),
    (f"CREATE STREAM s AS SELECT symbol ▸COUNT(*) FROM t GROUP BY symbol {W}", "missing comma between select items? COUNT(…) follows 'symbol'"),
    (f"CREATE STREAM s AS SELECT a b ▸c FROM t {W}", "missing comma between select items? 'c' follows 'a b'"),
    (f"CREATE STREAM s AS SELECT a,\n  upper(b) AS ub ▸c FROM t {W}", "missing comma between select items? 'c' follows 'upper(b) AS ub'"),
    (f"CREATE STREAM s AS SELECT k, COUNT(*) n ▸total FROM t GROUP BY k {W}", "missing comma between select items? 'total' follows 'COUNT(*) n'"),
    (f"CREATE STREAM s AS SELECT k, SUM(v ▸FROM t GROUP BY k {W}", "expected ')', found 'FROM'"),
    (f"CREATE STREAM s AS SELECT v * ▸AS v2 FROM t {W}", "expected an expression after '*', found 'AS'"),
    (f"CREATE STREAM s AS SELECT v FROM t WHERE v > 1 AND ▸{W}", "expected an expression after AND, found 'EMIT'"),
    ("CREATE STREAM s AS SELECT v FROM t where ▸EMIT CHANGES", "expected an expression after WHERE, found 'EMIT'"),
    (f"CREATE STREAM s AS SELECT k FROM t t1 ▸t2 {W}", "expected EMIT, WITH (…) or the end of the statement, found 't2'"),
]  # fmt: skip


@pytest.mark.parametrize(("bad", "message"), TYPOS)
def test_a_typo_says_what_is_wrong_where(bad, message):
    test_error_message_and_location(bad, message)


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE STREAM s AS SELECT k AS form, v limt, v AS groupby FROM t EMIT CHANGES",
        "CREATE STREAM s AS SELECT k, COUNT(*) total FROM t GROUP BY k EMIT CHANGES",
        "CREATE STREAM s AS SELECT k FROM t AS were WHERE were.k > 1 EMIT CHANGES",
    ],
)
def test_words_like_keywords_are_still_names(sql):
    assert isinstance(parse_one(sql), CreateStream)


def test_error_message_example_from_the_docs():
    script = (
        "-- app\n" * 4
        + "SELECT 1;\n" * 4
        + "CREATE STREAM s AS\nSELECT * FROM t\nWINDOW TUMBLING(\n       foo);"
    )
    with pytest.raises(SqlError) as raised:
        parse_script(script, "app.sql")
    assert str(raised.value) == (
        "app.sql:12:8: expected a window size such as 1m, 30s, 500ms, '10 minutes' or INTERVAL '1' MINUTE, "
        "found 'foo'"
    )


def test_parse_one_wants_one_statement():
    with pytest.raises(SqlError, match="expected exactly one statement, found 2"):
        parse_one("SELECT 1; SELECT 2")


def test_sql_error_is_a_value_error():
    with pytest.raises(ValueError):
        parse_one("CREATE STREAM s AS SELECT * FROM t EMIT")


# ---- Velostream's quickstart (tests/velostream_quickstart.py) and a trades job ----------------------
TRADES = (
    "CREATE STREAM trades_1m AS SELECT symbol, COUNT(*) AS trades, SUM(quantity) AS volume, "
    "AVG(price) AS avg_price, _window_start, _window_end FROM trades GROUP BY symbol "
    "WINDOW TUMBLING(ts, INTERVAL '1' MINUTE) EMIT FINAL WITH ('trades.type' = 'kafka_source', "
    "'trades.topic.name' = 'trades', processor = 'v2:8', enable_affinity = true);"
)


def _file_props(source: str, sink: str, source_path: str, sink_path: str) -> dict[str, object]:
    return {
        f"{source}.type": "file_source", f"{source}.path": source_path, f"{source}.format": "csv",
        f"{sink}.type": "file_sink", f"{sink}.path": sink_path, f"{sink}.format": "csv",
    }  # fmt: skip


QUICKSTART = [
    (
        HELLO_WORLD, "stream", "hello_world", "SELECT * FROM input_data", (),
        _file_props("input_data", "hello_world", "./hello_world_input.csv", "./output/hello_world_output.csv"),
    ),
    (
        FILTER, "stream", "filtered_data", "SELECT * FROM input_data WHERE value > 150", (),
        _file_props("input_data", "filtered_data", "./hello_world_input.csv", "./output/01_filter_output.csv"),
    ),
    (
        TRANSFORM, "stream", "transformed_data",
        "SELECT id, name, value * 2 AS doubled_value, UPPER(name) AS name_upper FROM input_data", (),
        _file_props("input_data", "transformed_data", "./hello_world_input.csv",
                    "./output/02_transform_output.csv"),
    ),
    (
        AGGREGATE, "table", "category_stats",
        "SELECT category, COUNT(*) AS transaction_count, SUM(amount) AS total_amount, AVG(amount) AS avg_amount "
        "FROM transactions GROUP BY category", ("category",),
        _file_props("transactions", "category_stats", "./03_aggregate_input.csv",
                    "./output/03_aggregate_output.csv"),
    ),
    (
        WINDOW, "stream", "price_with_change",
        "SELECT symbol, price, timestamp, LAG(price, 1) OVER (PARTITION BY symbol ORDER BY timestamp) AS previous_price, "
        "price - LAG(price, 1) OVER (PARTITION BY symbol ORDER BY timestamp) AS price_change FROM stock_prices", (),
        _file_props("stock_prices", "price_with_change", "./04_window_input.csv", "./output/04_window_output.csv"),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("script", "kind", "name", "duckdb", "key", "properties"), QUICKSTART)
def test_velostream_quickstart(script, kind, name, duckdb, key, properties):
    [statement] = parse_script(script, "quickstart.sql")
    assert isinstance(statement, CreateStream)
    assert (statement.kind, statement.name, statement.emit, statement.window) == (kind, name, "changes", None)
    assert statement.select.sql(dialect="duckdb") == duckdb
    assert (statement.primary_key, statement.properties) == (key, properties)
    assert statement.annotations["app"] == script.split(": ", 1)[1].split("\n", 1)[0]
    assert statement.annotations["version"] == "1.0.0"
    assert statement.text.startswith("CREATE ") and statement.text.endswith("'csv'\n)")
    assert statement.location.line == script[: script.index("\nCREATE ")].count("\n") + 2


def test_window_quickstart_buffers():
    [statement] = parse_script(WINDOW)
    assert [w.meta.get("buffer_rows") for w in statement.select.find_all(exp.Window)] == [10, 10]


def test_trades_job():
    statement = parse_one(TRADES)
    assert statement.window == WindowSpec("tumbling", MIN, None, "ts")
    assert statement.emit == "final"
    assert statement.properties == {
        "trades.type": "kafka_source",
        "trades.topic.name": "trades",
        "processor": "v2:8",
        "enable_affinity": True,
    }
    assert statement.select.sql(dialect="duckdb") == (
        "SELECT symbol, COUNT(*) AS trades, SUM(quantity) AS volume, AVG(price) AS avg_price, "
        "_window_start, _window_end FROM trades GROUP BY symbol"
    )
    assert statement.text == TRADES.rstrip(";")


# ---- a UTF-8 byte-order mark ---------------------------------------------------------------------
def test_a_script_starting_with_a_bom_parses():
    first, second = parse_script("\ufeffCREATE STREAM s AS SELECT * FROM t EMIT CHANGES;\nSELECT 1")
    assert isinstance(first, CreateStream)
    assert (first.text, first.location) == (
        "CREATE STREAM s AS SELECT * FROM t EMIT CHANGES",
        Location(None, 1, 1),
    )
    assert (second.text, second.location) == ("SELECT 1", Location(None, 2, 1))


@pytest.mark.parametrize("bom", ["", "\ufeff"])
def test_a_bom_does_not_move_error_locations(bom):
    with pytest.raises(SqlError) as raised:
        parse_script(f"{bom}CREATE STREAM s AS SELECT * FROM t EMIT SOMETIMES", "app.sql")
    assert str(raised.value) == "app.sql:1:41: expected CHANGES or FINAL after EMIT, found 'SOMETIMES'"
