"""The local driver of a statement over several streams (a join, a UNION ALL of streams).

One reader thread per source feeds one bounded queue, each batch tagged with its input. The job
thread takes the queue in arrival order, coalesces runs of batches of one input into micro-batches
and stamps them as the single-stream driver does. Each input has its own watermark, and a row
is late when it is behind its own stream's: which rows are on time then depends on each stream's
order alone, not on how the streams' rows interleave. The statement's watermark, which closes
windows and drops join state, is the minimum over the inputs (an input that ended no longer
counts), so a stream whose rows come later holds it back. Late rows of every input go to
``<name>__late``, whose columns are those of all inputs, by name, with the input's name in
``_source``.
"""

from __future__ import annotations

import threading
import time

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ..connectors.base import PARTITION_COL, SourceContext, _arange, empty_table, int_scalar
from ..errors import DataError, JobError
from ..sql.duckdb_errors import duckdb_error, duckdb_message
from . import operators
from .job import format_watermark
from .pool import WorkerPool, worker_identity
from .protocol import Batch, Call, Query
from .v1 import DLQ_SCHEMA, V1Executor, _restore_tracker, time_column
from .watermark import NEG_INF, NOT_YET, POS_INF, WatermarkTracker, any_late, event_time_us, without_null_time

ALIGN_SLACK_US = 10_000_000  # event time a stream may run ahead beyond what the statement needs


