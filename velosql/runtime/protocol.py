"""The messages between a V2 job and its workers, and how they travel: what both sides import.

The job's side (:mod:`.pool`) and the worker process (:mod:`.worker`) share nothing but messages
over one duplex pipe, and Arrow tables cross it as Arrow IPC stream bytes
(``Connection.send_bytes``), never pickled. A large table (:data:`FILE_MIN_ROWS` rows, or for a
request :data:`FILE_MIN_BYTES` bytes) goes instead as an Arrow IPC file in the pool's directory in
memory (``/dev/shm``); its reader maps the file and removes it.

Requests and their replies; each worker answers its requests one by one, in order:

- :class:`Setup` — run statements once (``CREATE TABLE …``); replied to with no table.
- :class:`Batch` — register an Arrow table as ``__in``, run one SQL string on it, unregister it. The
  reply holds the result of the string's last statement. That table may have zero rows, and DML
  gives DuckDB's one-row ``Count`` table.
- :class:`Query` — run one SQL string; the reply holds its last statement's result.
- :class:`Marker` — an in-band watermark or end-of-input marker. The worker echoes its value, so its
  reply arrives after the replies to every earlier request.
- :class:`Call` — run a function of velosql's own in the worker (``"module:name"``), given the
  worker's connection, a dict it keeps between calls and an argument; it returns a value to send
  back and optionally a table. The V2 processor's direct reads (a worker reading its own source
  partitions) are such calls.

A batch's or query's SQL may be a sequence of statements run in order; the reply holds the result
of the one at index ``result`` (by default the last).

On the wire, which only the pool and the worker read:

- A request is a pickled header ``(kind, data)``; a ``"batch"`` header is followed by the table's
  IPC bytes. Besides the kinds above, the pool sends ``"batch_file"`` (a large batch: the path of
  its file instead of the bytes), ``"batch_part"`` (a file shared by several workers, each taking
  the rows whose partition column holds its number) and :data:`STOP`.
- A reply is a pickled header ``(ok, kind, busy_seconds, table_at, value)``. ``table_at`` says
  where the table is: ``False`` (none), ``True`` (its IPC bytes follow in the pipe) or the path of
  the file holding it. ``value`` is the request's value, or the error text when not ``ok``. A
  worker's first reply, of kind ``"start"``, answers no request: its value is ``(pid, cores,
  affinity_error, pyarrow CPU threads, pyarrow I/O threads)``.

Lifecycle: this module holds values and functions, and starts no process or thread. The pool calls
:func:`encode` before it writes anything, so a request that cannot be pickled leaves no half
message in the pipe. :func:`recv_bytes` blocks until a whole message has arrived or the pipe
closes; nothing else here blocks.
"""

from __future__ import annotations

import os
import pickle
import struct
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import pyarrow as pa

__all__ = [
    "FILE_MIN_BYTES",
    "FILE_MIN_ROWS",
    "STOP",
    "Batch",
    "Call",
    "Marker",
    "Query",
    "Reply",
    "Request",
    "Setup",
    "describe",
    "encode",
    "ipc_buffer",
    "recv_bytes",
    "write_ipc_file",
]

STOP = pickle.dumps(("stop", None))  # asks a worker to exit (see pool._shutdown)
_SQL_SHOWN = 160  # characters of a statement quoted in an error message


@dataclass(frozen=True)
class Setup:
    """Statements a worker runs once, in order, before its batches (DDL, settings)."""

    statements: tuple[str, ...]

    def __post_init__(self) -> None:
        # A lone string would otherwise be taken for a sequence of one-character statements.
        statements = (self.statements,) if isinstance(self.statements, str) else tuple(self.statements)
        object.__setattr__(self, "statements", statements)


@dataclass(frozen=True)
class Batch:
    """An Arrow table the worker registers as ``__in`` and the SQL it runs on it.

    ``sql`` is one statement or a sequence of them; the reply holds the result of statement
    ``result`` (an index into the sequence). A statement is SQL text, or a :class:`Call` run
    while the table is registered (its table is the statement's result).
    """

    table: pa.Table | pa.RecordBatch
    sql: str | Call | tuple[str | Call, ...]
    result: int = -1
    name: str = "__in"  # the table's name in the statements


@dataclass(frozen=True)
class Query:
    """SQL the worker runs (one string or a sequence); the result of statement ``result`` comes back."""

    sql: str | tuple[str, ...]
    result: int = -1


@dataclass(frozen=True)
class Call:
    """Run ``function(con, state, arg)`` in the worker; it returns ``(value, table or None)``.

    ``function`` is ``"module:name"`` of a module inside the ``velosql`` package; ``state`` is a
    dict the worker keeps for its whole life; ``arg`` and ``value`` must be picklable.
    """

    function: str
    arg: Any = None

    def __post_init__(self) -> None:
        if not self.function.startswith("velosql."):
            raise ValueError(f"A worker call runs velosql's own functions only, not {self.function!r}.")


