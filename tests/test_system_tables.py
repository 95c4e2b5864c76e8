"""The system tables: the jobs' live state as SQL, the same from Python, ``-c`` and ``run``.

Every table is read through SQL (``engine.sql``) and checked against what the job must show: a
bounded job's record counts, a V2 job's workers, a running windowed job's watermarks and open
windows. The command-line tests run the program for real, on a database file.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from test_cli_sql import velosql
from test_v2_jobs import wait_for

import velosql as vs
from velosql import system

ORDERS = Path(__file__).resolve().parents[1] / "sql" / "data" / "orders.csv"
BIG = (
    "CREATE STREAM big AS SELECT order_id, amount FROM orders WHERE amount >= 100 "
    f"WITH ('orders.type' = 'file_source', 'orders.path' = '{ORDERS}', processor = 'v1')"
)
BASE = dt.datetime(2024, 1, 1)


def rows(engine, sql: str) -> list[dict]:
    return engine.sql(sql).to_arrow_table().to_pylist()


def test_streams_and_jobs_of_a_bounded_job_are_views_over_its_state():
    with vs.connect() as engine:
        assert rows(engine, "SELECT * FROM velosql_jobs") == []  # the view exists before any job
        engine.execute(BIG).wait(60)
        ((expected_out,),) = duckdb.sql(f"SELECT count(*) FROM '{ORDERS}' WHERE amount >= 100").fetchall()
        (job,) = rows(engine, "SELECT * FROM velosql_jobs")
        assert job["name"] == "big" and job["status"] == "Finished" and job["processor"].startswith("V1")
        assert (job["records_in"], job["records_out"], job["late_rows"], job["dead_letters"]) == (
            500, expected_out, 0, 0,
        )  # fmt: skip
        assert job["in_rows_per_second"] > 0 and job["error"] is None and job["partitions"] is None
        (stream,) = rows(engine, "SELECT * FROM velosql_streams")
        assert stream == {
            "name": "big", "kind": "STREAM", "source": "orders", "sinks": "duckdb_table", "emit": "CHANGES",
            "window": "", "status": "Finished", "source_type": "file_source", "processor": job["processor"],
            "late_table": None, "dlq_table": "big__dlq", "statement": BIG,
        }  # fmt: skip
        # SHOW STREAMS is the same rows' first columns; execute() reads the views too.
        assert engine.execute("SHOW STREAMS").to_pylist() == [{k: stream[k] for k in list(stream)[:7]}]
        assert engine.execute("SELECT records_in FROM velosql_jobs").fetchall() == [(500,)]
        # Their columns are what the declaration (and the guide) says.
        for table in system.TABLES:
            described = engine.sql(f"DESCRIBE {table.name}").fetchall()
            assert [(c[0], c[1]) for c in described] == [(c.name, c.type) for c in table.columns]


def test_partitions_has_a_row_per_worker_of_a_v2_job():
    with vs.connect() as engine:
        engine.push("clicks", pa.table({"user": [f"u{i % 10}" for i in range(1000)], "n": list(range(1000))}))
        engine.close_source("clicks")
        engine.execute(
            "CREATE STREAM c AS SELECT user, n + 1 AS m FROM clicks WITH (processor = 'v2:2')"
        ).wait(60)
        parts = rows(engine, "SELECT * FROM velosql_partitions ORDER BY partition")
        assert [p["partition"] for p in parts] == [0, 1]
        assert all(p["stream"] == "c" and p["pid"] > 0 for p in parts) and parts[0]["pid"] != parts[1]["pid"]
        assert sum(p["records_in"] for p in parts) == 1000 and sum(p["records_out"] for p in parts) == 1000
        assert all(p["queue_depth"] == 0 and p["busy_seconds"] >= 0 for p in parts)
        assert sum(p["skew"] for p in parts) == pytest.approx(2.0)  # each worker's share over the mean
        (job,) = rows(engine, "SELECT partitions, skew, records_in FROM velosql_jobs")
        assert job["partitions"] == 2 and job["records_in"] == 1000
        assert job["skew"] == round(max(p["records_in"] for p in parts) / 500, 2)


def test_watermarks_and_open_windows_of_a_running_windowed_job():
    ts = pa.array([BASE + dt.timedelta(seconds=i) for i in range(300)], pa.timestamp("us"))
    with vs.connect() as engine:
        engine.push("ticks", pa.table({"k": [f"k{i % 3}" for i in range(300)], "ts": ts}))
        job = engine.execute(
            "CREATE STREAM per_min AS SELECT k, count(*) AS n FROM ticks GROUP BY k "
            "WINDOW TUMBLING(ts, 1m) EMIT FINAL WITH (processor = 'v1', 'watermark.max_out_of_orderness' = '5s')"
        )
        newest = BASE + dt.timedelta(seconds=299)

        def job_watermark():
            found = rows(engine, "SELECT watermark FROM velosql_watermarks WHERE scope = 'job'")
            return found[0]["watermark"] if found else None

        def settled():  # the batch's windows closed: the first open one is the fifth minute
            found = rows(engine, "SELECT first_start FROM velosql_open_windows")
            return found == [{"first_start": BASE + dt.timedelta(minutes=4)}]

        wait_for(settled, "the first four windows to close")
        assert job_watermark() == newest - dt.timedelta(seconds=5)
        marks = rows(engine, "SELECT * FROM velosql_watermarks ORDER BY scope")
        assert marks == [
            {"stream": "per_min", "scope": "job", "partition": None, "watermark": newest - dt.timedelta(seconds=5),
             "ended": False, "idle": None, "newest_event": newest, "lag_seconds": 5.0},
            {"stream": "per_min", "scope": "source partition", "partition": 0,
             "watermark": newest - dt.timedelta(seconds=5), "ended": False, "idle": False, "newest_event": newest,
             "lag_seconds": 5.0},
        ]  # fmt: skip
        # The first four minutes closed at watermark 00:04:54; the fifth is open, with 3 keys.
        (open_,) = rows(engine, "SELECT * FROM velosql_open_windows")
        assert open_["stream"] == "per_min" and open_["window"] == "TUMBLING 60s"
        assert (open_["first_start"], open_["last_end"], open_["windows"]) == (
            BASE + dt.timedelta(minutes=4), BASE + dt.timedelta(minutes=5), 1,
        )  # fmt: skip
        assert open_["rows_held"] >= 3 and open_["rows_kind"] == "partial rows"
        engine.close_source("ticks")
        job.wait(60)
        assert rows(engine, "SELECT scope, watermark, ended FROM velosql_watermarks WHERE scope = 'job'") == [
            {"scope": "job", "watermark": None, "ended": True}
        ]
        assert rows(engine, "SELECT * FROM velosql_open_windows") == []
        assert engine.sql("SELECT sum(n) FROM per_min").fetchall() == [(300,)]


def test_system_tables_from_run_on_a_database_file_are_not_stored_in_it(tmp_path):
    (tmp_path / "app.sql").write_text(
        BIG + ";\nSELECT name, status, records_in FROM velosql_jobs;\n", encoding="utf-8"
    )
    # A table of the user's with a system table's name: the view hides it, nothing overwrites it.
    duckdb.connect(str(tmp_path / "kept.duckdb")).execute(
        "CREATE TABLE velosql_jobs AS SELECT 42 AS mine"
    ).close()
    result = velosql(tmp_path, "run", "--database", "kept.duckdb", "app.sql")
    assert result.returncode == 0, result.stderr
    assert "│ big     │ Finished │        500 │" in result.stdout
    con = duckdb.connect(str(tmp_path / "kept.duckdb"))
    assert con.sql("SELECT * FROM velosql_jobs").fetchall() == [(42,)]
    assert con.sql("SELECT count(*) FROM duckdb_views() WHERE NOT internal").fetchall() == [(0,)]


def test_c_reads_the_system_tables_and_tables_leaves_them_out(tmp_path):
    result = velosql(
        tmp_path,
        "-csv",
        "-c",
        BIG,
        "-c",
        "SELECT name, records_in, late_rows FROM velosql_jobs",
        "-c",
        ".tables",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["name,records_in,late_rows", "big,500,0", "big", "big__dlq"]
