"""The V2 processor: N worker processes run the partition-local part of the plan; this job merges.

The job's process keeps what needs one place: the merged aggregation state of EMIT FINAL, the job
watermark, the dead letters and late rows, and the sinks (one writer per DuckDB database). Each
worker (:mod:`worker`, driven through :mod:`pool`) is a spawned process with one ``threads=1``
DuckDB connection. How rows reach the workers and what the workers keep depends on the query
(:func:`choose`):

- **Partials** (GROUP BY … EMIT FINAL). Workers compute each micro-batch's partial aggregate and keep
  no state; their partial rows are appended to ``__state`` here, where windows close and results
  are finished exactly as in V1 (two-phase aggregation). So the result never depends on how rows
  were routed.
- **Rows** (projections and filters). Workers run the projection; each micro-batch's rows come back
  in arrival order.
- **Keyed** (EMIT CHANGES, SESSION windows, ROWS WINDOW BUFFER). A group's running values, sessions or
  row buffer need every row of the group, in order, in one place: rows are routed by a stable hash
  of the key, and each worker holds the state of its keys. Watermarks reach every worker in-band
  (they close sessions and evict windows there).

Where the rows come from:

- **Direct read** (strategy ``sticky`` on a bounded source of several partitions, e.g. a directory
  of files, or on a Kafka topic of several partitions, whose default strategy it is). Each worker
  opens its own partitions (partition ``p`` goes to worker ``p mod N``; a Kafka worker makes its own
  consumer, given its partitions with ``assign()``, :mod:`direct_kafka`) and reads them itself;
  this job only asks each worker for its next micro-batch, sending the current job watermark with
  the request, and merges what comes back. No row passes through this process. A Kafka worker
  may have nothing to read: its reply then carries no rows, and the job takes replies in the order
  workers send them. With a state location the job reads the source itself: its checkpoints hold
  the source's positions.
- **Router** (otherwise). This job's reader thread reads the source; each micro-batch gets its
  arrival sequence, event time and watermark here, then goes whole to one worker (``round_robin``),
  or is split by source partition (``sticky``) or key hash (``hash``, :mod:`routing`).

Plans that read other tables than their source (joins, subqueries), and bounded file aggregates
that DuckDB's own reader aggregates on every core (scan pushdown), run without workers; EXPLAIN
says so.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import re
import time
import types

import pyarrow as pa
import pyarrow.compute as pc

from ..connectors.base import PARTITION_COL, declared_partition_key, empty_table, int_scalar
from ..plan import windows as W
from ..plan.operators import AggregateSpec, BufferSpec, SessionSpec
from ..plan.sqlgen import orderable as _orderable
from ..plan.sqlgen import referenced_columns as _referenced
from ..plan.sqlgen import with_arrival_order as _ordered
from . import direct_parquet, operators, routing, running
from .direct import SEQ_PARTITION_SHIFT
from .job import format_watermark
from .pool import WorkerPool, worker_identity
from .protocol import FILE_MIN_ROWS, Batch, Call, Query
from .v1 import V1Executor
from .watermark import NEG_INF

STRATEGIES = {
    "hash": "hash", "always_hash": "hash", "alwayshash": "hash",
    "sticky": "sticky", "sticky_partition": "sticky", "stickypartition": "sticky",
    "smart": "smart", "smart_repartition": "smart", "smartrepartition": "smart",
    "round_robin": "round_robin", "roundrobin": "round_robin",
    "fan_in": "fan_in", "fanin": "fan_in",
}  # fmt: skip
IN_FLIGHT = 2  # direct reads per worker: one being worked on, one waiting
# Why a job with a state location reads its source itself (EXPLAIN's routing line says it).
STATE_NOT_DIRECT = (
    "not read by the workers themselves: the job has a state location, and its checkpoints hold the "
    "source's positions, so the job's process reads the source and routes it"
)
# Requests a worker may have outstanding at most. The records waiting behind the one it works on
# are bounded by ``queue_threshold`` (see ``_send``); this bounds the small requests between them.
MAX_IN_FLIGHT = 16
# Partial rows from the workers are merged into __state once this many rows or replies wait.
MERGE_ROWS = 65_536
MERGE_TABLES = 64
# DuckDB's Parquet scan costs ~3 ms to start (open, plan, prune row groups) where a scan of an
# Arrow batch costs ~1 ms: its runs hold this many micro-batches' rows (V2:2 at 20M trades rows:
# Q_group 0.47 -> 0.37 s, Q_tumble 0.87 -> 0.75 s from 1 to 4; V1 no faster at 1M-row batches).
RUN_BATCHES = 4
# Runs whose replies are partial aggregates (a row per group, not per input row) go further: a
# scan started per 1M rows still cost each worker ~0.05 s per 10M (V2:2 at 20M trades rows,
# 4 -> 16: Q_group 0.38 -> 0.33 s, Q_tumble 0.79 -> 0.71 s; Q_filter's row replies no faster).
PARTIAL_RUN_BATCHES = 16
ROUTE_COL = "__route"  # a scattered micro-batch's column naming each row's worker
_GROUP_COL = re.compile(r"__k[0-9]+")  # a partial row's GROUP BY key columns (sqlgen)
_INSERT_PARTIALS = "INSERT INTO __state BY NAME SELECT * FROM __partials"
# Reply kinds whose table is rows the worker produced (not a statement's count or a compaction's).
_RETURNS_ROWS = frozenset({"rows", "changes", "emit", "partials", "ordered"})
_HOSTED = "velosql.runtime.operators.hosted:"  # the calls of an operator each worker hosts
_HOSTED_PROCESS = Call(_HOSTED + "process", 0)
# A direct read's call, by the worker's reader (V2Executor.readers).
_READS = {"duckdb": "direct_parquet:read_run", "pyarrow": "direct:read", "kafka": "direct_kafka:read"}


# Operators whose state is not split by key yet, and why their rows meet in one place.
_IN_ONE_PLACE = {
    "general": "the general operator runs the whole SELECT over each closed window's rows (or over "
    "all rows at the end of the input), which no key splits in general",
    "distinct": "DISTINCT compares each row with every row passed before",
}


@dataclasses.dataclass(frozen=True)
class Routing:
    """How a plan runs on V2 (see the module docstring)."""

    mode: str  # "partials", "rows" or "keyed"; "v1" when it runs without workers
    strategy: str  # "hash", "sticky", "round_robin" or "fan_in"
    text: str  # for EXPLAIN
    # Partials: where they are combined and finished. "job": in this process's state; "workers":
    # each partial row goes to the worker of its GROUP BY key's hash, which holds the group's state.
    combine: str = "job"

    @property
    def workers(self) -> bool:
        return self.mode != "v1"


def requested_strategy(plan) -> str | None:
    """The strategy the statement asks for, normalised (None: choose automatically)."""
    raw = plan.job_options.get("partitioning_strategy") or plan.annotations.get("partitioning_strategy")
    if raw is None:
        return None
    name = str(raw).strip().lower().replace("-", "_")
    if name not in STRATEGIES:
        from ..errors import OptionError

        raise OptionError(
            f"unknown partitioning_strategy {raw!r}: expected one of hash, sticky, smart, round_robin, "
            "fan_in (or always_hash, sticky_partition, smart_repartition)"
        )
    return STRATEGIES[name]


def choose(plan, n: int, direct_partitions: int | None = 0, not_direct: str | None = None) -> Routing:
    """The routing of ``plan`` over ``n`` workers; ``direct_partitions``: how many pieces (files,
    runs of row groups, byte ranges, Kafka partitions) the source offers workers to read
    themselves (0: none, it cannot be read from another process; None: not known before the
    source is opened, as for EXPLAIN without a job); ``not_direct``: why it offers none though
    it could (EXPLAIN says it)."""
    sql = plan.sql
    if direct_partitions is None and plan.job_options.get("checkpoint.dir") and _readable(plan):
        not_direct = STATE_NOT_DIRECT
    if plan.inputs:
        if plan.shape == "join" and all(plan.operator.keys):
            keys = " = ".join(", ".join(k) for k in plan.operator.keys)
            return Routing(
                "keyed",
                "hash",
                f"each stream's rows go to the worker of their join key's hash ({keys}), over {n} "
                "workers; each worker joins its keys and keeps their rows",
            )
        return Routing(
            "v1",
            "",
            "one partition (the V1 engine) in the job's process: a statement over several streams is "
            "split across workers only when it is a join of two streams with an equality in ON",
        )
    if plan.shape in _IN_ONE_PLACE:
        return Routing(
            "v1", "", f"one partition (the V1 engine) in the job's process: {_IN_ONE_PLACE[plan.shape]}"
        )
    if not sql.local:
        return Routing(
            "v1", "", "one partition (the V1 engine): the query reads other tables than its source"
        )
    if plan.shape == "project":
        mode = "rows"
    elif plan.shape == "aggregate" and not sql.changes:
        mode = "partials"
    else:
        mode = "keyed"
    requested = requested_strategy(plan)
    keys = ", ".join(plan.group_keys) if plan.shape != "buffered" else "the PARTITION BY key"
    if mode == "keyed":
        what = {
            "aggregate": "EMIT CHANGES running values",
            "session": "SESSION windows",
            "buffered": "ROWS WINDOW BUFFER",
        }[plan.shape]
        if not sql.route_keys and (plan.shape == "buffered" or plan.group_keys):
            text = f"one partition (the V1 engine): {what} without a key the workers can route by"
            return Routing("v1", "", text)
        if not sql.route_keys:
            text = f"every row to partition 0: {what} without a key keep all rows in one place"
            return Routing(mode, "fan_in", text)
        text = f"hash of {keys} over {n} workers, state held by each worker"
        if requested not in (None, "hash", "smart"):
            text += f" ({what} need every row of a group in one partition, so not {requested})"
        return Routing(mode, "hash", text)
    aligned = mode == "partials" and requested in (None, "smart") and _aligned(plan)
    # A Kafka source's default is sticky where its workers consume their own partitions: each
    # record is read once, by the process that aggregates it, and no process routes rows.
    kafka_sticky = requested is None and _kafka(plan) and _read_directly(plan, direct_partitions, not_direct)
    if requested in (None, "smart"):
        # Hash on the GROUP BY key unless the source declares that its partitions hold whole
        # groups; read partitions directly when nothing is grouped.
        hashed = mode == "partials" and sql.route_keys and not aligned and not kafka_sticky
        strategy = "hash" if hashed else "sticky"
        if strategy == "sticky" and not _read_directly(plan, direct_partitions, not_direct):
            # The job reads the source and routes it. Sticky would split every micro-batch by
            # source partition, and a stream pushed without partitions would all go to worker 0.
            # Whole micro-batches in turn use every worker with no per-row work, and the job takes
            # replies in the order it sent them, so the output keeps its arrival order (pushed
            # trades, V2:2: Q_filter 9.8-13M -> 28-32M rows/s).
            strategy = "round_robin"
    else:
        strategy = requested
    unhashed = strategy == "hash" and not sql.route_keys
    if unhashed:  # nothing to hash: as when unset (sticky reading directly, else in turn)
        strategy = "sticky" if _read_directly(plan, direct_partitions, not_direct) else "round_robin"
    split = mode == "rows" and not (sql.project_orderable and _orderable(sql.project))
    if split and strategy in ("hash", "sticky"):
        strategy = "round_robin"
    reading = None if not_direct else _direct_text(plan, n, direct_partitions)
    if strategy == "sticky" and reading is not None:
        mod = direct_partitions or _kafka(plan)  # the reading says which worker reads what
        how = reading if mod else f"source partition mod the worker count; {reading}"
    else:
        how = {
            "hash": f"hash of the GROUP BY key ({keys}) over {n} workers",
            "sticky": "source partition mod the worker count",
            "round_robin": "whole micro-batches round-robin over the workers",
            "fan_in": "every micro-batch to partition 0",
        }[strategy]
    if unhashed:
        how = f"{how} (hash was asked for, but the query has no key to hash)"
    if aligned:
        key = ", ".join(declared_partition_key(plan.source.options))
        how = f"sticky, as the source is partitioned by {key} (partition_key), within the GROUP BY key: {how}"
    elif kafka_sticky and strategy == "sticky":
        how = f"sticky (a Kafka source's default): {how}"
    if mode == "partials" and strategy == "hash" and not sql.emit_ordered:
        # Hash-partitioned two-phase aggregation: rows are not routed one by one (a job-side router
        # cost ~45 ns per row, as much as V1's whole query), they are aggregated where they are
        # read, and only the partial rows travel by key to the worker that owns the group.
        where = reading or "whole micro-batches round-robin over the workers"
        how = (
            f"{where}; workers compute partial aggregates; each partial row goes by hash of the "
            f"GROUP BY key ({keys}) to the worker that holds the group's state and emits it "
            "(two-phase, combined in the workers)"
        )
        if not_direct:
            how = f"{how}; {not_direct}"
        return Routing(mode, strategy, how, combine="workers")
    if mode == "partials":
        how += "; workers compute partial aggregates, merged by the job (two-phase)"
    elif strategy == "round_robin":
        how += "; output in arrival order"
    else:
        how += "; output in arrival order per source partition"
    if not_direct:
        how += f"; {not_direct}"
    return Routing(mode, strategy, how)


def _direct_text(plan, n: int, direct_partitions: int | None) -> str | None:
    """How EXPLAIN says the workers read the source themselves; None where they cannot."""
    if _kafka(plan):
        if direct_partitions is None:
            return (
                f"each worker consumes its own partitions of the topic (source partition p to worker "
                f"p mod {n}) with a consumer of its own (assign()): no router in the job process"
            )
        if direct_partitions > 1:
            return (
                f"each worker consumes its own Kafka partitions ({direct_partitions} partitions over {n} "
                f"workers, source partition p to worker p mod {n}) with a consumer of its own (assign()): "
                "no router in the job process"
            )
        return None
    if direct_partitions is None and plan.source.type == "file_source":
        return (
            "a bounded file source of several pieces (files, runs of Parquet row groups or byte "
            "ranges of text files) is read by the workers themselves, each its own pieces "
            "(EXPLAIN ANALYZE says how many)"
        )
    if (direct_partitions or 0) > 1:
        return (
            f"each worker reads its own pieces of the source ({direct_partitions} files, runs of "
            f"Parquet row groups or byte ranges of text files over {n} workers)"
        )
    return None


def _read_directly(plan, direct_partitions: int | None, not_direct: str | None = None) -> bool:
    """Whether sticky routing would let the workers read the source's pieces themselves (as
    far as is known before the source is opened, for ``direct_partitions`` None)."""
    if not_direct:
        return False
    if direct_partitions is None:
        return _readable(plan)
    return direct_partitions > 1


def _readable(plan) -> bool:
    """Whether the workers can read the statement's source themselves, by its type."""
    return plan.source.type in ("file_source", "kafka_source")