@dataclass(frozen=True)
class Marker:
    """An in-band marker (watermark, end of input): answered after every earlier request.

    ``value`` must be picklable and small; it is echoed back in :attr:`Reply.value`.
    """

    value: Any = None


Request = Setup | Batch | Query | Marker | Call


@dataclass(frozen=True)
class Reply:
    """A worker's answer to one request.

    Attributes:
        partition: The worker (partition) index that answered.
        kind: ``"setup"``, ``"batch"``, ``"query"`` or ``"marker"``.
        table: The statement's result for a batch or query; ``None`` for setup and markers.
        value: The marker's value; ``None`` for other kinds.
        busy_seconds: Time the worker spent on the request, decoding and encoding included.
    """

    partition: int
    kind: str
    table: pa.Table | None
    value: Any
    busy_seconds: float


FILE_MIN_ROWS = 16_384  # batches at least this large go through a file in memory, not the pipe
# ... and requests at least this large: a pipe holds 64 KiB, and a write beyond what the busy
# worker has read waits for it (partial rows sent to a worker while it aggregates: pushed trades,
# V2:2 Q_tumble 0.50 -> 0.44 s).
FILE_MIN_BYTES = 32_768


def encode(request: Request) -> tuple[bytes, pa.Buffer | None, int]:
    """The pickled header, optional IPC payload and row count of a request.

    Pickling here, before anything is written, keeps an unpicklable marker value from leaving
    half a message in the pipe.
    """
    if isinstance(request, Batch):
        return (
            pickle.dumps(("batch", (request.sql, request.result, request.name))),
            ipc_buffer(request.table),
            request.table.num_rows,
        )
    if isinstance(request, Query):
        return pickle.dumps(("query", (request.sql, request.result))), None, 0
    if isinstance(request, Call):
        return pickle.dumps(("call", (request.function, request.arg))), None, 0
    if isinstance(request, Setup):
        return pickle.dumps(("setup", request.statements)), None, 0
    if isinstance(request, Marker):
        return pickle.dumps(("marker", request.value)), None, 0
    raise TypeError(
        f"A worker request must be Setup, Batch, Query, Marker or Call, not {type(request).__name__}."
    )


def describe(request: Request) -> str:
    """How an error message names a request: its kind and the start of its SQL."""
    if isinstance(request, Call):
        return f"a call of {request.function}"
    if isinstance(request, (Batch, Query)):
        statements = (request.sql,) if isinstance(request.sql, (str, Call)) else request.sql
        text = "; ".join(f"CALL {s.function}" if isinstance(s, Call) else s for s in statements)
        sql = " ".join(text.split())
        shown = sql if len(sql) <= _SQL_SHOWN else sql[: _SQL_SHOWN - 1] + "…"
        return f"a {type(request).__name__.lower()} `{shown}`"
    if isinstance(request, Setup):
        return f"a setup of {len(request.statements)} statement(s)"
    return f"a marker {request.value!r}"


def write_ipc_file(path: str, table: pa.Table) -> None:
    """Write ``table`` to ``path`` as Arrow IPC stream bytes: a large batch's or reply's file."""
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write(table)


def ipc_buffer(table: pa.Table | pa.RecordBatch) -> pa.Buffer:
    """``table`` as Arrow IPC stream bytes, written once into a buffer of the exact size."""
    # Measuring first costs no copy and saves the regrowth copies of a BufferOutputStream.
    size = pa.MockOutputStream()
    with pa.ipc.new_stream(size, table.schema) as writer:
        writer.write(table)
    buffer = pa.allocate_buffer(size.size())
    with pa.ipc.new_stream(pa.FixedSizeBufferWriter(buffer), table.schema) as writer:
        writer.write(table)
    return buffer


def recv_bytes(conn: Connection) -> bytes | bytearray:
    """``conn.recv_bytes()`` with one copy instead of three: 2 ms instead of 10 for 11 MB.

    ``Connection.recv_bytes`` reads into a ``BytesIO`` in socket-buffer-sized chunks, allocating
    a chunk of the full remaining size each time. Here the frame ``send_bytes`` wrote (a 4-byte
    big-endian signed length, or -1 and an 8-byte length above 2 GiB, then the data) is read
    straight into one ``bytearray``. ``Connection`` itself never reads ahead on POSIX, so the two
    can share the descriptor.
    """
    if not hasattr(os, "readv"):  # Windows: named pipes, not descriptors
        return conn.recv_bytes()
    fd = conn.fileno()
    (size,) = struct.unpack("!i", _read_exactly(fd, 4))
    if size == -1:
        (size,) = struct.unpack("!Q", _read_exactly(fd, 8))
    return _read_exactly(fd, size)


def _read_exactly(fd: int, size: int) -> bytearray:
    data = bytearray(size)
    view, done = memoryview(data), 0
    while done < size:
        n = os.readv(fd, [view[done:]])
        if n == 0:
            raise EOFError if done == 0 else OSError("The pipe closed in the middle of a message.")
        done += n
    return data
