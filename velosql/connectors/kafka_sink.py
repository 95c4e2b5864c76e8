"""Writing a Kafka topic: ``'<sink>.type' = 'kafka_sink'`` (confluent-kafka).

Each result row is one message. Its value is the row as a JSON object (DuckDB's ``to_json``, a
micro-batch at a time); its key is the row's key columns — the statement's PRIMARY KEY, else its
GROUP BY columns — as text, several joined with ``|`` (Velostream's compound key); without key
columns the message has no key. An EMIT CHANGES result is thus a changelog of upserts per key.

Delivery. Without a state location the producer is idempotent, and the job commits its Kafka
sources' offsets only once the rows that depend on them are flushed here: at-least-once. With a
state location the producer is transactional, one transaction per checkpoint epoch: the epoch's
rows, the Kafka sources' offsets (``send_offsets_to_transaction``) and an epoch marker commit
together. That commit is the point of no return of the checkpoint (as the database commit is for a
``duckdb_table``): a job killed after it and before its checkpoint became current rolls forward to
that checkpoint on restart (:func:`committed_epoch`); killed before it, the restart's
``init_transactions`` aborts what the epoch had written. Readers see exactly-once output with
``isolation.level = read_committed``.

The epoch marker is an offset committed in the transaction for the group
``velosql-epoch-<job>-<sink>`` on the sink topic's partition 0, whose value is the epoch: it needs
no topic of its own, and any Kafka keeps it (offset metadata would be tidier, but Tansu drops it).
"""

from __future__ import annotations

import os

import duckdb
import pyarrow as pa

from ..errors import DataError, OptionError
from .base import Sink
from .duckdb_table import quote

BROKERS_ENV = "VELOSQL_KAFKA_BROKERS"
TIMEOUT = 30.0  # seconds for a transaction call or a flush before the sink fails


def brokers_of(name: str, options: dict) -> str:
    brokers = options.get("bootstrap.servers") or os.environ.get(BROKERS_ENV)
    if not brokers:
        raise OptionError(
            f"sink {name!r}: no Kafka brokers: give '{name}.bootstrap.servers' = 'host:port' or set "
            f"{BROKERS_ENV}"
        )
    return brokers


def passthrough(options: dict) -> dict:
    """The ``'<name>.kafka.<librdkafka key>'`` options, for the client's configuration."""
    return {
        k[len("kafka.") :]: str(v) for k, v in options.items() if k.startswith("kafka.") and v is not None
    }


def marker_offset(lineage: int, epoch: int) -> int:
    """The marker of ``epoch`` of the job's run of ``lineage`` (a number its first checkpoint
    chose): a run started afresh does not take an earlier run's marker for its own."""
    return (lineage << 32) | epoch


def marker_group(job: str, sink: str) -> str:
    return f"velosql-epoch-{job}-{sink}"


