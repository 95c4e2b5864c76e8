"""Python objects in and out: push Arrow tables, record batches, pandas frames or lists of dicts;
pull results as Arrow.

A :class:`Channel` is a named, append-only log of pushed batches. Every job reading it gets its own
:class:`PythonSource` cursor, so several jobs can read one channel; entries every reader consumed
are dropped. The channel ends when :meth:`Channel.close` is called.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pyarrow as pa

from ..errors import DataError
from .base import PartitionEnd, Sink, Source, SourceContext, Watermark, with_system_columns


def to_arrow(data: object, where: str) -> pa.Table:
    """Arrow table from an Arrow table/batch, a pandas DataFrame, a dict of columns or a list of dicts."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if type(data).__module__.split(".")[0] == "pandas":
        return pa.Table.from_pandas(data, preserve_index=False)
    if isinstance(data, dict):
        return pa.table(data)
    if isinstance(data, (list, tuple)):
        if data and not all(isinstance(r, dict) for r in data):
            raise DataError(f"{where}: a list pushed to a source must hold dicts (one per record)")
        return pa.Table.from_pylist(list(data))
    raise DataError(
        f"{where}: cannot push a {type(data).__name__}; push a pyarrow Table or RecordBatch, a "
        "pandas DataFrame, a dict of columns or a list of dicts"
    )


