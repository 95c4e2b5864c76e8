"""WatermarkTracker.observe against a per-row Python reference, whatever the batching.

The reference spells out what ``observe`` returns for a batch, one row at a time:

* the partitions that count before the batch's first row are those present in the batch that
  delivered something in an earlier batch (idle or not) and the active (not idle) partitions of
  earlier batches that are not in the batch; a partition new to the tracker counts from its first
  row on;
* ``L(j)`` is the minimum over the partitions that count after row ``j`` of the largest event time
  each delivered so far (earlier batches included);
* row ``i`` sees ``max(wm, max(L(-1) … L(i-1)) - lateness)`` (``L(-1)``: the minimum before the
  batch; no partition counting means row 0 sees ``wm``), with
  ``wm`` the job watermark before the batch and int64 wrap-around in the subtraction;
* after the batch every present partition is marked seen now, and the job watermark becomes
  ``max(wm, min over the active partitions - lateness, what the last row saw)``: the watermark
  never goes back, so splitting a batch in two changes nothing.
"""

from __future__ import annotations

import random
import types
from unittest import mock

import pyarrow as pa
import pytest
from conftest import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from velosql.runtime import watermark as W
from velosql.runtime.watermark import NEG_INF, NOT_YET, POS_INF, WatermarkTracker


def _wrap(x: int) -> int:
    return (x + 2**63) % 2**64 - 2**63


class Reference:
    """Per-row reference of :class:`WatermarkTracker` (same state, same clock)."""

    def __init__(self, lateness_us: int, idle_timeout_us: int | None = None) -> None:
        self.lateness = lateness_us
        self.idle = idle_timeout_us / 1e6 if idle_timeout_us else None
        self.maxima: dict[int, int] = {}
        self.last_seen: dict[int, float] = {}
        self.watermark = NEG_INF

    def _active(self, now: float) -> dict[int, int]:
        return {
            p: m for p, m in self.maxima.items() if self.idle is None or now - self.last_seen[p] <= self.idle
        }

    def _sees(self, low: int | None) -> int:
        return self.watermark if low is None else max(self.watermark, _wrap(low - self.lateness))

    def observe(self, et: list[int], parts: list[int], now: float) -> list[int]:
        if not et:
            return []
        present = set(parts)
        counted = {p: m for p, m in self.maxima.items() if p in present}
        counted.update((p, m) for p, m in self._active(now).items() if p not in present)
        best = min(counted.values()) if counted else None
        out = [self._sees(best)]
        for t, p in zip(et, parts):
            counted[p] = max(counted.get(p, t), t)
            low = min(counted.values())
            best = low if best is None else max(best, low)
            out.append(self._sees(best))
        for p in parts:  # first appearance order, as new partitions enter the tracker
            self.maxima[p] = counted[p]
            self.last_seen[p] = now
        self.advance(now)
        # What the last row saw still holds after it: the watermark never goes back.
        self.watermark = max(self.watermark, out[-2])
        return out[:-1]

    def advance(self, now: float) -> int:
        active = self._active(now)
        if active:
            self.watermark = max(self.watermark, min(active.values()) - self.lateness)  # no wrap
        return self.watermark

    def end_partition(self, p: int) -> None:
        self.maxima.pop(p, None)
        self.last_seen.pop(p, None)

    def expect(self, parts: list[int], now: float) -> None:
        for p in parts:  # awaited: counts as NOT_YET until it delivers
            if p not in self.maxima:
                self.maxima[p] = NOT_YET
                self.last_seen[p] = now


def _clock(now: list[float]):
    return mock.patch.object(W, "time", types.SimpleNamespace(monotonic=lambda: now[0]))


def _check_state(tracker: WatermarkTracker, ref: Reference) -> None:
    assert list(tracker.max_by_partition.items()) == list(ref.maxima.items())
    assert tracker.last_seen == ref.last_seen
    assert tracker.watermark == ref.watermark


