"""Reading a Kafka topic: ``'<src>.type' = 'kafka_source'`` (confluent-kafka).

Each Kafka partition is a source partition: a batch carries ``_partition`` (the Kafka partition)
and ``_offset`` (the Kafka offset), and, before them, ``_key`` (the message key as text) and
``_timestamp`` (the message timestamp). The consumer is given every partition of the topic with
``assign()``, not ``subscribe()``: it reads from the first poll, with no consumer-group join.

Values are JSON objects, decoded a poll at a time by pyarrow's JSON reader (the values joined by
newlines) with one schema for the whole job: the declared ``'<src>.schema'``, else the one pyarrow
infers from the first messages. A message that does not decode (not JSON, wrong types, a null or
empty value) is handed to the job's dead letters as ``topic/partition@offset``; the rest go on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from ..errors import DataError, OptionError
from .base import OFFSET_COL, PARTITION_COL, PartitionEnd, Source, SourceContext, system_schema

BROKERS_ENV = "VELOSQL_KAFKA_BROKERS"
KAFKA_PASSTHROUGH = "kafka."  # '<src>.kafka.<key>' options (velosql.options.KAFKA_PASSTHROUGH)
KEY_COL = "_key"
TIMESTAMP_COL = "_timestamp"
META_FIELDS = (pa.field(KEY_COL, pa.string()), pa.field(TIMESTAMP_COL, pa.timestamp("ms")))
# How long open() waits for the first messages when it must infer the schema from them.
INFER_TIMEOUT = 10.0
MAX_POLL = 65536  # messages taken per poll (one decode)


class KafkaSource(Source):
    """Reads one topic, all its partitions. Unbounded unless ``stop.at.end``: then each partition
    is read up to the high watermark its first fetch reported, and ends there.

    The end is taken from the first fetch and not from a ListOffsets request, because Tansu (the
    test broker) answers ListOffsets ``latest`` with 1 whatever the partition holds.
    """

    def __init__(self, name: str, options: dict, declared: pa.Schema | None = None) -> None:
        self.name = name
        self.topic = options.get("topic.name")
        if not self.topic:
            raise OptionError(f"source {name!r} is a kafka_source but has no '{name}.topic.name'")
        self.brokers = options.get("bootstrap.servers") or os.environ.get(BROKERS_ENV)
        if not self.brokers:
            raise OptionError(
                f"source {name!r}: no Kafka brokers: give '{name}.bootstrap.servers' = 'host:port' "
                f"or set {BROKERS_ENV}"
            )
        fmt = options.get("format") or "json"
        if fmt != "json":
            raise OptionError(f"source {name!r}: '{name}.format' = {fmt!r}: a kafka_source reads json only")
        self.group = options.get("group.id") or f"velosql-{name}"
        self.reset = options.get("auto.offset.reset") or "earliest"
        self.stop_at_end = bool(options.get("stop.at.end"))
        self.bounded = self.stop_at_end
        self.poll = (options.get("poll_interval") or 200_000) / 1e6
        self.declared = declared
        self.passthrough = {
            k[len(KAFKA_PASSTHROUGH) :]: str(v)
            for k, v in options.items()
            if k.startswith(KAFKA_PASSTHROUGH) and v is not None
        }
        self._schema: pa.Schema | None = None
        self._consumer = None
        self._pending: list = []  # messages polled by open() to infer the schema
        self._ends: dict[int, int | None] = {}  # partition -> end offset (None: not fetched yet)
        self._done: set[int] = set()
        self._partitions: list[int] = []

    def open(self, ctx: SourceContext) -> None:
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        self.ctx = ctx
        try:
            self._consumer = Consumer(self.consumer_config())
        except KafkaException as exc:
            given = ", ".join(f"'{self.name}.kafka.{k}'" for k in sorted(self.passthrough)) or "none"
            raise OptionError(
                f"source {self.name!r}: librdkafka refuses the consumer's settings ({exc.args[0].str()}); "
                f"settings given through: {given}"
            ) from None
        try:
            topic = self._consumer.list_topics(self.topic, timeout=10).topics[self.topic]
            if topic.error is not None:
                raise KafkaException(topic.error)
        except KafkaException as exc:
            raise DataError(f"source {self.name!r}: topic {self.topic!r} at {self.brokers}: {exc}") from None
        partitions = self._partitions = sorted(topic.partitions)
        self._ends = dict.fromkeys(partitions)
        self._consumer.assign([TopicPartition(self.topic, p) for p in partitions])
        user = self.declared if self.declared is not None else self._infer()
        self._schema = system_schema([*user, *META_FIELDS])

    def consumer_config(self) -> dict:
        """The librdkafka settings of the consumer: ours, then the ``'<src>.kafka.<key>'`` ones
        given through (they win), except ``enable.partition.eof``, which the ends rely on."""
        config = {
            "bootstrap.servers": self.brokers,
            "group.id": self.group,
            "auto.offset.reset": self.reset,
            "enable.auto.commit": False,
        }
        config.update(self.passthrough)
        config["enable.partition.eof"] = True
        return config

    def _infer(self) -> pa.Schema:
        """The schema pyarrow reads from the first messages (kept for :meth:`read`)."""
        deadline = time.monotonic() + INFER_TIMEOUT
        while time.monotonic() < deadline and not self.ctx.stop.is_set():
            self._pending += self._consumer.consume(MAX_POLL, 0.2)
            values = [m.value() for m in self._pending if m.error() is None and m.value()]
            if values:
                try:
                    return pj.read_json(pa.py_buffer(_lines(values)[0])).schema
                except pa.ArrowInvalid:
                    if len(values) > 1:  # a bad one among them: infer from the first only
                        try:
                            return pj.read_json(pa.py_buffer(_lines(values[:1])[0])).schema
                        except pa.ArrowInvalid:
                            pass
            if self.stop_at_end and len(self._eofs(self._pending)) == len(self._ends):
                break
        raise DataError(
            f"kafka source {self.name!r}: cannot infer the schema of topic {self.topic!r}: no JSON "
            f"message arrived within {INFER_TIMEOUT:.0f} s; declare the columns with "
            f"'{self.name}.schema' = 'col TYPE, …'"
        )

    def seek(self, positions: dict[int, int]) -> None:
        """Start partition ``p`` at offset ``positions[p]`` (a checkpoint's positions: the next
        offset to read); the others where the group's committed offsets, else
        ``auto.offset.reset``, say. Called after :meth:`open`, before :meth:`read`: what
        :meth:`open` polled to infer the schema is dropped, and read again where it belongs."""
        from confluent_kafka import OFFSET_INVALID, TopicPartition

        self._pending = []
        self._consumer.assign(
            [TopicPartition(self.topic, p, positions.get(p, OFFSET_INVALID)) for p in self._partitions]
        )

    def commit_offsets(self, positions: dict[int, int], metadata: str | None = None) -> None:
        """Commit ``positions`` (partition -> next offset to read) to the consumer group, where
        monitoring (lag) and a job without a state location resume from. Asynchronous: a
        commit that fails is retried by the next one."""
        from confluent_kafka import TopicPartition

        if not positions or self._consumer is None:
            return
        offsets = [
            TopicPartition(self.topic, p, o, metadata=metadata or "") for p, o in sorted(positions.items())
        ]
        self._consumer.commit(offsets=offsets, asynchronous=True)

    def consumer_group_metadata(self):
        """The consumer's group metadata, for a transactional producer's
        ``send_offsets_to_transaction`` (the kafka_sink)."""
        return self._consumer.consumer_group_metadata()

    def committed(self, timeout: float = 10.0) -> dict[int, tuple[int, str]]:
        """The group's committed offset and its metadata per partition (those with one)."""
        from confluent_kafka import TopicPartition

        found = self._consumer.committed([TopicPartition(self.topic, p) for p in self._partitions], timeout)
        return {tp.partition: (tp.offset, tp.metadata or "") for tp in found if tp.offset >= 0}

    @staticmethod
    def _eofs(messages) -> set[int]:
        from confluent_kafka import KafkaError

        return {
            m.partition() for m in messages if m.error() and m.error().code() == KafkaError._PARTITION_EOF
        }

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    def read(self) -> Iterator[pa.RecordBatch | PartitionEnd | None]:
        from confluent_kafka import KafkaError, KafkaException, TopicPartition

        if self.stop_at_end and not self._ends:
            return
        while not self.ctx.stop.is_set():
            messages, self._pending = self._pending or self._consumer.consume(MAX_POLL, self.poll), []
            data, ended = [], []
            for m in messages:
                err, p = m.error(), m.partition()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if self._ends.get(p) is None:
                            self._ends[p] = m.offset()
                        ended.append(p)
                        continue
                    if err.fatal():
                        raise KafkaException(err)
                    continue  # transient: librdkafka retries by itself
                if self.stop_at_end:
                    if p in self._done:
                        continue
                    end = self._ends.get(p)
                    if end is None:
                        high = self._consumer.get_watermark_offsets(
                            TopicPartition(self.topic, p), cached=True
                        )[1]
                        end = self._ends[p] = high if high >= 0 else None
                    if end is None:
                        pass  # no watermark cached yet: the partition's EOF event ends it
                    elif m.offset() >= end:
                        ended.append(p)
                        continue
                    if end is not None and m.offset() + 1 >= end:
                        ended.append(p)
                data.append(m)
            if data:
                batch = self._decode(data)
                if batch is not None:
                    yield batch
            elif not ended:
                yield None  # idle tick
            if self.stop_at_end:
                for p in ended:
                    if p not in self._done:
                        self._done.add(p)
                        yield PartitionEnd(p)
                if len(self._done) == len(self._ends):
                    return

    def _decode(self, messages: list) -> pa.RecordBatch | None:
        """One batch of the messages that decode; the others go to the dead letters."""
        good = [m for m in messages if m.value()]
        for m in messages:
            if not m.value():
                self._reject(
                    m, "the message has a null value" if m.value() is None else "the message is empty"
                )
        user = pa.schema(
            [f for f in self._schema if f.name not in (KEY_COL, TIMESTAMP_COL, PARTITION_COL, OFFSET_COL)]
        )
        tables = self._decode_run(good, user)
        if not tables:
            return None
        kept = [m for t, run in tables for m in run]
        values = pa.concat_tables([t for t, _ in tables]).combine_chunks()
        keys = pa.array([m.key() for m in kept], pa.binary())
        try:
            keys = keys.cast(pa.string())
        except pa.ArrowInvalid:  # a key that is not UTF-8: shown with replacement characters
            keys = pa.array(
                [None if k is None else k.decode(errors="replace") for k in keys.to_pylist()], pa.string()
            )
        stamps = pa.array([m.timestamp()[1] for m in kept], pa.int64())
        stamps = pc.if_else(pc.less(stamps, 0), pa.nulls(len(kept), pa.int64()), stamps).cast(
            pa.timestamp("ms")
        )
        arrays = [
            *values.columns,
            keys,
            stamps,
            pa.array([m.partition() for m in kept], pa.int32()),
            pa.array([m.offset() for m in kept], pa.int64()),
        ]
        return pa.RecordBatch.from_arrays(
            [a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a for a in arrays], schema=self._schema
        )

    def _decode_run(self, messages: list, user: pa.Schema) -> list[tuple[pa.Table, list]]:
        """Decode ``messages`` at once; where that fails, each half again (so a bad message costs
        a few extra decodes, not one decode per message)."""
        if not messages:
            return []
        text, count = _lines([m.value() for m in messages])
        try:
            table = pj.read_json(
                pa.py_buffer(text),
                parse_options=pj.ParseOptions(explicit_schema=user, unexpected_field_behavior="ignore"),
            )
            if table.num_rows == count:
                return [(table.select(user.names).cast(user), messages)]
            error = f"expected one JSON object, read {table.num_rows}"
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            error = str(exc)
        if count == 1:
            self._reject(messages[0], f"cannot decode the message as JSON: {error}")
            return []
        half = len(messages) // 2
        return self._decode_run(messages[:half], user) + self._decode_run(messages[half:], user)

    def _reject(self, m, error: str) -> None:
        raw = m.value()
        text = None if raw is None else raw[:4096].decode(errors="replace")
        self.ctx.reject(
            f"{self.topic}/{m.partition()}@{m.offset()}", error, text, at=(m.partition(), m.offset())
        )

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def describe(self) -> str:
        how = "up to its end offsets at start" if self.stop_at_end else "unbounded"
        return f"kafka_source topic {self.topic!r} at {self.brokers} (json, {how})"


def _lines(values: list[bytes]) -> tuple[bytes, int]:
    """The values as newline-delimited JSON, and how many. A newline inside a JSON value can only
    be whitespace between tokens, so where a value has one it is replaced by a space."""
    text = b"\n".join(values)
    if text.count(b"\n") != len(values) - 1:
        text = b"\n".join(v.replace(b"\r", b" ").replace(b"\n", b" ") for v in values)
    return text, len(values)
