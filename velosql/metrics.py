"""The jobs' metrics in Prometheus' text exposition format (0.0.4), for ``velosql serve``'s ``/metrics``.

The metrics are declared once in :data:`METRICS` (name, type, labels, help, and the function
giving the samples); the exposition and the docs' list (``docs/serve.md``, which
``tests/test_docs.py`` keeps equal to :func:`markdown`) both come from that table.

Every value is read the way the system tables read theirs (``velosql/system.py``): their row
functions give the rows of ``velosql_jobs``, ``velosql_partitions`` and ``velosql_watermarks``
from Python attributes the jobs update as they run, without locks and without DuckDB, so a scrape
never waits for a job nor takes the engine's connection. Beyond the tables it reads each job's
last checkpoint (its metrics' ``checkpoint``), the positions it keeps in each source partition,
and the lag of sources that report one (``source.lag()`` → ``{partition: messages behind}``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from . import system

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_EPOCH = dt.datetime(1970, 1, 1)


def seconds(ts: dt.datetime | None) -> float | None:
    """A system table's TIMESTAMP (UTC, naive) as seconds since the epoch."""
    return None if ts is None else (ts - _EPOCH).total_seconds()


class Scrape:
    """What one scrape reads, once: the system tables' rows and the jobs they describe."""

    def __init__(self, engine) -> None:
        self.now = time.monotonic()
        self.jobs = {job.name: job for job in engine.jobs()}
        self.job_rows = _read(engine, "velosql_jobs")
        self.partition_rows = _read(engine, "velosql_partitions")
        self.watermark_rows = _read(engine, "velosql_watermarks")

    def checkpoint(self, name: str) -> dict | None:
        """The job's last checkpoint: epoch, age and duration in seconds; None before the first."""
        job = self.jobs.get(name)
        last = job.metrics_data.checkpoint if job is not None else None
        if last is None:
            return None
        begun, ended = last
        return {
            "epoch": getattr(job.executor, "epoch", None),
            "age_seconds": round(self.now - ended, 3),
            "duration_seconds": round(ended - begun, 6),
        }

    def sources(self, name: str) -> Iterator[tuple[str, object, object]]:
        """(source name, source object, executor) for each source of job ``name``."""
        job = self.jobs.get(name)
        executor = getattr(job, "executor", None)
        if executor is None:
            return
        plan = job.plan
        names = [i.source.name for i in plan.inputs] if plan.inputs else [plan.source.name]
        objects = getattr(executor, "sources", None) or [getattr(executor, "source", None)]
        for source_name, source in zip(names, objects):
            yield source_name, source, executor


def _read(engine, name: str) -> list[dict]:
    return next(t for t in system.TABLES if t.name == name).read(engine)


# ---- samples: (label values, value) --------------------------------------------------------------

Sample = tuple[tuple[str, ...], float]


def _job_field(key: str) -> Callable[[Scrape], Iterator[Sample]]:
    def samples(s: Scrape) -> Iterator[Sample]:
        for row in s.job_rows:
            if row[key] is not None:
                yield (row["name"],), row[key]

    return samples


def _job_info(s: Scrape) -> Iterator[Sample]:
    for row in s.job_rows:
        yield (row["name"], row["status"], row["processor"]), 1


def _job_watermark(s: Scrape) -> Iterator[Sample]:
    for row in s.job_rows:
        if row["watermark"] is not None:
            yield (row["name"],), seconds(row["watermark"])


def _checkpoint_field(key: str) -> Callable[[Scrape], Iterator[Sample]]:
    def samples(s: Scrape) -> Iterator[Sample]:
        for row in s.job_rows:
            ck = s.checkpoint(row["name"])
            if ck is not None and ck[key] is not None:
                yield (row["name"],), ck[key]

    return samples


def _partition_field(key: str) -> Callable[[Scrape], Iterator[Sample]]:
    def samples(s: Scrape) -> Iterator[Sample]:
        for row in s.partition_rows:
            value = row[key]
            if key == "watermark":
                value = seconds(value)
            if value is not None:
                yield (row["stream"], str(row["partition"])), value

    return samples


def _source_watermark(s: Scrape) -> Iterator[Sample]:
    for row in s.watermark_rows:
        scope = row["scope"]
        if not scope.startswith("source ") or row["watermark"] is None:
            continue
        # "source partition" (the statement's one source) or "source <name> partition"
        source = scope[len("source ") : -len(" partition")] or s.jobs[row["stream"]].plan.source.name
        yield (row["stream"], source, str(row["partition"])), seconds(row["watermark"])


def _source_offset(s: Scrape) -> Iterator[Sample]:
    for row in s.job_rows:
        executor = getattr(s.jobs.get(row["name"]), "executor", None)
        positions = dict(getattr(executor, "positions", None) or {})
        for (source, partition), offset in sorted(positions.items()):
            yield (row["name"], source, str(partition)), offset


