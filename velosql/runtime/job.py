"""A running streaming statement: its thread, status, metrics and stop."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from ..errors import JobError, VelosqlError
from ..plan.planner import StreamPlan
from .watermark import NOT_YET

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

    def prepare(self) -> None:
        if self.plan.inputs:
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
        try:
            self.processor.run(self)
            stopped = self.stop_event.is_set() and not self.limit_reached
            self.status = STOPPED if stopped else FINISHED
        except BaseException as exc:  # noqa: BLE001 - reported through status/wait()
            self.error = exc
            self.status = FAILED
        finally:
            self.metrics_data.finished = time.monotonic()
            self._done.set()

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

    def stop(self, timeout: float | None = 30) -> None:
        """Stop reading, flush what was read (EMIT FINAL windows still open are emitted), end."""
        if self.status in (STARTING, RUNNING):
            self.status = STOPPING
        self.stop_event.set()
        self._done.wait(timeout)

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
