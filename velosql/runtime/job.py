"""A running streaming statement: its thread, status, metrics and stop."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field

from ..errors import JobError, VelosqlError
from ..plan.planner import StreamPlan
from .watermark import NOT_YET

_log = logging.getLogger("velosql")

# How long a stopped job may take to flush, unless its statement or the engine says otherwise.
DEFAULT_STOP_TIMEOUT = 10.0
# After the stop timeout, how long a job whose blocked sinks were told to give up may take to end
# before it is abandoned as it is.
GRACE_SECONDS = 1.0

STARTING, RUNNING, STOPPING, STOPPED, FINISHED, FAILED = (
    "Starting",
    "Running",
    "Stopping",
    "Stopped",
    "Finished",
    "Error",
)


@dataclass
class Metrics:
    """Counters a job updates as it runs (read without locks: each is one attribute write)."""

    records_in: int = 0
    records_out: int = 0
    batches: int = 0
    late_rows: int = 0
    dead_letters: int = 0
    sink_retries: int = 0
    watermark: int | None = None
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    busy_seconds: float = 0.0
    waiting_seconds: float = 0.0
    sink_seconds: float = 0.0  # part of busy_seconds: writing to the sinks (a slow sink shows here)
    # Jobs with a state location: when the checkpoint being taken began, and (begin, end) of the
    # last one committed, both time.monotonic() (one attribute each: read whole, never torn).
    checkpoint_started: float | None = None
    checkpoint: tuple[float, float] | None = None

    def as_dict(self) -> dict:
        elapsed = (self.finished or time.monotonic()) - self.started
        wm = self.watermark
        return {
            "records_in": self.records_in,
            "records_out": self.records_out,
            "batches": self.batches,
            "late_rows": self.late_rows,
            "dead_letters": self.dead_letters,
            "sink_retries": self.sink_retries,
            "watermark": format_watermark(wm),
            "elapsed_seconds": round(elapsed, 3),
            "records_per_second": round(self.records_in / elapsed) if elapsed > 0 else 0,
            "busy_seconds": round(self.busy_seconds, 3),
            "waiting_seconds": round(self.waiting_seconds, 3),
            "sink_seconds": round(self.sink_seconds, 3),
        }


def format_watermark(wm: int | None) -> str | None:
    """A watermark as text: a timestamp, ``"end of input"``, or None before the first one."""
    if wm is None or wm <= NOT_YET:  # no partition delivered yet, or one is still awaited
        return None
    if wm >= 2**62:
        return "end of input"
    import datetime as dt

    return (dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=wm)).isoformat(sep=" ")


class Job:
    """One deployed streaming statement.

    Created by the engine, which calls :meth:`prepare` (opens the source, binds the SQL to its
    schema, opens the sinks — errors surface here, before anything runs) and then :meth:`start`.

    A stop (:meth:`request_stop`, :meth:`stop`) ends the job within its stop timeout (the
    statement's ``'stop.timeout'``, else the engine's, else :data:`DEFAULT_STOP_TIMEOUT`) and a
    grace: the job stops reading and flushes; if it is still running when the timeout passes, its
    sinks are told to give up a blocked write (:meth:`~velosql.connectors.base.Sink.abort`), and
    after :data:`GRACE_SECONDS` more a job still running is abandoned as it is. Either way it ends
    ``Stopped`` and :attr:`unflushed` (also logged as a warning) says what was not written.
    """

    def __init__(self, plan: StreamPlan, engine, processor) -> None:
        self.plan = plan
        self.name = plan.name
        self.engine = engine
        self.processor = processor
        self.metrics_data = Metrics()
        self.stop_event = threading.Event()
        self.status = STARTING
        self.error: BaseException | None = None
        self.executor = None
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self.limit_reached = False
        option = plan.job_options.get("stop.timeout")  # microseconds
        self.stop_timeout: float = (
            option / 1e6 if option is not None else getattr(engine, "stop_timeout", DEFAULT_STOP_TIMEOUT)
        )
        # What a stop that timed out left unwritten (None: the job flushed everything it had).
        self.unflushed: str | None = None
        self._ending = threading.Lock()  # the job thread and the stop watchdog each may end the job
        self._watchdog: threading.Timer | None = None
        self._aborted = False  # the stop timeout passed and the sinks were told to give up

    def prepare(self) -> None:
        from .group import is_group_plan

        if is_group_plan(self.plan):
            from .group import GroupExecutor as executor
        elif self.plan.inputs:
            from .multi import MultiInputExecutor as executor
        elif self.processor.processor_version() == "V2":
            from .v2 import V2Executor as executor
        else:
            from .v1 import V1Executor as executor
        self.executor = executor(self)
        self.executor.prepare()

    def start(self) -> None:
        self.status = RUNNING
        self.metrics_data.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"velosql-job-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        status, error, unflushed = FINISHED, None, None
        try:
            self.processor.run(self)
            if self.stop_event.is_set() and not self.limit_reached:
                status = STOPPED
        except BaseException as exc:  # noqa: BLE001 - reported through status/wait()
            if self._aborted:  # a blocked sink gave up because the stop timed out
                status, unflushed = STOPPED, self._unwritten(str(exc))
            else:
                status, error = FAILED, exc
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
            self._end(status, error, unflushed)

    def _end(self, status: str, error: BaseException | None, unflushed: str | None) -> None:
        """Record how the job ended, once (the job thread, or the watchdog abandoning it)."""
        with self._ending:
            if self._done.is_set():
                return
            self.status, self.error, self.unflushed = status, error, unflushed
            self.metrics_data.finished = time.monotonic()
            self._done.set()
        if unflushed is not None:
            _log.warning("velosql: %s", unflushed)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the job ends; True if it ended. Raises :class:`JobError` if it failed."""
        ended = self._done.wait(timeout)
        if ended and self.error is not None:
            if isinstance(self.error, VelosqlError):
                raise self.error
            raise JobError(f"job {self.name!r} failed: {self.error}") from self.error
        return ended

    def request_stop(self) -> None:
        """Ask the job to stop reading, flush and end; return at once. The stop timeout starts."""
        with self._ending:
            if self._done.is_set():
                return
            if self.status in (STARTING, RUNNING):
                self.status = STOPPING
            self.stop_event.set()
            if self._watchdog is None and self._thread is not None:
                self._watchdog = threading.Timer(self.stop_timeout, self._abandon)
                self._watchdog.name = f"velosql-stop-{self.name}"
                self._watchdog.daemon = True
                self._watchdog.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop reading, flush what was read (EMIT FINAL windows still open are emitted), end.

        Waits until the job has ended, at most ``timeout`` seconds; by default as long as the job
        may take (its stop timeout and the grace), after which it has ended whatever its sinks do.
        """
        self.request_stop()
        self._done.wait(self.stop_timeout + 2 * GRACE_SECONDS if timeout is None else timeout)

    def _abandon(self) -> None:
        """The stop timeout passed: tell the sinks to give up a blocked write, then, if the job
        still runs after the grace, record it as ended without waiting for its thread."""
        if self._done.is_set():
            return
        self._aborted = True
        sinks = list(getattr(self.executor, "sinks", None) or [])
        for sink in sinks:
            with contextlib.suppress(Exception):
                sink.abort()
        if self._done.wait(GRACE_SECONDS):
            return
        where = ", ".join(s.describe() for s in sinks) or "no sink"
        self._end(
            STOPPED,
            None,
            self._unwritten(f"it was abandoned while still running (its sinks: {where})"),
        )

    def _unwritten(self, detail: str) -> str:
        """The warning of a stop that timed out: which job, the timeout, what was not written."""
        detail = detail.removeprefix(f"job {self.name!r}: ")
        return (
            f"job {self.name!r} did not finish flushing within its stop.timeout of "
            f"{self.stop_timeout:g} s: {detail}; those rows, and any the job had still to emit, "
            f"were not written"
        )

    def metrics(self) -> dict:
        data = self.metrics_data.as_dict()
        data.update(
            name=self.name,
            status=self.status,
            processor=self.processor.description(),
        )
        share = getattr(self.executor, "progress", None)
        data["progress"] = share() if share is not None else None
        partitions = getattr(self.executor, "partition_metrics", None)
        if partitions is not None:
            data["partitions"] = parts = partitions()
            # Skew: the busiest worker's rows over the mean (1.0 is an even spread).
            rows = [p["records_in"] for p in parts]
            data["skew"] = round(max(rows) * len(rows) / sum(rows), 2) if sum(rows) else None
            # The fixed cost a V2 job pays before its first row (None: the job runs no workers).
            data["workers_start_seconds"] = self.executor.workers_start_seconds()
        return data

    def __repr__(self) -> str:
        return f"<Job {self.name} {self.status}>"
