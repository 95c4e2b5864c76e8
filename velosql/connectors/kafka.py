"""Reading Kafka topics: ``'<src>.type' = 'kafka_source'`` (confluent-kafka).

``'<src>.topic.name'`` names one topic or several (``'a, b'``). Every partition of every topic is a
source partition, numbered by its place among the sorted ``(topic, partition)`` pairs (for one
topic: the Kafka partition); partitions added while the job runs are found by a metadata check
every ``'<src>.topic.metadata.refresh'`` and take the next numbers. A batch carries, after the
user's columns, ``_key`` (the message key as text), ``_timestamp`` (the message timestamp),
``_topic``, ``_partition`` (the source partition) and ``_offset`` (the Kafka offset). The consumer
is given every partition with ``assign()``, not ``subscribe()``: it reads from the first poll, with
no consumer-group join.

Values are decoded a poll at a time, never one message at a time in Python: ``json`` by pyarrow's
JSON reader over the values joined by newlines, ``csv`` by pyarrow's CSV reader over the values as
lines, ``raw`` as one column ``value``. The schema is the declared ``'<src>.schema'``, else the one
pyarrow infers from the first messages. A message that does not decode (not JSON, wrong types, a
null or empty value, larger than ``'<src>.max.message.bytes'``) is handed to the job's dead letters
as ``topic/partition@offset``; the rest go on. :class:`DeadLetterTopic` writes dead letters to a
Kafka topic.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pj

from ..errors import DataError, OptionError
from .base import OFFSET_COL, PARTITION_COL, PartitionEnd, Source, SourceContext, int_scalar, system_schema

_log = logging.getLogger(__name__)

BROKERS_ENV = "VELOSQL_KAFKA_BROKERS"
KAFKA_PASSTHROUGH = "kafka."  # '<src>.kafka.<key>' options (velosql.options.KAFKA_PASSTHROUGH)
KEY_COL = "_key"
TIMESTAMP_COL = "_timestamp"
TOPIC_COL = "_topic"
META_FIELDS = (
    pa.field(KEY_COL, pa.string()),
    pa.field(TIMESTAMP_COL, pa.timestamp("ms")),
    pa.field(TOPIC_COL, pa.string()),
)
SYSTEM_NAMES = frozenset((KEY_COL, TIMESTAMP_COL, TOPIC_COL, PARTITION_COL, OFFSET_COL))
# How long open() waits for the first messages when it must infer the schema from them.
INFER_TIMEOUT = 10.0
MAX_POLL = 65536  # messages taken per poll (one decode)
MAX_MESSAGE_BYTES = 1 << 20  # '<src>.max.message.bytes' default
METADATA_REFRESH = 5.0  # seconds between two looks for partitions added to the topics
FORMATS = {"json": "json", "jsonl": "json", "csv": "csv", "csv_no_header": "csv", "raw": "raw"}
RAW_SCHEMA = pa.schema([pa.field("value", pa.string())])


def topic_list(value: object) -> list[str]:
    """``'a, b'`` as ``['a', 'b']`` (in the order written, each once)."""
    names = [t.strip() for t in str(value or "").split(",")]
    return list(dict.fromkeys(t for t in names if t))


class KafkaSource(Source):
    """Reads every partition of one or more topics. Unbounded unless ``stop.at.end``: then each
    partition is read up to the high watermark its first fetch reported, and ends there.

    The end is taken from the first fetch and not from a ListOffsets request, because Tansu (the
    test broker) answers ListOffsets ``latest`` with 1 whatever the partition holds.
    """

    def __init__(
        self, name: str, options: dict, declared: pa.Schema | None = None, only: set[int] | None = None
    ) -> None:
        self.name = name
        # Read only these source partitions (a V2 worker's, a group member's task); None: all.
        only = only if only is not None else options.get("__only")
        self.only = None if only is None else set(only)
        # A group member's task (runtime/group.py): the schema the member found, and the member
        # (its consumer) through which offsets are committed, so that Kafka fences a server that
        # lost the partition.
        declared = declared if declared is not None else options.get("__schema")
        self.member = options.get("__member")
        self.topics = topic_list(options.get("topic.name"))
        if not self.topics:
            raise OptionError(f"source {name!r} is a kafka_source but has no '{name}.topic.name'")
        self.topic = ", ".join(self.topics)
        self.brokers = options.get("bootstrap.servers") or os.environ.get(BROKERS_ENV)
        if not self.brokers:
            raise OptionError(
                f"source {name!r}: no Kafka brokers: give '{name}.bootstrap.servers' = 'host:port' "
                f"or set {BROKERS_ENV}"
            )
        self.format = _format(name, options.get("format"))
        self.group = options.get("group.id") or f"velosql-{name}"
        self.reset = options.get("auto.offset.reset") or "earliest"
        self.stop_at_end = bool(options.get("stop.at.end"))
        self.bounded = self.stop_at_end
        self.poll = (options.get("poll_interval") or 200_000) / 1e6
        self.batch_size = min(options.get("batch_size") or MAX_POLL, MAX_POLL)
        self.max_bytes = int(options.get("max.message.bytes") or MAX_MESSAGE_BYTES)
        refresh = options.get("topic.metadata.refresh")
        self.refresh = refresh / 1e6 if refresh else METADATA_REFRESH
        self.delimiter = str(options.get("delimiter") or ",")
        self.quote = str(options.get("quote") or '"')
        self.declared = declared
        self.passthrough = {
            k[len(KAFKA_PASSTHROUGH) :]: str(v)
            for k, v in options.items()
            if k.startswith(KAFKA_PASSTHROUGH) and v is not None
        }
        self._schema: pa.Schema | None = None
        self._user: pa.Schema | None = None
        self._consumer = None
        self._pending: list = []  # messages polled by open() to infer the schema
        # source partition -> (topic, Kafka partition); and back
        self._pairs: list[tuple[str, int]] = []
        self._index: dict[tuple[str, int], int] = {}
        self._topic_names = pa.array([], pa.string())  # source partition -> topic
        self._ends: dict[int, int | None] = {}  # source partition -> end offset (None: not fetched yet)
        self._done: set[int] = set()
        self._next_refresh = 0.0

    # ---- setup ----------------------------------------------------------------------------------

    def open(self, ctx: SourceContext) -> None:
        from confluent_kafka import Consumer, KafkaException

        self.ctx = ctx
        try:
            self._consumer = Consumer(self.consumer_config())
        except KafkaException as exc:
            given = ", ".join(f"'{self.name}.kafka.{k}'" for k in sorted(self.passthrough)) or "none"
            raise OptionError(
                f"source {self.name!r}: librdkafka refuses the consumer's settings ({exc.args[0].str()}); "
                f"settings given through: {given}"
            ) from None
        found = self._metadata(10.0, strict=True)
        self._add_pairs(sorted((t, p) for t in self.topics for p in found[t]))
        self._assign()
        self._ends = dict.fromkeys(self._mine())
        user = self.declared if self.declared is not None else self._infer()
        if self.format == "raw":
            user = _raw_schema(self.name, user)
        self._user = user
        self._schema = system_schema([*user, *META_FIELDS])
        self._next_refresh = time.monotonic() + self.refresh

    def consumer_config(self) -> dict:
        """The librdkafka settings of the consumer: ours, then the ``'<src>.kafka.<key>'`` ones
        given through (they win), except ``enable.partition.eof``, which the ends rely on.

        librdkafka's fetch limits are set above ``max.message.bytes``: a larger message is then
        fetched whole and becomes a dead letter, instead of stalling its partition."""
        partition_fetch = max(1 << 20, 2 * self.max_bytes)
        fetch = max(50 << 20, 4 * partition_fetch)
        config = {
            "bootstrap.servers": self.brokers,
            "group.id": self.group,
            "auto.offset.reset": self.reset,
            "enable.auto.commit": False,
            # A caught-up partition's fetch waits at most this long for new messages (librdkafka's
            # 500 ms default is latency a stream pays on every quiet moment, and an end at each
            # stop.at.end partition).
            "fetch.wait.max.ms": 100,
            # librdkafka prefetches until a partition's queue holds this many messages (default
            # 100,000), bounded by queued.max.messages.kbytes (64 MB a partition). On the test
            # broker the default paced a 1M-message read at ~160K msg/s; 1M: ~335K (benchmarks).
            "queued.min.messages": 1_000_000,
            "max.partition.fetch.bytes": partition_fetch,
            "fetch.max.bytes": fetch,
            "receive.message.max.bytes": max(100_000_000, fetch + (1 << 20)),
        }
        config.update(self.passthrough)
        config["enable.partition.eof"] = True
        return config

    def _metadata(self, timeout: float, strict: bool) -> dict[str, list[int]]:
        """Each topic's partitions; a topic the broker does not know is an error when ``strict``
        (at open), else left out (a metadata refresh tries again later)."""
        from confluent_kafka import KafkaException

        found = {}
        for name in self.topics:
            try:
                topic = self._consumer.list_topics(name, timeout=timeout).topics[name]
                if topic.error is not None:
                    raise KafkaException(topic.error)
            except KafkaException as exc:
                if strict:
                    raise DataError(
                        f"source {self.name!r}: topic {name!r} at {self.brokers}: {exc}"
                    ) from None
                continue
            found[name] = sorted(topic.partitions)
        return found

    def _add_pairs(self, pairs: list[tuple[str, int]]) -> list[int]:
        """Number new ``(topic, partition)`` pairs after the known ones; their source partitions."""
        new = []
        for pair in pairs:
            if pair not in self._index:
                self._index[pair] = len(self._pairs)
                self._pairs.append(pair)
                new.append(self._index[pair])
        self._topic_names = pa.array([t for t, _ in self._pairs], pa.string())
        # Kafka partition -> source partition, per topic: a vectorised lookup (see _sources).
        self._lookup = {
            t: pa.array(
                [self._index.get((t, p), -1) for p in range(1 + max(q for u, q in self._pairs if u == t))],
                pa.int32(),
            )
            for t in {t for t, _ in self._pairs}
        }
        self._identity = len(self.topics) == 1 and all(p == i for i, (_, p) in enumerate(self._pairs))
        return new

    def _mine(self) -> list[int]:
        """The source partitions this source reads."""
        return [i for i in range(len(self._pairs)) if self.only is None or i in self.only]

    def _tp(self, source_partition: int, offset: int | None = None, **kw):
        from confluent_kafka import TopicPartition

        topic, partition = self._pairs[source_partition]
        if offset is None:
            return TopicPartition(topic, partition, **kw)
        return TopicPartition(topic, partition, offset, **kw)

    def _assign(self, positions: dict[int, int] | None = None) -> None:
        """Assign every partition: at ``positions[p]`` where given, else where the group's
        committed offsets, else ``auto.offset.reset``, say."""
        from confluent_kafka import OFFSET_INVALID

        positions = positions or {}
        self._consumer.assign([self._tp(i, positions.get(i, OFFSET_INVALID)) for i in self._mine()])

    def _infer(self) -> pa.Schema:
        """The schema pyarrow reads from the first messages (kept for :meth:`read`). Where the
        group's offsets (a restarted job's) are at the end of every partition, from the first
        messages the topic holds: a schema is the topic's, however far the group has read."""
        from confluent_kafka import OFFSET_BEGINNING

        found = self._infer_here()
        if found is not None:
            return found
        self._consumer.assign([self._tp(i, OFFSET_BEGINNING) for i in self._mine()])
        self._pending = []
        found = self._infer_here()
        self._pending = []  # read again where the group's offsets say
        self._assign()
        if found is not None:
            return found
        if self.stop_at_end:
            why = "every partition is at its end with no message to infer it from"
        else:
            why = f"no message that decodes arrived within {INFER_TIMEOUT:.0f} s"
        topics = "topic" if len(self.topics) == 1 else "topics"
        raise DataError(
            f"kafka source {self.name!r}: cannot infer the schema of {topics} {self.topic!r} "
            f"({self.format}): {why}; declare the columns with '{self.name}.schema' = 'col TYPE, …'"
        )

    def _infer_here(self) -> pa.Schema | None:
        """The schema of the first messages from the consumer's positions; None when every
        partition is at its end (``stop.at.end``) or nothing came within the timeout."""
        if self.format == "raw":
            return RAW_SCHEMA
        deadline = time.monotonic() + INFER_TIMEOUT
        while time.monotonic() < deadline and not self.ctx.stop.is_set():
            self._pending += self._messages(MAX_POLL, 0.2)
            values = [
                m.value()
                for m in self._pending
                if m.error() is None and m.value() and len(m.value()) <= self.max_bytes
            ]
            for sample in (values[:1000], values[:1]) if values else ():
                try:
                    return self._parse(sample, None).schema
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    continue  # a bad one among them: infer from the first only
            if self.stop_at_end and len(self._eofs(self._pending)) == len(self._mine()):
                break
        return None

    def user_schema(self) -> pa.Schema:
        """The schema of the messages' values (without the system columns)."""
        return self._user

    def pairs(self) -> list[tuple[str, int]]:
        """``(topic, Kafka partition)`` of each source partition, in source partition order."""
        return list(self._pairs)

    def partition_ids(self) -> list[int]:
        """The source partitions read (known once :meth:`open` returned): the job's watermark
        waits for each of them from the start, not only for those that delivered first."""
        return self._mine()

    # ---- positions (the runtime's checkpoints and commits) --------------------------------------

    def seek(self, positions: dict[int, int]) -> None:
        """Start source partition ``p`` at offset ``positions[p]`` (a checkpoint's positions: the
        next offset to read); the others where the group's committed offsets, else
        ``auto.offset.reset``, say. Called after :meth:`open`, before :meth:`read`: what
        :meth:`open` polled to infer the schema is dropped, and read again where it belongs."""
        self._pending = []
        self._assign(positions)

    def commit_offsets(self, positions: dict[int, int], metadata: str | None = None) -> None:
        """Commit ``positions`` (source partition -> next offset to read) to the consumer group,
        where monitoring (lag) and a job without a state location resume from. Asynchronous: a
        commit that fails is retried by the next one."""
        if not positions or self._consumer is None:
            return
        offsets = [self._tp(p, o, metadata=metadata or "") for p, o in sorted(positions.items())]
        (self.member or self._consumer).commit(offsets=offsets, asynchronous=True)

    def stop_fetching(self) -> None:
        """Read nothing more (V2 workers consume the partitions themselves): the consumer gives
        up its partitions, so librdkafka prefetches nothing, and stays for :meth:`commit_offsets`.
        What :meth:`open` polled to infer the schema is dropped."""
        self._pending = []
        if self._consumer is not None:
            self._consumer.unassign()

    def consumer_group_metadata(self):
        """The consumer's group metadata, for a transactional producer's
        ``send_offsets_to_transaction`` (the kafka_sink)."""
        return (self.member or self._consumer).consumer_group_metadata()

    def committed(self, timeout: float = 10.0) -> dict[int, tuple[int, str]]:
        """The group's committed offset and its metadata per source partition (those with one)."""
        found = self._consumer.committed([self._tp(i) for i in self._mine()], timeout)
        return {
            self._index[tp.topic, tp.partition]: (tp.offset, tp.metadata or "")
            for tp in found
            if tp.offset >= 0
        }

    def start_offsets(self, timeout: float = 10.0) -> dict[int, int]:
        """Where each source partition starts when no checkpoint says: the group's committed
        offset, else the first offset the topic holds (``auto.offset.reset = 'earliest'``) or
        its end (``'latest'``). A job with a state location starts there explicitly and records
        it, so that its checkpoints name every partition's position, read from or not."""
        from confluent_kafka import KafkaException

        try:
            found = {p: o for p, (o, _) in self.committed(timeout).items()}
            for i in self._mine():
                if i not in found:
                    low, high = self._consumer.get_watermark_offsets(self._tp(i), timeout, cached=False)
                    found[i] = high if self.reset == "latest" else low
        except KafkaException as exc:
            raise DataError(f"source {self.name!r}: the start offsets of {self.topic!r}: {exc}") from None
        return found

    def lag(self) -> dict[int, int]:
        """Per source partition: messages not yet read, the high watermark minus the position,
        from librdkafka's cached watermark offsets (no request: cheap, and as fresh as the last
        fetch). A partition with no cached watermark yet is left out."""
        if self._consumer is None:
            return {}
        out = {}
        mine = self._mine()
        tps = [self._tp(i) for i in mine]
        for i, tp, at in zip(mine, tps, self._consumer.position(tps)):
            low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            position = at.offset if at.offset >= 0 else low
            if high >= 0 and position >= 0:
                out[i] = max(high - position, 0)
        return out

    # ---- reading --------------------------------------------------------------------------------

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    def _eofs(self, messages) -> set[tuple[str, int]]:
        from confluent_kafka import KafkaError

        return {
            (m.topic(), m.partition())
            for m in messages
            if m.error() and m.error().code() == KafkaError._PARTITION_EOF
        }

    def _messages(self, most: int, wait: float) -> list:
        """What librdkafka has fetched, up to ``most`` messages, without waiting for more; when it
        has nothing, the first message (or event) within ``wait`` seconds and what came with it.
        (``consume(n, timeout)`` alone waits the whole timeout unless ``n`` messages arrive: a
        quiet topic's message would wait ``poll_interval`` for company.)"""
        got = self._consumer.consume(most, 0)
        if got:
            return got
        first = self._consumer.poll(wait)
        if first is None:
            return []
        return [first, *self._consumer.consume(most - 1, 0)] if most > 1 else [first]

    def read(self) -> Iterator[pa.RecordBatch | PartitionEnd | None]:
        if self.stop_at_end and not self._pairs:
            return
        while not self.ctx.stop.is_set():
            if not self.stop_at_end and time.monotonic() >= self._next_refresh:
                self._refresh()
            if self._pending:  # polled by open(): taken batch_size at a time too
                messages, self._pending = self._pending[: self.batch_size], self._pending[self.batch_size :]
            else:
                messages = self._messages(self.batch_size, self.poll)
            batch, ended = self._take(messages) if messages else (None, [])
            if batch is not None:
                yield batch
            elif not ended:
                yield None  # idle tick
            for p in ended:
                yield PartitionEnd(p)
            if self.stop_at_end and len(self._done) == len(self._ends):
                return

    def _refresh(self) -> None:
        """Look for partitions added to the topics; read the new ones from their beginning (they
        may have received messages before this look found them)."""
        from confluent_kafka import OFFSET_BEGINNING, KafkaException

        self._next_refresh = time.monotonic() + self.refresh
        found = self._metadata(1.0, strict=False)
        new = self._add_pairs(sorted((t, p) for t, parts in found.items() for p in parts))
        if self.only is not None:  # another reader's (a V2 worker's, a group member's)
            new = []
        if not new:
            return
        try:
            self._consumer.incremental_assign([self._tp(i, OFFSET_BEGINNING) for i in new])
        except KafkaException as exc:
            _log.warning("%s: cannot assign the new partitions: %s", self.name, exc)
            return
        for i in new:
            self._ends[i] = None
        _log.info(
            "%s: reading new partitions %s",
            self.name,
            ", ".join(f"{t}/{p}" for t, p in map(self._pairs.__getitem__, new)),
        )

    def _take(self, messages: list) -> tuple[pa.RecordBatch | None, list[int]]:
        """The batch of ``messages`` (and the source partitions they end, with ``stop.at.end``).
        Each message attribute is read with one list comprehension; the rest is vectorised."""
        from confluent_kafka import KafkaError, KafkaException

        ended: list[int] = []
        eofs: list[int] = []
        events = [m for m in messages if m.error() is not None]
        if events:
            for m in events:
                err = m.error()
                if err.code() == KafkaError._PARTITION_EOF:
                    p = self._index.get((m.topic(), m.partition()))
                    if p is not None and self.stop_at_end and p not in self._done:
                        if self._ends.get(p) is None:
                            self._ends[p] = m.offset()
                        eofs.append(p)  # done once this poll's messages of it are taken
                elif err.fatal():
                    raise KafkaException(err)
                # else transient: librdkafka retries by itself
            messages = [m for m in messages if m.error() is None]
        batch = None
        if messages:
            offsets = pa.array([m.offset() for m in messages], pa.int64())
            sources = self._sources(messages)
            keep = self._before_end(sources, offsets, ended) if self.stop_at_end else None
            if keep is not None:
                messages = [m for m, k in zip(messages, keep.to_pylist()) if k]
                offsets, sources = offsets.filter(keep), sources.filter(keep)
            if messages:
                batch = self._decode(messages, sources, offsets)
        for p in eofs:
            if p not in self._done:
                self._done.add(p)
                ended.append(p)
        return batch, ended

    def _sources(self, messages: list) -> pa.Array:
        """Each message's source partition (int32)."""
        parts = pa.array([m.partition() for m in messages], pa.int32())
        if self._identity:
            return parts
        if len(self.topics) == 1:
            return self._lookup[self.topics[0]].take(parts)
        topics = pa.array([m.topic() for m in messages], pa.string()).dictionary_encode()
        out = pa.nulls(len(messages), pa.int32())
        for code, topic in enumerate(topics.dictionary.to_pylist()):
            mask = pc.equal(topics.indices, int_scalar(code, topics.indices.type))
            out = pc.if_else(
                mask, self._lookup[topic].take(pc.if_else(mask, parts, int_scalar(0, pa.int32()))), out
            )
        return out

    def _before_end(self, sources: pa.Array, offsets: pa.Array, ended: list[int]) -> pa.Array | None:
        """``stop.at.end``: the mask of the messages before their partition's end (None: all),
        adding the partitions that reach their end to ``ended``."""
        present = pc.unique(sources).to_pylist()
        for p in present:
            if self._ends.get(p) is None:
                high = self._consumer.get_watermark_offsets(self._tp(p), cached=True)[1]
                self._ends[p] = high if high >= 0 else None
        ends = pa.array(
            [
                -1 if i in self._done else (self._ends.get(i) if self._ends.get(i) is not None else 2**62)
                for i in range(len(self._pairs))
            ],
            pa.int64(),
        )
        end = ends.take(sources)
        keep = pc.less(offsets, end)
        reached = pc.unique(sources.filter(pc.greater_equal(pc.add(offsets, int_scalar(1)), end))).to_pylist()
        for p in reached:
            if p not in self._done:
                self._done.add(p)
                ended.append(p)
        return None if pc.all(keep).as_py() else keep

    def _decode(self, messages: list, sources: pa.Array, offsets: pa.Array) -> pa.RecordBatch | None:
        """One batch of the messages that decode; the others go to the dead letters."""
        values = [m.value() for m in messages]
        index = None  # positions of the messages still in ``values``
        if None in values or b"" in values or max(map(len, filter(None, values))) > self.max_bytes:
            index = [i for i, v in enumerate(values) if v and len(v) <= self.max_bytes]
            for i, v in enumerate(values):
                if not v or len(v) > self.max_bytes:
                    self._reject(messages[i], sources, offsets, i, _why_bad(v, self.max_bytes, self.name))
            values = [values[i] for i in index]
        runs = self._decode_run(values, list(range(len(values))), messages, sources, offsets, index)
        if not runs:
            return None
        table = pa.concat_tables([t for t, _ in runs]).combine_chunks()
        kept = [i for _, run in runs for i in run]
        if index is not None:
            kept = [index[i] for i in kept]
        if len(kept) < len(messages):
            take = pa.array(kept, pa.int64())
            messages = [messages[i] for i in kept]
            sources, offsets = sources.take(take), offsets.take(take)
        keys = pa.array([m.key() for m in messages], pa.binary())
        try:
            keys = keys.cast(pa.string())
        except pa.ArrowInvalid:  # a key that is not UTF-8: shown with replacement characters
            keys = pa.array(
                [None if k is None else k.decode(errors="replace") for k in keys.to_pylist()], pa.string()
            )
        stamps = pa.array([m.timestamp()[1] for m in messages], pa.int64())
        stamps = pc.if_else(pc.less(stamps, int_scalar(0)), pa.nulls(len(stamps), pa.int64()), stamps)
        arrays = [
            *table.columns,
            keys,
            stamps.cast(pa.timestamp("ms")),
            self._topic_names.take(sources),
            sources,
            offsets,
        ]
        return pa.RecordBatch.from_arrays(
            [a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a for a in arrays], schema=self._schema
        )

    def _decode_run(self, values, run, messages, sources, offsets, index) -> list[tuple[pa.Table, list]]:
        """Decode ``values`` (positions ``run``) at once; where that fails, each half again (so a
        bad message costs a few extra decodes, not one decode per message)."""
        if not values:
            return []
        try:
            table = self._parse(values, self._user)
            if table.num_rows == len(values):
                return [(table, run)]
            error = f"expected one {self.format.upper()} record, read {table.num_rows}"
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            error = str(exc)
        if len(values) == 1:
            i = run[0] if index is None else index[run[0]]
            what = {"json": "as JSON", "csv": "as CSV", "raw": "as text (UTF-8)"}[self.format]
            self._reject(messages[i], sources, offsets, i, f"cannot decode the message {what}: {error}")
            return []
        half = len(values) // 2
        return self._decode_run(
            values[:half], run[:half], messages, sources, offsets, index
        ) + self._decode_run(values[half:], run[half:], messages, sources, offsets, index)

    def _parse(self, values: list[bytes], schema: pa.Schema | None) -> pa.Table:
        """The values as a table of ``schema`` (None: inferred); raises ArrowInvalid."""
        if self.format == "raw":
            column = pa.array(values, pa.binary())
            return pa.table([column.cast(schema[0].type)], schema=schema)
        if self.format == "csv":
            options = pcsv.ReadOptions(
                column_names=schema.names if schema is not None else None,
                autogenerate_column_names=schema is None,
                use_threads=False,
            )
            parse = pcsv.ParseOptions(delimiter=self.delimiter, quote_char=self.quote)
            convert = pcsv.ConvertOptions(column_types=schema) if schema is not None else None
            table = pcsv.read_csv(pa.py_buffer(_lines(values)), options, parse, convert)
            return table if schema is None else table.cast(schema)
        text = _lines(values)
        if schema is None:
            return pj.read_json(pa.py_buffer(text))
        table = pj.read_json(
            pa.py_buffer(text),
            parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
        )
        return table.select(schema.names).cast(schema)

    def _reject(self, m, sources: pa.Array, offsets: pa.Array, i: int, error: str) -> None:
        raw = m.value()
        text = None if raw is None else raw[:4096].decode(errors="replace")
        at = (sources[i].as_py(), offsets[i].as_py())
        self.ctx.reject(f"{m.topic()}/{m.partition()}@{m.offset()}", error, text, at=at)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def describe(self) -> str:
        how = "up to its end offsets at start" if self.stop_at_end else "unbounded"
        topics = "topic" if len(self.topics) == 1 else "topics"
        return f"kafka_source {topics} {self.topic!r} at {self.brokers} ({self.format}, {how})"


