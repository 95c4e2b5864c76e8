"""kafka_sink, and Kafka end to end, against a real broker (Tansu, or ``$VELOSQL_KAFKA_BROKERS``).

JSON trades are produced to a 4-partition topic; statements read it (to its end offsets) and write
a tumbling aggregate and a projection to Kafka topics and to DuckDB tables. Every output is compared
with DuckDB batch SQL over the messages produced.
"""

from __future__ import annotations

import json
import uuid

import duckdb
import pyarrow as pa
import pytest
from kafka_broker import kafka_brokers  # noqa: F401 - the session fixture
from test_checkpoints import until
from test_kafka import PARTITIONS, _produce, _topic, _trades

import velosql

AGGREGATE = (
    "SELECT symbol, count(*) AS n, sum(qty) AS volume, round(avg(price), 6) AS avg_price, "
    "_window_start AS w FROM t GROUP BY symbol WINDOW TUMBLING(ts, INTERVAL '1' MINUTE) EMIT FINAL"
)
AGGREGATE_BATCH = (
    "SELECT symbol, count(*), sum(qty), round(avg(price), 6), "
    "time_bucket(INTERVAL '1 minute', ts::TIMESTAMP) AS w FROM t GROUP BY symbol, w"
)
PROJECTION = "SELECT symbol, price, qty, ts FROM t WHERE qty > 6"
PROJECTION_BATCH = "SELECT symbol, price, qty, ts FROM t WHERE qty > 6"