def _kafka(plan) -> bool:
    return plan.source.type == "kafka_source"


def _aligned(plan) -> bool:
    """Whether every group lies in one source partition: the declared partition key columns are
    all bare columns of the GROUP BY key."""
    declared = {c.lower() for c in declared_partition_key(plan.source.options)}
    if not declared or not plan.sql.route_keys:
        return False
    return declared <= set(plan.sql.route_key_columns)


def changes_call(plan, partial: str, ordered: bool = False) -> Call:
    """The workers' statement for EMIT CHANGES of running COUNT/SUM/AVG: each worker finishes its
    keys' change rows in Arrow (``running.worker_changes``), as V1's job does, instead of running
    DuckDB's window sort (pushed trades, V2:2 Q_changes: 2.0 -> 0.8 s per 5M rows). ``partial``:
    the batch's partial aggregate SQL; ``ordered``: the arrival sequence comes first as ``__order``."""
    sql = plan.sql
    spec = {
        # Namespaces, not the plan's objects: those would make the worker import sqlglot.
        "aggregates": [
            types.SimpleNamespace(running=a.running, parts=list(a.parts), arg=a.arg) for a in plan.aggregates
        ],
        "sql": types.SimpleNamespace(
            running_items=sql.running_items, running_state=sql.running_state, state_update=sql.state_update
        ),
        "input": sql.running_input,
        "changes": _ordered(sql.changes) if ordered else sql.changes,
        "partial": partial,
        "order": ordered,
        "limits": (running.HOT_KEYS, running.CHECKPOINT_ROWS),
    }
    return Call("velosql.runtime.running:worker_changes", spec)


