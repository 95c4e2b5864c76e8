"""The job's side of V2's worker processes: a pool of N spawned workers, one DuckDB connection each.

A :class:`WorkerPool` starts N worker processes with the ``spawn`` method (never ``fork`` once DuckDB
or librdkafka threads exist). Worker *i* serves partition *i*: it owns one ``threads=1`` DuckDB
connection and runs the SQL it is sent; it plans nothing (:mod:`.worker`). Parent and worker share
nothing but messages over one duplex pipe; the requests, their replies and how they travel are in
:mod:`.protocol`.

Lifecycle: the V2 executor's job thread creates the pool, uses it and closes it; the pool is used
by one thread at a time.

- The constructor blocks until every worker has started (at most ``start_timeout`` seconds) and
  has run ``setup``.
- :meth:`WorkerPool.send` blocks while it collects replies to make room (see flow control below)
  and while it writes to the worker's pipe; :meth:`WorkerPool.scatter` writes and reads no reply.
  :meth:`WorkerPool.receive` and :meth:`WorkerPool.drain` block for replies, each at most
  ``timeout`` seconds. :meth:`WorkerPool.check`, :meth:`WorkerPool.outstanding` and
  :meth:`WorkerPool.metrics` never block.
- :meth:`WorkerPool.close` blocks until every worker has exited.

Flow control: at most ``max_in_flight`` requests per worker are outstanding (sent but not yet
returned to the caller). :meth:`WorkerPool.send` first collects the oldest replies to make room and
returns them. So at most that many requests and replies per worker are queued in its pipe or
process, and a slow worker slows its sender. This is backpressure, not dropping.

Failures never hang and never leave a process behind:

- An exception in a worker is sent back and raised as :class:`~velosql.errors.JobError`, naming the
  partition, the request and DuckDB's message. The worker stays usable.
- A worker that dies (killed, crashed, ``os._exit``) is seen through its process sentinel and
  raised as :class:`~velosql.errors.WorkerError`, naming the partition and its exit code or signal.
- :meth:`WorkerPool.close` (also called on leaving the ``with`` block, on garbage collection and at
  interpreter exit) asks each worker to stop, then terminates and finally kills it. Workers are
  daemonic, ignore SIGINT (the parent owns Ctrl-C), and exit by themselves once the parent process
  is gone, even in the middle of a query.

Workers never write to the job's stdout (it is the null device in them, and their DuckDB draws no
progress bar): with ``velosql run app.sql | reader`` and a reader that waits for the end, a worker
blocked writing to a full pipe would hang the job. Their stderr is the job's, for the traceback of
a worker that crashes; errors themselves come back as replies or exit codes, as above.

A script that creates a pool needs no ``if __name__ == "__main__":`` guard, though ``spawn``
normally imports the main module in each child: workers start without it (``_main_not_imported``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import multiprocessing
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

import pyarrow as pa

from ..errors import ConfigError, InvalidPartitionCountError, JobError, WorkerError
from . import worker_boot
from .protocol import (
    FILE_MIN_BYTES,
    FILE_MIN_ROWS,
    STOP,
    Batch,
    Reply,
    Request,
    Setup,
    describe,
    encode,
    recv_bytes,
    write_ipc_file,
)

__all__ = ["WorkerMetrics", "WorkerPool"]


@dataclass
class WorkerMetrics:
    """Counters for one worker. :meth:`WorkerPool.metrics` returns copies.

    Attributes:
        partition: The worker's index.
        pid: Its process id.
        cores: The CPUs it is pinned to, or ``None`` when it runs unpinned.
        affinity_error: Why pinning was asked for but impossible, else ``None``.
        requests: Requests sent to it.
        rows_sent: Rows of :class:`Batch` tables sent to it.
        busy_seconds: Time it spent on requests, measured in the worker.
        wait_seconds: Time the parent was blocked on its pipe, writing requests or awaiting replies.
        pyarrow_threads: The sizes of its pyarrow CPU and I/O thread pools, both 1.
    """

    partition: int
    pid: int
    cores: tuple[int, ...] | None = None
    affinity_error: str | None = None
    requests: int = 0
    rows_sent: int = 0
    busy_seconds: float = 0.0
    wait_seconds: float = 0.0
    pyarrow_threads: tuple[int, ...] = ()  # its pyarrow CPU and I/O pool sizes (1 and 1)


class _Worker:
    """The parent's side of one worker: its process, pipe end, unanswered requests and metrics."""

    __slots__ = ("process", "conn", "pending", "shared", "metrics", "failure")

    def __init__(self, process, conn: Connection, metrics: WorkerMetrics) -> None:
        self.process = process
        self.conn = conn
        self.pending: collections.deque[str] = collections.deque()  # descriptions, oldest first
        self.shared: collections.deque[str | None] = collections.deque()  # each request's shared file
        self.metrics = metrics
        self.failure: JobError | None = None  # set once the worker is dead or its pipe unusable


