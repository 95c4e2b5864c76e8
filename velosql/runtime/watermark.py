"""Event time and watermarks, computed a batch at a time with pyarrow.

The watermark of a job is the minimum over its active source partitions of the largest event time
seen in that partition, minus the allowed lateness, and it never goes back. It is judged per row in
arrival order: the watermark row *i* sees is the one rows *0 … i-1* set. That is what makes lateness,
and so every result, independent of how the input happens to be split into batches.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc

from ..connectors.base import OFFSET_COL, PARTITION_COL, int_array, int_scalar
from ..errors import DataError

NEG_INF = -(2**63)
POS_INF = 2**63 - 1
# The maximum of a partition that is expected but has delivered nothing yet (see
# WatermarkTracker.expect): before any real event time (~73,000 years before 1970 in µs), and far
# enough from int64's end that subtracting a lateness never wraps. A watermark at or below it is
# no watermark yet.
NOT_YET = -(2**61)
# Beyond this many runs of one partition in a batch, one aggregation beats a step per run.
_MAX_RUNS = 64
_PROBE_ROWS = 1024  # rows max_by_partition looks at first for that many runs
_UNITS = {"epoch_millis": 1_000, "epoch_seconds": 1_000_000, "epoch_micros": 1}


def event_time_us(column: pa.ChunkedArray | pa.Array, fmt: str | None, name: str) -> pa.Array:
    """A column's event time as int64 microseconds since the epoch (nulls stay null).

    Timestamps and dates convert directly; integers are epoch milliseconds unless ``fmt`` says
    ``epoch_seconds``/``epoch_micros``; strings are ISO-8601 unless ``fmt`` is a strftime pattern.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    t = column.type
    try:
        if pa.types.is_timestamp(t):
            us = column.cast(pa.timestamp("us", t.tz)) if t.unit != "us" else column
            return us.view(pa.int64()) if hasattr(us, "view") else us.cast(pa.int64())
        if pa.types.is_date(t):
            return column.cast(pa.timestamp("us")).cast(pa.int64())
        if pa.types.is_integer(t) or pa.types.is_floating(t):
            factor = _UNITS.get((fmt or "epoch_millis").lower())
            if factor is None:
                raise DataError(f"event.time.format {fmt!r} does not apply to numeric column {name!r}")
            return pc.multiply(column, int_scalar(factor)).cast(pa.int64())
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            if fmt and fmt.lower() not in ("iso8601", "iso_8601"):
                return pc.strptime(column, format=fmt, unit="us").cast(pa.int64())
            return column.cast(pa.timestamp("us")).cast(pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"cannot read event time from column {name!r} ({t}): {exc}") from None
    raise DataError(f"column {name!r} of type {t} cannot be an event time")


_REVERSED: list = [pa.nulls(0, pa.int64())]


def _reversed_range(n: int) -> pa.Array:
    """``[n-1, n-2, … 0]`` (int64); the last one is kept, batches tend to have the same size."""
    rev = _REVERSED[0]
    if len(rev) != n:
        rev = pc.cumulative_sum(pa.repeat(int_scalar(-1), n), start=int_scalar(n))
        _REVERSED[0] = rev
    return rev