class Channel:
    """A named stream of pushed data shared by the jobs that read it."""

    def __init__(self, name: str, max_pending: int = 64) -> None:
        self.name = name
        self.max_pending = max_pending
        self.schema: pa.Schema | None = None
        self._entries: list[pa.Table] = []
        self._base = 0  # index of _entries[0] in the whole log
        self._readers: dict[int, int] = {}
        self._closed = False
        self._offset = 0
        self._cond = threading.Condition()

    def push(self, data: object) -> int:
        """Append records; returns how many. Their schema must match the first push's."""
        table = to_arrow(data, f"push to {self.name!r}")
        with self._cond:
            # Backpressure: while jobs read this channel, a producer waits for them to catch up
            # instead of growing memory without bound.
            while self._readers and len(self._entries) >= self.max_pending and not self._closed:
                self._cond.wait(0.1)
            if self._closed:
                raise DataError(f"source {self.name!r} was closed; no more data can be pushed")
            if self.schema is None:
                self.schema = table.schema
            elif table.schema != self.schema:
                try:
                    table = table.select(self.schema.names).cast(self.schema)
                except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
                    raise DataError(
                        f"push to {self.name!r}: schema {table.schema} does not match the source's "
                        f"schema {self.schema}: {exc}"
                    ) from None
            self._entries.append(table)
            self._cond.notify_all()
            return table.num_rows

    def push_watermark(self, value: int) -> None:
        """The writing statement's watermark, in order with its rows (see :class:`Watermark`)."""
        with self._cond:
            if self._closed:
                return
            self._entries.append(Watermark(value))
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        """Pushed tables the slowest reader has not taken yet (at most ``max_pending`` while read)."""
        with self._cond:
            return len(self._entries)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """No more data: readers finish after what was pushed."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def declare(self, schema: pa.Schema) -> pa.Schema:
        """Fix the schema before any push (later pushes are cast to it); returns the schema in force."""
        with self._cond:
            if self.schema is None:
                self.schema = schema
            return self.schema

    def register(self) -> int:
        with self._cond:
            rid = len(self._readers) + 1
            while rid in self._readers:
                rid += 1
            self._readers[rid] = self._base
            return rid

    def unregister(self, rid: int) -> None:
        with self._cond:
            self._readers.pop(rid, None)

    def next(self, rid: int, timeout: float) -> pa.Table | Watermark | None | bool:
        """The reader's next table (or watermark), None when none arrived within ``timeout``,
        False at the end."""
        with self._cond:
            pos = self._readers[rid]
            if pos - self._base >= len(self._entries):
                if self._closed:
                    return False
                self._cond.wait(timeout)
                pos = self._readers[rid]
                if pos - self._base >= len(self._entries):
                    return False if self._closed else None
            table = self._entries[pos - self._base]
            self._readers[rid] = pos + 1
            low = min(self._readers.values())
            while self._base < low and self._entries:
                self._entries.pop(0)
                self._base += 1
            self._cond.notify_all()
            return table


class PythonSource(Source):
    """Reads a :class:`Channel`; unbounded until the channel is closed. Partition 0.

    ``carried``: the channel is another statement's output and carries its watermark, which
    bounds the reading statement's event-time column from below once ``carried`` µs are taken
    off (see ``Engine._connect_pipelines``); the source then yields it as :class:`Watermark`.
    None: watermarks in the channel are skipped."""

    bounded = False

    def __init__(
        self,
        name: str,
        channel: Channel,
        poll_interval_us: int = 200_000,
        schema: pa.Schema | None = None,
        carried: int | None = None,
    ) -> None:
        self.name, self.channel = name, channel
        self.carried = carried
        self.declared = schema
        self.poll = poll_interval_us / 1e6
        self._rid: int | None = None
        self._offset = 0
        self._schema: pa.Schema | None = None

    def open(self, ctx: SourceContext) -> None:
        self.ctx = ctx
        schema = self.channel.declare(self.declared) if self.declared is not None else self.channel.schema
        if schema is None:
            # The plan is bound to the source's schema before the job starts, so it must be known.
            raise DataError(
                f"python source {self.name!r} has no schema yet: push data to it before deploying, "
                f"or declare its columns with '{self.name}.schema' = 'col TYPE, …'"
            )
        self._rid = self.channel.register()
        self._schema = schema

    @property
    def schema(self) -> pa.Schema:
        return with_system_columns(pa.RecordBatch.from_pylist([], schema=self._schema), 0, 0).schema

    def read(self) -> Iterator[pa.RecordBatch | PartitionEnd | None]:
        while not self.ctx.stop.is_set():
            table = self.channel.next(self._rid, self.poll)
            if table is False:
                break
            if table is None:
                yield None
                continue
            if isinstance(table, Watermark):
                if self.carried is not None:
                    yield Watermark(table.value - self.carried)
                continue
            for batch in table.to_batches():
                yield with_system_columns(batch, 0, self._offset)
                self._offset += batch.num_rows
        yield PartitionEnd(0)

    def close(self) -> None:
        if self._rid is not None:
            self.channel.unregister(self._rid)

    def describe(self) -> str:
        return f"python source {self.name!r}"


class PythonSink(Sink):
    """Keeps result tables until :meth:`pull` takes them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tables: list[pa.Table] = []
        self._schema: pa.Schema | None = None
        self._lock = threading.Lock()

    def open(self, schema: pa.Schema) -> None:
        self._schema = schema

    def write(self, table: pa.Table) -> None:
        with self._lock:
            self._tables.append(table)

    def pull(self) -> pa.Table:
        """Everything written since the last pull, as one Arrow table."""
        with self._lock:
            tables, self._tables = self._tables, []
        if not tables:
            return self._schema.empty_table() if self._schema is not None else pa.table({})
        return pa.concat_tables(tables)

    def describe(self) -> str:
        return f"python sink {self.name!r}"


class ChannelSink(Sink):
    """Hands every result table of a statement to a channel, which later statements of the same
    engine read as their stream (a pipeline); the channel ends when the statement's job ends."""

    def __init__(self, name: str, channel: Channel) -> None:
        self.name, self.channel = name, channel

    def open(self, schema: pa.Schema) -> None:
        self.channel.declare(schema)

    def write(self, table: pa.Table) -> None:
        self.channel.push(table)

    def watermark(self, value: int) -> None:
        """The statement's watermark after the rows written so far."""
        self.channel.push_watermark(value)

    def close(self) -> None:
        self.channel.close()

    def describe(self) -> str:
        return f"the stream of {self.name!r} to the statements that read it"