class WorkerPool:
    """N worker processes, each with one ``threads=1`` DuckDB connection (see the module docstring).

    The pool is used by one thread at a time. Each worker answers its own requests in order; there
    is no ordering between workers.

    Args:
        num_workers: How many workers (partitions) to start; at least 1.
        setup: Statements every worker runs once before this constructor returns.
        max_in_flight: The most requests outstanding per worker; at least 1.
        affinity: Pin worker *i* to core ``cores[i % len(cores)]``, where ``cores`` are the CPUs this
            process may use. If pinning is impossible, the worker runs unpinned and
            :attr:`WorkerMetrics.affinity_error` records why.
        timeout: The longest wait for one reply, in seconds; ``None`` waits as long as the worker
            lives.
        start_timeout: The longest wait for all workers to start.
        stop_timeout: How long :meth:`close` waits after each step (stop, terminate) before it
            takes the next.

    Raises:
        JobError: A worker failed to start or a setup statement failed; no worker is left running.

    Attributes:
        start_seconds: How long the workers took to start, all at once (spawn, imports, connect):
            the fixed cost of every V2 job.
    """

    def __init__(
        self,
        num_workers: int,
        *,
        setup: Sequence[str] = (),
        max_in_flight: int = 2,
        affinity: bool = False,
        timeout: float | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 5.0,
    ) -> None:
        if not isinstance(num_workers, int) or num_workers < 1:
            raise InvalidPartitionCountError(f"Invalid partition count: {num_workers!r}")
        if not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be an integer of at least 1, not {max_in_flight!r}.")
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.start_seconds = 0.0  # from here until every worker has started (before ``setup``)
        began = time.perf_counter()
        self._workers: list[_Worker] = []
        # Holds the worker list, not the pool, so it still runs if the pool is never closed.
        # Large batches travel as Arrow IPC files in memory (tmpfs) rather than through the pipe,
        # which measured ~33 ms per 11 MB batch in a busy job: one copy in, none out (the worker
        # maps the file). The directory goes with the pool.
        self._files = tempfile.mkdtemp(
            prefix="velosql-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
        )
        self._sent_files = 0
        self._shared: dict[str, int] = {}  # scattered batch file -> workers yet to reply
        self._finalizer = weakref.finalize(self, _shutdown, self._workers, stop_timeout, self._files)
        cores, reason = _allowed_cores() if affinity else (None, None)
        ctx = multiprocessing.get_context("spawn")
        try:
            for i in range(num_workers):
                core = cores[i % len(cores)] if cores else None
                parent_end, child_end = ctx.Pipe(duplex=True)
                process = ctx.Process(
                    target=worker_boot.main,
                    args=(child_end, core, self._files),
                    name=f"velosql-worker-{i}",
                    daemon=True,
                )
                try:
                    with _main_not_imported():
                        process.start()
                finally:
                    child_end.close()  # only the worker holds it now, so its death reads as EOF here
                worker = _Worker(process, parent_end, WorkerMetrics(i, process.pid, affinity_error=reason))
                worker.pending.append("its start-up")
                worker.shared.append(None)
                self._workers.append(worker)
            deadline = time.monotonic() + start_timeout
            for worker in self._workers:
                _, cores_set, error, *threads = self._read(
                    worker, max(0.0, deadline - time.monotonic())
                ).value
                worker.metrics.pyarrow_threads = tuple(threads)
                worker.metrics.cores = cores_set
                worker.metrics.affinity_error = worker.metrics.affinity_error or error
                worker.metrics.wait_seconds = 0.0  # starting is not waiting on work
            self.start_seconds = time.perf_counter() - began
            if setup:
                self.broadcast(Setup(tuple(setup)))
                for i in range(num_workers):
                    self.drain(i)
        except BaseException:
            self.close()
            raise

    # ---- requests ---------------------------------------------------------------------------

    def send(self, partition: int, request: Request) -> list[Reply]:
        """Send ``request`` to worker ``partition``; return the replies collected to make room.

        With ``max_in_flight`` requests already outstanding, the oldest replies are read first.
        They are returned oldest first and are not returned again by :meth:`receive`. Usually the
        list is empty or has one reply.

        Raises:
            JobError: A reply collected here reports an error, or the timeout passed.
            WorkerError: The worker died.
        """
        worker = self._worker(partition)
        replies = []
        while len(worker.pending) >= self.max_in_flight:
            replies.append(self._read(worker, self.timeout))
        if isinstance(request, Batch) and (
            request.table.num_rows >= FILE_MIN_ROWS or request.table.nbytes >= FILE_MIN_BYTES
        ):
            self._sent_files += 1
            path = os.path.join(self._files, f"{partition}-{self._sent_files}.arrow")
            started = time.perf_counter()
            write_ipc_file(path, request.table)
            worker.metrics.wait_seconds += time.perf_counter() - started
            header, payload, rows = (
                pickle.dumps(("batch_file", (request.sql, request.result, path, request.name))),
                None,
                request.table.num_rows,
            )
        else:
            header, payload, rows = encode(request)
        self._transmit(worker, header, payload, describe(request), None)
        worker.metrics.rows_sent += rows
        return replies

    def scatter(
        self,
        table: pa.Table,
        column: str,
        partitions: Sequence[int],
        sql: str | tuple[str, ...],
        result: int = -1,
    ) -> None:
        """Send each worker in ``partitions`` the rows of ``table`` whose ``column`` holds its
        number, as a :class:`Batch` of them (without ``column``) would, through one file they all map.

        The job writes the batch once instead of splitting it and writing each part: the workers
        select their rows (a DuckDB filter on the mapped file, in parallel). The file is removed
        once every one of them has replied. Call only with room on each worker (fewer than
        ``max_in_flight`` requests outstanding): it reads no reply.

        Raises:
            WorkerError: A worker died.
        """
        self._sent_files += 1
        path = os.path.join(self._files, f"shared-{self._sent_files}.arrow")
        write_ipc_file(path, table)
        self._shared[path] = len(partitions)
        what = describe(Batch(table, sql, result))
        for i in partitions:
            header = pickle.dumps(("batch_part", (sql, result, path, column, i)))
            self._transmit(self._worker(i), header, None, what, path)

    def _transmit(
        self, worker: _Worker, header: bytes, payload: pa.Buffer | None, what: str, shared: str | None
    ) -> None:
        """Write one request to the worker's pipe and record it as outstanding."""
        started = time.perf_counter()
        try:
            worker.conn.send_bytes(header)
            if payload is not None:
                worker.conn.send_bytes(payload)
        except OSError:
            raise self._lost(worker) from None
        except BaseException:
            self._interrupted(worker)
            raise
        finally:
            worker.metrics.wait_seconds += time.perf_counter() - started
        worker.pending.append(what)
        worker.shared.append(shared)
        worker.metrics.requests += 1

    def broadcast(self, request: Request) -> list[Reply]:
        """:meth:`send` ``request`` to every worker; return the replies collected, worker by worker."""
        return [reply for i in range(len(self._workers)) for reply in self.send(i, request)]

    def receive(self, partition: int, timeout: float | None = None) -> Reply:
        """The next reply from worker ``partition``, waiting at most ``timeout`` seconds.

        ``timeout=None`` uses the pool's timeout. A timeout consumes nothing, so waiting may be
        resumed.

        Raises:
            JobError: Nothing is outstanding, the reply reports an error, or the timeout passed.
            WorkerError: The worker died.
        """
        worker = self._worker(partition)
        if not worker.pending:
            raise JobError(f"Partition {partition} has no outstanding request to receive a reply for.")
        return self._read(worker, self.timeout if timeout is None else timeout)

    def drain(self, partition: int) -> list[Reply]:
        """Every outstanding reply from worker ``partition``, oldest first (see :meth:`receive`)."""
        worker = self._worker(partition)
        return [self._read(worker, self.timeout) for _ in range(len(worker.pending))]

    def ready(self, partitions: Sequence[int], timeout: float | None = None) -> list[int]:
        """Those of ``partitions`` whose next reply has arrived (or that died: :meth:`receive`
        then raises), waiting up to ``timeout`` seconds (``None``: the pool's) for the first. It
        reads nothing, so a caller can take replies in the order workers answer (the V2 job
        reading Kafka: a worker waiting for messages must not hold up the others' replies).

        Raises:
            JobError: None of them answered within the timeout.
        """
        watched = {}
        for i in partitions:
            worker = self._worker(i)
            watched[worker.conn] = watched[worker.process.sentinel] = i
        timeout = self.timeout if timeout is None else timeout
        found = wait(list(watched), timeout)
        if not found:
            raise JobError(f"No partition of {list(partitions)} replied within {timeout:g} s.")
        return sorted({watched[x] for x in found})

    def outstanding(self, partition: int) -> int:
        """How many requests to worker ``partition`` have no reply returned yet."""
        return len(self._worker(partition).pending)

    def check(self) -> None:
        """Raise :class:`WorkerError` for a worker that has died, even one with nothing outstanding.

        A job calls this while its source is idle, so a worker killed between requests fails the
        job at once instead of at the next micro-batch.
        """
        for i in range(len(self._workers)):
            worker = self._worker(i)
            if worker.process.exitcode is not None:
                raise self._lost(worker)

    def metrics(self) -> list[WorkerMetrics]:
        """A copy of each worker's counters, by partition."""
        return [dataclasses.replace(w.metrics) for w in self._workers]

    def __len__(self) -> int:
        return len(self._workers)

    # ---- lifecycle --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return not self._finalizer.alive

    def close(self) -> None:
        """Stop every worker and wait for it to exit; idempotent.

        Unread replies are discarded. Each worker gets a stop message, then ``stop_timeout``
        seconds to exit, then SIGTERM, then SIGKILL.
        """
        self._finalizer()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---- internals --------------------------------------------------------------------------

    def _worker(self, partition: int) -> _Worker:
        if self.closed:
            raise JobError("The worker pool is closed.")
        if not 0 <= partition < len(self._workers):
            raise IndexError(f"Partition {partition} does not exist; the pool has {len(self._workers)}.")
        worker = self._workers[partition]
        if worker.failure is not None:
            raise worker.failure
        return worker

    def _read(self, worker: _Worker, timeout: float | None) -> Reply:
        """Read the worker's next reply, or raise its error, its death or a timeout."""
        index = worker.metrics.partition
        started = time.perf_counter()
        try:
            ready = wait([worker.conn, worker.process.sentinel], timeout)
            if not ready:
                raise JobError(
                    f"Partition {index} did not reply within {timeout:g} s to {worker.pending[0]}."
                )
            # Read data first: a worker may have sent a reply and then exited.
            if worker.conn not in ready and not worker.conn.poll():
                raise self._lost(worker)
            try:
                # table_at: where the reply's table is: False (none), True (next in the pipe), or
                # the path of the file the worker wrote it to.
                ok, kind, busy, table_at, value = pickle.loads(worker.conn.recv_bytes())
                payload = recv_bytes(worker.conn) if table_at is True else None
            except (EOFError, OSError):
                raise self._lost(worker) from None
            except BaseException:
                self._interrupted(worker)
                raise
        finally:
            worker.metrics.wait_seconds += time.perf_counter() - started
        request = worker.pending.popleft()
        shared = worker.shared.popleft()
        if shared is not None:  # the last reader of a scattered batch removes its file
            self._shared[shared] -= 1
            if not self._shared[shared]:
                del self._shared[shared]
                os.unlink(shared)
        worker.metrics.busy_seconds += busy
        if not ok:
            raise JobError(f"Partition {index} failed running {request}: {value}")
        table = None if payload is None else pa.ipc.open_stream(payload).read_all()
        if isinstance(table_at, str):
            # A large result, written by the worker into a file in memory: mapping it costs no
            # copy, where the pipe cost two and a write per 64 KiB (a filter's output, ~90 MB a
            # worker at 20M rows). The mapping outlives the file's name.
            with pa.memory_map(table_at) as source:
                table = pa.ipc.open_stream(source).read_all()
            os.unlink(table_at)
        return Reply(index, kind, table, value, busy)

    def _lost(self, worker: _Worker) -> WorkerError:
        """Record and return the error for a worker whose pipe broke: it died, or is killed now."""
        process, index = worker.process, worker.metrics.partition
        process.join(_REAP_SECONDS)  # its pipe closes a moment before it can be reaped
        if process.exitcode is None:
            process.kill()
            process.join(_REAP_SECONDS)
            cause = "closed its pipe while still running, and was killed"
        else:
            cause = _describe_exit(process.exitcode)
        unanswered = len(worker.pending)
        worker.failure = WorkerError(
            f"Partition {index} worker (pid {worker.metrics.pid}) {cause}; "
            f"{unanswered} request(s) were left unanswered."
        )
        return worker.failure

    def _interrupted(self, worker: _Worker) -> None:
        """Refuse further use of a pipe that an exception (Ctrl-C) left in the middle of a message."""
        worker.failure = JobError(
            f"Partition {worker.metrics.partition}'s pipe was interrupted in the middle of a message; "
            "the pool can only be closed."
        )