class WatermarkTracker:
    """Per-partition maxima, idle detection and the monotone job watermark."""

    def __init__(self, lateness_us: int, idle_timeout_us: int | None = None) -> None:
        self.lateness = lateness_us
        self.idle_timeout = idle_timeout_us / 1e6 if idle_timeout_us else None
        self.max_by_partition: dict[int, int] = {}
        self.last_seen: dict[int, float] = {}
        self.watermark = NEG_INF

    def _active(self, now: float) -> dict[int, int]:
        if self.idle_timeout is None:
            return self.max_by_partition
        return {
            p: m for p, m in self.max_by_partition.items() if now - self.last_seen[p] <= self.idle_timeout
        }

    def observe(self, et: pa.Array, partition: pa.Array) -> pa.Array:
        """Record a batch; return the watermark each row saw (int64, before the row itself).

        Row ``i`` sees ``max(wm, max(L(-1) … L(i-1)) - lateness)``: ``wm`` is the job watermark
        before the batch, ``L(j)`` the minimum, over the partitions that count after row ``j``, of
        the largest event time each delivered so far (``L(-1)``: before the batch). The partitions
        that count are those present in the batch that delivered something earlier, the active
        (not idle) ones that are not in it, and a partition new to the tracker from its first row
        on. Afterwards the job watermark is what a next row would see, so splitting a batch in two
        changes nothing.
        """
        n = len(et)
        now = time.monotonic()
        active = self._active(now)
        bounds = pc.min_max(partition)
        lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
        if n == 0:
            return pa.nulls(0, pa.int64())
        seen = None
        if lo != hi and self._sortable(et, partition):
            seen = self._observe_sorted(et, partition, now, active)
        if seen is None:
            seen = self._observe_masked(et, partition, now, active, lo, hi)
        # What the last row saw still holds after it: the watermark never goes back.
        self.watermark = max(self.watermark, seen[n - 1].as_py())
        return seen

    def observe_unless_on_time(self, et: pa.Array, partition: pa.Array, could_be_late) -> pa.Array | None:
        """:meth:`observe`, or only record the batch and return None when no row can be late.

        ``could_be_late(et, bound)`` is asked with an upper bound of the watermark each row saw:
        the largest event time before the row (in the batch or in any known partition) minus the
        lateness. It must be False for rows not behind their bound (``et >= bound``), as a row
        whose windows all end after it is never late; batches with no row behind the bound are
        recognised without asking. Every partition that counts for a row has a running maximum no larger than that,
        so when the bound shows no late row, the exact per-row watermarks are not needed; only the
        partitions' maxima and the job watermark change. Partitions new to the tracker can lower
        the watermark mid-batch: the rows up to the last one's first row take the exact path (a
        batch can be split without changing what any row sees unless a partition that was idle
        before the batch is in it), the rest this one.
        """
        n = len(et)
        if n == 0 or not self._sortable(et, partition) or not self._moderate(et):
            return self.observe(et, partition)
        present = max_by_partition(partition, et)
        prior = self.max_by_partition
        new = [p for p in present if p not in prior]
        if new:
            # An idle partition present in the batch counts from the batch's first row on; cut
            # there, it would count only from the cut: split only when no such partition exists.
            active = self._active(time.monotonic())
            cut = max(pc.index(partition, int_scalar(p, partition.type)).as_py() for p in new) + 1
            if cut * 4 > n or any(p in prior and p not in active for p in present):
                return self.observe(et, partition)
            head = self.observe(et.slice(0, cut), partition.slice(0, cut))
            rest_et, rest_part = et.slice(cut), partition.slice(cut)
            if could_be_late(et.slice(0, cut), head):
                return pa.concat_arrays([head, self.observe(rest_et, rest_part)])
            rest = self.observe_unless_on_time(rest_et, rest_part, could_be_late)
            return None if rest is None else pa.concat_arrays([head, rest])
        top = int_scalar(max(prior.values()))
        # Row i can only be late when it is behind its bound (its windows end after it). With
        # the running maximum including the row itself (which cannot put the row behind), that
        # is: the batch reaches below the job watermark, or some row trails the running maximum
        # by more than the lateness. Usually neither holds: three kernels, no per-row bound.
        running = pc.cumulative_max(et, start=top)
        behind = pc.max(pc.subtract(running, et)).as_py()
        if behind > self.lateness or pc.min(et).as_py() < self.watermark:
            before = pa.concat_arrays([pa.repeat(top, 1), running.slice(0, n - 1)])
            bound = pc.max_element_wise(
                pc.subtract(before, int_scalar(self.lateness)), int_scalar(self.watermark)
            )
            if could_be_late(et, bound):
                return self.observe(et, partition)
        now = time.monotonic()
        for p, m in present.items():
            prior[p] = max(prior[p], m)
            self.last_seen[p] = now
        self.advance(now)
        return None

    def _moderate(self, et: pa.Array) -> bool:
        """Whether no ``x - lateness`` of this batch or the partitions' maxima can wrap around in
        int64 (the exact path's arithmetic wraps; far from ±inf the two paths agree)."""
        bounds = pc.min_max(et)
        limit = 2**62
        values = [bounds["min"].as_py(), bounds["max"].as_py(), *self.max_by_partition.values()]
        return self.lateness < limit and all(-limit < v < limit for v in values)

    def _observe_masked(self, et, partition, now: float, active: dict, lo: int, hi: int) -> pa.Array:
        """:meth:`observe` with one masked pass per partition: for a batch of one partition (the
        common case: no masking needed), and for what :meth:`_observe_sorted` does not take (nulls,
        event times or maxima at ±inf)."""
        n = len(et)
        present = [lo] if lo == hi else pc.unique(partition).to_pylist()
        # Inclusive running maximum of every partition at every row; a partition not seen yet is
        # +inf so the minimum ignores it. The watermark row i saw is the minimum at row i - 1.
        # What row 0 saw: the maxima before this batch of the partitions that count.
        before = [self.max_by_partition[p] for p in present if p in self.max_by_partition]
        before += [m for p, m in active.items() if p not in present]
        running = []
        new_partition = False
        for p in present:
            prior = self.max_by_partition.get(p)
            # Other partitions' rows are replaced by this partition's prior maximum (or -inf), so
            # one cumulative max gives its running maximum including what came before the batch.
            fill = NEG_INF if prior is None else prior
            if lo == hi:
                run = pc.cumulative_max(et)
            else:
                mine = pc.equal(partition, int_scalar(p, partition.type))
                run = pc.cumulative_max(pc.if_else(mine, et, int_scalar(fill)))
            if prior is not None:
                run = pc.max_element_wise(run, int_scalar(prior))
            if prior is None:
                new_partition = True
                if lo != hi:
                    run = pc.if_else(pc.equal(run, int_scalar(NEG_INF)), int_scalar(POS_INF), run)
            self.max_by_partition[p] = run[n - 1].as_py()
            self.last_seen[p] = now
            running.append(run)
        others = [m for p, m in active.items() if p not in present]
        if others:
            running.append(pa.repeat(int_scalar(min(others)), n))
        low = running[0] if len(running) == 1 else pc.min_element_wise(*running)
        if new_partition and len(running) > 1:
            # A partition seen for the first time can lower the minimum (even below L(-1), the
            # minimum before the batch); the watermark never goes back.
            low = pc.cumulative_max(low, start=int_scalar(min(before) if before else NEG_INF))
        first = int_array([min(before) if before else POS_INF])
        shifted = pa.concat_arrays([first, low.slice(0, n - 1)])
        # +inf means no partition had delivered anything yet: the watermark stays where it was.
        watermark = int_scalar(self.watermark)
        shifted = pc.if_else(
            pc.equal(shifted, int_scalar(POS_INF)), watermark, pc.subtract(shifted, int_scalar(self.lateness))
        )
        seen = pc.max_element_wise(shifted, watermark)
        self.advance(now)
        return seen

    def _sortable(self, et: pa.Array, partition: pa.Array) -> bool:
        """Whether :meth:`_observe_sorted` can take the batch (it still declines ±inf event times)."""
        if not isinstance(et, pa.Array) or not isinstance(partition, pa.Array):
            return False
        if et.type != pa.int64() or et.null_count or partition.null_count:
            return False
        if not pa.types.is_integer(partition.type):
            return False
        # The masked formulation reads -inf as "not seen yet" and +inf as "no watermark"; event times
        # at ±inf are caught in _observe_sorted, which then declines.
        return all(NEG_INF < m < POS_INF for m in self.max_by_partition.values())

    def _observe_sorted(self, et: pa.Array, partition: pa.Array, now: float, active: dict) -> pa.Array | None:
        """:meth:`observe` for a batch of several partitions all known before it, in a few passes.

        Rows are stably sorted by partition, so each partition's running maximum is one cumulative
        max over its slice, started from its earlier maximum. With ``S(s)`` the running maximum of
        row ``s``'s partition before row ``s``, the minimum over the partitions before row ``i`` is
        the minimum of ``S(s)`` over the rows ``s >= i`` and of the partitions' final maxima (the
        next row of a partition carries its maximum so far, and a partition's rows carry
        non-decreasing values): one cumulative min over the rows in reverse order. A batch in which
        a partition appears for the first time can lower that minimum mid-batch; it returns None
        and takes the masked path.
        """
        n = len(et)
        prior = self.max_by_partition
        i64 = pa.int64()
        idx = pc.array_sort_indices(partition).view(i64)  # stable: rows ascending per partition
        ree = pc.run_end_encode(pc.take(partition, idx), run_end_type=i64)
        qs, ends = ree.values.to_pylist(), ree.run_ends.to_pylist()
        if any(q not in prior for q in qs):
            return None
        starts = [0, *ends[:-1]]
        first = {q: idx[a].as_py() for q, a in zip(qs, starts)}
        present = set(qs)
        other_min = min((m for q, m in active.items() if q not in present), default=POS_INF)
        v = pc.take(et, idx)
        final: dict[int, int] = {}
        pieces = []
        for q, a, b in zip(qs, starts, ends):
            cm = pc.cumulative_max(v.slice(a, b - a), start=int_scalar(prior[q]))
            final[q] = cm[b - a - 1].as_py()
            pieces += [int_array([prior[q]]), cm.slice(0, b - a - 1)]
        # The masked formulation reads +inf as "no watermark": leave such batches to it.
        if max(final.values()) >= POS_INF:
            return None
        # S in reverse row order: position n - 1 - s holds S(s).
        s_rev = pc.scatter(pa.concat_arrays(pieces), pc.subtract(n - 1, idx))
        last_low = min([*final.values(), other_min])
        low = pc.take(pc.cumulative_min(s_rev, start=int_scalar(last_low)), _reversed_range(n))
        seen = pc.max_element_wise(pc.subtract(low, int_scalar(self.lateness)), int_scalar(self.watermark))
        for q in sorted(qs, key=first.__getitem__):
            self.max_by_partition[q] = final[q]
            self.last_seen[q] = now
        self.advance(now)
        return seen

    def advance(self, now: float | None = None) -> int:
        """Recompute the job watermark after a batch, or on an idle poll (idle partitions drop out)."""
        active = self._active(time.monotonic() if now is None else now)
        if active:
            self.watermark = max(self.watermark, min(active.values()) - self.lateness)
        return self.watermark

    def expect(self, partitions) -> None:
        """Partitions that will deliver later, such as the files of a bounded source read one
        after another: each counts as having delivered nothing (:data:`NOT_YET`) until its first
        row, so the watermark waits for it instead of judging its rows late against the
        partitions read before it. An idle timeout still releases one that delivers nothing."""
        now = time.monotonic()
        for p in partitions:
            if p not in self.max_by_partition:
                self.max_by_partition[p] = NOT_YET
                self.last_seen[p] = now

    def end_partition(self, partition: int) -> None:
        """A finished partition no longer holds the watermark back."""
        self.max_by_partition.pop(partition, None)
        self.last_seen.pop(partition, None)

    def finish(self) -> int:
        """End of input: every window closes."""
        self.watermark = POS_INF
        return self.watermark


