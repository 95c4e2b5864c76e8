"""Several servers sharing a Kafka topic: ``'<src>.assignment' = 'group'``.

Each server that runs the statement joins the source's consumer group (``subscribe()``), and Kafka's
group coordinator shares the topic's partitions among them. A server runs one *task* per Kafka
partition it is given: a V1 job of the statement over that partition only, with its own state,
its checkpoints in the shared state location (``<dir>/<stream>.p<k>/``) and, for a kafka_sink, its
own transactional producer (``velosql-<stream>.p<k>-<sink>``). So the state of a partition moves
with the partition:

- when the group takes partitions from a server (a rebalance, a server stopping), its tasks for them
  stop: each takes a checkpoint (open windows wait in it) before the server lets them go;
- the server that gets them restores each task from its checkpoint before reading.

A server killed without stopping loses no committed work either: the partition's next owner resumes
from the last checkpoint, and its producer's ``init_transactions`` fences the dead one's.

Results stay exact because each group of the statement lies in one partition: an aggregate (or a
SESSION window, or a row buffer) is accepted only when the source declares ``partition_key`` within
its key, the topic being keyed so. Projections and filters need nothing. Offsets and transactions
go through the server's group member, so Kafka fences a server that lost its partitions
(``consumer_group_metadata``).

The group member itself reads nothing: its partitions are paused, and its ``poll()`` serves the
rebalance callbacks and heartbeats; each task reads its partition with a consumer of its own.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading

from ..connectors.base import SourceContext
from ..errors import ConfigError, JobError
from ..plan.operators import AggregateSpec, BufferSpec, ProjectSpec, SessionSpec
from .checkpoint import CheckpointStore

_log = logging.getLogger("velosql")

POLL_SECONDS = 0.2
# The job's counters: the sum of its tasks', those that ended (a rebalance) included.
COUNTERS = ("records_in", "records_out", "batches", "late_rows", "dead_letters")


def is_group_plan(plan) -> bool:
    """Whether ``plan`` shares its Kafka source's partitions with other servers (and is not one
    of the tasks doing so)."""
    options = plan.source.options
    return (
        not plan.inputs
        and plan.source.type == "kafka_source"
        and options.get("assignment") == "group"
        and "__only" not in options
    )


class GroupExecutor:
    """Runs a statement as a member of its Kafka source's consumer group (see the module)."""

    def __init__(self, job) -> None:
        self.job = job
        self.plan = job.plan
        self.metrics = job.metrics_data
        self.opts = job.plan.job_options
        self.tasks: dict[int, object] = {}  # source partition -> its task (a Job)
        self.ended: dict[str, float] = {}  # counters of tasks that ended (a rebalance)
        self.failure: BaseException | None = None
        self.consumer = None
        self.member = _Member()
        self.sinks: list = []  # the tasks' (for Job._abandon)

    # ---- setup ----------------------------------------------------------------------------------

    def prepare(self) -> None:
        plan, engine = self.plan, self.job.engine
        self.root = self.opts.get("checkpoint.dir") or getattr(engine, "state_dir", None)
        where = f"{plan.location}: {plan.name!r} reads {plan.source.name!r} with 'assignment' = 'group'"
        if not self.root:
            raise ConfigError(
                f"{where}, which moves each partition's state between servers through their shared "
                "state location: give every server the same --state DIR (or 'checkpoint.dir')"
            )
        _check_keyed(plan, where)
        for sink in plan.sinks:
            if sink.type == "file_sink":
                raise ConfigError(
                    f"{where}: its tasks, one per partition and on several servers, cannot share "
                    f"the file of sink {sink.name!r}; write to a kafka_sink or a duckdb_table"
                )
        probe = engine._make_source(plan)
        try:
            probe.open(SourceContext(stop=self.job.stop_event, reject_fn=lambda *a: None))
            self.schema = probe.user_schema()
            self.partitions = probe.partition_ids()
            self.pairs = list(probe.pairs())
            self.index = {pair: i for i, pair in enumerate(self.pairs)}  # (topic, partition) -> p
            self.brokers, self.group = probe.brokers, probe.group
            self.config = probe.consumer_config()
        finally:
            probe.close()
        self._fresh_outputs()

    def _fresh_outputs(self) -> None:
        """On a first start (no task has a checkpoint) the statement's tables start empty; the
        tasks then create them if missing, and keep them across rebalances and restarts."""
        name = self.plan.name
        if any(CheckpointStore(self.root, self._task_name(p)).latest() is not None for p in self.partitions):
            return
        tables = [s.options.get("table") or s.name for s in self.plan.sinks if s.type == "duckdb_table"]
        con = self.job.engine._job_connection()
        try:
            for table in [*tables, self.plan.late_table, self.plan.dlq_table]:
                if table:
                    con.execute(f'DROP TABLE IF EXISTS "{table}"').fetchall()
        finally:
            con.close()
        _log.info("%s: no task checkpoint yet: its tables start empty", name)

    def _task_name(self, partition: int) -> str:
        return f"{self.plan.name}.p{partition}"

    # ---- running --------------------------------------------------------------------------------

    def run(self) -> None:
        from confluent_kafka import Consumer

        config = {
            **self.config,
            "enable.partition.eof": False,
            "session.timeout.ms": self.config.get("session.timeout.ms", 6000),
            "heartbeat.interval.ms": self.config.get("heartbeat.interval.ms", 500),
        }
        self.consumer = Consumer(config)
        topics = sorted({t for t, _ in self.pairs})
        self.consumer.subscribe(
            topics, on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
        )
        try:
            while not self.job.stop_event.is_set():
                self.consumer.poll(POLL_SECONDS)  # paused: rebalances and heartbeats only
                self.member.serve(self.consumer)
                self._check_tasks()
        finally:
            self._stop_tasks(list(self.tasks))
            self.member.serve(self.consumer)
            self.consumer.close()  # leaves the group: the others take the partitions at once
            self.consumer = None
        if self.failure is not None:
            raise self.failure

    def _assigned(self, consumer, partitions) -> None:
        consumer.assign(partitions)
        consumer.pause(partitions)
        # Of this generation of the group: Kafka refuses the offsets of a server that lost them.
        self.member.metadata = consumer.consumer_group_metadata()
        mine = sorted(self._partitions_of(partitions))
        _log.info("%s: the group gave this server partitions %s", self.plan.name, mine)
        for p in mine:
            if p not in self.tasks and self.failure is None:
                try:
                    self.tasks[p] = self._start_task(p)
                except BaseException as exc:  # noqa: BLE001 - fails the job from run()
                    self.failure = exc

    def _revoked(self, consumer, partitions) -> None:
        gone = self._partitions_of(partitions)
        _log.info("%s: the group takes partitions %s: checkpointing them", self.plan.name, sorted(gone))
        self._stop_tasks(gone)
        self.member.serve(consumer)  # their last offsets, while the partitions are still ours

    def _partitions_of(self, partitions) -> list[int]:
        """The source partitions of Kafka ``TopicPartition``s (those of this statement's topics)."""
        return [
            self.index[tp.topic, tp.partition] for tp in partitions if (tp.topic, tp.partition) in self.index
        ]

    def _start_task(self, partition: int):
        """Prepare (restoring its checkpoint) and start the task of ``partition``."""
        from .job import Job
        from .processor import JobProcessorFactory

        plan = self.plan
        source = dataclasses.replace(
            plan.source,
            options={
                **plan.source.options,
                "__only": (partition,),
                "__schema": self.schema,
                "__member": self.member,
            },
        )
        task_plan = dataclasses.replace(
            plan,
            name=self._task_name(partition),
            source=source,
            job_options={
                **plan.job_options,
                "checkpoint.dir": self.root,
                "__task": True,
                "__stream": plan.name,
            },
        )
        task = Job(task_plan, self.job.engine, JobProcessorFactory.create(_v1()))
        task.prepare()
        task.start()
        self.sinks = [s for t in self.tasks.values() for s in getattr(t.executor, "sinks", [])]
        return task

    def _stop_tasks(self, partitions: list[int]) -> None:
        """Stop those tasks (each checkpoints), all at once, and wait for them."""
        tasks = [(p, self.tasks.pop(p)) for p in partitions if p in self.tasks]
        for _, task in tasks:
            task.request_stop()
        for p, task in tasks:
            task.stop()
            self._count_ended(task)
            if task.error is not None and self.failure is None:
                self.failure = JobError(f"job {self.plan.name!r}, partition {p}: {task.error}")

    def _check_tasks(self) -> None:
        for p, task in list(self.tasks.items()):
            if task.done and task.error is not None:
                self.failure = JobError(f"job {self.plan.name!r}, partition {p}: {task.error}")
                self.job.stop_event.set()
        live = [t.metrics_data for t in self.tasks.values()]
        m = self.metrics
        for field in COUNTERS:
            setattr(m, field, int(self.ended.get(field, 0) + sum(getattr(x, field) for x in live)))
        marks = [x.watermark for x in live if x.watermark is not None]
        m.watermark = min(marks) if marks else m.watermark
        done = [x.checkpoint for x in live if x.checkpoint is not None]
        if done:
            m.checkpoint = max(done, key=lambda c: c[1])

    def _count_ended(self, task) -> None:
        data = task.metrics_data
        for field in COUNTERS:
            self.ended[field] = self.ended.get(field, 0) + getattr(data, field)

    def progress(self) -> float | None:
        return None

    def partition_metrics(self) -> list[dict]:
        """A row per partition this server holds (its task), as V2 lists its workers: what the
        system tables and ``/jobs`` show of the group's current share."""
        rows = []
        for p, task in sorted(self.tasks.items()):
            m = task.metrics_data
            rows.append(
                {
                    "partition": p,
                    "pid": os.getpid(),
                    "cores": None,
                    "affinity_error": None,
                    "reader": "group task",
                    "batches": m.batches,
                    "records_in": m.records_in,
                    "records_out": m.records_out,
                    "queue_depth": 0,
                    "queue_records": 0,
                    "queue_peak": 0,
                    "late_rows": m.late_rows,
                    "watermark": None,
                    "busy_seconds": round(m.busy_seconds, 3),
                    "waiting_seconds": round(m.waiting_seconds, 3),
                }
            )
        return rows

    def workers_start_seconds(self) -> None:
        return None


