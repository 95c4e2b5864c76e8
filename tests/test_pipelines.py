"""Pipelines: a statement reading an earlier statement's output as a stream, with the earlier
statement's watermark along where it bounds the later one's event time. (test_general.py checks
the rows a pipeline reads on every processor.)"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

import velosql

BASE = dt.datetime(2024, 1, 1)


def test_a_pipeline_takes_the_earlier_statements_watermark_along():
    """A rollup of closed windows (``we``, each window's end) closes its own windows when the
    earlier statement's watermark passes them, while the input is still open: the rows it reads
    alone (the last window end it saw) would keep them open until the input ends. V1: a V2
    statement with workers does not pass its watermark on (its rows may still be on their way)."""
    rows = pa.table(
        {"k": ["a", "a", "b", "b"], "ts": [BASE + dt.timedelta(seconds=s) for s in (10, 20, 130, 215)]}
    )
    with velosql.connect() as engine:
        channel = engine.channel("t")
        channel.push(rows.slice(0, 3))
        per_min, rollup = engine.run(
            "CREATE STREAM per_min AS SELECT _window_end AS we, k, count(*) AS n FROM t GROUP BY ALL "
            "WINDOW TUMBLING(ts, 60s) EMIT FINAL WITH ('t.type' = 'python');\n"
            "CREATE STREAM rollup AS SELECT _window_start AS ws, sum(n) AS n FROM per_min GROUP BY ALL "
            "WINDOW TUMBLING(we, 60s) EMIT FINAL WITH ('rollup.type' = 'python')",
            wait=False,
        )
        # per_min's watermark (130 s) closes its minute 0 (we = 60 s); the rollup's window of
        # we = 60 s ends at 120 s, which only that watermark passes.
        got = _rows_within(engine, "rollup", 1)
        assert [(ws, int(n)) for ws, n in got] == [(BASE + dt.timedelta(seconds=60), 2)]
        assert not rollup.done
        channel.push(rows.slice(3))
        channel.close()
        rollup.wait(60)
        rest = sorted((r["ws"], int(r["n"])) for r in engine.pull("rollup").to_pylist())
        assert rest == [(BASE + dt.timedelta(seconds=180), 1), (BASE + dt.timedelta(seconds=240), 1)]


def _rows_within(engine, name: str, n: int, seconds: float = 30) -> list[tuple]:
    """The first ``n`` rows a stream emits, waiting for them at most ``seconds``."""
    import threading

    rows: list[tuple] = []
    tick = threading.Event()
    for _ in range(int(seconds / 0.01)):
        rows += [tuple(r.values()) for r in engine.pull(name).to_pylist()]
        if len(rows) >= n:
            break
        tick.wait(0.01)
    return rows