def any_late(window, et: pa.ChunkedArray, wm: pa.ChunkedArray) -> bool:
    """Vectorised pre-check of the late condition, so the late-row query runs only when needed."""
    # Every window holding et ends after et, so a row not behind its watermark is never late: one
    # comparison settles the common case (disorder within the allowed lateness).
    if not pc.any(pc.less(et, wm)).as_py():
        return False
    if window.kind == "session":
        return True
    if window.kind == "tumbling":
        start = pc.subtract(et, _posmod(et, int_scalar(window.size_us)))
    else:  # the earliest sliding window holding et starts after et - size
        advance = int_scalar(window.advance_us)
        base = pc.subtract(et, int_scalar(window.size_us))
        start = pc.add(pc.subtract(base, _posmod(base, advance)), advance)
    return bool(pc.any(pc.less_equal(pc.add(start, int_scalar(window.size_us)), wm)).as_py())


def _posmod(values, m: pa.Scalar):
    """values mod m in [0, m) with integer kernels (pyarrow's divide truncates toward zero)."""
    rem = pc.subtract(values, pc.multiply(pc.divide(values, m), m))
    return pc.add(rem, pc.multiply(pc.cast(pc.less(rem, int_scalar(0)), pa.int64()), m))


def max_by_partition(partition: pa.Array, et: pa.Array) -> dict[int, int | None]:
    """Each partition's largest event time in a batch (None where all are NULL).

    A batch from a partitioned source holds a few runs of rows of one partition (a source batch
    never spans two): the maximum of each run, without pyarrow's ``group_by``, whose first call
    imports ``pyarrow.acero`` and, where installed, pandas (~0.2 s of a job's first batch). A
    batch whose rows name their own partitions (pushed from Python, say) may hold a run per row:
    one aggregation then, as a Python step per run took 1.2 s per 262,144 rows.
    """
    if isinstance(partition, pa.ChunkedArray):
        partition = partition.combine_chunks()
    # Where the partition changes at nearly every row, the first rows tell: encoding the whole
    # batch only to find too many runs cost ~0.5 ms per 262,144 pushed trades rows.
    head = partition.slice(0, _PROBE_ROWS)
    changes = pc.sum(pc.not_equal(head.slice(1), head.slice(0, max(len(head) - 1, 0)))).as_py() or 0
    runs = None if changes >= _MAX_RUNS else pc.run_end_encode(partition)
    if runs is None or len(runs.run_ends) > _MAX_RUNS:
        from .arrow_partials import acero_group_by

        top = acero_group_by(pa.table({"p": partition, "et": et}), ["p"], [("et", "max")])
        return dict(zip(top["p"].to_pylist(), top["et_max"].to_pylist()))
    out: dict[int, int | None] = {}
    start = 0
    for end, p in zip(runs.run_ends.to_pylist(), runs.values.to_pylist()):
        top = pc.max(et.slice(start, end - start)).as_py()
        start = end
        if p not in out or (top is not None and (out[p] is None or top > out[p])):
            out[p] = top
    return out


def without_null_time(table: pa.Table, et: pa.Array, source: str, col: str, exact=None):
    """``table`` and ``et`` without the rows whose event time is NULL, and those rows as dead
    letters ``(location, error, raw)`` naming their source partition and offset (``exact``:
    what maps ``(_partition, _offset)`` to the offset to name, see ``FileSource.exact_offsets``)."""
    bad = pc.is_null(et)
    rows = table.filter(bad)
    offsets = rows[OFFSET_COL] if exact is None else exact(rows[PARTITION_COL], rows[OFFSET_COL])
    rejects = [
        (f"{source} partition {part} offset {off}", f"event-time column {col!r} is NULL", None)
        for part, off in zip(rows[PARTITION_COL].to_pylist(), offsets.to_pylist())
    ]
    keep = pc.invert(bad)
    return table.filter(keep), et.filter(keep), rejects
