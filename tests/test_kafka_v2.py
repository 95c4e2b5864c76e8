"""V2 on Kafka: each worker consumes its own partitions (sticky), or partial rows are hash-routed
between the workers, or the job routes whole micro-batches (round_robin); results equal DuckDB
batch SQL for every strategy (two-phase aggregation), on a real broker (Tansu, or
``$VELOSQL_KAFKA_BROKERS``).

Topics are produced once per module: ``spread`` holds trade ``i`` in partition ``i % 4``, so every
partition holds every symbol; ``keyed`` holds each trade in the partition of its symbol, with the
symbol as the message key, so a GROUP BY symbol finds each group in one partition.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import uuid

import duckdb
import psutil
import pyarrow as pa
import pytest
from conftest import LONG
from kafka_broker import kafka_brokers  # noqa: F401 - the session fixture
from test_kafka import _produce, _topic, _trades, wait_for

import velosql

PARTITIONS = 4
RECORDS = 3000
LATENESS = {"watermark.max_out_of_orderness": "1h"}  # partitions are read at their own pace

QUERIES = {
    "group_by": (
        "SELECT symbol, count(*) AS n, sum(qty) AS volume, round(avg(price), 6) AS avg_price FROM t "
        "GROUP BY symbol EMIT FINAL",
        "SELECT symbol, count(*), sum(qty), round(avg(price), 6) FROM t GROUP BY symbol",
    ),
    "tumbling": (
        "SELECT symbol, count(*) AS n, max(price) AS high, _window_start FROM t GROUP BY symbol "
        "WINDOW TUMBLING(ts, INTERVAL '1' MINUTE) EMIT FINAL",
        "SELECT symbol, count(*), max(price), time_bucket(INTERVAL '1 minute', ts::TIMESTAMP) FROM t "
        "GROUP BY ALL",
    ),
    "projection": (
        "SELECT symbol, price, qty * 2 AS q2, ts FROM t WHERE price > 12",
        "SELECT symbol, price, qty * 2, ts::TIMESTAMP FROM t WHERE price > 12",
    ),
}


def _symbol_partition(symbol: str) -> int:
    return int(symbol[1:]) % PARTITIONS


@pytest.fixture(scope="module")
def topics(kafka_brokers):  # noqa: F811
    """The module's two topics and the records in both."""
    from confluent_kafka import Producer

    records = _trades(RECORDS)
    spread = _topic(kafka_brokers)
    _produce(kafka_brokers, spread, [(i % PARTITIONS, json.dumps(r).encode()) for i, r in enumerate(records)])
    keyed = _topic(kafka_brokers)
    producer = Producer({"bootstrap.servers": kafka_brokers, "linger.ms": 5})
    for r in records:
        symbol = r["symbol"]
        producer.produce(
            keyed, value=json.dumps(r).encode(), key=symbol.encode(), partition=_symbol_partition(symbol)
        )
    assert producer.flush(10) == 0
    return {"spread": spread, "keyed": keyed, "records": records}


def _with(brokers: str, topic: str, **extra: str) -> str:
    """A WITH clause reading ``topic`` to its end offsets, in a consumer group of its own (the
    group's committed offsets would otherwise start a later job where an earlier one ended)."""
    options = {
        "t.type": "kafka_source", "t.topic.name": topic, "t.bootstrap.servers": brokers,
        "t.stop.at.end": "true", "t.group.id": f"g-{uuid.uuid4().hex[:8]}", "o.type": "python",
        "processor": "v2:2", **extra,
    }  # fmt: skip
    return ", ".join(f"'{k}' = '{v}'" if "." in k else f"{k} = '{v}'" for k, v in options.items())


def _rows(table: pa.Table) -> list[tuple]:
    return sorted(tuple(r.values()) for r in table.to_pylist())


def _batch(records: list[dict], sql: str) -> list[tuple]:
    t = pa.Table.from_pylist(records)  # noqa: F841 - read by the batch SQL
    return sorted(duckdb.sql(sql).fetchall())


def _routing(engine, statement: str) -> str:
    text = engine.execute(f"EXPLAIN ANALYZE {statement}")
    return re.search(r"^  routing: +(.*)$", text, re.M).group(1)


# (strategy, topic, partition_key, what the routing line says)
STRATEGIES = [
    (None, "spread", None, "sticky (a Kafka source's default)"),
    ("hash", "spread", None, "by hash of the GROUP BY key (symbol)"),
    ("smart", "keyed", "symbol", "sticky, as the source is partitioned by symbol"),
    ("smart", "spread", None, "by hash of the GROUP BY key (symbol)"),
    ("round_robin", "spread", None, "whole micro-batches round-robin"),
]