def _format(name: str, value: object) -> str:
    fmt = str(value or "json").lower()
    if fmt == "avro":
        raise OptionError(
            f"source {name!r}: '{name}.format' = 'avro' is not supported yet: it needs a schema "
            "registry this release is not tested against; produce JSON (format 'json'), or read "
            "the bytes with format 'raw' and decode them in SQL"
        )
    if fmt not in FORMATS:
        raise OptionError(
            f"source {name!r}: '{name}.format' = {value!r}: a kafka_source reads 'json' (the default), "
            "'csv' or 'raw'"
        )
    return FORMATS[fmt]


def _raw_schema(name: str, declared: pa.Schema) -> pa.Schema:
    """``raw``: one column, text (VARCHAR, the default: a message that is not UTF-8 is a dead
    letter) or bytes (BLOB: every message as it is)."""
    if len(declared) != 1 or not (
        pa.types.is_string(declared[0].type) or pa.types.is_binary(declared[0].type)
    ):
        raise OptionError(
            f"source {name!r}: format 'raw' reads each message into one column, VARCHAR or BLOB: "
            f"'{name}.schema' = 'value VARCHAR' (the default) or 'value BLOB', not {declared}"
        )
    return declared


def _why_bad(value: bytes | None, limit: int, name: str) -> str:
    if value is None:
        return "the message has a null value"
    if not value:
        return "the message is empty"
    return f"the message is {len(value)} bytes, more than '{name}.max.message.bytes' = {limit}"