def _run(tracker: WatermarkTracker, ref: Reference, ops: list, now: list[float]) -> None:
    """Apply the same operations to both; compare what every row saw and the state after each."""
    with _clock(now):
        for op in ops:
            kind = op[0]
            if kind == "batch":
                et, parts = op[1], op[2]
                got = tracker.observe(pa.array(et, pa.int64()), pa.array(parts, pa.int32()))
                assert got.type == pa.int64() and got.null_count == 0
                assert got.to_pylist() == ref.observe(et, parts, now[0])
            elif kind == "end":
                tracker.end_partition(op[1])
                ref.end_partition(op[1])
            elif kind == "expect":
                tracker.expect(op[1])
                ref.expect(op[1], now[0])
            elif kind == "tick":
                now[0] += op[1]
            elif kind == "advance":
                assert tracker.advance() == ref.advance(now[0])
            _check_state(tracker, ref)


# ---- strategies -------------------------------------------------------------------------------

SMALL = st.integers(-40, 40)  # many ties, heavy disorder
EXTREME = st.integers(NEG_INF + 1, POS_INF - 1)  # wrap-around in ``x - lateness``


@st.composite
def event_times(draw, n: int, infinite: bool = False) -> list[int]:
    kind = draw(st.sampled_from(["small", "ordered", "extreme", *(["infinite"] * infinite)]))
    if kind == "infinite":
        return draw(st.lists(st.one_of(SMALL, st.sampled_from([NEG_INF, POS_INF])), min_size=n, max_size=n))
    if kind == "small":
        return draw(st.lists(SMALL, min_size=n, max_size=n))
    if kind == "extreme":
        return draw(st.lists(st.one_of(SMALL, EXTREME), min_size=n, max_size=n))
    start = draw(st.integers(-(10**15), 10**15))
    jitter = draw(st.lists(st.integers(-30, 30), min_size=n, max_size=n))
    return [start + 10 * i + j for i, j in enumerate(jitter)]