STRATEGY_IDS = ["sticky-default", "hash", "smart-keyed", "smart-spread", "round_robin"]
# Every strategy with every query in the long profile; the fast one runs the default with each
# query and the other strategies with the tumbling aggregate (the most the routing can break).
CASES = [
    pytest.param(query, *strategy, id=f"{sid}-{query}")
    for sid, strategy in zip(STRATEGY_IDS, STRATEGIES)
    for query in QUERIES
    if LONG or sid == "sticky-default" or query == "tumbling"
]


def _run(engine, statement: str) -> tuple[list[tuple], str, set]:
    """Run ``statement`` to its end: its rows, EXPLAIN ANALYZE's routing line, and the readers of
    its workers' partitions (``kafka`` where a worker consumed them itself)."""
    job = engine.execute(statement)
    job.wait(30)
    got = _rows(engine.pull("o"))
    routing = _routing(engine, statement)
    return got, routing, {p["reader"] for p in job.metrics()["partitions"]}


@pytest.mark.parametrize(("query", "strategy", "topic", "key", "says"), CASES)
def test_every_strategy_equals_batch_sql(kafka_brokers, topics, query, strategy, topic, key, says):  # noqa: F811
    stream, batch = QUERIES[query]
    extra = dict(LATENESS)
    if strategy:
        extra["partitioning_strategy"] = strategy
    if key:
        extra["t.partition_key"] = key
    statement = f"CREATE STREAM o AS {stream} WITH ({_with(kafka_brokers, topics[topic], **extra)})"
    with velosql.connect() as engine:
        got, routing, readers = _run(engine, statement)
    assert got == _batch(topics["records"], batch)
    if query != "projection":  # a projection has no key: hash and smart read as sticky does
        assert says in routing, routing
    # Where the workers consume the partitions themselves, EXPLAIN says so and no reader is the job's.
    direct = "each worker consumes its own Kafka partitions (4 partitions over 2 workers" in routing
    assert direct == (strategy != "round_robin"), routing
    assert readers == ({"kafka"} if direct else {None})


def test_under_sticky_no_record_passes_through_the_job_process(kafka_brokers, monkeypatch):  # noqa: F811
    """The job's own KafkaSource only opens the topic (its schema, its partitions): reading it
    here fails the test. Each worker counts the records of its partitions (p mod 2), a bad
    message is a dead letter naming topic/partition@offset, and the offsets read are committed
    to the group at the end."""
    from confluent_kafka import Consumer

    from velosql.connectors.kafka import KafkaSource

    topic = _topic(kafka_brokers)
    records = _trades(2000)
    messages = [(i % PARTITIONS, json.dumps(r).encode()) for i, r in enumerate(records)]
    messages.insert(7, (3, b"not json {"))  # partition 3, offset 1
    _produce(kafka_brokers, topic, messages)

    def read(self):
        raise AssertionError("the job's process read the topic")

    monkeypatch.setattr(KafkaSource, "read", read)
    group = f"g-{uuid.uuid4().hex[:8]}"
    statement = (
        "CREATE STREAM o AS SELECT symbol, count(*) AS n, sum(qty) AS volume FROM t GROUP BY symbol "
        f"EMIT FINAL WITH ({_with(kafka_brokers, topic, **{'t.group.id': group})})"
    )
    with velosql.connect() as engine:
        job = engine.execute(statement)
        job.wait(30)
        got = _rows(engine.pull("o"))
        dead = engine.sql("SELECT location, error FROM o__dlq").fetchall()
        routing = _routing(engine, statement)
        parts = job.metrics()["partitions"]
    assert got == _batch(records, "SELECT symbol, count(*), sum(qty) FROM t GROUP BY symbol")
    assert "sticky (a Kafka source's default): each worker consumes its own Kafka partitions" in routing
    per_partition = [sum(1 for p, _ in messages if p == q) for q in range(PARTITIONS)]
    assert [(p["reader"], p["records_in"]) for p in parts] == [
        ("kafka", per_partition[0] + per_partition[2]),
        ("kafka", per_partition[1] + per_partition[3] - 1),  # less the dead letter
    ]
    assert len(dead) == 1 and dead[0][0] == f"{topic}/3@1" and "as JSON" in dead[0][1]
    consumer = Consumer({"bootstrap.servers": kafka_brokers, "group.id": group})
    try:
        from confluent_kafka import TopicPartition

        committed = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], 10)
    finally:
        consumer.close()
    assert [tp.offset for tp in committed] == per_partition