def consume(brokers: str, topic: str) -> list[tuple[str | None, dict]]:
    """Every message of ``topic`` as ``(key, value)``, reading each partition to its end."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"read-{uuid.uuid4().hex[:8]}",
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    try:
        parts = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        ended, out = set(), []
        while len(ended) < len(parts):
            m = consumer.poll(10)
            assert m is not None, f"no message nor end of partition from {topic} within 10 s"
            if m.error():
                ended.add(m.partition())
                continue
            key = None if m.key() is None else m.key().decode()
            out.append((key, json.loads(m.value())))
        return out
    finally:
        consumer.close()


def _with(brokers: str, topic: str, sink: str, sink_options: dict, **job: str) -> str:
    options = {
        "t.type": "kafka_source", "t.topic.name": topic, "t.bootstrap.servers": brokers,
        "t.stop.at.end": "true", "t.group.id": f"g-{uuid.uuid4().hex[:8]}",
        "watermark.max_out_of_orderness": "1h", **{f"{sink}.{k}": v for k, v in sink_options.items()}, **job,
    }  # fmt: skip
    return ", ".join(f"'{k}' = '{v}'" for k, v in options.items())


def _kafka_sink(brokers: str) -> dict:
    return {"type": "kafka_sink", "topic.name": _topic(brokers), "bootstrap.servers": brokers}


def _values(messages: list, columns: list[str]) -> list[tuple]:
    return sorted(tuple(v[c] for c in columns) for _, v in messages)


def _texts(rows: list[tuple]) -> list[tuple]:
    """Sorted rows, timestamps as JSON has them."""
    return sorted(tuple(str(x) if hasattr(x, "isoformat") else x for x in row) for row in rows)


def _batch(sql: str, records: list[dict]) -> list[tuple]:
    t = pa.Table.from_pylist(records)  # noqa: F841 - read by the batch SQL
    return _texts(duckdb.sql(sql).fetchall())


@pytest.mark.parametrize("processor", ["v1", "v2:2"])
def test_trades_from_a_topic_to_kafka_and_tables_equal_batch_sql(kafka_brokers, processor):  # noqa: F811
    """Both statements write to Kafka and to a DuckDB table; the aggregate's messages are keyed
    by its GROUP BY column."""
    topic = _topic(kafka_brokers)
    records = _trades(4000)
    _produce(kafka_brokers, topic, [(i % PARTITIONS, json.dumps(r).encode()) for i, r in enumerate(records)])
    agg_kafka, proj_kafka = _kafka_sink(kafka_brokers), _kafka_sink(kafka_brokers)
    table = {"type": "duckdb_table"}
    script = ";\n".join(
        f"CREATE STREAM {name} AS {query} WITH ({_with(kafka_brokers, topic, name, sink, processor=processor)})"
        for name, query, sink in [
            ("agg_k", AGGREGATE, agg_kafka),
            ("agg_t", AGGREGATE, table),
            ("proj_k", PROJECTION, proj_kafka),
            ("proj_t", PROJECTION, table),
        ]
    )
    with velosql.connect() as engine:
        engine.execute(script)
        for job in engine.jobs():
            job.wait(60)
        agg_t = _texts(engine.sql("SELECT * FROM agg_t").fetchall())
        proj_t = _texts(engine.sql("SELECT * FROM proj_t").fetchall())
    want_agg, want_proj = _batch(AGGREGATE_BATCH, records), _batch(PROJECTION_BATCH, records)
    agg = consume(kafka_brokers, agg_kafka["topic.name"])
    assert _values(agg, ["symbol", "n", "volume", "avg_price", "w"]) == want_agg
    assert all(key == value["symbol"] for key, value in agg)
    proj = consume(kafka_brokers, proj_kafka["topic.name"])
    assert _values(proj, ["symbol", "price", "qty", "ts"]) == want_proj
    assert all(key is None for key, _ in proj)
    assert agg_t == want_agg and proj_t == want_proj
    assert len(want_agg) > 100 and len(want_proj) > 1000


@pytest.mark.parametrize("processor", ["v1", "v2:2"])
def test_dead_letters_also_go_to_the_dlq_topic_with_their_offsets(kafka_brokers, processor):  # noqa: F811
    topic, dlq = _topic(kafka_brokers), _topic(kafka_brokers)
    records = _trades(300)
    messages = [(i % PARTITIONS, json.dumps(r).encode()) for i, r in enumerate(records)]
    bad = [(2, b"{oops"), (1, b'{"symbol": "S1", "price": "cheap", "qty": 1, "ts": "2024-01-01"}')]
    _produce(kafka_brokers, topic, messages + bad)
    with velosql.connect() as engine:
        engine.execute(
            f"CREATE STREAM o AS {PROJECTION} WITH ({_with(kafka_brokers, topic, 'o', {}, processor=processor)}, "
            f"'dlq.topic' = '{dlq}')"
        ).wait(60)
        table = sorted(engine.sql("SELECT location, error FROM o__dlq").fetchall())
    sent = sorted(
        (v["location"], v["error"], v["topic"], v["partition"], v["offset"])
        for _, v in consume(kafka_brokers, dlq)
    )
    places = sorted((f"{topic}/{p}@{len([m for m in messages if m[0] == p])}", p) for p, _ in bad)
    assert [(loc, err) for loc, err, *_ in sent] == table
    assert [(loc, topic, p, int(loc.rsplit("@", 1)[1])) for loc, p in places] == [
        (s[0], s[2], s[3], s[4]) for s in sent
    ]


def test_until_idle_ends_an_unbounded_job_and_the_next_run_reads_on_from_the_committed_offsets(
    kafka_brokers,  # noqa: F811
    tmp_path,
):
    """Without a state location: ``velosql run --until-idle`` stops the job once the topic is
    idle; the stop flushes the aggregate and then commits the offsets (at-least-once), so the next
    run reads only what was produced since."""
    import subprocess
    import sys

    topic = _topic(kafka_brokers)
    first, second = _trades(700), _trades(1200)[700:]
    (tmp_path / "app.sql").write_text(
        f"CREATE STREAM o AS SELECT symbol, count(*) AS n FROM t GROUP BY symbol EMIT FINAL WITH ("
        f"'t.type' = 'kafka_source', 't.topic.name' = '{topic}', 't.bootstrap.servers' = '{kafka_brokers}', "
        "'o.type' = 'file_sink', 'o.path' = 'o.csv');\n"
    )

    def run(records: list[dict]) -> list[tuple]:
        _produce(
            kafka_brokers, topic, [(i % PARTITIONS, json.dumps(r).encode()) for i, r in enumerate(records)]
        )
        proc = subprocess.run(
            [sys.executable, "-m", "velosql", "run", "--until-idle", "1", "app.sql"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return sorted(duckdb.sql(f"SELECT symbol, n FROM read_csv('{tmp_path / 'o.csv'}')").fetchall())

    for records in (first, second):
        t = pa.Table.from_pylist(records)  # noqa: F841 - read by the batch SQL
        want = sorted(duckdb.sql("SELECT symbol, count(*) FROM t GROUP BY symbol").fetchall())
        assert run(records) == want


@pytest.mark.parametrize("processor", ["v1", "v2:2"])
def test_an_idle_partition_stops_holding_the_watermark_after_the_idle_timeout(kafka_brokers, processor):  # noqa: F811
    """The watermark is per Kafka partition, and every partition holds it from the start: with
    partition 3 empty, no window can close until ``'watermark.idle_timeout'`` lets it go; then the
    windows behind the other partitions' watermark close while the job runs on."""
    topic = _topic(kafka_brokers)
    records = _trades(900)  # 15 minutes, on partitions 0-2 only
    _produce(kafka_brokers, topic, [(i % 3, json.dumps(r).encode()) for i, r in enumerate(records)])
    query = "SELECT symbol, count(*) AS n, _window_start AS w FROM t GROUP BY symbol WINDOW TUMBLING(ts, INTERVAL '1' MINUTE)"
    with velosql.connect() as engine:
        job = engine.execute(
            f"CREATE STREAM o AS {query} WITH ('t.type' = 'kafka_source', 't.topic.name' = '{topic}', "
            f"'t.bootstrap.servers' = '{kafka_brokers}', 'watermark.idle_timeout' = '1s', processor = '{processor}')"
        )
        # The last minute stays open (the watermark is its newest event time): 14 minutes close.
        until(lambda: engine.sql("SELECT count(*) FROM o").fetchall()[0][0] >= 14 * 7 or job.done, 30)
        assert not job.done
        got = _texts(engine.sql("SELECT symbol, n, w FROM o").fetchall())
        job.stop()
    t = pa.Table.from_pylist(records)  # noqa: F841 - read by the batch SQL
    want = _texts(
        duckdb.sql(
            "SELECT symbol, count(*), time_bucket(INTERVAL '1 minute', ts::TIMESTAMP) AS w FROM t "
            "WHERE ts::TIMESTAMP < TIMESTAMP '2024-01-01 00:14:00' GROUP BY ALL"
        ).fetchall()
    )
    assert got == want
