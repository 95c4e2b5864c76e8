"""Stream–stream joins over the trades workload beside DuckDB's batch join of the same data.

    python benchmarks/joins.py                    # 1,000,000 rows per stream, median of 3
    python benchmarks/joins.py --rows 200000 --repeat 1

Two streams of the trades workload (``workloads.trades_batches``, 1,000 symbols, one row per
millisecond): ``trades`` (seed 42) and ``quotes`` (seed 43, its price renamed ``bid``), each pushed
into a python source in batches of 10,000 rows by its own producer thread, the job timed from
deploy to its end. Beside each: the same SELECT as DuckDB batch SQL over the two whole tables
(one thread, as the job's connection has), and a check that both give the same rows.

* ``interval``: each trade with the quotes of its symbol from the second before it —
  ``ON t.symbol = q.symbol AND q.ts BETWEEN t.ts - INTERVAL '1' SECOND AND t.ts``.
* ``window``: per 1-minute tumbling window and symbol, the trades × quotes pairs: count and
  average spread (``GROUP BY t.symbol WINDOW TUMBLING(ts, INTERVAL '1' MINUTE)``; in batch SQL
  the two sides' window starts are part of the join key).

The target (BENCHMARKS.md / issue 17): the streaming join within 3x of the batch join's time on V1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import duckdb  # noqa: E402
import pyarrow as pa  # noqa: E402
import workloads as W  # noqa: E402

import velosql  # noqa: E402

IO = "'trades.type' = 'python', 'quotes.type' = 'python', 'j.type' = 'python'"
LATENESS = "'watermark.max_out_of_orderness' = '1s'"  # ts jitter is ±50 ms: no row is late
BUCKET = "time_bucket(INTERVAL '1 minute', {}.ts::TIMESTAMP)"
QUERIES = {
    "interval": (
        "SELECT t.symbol, t.price, q.bid, q.ts AS quoted FROM trades t JOIN quotes q "
        "ON t.symbol = q.symbol AND q.ts BETWEEN t.ts - INTERVAL '1' SECOND AND t.ts",
        "",
    ),
    "window": (
        "SELECT t.symbol, _window_start AS ws, count(*) AS pairs, avg(t.price - q.bid) AS spread "
        "FROM trades t JOIN quotes q ON t.symbol = q.symbol GROUP BY ALL",
        " WINDOW TUMBLING(ts, INTERVAL '1' MINUTE) EMIT FINAL",
    ),
}
BATCH_SQL = {
    "interval": QUERIES["interval"][0],
    "window": (
        f"SELECT t.symbol, {BUCKET.format('t')} AS ws, count(*) AS pairs, avg(t.price - q.bid) AS spread "
        f"FROM trades t JOIN quotes q ON t.symbol = q.symbol AND {BUCKET.format('t')} = {BUCKET.format('q')} "
        "GROUP BY ALL"
    ),
}


def streams(rows: int) -> tuple[list[pa.RecordBatch], list[pa.RecordBatch]]:
    def strip(batches, rename=None):
        out = []
        for b in batches:
            t = pa.Table.from_batches([b]).drop_columns(["_partition"])
            if rename:
                t = t.rename_columns([rename.get(c, c) for c in t.column_names])
            out.extend(t.to_batches())
        return out

    trades = strip(W.trades_batches(rows, seed=42))
    quotes = strip(W.trades_batches(rows, seed=43), {"price": "bid"}).copy()
    quotes = [b.drop_columns(["quantity"]) for b in quotes]
    return trades, quotes


def stream(name: str, trades, quotes, processor: str = "v1") -> tuple[float, pa.Table]:
    select, window = QUERIES[name]
    e = velosql.connect()
    try:
        e.push("trades", trades[0])
        e.push("quotes", quotes[0])
        job = e.execute(
            f"CREATE STREAM j AS {select}{window} WITH ({IO}, {LATENESS}, processor = '{processor}')"
        )
        t0 = time.perf_counter()

        def produce(source, batches):
            for b in batches[1:]:
                e.push(source, b)
            e.close_source(source)

        producers = [
            threading.Thread(target=produce, args=("trades", trades)),
            threading.Thread(target=produce, args=("quotes", quotes)),
        ]
        for p in producers:
            p.start()
        job.wait()
        seconds = time.perf_counter() - t0
        for p in producers:
            p.join()
        if job.error is not None:
            raise job.error
        return seconds, e.pull("j")
    finally:
        e.close()


def batch(name: str, trades, quotes) -> tuple[float, pa.Table]:
    con = duckdb.connect(config={"threads": 1})
    con.register("trades", pa.Table.from_batches(trades))
    con.register("quotes", pa.Table.from_batches(quotes))
    t0 = time.perf_counter()
    out = con.sql(BATCH_SQL[name]).to_arrow_table()
    return time.perf_counter() - t0, out


def same(a: pa.Table, b: pa.Table) -> bool:
    con = duckdb.connect()
    con.register("a", a)
    con.register("b", b.rename_columns(a.column_names))
    rounded = ", ".join(
        f"round({c}, 6)" if pa.types.is_floating(a.schema.field(c).type) else c for c in a.column_names
    )
    ((diff,),) = con.sql(
        f"SELECT count(*) FROM ((SELECT {rounded} FROM a EXCEPT ALL SELECT {rounded} FROM b) "
        f"UNION ALL (SELECT {rounded} FROM b EXCEPT ALL SELECT {rounded} FROM a))"
    ).fetchall()
    return diff == 0 and a.num_rows == b.num_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows per stream")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="interval,window")
    ap.add_argument("--processors", default="v1,v2:2", help="comma-separated: v1, v2:N")
    args = ap.parse_args()
    trades, quotes = streams(args.rows)
    procs = args.processors.split(",")
    print(f"{args.rows:,} rows per stream, median of {args.repeat}; DuckDB batch SQL with 1 thread")
    print(
        f"{'join':<10}{'DuckDB batch s':>16}"
        + "".join(f"{p + ' s':>10}{'ratio':>8}" for p in procs)
        + f"{'rows out':>12}  same"
    )
    for name in args.only.split(","):
        base = [batch(name, trades, quotes) for _ in range(args.repeat)]
        b = statistics.median(r[0] for r in base)
        line, ok = f"{name:<10}{b:>16.3f}", True
        for proc in procs:
            runs = [stream(name, trades, quotes, proc) for _ in range(args.repeat)]
            s = statistics.median(r[0] for r in runs)
            ok = ok and same(runs[0][1], base[0][1])
            line += f"{s:>10.3f}{s / b:>7.2f}x"
        print(f"{line}{base[0][1].num_rows:>12,}  {'yes' if ok else 'NO'}", flush=True)


if __name__ == "__main__":
    main()
