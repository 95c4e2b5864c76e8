"""The one Source/Sink protocol every connector implements.

Data crosses this boundary only as Arrow: a source yields ``pyarrow.RecordBatch`` objects, a sink
receives ``pyarrow.Table`` objects. No per-record Python on either side.

System columns: every batch a source yields carries, after the user's columns,
``_partition`` (int32: the source partition — file index, Kafka partition, …) and
``_offset`` (int64: the record's position within its partition — row index in the file, Kafka offset).
"""

from __future__ import annotations

import os
import struct
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

PARTITION_COL = "_partition"
OFFSET_COL = "_offset"
SYSTEM_COLUMNS = (PARTITION_COL, OFFSET_COL)


@dataclass
class SourceContext:
    """What a running source may ask of its job.

    ``stop`` is set when the job stops: an unbounded (watching) source must return from
    :meth:`Source.read` soon after. ``reject`` takes a record that cannot be decoded: the job either
    stores it in its dead-letter table and the source goes on (it returns), or raises
    :class:`velosql.errors.DataError` naming the place (the source must let that propagate).
    """

    stop: threading.Event = field(default_factory=threading.Event)
    reject_fn: object = None  # callable(location: str, error: str, raw: str | None) -> None
    # callable(location, error, raw, at: (partition, offset)): a record whose place is known goes
    # here when set (a job resuming from a checkpoint does not report it again)
    reject_at_fn: object = None

    def reject(
        self, location: str, error: str, raw: str | None = None, at: tuple[int, int] | None = None
    ) -> None:
        """Hand over a record that cannot be processed. ``location`` is e.g. ``'data/x.csv:17'``;
        ``at``: its ``(_partition, _offset)`` where the source knows it."""
        if at is not None and self.reject_at_fn is not None:
            self.reject_at_fn(location, error, raw, at)
            return
        if self.reject_fn is None:
            from ..errors import DataError

            raise DataError(f"{location}: {error}")
        self.reject_fn(location, error, raw)


class Watermark:
    """Yielded by a source that reads another statement's output (a pipeline): no row still to
    come has an event time (in the reading statement's event-time column) before ``value``
    (microseconds since the epoch)."""

    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Watermark({self.value})"


class PartitionEnd:
    """Yielded by :meth:`Source.read` when one source partition (a file, …) has no more data."""

    __slots__ = ("partition",)

    def __init__(self, partition: int) -> None:
        self.partition = partition

    def __repr__(self) -> str:
        return f"PartitionEnd({self.partition})"


class Source(ABC):
    """A stream of Arrow record batches.

    Lifecycle: the job calls :meth:`open` once, then iterates :meth:`read` from one thread until it
    is exhausted (bounded sources) or ``ctx.stop`` is set, then calls :meth:`close` exactly once,
    also after an error. :meth:`read` may block while waiting for data, but then yields ``None`` at
    least every ``poll_interval`` so the job can flush time-based work; it yields
    :class:`PartitionEnd` when a partition is done. Every batch has the same schema, available from
    :attr:`schema` once :meth:`open` returned.
    """

    name: str
    bounded: bool = True

    @abstractmethod
    def open(self, ctx: SourceContext) -> None: ...

    @property
    @abstractmethod
    def schema(self) -> pa.Schema:
        """The schema of the batches, user columns then the system columns."""

    @abstractmethod
    def read(self) -> Iterator[pa.RecordBatch | PartitionEnd | None]: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files, connections and threads. Called once."""

    def describe(self) -> str:
        """One line for EXPLAIN, e.g. ``file_source csv data/trades.csv``."""
        return type(self).__name__


class Sink(ABC):
    """Receives a job's result rows.

    Lifecycle: :meth:`open` once with the result schema, then :meth:`write` any number of times from
    the job's single writer thread, :meth:`flush` at least at the end (and whenever the job commits
    progress), and :meth:`close` exactly once, also after an error (or :meth:`discard` when the job
    never ran). ``write`` may block (that is backpressure), never drops rows, until a stop that
    timed out calls :meth:`abort` from another thread.
    """

    name: str

    @abstractmethod
    def open(self, schema: pa.Schema) -> None: ...

    @abstractmethod
    def write(self, table: pa.Table) -> None: ...

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Make everything written so far durable/visible."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release resources. Called once."""

    def discard(self) -> None:
        """Release resources without making what was written visible, where the sink can (the
        job never ran: a later statement of its script failed to deploy). Instead of
        :meth:`close`; by default it is :meth:`close`."""
        self.close()

    def abort(self) -> None:  # noqa: B027 - optional hook
        """Called from another thread when the job's stop timed out: a :meth:`write` or
        :meth:`flush` blocked now should raise soon instead of waiting on. Must not block."""

    def describe(self) -> str:
        return type(self).__name__