def _lines(values: list[bytes]) -> bytes:
    """The values as newline-delimited records. A newline inside a JSON value can only be
    whitespace between tokens, so where a value has one it is replaced by a space (a CSV message
    with one then reads as one record, or fails as one)."""
    text = b"\n".join(values)
    if text.count(b"\n") != len(values) - 1:
        text = b"\n".join(v.replace(b"\r", b" ").replace(b"\n", b" ") for v in values)
    return text


class DeadLetterTopic:
    """Writes dead letters to a Kafka topic, one JSON object per record:
    ``{"source", "location", "error", "raw", "topic", "partition", "offset"}`` (the Kafka place of a
    record read from Kafka, parsed from its ``topic/partition@offset`` location; for other
    sources ``topic`` is null and ``partition``/``offset`` are the source partition and offset).
    The message key is the source name, so one source's dead letters stay in order.

    Lifecycle: :meth:`write` any number of times from one thread, :meth:`flush` when the job
    commits (it raises if a dead letter could not be delivered), :meth:`close` once.
    """

    def __init__(self, topic: str, brokers: str | None = None, config: dict | None = None) -> None:
        from confluent_kafka import Producer

        brokers = brokers or os.environ.get(BROKERS_ENV)
        if not topic or not brokers:
            raise OptionError(
                "'dlq.topic' needs a topic and brokers: 'dlq.bootstrap.servers', the source's, "
                f"or {BROKERS_ENV}"
            )
        self.topic = topic
        self._failed: list[str] = []
        self._producer = Producer({"bootstrap.servers": brokers, "linger.ms": 20, **(config or {})})

    def write(self, rows) -> None:
        """``rows``: ``(source, location, error, raw, at)`` tuples as the job's dead letters hold
        them (``at``: ``(partition, offset)`` or None)."""
        for source, location, error, raw, at in rows:
            record = {
                "source": source,
                "location": location,
                "error": error,
                "raw": raw,
                **_place(location, at),
            }
            self._send(source, json.dumps(record).encode())

    def _send(self, key: str, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key.encode(), on_delivery=self._delivered)
                break
            except BufferError:  # the producer's queue is full: let it deliver some
                self._producer.poll(0.1)
        self._producer.poll(0)

    def _delivered(self, err, msg) -> None:
        if err is not None:
            self._failed.append(str(err))

    def flush(self, timeout: float = 30.0) -> None:
        left = self._producer.flush(timeout)
        failed, self._failed = self._failed, []
        if left or failed:
            raise DataError(
                f"dead-letter topic {self.topic!r}: {left} dead letters not delivered within "
                f"{timeout:.0f} s" + (f"; {len(failed)} failed: {failed[0]}" if failed else "")
            )

    def close(self) -> None:
        self.flush()


def _place(location: str, at: tuple[int, int] | None) -> dict:
    """``topic/partition@offset`` (a Kafka location: a topic name holds no ``/`` or ``@``) as its
    parts; else the source partition and offset ``at``."""
    head, sep, offset = location.rpartition("@")
    topic, slash, partition = head.rpartition("/")
    if sep and slash and topic and partition.isdigit() and offset.isdigit() and "/" not in topic:
        return {"topic": topic, "partition": int(partition), "offset": int(offset)}
    return {"topic": None, "partition": at[0] if at else None, "offset": at[1] if at else None}
