"""What checkpoints cost: Q_tumble and Q_changes over a Parquet file of the trades workload with
no state location and with checkpoints every 10 s and every 1 s, and the restart of a job holding
1M open keys.

    python benchmarks/checkpoints.py                      # 5,000,000 rows, median of 3
    python benchmarks/checkpoints.py --rows 1000000 --repeat 1

Each job reads ``benchmarks/.data/trades_<rows>.parquet`` (made once from ``workloads.trades``)
on V1 into a ``duckdb_table`` sink of an in-memory engine, timed from deploy to its end; a run
with a state location starts from an empty one. The restart: a GROUP BY of 1M distinct keys
(EMIT FINAL, no window) over a watched file, stopped once it has read every row (the stop takes
a checkpoint of the 1M keys' partial rows), then deployed again on the same state location; the
deploy of the second job restores the state (``execute`` returns once it has).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import workloads as W  # noqa: E402

import velosql  # noqa: E402

DATA = HERE / ".data"
AGGS = "COUNT(*) AS n, SUM(quantity) AS vol, AVG(price) AS avg_price, MIN(price) AS lo, MAX(price) AS hi"
QUERIES = {
    "tumble": f"CREATE STREAM q AS SELECT symbol, _window_start, {AGGS} FROM trades GROUP BY symbol "
    "WINDOW TUMBLING(ts, 1m) EMIT FINAL",
    "changes": "CREATE STREAM q AS SELECT symbol, COUNT(*) AS n, SUM(quantity) AS vol FROM trades "
    "GROUP BY symbol EMIT CHANGES",
}


def trades_file(rows: int) -> Path:
    path = DATA / f"trades_{rows}.parquet"
    if not path.exists():
        DATA.mkdir(exist_ok=True)
        batches = W.trades(rows)
        table = pa.Table.from_batches(batches).drop_columns(["_partition"])
        pq.write_table(table, path, row_group_size=262_144)
    return path


def once(sql: str, state: Path | None) -> tuple[float, int]:
    """Seconds from deploy to end, and how many checkpoints the job took."""
    with velosql.connect(state=state) as engine:
        t0 = time.perf_counter()
        job = engine.execute(sql)
        job.wait()
        seconds = time.perf_counter() - t0
        assert job.error is None, job.error
    taken = 0
    if state is not None:
        current = state / "q" / "CURRENT"
        taken = int(current.read_text()) if current.exists() else 0
    return seconds, taken


def overhead(rows: int, repeat: int) -> list[dict]:
    path = trades_file(rows)
    out = []
    for name, query in QUERIES.items():
        for interval in (None, "1h", "10s", "1s", "250ms"):
            sql = (
                f"{query} WITH ('trades.type' = 'file_source', 'trades.path' = '{path}', "
                "'q.type' = 'duckdb_table', 'watermark.max_out_of_orderness' = '1s'"
                + (f", 'checkpoint.interval' = '{interval}'" if interval else "")
                + ")"
            )
            times, taken = [], 0
            for _ in range(repeat):
                with tempfile.TemporaryDirectory() as tmp:
                    state = Path(tmp) / "state" if interval else None
                    seconds, taken = once(sql, state)
                    times.append(seconds)
            out.append(
                {
                    "query": name,
                    "interval": interval,
                    "seconds": statistics.median(times),
                    "checkpoints": taken,
                }
            )
            print(f"  Q_{name} checkpoints {interval or 'off'}: {statistics.median(times):.3f} s, {taken} taken",
                  file=sys.stderr, flush=True)  # fmt: skip
    return out


def restart(keys: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "keys.parquet"
        pq.write_table(
            pa.table({"k": pa.array(range(keys), pa.int64()), "v": pa.array(range(keys), pa.int64())}), src
        )
        state = Path(tmp) / "state"
        sql = (
            "CREATE STREAM q AS SELECT k, count(*) AS n, sum(v) AS s FROM t GROUP BY k EMIT FINAL "
            f"WITH ('t.type' = 'file_source', 't.path' = '{src}', 't.watch' = 'true', "
            "'t.poll_interval' = '10ms', 'q.type' = 'duckdb_table')"
        )
        with velosql.connect(state=state) as engine:
            t0 = time.perf_counter()
            job = engine.execute(sql)
            fresh = time.perf_counter() - t0
            tick = threading.Event()
            while job.metrics()["records_in"] < keys:
                tick.wait(0.01)
            t1 = time.perf_counter()
            job.stop()
            job.wait()
            stop = time.perf_counter() - t1
        size = sum(p.stat().st_size for p in (state / "q").glob("chk-*.duckdb"))
        with velosql.connect(state=state) as engine:
            t0 = time.perf_counter()
            job = engine.execute(sql)
            restored = time.perf_counter() - t0
            job.stop()
            job.wait()
    return {"keys": keys, "deploy_fresh": fresh, "stop_with_checkpoint": stop, "deploy_restoring": restored,
            "checkpoint_bytes": size}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keys", type=int, default=1_000_000)
    args = ap.parse_args()
    rows = overhead(args.rows, args.repeat)
    print(f"| query | checkpoint.interval | seconds ({args.rows:,} rows) | vs 1h | checkpoints taken |")
    print("|---|---|---|---|---|")
    for r in rows:
        base = next(b for b in rows if b["query"] == r["query"] and b["interval"] == "1h")
        print(f"| Q_{r['query']} | {r['interval'] or 'no state location'} | {r['seconds']:.3f} | "
              f"{r['seconds'] / base['seconds'] - 1:+.0%} | {r['checkpoints']} |")  # fmt: skip
        if r["interval"] == "250ms" and r["checkpoints"] > base["checkpoints"]:
            each = (r["seconds"] - base["seconds"]) / (r["checkpoints"] - base["checkpoints"])
            print(f"| Q_{r['query']} | per checkpoint | {each * 1000:.1f} ms | "
                  f"{each / 10:+.1%} at 10 s, {each:+.1%} at 1 s | |")  # fmt: skip
    rs = restart(args.keys)
    print()
    print(f"Restart with {rs['keys']:,} open keys: checkpoint {rs['checkpoint_bytes'] / 1e6:.1f} MB, "
          f"stop (taking it) {rs['stop_with_checkpoint']:.2f} s, deploy fresh {rs['deploy_fresh']:.2f} s, "
          f"deploy restoring it {rs['deploy_restoring']:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
