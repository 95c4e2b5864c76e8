"""V2 against V1 and DuckDB direct on the trades queries, from a partitioned source.

    python benchmarks/v2.py                  # 5M rows, median of 3
    python benchmarks/v2.py --rows 2000000 --repeat 1
    python benchmarks/v2.py --write-docs     # also rewrite the generated V2 part of docs/benchmarks.md

The trades stream (workloads.py) is written once as 8 Parquet files, one per ``_partition``
(stable hash of the symbol mod 8), under ``benchmarks/.data``. Each query runs as a velosql job
reading that directory with a ``file_source`` (results to a python sink), as a whole:

* **V1** — one process; the scan pushdown is off, so this is the streaming engine (with it on, a
  window-less GROUP BY over files is DuckDB's own scan on every core, in V1 and V2 alike). V1 runs
  DuckDB on one thread, but pyarrow decodes Parquet and computes partials on its own thread pool
  (one thread per core), so V1 already uses more than one core: the ``cores used`` column.
* **V1 on 1 core** — the same with every thread of the benchmark process pinned to one core
  (``sched_setaffinity`` of each thread, and so of the threads they start): the one-core
  baseline, to show what V2's workers gain over one core. Cutting pyarrow's pools to one thread
  (this row until session 8) still used ~1.5 cores: V1's reader thread decodes while its job
  thread aggregates.
* **V2:N partitioned** — ``partitioning_strategy = 'sticky'``: each worker reads its own files.
* **V2:N hash** — ``partitioning_strategy = 'hash'`` (grouped queries only): each worker reads its
  own files and computes partial aggregates, and each partial row goes by velosql's hash of
  ``symbol`` to the worker that holds the group, which emits it. The files are cut by CRC-32 of
  the symbol, a different hash: 49% of each worker's partial rows cross to the other worker.
  Until session 9 the job read the files and routed every input row by the hash.
* **DuckDB direct** — the same query over ``read_parquet`` with N threads, one call.

Queries: Q_filter, Q_group and Q_tumble of the spec, and ``heavy``: Q_group's shape with an md5 of
every trade, so that DuckDB's per-row work (one thread in V1) outweighs reading and routing.

Speedup is over V1 in the same run; efficiency is speedup ÷ workers. ``cores used`` is the CPU
time of the benchmark process and its reaped children (the workers) during the run ÷ its wall time.
Before each timed run the benchmark touches and frees fresh memory (``workloads.warm_memory``, skipped
with ``--cold``), so that no run pays for memory the hypervisor took back during the one before.
``start`` is the job's ``workers_start_seconds`` (spawning the workers, their imports and
connections: paid once, before the first row), and ``after start`` V1's seconds over V2's without
it: how the two compare once a long-running job has started.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

import duckdb  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import workloads as W  # noqa: E402

import velosql  # noqa: E402
from velosql.config import usable_cpus  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
ONE_CORE = "V1 on 1 core"
BEGIN, END = "<!-- BEGIN GENERATED: benchmarks/v2.py --write-docs{} -->", "<!-- END GENERATED V2{} -->"
AGGS = "COUNT(*) AS n, SUM(quantity) AS vol, AVG(price) AS avg_price, MIN(price) AS lo, MAX(price) AS hi"
HEAVY = "COUNT(*) AS n, MAX(md5(CAST(quantity AS VARCHAR) || CAST(price AS VARCHAR))) AS h"
QUERIES = {
    "filter": "SELECT symbol, price, quantity, price * quantity AS notional FROM trades WHERE price > 500",
    "group": f"SELECT symbol, {AGGS} FROM trades GROUP BY symbol EMIT FINAL",
    "tumble": f"SELECT symbol, _window_start, {AGGS} FROM trades GROUP BY symbol "
    "WINDOW TUMBLING(ts, 1m) EMIT FINAL",
    # CPU-bound per row (an md5 of each trade): where DuckDB's work, not reading, dominates.
    "heavy": f"SELECT symbol, {HEAVY} FROM trades GROUP BY symbol EMIT FINAL",
}
DUCK = {
    "heavy": f"SELECT symbol, {HEAVY} FROM {{src}} GROUP BY symbol",
    "filter": "SELECT symbol, price, quantity, price * quantity AS notional FROM {src} WHERE price > 500",
    "group": f"SELECT symbol, {AGGS} FROM {{src}} GROUP BY symbol",
    "tumble": f"SELECT symbol, time_bucket(INTERVAL '1 minute', ts::TIMESTAMP) AS ws, {AGGS} "
    "FROM {src} GROUP BY ALL",
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure_files(rows: int) -> Path:
    """The trades stream as one Parquet file per source partition (written once)."""
    folder = W.DATA_DIR / f"trades_{rows}_parts"
    if (folder / "done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_batches(W.trades(rows))
    for p in range(W.N_PARTITIONS):
        part = table.filter(pa.compute.equal(table["_partition"], p)).drop_columns(["_partition"])
        pq.write_table(part, folder / f"part-{p}.parquet", row_group_size=65_536)
    (folder / "done").write_text("")
    return folder


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have exited (the workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@contextlib.contextmanager
def one_core(pin: bool):
    """Every thread of this process (and so every thread they start) on one core for the block."""
    if not pin:
        yield
        return
    tasks = lambda: [int(t) for t in os.listdir("/proc/self/task")]  # noqa: E731
    cores = os.sched_getaffinity(0)
    for tid in tasks():
        os.sched_setaffinity(tid, {min(cores)})
    try:
        yield
    finally:
        for tid in tasks():
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                os.sched_setaffinity(tid, cores)


def velosql_job(name: str, folder: Path, processor: str, strategy: str | None) -> tuple[float, int, dict]:
    opts = [
        "'trades.type' = 'file_source'",
        f"'trades.path' = '{folder}'",
        "'q.type' = 'python'",
        f"processor = '{processor}'",
        "scan_pushdown = false",
        # The files are read one after another by V1 and two at a time by V2:2, so with a small
        # lateness each would find other rows late. A lateness longer than the whole stream (5M
        # rows span ~83 minutes) keeps every row on time: the same result.
        "'watermark.max_out_of_orderness' = '24h'",
    ]
    if strategy:
        opts.append(f"partitioning_strategy = '{strategy}'")
    sql = f"CREATE STREAM q AS {QUERIES[name]} WITH ({', '.join(opts)})"
    e = velosql.connect()
    try:
        c0, t0 = cpu_seconds(), time.perf_counter()
        job = e.execute(sql)
        job.wait()
        out = e.pull("q")
        metrics = job.metrics()
    finally:
        e.close()  # the workers have exited when this returns: their CPU time is counted
    seconds = time.perf_counter() - t0
    metrics["cores_used"] = (cpu_seconds() - c0) / seconds
    return seconds, out.num_rows, metrics


def duck_direct(name: str, folder: Path, threads: int) -> tuple[float, int]:
    con = duckdb.connect(config={"threads": threads})
    src = f"read_parquet('{folder}/*.parquet')"
    t0 = time.perf_counter()
    n = len(con.sql(DUCK[name].format(src=src)).to_arrow_table())
    return time.perf_counter() - t0, n


def measure(rows: int, repeat: int, workers: list[int], only: list[str], warm: bool = True) -> list[dict]:
    folder = ensure_files(rows)
    # More than any run allocates: a filter's output is ~36 bytes a row, half the rows.
    warm_bytes = max(256 << 20, rows * 48) if warm else 0
    results = []
    for name in only:
        runs: dict[str, list[float]] = {}
        cores: dict[str, list[float]] = {}
        starts: dict[str, list[float]] = {}
        outs: dict[str, int] = {}
        skew: dict[str, float] = {}
        configs = [("V1", "v1", None, False), (ONE_CORE, "v1", None, True)]
        for n in workers:
            configs.append((f"V2:{n} partitioned", f"v2:{n}", "sticky", None))
            if name != "filter":
                configs.append((f"V2:{n} hash", f"v2:{n}", "hash", None))
        # Untimed, once on V1 and once on V2: files and modules in the page cache.
        for processor, strategy in (("v1", None), (f"v2:{workers[0]}", "sticky")):
            velosql_job(name, folder, processor, strategy)
        for _ in range(repeat):
            for label, processor, strategy, pinned in configs:
                W.warm_memory(warm_bytes)
                with one_core(pinned):
                    seconds, n_out, m = velosql_job(name, folder, processor, strategy)
                runs.setdefault(label, []).append(seconds)
                cores.setdefault(label, []).append(m["cores_used"])
                if m.get("workers_start_seconds") is not None:
                    starts.setdefault(label, []).append(m["workers_start_seconds"])
                outs[label] = n_out
                if m.get("skew"):
                    skew[label] = m["skew"]
                log(
                    f"{name:7s} {label:24s} {seconds:7.3f}s  {rows / seconds / 1e6:6.2f}M rows/s  "
                    f"{m['cores_used']:.2f} cores"
                )
            for n in sorted({1, *workers}):
                W.warm_memory(warm_bytes)
                seconds, n_out = duck_direct(name, folder, n)
                runs.setdefault(f"DuckDB {n} thread{'s' if n > 1 else ''}", []).append(seconds)
        base, one = statistics.median(runs["V1"]), statistics.median(runs[ONE_CORE])
        for label, times in runs.items():
            t = statistics.median(times)
            n = int(label.split(":")[1].split()[0]) if label.startswith("V2") else None
            start = statistics.median(starts[label]) if label in starts else None
            results.append(
                {
                    "query": name,
                    "engine": label,
                    "rows_per_s": rows / t,
                    "seconds": t,
                    "cores_used": statistics.median(cores[label]) if label in cores else None,
                    "speedup": base / t if label.startswith("V") else None,
                    "speedup_one": one / t if label.startswith("V") else None,
                    "start": start,
                    # The worker start is paid once; a long-running job's rate is the rest's.
                    "speedup_started": base / (t - start) if start is not None else None,
                    "efficiency": base / t / n if n else None,
                    "skew": skew.get(label),
                    "rows_out": outs.get(label),
                }
            )
        for label, n_out in outs.items():
            if n_out != outs["V1"]:
                raise SystemExit(f"{name}: {label} emitted {n_out} rows, V1 {outs['V1']}")
    return results


def render(results: list[dict], command: str, rows: int) -> str:
    def num(value: float | None, fmt: str) -> str:
        return format(value, fmt) if value is not None else "—"

    lines = [
        f"Command: `{command}` — {rows:,} trades rows in 8 Parquet files, {usable_cpus()} usable cores, "
        "median of the runs. Speedup is over V1 in the same run (and over V1 pinned to one "
        "core); efficiency = speedup over V1 ÷ workers; cores used = CPU seconds of the process "
        "and its workers ÷ wall seconds; skew = busiest worker's rows ÷ the mean; start = the "
        "workers' start (`workers_start_seconds`), and after start = V1's seconds ÷ V2's without it. "
        "Before each run the benchmark touches and frees fresh memory (`warm_memory`: this VM hands "
        "freed memory back to its host, and faulting it in again is slow), unless `--cold`.",
        "",
        "| query | engine | rows/s | seconds | cores used | speedup vs V1 | vs V1 on 1 core | efficiency "
        "| skew | start | vs V1 after start |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['query']} | {r['engine']} | {r['rows_per_s'] / 1e6:.2f}M | {r['seconds']:.3f} | "
            f"{num(r['cores_used'], '.2f')} | {num(r['speedup'], '.2f')}{'x' if r['speedup'] else ''} | "
            f"{num(r['speedup_one'], '.2f')}{'x' if r['speedup_one'] else ''} | "
            f"{num(r['efficiency'], '.2f')} | {num(r['skew'], '.2f')} | {num(r['start'], '.3f')} | "
            f"{num(r['speedup_started'], '.2f')}{'x' if r['speedup_started'] else ''} |"
        )
    return "\n".join(lines)


def write_docs(text: str, rows: int) -> None:
    """Replace the generated table of this row count (5M rows: the spec's default; each other
    count has its own table)."""
    suffix = "" if rows == 5_000_000 else f" --rows {rows}"
    begin, end = BEGIN.format(suffix), END.format(suffix)
    doc = DOCS.read_text()
    block = f"{begin}\n{text}\n{end}"
    if begin in doc:
        start, stop = doc.index(begin), doc.index(end) + len(end)
        doc = doc[:start] + block + doc[stop:]
    else:
        doc = doc.rstrip() + f"\n\n## V2 at {rows:,} rows (generated)\n\n" + block + "\n"
    DOCS.write_text(doc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", help="comma-separated V2 worker counts (default: 2 and the usable cores)")
    ap.add_argument("--only", help=f"comma-separated queries (default: all of {', '.join(QUERIES)})")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--cold", action="store_true", help="skip touching fresh memory before each run")
    args = ap.parse_args()
    workers = [int(x) for x in args.workers.split(",")] if args.workers else sorted({2, usable_cpus()})
    only = [q.strip() for q in args.only.split(",")] if args.only else list(QUERIES)
    unknown = [q for q in only if q not in QUERIES]
    if unknown:
        ap.error(f"unknown query {unknown[0]!r}; choose from {', '.join(QUERIES)}")
    results = measure(args.rows, args.repeat, workers, only, warm=not args.cold)
    command = "python benchmarks/v2.py " + " ".join(sys.argv[1:])
    text = render(results, command.strip(), args.rows)
    print(text)
    if args.write_docs:
        write_docs(text, args.rows)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