def committed_epoch(job: str, sink: str, options: dict) -> int | None:
    """The last epoch whose transaction the sink committed (its marker), or None."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": brokers_of(sink, options),
            "group.id": marker_group(job, sink),
            "enable.auto.commit": False,
        }
    )
    try:
        (tp,) = consumer.committed([TopicPartition(options["topic.name"], 0)], TIMEOUT)
    except KafkaException as exc:
        raise DataError(f"sink {sink!r}: reading its last committed epoch: {exc}") from None
    finally:
        consumer.close()
    return tp.offset if tp.offset >= 0 else None


class KafkaSink(Sink):
    """Produces result rows to one topic; see the module for keys, values and transactions."""

    def __init__(self, name: str, options: dict, key: tuple[str, ...], job: str) -> None:
        self.name, self.job = name, job
        self.topic = options.get("topic.name")
        if not self.topic:
            raise OptionError(f"sink {name!r} is a kafka_sink but has no '{name}.topic.name'")
        self.options = options
        self.brokers = brokers_of(name, options)
        fmt = options.get("format") or "json"
        if fmt != "json":
            raise OptionError(f"sink {name!r}: '{name}.format' = {fmt!r}: a kafka_sink writes json")
        self.key = tuple(key)
        self.headers = _headers(name, options.get("headers"))
        self.epochs = False  # set by the job: transactional, one transaction per checkpoint epoch
        self.lineage = 0  # set by the job (marker_offset)
        self.resume = False
        self.offsets: list = []  # set by the job before precommit: [(kafka source, {partition: offset})]
        self._producer = None
        self._marker = None  # a consumer of the marker group, for its group metadata
        self._errors: list[str] = []
        self._con = None
        self._select = ""
        self._open_txn = False

    def open(self, schema: pa.Schema) -> None:
        from confluent_kafka import Consumer, KafkaException, Producer

        key = [k for k in self.key if k in schema.names]
        self.key = tuple(key) if len(key) == len(self.key) else ()  # a key not in the output: none
        keys = ", ".join(f"b.{quote(k)}::VARCHAR" for k in self.key)
        key_sql = f"concat_ws('|', {keys})" if len(self.key) > 1 else (keys or "NULL::VARCHAR")
        self._select = f"SELECT to_json(b) AS v, {key_sql} AS k FROM __out AS b"
        self._con = duckdb.connect()
        config = {
            "bootstrap.servers": self.brokers,
            "linger.ms": 20,
            "enable.idempotence": True,
            "queue.buffering.max.messages": 1_000_000,
            # Delivery reports only for failures: no Python call per message delivered.
            "delivery.report.only.error": True,
            "on_delivery": self._delivered,
            **passthrough(self.options),
        }
        if self.epochs:
            config["transactional.id"] = f"velosql-{self.job}-{self.name}"
        self._producer = Producer(config, error_cb=self._error)
        if not self.epochs:
            return
        try:
            # Fences an earlier instance of this job (one killed mid-epoch) and aborts what it had
            # written since its last commit.
            self._producer.init_transactions(TIMEOUT)
        except KafkaException as exc:
            raise DataError(
                f"sink {self.name!r}: starting Kafka transactions at {self.brokers}: {exc}"
            ) from None
        self._marker = Consumer(
            {
                "bootstrap.servers": self.brokers,
                "group.id": marker_group(self.job, self.name),
                "enable.auto.commit": False,
            }
        )
        self._begin()

    def _error(self, err) -> None:
        if err.fatal():
            self._errors.append(str(err))

    def _delivered(self, err, msg) -> None:
        if err is not None:
            self._errors.append(f"{self.topic}/{msg.partition()}: {err}")

    def _begin(self) -> None:
        self._producer.begin_transaction()
        self._open_txn = True

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._con.register("__out", table)
        try:
            out = self._con.sql(self._select).to_arrow_table()
        finally:
            self._con.unregister("__out")
        produce, poll, topic = self._producer.produce, self._producer.poll, self.topic
        extra = {"headers": self.headers} if self.headers else {}
        for value, key in zip(out["v"].to_pylist(), out["k"].to_pylist()):
            while True:
                try:
                    produce(topic, value, key, **extra)
                    break
                except BufferError:  # the producer's queue is full: let it send (backpressure)
                    poll(0.05)
        poll(0)
        self._check()

    def _check(self) -> None:
        if self._errors:
            errors, self._errors = self._errors, []
            raise DataError(f"sink {self.name!r}: writing to topic {self.topic!r}: " + "; ".join(errors[:3]))

    def flush(self) -> None:
        if self._producer is None:
            return
        left = self._producer.flush(TIMEOUT)
        self._check()
        if left:
            raise DataError(
                f"sink {self.name!r}: {left} messages not delivered to topic {self.topic!r} at "
                f"{self.brokers} within {TIMEOUT:.0f} s"
            )

    # ---- checkpoints (two phases with the job's checkpoint; see velosql/runtime/checkpoint.py) ----

    def precommit(self, epoch: int) -> dict:
        """Everything of the epoch is at the broker, in its transaction, with the Kafka sources'
        offsets and the epoch marker."""
        from confluent_kafka import TopicPartition

        self.flush()
        for source, positions in self.offsets:
            if positions:
                self._producer.send_offsets_to_transaction(
                    [TopicPartition(source.topic, p, o) for p, o in sorted(positions.items())],
                    source.consumer_group_metadata(),
                    TIMEOUT,
                )
        self._producer.send_offsets_to_transaction(
            [TopicPartition(self.topic, 0, marker_offset(self.lineage, epoch))],
            self._marker.consumer_group_metadata(),
            TIMEOUT,
        )
        return {"transactional.id": f"velosql-{self.job}-{self.name}"}

    def commit_point(self, epoch: int) -> None:
        """Commit the epoch's transaction: from here the epoch is done (a restart rolls forward)."""
        self._producer.commit_transaction(TIMEOUT)
        self._open_txn = False

    def commit(self, epoch: int) -> None:
        self._begin()

    def recover(self, token) -> None:
        """Nothing to redo: an epoch either committed in Kafka (the job rolled forward to it) or
        is aborted by :meth:`open`'s ``init_transactions``."""

    def close(self) -> None:
        if self._producer is None:
            return
        try:
            if self._open_txn:  # what no checkpoint took (nothing, after the final checkpoint)
                self._producer.abort_transaction(TIMEOUT)
            else:
                self.flush()
        finally:
            self._release()

    def discard(self) -> None:
        if self._producer is not None:
            try:
                if self._open_txn:
                    self._producer.abort_transaction(TIMEOUT)
            finally:
                self._release()

    def _release(self) -> None:
        self._open_txn = False
        self._producer = None
        if self._marker is not None:
            self._marker.close()
            self._marker = None
        if self._con is not None:
            self._con.close()
            self._con = None

    def describe(self) -> str:
        how = "transactional, exactly-once" if self.epochs else "at-least-once"
        key = "|".join(self.key) if self.key else "no key"
        return f"kafka_sink topic {self.topic!r} at {self.brokers} (json, key {key}, {how})"


def _headers(name: str, text: str | None) -> list[tuple[str, str]] | None:
    """``'<sink>.headers' = 'k=v, k2=v2'``: the same headers on every message."""
    if not text:
        return None
    out = []
    for part in str(text).split(","):
        if not part.strip():
            continue
        k, sep, v = part.partition("=")
        if not sep or not k.strip():
            raise OptionError(f"'{name}.headers' = {text!r}: expected 'name=value, …'")
        out.append((k.strip(), v.strip()))
    return out
