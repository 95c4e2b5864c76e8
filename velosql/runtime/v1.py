"""The V1 processor: one job, one DuckDB connection, Arrow micro-batches end to end.

A reader thread pulls batches from the source into a small bounded queue (backpressure: the source
is not read while the queue is full) so decoding overlaps with DuckDB's work. The job thread
coalesces batches into micro-batches (``max_batch_size`` rows or ``batch_timeout``, whichever comes
first) because each DuckDB call has a fixed cost of about a millisecond; adds the arrival sequence,
event time and the watermark each row saw; and runs the shape's SQL from the plan. Aggregation
state lives in temporary tables of the job's connection.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import random
import threading
import time

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ..connectors.base import (
    OFFSET_COL,
    PARTITION_COL,
    SourceContext,
    Watermark,
    _arange,
    declared_partition_key,
    empty_table,
    int_scalar,
)
from ..errors import ConfigError, DataError, JobError, SqlError
from ..plan.sqlgen import referenced_columns
from ..sql.duckdb_errors import duckdb_error, duckdb_message
from . import operators, pushdown
from .checkpoint import Checkpoint, CheckpointStore
from .watermark import NEG_INF, NOT_YET, WatermarkTracker, any_late, event_time_us, without_null_time

_END = object()
_log = logging.getLogger("velosql")
# The columns of every statement's ``<name>__dlq`` table.
DLQ_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("location", pa.string()),
        ("error", pa.string()),
        ("raw", pa.string()),
        ("recorded_at", pa.timestamp("us")),
    ]
)


# Without a state location, a stateless job commits its Kafka offsets at most this often.
OFFSET_COMMIT_SECONDS = 1.0


def run_job(processor, job) -> None:
    """Entry point used by every processor until V2 has its own engine."""
    if job.executor is None:
        job.prepare()
    job.executor.run()


class V1Executor:
    """Runs one :class:`~velosql.plan.planner.StreamPlan` on one DuckDB connection."""

    def __init__(self, job) -> None:
        self.job = job
        self.plan = job.plan
        self.sql = job.plan.sql
        self.metrics = job.metrics_data
        self.opts = job.plan.job_options
        self.con: duckdb.DuckDBPyConnection | None = None
        self.tracker = WatermarkTracker(job.plan.time.lateness_us, job.plan.time.idle_timeout_us)
        self.seq = 0
        self.rejects: list[tuple] = []
        self.rejects_lock = threading.Lock()
        self.emitted_rows = 0
        self.forwarded = NEG_INF  # the watermark last handed to the sinks
        # Per input, set while its reader may read on (a statement over several streams holds back
        # a stream far ahead of the others); None: read freely.
        self.gates: list[threading.Event] | None = None
        self.stopped_by_limit = False
        self.on_time = False  # the current micro-batch has no late row (known without DuckDB)
        self.scan: pushdown.Scan | None = None  # DuckDB's reader computes the partials (pushdown.py)
        # The statement's operator (runtime/operators), built from the plan's spec.
        self.operator = operators.build(job.plan.operator)
        # Checkpoints (a state location): the store, the last epoch, each source partition's next
        # offset, and while a restart re-reads what its checkpoint had read, the offsets to skip to.
        self.checkpoints: CheckpointStore | None = None
        self.epoch = 0
        self.positions: dict[tuple[str, int], int] = {}
        self.skip_to: dict[tuple[str, int], int] = {}
        self.next_checkpoint = 0.0
        self.changed = False  # a micro-batch was processed since the last checkpoint
        self.never_ran = False  # preparing failed: the sinks publish nothing (discard)
        # (source, partition) -> the offset past the last dead letter reported (saved by a
        # checkpoint), and as the checkpoint resumed from had it (not reported again).
        self.rejected: dict[tuple[str, int], int] = {}
        self.rejected_before: dict[tuple[str, int], int] = {}
        # Exactly-once into the job's database (a file): one transaction per epoch (checkpoint.py).
        self.transactional = False
        self.in_transaction = False
        # Positions are kept (``_read_past``) with a state location, and for sources that commit
        # offsets (Kafka: at-least-once without a state location).
        self.tracking = False
        self.offsets_committed_at = 0.0
        # Tells a Kafka sink's epoch markers of this job's checkpoints from those of an earlier
        # run of the same job whose state location was removed (kafka_sink.marker_offset).
        self.lineage = 0
        self.dlq_topic = None  # 'dlq.topic': dead letters also go to this Kafka topic

    # ---- setup ----------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Open the source, bind the SQL to its schema and open the sinks; raise on any error."""
        plan = self.plan
        self.con = self.job.engine._job_connection()
        self.source = self.job.engine._make_source(plan)
        self._open_checkpoints()
        self.ctx = SourceContext(
            stop=self.job.stop_event,
            reject_fn=self._reject,
            reject_at_fn=lambda loc, err, raw, at: self._reject(loc, err, raw, at=at),
        )
        try:
            self.source.open(self.ctx)
        except DataError as exc:
            # Name the statement too: the WITH clause is where the user fixes a bad path.
            raise DataError(f"{plan.location}: {exc}") from None
        if not plan.windowed and hasattr(self.source, "keep_columns"):
            self._prune_source()
        if plan.windowed:
            # The files of a bounded source are read one after another, and their event times may
            # overlap: the watermark waits for each file's first row rather than judging it late
            # against the files read before it (the result is then the batch result).
            splits = getattr(self.source, "splits", None)
            pieces = splits(1, False) if splits is not None else []
            if len(pieces) > 1:
                self.tracker.expect(piece[1] for piece in pieces)  # each file's partition
            known = getattr(self.source, "partition_ids", None)
            if known is not None:  # a Kafka topic's partitions: each holds the watermark from the start
                self.tracker.expect(known())
        self._sources_opened()
        try:
            self._bind()
            self._open_sinks(self._restore() if self.epoch else {})
            # Checkpoints are taken between micro-batches: DuckDB's one scan has none.
            self.scan = None if self.checkpoints else pushdown.prepare(plan, self.source)
        except BaseException:
            self.source.close()
            raise

    def _open_checkpoints(self) -> None:
        """With a state location: the job's checkpoint store, and the epoch it resumes from."""
        root = self.opts.get("checkpoint.dir") or getattr(self.job.engine, "state_dir", None)
        if not root:
            return
        plan = self.plan
        for spec, source in self._inputs():
            if spec.name in getattr(self.job.engine, "_pipes", ()):
                raise ConfigError(
                    f"{plan.location}: {plan.name!r} reads the output of statement {spec.name!r} as a "
                    "stream (a pipeline), which cannot be read again from a checkpoint's position: with "
                    f"a state location, write {spec.name!r} to a file sink and read that file (watched) "
                    "in this statement, or run the script without 'checkpoint.dir' / --state"
                )
            if spec.type == "python" or type(source).__name__ == "PythonSource":
                raise ConfigError(
                    f"{plan.location}: source {spec.name!r} is pushed from Python and cannot be read "
                    "again from a checkpoint's position: a job with a state location reads files (or "
                    "tables); run it without 'checkpoint.dir' / --state"
                )
        self.checkpoints = CheckpointStore(root, plan.name)
        self.epoch = self.checkpoints.latest() or 0
        ((path,),) = self.con.execute(
            "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
        ).fetchall()
        kafka = any(s.type == "kafka_sink" for s in plan.sinks)
        tables = any(s.type == "duckdb_table" for s in plan.sinks)
        if path and kafka and tables:
            raise ConfigError(
                f"{plan.location}: with a state location, {plan.name!r} writes exactly-once to a "
                "kafka_sink and to a duckdb_table in a database file: each commits on its own, so a "
                "crash between the two commits would leave them apart. Write each from a statement "
                "of its own, or run without a state location (at-least-once)"
            )
        # Exactly-once into the database: its transaction is the epoch's point of no return.
        # A job writing to Kafka has Kafka's instead; its late rows and dead letters then go to
        # the database as they come (at-least-once: a restart may store an epoch's again).
        self.transactional = bool(path) and not kafka
        if self.transactional:
            self.con.execute(
                "CREATE SCHEMA IF NOT EXISTS velosql_state; CREATE TABLE IF NOT EXISTS velosql_state.commits "
                "(job VARCHAR PRIMARY KEY, epoch BIGINT, committed_at TIMESTAMPTZ)"
            ).fetchall()
            rows = self.con.execute(
                "SELECT epoch FROM velosql_state.commits WHERE job = ?", [plan.name]
            ).fetchall()
            committed = rows[0][0] if rows else None
            if committed == self.epoch + 1 and self.checkpoints.path(committed).is_file():
                # Killed after the database committed the epoch, before CURRENT moved: move it.
                self.checkpoints.commit(committed)
                self.epoch = committed
        self._open_kafka_sinks()
        if not self.epoch:
            self.lineage = random.getrandbits(30)

    def _sources_opened(self) -> None:
        self._track_positions()
        topic = self.opts.get("dlq.topic")
        if topic:
            from ..connectors.kafka import DeadLetterTopic

            brokers = self.opts.get("dlq.bootstrap.servers") or next(
                (s.brokers for _, s in self._inputs() if getattr(s, "brokers", None)), None
            )
            self.dlq_topic = DeadLetterTopic(topic, brokers)

    def _track_positions(self) -> None:
        """Keep each source partition's position (the sources are open). A job starting with a
        state location and no checkpoint yet starts each Kafka partition at an offset it records,
        so that every checkpoint names every partition's position: a restart must not take a
        partition it had not read from yet from the group's offsets, which another job of the
        same group may have moved on."""
        inputs = self._inputs()
        self.tracking = self.checkpoints is not None or any(hasattr(s, "commit_offsets") for _, s in inputs)
        if self.checkpoints is None or self.epoch:
            return
        for spec, source in inputs:
            starts = getattr(source, "start_offsets", None)
            if starts is not None:
                offsets = starts()
                source.seek(offsets)
                self.positions.update({(spec.name, p): o for p, o in offsets.items()})

    def _inputs(self) -> list:
        """``(source spec, source)`` of each input: the statement's source, or each of the
        streams a statement over several reads (MultiInputExecutor's ``sources``)."""
        plan = self.plan
        specs = [i.source for i in plan.inputs] if plan.inputs else [plan.source]
        return list(zip(specs, getattr(self, "sources", None) or [self.source]))

    def _offsets(self) -> list:
        """``(source, {partition: next offset})`` of each source that commits offsets (Kafka)."""
        return [
            (source, {p: o for (s, p), o in self.positions.items() if s == spec.name})
            for spec, source in self._inputs()
            if hasattr(source, "commit_offsets")
        ]

    def _commit_offsets(self) -> None:
        """Commit the Kafka sources' offsets of everything the sinks have (monitoring, and where
        a job without a state location resumes)."""
        for source, positions in self._offsets():
            source.commit_offsets(positions)
        self.offsets_committed_at = time.monotonic()

    def _open_kafka_sinks(self) -> None:
        """With a state location, a kafka_sink commits a transaction per epoch, the point of no
        return of its checkpoint: killed after it, the job rolls forward to that checkpoint."""
        plan = self.plan
        kafka = [s for s in plan.sinks if s.type == "kafka_sink"]
        if not kafka:
            return
        if len(kafka) > 1:
            raise ConfigError(
                f"{plan.location}: with a state location, {plan.name!r} writes exactly-once to "
                f"{len(kafka)} kafka_sinks: each commits its own transaction, so a crash between two "
                "commits would leave them apart. Write each from a statement of its own, or run "
                "without a state location (at-least-once)"
            )
        from ..connectors.kafka_sink import committed_epoch, marker_offset

        (spec,) = kafka
        marker = committed_epoch(plan.name, spec.name, spec.options)
        ahead = self.epoch + 1
        if marker is None or not self.checkpoints.path(ahead).is_file():
            return
        with self.checkpoints.read(self.con, ahead) as ck:
            lineage = ck.values.get("lineage", 0)
        if marker == marker_offset(lineage, ahead):
            # Killed after Kafka committed the epoch's transaction, before CURRENT moved: move it.
            self.checkpoints.commit(ahead)
            self.epoch = ahead

    def _tracker_values(self) -> dict:
        """The watermark tracker's state, for a checkpoint."""
        tracker = self.tracker
        return {"watermark": tracker.watermark, "partition_maxima": sorted(tracker.max_by_partition.items())}

    def _restore_trackers(self, values: dict) -> None:
        _restore_tracker(self.tracker, values["watermark"], values["partition_maxima"])
        self.metrics.watermark = self.tracker.watermark

    def _open_sinks(self, tokens: dict) -> None:
        """Make and open the statement's sinks; resuming from a checkpoint, each first gets back
        what that checkpoint committed (``tokens``: what each sink's precommit gave)."""
        self.sinks = self.job.engine._make_sinks(self.plan, self.con)
        for i, sink in enumerate(self.sinks):
            # Keep what the run before committed; a group member's task keeps the other tasks'.
            sink.resume = self.epoch > 0 or bool(self.opts.get("__task"))
            sink.in_transaction = self.transactional  # its writes are in the epoch's
            sink.epochs = self.checkpoints is not None  # it publishes what checkpoints commit
            sink.lineage = self.lineage
            recover = getattr(sink, "recover", None)
            if self.epoch and recover is not None:
                recover(tokens.get(str(i)))  # finish or undo the epoch the crash cut
            sink.open(self.out_schema)

    def _restore(self) -> dict:
        """Take the state of the last checkpoint: the operator's tables and values, the watermark
        tracker, the arrival sequence, and the source positions to skip to; its sinks' tokens."""
        plan = self.plan
        with self.checkpoints.read(self.con, self.epoch) as ck:
            if ck.statement != plan.text:
                raise ConfigError(
                    f"{plan.location}: the statement of {plan.name!r} is not the one its checkpoint "
                    f"{self.checkpoints.path(ck.epoch)} was taken with; its state would not fit. "
                    f"To start it afresh, remove {self.checkpoints.dir}"
                )
            for table in self.operator.state_tables:  # bound and empty: their types stay
                if table in ck.tables:
                    self.con.execute(
                        f"INSERT INTO {table} BY NAME SELECT * FROM __ckpt.state{table}"
                    ).fetchall()
            self._restore_more(ck)
        values = ck.values
        self.operator.restore(values["operator"])
        self.seq = values["seq"]
        self.emitted_rows = values["emitted_rows"]
        self.forwarded = values["forwarded"]
        self._restore_trackers(values)
        self.positions = dict(ck.positions)
        self.rejected = {(s, p): o for s, p, o in values.get("rejected", [])}
        self.rejected_before = dict(self.rejected)
        self.skip_to = dict(ck.positions)
        self.lineage = values.get("lineage", 0)
        for spec, source in self._inputs():
            seek = getattr(source, "seek", None)
            if seek is not None:  # read on from the checkpoint's positions (no re-read to skip)
                seek({p: o for (s, p), o in ck.positions.items() if s == spec.name})
        _log.info(
            "%s: resuming from checkpoint %d (%s)", plan.name, ck.epoch, self.checkpoints.path(ck.epoch)
        )
        return values.get("sinks", {})

    def _restore_more(self, ck: Checkpoint) -> None:
        """What a driver restores beyond the operator (V2: its workers' state), while the
        checkpoint is attached as ``__ckpt``."""
        partitions = ck.values.get("partitions")
        if partitions is not None:
            raise ConfigError(
                f"{self.plan.location}: the checkpoint {self.checkpoints.path(ck.epoch)} was taken by a V2 "
                f"job of {partitions} partitions, this job runs on V1. Run it as before, or remove "
                f"{self.checkpoints.dir} to start afresh"
            )

    def _snapshot_more(self) -> tuple[dict, dict]:
        """What a driver saves beyond the operator: (values, tables of rows by name)."""
        return {}, {}

    def _checkpoint(self) -> None:
        """Take a checkpoint now: everything up to the last micro-batch is in the sinks.

        Two phases, so that a crash at any moment leaves sinks and checkpoint agreeing: each sink
        makes what it was given durable and says how to commit it (``precommit``); the checkpoint
        file is written with those tokens and becomes current (with the job's database epoch, in
        one transaction); then the sinks commit (``commit``). A restart hands a sink the token of
        the checkpoint it resumes from (``recover``), which redoes or undoes what was not done.
        """
        self.metrics.checkpoint_started = time.monotonic()
        epoch = self.epoch + 1
        tokens = {}
        offsets = self._offsets()
        if self.dlq_topic is not None:
            self.dlq_topic.flush()  # the epoch's dead letters are at the broker (at-least-once)
        for i, sink in enumerate(self.sinks):
            if hasattr(sink, "offsets"):
                sink.offsets = offsets  # a Kafka sink commits them in its transaction
            sink.flush()
            precommit = getattr(sink, "precommit", None)
            if precommit is not None:
                tokens[str(i)] = precommit(epoch)
        values = {
            "operator": self.operator.snapshot(),
            "seq": self.seq,
            "emitted_rows": self.emitted_rows,
            "forwarded": self.forwarded,
            **self._tracker_values(),
            "sinks": tokens,
            "rejected": sorted([s, p, o] for (s, p), o in self.rejected.items()),
            "lineage": self.lineage,
        }
        more, rows = self._snapshot_more()
        values.update(more)
        ck = Checkpoint(
            epoch, self.plan.text, str(self.job.processor), values, dict(self.positions),
            self.operator.state_tables, rows,
        )  # fmt: skip
        self.checkpoints.write(self.con, ck)
        if self.in_transaction:  # the epoch's rows, and the epoch: the point of no return
            self.con.execute(
                "INSERT OR REPLACE INTO velosql_state.commits VALUES (?, ?, now())",
                [self.plan.name, ck.epoch],
            ).fetchall()
            self.con.execute("COMMIT").fetchall()
            self.in_transaction = False
        for sink in self.sinks:
            commit_point = getattr(sink, "commit_point", None)
            if commit_point is not None:  # Kafka's transaction: the point of no return
                commit_point(epoch)
        self.checkpoints.commit(ck.epoch)
        self.epoch = ck.epoch
        self.changed = False
        for sink in self.sinks:
            commit = getattr(sink, "commit", None)
            if commit is not None:
                commit(epoch)
        self._commit_offsets()
        self.metrics.checkpoint = (self.metrics.checkpoint_started, time.monotonic())
        self.next_checkpoint = time.monotonic() + self._checkpoint_interval()
        self._begin_epoch()

    def _begin_epoch(self) -> None:
        """Open the next epoch's transaction (exactly-once into the job's database)."""
        if self.transactional and not self.in_transaction:
            self.con.execute("BEGIN TRANSACTION").fetchall()
            self.in_transaction = True

    def _checkpoint_interval(self) -> float:
        interval = self.opts.get("checkpoint.interval")
        return (10_000_000 if interval is None else interval) / 1e6

    def _checkpoint_due(self) -> None:
        if self.changed and self.checkpoints is not None and time.monotonic() >= self.next_checkpoint:
            self._checkpoint()

    def _read_past(self, table: pa.Table, name: str | None = None) -> pa.Table:
        """Record how far each partition of source ``name`` (the statement's) has been read;
        after a restart, first drop the rows the checkpoint had read already (the source reads
        them again)."""
        name = name or self.plan.source.name
        parts = table[PARTITION_COL]
        offsets = table[OFFSET_COL]
        skip = {p: o for (s, p), o in self.skip_to.items() if s == name}
        if skip:
            top = max(skip)
            floor = pa.array([skip.get(p, 0) for p in range(top + 1)], pa.int64())
            known = pc.less_equal(parts, int_scalar(top, parts.type))
            least = pc.if_else(known, pc.take(floor, pc.if_else(known, parts, int_scalar(0, parts.type))), 0)
            keep = pc.greater_equal(offsets, least)
            if not pc.all(keep).as_py():
                table = table.filter(keep)
                parts, offsets = table[PARTITION_COL], table[OFFSET_COL]
        if table.num_rows:
            last = pa.table({"p": parts, "o": offsets}).group_by("p").aggregate([("o", "max")])
            for p, o in zip(last["p"].to_pylist(), last["o_max"].to_pylist()):
                self.positions[name, p] = max(self.positions.get((name, p), 0), o + 1)
                if skip.get(p, 0) and o >= skip[p]:  # read past its position: offsets only grow
                    del self.skip_to[name, p]
        return table

    def _prune_source(self) -> None:
        """Have the source read only the columns the statements read (Parquet: the others are
        never decoded; a 4-column trades file grouped on 3 read in 0.20 s instead of 0.45).
        Windowed plans keep every column: their late rows are kept whole."""
        sql = self.plan.sql
        reading = tuple(s for s in vars(sql).values() if isinstance(s, str) and "__in" in s)
        names = referenced_columns(reading)
        if names is not None:
            declared = declared_partition_key(self.plan.source.options)
            self.source.keep_columns(names | {c.lower() for c in declared})

    def _bind(self) -> None:
        plan = self.plan
        empty = self._internal(empty_table(self.source.schema), observe=False)
        with self._registered("__in", empty):
            try:
                schema = self.operator.bind(self.con, empty)
            except duckdb.Error as exc:
                raise duckdb_error(exc, plan.text, plan.location) from None
            self.out_schema = schema
            self.out_names = schema.names
            if plan.windowed:
                late = self._exec(self._late_select()).to_arrow_table().schema
                self._create_table(plan.late_table, late)
            self._create_table(plan.dlq_table, DLQ_SCHEMA)

    def _late_select(self) -> str:
        return (
            "SELECT * EXCLUDE (__seq, __et, __wm), make_timestamp(__et) AS _event_time, "
            f"make_timestamp(__wm) AS _watermark FROM ({self.sql.late})"
        )

    def _create_table(self, name: str, schema: pa.Schema) -> None:
        """Create (resuming from a checkpoint: keep) one of the statement's tables."""
        keep = self.epoch or self.opts.get("__task")  # a group member's tasks share the tables
        create = "CREATE TABLE IF NOT EXISTS" if keep else "CREATE OR REPLACE TABLE"
        with self._registered("__empty", empty_table(schema)):
            self.con.execute(f'{create} "{name}" AS SELECT * FROM __empty').fetchall()

    def _exec(self, sql: str):
        try:
            return self.con.sql(sql)
        except duckdb.Error as exc:
            raise duckdb_error(exc, self.plan.text, self.plan.location) from None

    # ---- per-batch preparation ------------------------------------------------------------------

    def _internal(self, table: pa.Table, observe: bool = True) -> pa.Table:
        """Add ``__seq`` and, for windowed plans, ``__et`` and ``__wm`` to a micro-batch."""
        n = table.num_rows
        if n == 0 and not self.plan.windowed:
            # Binding: no Python value reaches pyarrow (its first conversion imports pandas).
            return table.append_column("__seq", pa.nulls(0, pa.int64()))
        table = table.append_column("__seq", pc.add(_arange(n), int_scalar(self.seq)))
        self.seq += n
        if not self.plan.windowed:
            return table
        col = self.plan.time.column
        if col is None:
            et = pa.repeat(int_scalar(time.time_ns() // 1000), n)
        else:
            col = time_column(table, col, self.plan.source.name, self.plan.location)
            et = event_time_us(table[col], self.plan.time.format, col)
        if observe and et.null_count:
            table, et = self._reject_null_time(table, et, col)
        wm = None
        if observe:
            window = self.plan.window
            wm = self.tracker.observe_unless_on_time(
                et, table[PARTITION_COL].combine_chunks(), lambda e, wm: any_late(window, e, wm)
            )
        # No row can be late: every row may as well have seen no watermark at all.
        self.on_time = wm is None
        if wm is None:
            wm = pa.repeat(int_scalar(NEG_INF), table.num_rows)
        return table.append_column("__et", et).append_column("__wm", wm)

    def _reject_null_time(self, table: pa.Table, et: pa.Array, col: str):
        table, et, rejects = without_null_time(table, et, self.plan.source.name, col)
        for location, error, raw in rejects:
            self._reject(location, error, raw)
        return table, et

    def _reject(
        self,
        location: str,
        error: str,
        raw: str | None,
        source: str | None = None,
        at: tuple[int, int] | None = None,
    ) -> None:
        """A record that cannot be processed, of ``source`` (by default the statement's); ``at``:
        its partition and offset, where the source knows them."""
        source = source or self.plan.source.name
        if at is not None and at[1] < self.rejected_before.get((source, at[0]), 0):
            return  # the checkpoint this job resumed from has it in the dead letters already
        strategy = self.opts.get("failure_strategy", "SendToDLQ")
        if strategy == "FailBatch":
            raise DataError(f"{location}: {error}")
        with self.rejects_lock:
            self.rejects.append((source, location, error, raw, at))
        if strategy == "LogAndContinue":
            _log.warning("%s: %s", location, error)

    def _flush_rejects(self) -> None:
        with self.rejects_lock:
            rows, self.rejects = self.rejects, []
        if not rows:
            return
        table = pa.table(
            {
                "source": [r[0] for r in rows],
                "location": [r[1] for r in rows],
                "error": [r[2] for r in rows],
                "raw": [r[3] for r in rows],
            }
        )
        with self._registered("__rejects", table):
            self.con.execute(
                f'INSERT INTO "{self.plan.dlq_table}" SELECT *, now()::TIMESTAMP FROM __rejects'
            ).fetchall()
        if self.dlq_topic is not None:
            self.dlq_topic.write(rows)
        self.metrics.dead_letters += len(rows)
        for source, _, _, _, at in rows:
            if at is not None:
                key = (source, at[0])
                self.rejected[key] = max(self.rejected.get(key, 0), at[1] + 1)

    # ---- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        if self.scan is not None:
            try:
                done = self._run_scan()
            except BaseException:
                self.close()
                raise
            if done:
                self.close()
                return
        sources = getattr(self, "sources", None) or [self.source]
        max_rows = int(self.opts.get("max_batch_size") or 262144)
        self._begin_epoch()
        self.next_checkpoint = time.monotonic() + self._checkpoint_interval()
        # The readers may run one micro-batch ahead: the next one is read while DuckDB works.
        q = RowQueue(max_rows * len(sources))
        abort = threading.Event()
        readers = [
            threading.Thread(
                target=self._read, args=(q, abort, source, side), daemon=True, name="velosql-reader"
            )
            for side, source in enumerate(sources)
        ]
        for reader in readers:
            reader.start()
        timeout = (self.opts.get("batch_timeout") or 200_000) / 1e6
        pending: list[_Tagged] = []
        rows, first_at, ended = 0, 0.0, 0
        try:
            while ended < len(sources):
                wait = max(0.001, timeout - (time.monotonic() - first_at)) if pending else timeout
                t0 = time.monotonic()
                try:
                    item = q.get(timeout=wait)
                except queue.Empty:
                    item = None
                self.metrics.waiting_seconds += time.monotonic() - t0
                if isinstance(item, BaseException):
                    raise item
                if item is None:  # idle tick
                    self._idle()
                    if pending and time.monotonic() - first_at >= timeout:
                        self._process_pending(pending)
                        pending, rows = [], 0
                    else:
                        self._idle_watermark()
                elif isinstance(item.item, pa.RecordBatch):
                    if not pending:
                        first_at = time.monotonic()
                    pending.append(item)
                    rows += item.num_rows
                    if rows >= max_rows:
                        self._process_pending(pending)
                        pending, rows = [], 0
                elif isinstance(item.item, Watermark):  # the upstream statement's, in order
                    if pending:
                        self._process_pending(pending)
                        pending, rows = [], 0
                    self._upstream_watermark(item.side, item.item.value)
                else:  # a partition's or an input's end
                    if pending:
                        self._process_pending(pending)
                        pending, rows = [], 0
                    if item.item is _END:
                        ended += 1
                        self._input_ended(item.side)
                    else:
                        self._partition_ended(item.side, item.item.partition)
                self._flush_rejects()
                if self.stopped_by_limit:
                    break
                self._checkpoint_due()
            if pending:
                self._process_pending(pending)
            self._flush_rejects()
            if self.checkpoints is not None and self.job.stop_event.is_set() and not self.stopped_by_limit:
                # Stopped, not ended: the windows in flight wait in the checkpoint for the restart.
                self._checkpoint()
                return
            self._finish()
            if self.checkpoints is not None:
                self._checkpoint()
            elif self.tracking:
                self._commit_offsets()  # every row is in the sinks now
        finally:
            abort.set()
            if self.stopped_by_limit:
                self.job.limit_reached = True
                self.job.stop_event.set()
            for reader in readers:
                reader.join(timeout=5)
            self.close()

    def _process_pending(self, pending: list[_Tagged]) -> None:
        """The batches taken since the last micro-batch, as one."""
        self._process([t.item for t in pending])

    def _idle_watermark(self) -> None:
        """Nothing arrived for a while: idle partitions stop holding the watermark back."""
        if self.plan.windowed and self.tracker.idle_timeout:
            self._after_watermark(self.tracker.advance())
            self._forward_watermark()

    def _partition_ended(self, side: int, partition: int) -> None:
        self.tracker.end_partition(partition)

    def _upstream_watermark(self, side: int, value: int) -> None:
        """The statement this one reads has no row to come before ``value``: windows up to it
        can close, even while that statement's rows keep this one's own watermark behind."""
        if self.plan.windowed and value > self.tracker.watermark:
            self.tracker.watermark = value
            self.metrics.watermark = value
            self._after_watermark(value)
            self._forward_watermark()

    def _forward_watermark(self) -> None:
        """Hand the watermark to the sinks that pass it on (a pipeline to later statements),
        after the rows it let out: no row the sinks get later is behind it."""
        wm = self.tracker.watermark
        if wm <= self.forwarded or wm <= NOT_YET:
            return
        self.forwarded = wm
        for sink in self.sinks:
            forward = getattr(sink, "watermark", None)
            if forward is not None:
                forward(wm)

    def _input_ended(self, side: int) -> None:
        """Every partition of input ``side`` has ended."""

    def progress(self) -> float | None:
        """The share of a bounded input read so far (0 to 1), where the sources can tell: files
        read here, or DuckDB's scan; None otherwise (a stream without end, V2 workers reading
        their own files)."""
        if self.job.done:
            return 1.0 if self.job.status == "Finished" else None
        if self.scan is not None:
            estimated = getattr(self.scan, "estimated_rows", 0)
            return min(1.0, self.metrics.records_in / estimated) if estimated else None
        shares = [
            getattr(s, "progress", lambda: None)() for s in getattr(self, "sources", None) or [self.source]
        ]
        if not shares or None in shares:
            return None
        return sum(shares) / len(shares)

    def _idle(self) -> None:
        """Called when the source had nothing within the batch timeout (V2 checks its workers)."""

    def close(self) -> None:
        """Close the sinks, the scan and the source (also when the job never ran)."""
        if self.in_transaction:  # an epoch no checkpoint took: as if it never ran
            with contextlib.suppress(duckdb.Error):
                self.con.execute("ROLLBACK").fetchall()
            self.in_transaction = False
        for sink in getattr(self, "sinks", []):
            try:
                sink.discard() if self.never_ran else sink.close()
            except Exception:  # noqa: BLE001 - first error wins; closing the rest matters more
                pass
        if self.dlq_topic is not None:
            with contextlib.suppress(Exception):
                self.dlq_topic.close()
            self.dlq_topic = None
        if self.scan is not None:
            self.scan.close()
        self.source.close()

    def _run_scan(self) -> bool:
        """The whole bounded input through DuckDB's reader, then the usual end of input; False
        when DuckDB's reader failed (nothing came of it): the files are then read record by
        record, where each piece that cannot be read is one dead letter."""
        t0 = time.monotonic()

        def progress(percent: float) -> None:  # an estimate for the progress display, until the count
            self.metrics.records_in = int(self.scan.estimated_rows * percent / 100)

        try:
            result = self.scan.run(self.job.stop_event, progress)
        except duckdb.Error as exc:
            # It stops at the first file or row group it cannot read (a corrupt Parquet page).
            _log.warning(
                "%s: DuckDB's scan of the files failed (%s): reading them record by record",
                self.plan.name,
                duckdb_message(exc),
            )
            self.scan.close()
            self.scan = None
            self.metrics.records_in = 0
            return False
        if result is not None:  # a stopped scan leaves nothing, its bad records included
            for location, error, raw in self.scan.rejects():
                self._reject(location, error, raw)
            self._flush_rejects()
            partials, rows = result
            self.metrics.records_in = rows
            self.metrics.batches += 1
            self._operate(self.operator.merge, partials)
        else:
            self.metrics.records_in = 0  # what the scan had read is dropped with it
        self.metrics.busy_seconds += time.monotonic() - t0
        self._finish()
        return True

    def _read(self, q: RowQueue, abort: threading.Event, source, side: int) -> None:
        """Put ``source``'s batches and partition ends on ``q``, tagged with its input ``side``,
        then its end (or the exception that ended it)."""

        def put(item) -> bool:
            while not abort.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        gate = self.gates[side] if self.gates else None
        try:
            for item in source.read():
                if item is None:  # an idle tick: the job thread times out on its own
                    if abort.is_set():
                        return
                    continue
                while gate is not None and not gate.is_set() and not abort.is_set():
                    gate.wait(0.1)  # this input is far ahead of the others (MultiInputExecutor)
                if not put(_Tagged(item, side)) or abort.is_set():
                    return
            put(_Tagged(_END, side))
        except BaseException as exc:  # noqa: BLE001 - handed to the job thread
            put(exc if isinstance(exc, Exception) else JobError(str(exc)))

    def _process(self, batches: list[pa.RecordBatch]) -> None:
        t0 = time.monotonic()
        table = pa.Table.from_batches(batches)
        if self.tracking:
            table = self._read_past(table)
            if not table.num_rows:  # every row was read before the restart
                return
            self.changed = True
        self.metrics.records_in += table.num_rows
        self.metrics.batches += 1
        table = self._internal(table)
        try:
            self._step(table)
        except duckdb.Error as exc:
            raise JobError(f"job {self.plan.name!r}: {duckdb_message(exc)}") from None
        if self.plan.windowed:
            self.metrics.watermark = self.tracker.watermark
            self._after_watermark(self.tracker.watermark)
            self._forward_watermark()
        if self.tracking and self.checkpoints is None and self._rows_all_out():
            if time.monotonic() - self.offsets_committed_at >= OFFSET_COMMIT_SECONDS:
                self._commit_offsets()  # at-least-once: the rows these offsets led to are flushed
        self.metrics.busy_seconds += time.monotonic() - t0

    def _rows_all_out(self) -> bool:
        """Every row read so far has its output written and flushed (a stateless operator here:
        ``_deliver`` flushes each micro-batch's rows)."""
        return self.operator.stateless

    def _step(self, table: pa.Table) -> None:
        """What one micro-batch (with ``__seq``, ``__et``, ``__wm``) does to the state and sinks."""
        with self._registered("__in", table):
            late = self._late(table)
            self._write_some(self._operate(lambda b: self.operator.process(b, late=late), table))

    @contextlib.contextmanager
    def _registered(self, name: str, table: pa.Table):
        self.con.register(name, table)
        try:
            yield
        finally:
            self.con.unregister(name)

    def _late(self, table: pa.Table) -> bool:
        """Store the batch's late rows; False when it has none (checked without DuckDB)."""
        if (
            not self.plan.windowed
            or self.on_time
            or not any_late(self.plan.window, table["__et"], table["__wm"])
        ):
            return False
        late = self.con.sql(self._late_select()).to_arrow_table()
        if late.num_rows:
            self.metrics.late_rows += late.num_rows
            if self.opts.get("late.data.strategy") != "drop":
                with self._registered("__late", late):
                    self.con.execute(f'INSERT INTO "{self.plan.late_table}" SELECT * FROM __late').fetchall()
        return True

    def _after_watermark(self, wm: int) -> None:
        """Emit and forget what the watermark closed."""
        self._write_some(self._operate(self.operator.on_watermark, wm))

    def _finish(self) -> None:
        """End of input (or stop): the final watermark closes every window and group."""
        wm = self.tracker.finish()
        self.metrics.watermark = wm
        self._write_some(self._operate(self.operator.finish, wm))
        for sink in self.sinks:
            sink.flush()

    def _as_output(self, out: pa.Table) -> pa.Table:
        """``out`` with the output's column names and types."""
        out = out.rename_columns(self.out_names)
        return out if out.schema == self.out_schema else out.cast(self.out_schema)

    def _operate(self, step, arg):
        """One step of the operator; DuckDB's error in it fails the job naming the statement."""
        try:
            return step(arg)
        except duckdb.Error as exc:
            raise JobError(f"job {self.plan.name!r}: {duckdb_message(exc)}") from None

    def _write_some(self, out: pa.Table | None) -> None:
        if out is not None:
            self._write(out)

    def _write(self, out: pa.Table) -> None:
        if out.num_rows == 0:
            return
        out = self._as_output(out)
        limit = self.plan.limit
        if limit is not None:
            room = limit - self.emitted_rows
            if out.num_rows >= room:
                out = out.slice(0, room)
                self.stopped_by_limit = True
        self.emitted_rows += out.num_rows
        t0 = time.monotonic()
        for sink in self.sinks:
            self._deliver(sink, out)
        self.metrics.sink_seconds += time.monotonic() - t0
        self.metrics.records_out += out.num_rows

    def _deliver(self, sink, out: pa.Table) -> None:
        """Write and flush one result table; under RetryWithBackoff retry failures, doubling the wait."""
        retry = self.opts.get("failure_strategy") == "RetryWithBackoff"
        attempts = int(self.opts.get("max_retries") or 0) + 1 if retry else 1
        delay = (self.opts.get("retry_backoff") or 100_000) / 1e6
        for attempt in range(1, attempts + 1):
            try:
                sink.write(out)
                # Readers of a file sink (tail -f, another job) see results as they are produced.
                sink.flush()
                return
            except Exception as exc:  # noqa: BLE001 - any sink failure is retried or reported
                if attempt == attempts:
                    raise JobError(
                        f"job {self.plan.name!r}: writing {out.num_rows} rows to {sink.describe()} failed"
                        f"{f' after {attempts} attempts' if attempts > 1 else ''}: {exc}"
                    ) from exc
                self.metrics.sink_retries += 1
                if self.job.stop_event.wait(delay):
                    delay = 0
                delay *= 2


def _restore_tracker(tracker: WatermarkTracker, watermark: int, maxima: list) -> None:
    """A tracker as a checkpoint saved it (partitions count as just seen: idle from now)."""
    now = time.monotonic()
    tracker.watermark = watermark
    tracker.max_by_partition = {p: m for p, m in maxima}
    tracker.last_seen = {p: now for p in tracker.max_by_partition}


def time_column(table: pa.Table, col: str, source: str, location) -> str:
    """The name ``table`` gives the event-time column ``col`` (matched without regard to case);
    an error naming the source and its columns when it has none."""
    if col in table.column_names:
        return col
    match = [c for c in table.column_names if c.lower() == col.lower()]
    if not match:
        raise SqlError(
            f"event-time column {col!r} is not a column of source {source!r} "
            f"(columns: {', '.join(c for c in table.column_names if not c.startswith('_'))})",
            location,
        )
    return match[0]


class _Tagged:
    """A batch, a partition's end or an input's end (``_END``), and the input it came from."""

    __slots__ = ("item", "side", "num_rows")

    def __init__(self, item, side: int) -> None:
        self.item = item
        self.side = side
        self.num_rows = item.num_rows if isinstance(item, pa.RecordBatch) else 0


class RowQueue:
    """A FIFO between the reader and the job thread, bounded by the rows it holds.

    ``put`` waits while ``limit`` rows or more are queued (an item is always taken into an empty
    queue, whatever its size), or 4,096 items. Bounding items instead (4 source batches) kept the
    reader from reading ahead while DuckDB worked on a micro-batch of 26 such batches: the job
    then waited for the next ~25 after every micro-batch (~70 ms of Q_group's 250 ms).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.rows = 0
        self.items: collections.deque = collections.deque()
        self.cond = threading.Condition()

    def put(self, item, timeout: float) -> None:
        """Raises ``queue.Full`` when there was no room within ``timeout`` seconds."""
        rows = getattr(item, "num_rows", 0)
        with self.cond:
            if not self.cond.wait_for(
                lambda: not self.items or (self.rows < self.limit and len(self.items) < 4096), timeout
            ):
                raise queue.Full
            self.items.append((item, rows))
            self.rows += rows
            self.cond.notify_all()

    def get(self, timeout: float):
        """Raises ``queue.Empty`` when nothing arrived within ``timeout`` seconds."""
        with self.cond:
            if not self.cond.wait_for(lambda: self.items, timeout):
                raise queue.Empty
            item, rows = self.items.popleft()
            self.rows -= rows
            self.cond.notify_all()
            return item
