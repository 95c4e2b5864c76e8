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

from ..errors import DataError

NEG_INF = -(2**63)
POS_INF = 2**63 - 1
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
            return pc.multiply(column, factor).cast(pa.int64())
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            if fmt and fmt.lower() not in ("iso8601", "iso_8601"):
                return pc.strptime(column, format=fmt, unit="us").cast(pa.int64())
            return column.cast(pa.timestamp("us")).cast(pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"cannot read event time from column {name!r} ({t}): {exc}") from None
    raise DataError(f"column {name!r} of type {t} cannot be an event time")


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
        """Record a batch; return the watermark each row saw (int64, before the row itself)."""
        n = len(et)
        now = time.monotonic()
        active = self._active(now)
        bounds = pc.min_max(partition)
        lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
        # One partition in the batch (the common case) needs no masking.
        present = [lo] if lo == hi else pc.unique(partition).to_pylist()
        if n == 0:
            return pa.array([], pa.int64())
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
                if prior is not None:
                    run = pc.max_element_wise(run, prior)
            else:
                run = pc.cumulative_max(pc.if_else(pc.equal(partition, p), et, fill))
            if prior is None:
                new_partition = True
                if lo != hi:
                    run = pc.if_else(pc.equal(run, NEG_INF), POS_INF, run)
            self.max_by_partition[p] = run[n - 1].as_py()
            self.last_seen[p] = now
            running.append(run)
        others = [m for p, m in active.items() if p not in present]
        if others:
            running.append(pa.repeat(pa.scalar(min(others), pa.int64()), n))
        low = running[0] if len(running) == 1 else pc.min_element_wise(*running)
        if new_partition and len(running) > 1:
            # A partition seen for the first time can lower the minimum; the watermark never goes back.
            low = pc.cumulative_max(low)
        first = pa.array([min(before) if before else POS_INF], pa.int64())
        shifted = pa.concat_arrays([first, low.slice(0, n - 1)])
        # +inf means no partition had delivered anything yet: the watermark stays where it was.
        shifted = pc.if_else(pc.equal(shifted, POS_INF), self.watermark, pc.subtract(shifted, self.lateness))
        seen = pc.max_element_wise(shifted, self.watermark)
        self.advance(now)
        return seen

    def advance(self, now: float | None = None) -> int:
        """Recompute the job watermark after a batch, or on an idle poll (idle partitions drop out)."""
        active = self._active(time.monotonic() if now is None else now)
        if active:
            self.watermark = max(self.watermark, min(active.values()) - self.lateness)
        return self.watermark

    def end_partition(self, partition: int) -> None:
        """A finished partition no longer holds the watermark back."""
        self.max_by_partition.pop(partition, None)
        self.last_seen.pop(partition, None)

    def finish(self) -> int:
        """End of input: every window closes."""
        self.watermark = POS_INF
        return self.watermark
