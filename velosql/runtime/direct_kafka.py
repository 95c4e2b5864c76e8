"""V2 direct read of Kafka, the worker's side: a worker consumes its own partitions (see v2.py).

The job opens the topic once (its schema, declared or inferred, and its partitions), then sends
each worker that has partitions :func:`open_partitions` with the source's options, that schema
and the worker's share (source partition ``p`` to worker ``p mod N``). The worker makes its own
:class:`~velosql.connectors.kafka.KafkaSource` reading only those (``only=``), whose consumer is
given them with ``assign()``: no group join, and no row passes through the job's process.

Each :func:`read` answers as :func:`.direct.read` does (the partition-local statement's rows, late
rows, dead letters, each partition's largest event time and its end), plus each partition's next
offset (the job commits them to the group once the sinks have the rows). Unlike a file, a topic
may have nothing to read: a read returns what it has at the first poll that brings nothing (an
idle read returns no rows, so the job goes on with the other workers' replies), and at the
latest ``batch_timeout`` after it started, so a trickle of messages is not held back.
:func:`close` closes the consumer.

These functions run in the worker process (:class:`~velosql.runtime.protocol.Call`).
"""

from __future__ import annotations

import threading
import time

import duckdb
import pyarrow as pa

from ..connectors.base import OFFSET_COL, PARTITION_COL, PartitionEnd, SourceContext
from .direct import run_local

_END = object()


def open_partitions(con: duckdb.DuckDBPyConnection, state: dict, spec: dict):
    """Open the worker's partitions (``spec["partitions"]``) of the topic, with the job's schema
    (``spec["schema"]``: the columns of the messages, not inferred again)."""
    from ..connectors.kafka import KafkaSource

    rejects: list[tuple] = []
    ctx = SourceContext(
        stop=threading.Event(),
        reject_fn=lambda loc, err, raw: rejects.append((loc, err, raw)),
        reject_at_fn=lambda loc, err, raw, at: rejects.append((loc, err, raw, at)),
    )
    source = KafkaSource(spec["source"], spec["options"], spec["schema"], only=set(spec["partitions"]))
    source.open(ctx)
    state.update(spec=spec, source=source, events=iter(source.read()), rejects=rejects, ctx=ctx)
    return None, None


def read(con: duckdb.DuckDBPyConnection, state: dict, watermark: int):
    """The next micro-batch of the worker's partitions, through the partition-local statement."""
    spec, events, rejects = state["spec"], state["events"], state["rejects"]
    deadline = time.monotonic() + spec["batch_timeout"]
    batches, rows, ended, done = [], 0, [], False
    while True:
        item = state.pop("ahead") if "ahead" in state else next(events, _END)
        if item is _END:
            done = True
            break
        if isinstance(item, PartitionEnd):
            ended.append(item.partition)
            continue
        if item is None:  # a poll brought nothing: answer with what there is
            break
        if rows >= spec["max_rows"]:
            state["ahead"] = item  # full: the next read starts with it
            break
        batches.append(item)
        rows += item.num_rows
        if time.monotonic() >= deadline:
            break
    info = {"rows": rows, "ended": ended, "done": done, "maxima": [], "late": None, "low": None}
    table = None
    if batches:
        table = pa.Table.from_batches(batches)
        info["positions"] = _next_offsets(table)
        table = run_local(con, spec, table, watermark, info, rejects, None, state["source"])
    info["rejects"], rejects[:] = list(rejects), []
    return info, table


def close(con: duckdb.DuckDBPyConnection, state: dict, _=None):
    """Close the consumer (the job has stopped or ended)."""
    source = state.pop("source", None)
    state.pop("events", None)
    if source is not None:
        source.close()
    return None, None


def _next_offsets(table: pa.Table) -> list[tuple[int, int]]:
    """Each source partition's next offset to read after the micro-batch."""
    top = table.select([PARTITION_COL, OFFSET_COL]).group_by(PARTITION_COL).aggregate([(OFFSET_COL, "max")])
    return [(p, o + 1) for p, o in zip(top[PARTITION_COL].to_pylist(), top[f"{OFFSET_COL}_max"].to_pylist())]
