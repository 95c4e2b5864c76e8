"""kafka_wire against a real broker: each record's transaction status from the markers in the log.

One topic of two partitions gets, in this order: plain records, a committed transaction, a
transaction aborted by ``abort_transaction()``, one left open and then aborted by a new producer
instance's ``init_transactions()`` (the fencing), and a committed transaction with headers. Every
step is flushed before the next, so the log's order is the order below.
"""

from __future__ import annotations

import uuid

import pytest
from kafka_broker import kafka_brokers  # noqa: F401 - the session fixture
from kafka_wire import KafkaWireError, Record, Status, committed_records, read_log

C, A = Status.COMMITTED, Status.ABORTED

# (partition, key, value, headers, the status the log must give it)
PLAIN = [
    (0, b"p0", b"plain 0", [], C),
    (1, None, b"plain, no key", [("h", b"1")], C),
    (0, b"tombstone", None, [], C),
]
COMMITTED = [(0, b"c0", b"committed 0", [], C), (1, b"c1", b"committed 1", [], C)]
ABORTED = [(0, b"a0", b"aborted 0", [], A), (1, b"a1", b"aborted 1", [], A), (0, b"a2", b"aborted 2", [], A)]
FENCED = [(1, b"f0", b"fenced 0", [], A)]
WITH_HEADERS = [
    (0, b"h0", b"headers 0", [("trace", b"abc"), ("empty", b""), ("none", None)], C),
    (1, b"h1", b"headers 1", [("trace", b"def"), ("trace", b"again")], C),
]
STEPS = [PLAIN, COMMITTED, ABORTED, FENCED, WITH_HEADERS]  # FENCED is open until WITH_HEADERS
# Each marker takes an offset: after COMMITTED, ABORTED and WITH_HEADERS in both partitions, and
# the fencing's ABORT in partition 1 only (FENCED wrote nothing to partition 0).
OFFSETS = {0: [0, 1, 2, 4, 5, 7], 1: [0, 1, 3, 5, 7]}


def _topic(brokers: str, partitions: int = 2) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    name = f"w-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": brokers})
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        future.result(10)
    return name


def _send(producer, topic: str, records: list[tuple]) -> None:
    for partition, key, value, headers, _ in records:
        producer.produce(topic, value=value, key=key, partition=partition, headers=headers)
    assert producer.flush(10) == 0  # on the broker before a marker is asked for


def _produce_up_to_the_open_transaction(brokers: str, topic: str) -> dict:
    """Every step but the last, leaving FENCED's transaction open; returns the producers' config."""
    from confluent_kafka import Producer

    plain = Producer({"bootstrap.servers": brokers, "compression.type": "none"})
    _send(plain, topic, PLAIN)
    config = {"bootstrap.servers": brokers, "transactional.id": f"tx-{topic}", "compression.type": "none"}
    first = Producer(config)
    first.init_transactions(10)
    first.begin_transaction()
    _send(first, topic, COMMITTED)
    first.commit_transaction(10)
    first.begin_transaction()
    _send(first, topic, ABORTED)
    first.abort_transaction(10)
    first.begin_transaction()
    _send(first, topic, FENCED)
    return config


def _fence_and_commit(topic: str, config: dict) -> None:
    """A new instance with the same transactional.id: it aborts the open transaction, then commits."""
    from confluent_kafka import Producer

    second = Producer(config)
    second.init_transactions(10)
    second.begin_transaction()
    _send(second, topic, WITH_HEADERS)
    second.commit_transaction(10)


def _expected(partition: int) -> list[tuple]:
    return [(k, v, h, s) for step in STEPS for p, k, v, h, s in step if p == partition]


def _consume_uncommitted(brokers: str, topic: str, counts: dict[int, int]) -> dict[int, list[Record]]:
    """What confluent-kafka returns with read_uncommitted, by partition: ``counts[p]`` records of each."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": brokers, "group.id": f"g-{topic}", "isolation.level": "read_uncommitted",
         "enable.auto.commit": False}
    )  # fmt: skip
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in counts])
    got: dict[int, list[Record]] = {p: [] for p in counts}
    try:
        while (missing := sum(counts.values()) - sum(map(len, got.values()))) > 0:
            messages = consumer.consume(missing, timeout=5.0)  # returns once it has them: the wait
            assert messages, f"the consumer returned {got} of {counts} records"
            for m in messages:
                assert m.error() is None, m.error()
                headers = list(m.headers() or [])
                got[m.partition()].append(Record(m.offset(), m.timestamp()[1], m.key(), m.value(), headers))
    finally:
        consumer.close()
    return got


def test_the_log_tells_committed_aborted_and_fenced_transactions_apart(kafka_brokers):  # noqa: F811
    topic = _topic(kafka_brokers)
    config = _produce_up_to_the_open_transaction(kafka_brokers, topic)
    assert [(e.record.key, e.status) for e in read_log(kafka_brokers, topic, 1)][-2:] == [
        (b"a1", A),
        (b"f0", Status.OPEN),
    ]
    assert b"f0" not in [r.key for r in committed_records(kafka_brokers, topic, 1)]
    _fence_and_commit(topic, config)

    logs = {p: read_log(kafka_brokers, topic, p) for p in (0, 1)}
    for partition, log in logs.items():
        got = [(e.record.key, e.record.value, e.record.headers, e.status) for e in log]
        assert got == _expected(partition), f"partition {partition}"
        assert [e.record.offset for e in log] == OFFSETS[partition]
        assert [e.record.key for e in log if e.producer_id == -1] == [
            k for q, k, *_ in PLAIN if q == partition
        ]
        assert committed_records(kafka_brokers, topic, partition) == [e.record for e in log if e.status is C]
        # Fetched a batch at a time (a fetch returns at least one whole batch): the same log.
        assert read_log(kafka_brokers, topic, partition, max_bytes=1) == log

    # The consumer returns the same data records at the same offsets; the markers' offsets are gaps.
    assert _consume_uncommitted(kafka_brokers, topic, {p: len(log) for p, log in logs.items()}) == {
        p: [e.record for e in log] for p, log in logs.items()
    }


@pytest.mark.parametrize("codec", ["gzip", "lz4"])
def test_compressed_batches_are_read_if_gzip_and_refused_otherwise(kafka_brokers, codec):  # noqa: F811
    from confluent_kafka import Producer

    topic = _topic(kafka_brokers)
    producer = Producer({"bootstrap.servers": kafka_brokers, "compression.type": codec, "linger.ms": 5})
    values = [b"x" * 50 + str(i).encode() for i in range(30)]
    for i, value in enumerate(values):
        producer.produce(topic, value=value, key=str(i).encode(), partition=0)
    assert producer.flush(10) == 0
    assert read_log(kafka_brokers, topic, 1) == []  # an empty partition ends at once
    if codec == "gzip":
        got = committed_records(kafka_brokers, topic, 0)
        assert [(r.offset, r.value) for r in got] == list(enumerate(values))
    else:
        with pytest.raises(KafkaWireError, match="compressed with lz4.*compression.type = none"):
            read_log(kafka_brokers, topic, 0)
