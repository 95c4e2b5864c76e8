"""EXPLAIN: a plan as text a person can check against their intent."""

from __future__ import annotations

from .. import options
from .planner import KAFKA_TIMESTAMP, StreamPlan


def _duration(us: int | None) -> str:
    if not us:
        return "0s"
    for unit, size in (("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000), ("ms", 1_000)):
        if us % size == 0:
            return f"{us // size}{unit}"
    return f"{us}us"


def _options(values: dict, scope: str) -> str:
    shown = {k: v for k, v in values.items() if v not in (None, False, "") and k != "schema"}
    parts = []
    for key, value in sorted(shown.items()):
        opt = options.find(scope, key)
        parts.append(f"{key}={_duration(value) if opt and opt.kind == 'duration' else value}")
    return ", ".join(parts)


def _pushdown_eligible(plan: StreamPlan) -> bool:
    from ..runtime.pushdown import eligible

    return eligible(plan)


def _operator_text(plan: StreamPlan) -> str:
    """Which operator runs the statement, and why."""
    if plan.shape == "general":
        why = ", ".join(plan.operator.why)
        where = (
            "each window's on-time rows when the watermark closes it"
            if plan.window
            else ("every row when the input ends (bounded sources)")
        )
        return (
            f"general: the whole SELECT runs over {where}, the rows kept in DuckDB until then; "
            f"no incremental operator reads {why}"
        )
    if plan.shape == "join":
        op = plan.operator
        outer = {
            "inner": "",
            "left": "; a left row with no match is emitted (NULL-extended) when it can match no more",
            "right": "; a right row with no match is emitted (NULL-extended) when it can match no more",
            "full": "; a row of either side with no match is emitted (NULL-extended) when it can match no more",
        }
        return (
            f"join: {op.why[0]}, incremental: each micro-batch of one stream is joined with the rows of the "
            f"other kept so far, so a pair is emitted when its later row arrives{outer[op.kind]}; state: {op.bound}; "
            "a stream far ahead of the other in event time waits for it"
        )
    if plan.shape == "union":
        return "union: the streams' rows never meet; each stream's micro-batches run through the SELECT on their own"
    if plan.shape == "distinct":
        return "distinct: each row passes the first time it is seen; the rows passed are kept in DuckDB"
    if plan.shape == "project" and not plan.sql.project_orderable:
        return "project: stateless, the whole SELECT runs on each micro-batch"
    return {
        "project": "project: stateless, filters and projections on each micro-batch",
        "aggregate": "incremental aggregate: partial aggregates per micro-batch, combined in DuckDB state",
        "session": "session: rows kept per key until the watermark closes their session",
        "buffered": "row buffer: the last rows of each key, for ROWS WINDOW BUFFER functions",
    }[plan.shape]


def explain_text(plan: StreamPlan, processor, job=None) -> str:
    """The plan of one streaming statement; with a running ``job``, its metrics too (ANALYZE)."""
    lines = [f"{plan.kind.upper()} {plan.name}  ({plan.location})"]
    src = plan.source
    for i, inp in enumerate(plan.inputs or [None]):
        src = inp.source if inp is not None else plan.source
        lines.append(
            f"  source:      {src.name} [{src.type or 'python/table (resolved at deploy)'}] {_options(src.options, 'source')}"
        )
        if inp is not None and plan.window is None and plan.shape == "join":
            et = inp.time.column or "none"
            lines.append(f"  event time:  {et} (input {i})")
    src = plan.source
    if plan.inputs and plan.shape == "join" and plan.time.column is not None:
        t = plan.time
        lines.append(
            f"  watermark:   max event time per partition of every stream - {_duration(t.lateness_us)} "
            f"(allowed lateness), minimum over them; late rows kept in {plan.late_table}"
        )
    t = plan.time
    if plan.window is not None:
        et = t.column or "processing time (no event-time column named)"
        if t.column == KAFKA_TIMESTAMP and src.type == "kafka_source":
            et += " (the Kafka message timestamp)"
        idle = _duration(t.idle_timeout_us) if t.idle_timeout_us else "none"
        lines.append(
            f"  event time:  {et}; watermark = max event time per source partition - "
            f"{_duration(t.lateness_us)} (allowed lateness), minimum over partitions; idle timeout {idle}"
        )
        lines.append(f"  late rows:   counted and kept in {plan.late_table}")
    lines.append(f"  shape:       {plan.shape}")
    lines.append(f"  operator:    {_operator_text(plan)}")
    if (src.type or "file_source") == "file_source" and _pushdown_eligible(plan):
        lines.append(
            "  scan:        scan pushdown: when the files are bounded and their column types allow, "
            "DuckDB's reader computes the partial aggregates on all cores (scan_pushdown = false: "
            "record by record)"
        )
    if plan.group_keys:
        lines.append(f"  group keys:  {', '.join(plan.group_keys)}")
    if plan.window is not None:
        w = plan.window
        size = _duration(w.size_us)
        if w.kind == "sliding":
            size += f", advance {_duration(w.advance_us)}"
        if w.kind == "session":
            size = f"gap {size}"
        lines.append(f"  window:      {w.kind.upper()} {size}")
    if plan.aggregates:
        lines.append("  aggregates:")
        for a in plan.aggregates:
            kind = "holistic (keeps values)" if a.holistic else "decomposable"
            lines.append(f"    {a.call}  [{kind}]")
            lines.append(f"      partial: {', '.join(a.partial)}")
            lines.append(f"      combine: {', '.join(a.combine)}")
            lines.append(f"      final:   {a.final}")
    emit = {
        "final": "FINAL: one row per group (and window) when the watermark closes it; at end of input otherwise",
        "changes": "CHANGES: one row per input row with its group's updated values",
    }[plan.emit]
    if plan.shape in ("project", "buffered"):
        emit = "CHANGES: one output row per input row that passes WHERE"
    elif plan.shape == "distinct":
        emit = "CHANGES: the first occurrence of each distinct row, when it arrives"
    elif plan.shape == "union":
        emit = "CHANGES: each stream's output rows as its rows arrive"
    elif plan.shape == "join":
        emit = "CHANGES: each joined row once, when its later row arrives (the rows are final: nothing is retracted)"
    elif plan.shape == "general":
        emit = (
            "FINAL: the SELECT's rows for each window when the watermark closes it"
            if plan.window is not None
            else "FINAL: the SELECT's rows once, at the end of the input"
        )
    lines.append(f"  emit:        {emit}")
    for s in plan.sinks:
        key = f" keyed by {', '.join(s.key)}" if s.key else ""
        lines.append(f"  sink:        {s.name} [{s.type}]{key} {_options(s.options, 'sink')}".rstrip())
    lines.append(
        f"  dead letters: {plan.dlq_table} (failure_strategy={plan.job_options.get('failure_strategy')})"
    )
    lines.append(f"  processor:   {processor.description()}")
    if processor.architecture == "v2":
        from ..runtime.v2 import choose

        route = job.executor.route if job is not None and getattr(job.executor, "route", None) else None
        if route is not None:
            text = route.text
        else:
            route = choose(plan, processor.effective_partitions(), None)
            text = route.text
            if route.workers and (src.type or "file_source") == "file_source" and _pushdown_eligible(plan):
                # What runs is decided when the files are open: say both, the scan first.
                text = (
                    "when the scan pushdown applies (see scan:), no worker process starts (and no core "
                    f"is pinned): DuckDB's reader runs the query on every core; otherwise {text}"
                )
            if route.strategy == "hash":
                # The key's types are known once the source is open (V2Executor._hashable_route).
                text += (
                    "; when the job starts, a key of a type without a stable hash (LIST, STRUCT, "
                    "MAP) is not hash-routed, and EXPLAIN ANALYZE says so"
                )
        lines.append(f"  routing:     {text}")
    for note in plan.notes:
        lines.append(f"  note:        {note}")
    if job is not None:
        m = job.metrics()
        parts = m.pop("partitions", None) or []
        lines.append("  metrics:     " + ", ".join(f"{k}={v}" for k, v in m.items()))
        for part in parts:
            i = part.pop("partition")
            lines.append(f"  partition {i}: " + ", ".join(f"{k}={v}" for k, v in part.items()))
    return "\n".join(lines)