_ARANGE: pa.Array | None = None


def declared_partition_key(options: dict) -> tuple[str, ...]:
    """The columns a source says it is partitioned by: its ``partition_key`` option (options
    without the ``<name>.`` prefix), comma-separated, as written."""
    text = str(options.get("partition_key") or "")
    return tuple(c.strip() for c in text.split(",") if c.strip())


def _arange(n: int) -> pa.Array:
    """0..n-1 as int64 without a per-element Python loop (a cached array, grown when short).

    Built with compute kernels: converting a Python range would import pandas through pyarrow's
    conversion shim, which costs more than the rest of ``import velosql``.
    """
    global _ARANGE
    if _ARANGE is None or len(_ARANGE) < n:
        size = max(n, 1 << 16)
        one = int_scalar(1)
        _ARANGE = pc.subtract(pc.cumulative_sum(pa.repeat(one, size)), one)
    return _ARANGE.slice(0, n)


def with_system_columns(batch: pa.RecordBatch, partition: int, first_offset: int) -> pa.RecordBatch:
    """Append ``_partition`` and ``_offset`` to a batch of user columns (vectorised).

    A batch that already carries ``_partition`` (data partitioned upstream, e.g. by key) keeps its
    values, cast to int32; likewise a carried ``_offset`` is kept as int64.
    """
    n = batch.num_rows
    arrays, fields = [], []
    for name, col in zip(batch.schema.names, batch.columns):
        if name not in SYSTEM_COLUMNS:
            arrays.append(col)
            fields.append(batch.schema.field(name))
    names = batch.schema.names
    if PARTITION_COL in names:
        part = batch.column(PARTITION_COL).cast(pa.int32())
    else:
        part = pa.repeat(int_scalar(partition, pa.int32()), n)
    if OFFSET_COL in names:
        offsets = batch.column(OFFSET_COL).cast(pa.int64())
    else:
        offsets = pc.add(_arange(n), int_scalar(first_offset))
    return pa.RecordBatch.from_arrays([*arrays, part, offsets], schema=system_schema(fields))


def text_scalar(text: str) -> pa.StringScalar:
    """A string scalar built from buffers: ``pa.scalar(text)``, or a ``str`` handed to a compute
    function, is a conversion, and pyarrow's first one imports pandas when it is installed."""
    data = text.encode()
    offsets = pa.py_buffer(struct.pack("<ii", 0, len(data)))
    return pa.StringArray.from_buffers(1, offsets, pa.py_buffer(data))[0]


def int_scalar(value: int, type: pa.DataType | None = None) -> pa.Scalar:
    """An integer scalar (int64 unless ``type`` says) built from buffers, for the same reason as
    :func:`text_scalar`: a Python int handed to ``pa.scalar`` or to a compute function is a
    conversion too."""
    type = type or pa.int64()
    signed = pa.types.is_signed_integer(type)
    data = pa.py_buffer(value.to_bytes(type.bit_width // 8, "little", signed=signed))
    return pa.Array.from_buffers(type, 1, [None, data])[0]


def int_array(values: list[int], type: pa.DataType | None = None) -> pa.Array:
    """A short integer array (int64 unless ``type`` says) built from buffers (see
    :func:`int_scalar`)."""
    type = type or pa.int64()
    width, signed = type.bit_width // 8, pa.types.is_signed_integer(type)
    data = pa.py_buffer(b"".join(v.to_bytes(width, "little", signed=signed) for v in values))
    return pa.Array.from_buffers(type, len(values), [None, data])


def null_scalar(type: pa.DataType) -> pa.Scalar:
    """A NULL of ``type``, without converting Python's None (see :func:`int_scalar`)."""
    return pa.nulls(1, type)[0]


def empty_table(schema: pa.Schema) -> pa.Table:
    """A table of no rows. ``schema.empty_table()`` and ``pa.array([])`` convert Python values,
    and pyarrow's first conversion imports pandas (when installed): ~0.18 s of a short job."""
    return pa.Table.from_arrays([pa.nulls(0, f.type) for f in schema], schema=schema)


def system_schema(fields) -> pa.Schema:
    """User fields then ``_partition`` and ``_offset`` (the schema :func:`with_system_columns` gives)."""
    return pa.schema([*fields, pa.field(PARTITION_COL, pa.int32()), pa.field(OFFSET_COL, pa.int64())])


def sync_file(path: str | os.PathLike) -> None:
    """Make the file's data durable before a rename puts it at the final path: after a power loss
    the path then holds the previous file or the whole new one, never a new name over lost data.
    (The directory is not synced: either name is a whole file; a few ms per job saved.)"""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