_REAP_SECONDS = 5.0


_START_LOCK = threading.Lock()


def worker_identity(m: WorkerMetrics) -> dict:
    """Which worker ``m`` describes, as a row of a job's partition metrics begins."""
    return {
        "partition": m.partition,
        "pid": m.pid,
        "cores": list(m.cores) if m.cores is not None else None,
        "affinity_error": m.affinity_error,
    }


@contextlib.contextmanager
def _main_not_imported():
    """Start a worker without it importing the parent's ``__main__``.

    ``spawn`` re-imports the main script in each child so that pickled functions of it resolve;
    a worker needs none of it, and importing it would run a script without the
    ``if __name__ == "__main__":`` guard a second time (or fail for ``python - < script``). The
    main module's ``__spec__`` and ``__file__``, which tell ``spawn`` what to import, are hidden
    while the process starts.
    """
    main = sys.modules.get("__main__")
    with _START_LOCK:
        saved = {
            k: main.__dict__[k] for k in ("__spec__", "__file__") if main is not None and k in main.__dict__
        }
        try:
            if main is not None:
                main.__dict__.pop("__file__", None)
                main.__spec__ = None
            yield
        finally:
            if main is not None:
                main.__dict__.pop("__spec__", None)
                main.__dict__.update(saved)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "an unknown signal"
        return f"was killed by {name} (signal {-code})"
    return f"exited with code {code}"