def _kafka_lag(s: Scrape) -> Iterator[Sample]:
    for row in s.job_rows:
        for name, source, _ in s.sources(row["name"]):
            lag = getattr(source, "lag", None)
            if lag is None:
                continue
            # A source that cannot say now (its broker is away) must not cost the whole scrape.
            with contextlib.suppress(Exception):
                for partition, behind in sorted(lag().items()):
                    yield (row["name"], name, str(partition)), behind


# ---- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """One metric family: its name, Prometheus type, labels, help and samples."""

    name: str
    type: str  # "counter" or "gauge"
    labels: tuple[str, ...]
    help: str
    samples: Callable[[Scrape], Iterator[Sample]]


_JOB, _PART, _SRC = ("job",), ("job", "partition"), ("job", "source", "partition")

METRICS: tuple[Metric, ...] = (
    Metric("velosql_job_info", "gauge", ("job", "status", "processor"), "Each job, its status (Running, Finished, Stopped, Error, ...) and processor as labels; the value is 1.", _job_info),
    Metric("velosql_records_in_total", "counter", _JOB, "Records read from the job's sources.", _job_field("records_in")),
    Metric("velosql_records_out_total", "counter", _JOB, "Rows written to the job's sinks.", _job_field("records_out")),
    Metric("velosql_batches_total", "counter", _JOB, "Micro-batches processed.", _job_field("batches")),
    Metric("velosql_late_rows_total", "counter", _JOB, "Rows that arrived after their window closed (kept in <stream>__late).", _job_field("late_rows")),
    Metric("velosql_dead_letters_total", "counter", _JOB, "Records that could not be read or processed (kept in <stream>__dlq).", _job_field("dead_letters")),
    Metric("velosql_sink_retries_total", "counter", _JOB, "Writes to a sink that were retried.", _job_field("sink_retries")),
    Metric("velosql_busy_seconds_total", "counter", _JOB, "Time the job spent processing.", _job_field("busy_seconds")),
    Metric("velosql_waiting_seconds_total", "counter", _JOB, "Time the job spent waiting for input.", _job_field("waiting_seconds")),
    Metric("velosql_watermark_seconds", "gauge", _JOB, "The job's watermark, seconds since the epoch (windowed jobs, once known and until the end of input).", _job_watermark),
    Metric("velosql_checkpoint_epoch", "gauge", _JOB, "The epoch of the job's last checkpoint (jobs with a state location).", _checkpoint_field("epoch")),
    Metric("velosql_checkpoint_age_seconds", "gauge", _JOB, "Seconds since the job's last checkpoint was committed.", _checkpoint_field("age_seconds")),
    Metric("velosql_checkpoint_duration_seconds", "gauge", _JOB, "How long the job's last checkpoint took, from the cut to the commit.", _checkpoint_field("duration_seconds")),
    Metric("velosql_partition_records_in_total", "counter", _PART, "V2: rows sent to (or read by) each partition worker.", _partition_field("records_in")),
    Metric("velosql_partition_records_out_total", "counter", _PART, "V2: rows each partition worker sent back.", _partition_field("records_out")),
    Metric("velosql_partition_queue_depth", "gauge", _PART, "V2: requests sent to each partition worker and not answered yet.", _partition_field("queue_depth")),
    Metric("velosql_partition_watermark_seconds", "gauge", _PART, "V2: the watermark each partition worker last worked with, seconds since the epoch.", _partition_field("watermark")),
    Metric("velosql_source_watermark_seconds", "gauge", _SRC, "The watermark of each source partition, seconds since the epoch (windowed jobs).", _source_watermark),
    Metric("velosql_source_offset", "gauge", _SRC, "The next offset to read in each source partition (jobs with a state location keep it).", _source_offset),
    Metric("velosql_kafka_lag", "gauge", _SRC, "Messages in each partition of a Kafka source not read yet.", _kafka_lag),
)  # fmt: skip


# ---- the exposition ------------------------------------------------------------------------------


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render(engine) -> str:
    """Every metric of :data:`METRICS` as Prometheus text (0.0.4): ``# HELP``, ``# TYPE``, then
    one line per sample (a metric without samples keeps its HELP and TYPE)."""
    scrape = Scrape(engine)
    lines = []
    for metric in METRICS:
        lines.append(f"# HELP {metric.name} {_escape_help(metric.help)}")
        lines.append(f"# TYPE {metric.name} {metric.type}")
        for values, value in metric.samples(scrape):
            labels = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in zip(metric.labels, values))
            lines.append(f"{metric.name}{{{labels}}} {_number(value)}")
    return "\n".join(lines) + "\n"


def markdown() -> str:
    """The metrics as the docs list them (``docs/serve.md``; a test keeps the two equal)."""
    lines = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for m in METRICS:
        labels = ", ".join(f"`{label}`" for label in m.labels)
        meaning = m.help.replace("|", "\\|").replace("<", "\\<").replace(">", "\\>")
        lines.append(f"| `{m.name}` | {m.type} | {labels} | {meaning} |")
    return "\n".join(lines) + "\n"