class MultiInputExecutor(V1Executor):
    """Runs a plan with several inputs (``plan.inputs``) on one DuckDB connection."""

    held_back = 0  # how many times a stream's reader was held back (_align)

    def prepare(self) -> None:
        plan = self.plan
        self.con = self.job.engine._job_connection()
        self.sources = []
        try:
            for spec in plan.inputs:
                source = self.job.engine._make_source(plan, spec.source)
                self.sources.append(source)
                name = spec.source.name
                ctx = SourceContext(
                    stop=self.job.stop_event,
                    reject_fn=lambda loc, err, raw, s=name: self._reject(loc, err, raw, s),
                    reject_at_fn=lambda loc, err, raw, at, s=name: self._reject(loc, err, raw, s, at),
                )
                try:
                    source.open(ctx)
                except DataError as exc:
                    raise DataError(f"{plan.location}: {exc}") from None
            self.source = self.sources[0]
            time = plan.time
            self.trackers = [WatermarkTracker(time.lateness_us, time.idle_timeout_us) for _ in self.sources]
            self.ended = [False] * len(self.sources)
            self.drift = self._drift()
            if self.drift is not None:
                self.gates = [threading.Event() for _ in self.sources]
                for gate in self.gates:
                    gate.set()
            for tracker, source in zip(self.trackers, self.sources):
                splits = getattr(source, "splits", None)
                pieces = splits(1, False) if splits is not None else []
                tracker.expect(p[1] for p in (pieces or [(None, 0)]))
                known = getattr(source, "partition_ids", None)
                if known is not None:
                    tracker.expect(known())
            self.pool = None
            self._open_checkpoints()
            self._sources_opened()
            self._bind()
            tokens = self._restore() if self.epoch else {}
            self._start_workers()
            self._open_sinks(tokens)
        except BaseException:
            self.close()
            raise

    # ---- V2: the join's keys split across workers ----------------------------------------------

    def _start_workers(self) -> None:
        """Under V2, a join with an equality in ON runs in N workers, each stream's rows sent to
        the worker of their key's hash; anything else runs here (EXPLAIN's routing line)."""
        from .v2 import Routing, choose

        self.pool = None
        if self.job.processor.processor_version() != "V2":
            return
        n = self.job.processor.num_partitions()
        self.route = choose(self.plan, n)
        if self.route.workers and self.checkpoints is not None:
            self.route = Routing("v1", "", "one partition (the V1 engine) in the job's process: a job with a "
                                 "state location keeps the join's state where its checkpoints take it")  # fmt: skip
            return
        self.hashes = self._key_hashes(n) if self.route.workers else None
        if self.hashes is None:
            if self.route.workers:
                self.route = Routing("v1", "", "one partition (the V1 engine): the join keys' types differ "
                                     "between the streams, so their hashes would not meet")  # fmt: skip
            return
        self.part_in = [0] * n
        self.part_out = [0] * n
        self.part_wm: list[int | None] = [None] * n  # the watermark each worker last had
        self.pool = WorkerPool(n, affinity=bool(self.opts.get("enable_affinity")), max_in_flight=2)
        if getattr(self.job.engine, "sandbox", None) is not None:  # user SQL runs in the workers too
            self.job.engine.sandbox.lock_workers(self.pool, self.sources)
        empties = [self._stamp(empty_table(s.schema), i, observe=False) for i, s in enumerate(self.sources)]
        self.seq = 0
        self._broadcast(Query(Call("velosql.runtime.operators.hosted:bind", (self.plan.operator, empties))))
        self.sent_wm = NEG_INF

    def _key_hashes(self, n: int) -> list[str] | None:
        """Per input, the SQL giving each row of ``__in`` its worker; None when the two sides'
        key types would hash differently (a DOUBLE against a VARCHAR, say)."""
        keys = self.plan.operator.keys
        types = []
        for i, side in enumerate(keys):
            empty = self._stamp(empty_table(self.sources[i].schema), i, observe=False)
            with self._registered("__in", empty):
                cols = ", ".join(f"{k} AS __k{j}" for j, k in enumerate(side))
                types.append([f.type for f in self._exec(f"SELECT {cols} FROM __in").to_arrow_table().schema])
        self.seq = 0
        exprs: list[list[str]] = [[], []]
        for j, (a, b) in enumerate(zip(*types)):
            if a == b or (pa.types.is_integer(a) and pa.types.is_integer(b)):
                cast = None
            elif all(
                pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) for t in (a, b)
            ):
                cast = "DOUBLE"
            elif all(pa.types.is_string(t) or pa.types.is_large_string(t) for t in (a, b)):
                cast = None
            else:
                return None
            for i in (0, 1):
                exprs[i].append(keys[i][j] if cast is None else f"CAST({keys[i][j]} AS {cast})")
        return [f"SELECT (hash({', '.join(e)}) % {n})::INTEGER AS __w FROM __in" for e in exprs]

    def _broadcast(self, request) -> list[pa.Table]:
        for w in range(len(self.pool)):
            self.pool.send(w, request)
        return [r.table for w in range(len(self.pool)) for r in self.pool.drain(w)]

    def _scatter(self, table: pa.Table, side: int) -> pa.Table | None:
        """Each worker's share of ``table`` (registered as ``__in``), joined there; their output."""
        ids = self.con.sql(self.hashes[side]).to_arrow_table()["__w"]
        call = Call("velosql.runtime.operators.hosted:process", side)
        sent = []
        for w in range(len(self.pool)):
            part = table.filter(pc.equal(ids, int_scalar(w, pa.int32())))
            if part.num_rows:
                self.pool.send(w, Batch(part, call))
                self.part_in[w] += part.num_rows
                sent.append(w)
        out = []
        for w in sent:
            for reply in self.pool.drain(w):
                if reply.table is not None:
                    self.part_out[w] += reply.table.num_rows
                    out.append(reply.table)
        return operators.concat(out)

    def workers_start_seconds(self) -> float | None:
        return None if self.pool is None else round(self.pool.start_seconds, 3)

    def partition_metrics(self) -> list[dict]:
        """Per worker of a join under V2: pid, cores, records in and out, busy/waiting seconds."""
        if getattr(self, "pool", None) is None:
            return []
        return [
            {
                **worker_identity(m),
                "reader": None,
                "batches": m.requests,
                "records_in": self.part_in[m.partition],
                "records_out": self.part_out[m.partition],
                "queue_depth": self.pool.outstanding(m.partition) if not self.pool.closed else 0,
                "queue_records": 0,
                "queue_peak": 0,
                "late_rows": 0,
                "watermark": format_watermark(self.part_wm[m.partition]),
                "busy_seconds": round(m.busy_seconds, 3),
                "waiting_seconds": round(m.wait_seconds, 3),
            }
            for m in self.pool.metrics()
        ]

    def _drift(self) -> int | None:
        """How far (µs of event time) a stream may read ahead of the statement's watermark before
        its reader waits for the others: what a row can still need of the other streams (the
        join's bound, the window) plus the lateness. None: the streams are read freely (a union,
        or no event time)."""
        plan = self.plan
        if plan.shape == "union" or all(i.time.column is None for i in plan.inputs):
            return None
        need = plan.time.lateness_us
        if plan.window is not None:
            need += plan.window.size_us
        elif plan.shape == "join":
            lo, hi = plan.operator.interval
            if lo is None or hi is None:
                return None  # the rows wait for the end of the input anyway
            need += max(abs(lo), abs(hi))
        return need + ALIGN_SLACK_US

    def _align(self) -> None:
        """Hold back the reader of each stream whose own watermark is more than the drift ahead of
        the statement's (the slowest stream's), and let it go once it is not: the rows it would
        read now would only wait in state for the others. The stream that holds the statement's
        watermark is never held back, so reading always goes on."""
        if self.gates is None:
            return
        wm = self._watermark()
        for tracker, gate, ended in zip(self.trackers, self.gates, self.ended):
            ahead = (
                not ended
                and NOT_YET < tracker.watermark
                and tracker.watermark - max(wm, NOT_YET) > self.drift
            )
            if ahead and gate.is_set():
                gate.clear()
                self.held_back += 1
            elif not ahead and not gate.is_set():
                gate.set()

    def _watermark(self) -> int:
        """The statement's watermark: the minimum over the inputs that have not ended."""
        marks = [t.watermark for t, ended in zip(self.trackers, self.ended) if not ended]
        return min(marks) if marks else POS_INF

    def _bind(self) -> None:
        plan = self.plan
        empties = [self._stamp(empty_table(s.schema), i, observe=False) for i, s in enumerate(self.sources)]
        for i, empty in enumerate(empties):
            self.con.register(f"__in{i}", empty)
        try:
            self.out_schema = self.operator.bind(self.con, empties)
            late = []
            for i, empty in enumerate(empties):
                with self._registered("__in", empty):
                    late.append(self._exec(self._late_select(i)).to_arrow_table().schema)
        except duckdb.Error as exc:
            raise duckdb_error(exc, plan.text, plan.location) from None
        finally:
            for i in range(len(empties)):
                self.con.unregister(f"__in{i}")
        self.out_names = self.out_schema.names
        fields: dict[str, pa.Field] = {"_source": pa.field("_source", pa.string())}
        for schema in late:
            for f in schema:
                fields.setdefault(f.name, f)
        self._create_table(plan.late_table, pa.schema(list(fields.values())))
        self._create_table(plan.dlq_table, DLQ_SCHEMA)

    def _late_select(self, side: int = 0) -> str:
        name = self.plan.inputs[side].source.name.replace("'", "''")
        return (
            f"SELECT '{name}' AS _source, * EXCLUDE (__seq, __et, __wm), make_timestamp(__et) AS _event_time, "
            f"make_timestamp(__wm) AS _watermark FROM ({self.sql.late})"
        )

    # ---- stamping --------------------------------------------------------------------------------

    def _stamp(self, table: pa.Table, side: int, observe: bool = True) -> pa.Table:
        """``__seq``, ``__et`` (the input's event time; 0 without one, arrival time for windows
        over processing time) and ``__wm`` (the watermark each row saw)."""
        n = table.num_rows
        table = table.append_column("__seq", pc.add(_arange(n), int_scalar(self.seq)))
        self.seq += n
        spec = self.plan.inputs[side]
        col = spec.time.column
        if col is None:
            now = time.time_ns() // 1000 if self.plan.windowed else 0
            et = pa.repeat(int_scalar(now), n)
        else:
            col = time_column(table, col, spec.source.name, self.plan.location)
            et = event_time_us(table[col], spec.time.format, col)
            if observe and et.null_count:
                table, et, rejects = without_null_time(table, et, spec.source.name, col)
                for location, error, raw in rejects:
                    self._reject(location, error, raw, spec.source.name)
        wm = None
        if observe and (col is not None or self.plan.windowed):
            window = self.plan.window
            late = (lambda e, w: any_late(window, e, w)) if window is not None else _behind
            wm = self.trackers[side].observe_unless_on_time(et, table[PARTITION_COL].combine_chunks(), late)
        self.on_time = wm is None
        if wm is None:
            wm = pa.repeat(int_scalar(NEG_INF), table.num_rows)
        return table.append_column("__et", et).append_column("__wm", wm)

    # ---- the loop (V1Executor.run reads every input) -----------------------------------------------

    def _idle_watermark(self) -> None:
        if self.trackers[0].idle_timeout:
            for tracker in self.trackers:
                tracker.advance()
            self._after_watermark(self._watermark())
            self._align()

    def _partition_ended(self, side: int, partition: int) -> None:
        self.trackers[side].end_partition(partition)

    def _upstream_watermark(self, side: int, value: int) -> None:
        tracker = self.trackers[side]
        if self.plan.inputs[side].time.column is not None and value > tracker.watermark:
            tracker.watermark = value
            self._after_watermark(self._watermark())
            self._forward_watermark()

    def _forward_watermark(self) -> None:
        wm = self._watermark()
        if NOT_YET < wm < POS_INF and wm > self.forwarded:
            self.forwarded = wm
            for sink in self.sinks:
                if hasattr(sink, "watermark"):
                    sink.watermark(wm)

    def _input_ended(self, side: int) -> None:
        self.ended[side] = True
        self._align()

    def _process_pending(self, pending: list) -> None:
        """Each run of one input's batches as one micro-batch, in arrival order."""
        t0 = time.monotonic()
        start = 0
        for i in range(1, len(pending) + 1):
            if i == len(pending) or pending[i].side != pending[start].side:
                side = pending[start].side
                table = pa.Table.from_batches([t.item for t in pending[start:i]])
                start = i
                if self.tracking:
                    table = self._read_past(table, self.plan.inputs[side].source.name)
                    if not table.num_rows:  # every row was read before the restart
                        continue
                    self.changed = True
                self.metrics.records_in += table.num_rows
                self.metrics.batches += 1
                self._step_input(self._stamp(table, side), side)
        wm = self._watermark()
        if wm != NEG_INF:
            self.metrics.watermark = wm
            self._after_watermark(wm)
            self._forward_watermark()
        self._align()
        self.metrics.busy_seconds += time.monotonic() - t0

    def _step_input(self, table: pa.Table, side: int) -> None:
        try:
            with self._registered("__in", table):
                if not self.on_time:
                    self._store_late(side)
                if self.pool is not None:
                    self._write_some(self._scatter(table, side))
                else:
                    self._write_some(self._operate(lambda b: self.operator.process(b, side), table))
        except duckdb.Error as exc:
            raise JobError(f"job {self.plan.name!r}: {duckdb_message(exc)}") from None

    def _store_late(self, side: int) -> None:
        late = self.con.sql(self._late_select(side)).to_arrow_table()
        if late.num_rows:
            self.metrics.late_rows += late.num_rows
            if self.opts.get("late.data.strategy") != "drop":
                with self._registered("__late", late):
                    self.con.execute(
                        f'INSERT INTO "{self.plan.late_table}" BY NAME SELECT * FROM __late'
                    ).fetchall()

    def _after_watermark(self, wm: int) -> None:
        if self.pool is None:
            self._write_some(self._operate(self.operator.on_watermark, wm))
        elif wm > self.sent_wm:
            self.sent_wm = wm
            self.part_wm = [wm] * len(self.pool)
            call = Call("velosql.runtime.operators.hosted:on_watermark", wm)
            self._write_some(operators.concat([t for t in self._broadcast(Query(call)) if t is not None]))

    def _tracker_values(self) -> dict:
        return {"trackers": [[t.watermark, sorted(t.max_by_partition.items())] for t in self.trackers]}

    def _restore_trackers(self, values: dict) -> None:
        for tracker, (watermark, maxima) in zip(self.trackers, values["trackers"]):
            _restore_tracker(tracker, watermark, maxima)
        self.metrics.watermark = self._watermark()

    def _finish(self) -> None:
        wm = POS_INF
        self.metrics.watermark = wm
        if self.pool is None:
            self._write_some(self._operate(self.operator.finish, wm))
        else:
            call = Call("velosql.runtime.operators.hosted:finish", wm)
            self._write_some(operators.concat([t for t in self._broadcast(Query(call)) if t is not None]))
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        if getattr(self, "pool", None) is not None:
            self.pool.close()
        for sink in getattr(self, "sinks", []):
            try:
                sink.close()
            except Exception:  # noqa: BLE001 - first error wins; closing the rest matters more
                pass
        for source in getattr(self, "sources", []):
            source.close()


def _behind(et, wm) -> bool:
    """A join's row is late when it is behind the watermark it saw."""
    return bool(pc.any(pc.less(et, wm)).as_py())