def _allowed_cores() -> tuple[list[int] | None, str | None]:
    """The CPUs this process may run on, sorted, or ``None`` and the reason they are unknown."""
    import psutil  # here: only affinity needs it

    try:
        return sorted(psutil.Process().cpu_affinity()), None
    except (AttributeError, NotImplementedError, OSError, psutil.Error) as exc:
        # macOS has no cpu_affinity; some sandboxes refuse the call.
        return None, f"CPU affinity is unavailable: {type(exc).__name__}: {exc}"


def _shutdown(workers: list[_Worker], stop_timeout: float, files: str | None = None) -> None:
    """Stop, then terminate, then kill every worker, and release their pipes, sentinels and files."""
    for worker in workers:
        if worker.conn.closed:
            continue
        try:
            # Never block here: a worker busy on a query may not read its full pipe.
            os.set_blocking(worker.conn.fileno(), False)
            worker.conn.send_bytes(STOP)
        except (OSError, ValueError):
            pass  # it is dead or its pipe is full; terminate below
        # Closing our end also ends the worker's reply thread if it is blocked writing to us.
        worker.conn.close()
    for escalate in (None, "terminate", "kill"):
        deadline = time.monotonic() + stop_timeout
        for worker in workers:
            if escalate and worker.process.exitcode is None:
                getattr(worker.process, escalate)()
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        if all(worker.process.exitcode is not None for worker in workers):
            break
    for worker in workers:
        if worker.process.exitcode is not None:
            worker.process.close()
    if files is not None:
        shutil.rmtree(files, ignore_errors=True)
