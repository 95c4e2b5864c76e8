"""Exactly-once from Kafka to Kafka and to a database table, under SIGKILL (issue 20).

A job with a state location writes a kafka_sink in one Kafka transaction per checkpoint epoch,
the source offsets and an epoch marker inside it. The Kafka output is read from the log itself
with each record's transaction status (``kafka_wire``): Tansu, the test broker, does not tell a
``read_committed`` consumer which transactions aborted, so such a consumer would see them too.
"""

from __future__ import annotations

import json
import random
import sys

import duckdb
import pyarrow as pa
import pytest
from conftest import LONG
from kafka_broker import kafka_brokers  # noqa: F401 - the session fixture
from kafka_wire import Status, read_log
from test_checkpoints import kill_and_restart, until
from test_kafka import PARTITIONS, _produce, _topic, _trades

import velosql

AGGREGATE = (
    "SELECT symbol, _window_start AS w, count(*) AS n, sum(qty) AS volume FROM t GROUP BY symbol "
    "WINDOW TUMBLING(ts, INTERVAL '1' MINUTE) EMIT FINAL"
)
AGGREGATE_BATCH = (
    "SELECT symbol, strftime(time_bucket(INTERVAL '1 minute', ts::TIMESTAMP), '%Y-%m-%d %H:%M:%S'), "
    "count(*), sum(qty) FROM t GROUP BY ALL"
)
PROJECTION = "SELECT symbol, qty, ts FROM t WHERE qty > 6"
PROJECTION_BATCH = "SELECT symbol, qty, ts FROM t WHERE qty > 6"


def committed(brokers: str, topic: str, columns: list[str]) -> tuple[list[tuple], int]:
    """The committed messages of ``topic`` as sorted value tuples, and how many aborted ones the
    log holds besides (Kafka transactions of killed runs)."""
    rows, aborted = [], 0
    for p in range(PARTITIONS):
        for rec in read_log(brokers, topic, p):
            assert rec.status is not Status.OPEN, (
                f"{topic}/{p}@{rec.record.offset} is in no ended transaction"
            )
            if rec.status is Status.ABORTED:
                aborted += 1
                continue
            value = json.loads(rec.record.value)
            rows.append(tuple(value[c] for c in columns))
    return sorted(rows), aborted


def _batch(sql: str, records: list[dict]) -> list[tuple]:
    t = pa.Table.from_pylist(records)  # noqa: F841 - read by the batch SQL
    return sorted(duckdb.sql(sql).fetchall())


def _app(brokers: str, topic: str, processor: str, out: dict[str, str]) -> str:
    source = (
        f"'t.type' = 'kafka_source', 't.topic.name' = '{topic}', 't.bootstrap.servers' = '{brokers}', "
        f"'t.stop.at.end' = 'true', 'watermark.max_out_of_orderness' = '2h', "
        f"'t.batch_size' = 100, 'checkpoint.interval' = '50ms', max_batch_size = 100, "
        f"processor = '{processor}'"
    )

    def kafka(name: str) -> str:
        return (
            f"'{name}.type' = 'kafka_sink', '{name}.topic.name' = '{out[name]}', "
            f"'{name}.bootstrap.servers' = '{brokers}'"
        )

    return (
        f"CREATE STREAM agg_k AS {AGGREGATE} WITH ({source}, {kafka('agg_k')});\n"
        f"CREATE STREAM proj_k AS {PROJECTION} WITH ({source}, {kafka('proj_k')});\n"
        f"CREATE STREAM agg_db AS {AGGREGATE} WITH ({source}, 'agg_db.type' = 'duckdb_table');\n"
    )


def test_a_job_with_a_state_location_writes_each_result_to_kafka_once(kafka_brokers, tmp_path):  # noqa: F811
    """Stopped mid-stream and started again: the second run goes on from the checkpoint's
    offsets, and the committed messages are the batch answer."""
    topic = _topic(kafka_brokers)
    records = _trades(3000)
    _produce(kafka_brokers, topic, [(i % PARTITIONS, json.dumps(r).encode()) for i, r in enumerate(records)])
    out = {"agg_k": _topic(kafka_brokers), "proj_k": _topic(kafka_brokers)}
    app = _app(kafka_brokers, topic, "v1", out).split(";\n")[0]  # the aggregate to Kafka
    with velosql.connect(state=str(tmp_path / "state")) as engine:
        job = engine.execute(app)
        until(lambda: job.metrics()["records_in"] >= 1000 or job.done)
        job.stop()
        job.wait(30)
        assert job.error is None
    with velosql.connect(state=str(tmp_path / "state")) as engine:
        job = engine.execute(app)
        job.wait(60)
        assert job.metrics()["records_in"] < len(records)  # it did not start over
    got, _ = committed(kafka_brokers, out["agg_k"], ["symbol", "w", "n", "volume"])
    assert got == _batch(AGGREGATE_BATCH, records)


@pytest.mark.parametrize("processor", ["v1", *(["v2:2"] if LONG else [])])
def test_a_job_killed_at_random_moments_writes_kafka_and_table_output_exactly_once(
    kafka_brokers,  # noqa: F811
    tmp_path,
    processor,
):
    """``velosql run --database … --state …`` of three statements over a 4-partition topic — a
    tumbling aggregate and a projection into Kafka topics, the aggregate into a table — killed
    with SIGKILL at random moments (under V2 every other time one of its workers) and started
    again until a run ends by itself. The committed Kafka messages and the table are the batch
    answer, and the Kafka logs hold aborted transactions (the kills cut epochs). 10 kills per
    processor in the long profile (V1 and V2:2), 3 in the fast one (V1)."""

    topic = _topic(kafka_brokers)
    records = _trades(12_000 if LONG else 4000)
    _produce(kafka_brokers, topic, [(i % PARTITIONS, json.dumps(r).encode()) for i, r in enumerate(records)])
    out = {"agg_k": _topic(kafka_brokers), "proj_k": _topic(kafka_brokers)}
    app, db, state = tmp_path / "app.sql", tmp_path / "out.duckdb", tmp_path / "state"
    app.write_text(_app(kafka_brokers, topic, processor, out))
    command = [sys.executable, "-m", "velosql", "run", "--database", str(db), "--state", str(state), str(app)]
    rng = random.Random(20)
    current = state / "proj_k" / "CURRENT"
    # Most kills land amid an epoch's output (the pause after the checkpoints).
    kills, workers_killed = kill_and_restart(command, current, rng, 10 if LONG else 3, processor, (0.02, 0.3))
    assert kills >= 3
    assert processor == "v1" or workers_killed >= 1
    want_agg = _batch(AGGREGATE_BATCH, records)
    got_agg, aborted_agg = committed(kafka_brokers, out["agg_k"], ["symbol", "w", "n", "volume"])
    got_proj, aborted_proj = committed(kafka_brokers, out["proj_k"], ["symbol", "qty", "ts"])
    assert got_agg == want_agg
    assert got_proj == _batch(PROJECTION_BATCH, records)
    con = duckdb.connect(str(db))
    table = con.execute("SELECT symbol, strftime(w, '%Y-%m-%d %H:%M:%S'), n, volume FROM agg_db").fetchall()
    assert sorted(table) == want_agg
    assert aborted_agg + aborted_proj > 0  # the kills did cut transactions