def test_the_watermark_waits_for_every_partition_from_the_start(kafka_brokers):  # noqa: F811
    """Partition 3 holds the earliest minutes and partitions 0-2 later ones, each in time order:
    with one second of lateness no row is late only if the watermark waits for partition 3
    before its worker has delivered anything."""
    topic = _topic(kafka_brokers)
    start = dt.datetime(2024, 1, 1)
    rows = [
        (
            p,
            {
                "symbol": f"S{i % 3}",
                "qty": i % 5,
                "ts": str(start + dt.timedelta(minutes=10 * (p != 3), seconds=i)),
            },
        )
        for p in range(PARTITIONS)
        for i in range(300)
    ]
    _produce(kafka_brokers, topic, [(p, json.dumps(r).encode()) for p, r in rows])
    source = _with(kafka_brokers, topic, **{"watermark.max_out_of_orderness": "1s"})
    with velosql.connect() as engine:
        engine.execute(
            "CREATE STREAM o AS SELECT symbol, count(*) AS n, sum(qty) AS q, _window_start FROM t GROUP BY symbol "
            f"WINDOW TUMBLING(ts, INTERVAL '1' MINUTE) EMIT FINAL WITH ({source})"
        ).wait(30)
        got = _rows(engine.pull("o"))
        late = engine.sql("SELECT count(*) FROM o__late").fetchall()[0][0]
    batch = "SELECT symbol, count(*), sum(qty), time_bucket(INTERVAL '1 minute', ts::TIMESTAMP) FROM t GROUP BY ALL"
    assert late == 0
    assert got == _batch([r for _, r in rows], batch)


def test_an_unbounded_topic_is_consumed_until_the_job_is_stopped(kafka_brokers):  # noqa: F811
    """Without ``stop.at.end`` the workers keep polling: messages produced after the start are
    read; ``stop()`` ends the job cleanly (every group emitted, the workers and their consumers
    gone)."""
    topic = _topic(kafka_brokers)
    records = _trades(1200)
    first, second = records[:600], records[600:]
    _produce(kafka_brokers, topic, [(i % PARTITIONS, json.dumps(r).encode()) for i, r in enumerate(first)])
    source = _with(kafka_brokers, topic, **{"t.stop.at.end": "false"})
    with velosql.connect() as engine:
        job = engine.execute(
            f"CREATE STREAM o AS SELECT symbol, count(*) AS n, sum(qty) AS q FROM t GROUP BY symbol EMIT FINAL WITH ({source})"
        )
        wait_for(lambda: job.metrics()["records_in"] == len(first), "the first messages")
        _produce(
            kafka_brokers, topic, [(i % PARTITIONS, json.dumps(r).encode()) for i, r in enumerate(second)]
        )
        wait_for(lambda: job.metrics()["records_in"] == len(records), "the messages produced later")
        pids = [p["pid"] for p in job.metrics()["partitions"]]
        assert {p["reader"] for p in job.metrics()["partitions"]} == {"kafka"}
        stopped = time.monotonic()
        job.stop()
        took = time.monotonic() - stopped
        got = _rows(engine.pull("o"))
        status = job.metrics()["status"]
    assert got == _batch(records, "SELECT symbol, count(*), sum(qty) FROM t GROUP BY symbol")
    assert status in ("Stopped", "Finished"), status
    assert took < 5
    assert not any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids
    )


def test_with_a_state_location_the_job_reads_the_topic_and_explain_says_why(kafka_brokers, topics, tmp_path):  # noqa: F811
    """Checkpoints hold the Kafka positions, so the job's process reads the topic and routes
    it (no direct reads); EXPLAIN and EXPLAIN ANALYZE say so; the result is the batch result."""
    stream, batch = QUERIES["group_by"]
    statement = (
        f"CREATE STREAM o AS {stream} WITH "
        f"({_with(kafka_brokers, topics['spread'], **{'checkpoint.dir': str(tmp_path)})})"
    )
    with velosql.connect() as engine:
        planned = re.search(r"^  routing: +(.*)$", engine.explain(statement), re.M).group(1)
        got, routing, readers = _run(engine, statement)
    assert got == _batch(topics["records"], batch)
    for text in (planned, routing):
        assert "not read by the workers themselves: the job has a state location" in text, text
        assert "consumes its own" not in text, text
    assert readers == {None}
