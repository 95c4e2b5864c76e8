"""V2 direct read, the worker's side: a worker reads its own source partitions (see v2.py).

The job sends :func:`open_partitions` once, then one :func:`read` per micro-batch it wants, with
the job watermark as it stands. Each read coalesces the next ``max_rows`` rows of the worker's
partitions, adds what V1 adds in the job (``__seq``, ``__et``, ``__wm``), runs the partition-local
statement (the partial aggregate, or the projection) on them and replies with its result, the
late rows, the bad records and, per partition, the largest event time read and whether it ended.
The job merges the replies and keeps the job watermark: every row of one read sees the watermark
the request carried, so a row late only against rows of its own read is kept, and which rows are
late depends on how the workers' reads interleave (see the guide's watermark section).

These functions run in the worker process (:class:`~velosql.runtime.protocol.Call`).
"""

from __future__ import annotations

import threading
import time

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ..connectors.base import OFFSET_COL, PARTITION_COL, PartitionEnd, SourceContext, int_scalar
from .protocol import ipc_buffer
from .watermark import NEG_INF, any_late, event_time_us, without_null_time

_END = object()
SEQ_PARTITION_SHIFT = 40  # __seq = partition << 40 | offset: arrival order within each partition


def open_partitions(con: duckdb.DuckDBPyConnection, state: dict, spec: dict):
    """Open the worker's partitions of the source (``spec["reader"]``) with the job's columns."""
    from ..connectors.files_source import FileSource

    rejects: list[tuple] = []
    ctx = SourceContext(
        stop=threading.Event(), reject_fn=lambda loc, err, raw: rejects.append((loc, err, raw))
    )
    source = FileSource.for_partitions(spec["reader"], ctx)
    state.update(spec=spec, source=source, events=iter(source.read()), rejects=rejects)
    return None, None


def read(con: duckdb.DuckDBPyConnection, state: dict, watermark: int):
    """The next micro-batch of the worker's partitions, through the partition-local statement."""
    spec, events, rejects, source = state["spec"], state["events"], state["rejects"], state["source"]
    pieces, spans, rows, ended, done = [], [], 0, [], False
    while True:
        # The split each batch came from is the watermark's unit (see FileSource.splits).
        item, unit = state.pop("ahead", None) or (next(events, _END), source.reading)
        if item is _END:
            done = True
            break
        if isinstance(item, PartitionEnd):
            ended.append(item.partition)
        elif item is not None:
            if rows >= spec["max_rows"]:
                # Full, and the partition goes on: keep the batch for the next read. (A partition
                # that ends right after this read's rows ends with it, as a DuckDB run does.)
                state["ahead"] = (item, unit)
                break
            pieces.append(item)
            rows += item.num_rows
            if spans and spans[-1][0] == unit:
                spans[-1][1] += item.num_rows
            else:
                spans.append([unit, item.num_rows])
    info = {"rows": rows, "ended": ended, "done": done, "maxima": [], "late": None, "low": None}
    table = None
    if pieces:
        table = run_local(con, spec, pa.Table.from_batches(pieces), watermark, info, rejects, spans, source)
    info["rejects"], rejects[:] = list(rejects), []
    return info, table


def run_local(
    con, spec: dict, table: pa.Table, watermark: int, info: dict, rejects: list, spans: list | None, source
) -> pa.Table | None:
    """Add ``__seq`` (and ``__et``, ``__wm``) to the read's rows and run the partition-local
    statement; fill ``info`` (event-time maxima per unit, late rows, lowest event time).
    ``spans``: ``[unit, rows]`` runs of consecutive rows, or None where each row's unit is its
    ``_partition`` (Kafka); ``source``: its ``exact_offsets`` (if any) names byte-range offsets."""
    partition = pc.cast(table[PARTITION_COL], pa.int64())
    seq = pc.add(pc.shift_left(partition, int_scalar(SEQ_PARTITION_SHIFT)), table[OFFSET_COL])
    table = table.append_column("__seq", seq)
    late = False
    statements = spec["out"]
    if spec["windowed"]:
        col = spec["time"]
        if col is None:
            et = pa.repeat(int_scalar(time.time_ns() // 1000), table.num_rows)
        else:
            et = pa.chunked_array(event_time_us(table[col], spec["time_format"], col))
        info["maxima"] = _maxima(et, spans) if spans is not None else _partition_maxima(table, et)
        if et.null_count:
            exact = getattr(source, "exact_offsets", None)
            table, et, bad = without_null_time(table, et, spec["source"], col, exact)
            rejects.extend(bad)
        if table.num_rows == 0:
            return None
        wm = pa.repeat(int_scalar(watermark), table.num_rows)
        table = table.append_column("__et", et).append_column("__wm", wm)
        low = pc.min(et).as_py()
        info["low"] = low
        if watermark != NEG_INF and spec["window"] is not None:
            late = any_late(spec["window"], table["__et"], table["__wm"])
        if late:
            statements = spec["out_late"]
        if low >= 0 and len(statements) > 1:
            statements = statements[1:]
    con.register("__in", table)
    try:
        if late:
            rows = con.sql(spec["late"]).to_arrow_table()
            exact = getattr(source, "exact_offsets", None)
            if rows.num_rows and exact is not None and OFFSET_COL in rows.column_names:  # a byte range's
                offsets = exact(rows[PARTITION_COL], rows[OFFSET_COL])
                rows = rows.set_column(rows.schema.get_field_index(OFFSET_COL), OFFSET_COL, offsets)
            if rows.num_rows:
                info["late"] = ipc_buffer(rows).to_pybytes()
        return con.sql(statements[0]).to_arrow_table()
    finally:
        con.unregister("__in")


def _maxima(et: pa.ChunkedArray, spans: list) -> list[tuple[int, int]]:
    """Each split's largest event time in the micro-batch (rows of one split are consecutive)."""
    best: dict[int, int] = {}
    start = 0
    for unit, rows in spans:
        top = pc.max(et.slice(start, rows)).as_py()
        start += rows
        if top is not None and (unit not in best or top > best[unit]):
            best[unit] = top
    return list(best.items())


def _partition_maxima(table: pa.Table, et: pa.ChunkedArray) -> list[tuple[int, int]]:
    """Each source partition's largest event time in the micro-batch, where a batch's rows of
    several partitions are interleaved (a Kafka poll's)."""
    top = pa.table({"p": table[PARTITION_COL], "e": et}).group_by("p").aggregate([("e", "max")])
    return [(p, e) for p, e in zip(top["p"].to_pylist(), top["e_max"].to_pylist()) if e is not None]