@st.composite
def partitions(draw, n: int, count: int) -> list[int]:
    """Partition ``q`` can first appear at row ``q * step`` (so partitions appear mid-batch)."""
    step = draw(st.sampled_from([0, 1, 7, 40]))
    ids = draw(st.permutations(range(count)))
    picks = draw(st.lists(st.integers(0, count - 1), min_size=n, max_size=n))
    return [ids[min(q, i // step) if step else q] for i, q in enumerate(picks)]


@st.composite
def scenarios(draw, infinite: bool = False):
    count = draw(st.integers(1, 8))
    lateness = draw(st.one_of(st.sampled_from([0, 3]), st.integers(0, 2**62)))
    idle = draw(st.one_of(st.none(), st.integers(1, 4).map(lambda s: s * 1_000_000)))
    n = draw(st.integers(0, 120))
    et = draw(event_times(n, infinite))
    parts = draw(partitions(n, count))
    cuts = sorted(set(draw(st.lists(st.integers(0, n), max_size=6))))
    bounds = [0, *cuts, n]
    ops: list = []
    if draw(st.booleans()):  # files of a bounded source, awaited until each delivers (expect)
        ops.append(("expect", draw(st.lists(st.integers(0, count - 1), max_size=count, unique=True))))
    if draw(st.booleans()):  # prior state: an earlier batch from some of the partitions
        m = draw(st.integers(1, 20))
        ops.append(("batch", draw(event_times(m, infinite)), draw(partitions(m, count))))
    for lo, hi in zip(bounds, bounds[1:]):
        for _ in range(draw(st.integers(0, 2))):
            ops.append(
                draw(
                    st.one_of(
                        st.tuples(st.just("tick"), st.integers(0, 3)),
                        st.tuples(st.just("end"), st.integers(0, count - 1)),
                        st.tuples(st.just("advance")),
                    )
                )
            )
        ops.append(("batch", et[lo:hi], parts[lo:hi]))
    return lateness, idle, ops


@settings(max_examples=examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_observe_matches_the_per_row_reference(scenario):
    lateness, idle, ops = scenario
    _run(WatermarkTracker(lateness, idle), Reference(lateness, idle), ops, [1000.0])


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(infinite=True))
def test_observe_matches_the_masked_formulation_even_at_infinity(scenario):
    """Against the one-pass-per-partition formulation (which reads -inf and +inf specially)."""
    lateness, idle, ops = scenario
    masked = WatermarkTracker(lateness, idle)
    masked._observe_sorted = lambda *args: None
    tracker = WatermarkTracker(lateness, idle)
    now = [1000.0]
    with _clock(now):
        for op in ops:
            if op[0] == "batch":
                et, parts = pa.array(op[1], pa.int64()), pa.array(op[2], pa.int32())
                assert tracker.observe(et, parts).equals(masked.observe(et, parts))
            elif op[0] == "end":
                tracker.end_partition(op[1])
                masked.end_partition(op[1])
            elif op[0] == "tick":
                now[0] += op[1]
            else:
                assert tracker.advance() == masked.advance()
            assert list(tracker.max_by_partition.items()) == list(masked.max_by_partition.items())
            assert tracker.watermark == masked.watermark


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), margin=st.one_of(st.integers(0, 60), st.integers(0, 2**40)))
def test_observe_unless_on_time_skips_only_batches_without_a_late_row(scenario, margin):
    """The bounded path gives the exact per-row watermarks, or None only when, by those exact
    watermarks, no row is late; the tracker's state after each batch is the reference's."""
    lateness, idle, ops = scenario
    tracker, ref, now = WatermarkTracker(lateness, idle), Reference(lateness, idle), [1000.0]

    # "late": behind the watermark by more than margin >= 0 (a row not behind it is never late,
    # as a row's windows end after it)
    def late(et: list[int], wm: list[int]) -> bool:
        return any(e + margin < w for e, w in zip(et, wm))

    with _clock(now):
        for op in ops:
            if op[0] == "batch":
                et, parts = op[1], op[2]
                want = ref.observe(et, parts, now[0])
                got = tracker.observe_unless_on_time(
                    pa.array(et, pa.int64()),
                    pa.array(parts, pa.int32()),
                    lambda e, bound: late(e.to_pylist(), bound.to_pylist()),
                )
                if got is None:
                    assert not late(et, want)
                else:
                    assert got.to_pylist() == want
            elif op[0] == "end":
                tracker.end_partition(op[1])
                ref.end_partition(op[1])
            elif op[0] == "tick":
                now[0] += op[1]
            else:
                assert tracker.advance() == ref.advance(now[0])
            _check_state(tracker, ref)


def test_the_on_time_bound_ignores_a_lower_idle_partition():
    """An idle partition with the smallest maximum does not count, so it must not lower the bound."""
    now = [0.0]
    tracker = WatermarkTracker(0, idle_timeout_us=1_000_000)
    with _clock(now):
        tracker.observe(pa.array([0, 100], pa.int64()), pa.array([0, 1], pa.int32()))
        now[0] = 2.0  # partition 0 is idle now: the watermark follows partition 1 alone

        def could_be_late(et: pa.Array, bound: pa.Array) -> bool:
            return any(e < w for e, w in zip(et.to_pylist(), bound.to_pylist()))

        seen = tracker.observe_unless_on_time(
            pa.array([50], pa.int64()), pa.array([1], pa.int32()), could_be_late
        )
    assert seen is not None and seen.to_pylist() == [100]


def test_the_on_time_path_judges_rows_before_a_new_partition_exactly():
    """Row 1 arrives behind partition 0's maximum before partition 1 has a watermark: it is late."""
    et = pa.array([100, 10, 200, 300, 400, 500, 600, 700], pa.int64())
    parts = pa.array([0, 1, 0, 1, 0, 1, 0, 1], pa.int32())
    want = WatermarkTracker(0).observe(et, parts)
    got = WatermarkTracker(0).observe_unless_on_time(
        et, parts, lambda e, wm: any(a < b for a, b in zip(e.to_pylist(), wm.to_pylist()))
    )
    assert got is not None and got.to_pylist() == want.to_pylist()
    assert want[1].as_py() == 100


@pytest.mark.parametrize("count", [2, 3, 8, 20])
@pytest.mark.parametrize("seed", range(3))
def test_large_batches_match_the_reference(count, seed):
    """Batches big enough for every code path, near-ordered time, new partitions mid-stream."""
    rng = random.Random(seed * 100 + count)
    n = 30_000
    et = [i * 1_000 + rng.randint(-50_000, 50_000) for i in range(n)]
    # partitions join progressively, one stays quiet for a while then comes back
    parts = [rng.randrange(min(count, 1 + i // 997)) for i in range(n)]
    parts = [p if not (10_000 <= i < 14_000 and p == 1) else 0 for i, p in enumerate(parts)]
    ops = []
    lo = 0
    while lo < n:
        hi = min(n, lo + rng.choice([1, 50, 4_096, 9_000]))
        ops.append(("batch", et[lo:hi], parts[lo:hi]))
        if rng.random() < 0.2:
            ops.append(("end", rng.randrange(count)))
        lo = hi
    _run(WatermarkTracker(20_000), Reference(20_000), ops, [0.0])


def test_a_finished_partition_stops_holding_the_watermark_back():
    tracker = WatermarkTracker(0)
    tracker.observe(pa.array([5, 100], pa.int64()), pa.array([0, 1], pa.int32()))
    assert tracker.watermark == 5
    tracker.end_partition(0)
    seen = tracker.observe(pa.array([101, 102], pa.int64()), pa.array([1, 1], pa.int32()))
    assert seen.to_pylist() == [100, 101]
    assert tracker.watermark == 102


def test_splitting_a_batch_changes_nothing_when_a_new_partition_lowers_the_minimum():
    et, parts = [100, 10, 200, 300], [0, 1, 0, 0]
    whole = WatermarkTracker(0)
    seen_whole = whole.observe(pa.array(et, pa.int64()), pa.array(parts, pa.int32())).to_pylist()
    split = WatermarkTracker(0)
    seen_split = split.observe(pa.array(et[:2], pa.int64()), pa.array(parts[:2], pa.int32())).to_pylist()
    seen_split += split.observe(pa.array(et[2:], pa.int64()), pa.array(parts[2:], pa.int32())).to_pylist()
    assert seen_whole == seen_split == [NEG_INF, 100, 100, 100]
    assert whole.watermark == split.watermark == 100


def test_a_partition_counts_its_earlier_maximum_from_the_first_row_of_a_batch():
    t = WatermarkTracker(0)
    t.observe(pa.array([0, 1], pa.int64()), pa.array([1, 0], pa.int32()))
    t.end_partition(1)
    seen = t.observe(pa.array([0, 0], pa.int64()), pa.array([0, 1], pa.int32())).to_pylist()
    assert seen == [1, 1]


def test_expected_partitions_hold_the_watermark_until_each_delivers():
    """Files read one after another: the second file's rows are not late against the first's."""
    t = WatermarkTracker(lateness_us=0)
    t.expect([0, 1])
    seen = t.observe(pa.array([100, 200, 300], pa.int64()), pa.array([0, 0, 0], pa.int32()))
    assert all(s <= NOT_YET for s in seen.to_pylist()) and t.watermark <= NOT_YET
    t.end_partition(0)
    # Partition 1 starts earlier than where 0 ended: none of its rows is behind the watermark.
    seen = t.observe(pa.array([50, 60], pa.int64()), pa.array([1, 1], pa.int32()))
    assert seen.to_pylist()[0] <= NOT_YET and seen.to_pylist()[1] == 50
    assert t.watermark == 60


@settings(max_examples=examples(200), deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 5), st.one_of(st.none(), st.integers(-(2**62), 2**62))),
        min_size=1,
        max_size=300,
    ),
    max_runs=st.sampled_from([0, 1, 64]),
)
def test_max_by_partition_is_each_partitions_largest_event_time(rows, max_runs):
    """Rows that name their own partition make a run per row or so: both ways of taking the
    maxima (a step per run, one aggregation beyond ``_MAX_RUNS`` runs) give the reference."""
    expected: dict[int, int | None] = {}
    for p, et in rows:
        prior = expected.get(p)
        expected[p] = et if prior is None else prior if et is None else max(prior, et)
    partition = pa.array([p for p, _ in rows], pa.int32())
    et = pa.chunked_array([pa.array([e for _, e in rows], pa.int64())])
    with mock.patch.object(W, "_MAX_RUNS", max_runs):
        assert W.max_by_partition(partition, et) == expected