class _Member:
    """The group member as the tasks see it. librdkafka serves a consumer's calls on the thread
    that polls it (a task thread asking the member for its group metadata waited for seconds), so
    the member's thread hands out the metadata it took at the assignment and makes the commits
    the tasks ask for."""

    def __init__(self) -> None:
        self.metadata = None
        self._commits: list = []
        self._lock = threading.Lock()

    def consumer_group_metadata(self):
        return self.metadata

    def commit(self, offsets: list, asynchronous: bool = True) -> None:
        with self._lock:
            self._commits.extend(offsets)

    def serve(self, consumer) -> None:
        """Make the commits asked for since the last call (on the member's thread)."""
        with self._lock:
            offsets, self._commits = self._commits, []
        if offsets:
            consumer.commit(offsets=offsets, asynchronous=True)


def _v1():
    from ..config import JobProcessorConfig

    return JobProcessorConfig.parse("v1")


def _check_keyed(plan, where: str) -> None:
    """Each group of the statement must lie in one partition, or two servers would each emit a
    part of it."""
    from .v2 import _aligned

    spec = plan.operator
    if isinstance(spec, ProjectSpec):
        return
    if isinstance(spec, (AggregateSpec, SessionSpec, BufferSpec)) and _aligned(plan):
        return
    if isinstance(spec, (AggregateSpec, SessionSpec, BufferSpec)):
        raise ConfigError(
            f"{where}: each server would hold a part of a group, and emit it as if whole. Key the "
            f"topic by the GROUP BY (or PARTITION BY) columns and declare them with "
            f"'{plan.source.name}.partition_key', or read every partition on one server "
            "('assignment' = 'all')"
        )
    raise ConfigError(
        f"{where}: only projections, filters and keyed aggregates can be shared by partition among "
        "servers; run this statement on one server ('assignment' = 'all')"
    )
