"""A V2 worker process: one ``threads=1`` DuckDB connection that answers one partition's requests.

The pool (:mod:`.pool`) starts each worker with ``spawn``. Its first code is
:func:`.worker_boot.main`, which keeps numpy out and then calls :func:`main`. A worker runs the SQL
it is sent and plans nothing, so it imports pyarrow, DuckDB and :mod:`.protocol` only, never
sqlglot or the plan layer: every V2 job waits for its workers to start. A :class:`~.protocol.Call`
imports the module it names the first time it runs.

Lifecycle, in the worker process:

- :func:`main` ignores SIGINT (the parent owns Ctrl-C), pins the process to its core before any
  thread starts, gives pyarrow's pools one thread each, starts two daemon threads and connects to
  DuckDB. Its first reply (kind ``"start"``) tells the pool that it is ready, or why it is not.
- The main thread then answers the requests one by one, in order (:func:`_serve`). Reading the
  next request blocks until one arrives; running one blocks for as long as its SQL or its call
  runs. An exception in a request is sent back as an error reply, and the worker stays usable.
- The reply thread writes the replies, so the main thread reads the next request while a reply is
  written. Without it, a large reply and a large request could each fill the pipe and block both
  processes.
- The parent-watch thread ends the process as soon as the parent is gone, even in the middle of a
  query, and removes the pool's directory of files in memory, which a dead parent cannot.
- A stop message, or the parent closing its end of the pipe, ends the loop: the worker closes its
  connection and pipe and exits at once (``os._exit(0)``).
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import pickle
import queue
import shutil
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any

import duckdb
import pyarrow as pa

from .protocol import FILE_MIN_ROWS, Call, ipc_buffer, recv_bytes, write_ipc_file

__all__ = ["main"]


def main(conn: Connection, core: int | None, files: str | None = None) -> None:
    """A worker's entry point: pin, start the helper threads, connect, then serve until stopped."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    # Pin before any thread exists, because threads inherit the mask of the thread that starts them.
    cores, affinity_error = _pin(core) if core is not None else (None, None)
    # One partition, one core: N workers need not each start pyarrow pools of a thread per CPU
    # (with affinity those threads would share the worker's one core anyway). Measured in the
    # direct-read prototype (2 workers, 2 cores) it changes nothing either way. (What made pyarrow
    # partials look slow in workers there was the first group_by of a process, which imports
    # pyarrow.acero and pyarrow.dataset: ~0.16 s, then ~2x faster than DuckDB's GROUP BY.)
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    threading.Thread(
        target=_exit_with_parent, args=(files,), name="velosql-parent-watch", daemon=True
    ).start()
    outbox: queue.SimpleQueue = queue.SimpleQueue()
    sender = threading.Thread(target=_send_replies, args=(conn, outbox), name="velosql-replies", daemon=True)
    sender.start()
    con = None
    try:
        try:
            con = duckdb.connect(config={"threads": 1})
            # No progress bar: a worker answers only through its pipe (see worker_boot._no_stdout).
            con.execute("SET enable_progress_bar = false")
        except Exception as exc:
            outbox.put(((False, "start", 0.0, False, f"{type(exc).__name__}: {exc}"), None))
            return
        started = (os.getpid(), cores, affinity_error, pa.cpu_count(), pa.io_thread_count())
        outbox.put(((True, "start", 0.0, False, started), None))
        _serve(conn, con, outbox, files)
    finally:
        outbox.put(None)
        sender.join()
        if con is not None:
            con.close()
        conn.close()
    # Stopped cleanly: skip the interpreter's teardown of DuckDB, pyarrow and numpy (~40 ms of
    # every V2 job's stop, measured on 2 workers). Everything of ours is closed above.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _serve(
    conn: Connection, con: duckdb.DuckDBPyConnection, outbox: queue.SimpleQueue, files: str | None
) -> None:
    """Answer requests in order until a stop message, or until the parent closes the pipe.

    A large result goes back as a file in the pool's directory (see :mod:`.protocol`);
    the header names it, and the parent maps and removes it.
    """
    state: dict = {}  # what Call functions keep between calls
    replies = 0
    while True:
        try:
            kind, data = pickle.loads(conn.recv_bytes())
            payload = recv_bytes(conn) if kind == "batch" else None
        except (EOFError, OSError):
            return
        if kind == "stop":
            return
        started = time.perf_counter()
        try:
            value, table = _handle(con, kind, data, payload, state)
            reply, table_at = None, table is not None  # where the table goes: see protocol
            if table is not None and files is not None and table.num_rows >= FILE_MIN_ROWS:
                replies += 1
                table_at = os.path.join(files, f"reply-{os.getpid()}-{replies}.arrow")
                write_ipc_file(table_at, table)
            elif table is not None:
                reply = ipc_buffer(table)
            header = (True, kind, time.perf_counter() - started, table_at, value)
        except Exception as exc:
            reply = None
            header = (False, kind, time.perf_counter() - started, False, f"{type(exc).__name__}: {exc}")
        outbox.put((header, reply))