def _in_arrival_order(rows: pa.Table) -> pa.Table:
    """The rows of one micro-batch's parts (each in arrival order) in arrival order, without
    their ``__order``.

    A micro-batch's arrival sequence numbers are consecutive, so each row's place is its number
    less the smallest: one inverse permutation (linear; the gaps of rows a WHERE dropped come out
    null) instead of a sort, ~2x faster on 262,144 change rows.
    """
    order = rows.column("__order").combine_chunks()
    rows = rows.drop_columns(["__order"])
    if len(order) < 2:
        return rows
    low, high = (v.as_py() for v in pc.min_max(order).values())
    if high - low >= 4 * len(order):  # not one micro-batch's numbers: sort
        return rows.take(pc.sort_indices(order))
    places = pc.inverse_permutation(
        pc.subtract(order, int_scalar(low)), max_index=high - low, output_type=pa.int64()
    )
    return rows.take(places.drop_null() if places.null_count else places)


def _direct_splits(source, n: int, cut: bool, ranges: bool) -> list:
    """The pieces of ``source`` N workers can read on their own (see ``FileSource.splits``; a
    Kafka source's: its source partitions); empty when there are fewer than two, or the source
    cannot be read by pieces."""
    splits = getattr(source, "splits", None)
    if splits is not None:
        pieces = splits(n, cut, ranges)
    elif hasattr(source, "partition_ids") and hasattr(source, "commit_offsets"):  # Kafka
        pieces = list(source.partition_ids())
    else:
        pieces = []
    return pieces if len(pieces) > 1 else []


