"""Several servers sharing a topic through Kafka's consumer group (``'<src>.assignment' = 'group'``).

Group joins are slow on any Kafka: a member's join waits for the group's rebalance, and each member
joining or leaving makes another (about 3 s each here, with the 6 s session timeout velosql sets
for group members; ~23 s with librdkafka's defaults). So these tests are few, and each does
several things.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid

import duckdb
import pyarrow as pa
import pytest
from kafka_broker import kafka_brokers  # noqa: F401 - the session fixture
from kafka_wire import Status, read_log
from test_checkpoints import until
from test_kafka import PARTITIONS, START, _produce, _topic
from test_kafka_exactly_once import AGGREGATE, AGGREGATE_BATCH
from test_serve import Serve

import velosql
from velosql.errors import ConfigError

SYMBOLS = 7


def _keyed(first: int, last: int) -> list[tuple[int, bytes]]:
    """Trades ``first`` … ``last - 1`` (one a second), each on the partition of its symbol (the
    topic is keyed by symbol)."""
    out = []
    for i in range(first, last):
        s = i % SYMBOLS
        record = {"symbol": f"S{s}", "qty": i % 13, "ts": str(START + dt.timedelta(seconds=i))}
        out.append((s % PARTITIONS, json.dumps(record).encode()))
    return out


def _committed(brokers: str, topic: str, live: bool = False) -> list[tuple]:
    """The committed messages of ``topic``; ``live``: while it is being written."""
    rows = []
    for p in range(PARTITIONS):
        for rec in read_log(brokers, topic, p, live=live):
            if rec.status is Status.COMMITTED:
                v = json.loads(rec.record.value)
                rows.append((v["symbol"], v["w"], v["n"], v["volume"]))
    return sorted(rows)


def test_two_servers_share_a_topic_and_its_state_when_one_stops_and_comes_back(kafka_brokers, tmp_path):  # noqa: F811
    """Two ``velosql serve`` processes run the same keyed aggregate in one group, with one state
    location. One is stopped (SIGTERM) mid-stream: its tasks checkpoint their partitions' state and
    the other server restores it and reads on. It is started again later and takes partitions back
    the same way. The committed Kafka output of both is the batch answer, each window once."""
    topic, out = _topic(kafka_brokers), _topic(kafka_brokers)
    group = f"g-{uuid.uuid4().hex[:8]}"
    (tmp_path / "app.sql").write_text(
        f"CREATE STREAM o AS {AGGREGATE} WITH ('t.type' = 'kafka_source', 't.topic.name' = '{topic}', "
        f"'t.bootstrap.servers' = '{kafka_brokers}', 't.group.id' = '{group}', 't.assignment' = 'group', "
        "'t.partition_key' = 'symbol', 't.schema' = 'symbol VARCHAR, qty BIGINT, ts TIMESTAMP', "
        f"'t.batch_size' = 200, 'checkpoint.interval' = '100ms', 'o.type' = 'kafka_sink', "
        f"'o.topic.name' = '{out}', 'o.bootstrap.servers' = '{kafka_brokers}');\n"
    )
    args = ("app.sql", "--state", "state", "--http", "0")

    def records(server: Serve) -> int:
        return server.jobs_by_name()["o"]["records_in"]

    def holding(server: Serve) -> int:
        """How many partitions the group gave the server (its tasks)."""
        return server.jobs_by_name()["o"]["partitions"] or 0

    a, b = Serve(tmp_path, *args), Serve(tmp_path, *args)
    try:
        until(lambda: holding(a) + holding(b) == PARTITIONS and holding(a) and holding(b), 60)
        n1, n2, n3 = 3000, 6000, 9000
        _produce(kafka_brokers, topic, _keyed(0, n1))
        until(lambda: records(a) + records(b) >= n1, 60)
        assert records(a) and records(b)  # the group gave each server partitions
        code, err = b.stop()
        assert code == 0, err
        _produce(kafka_brokers, topic, _keyed(n1, n2))
        # a reads its partitions and b's (from b's checkpoints: not from their start again)
        until(lambda: records(a) >= n2 - n1, 60)
        b = Serve(tmp_path, *args)
        until(lambda: holding(a) + holding(b) == PARTITIONS and holding(a) and holding(b), 60)
        _produce(kafka_brokers, topic, _keyed(n2, n3))
        # A last trade per partition, an hour on, closes every window before it.
        late = START + dt.timedelta(seconds=n3 + 3600)
        _produce(
            kafka_brokers,
            topic,
            [
                (s, json.dumps({"symbol": f"S{s}", "qty": 0, "ts": str(late)}).encode())
                for s in range(PARTITIONS)
            ],
        )
        records_ = [json.loads(v) for _, v in _keyed(0, n3)]
        t = pa.Table.from_pylist(records_)  # noqa: F841 - read by the batch SQL
        want = sorted(duckdb.sql(AGGREGATE_BATCH).fetchall())
        until(lambda: len(_committed(kafka_brokers, out, live=True)) >= len(want), 90)
        assert records(b)  # it took partitions back
        for server in (a, b):
            code, err = server.stop()
            assert code == 0, err
    finally:
        a.kill()
        b.kill()
    assert _committed(kafka_brokers, out) == want


@pytest.mark.parametrize(
    ("query", "extra", "state", "message"),
    [
        (AGGREGATE, "", True, "Key the topic by the GROUP BY"),
        (AGGREGATE, ", 't.partition_key' = 'symbol'", False, "give every server the same --state DIR"),
        (
            "SELECT symbol, qty FROM t",
            ", 'o.type' = 'file_sink', 'o.path' = 'o.csv'",
            True,
            "cannot share the file of sink 'o'",
        ),
    ],
    ids=["unkeyed-aggregate", "no-state", "file-sink"],
)
def test_a_statement_a_group_cannot_share_exactly_is_refused_saying_why(
    kafka_brokers,  # noqa: F811
    tmp_path,
    query,
    extra,
    state,
    message,
):
    sql = (
        f"CREATE STREAM o AS {query} WITH ('t.type' = 'kafka_source', 't.topic.name' = 'x', "
        f"'t.bootstrap.servers' = '{kafka_brokers}', 't.assignment' = 'group'{extra})"
    )
    with velosql.connect(state=str(tmp_path) if state else None) as engine:
        with pytest.raises(ConfigError, match=re.escape(message)):
            engine.execute(sql)


def test_a_group_member_lists_its_partitions_in_the_system_tables(kafka_brokers, tmp_path):  # noqa: F811
    """A lone member gets every partition: ``velosql_jobs`` counts its tasks, ``velosql_partitions``
    lists them, and ``velosql_open_windows`` answers (the tasks hold the state)."""
    topic = _topic(kafka_brokers)
    with velosql.connect(state=str(tmp_path)) as engine:
        engine.execute(
            f"CREATE STREAM o AS {AGGREGATE} WITH ('t.type' = 'kafka_source', 't.topic.name' = '{topic}', "
            f"'t.bootstrap.servers' = '{kafka_brokers}', 't.group.id' = 'g-{topic}', 't.assignment' = 'group', "
            "'t.partition_key' = 'symbol', 't.schema' = 'symbol VARCHAR, qty BIGINT, ts TIMESTAMP')"
        )
        until(lambda: engine.sql("SELECT partitions FROM velosql_jobs").fetchall() == [(PARTITIONS,)], 60)
        parts = engine.sql("SELECT partition, reader FROM velosql_partitions ORDER BY 1").fetchall()
        assert parts == [(p, "group task") for p in range(PARTITIONS)]
        assert engine.sql("SELECT count(*) FROM velosql_open_windows").fetchall() == [(0,)]