def _handle(con: duckdb.DuckDBPyConnection, kind: str, data: Any, payload: bytes | None, state: dict):
    """Run one request; return the value to send back and the result table, if any."""
    if kind == "setup":
        for statement in data:
            con.execute(statement)
            con.complete()  # a result left pending would block the connection
        return None, None
    if kind == "marker":
        return data, None
    if kind == "query":
        return None, _run(con, *data, state)
    if kind == "call":
        return _call(con, state, *data)
    if kind == "batch":
        sql, result, name = data
        with _registered(con, name, payload):
            return None, _run(con, sql, result, state)
    if kind == "batch_part":
        sql, result, path, column, me = data
        with pa.memory_map(path) as source, _registered(con, "__all", source):
            con.execute(
                f'CREATE OR REPLACE TEMP VIEW __in AS SELECT * EXCLUDE ("{column}") FROM __all '
                f'WHERE "{column}" = {int(me)}'
            )
            try:
                return None, _run(con, sql, result, state)
            finally:
                con.execute("DROP VIEW IF EXISTS __in")
    if kind == "batch_file":
        sql, result, path, name = data
        try:
            # The batch's buffers are the mapped file: no copy.
            with pa.memory_map(path) as source, _registered(con, name, source):
                return None, _run(con, sql, result, state)
        finally:
            os.unlink(path)
    raise ValueError(f"Unknown worker request kind {kind!r}.")


@contextlib.contextmanager
def _registered(con: duckdb.DuckDBPyConnection, name: str, ipc):
    """The Arrow IPC stream ``ipc`` (a buffer or a mapped file) as the table ``name`` for the block."""
    con.register(name, pa.ipc.open_stream(ipc).read_all())
    try:
        yield
    finally:
        con.unregister(name)


def _call(con: duckdb.DuckDBPyConnection, state: dict, function: str, arg: Any):
    """Run a :class:`Call`'s function; it returns ``(value, table or None)``."""
    module, _, name = function.partition(":")
    return getattr(importlib.import_module(module), name)(con, state, arg)


def _run(con: duckdb.DuckDBPyConnection, sql, result: int, state: dict) -> pa.Table:
    """Run one statement or several in order; the result of statement ``result`` as Arrow."""
    if isinstance(sql, str):
        return con.sql(sql).to_arrow_table()
    statements = (sql,) if isinstance(sql, Call) else sql
    out = None
    for i, statement in enumerate(statements):
        if isinstance(statement, Call):
            table = _call(con, state, statement.function, statement.arg)[1]
            if i == result % len(statements):
                out = table
        elif i == result % len(statements):
            out = con.sql(statement).to_arrow_table()
        else:
            con.execute(statement)
            con.complete()
    return out


def _send_replies(conn: Connection, outbox: queue.SimpleQueue) -> None:
    """The reply thread: write queued replies in order until ``None`` or the parent is gone."""
    while (item := outbox.get()) is not None:
        header, payload = item
        try:
            conn.send_bytes(pickle.dumps(header))
            if payload is not None:
                conn.send_bytes(payload)
        except OSError:
            return  # the parent closed its end; the main thread will read EOF and exit


def _exit_with_parent(files: str | None) -> None:
    """Exit as soon as the parent process is gone, even while the main thread runs a query.

    A parent that died could not remove the pool's directory of batch files in ``/dev/shm``
    (memory): the workers remove it (each tries; the others find it gone).
    """
    parent = multiprocessing.parent_process()
    if parent is not None:
        wait([parent.sentinel])
        if files is not None:
            shutil.rmtree(files, ignore_errors=True)
        os._exit(0)


def _pin(core: int) -> tuple[tuple[int, ...] | None, str | None]:
    """Pin this process to ``core``; the cores it now runs on, or ``None`` and why it could not."""
    import psutil

    try:
        process = psutil.Process()
        process.cpu_affinity([core])
        if hasattr(os, "sched_setaffinity"):
            # Linux pins one thread at a time, and importing pyarrow has already started threads.
            for thread in process.threads():
                with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                    os.sched_setaffinity(thread.id, {core})
        return tuple(process.cpu_affinity()), None
    except (AttributeError, NotImplementedError, OSError, ValueError, psutil.Error) as exc:
        return None, f"Could not pin to core {core}: {type(exc).__name__}: {exc}"