class V2Executor(V1Executor):
    """Runs a plan with N partition workers (see the module docstring)."""

    def __init__(self, job) -> None:
        super().__init__(job)
        processor = job.processor
        self.n = processor.num_partitions()
        self.affinity = bool(processor.config.enable_core_affinity or self.opts.get("enable_affinity"))
        self.pool: WorkerPool | None = None
        self.route: Routing | None = None
        self.direct = False
        self.kafka = False  # the workers consume their own Kafka partitions (direct_kafka.py)
        self.readers: dict[int, str] = {}  # direct read: each worker's reader, "duckdb" or "pyarrow"
        self.sent = 0  # micro-batches routed so far
        self.inflight: collections.deque = collections.deque()  # (worker, kind, batch number)
        self.pending_rows: dict[int, list] = {}  # split batch number -> replies still to order
        self.used_columns: dict[str, frozenset[str] | None] = {}  # statements -> columns they read
        self.change_calls: dict[tuple[str, bool], Call] = {}  # (partial SQL, ordered) -> its Call
        self.partials: list[pa.Table] = []  # partial rows not merged into __state yet
        self.partial_rows = 0
        self.key_rows = [0] * self.n  # keyed EMIT CHANGES: partial rows since each worker's compaction
        self.key_floor = [0] * self.n
        self.records_to = [0] * self.n
        self.records_from = [0] * self.n  # rows each worker returned: output or partial rows
        self.batches_to = [0] * self.n  # micro-batches (or their parts) and reads each worker took
        self.key_columns: tuple[str, ...] | None = None  # the routing keys, when bare source columns
        self.late_by = [0] * self.n
        self.part_wm: list[int | None] = [None] * self.n  # the watermark each worker last worked with
        self.queue_threshold = int(self.opts.get("queue_threshold") or 1000)
        # The rows of each request outstanding at each worker, oldest first.
        self.queued: list[collections.deque] = [collections.deque() for _ in range(self.n)]
        self.queue_peak = [0] * self.n  # most records ever waiting at each worker
        self.combined = False  # partials combined in the workers (Routing.combine)
        # Keyed, but for the aggregate: the spec of the operator each worker hosts for its keys,
        # whether its rows come back with their arrival order, and the last watermark sent.
        self.hosted: SessionSpec | BufferSpec | None = None
        self.hosted_ordered = False
        self.hosted_wm = NEG_INF
        self.finishing = False
        self.sending = 0  # depth of _sending blocks
        self.closes_due: collections.deque = collections.deque()  # markers reached within one
        # Direct reads answered but not merged yet: (worker, reply, the watermark it was sent with).
        self.answered: collections.deque = collections.deque()
        # Resuming from a checkpoint: each worker's state (values, rows), until the pool is up.
        self.restored_workers: list[tuple[dict, pa.Table]] | None = None

    # ---- setup ----------------------------------------------------------------------------------

    def prepare(self) -> None:
        super().prepare()
        try:
            if self.scan is not None:
                self.route = Routing(
                    "v1", "", "DuckDB's own reader on every core (scan pushdown): no workers"
                )
                return
            # Runs of one file's row groups are read at once, so only partial aggregates (ordered
            # by __seq when it matters) may cut a file; rows keep each partition's order.
            cut = choose(self.plan, self.n).mode == "partials"
            # Byte ranges of a text file number their rows' _offset only when asked (late rows,
            # dead letters): not for statements that read it.
            ranges = cut and "_offset" not in (
                _referenced((self.sql.partial_all, self.sql.partial)) or {"_offset"}
            )
            self.splits = _direct_splits(self.source, self.n, cut, ranges)
            not_direct = None
            if self.checkpoints is not None:
                # The job reads the source (its positions are the checkpoint's): no direct reads.
                not_direct = STATE_NOT_DIRECT if self.splits else None
                self.splits = []
            self.route = choose(self.plan, self.n, len(self.splits), not_direct)
            if self.route.workers and self.route.strategy == "hash":
                self.route = self._hashable_route(self.route)
            if not self.route.workers:
                return
            self.combined = self.route.combine == "workers"
            self.direct = (self.route.strategy == "sticky" or self.combined) and len(self.splits) > 1
            self.kafka = self.direct and _kafka(self.plan)
            if self.kafka:
                # Before the workers start: meanwhile the job's consumer would prefetch what they
                # are to read (with large fetch settings, the whole topic: V2:2 took 2.7 s where
                # V1 took 2.1 s on 500K messages).
                self.source.stop_fetching()
            self.operator.arrow = None  # the workers compute the partials
            self.pool = WorkerPool(self.n, affinity=self.affinity, max_in_flight=MAX_IN_FLIGHT)
            if getattr(self.job.engine, "sandbox", None) is not None:  # user SQL runs in the workers too
                self.job.engine.sandbox.lock_workers(self.pool, [self.source])
            if self.route.mode == "keyed" or self.combined:
                self._setup_keyed()
                if self.restored_workers is not None:
                    self._restore_workers()
            if self.direct:
                self._open_direct()
        except BaseException:
            self.never_ran = True  # the previous file stays at an atomic sink's path
            self.close()
            raise

    # ---- checkpoints ----------------------------------------------------------------------------

    def _workers_hold_state(self) -> bool:
        return self.pool is not None and (self.route.mode == "keyed" or self.combined)

    def _worker_table(self) -> str:
        """The table a worker keeps its keys' state in."""
        spec = self.plan.operator
        return "__state" if isinstance(spec, AggregateSpec) else operators.build(spec).state_tables[0]

    def _checkpoint(self) -> None:
        """A consistent cut: no request in flight, the partial rows merged (an aligned barrier,
        taken in the job: every worker has answered everything sent before it)."""
        if self.pool is not None:
            self._drain()
            self._flush_partials()
            self._drain()
        super()._checkpoint()

    def _snapshot_more(self) -> tuple[dict, dict]:
        values: dict = {"partitions": self.n}
        if not self._workers_hold_state():
            return values, {}
        table, call = self._worker_table(), None
        call = Query(Call("velosql.runtime.checkpoint:worker_snapshot", table))
        for i in range(self.n):
            self.pool.send(i, call)
        rows, held = {}, []
        for i in range(self.n):
            (reply,) = self.pool.drain(i)
            held.append(reply.value)
            rows[f"{table}_w{i}"] = reply.table
        values["workers"] = held
        return values, rows

    def _restore_more(self, ck) -> None:
        was = ck.values.get("partitions")
        if was != self.n:
            from ..errors import ConfigError

            by = "a V1 job" if was is None else f"a V2 job of {was} partitions"
            raise ConfigError(
                f"{self.plan.location}: the checkpoint {self.checkpoints.path(ck.epoch)} was taken by {by}, "
                f"this job has {self.n} partitions and its state is split by key among them. Run it "
                f"as before, or remove {self.checkpoints.dir} to start afresh"
            )
        held = ck.values.get("workers")
        if held is None:
            return
        table = self._worker_table()
        self.restored_workers = [
            (values, self.con.sql(f"SELECT * FROM __ckpt.state{table}_w{i}").to_arrow_table())
            for i, values in enumerate(held)
        ]

    def _restore_workers(self) -> None:
        table = self._worker_table()
        for i, (values, rows) in enumerate(self.restored_workers):
            call = Call("velosql.runtime.checkpoint:worker_restore", (table, values))
            self.pool.send(i, Batch(rows, call))
        for i in range(self.n):
            self.pool.drain(i)
        self.restored_workers = None

    def _hashable_route(self, route: Routing) -> Routing:
        """``route``, unless the key it hashes has a type without a stable hash (a LIST or STRUCT
        key, say): then partial aggregates are merged by the job and keyed state stays in one
        partition (the V1 engine), instead of failing the job at its first micro-batch."""
        empty = self._internal(empty_table(self.source.schema), observe=False)
        with self._registered("__in", empty):
            keyed = route.mode == "keyed"
            schema = self.con.sql(self.sql.route_keys if keyed else self.sql.partial).to_arrow_table().schema
        keys = schema if keyed else [f for f in schema if _GROUP_COL.fullmatch(f.name)]
        bad = next((f.type for f in keys if not routing.hashable(f.type)), None)
        if bad is None:
            return route
        why = f"the key's type {bad} has no stable hash to route by"
        if keyed:
            return Routing(
                "v1", "", f"one partition (the V1 engine): every row of a group in one place, and {why}"
            )
        reading = _direct_text(self.plan, self.n, len(self.splits))
        strategy = "sticky" if reading else "round_robin"
        how = reading or "whole micro-batches round-robin over the workers"
        text = f"{how}; workers compute partial aggregates, merged by the job (two-phase); not hash: {why}"
        return Routing("partials", strategy, text)

    def _setup_keyed(self) -> None:
        """Give each worker the state of the keys routed to it: the aggregate's partial rows (the
        job merges, evicts and compacts them), or else the statement's operator, hosted there
        (``operators/hosted.py``) and driven by micro-batch, watermark and end of input."""
        empty = self._internal(empty_table(self.source.schema), observe=False)
        spec = self.plan.operator
        if isinstance(spec, AggregateSpec):
            request = Batch(empty, f"CREATE OR REPLACE TEMP TABLE __state AS {self.sql.partial} LIMIT 0")
        else:
            if isinstance(spec, BufferSpec):  # its rows, from N workers, go out in arrival order
                spec = dataclasses.replace(spec, project=spec.ordered)
                self.hosted_ordered = True
            self.hosted = spec
            request = Query(Call(_HOSTED + "bind", (spec, [empty])))
        for i in range(self.n):
            self.pool.send(i, request)
        for i in range(self.n):
            self.pool.drain(i)

    def _direct_spec(self) -> dict:
        """What every worker reading its own partitions runs on each read (direct.py)."""
        plan, sql = self.plan, self.sql
        rows_mode = self.route.mode == "rows"
        col = plan.time.column
        if plan.windowed and col is not None and col not in self.source.schema.names:
            col = next(c for c in self.source.schema.names if c.lower() == col.lower())  # bound in _bind
        return {
            "source": plan.source.name,
            "windowed": plan.windowed,
            "time": col,
            "time_format": plan.time.format,
            # A WindowSpec would make the worker import the SQL layer (sqlglot: ~70 ms of its start).
            "window": None
            if plan.window is None
            else types.SimpleNamespace(**dataclasses.asdict(plan.window)),
            "max_rows": int(self.opts.get("max_batch_size") or 262144),
            "out": (sql.project,) if rows_mode else _partial_variants(sql.partial_all, plan.window),
            "out_late": (sql.project,) if rows_mode else _partial_variants(sql.partial, plan.window),
            "late": self._late_select() if plan.windowed else None,
        }

    def _open_direct(self) -> None:
        if self.kafka:
            self._open_kafka()
            return
        plan = self.plan
        rows_mode = self.route.mode == "rows"
        spec = self._direct_spec()
        col = spec["time"]
        event_time = None
        if plan.windowed and col is not None:
            event_time = direct_parquet.event_time_sql(self.source.schema.field(col))
        # DuckDB's reader where it computes event time exactly as pyarrow does (direct_parquet.py).
        duckdb_reads = self.opts.get("parquet_reader", "duckdb") == "duckdb" and (
            not plan.windowed or event_time is not None
        )
        if plan.windowed:  # each piece is a unit of the watermark, awaited until it delivers
            self.tracker.expect(range(len(self.splits)))
        self.direct_workers = []
        for i in range(self.n):
            # Worker i reads every n-th piece: files and runs of row groups alike, numbered in
            # source order (a piece's number is its unit in the job's watermark).
            pieces = [(k, piece) for k, piece in enumerate(self.splits) if k % self.n == i]
            if not pieces:
                continue
            runs = None
            if duckdb_reads:
                rows = (RUN_BATCHES if rows_mode else PARTIAL_RUN_BATCHES) * spec["max_rows"]
                runs = self.source.parquet_runs(pieces, rows, col if event_time else None)
            if runs is None:
                open_ = Call(
                    "velosql.runtime.direct:open_partitions",
                    dict(spec, reader=self.source.partition_reader(pieces)),
                )
                self.readers[i] = "pyarrow"
            else:
                views = direct_parquet.views(
                    self.con, self.source.schema, runs, SEQ_PARTITION_SHIFT, event_time
                )
                open_ = Call("velosql.runtime.direct_parquet:open_runs", dict(spec, runs=views))
                self.readers[i] = "duckdb"
            self.pool.send(i, open_)
            self.direct_workers.append(i)
        for i in self.direct_workers:
            self.pool.drain(i)

    def _open_kafka(self) -> None:
        """Have each worker consume its own partitions of the topic (direct_kafka.py). The job's
        consumer fetches nothing (see prepare); it stays for the offsets committed at the end.
        The tracker already expects every partition (V1Executor.prepare): the watermark waits
        for each, whichever worker delivers first."""
        from ..connectors.kafka import SYSTEM_NAMES

        source = self.source
        spec = self._direct_spec()
        spec.update(
            # The brokers and group the job's source resolved; the schema it declared or inferred.
            options={
                **self.plan.source.options,
                "bootstrap.servers": source.brokers,
                "group.id": source.group,
            },
            schema=pa.schema([f for f in source.schema if f.name not in SYSTEM_NAMES]),
            batch_timeout=(self.opts.get("batch_timeout") or 200_000) / 1e6,
        )
        self.direct_workers = []
        for i in range(self.n):
            partitions = [p for p in self.splits if p % self.n == i]
            if partitions:
                call = Call("velosql.runtime.direct_kafka:open_partitions", dict(spec, partitions=partitions))
                self.pool.send(i, call)
                self.direct_workers.append(i)
                self.readers[i] = "kafka"
        for i in self.direct_workers:
            self.pool.drain(i)

    # ---- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        if self.direct:
            try:
                self._run_direct()
            finally:
                self.close()
            return
        super().run()

    def _run_direct(self) -> None:
        """Ask each worker for its next micro-batch until every one has read all its partitions."""
        stop = self.job.stop_event
        for _ in range(IN_FLIGHT):
            for i in self.direct_workers:
                self._request_read(i)
        while self.inflight or self.answered:
            if not self.answered:
                # A read's reply waits in self.answered; others are handled. A Kafka worker may
                # wait for messages: take the first reply that comes, not the oldest.
                self._take_first_ready() if self.kafka else self._take_reply()
                continue
            worker, reply, _ = self.answered.popleft()
            t0 = time.monotonic()
            done = self._direct_reply(reply)
            self._flush_rejects()
            self.metrics.busy_seconds += time.monotonic() - t0
            if self.stopped_by_limit:
                break
            if not done and not stop.is_set():
                self._request_read(worker)
        if self.stopped_by_limit:
            self.job.limit_reached = True
            stop.set()
            return
        self._finish()
        if self.tracking:
            self._commit_offsets()  # every row read is in the sinks now (at-least-once)

    def _take_first_ready(self) -> None:
        """Take the oldest reply of the first worker to answer (each worker answers in order)."""
        ready = self.pool.ready(list(dict.fromkeys(w for w, _, _ in self.inflight if w >= 0)))
        first = next(k for k, (w, _, _) in enumerate(self.inflight) if w in ready)
        entry = self.inflight[first]
        del self.inflight[first]
        self.inflight.appendleft(entry)
        self._take_reply()

    def _request_read(self, worker: int) -> None:
        wm = self.tracker.watermark if self.plan.windowed else NEG_INF
        read = _READS[self.readers[worker]]
        self._make_room(worker)
        self.pool.send(worker, Call(f"velosql.runtime.{read}", wm))
        self.part_wm[worker] = wm if self.plan.windowed else None
        self.inflight.append((worker, "direct", wm))

    def _direct_reply(self, reply) -> bool:
        """Merge one worker's micro-batch; True when the worker has read everything."""
        info = reply.value
        self.metrics.records_in += info["rows"]
        if info["rows"]:
            self.metrics.batches += 1
            self._took(reply.partition, info["rows"])
        for location, error, raw, *at in info["rejects"]:
            self._reject(location, error, raw, at=at[0] if at else None)
        for partition, offset in info.get("positions", ()):
            key = (self.plan.source.name, partition)
            self.positions[key] = max(self.positions.get(key, 0), offset)
        if info["maxima"]:
            parts, ets = zip(*info["maxima"])
            self.tracker.observe(pa.array(ets, pa.int64()), pa.array(parts, pa.int32()))
        for partition in info["ended"]:
            self.tracker.end_partition(partition)
        if not info["rows"] and self.plan.windowed and self.tracker.idle_timeout:
            self.tracker.advance()  # an idle read: idle partitions stop holding the watermark
        if info["late"] is not None:
            self._store_late(pa.ipc.open_stream(info["late"]).read_all(), reply.partition)
        if info["low"] is not None and self.plan.window is not None:
            self.operator.open_window(info["low"])
        if reply.table is not None and reply.table.num_rows:
            self.records_from[reply.partition] += reply.table.num_rows
            if self.route.mode == "rows":
                self._write(reply.table)
            else:
                self._merge_partials(reply.table)
        if self.plan.windowed:
            # A read in flight judges its rows late against the watermark it was sent with, so its
            # partials may still add to any window ending after that: windows close only up to
            # the oldest watermark a worker is still reading with.
            reading = [sent for _, kind, sent in self.inflight if kind == "direct"]
            wm = min([self.tracker.watermark, *reading, *(sent for _, _, sent in self.answered)])
            self.metrics.watermark = wm
            self._after_watermark(wm)
        return info["done"]

    # ---- routed micro-batches -------------------------------------------------------------------

    def _rows_all_out(self) -> bool:
        return self.pool is None and super()._rows_all_out()  # workers answer later

    def _idle(self) -> None:
        """While the source is idle: fail on a dead worker, and deliver the replies in flight (a
        micro-batch's results must not wait for the next one to arrive)."""
        if self.pool is not None:
            self.pool.check()
            self._drain()

    def _step(self, table: pa.Table) -> None:
        """Store the micro-batch's late rows here, then send it to the workers."""
        if self.pool is None:
            super()._step(table)
            return
        late = False
        if self.plan.windowed and not self.on_time:
            with self._registered("__in", table):
                late = self._late(table)
        self._route(table, late)

    def _route(self, table: pa.Table, late: bool) -> None:
        """Send the micro-batch, whole or split, with the statements each worker runs on it."""
        mode, sql, batch = self.route.mode, self.sql, self.sent
        self.sent += 1
        if mode == "partials":
            statements, result, kind = self._partial_sql(table, late), -1, "partials"
        elif mode == "rows":
            statements, result, kind = sql.project, -1, "rows"
        elif self.hosted is not None:  # the operator each worker hosts, over its keys' rows
            statements, result = _HOSTED_PROCESS, -1
            kind = "ordered" if self.hosted_ordered else "none"
        else:  # the aggregate's EMIT CHANGES: the change rows, then the batch's partials
            partial = self._partial_sql(table, late)
            if self.operator.changelog is not None:  # running COUNT/SUM/AVG: finished in Arrow, as in V1
                statements, result, kind = self._changes_call(partial, False), -1, "changes"
            else:
                statements, result, kind = (sql.changes, f"INSERT INTO __state {partial}"), 0, "changes"
        table, ids = self._ids(table)
        if ids is None:
            worker = 0 if self.route.strategy == "fan_in" else batch % self.n
            if kind == "ordered":
                self.pending_rows[batch] = [1]
            self._took(worker, table.num_rows)
            self._send(worker, Batch(self._pruned(table, statements), statements, result), kind, batch)
            if kind == "changes" and not isinstance(statements, Call):
                self._after_keyed_insert(worker, table.num_rows)
            return
        rows = _counts(ids, self.n)
        targets = sorted(rows)
        if kind == "ordered":
            self.pending_rows[batch] = [len(targets)]
        elif kind in ("rows", "changes"):  # replies are put back in arrival order
            if isinstance(statements, Call):
                statements = self._changes_call(statements.arg["partial"], True)
            elif isinstance(statements, str):
                statements = _ordered(statements)
            else:
                statements = (_ordered(statements[0]), *statements[1:])
            kind = "ordered"
            self.pending_rows[batch] = [len(targets)]
        table = self._pruned(table, statements)
        if table.num_rows >= FILE_MIN_ROWS and len(targets) > 1:
            # One file for all: each worker selects its rows (in parallel, not on this thread).
            for worker in targets:
                self._make_room(worker)
            self.pool.scatter(table.append_column(ROUTE_COL, ids), ROUTE_COL, targets, statements, result)
            for worker in targets:
                self._sent(worker, rows[worker], kind, batch)
        else:
            for worker, part in enumerate(routing.split(table, ids, self.n)):
                if part.num_rows:
                    self._send(worker, Batch(part, statements, result), kind, batch)
        for worker in targets:
            self._took(worker, rows[worker])
            if kind == "ordered" and self.plan.shape == "aggregate" and not isinstance(statements, Call):
                self._after_keyed_insert(worker, rows[worker])

    def _took(self, worker: int, rows: int) -> None:
        """Count a micro-batch (or its share of one, or a direct read) of ``rows`` rows at ``worker``."""
        self.records_to[worker] += rows
        self.batches_to[worker] += 1

    def _changes_call(self, partial: str, ordered: bool) -> Call:
        """:func:`changes_call`, built once per partial SQL (on time or with late rows) and order."""
        call = self.change_calls.get((partial, ordered))
        if call is None:
            call = self.change_calls[partial, ordered] = changes_call(self.plan, partial, ordered)
        return call

    def _pruned(self, table: pa.Table, statements: str | Call | tuple[str, ...]) -> pa.Table:
        """The micro-batch with only the columns the workers' statements read: what is not sent
        is not copied (hash routing wrote every column of every batch, ~0.2 s per 5M rows)."""
        if statements == _HOSTED_PROCESS:  # the hosted operator's SQL over a micro-batch
            spec = self.hosted
            statements = (spec.insert,) if isinstance(spec, SessionSpec) else (spec.project, spec.keep)
        elif isinstance(statements, Call):  # the SQL it may run
            statements = (statements.arg["input"], statements.arg["changes"], statements.arg["partial"])
        key = statements if isinstance(statements, str) else "\n".join(statements)
        names = self.used_columns.get(key, False)
        if names is False:
            names = self.used_columns[key] = _referenced(statements)
        if names is None:
            return table
        # At least one column: a relation without columns has no rows (COUNT(*), constants).
        keep = [c for c in table.column_names if c.lower() in names] or table.column_names[:1]
        return table if len(keep) == table.num_columns else table.select(keep)

    def _ids(self, table: pa.Table) -> tuple[pa.Table, pa.Array | None]:
        """The micro-batch as it is sent, and the worker of each of its rows (None when it goes
        whole to one worker).

        Hash routing sends text key columns dictionary-encoded: the hash encodes them anyway, and
        a worker's DuckDB reads a dictionary column without copying each row's string (a partial
        GROUP BY of half of 262,144 trades rows: 5.5 ms from strings, 2.7 ms from a dictionary).
        """
        strategy = self.route.strategy
        if strategy in ("round_robin", "fan_in") or self.n == 1 or self.combined:
            return table, None
        if strategy == "sticky":
            return table, routing.sticky_partition_ids(table, PARTITION_COL, self.n)
        keys = self._keys(table)
        if self.key_columns:
            table = routing.dictionary_text(table, self.key_columns)
            keys = table.select(self.key_columns)
        return table, routing.stable_partition_ids(keys, keys.column_names, self.n)

    def _keys(self, table: pa.Table) -> pa.Table:
        """The routing key columns of the micro-batch's rows (computed by DuckDB unless they are
        bare source columns)."""
        if self.key_columns is None:
            self.key_columns = _bare_columns(self.sql.route_key_columns, table.schema.names) or ()
        if self.key_columns:
            return table.select(self.key_columns)
        with self._registered("__in", table):
            return self.con.sql(self.sql.route_keys).to_arrow_table()

    def _partial_sql(self, table: pa.Table, late: bool) -> str:
        """The partial SQL the workers run on this batch (whose windows are open from now on)."""
        return self.operator.partial_sql(table, late)

    def _send(self, worker: int, request, kind: str, batch: int) -> None:
        """Send when the worker's queue has room, taking replies (oldest first) until it has.

        The worker works on its oldest request; those behind it are its queue. A request joins the
        queue while it holds fewer than ``queue_threshold`` records (so one always can, whatever
        its size, and the worker never waits for the job between micro-batches), and never more
        than MAX_IN_FLIGHT requests. Meanwhile the job reads no more input: the source waits.
        """
        self._make_room(worker)
        self.pool.send(worker, request)
        self._sent(worker, request.table.num_rows if isinstance(request, Batch) else 0, kind, batch)

    def _make_room(self, worker: int) -> None:
        queued = self.queued[worker]
        while self.pool.outstanding(worker) >= MAX_IN_FLIGHT or (
            queued and sum(queued) - queued[0] >= self.queue_threshold
        ):
            self._take_reply()

    def _sent(self, worker: int, rows: int, kind: str, batch: int) -> None:
        """Record a request just sent to ``worker``: its reply is awaited in order."""
        queued = self.queued[worker]
        self.inflight.append((worker, kind, batch))
        queued.append(rows)
        self.queue_peak[worker] = max(self.queue_peak[worker], sum(queued) - queued[0])
        if self.plan.windowed:
            self.part_wm[worker] = self.tracker.watermark

    def _take_reply(self) -> None:
        worker, kind, batch = self.inflight.popleft()
        if kind == "close":  # every micro-batch sent before the windows closed has replied
            if self.sending:
                self.closes_due.append(batch)
            else:
                self._close_windows(batch, deferred=True)
            return
        reply = self.pool.receive(worker)
        if kind == "direct":  # merged by _run_direct's loop, never from within another reply's
            self.answered.append((worker, reply, batch))
            return
        self.queued[worker].popleft()
        if kind in _RETURNS_ROWS and reply.table is not None:
            self.records_from[worker] += reply.table.num_rows
        if kind in ("rows", "changes", "emit"):
            if reply.table is not None:
                self._write(reply.table)
        elif kind == "partials":
            if reply.table.num_rows:
                self._merge_partials(reply.table)
        elif kind == "ordered":
            waiting = self.pending_rows[batch]
            waiting.append(reply.table)
            if len(waiting) == waiting[0] + 1:
                del self.pending_rows[batch]
                parts = waiting[1:]
                if len({part.schema for part in parts}) > 1:
                    # Change rows finished in Arrow and by DuckDB's window (a batch the Arrow
                    # path could not take) differ in names and types: made the output's.
                    parts = [
                        self._as_output(part.drop_columns(["__order"])).add_column(
                            0, "__order", part["__order"]
                        )
                        for part in parts
                    ]
                self._write(_in_arrival_order(pa.concat_tables(parts)))
        elif kind == "count":
            self.key_floor[worker] = reply.table.column(0)[0].as_py()
        elif kind != "none":
            raise AssertionError(f"unexpected reply kind {kind!r}")

    def _drain(self) -> None:
        while self.inflight:
            self._take_reply()

    def _after_keyed_insert(self, worker: int, rows: int) -> None:
        """Compact a worker's EMIT CHANGES state now and then, as V1 compacts its own."""
        self.key_rows[worker] += rows
        if running.compaction_due(self.key_rows[worker], self.key_floor[worker]):
            self._send(worker, Query(running.compact_statements(self.sql.state_update)), "count", 0)
            self.key_rows[worker] = 0

    # ---- merged state, watermarks, end ----------------------------------------------------------

    def progress(self) -> float | None:
        """Workers reading their own pieces of the files: the job's source tells nothing."""
        if self.direct and not self.job.done:
            return None
        return super().progress()

    def _forward_watermark(self) -> None:
        """With workers, rows a watermark lets out may still be on their way from a worker when
        the next watermark is known: the statement does not pass its watermark on (a statement
        reading its output judges event time from the rows alone)."""
        if self.pool is None:
            super()._forward_watermark()

    def _after_watermark(self, wm: int) -> None:
        if self.pool is None or self.route.mode == "rows":
            super()._after_watermark(wm)
            return
        if self.route.mode == "partials":
            if not self.operator.closes(wm):
                return
            if self.direct or self.finishing:
                self._close_windows(wm)
                return
            # Routed: the closing windows' partial rows may still be in the workers' replies.
            # Close them when the replies of every micro-batch sent so far are in: a marker in the
            # reply order, while the job goes on routing. (Waiting for every worker here stalled
            # the pipeline at each window end: pushed trades, V2:2 Q_tumble, ~60 ms of 0.63 s.)
            # Rows of later micro-batches in these windows are late: the job judges them against
            # a watermark of at least ``wm``.
            self.inflight.append((-1, "close", wm))
            self.operator.passed(wm)
            return
        # Keyed: the workers hold the state; the watermark reaches each one in-band.
        if self.hosted is not None:
            if wm > self.hosted_wm:
                self.hosted_wm = wm
                for i in range(self.n):
                    self._send(i, Query(Call(_HOSTED + "on_watermark", wm)), "emit", 0)
        elif self.plan.window is not None:
            if not self.operator.closes(wm):
                return
            for i in range(self.n):
                self._send(i, Query(self.sql.evict.replace("$WM", str(wm))), "none", 0)
            self.operator.passed(wm)

    @contextlib.contextmanager
    def _sending(self):
        """A block that sends partial rows or emits: a window-closing marker reached while it
        waits for room (sends take replies first) closes its windows after the block, not
        amid it. Closed amid a flush, a window would be emitted before the rest of the flush's
        partial rows reached its worker, and again later with them."""
        self.sending += 1
        try:
            yield
        finally:
            self.sending -= 1
        while self.closes_due and not self.sending:
            self._close_windows(self.closes_due.popleft(), deferred=True)

    def _close_windows(self, wm: int, deferred: bool = False) -> None:
        """Emit and forget the windows ``wm`` closes (every partial row of them has arrived).
        ``deferred``: at a marker, after ``min_open_end`` moved past ``wm`` when it was placed."""
        with self._sending():
            if self.combined:  # each worker emits and forgets its groups' closed windows
                self._flush_partials(then=self._emit_statements(wm))
                if not deferred:
                    self.operator.passed(wm)
                return
            self._flush_partials()
            # Windows noted open since a marker was placed stay noted.
            self._write_some(self._operate(self.operator.close, wm))

    def _merge_partials(self, rows: pa.Table) -> None:
        """Keep the workers' partial rows until there are enough to merge at once (or a window
        closes, or the input ends): one INSERT per worker reply cost the job thread ~1.7 ms each,
        a third of a 20M-row grouped job's time on 2 cores."""
        self.partials.append(rows)
        self.partial_rows += rows.num_rows
        if self.partial_rows >= MERGE_ROWS or len(self.partials) >= MERGE_TABLES:
            self._flush_partials()

    def _flush_partials(self, then: tuple[str, ...] = ()) -> None:
        """Merge the kept partial rows (combined: send them to their owners). ``then``: statements
        every worker runs next, its first statement's rows emitted (see :meth:`_send_to_owners`)."""
        tables, self.partials, self.partial_rows = self.partials, [], 0
        if not tables and not then:
            return
        try:
            merged = [pa.concat_tables(tables)] if tables else []
        except pa.ArrowInvalid:  # the replies' schemas differ (they should not): one at a time
            merged = tables
        with self._sending():
            for i, table in enumerate(merged):
                if self.combined:
                    self._send_to_owners(table, then if i == len(merged) - 1 else ())
                else:
                    self._operate(self.operator.merge, table)
            if then and not merged:
                for worker in range(self.n):
                    self._send(worker, Query(then, 0), "emit", 0)

    def _send_to_owners(self, rows: pa.Table, then: tuple[str, ...] = ()) -> None:
        """Send each partial row to the worker of its GROUP BY key's stable hash, into its state;
        with ``then``, each worker runs those statements after the INSERT, in the same request (a
        window close's emit and evict: one request per worker, not two)."""
        keys = [c for c in rows.column_names if _GROUP_COL.fullmatch(c)]
        ids = routing.stable_partition_ids(rows, keys, self.n) if self.n > 1 else None
        parts = [rows] if ids is None else routing.split(rows, ids, self.n)
        for worker, part in enumerate(parts):
            if part.num_rows:
                if then:
                    request, kind = Batch(part, (_INSERT_PARTIALS, *then), 1, name="__partials"), "emit"
                else:
                    request, kind = Batch(part, _INSERT_PARTIALS, name="__partials"), "none"
                self._send(worker, request, kind, 0)
                self._after_keyed_insert(worker, part.num_rows)
            elif then:
                self._send(worker, Query(then, 0), "emit", 0)

    def _emit_statements(self, wm: int) -> tuple[str, ...]:
        """What a worker runs to emit (and, windowed, forget) what watermark ``wm`` closes of its
        groups; the first statement gives the rows."""
        emit = self.sql.emit.replace("$WM", str(wm))
        return (emit, self.sql.evict.replace("$WM", str(wm))) if self.plan.window else (emit,)

    def _finish(self) -> None:
        self.finishing = True  # windows close at once from here on
        routed = self.pool is not None and not self.direct
        if routed:
            self._drain()
        if not (self.combined or (routed and self.route.mode == "keyed")):
            self._flush_partials()
            super()._finish()
            return
        # The workers hold the state: the final watermark closes everything there.
        wm = self.tracker.finish()
        self.metrics.watermark = wm
        if self.combined:
            self._flush_partials(then=self._emit_statements(wm))
        elif self.hosted is not None:
            for i in range(self.n):
                self._send(i, Query(Call(_HOSTED + "finish", wm)), "emit", 0)
        else:
            self._flush_partials()
            if self.plan.window is not None:
                self.operator.min_open_end = NEG_INF  # every window closes
            self._after_watermark(wm)
        self._drain()
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.pool is not None:
                self._close_consumers()
                self.pool.close()

    def _close_consumers(self) -> None:
        """Close the Kafka consumers of the workers that consume their own partitions (a worker
        that failed is stopped with the pool anyway)."""
        if self.pool.closed:
            return
        closing = []
        for i in [w for w, reader in self.readers.items() if reader == "kafka"]:
            with contextlib.suppress(Exception):
                self.pool.drain(i)  # the reads in flight when the job failed
                self.pool.send(i, Call("velosql.runtime.direct_kafka:close", None))
                closing.append(i)
        for i in closing:
            with contextlib.suppress(Exception):
                self.pool.drain(i)

    def _store_late(self, late: pa.Table, worker: int) -> None:
        if not late.num_rows:
            return
        self.metrics.late_rows += late.num_rows
        self.late_by[worker] += late.num_rows
        if self.opts.get("late.data.strategy") != "drop":
            with self._registered("__late", late):
                self.con.execute(f'INSERT INTO "{self.plan.late_table}" SELECT * FROM __late').fetchall()

    # ---- metrics --------------------------------------------------------------------------------

    def workers_start_seconds(self) -> float | None:
        """How long starting the workers took (see :attr:`WorkerPool.start_seconds`); None
        without workers."""
        return None if self.pool is None else round(self.pool.start_seconds, 3)

    def partition_metrics(self) -> list[dict]:
        """Per worker: pid, cores, batches, records in and out, queue depth, late rows, watermark,
        busy/waiting seconds."""
        if self.pool is None:
            return []
        return [
            {
                **worker_identity(m),
                "reader": self.readers.get(m.partition),
                "batches": self.batches_to[m.partition],
                "records_in": self.records_to[m.partition],
                "records_out": self.records_from[m.partition],
                "queue_depth": self.pool.outstanding(m.partition) if not self.pool.closed else 0,
                "queue_records": sum(self.queued[m.partition]) - (self.queued[m.partition] or [0])[0],
                "queue_peak": self.queue_peak[m.partition],
                "late_rows": self.late_by[m.partition],
                "watermark": format_watermark(self.part_wm[m.partition]),
                "busy_seconds": round(m.busy_seconds, 3),
                "waiting_seconds": round(m.wait_seconds, 3),
            }
            for m in self.pool.metrics()
        ]


def _counts(ids: pa.Array, n: int) -> dict[int, int]:
    """How many rows go to each worker that gets any (one comparison per worker: for the few
    workers of a machine cheaper than ``value_counts``' hash table)."""
    out = {}
    for worker in range(n):
        rows = pc.sum(pc.equal(ids, int_scalar(worker, ids.type))).as_py() or 0
        if rows:
            out[worker] = rows
    return out


def _bare_columns(keys: tuple[str | None, ...], names: list[str]) -> tuple[str, ...] | None:
    """The source columns the routing keys are when each is a bare column (``keys``: the
    planner's ``route_key_columns``), else None."""
    by_lower = {n.lower(): n for n in names}
    if any(k not in by_lower for k in keys):  # an expression (None) or not a source column
        return None
    return tuple(by_lower[k] for k in keys)


def _partial_variants(partial: str, window) -> tuple[str, str]:
    """The partial SQL, and its variant for batches whose event times are all >= 0."""
    return partial, W.nonnegative_variant(partial, window)
