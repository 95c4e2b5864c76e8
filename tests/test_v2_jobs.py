"""V2 jobs as a whole: no worker outlives its job however the job ends, affinity is visible on the
workers from outside, and a slow sink holds the source back instead of growing memory.

Real processes, a real FIFO as the slow sink, waits on events or on process exit, never sleeps.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import threading
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pytest
from processes import DEADLINE, gone, wait_gone
from terminal import read_pty, start_on_pty

import velosql
from velosql.errors import JobError, WorkerError

REPO = Path(__file__).resolve().parents[1]
SCHEMA = "'src.type' = 'python', 'src.schema' = 'k VARCHAR, v BIGINT'"
# One query per way V2 runs one: partials merged by the job, rows passed through, keyed state.
MODES = {
    "partials": "SELECT k, count(*) AS n, sum(v) AS total FROM src GROUP BY k EMIT FINAL",
    "rows": "SELECT k, v * 2 AS v2 FROM src WHERE v >= 0",
    "keyed": "SELECT k, count(*) AS n FROM src GROUP BY k EMIT CHANGES",
}


def data(n: int, start: int = 0) -> pa.Table:
    return pa.table(
        {
            "k": pa.array([f"k{i % 7}" for i in range(start, start + n)]),
            "v": pa.array(range(start, start + n), pa.int64()),
        }
    )


def statement(mode: str, processor: str = "v2:2", sink: str = "") -> str:
    return f"CREATE STREAM out AS {MODES[mode]} WITH ({SCHEMA}, processor = '{processor}'{sink})"


def worker_processes(job) -> list[psutil.Process]:
    """The job's workers, as processes looked up by the pids its metrics report."""
    return [psutil.Process(p["pid"]) for p in job.metrics()["partitions"]]


def wait_for(condition, what: str, timeout: float = DEADLINE) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        threading.Event().wait(0.01)


@pytest.fixture
def engine():
    with velosql.connect() as e:
        yield e


# ---- no worker outlives its job ----------------------------------------------------------------


def running(engine, mode: str):
    """A V2:2 job of ``mode`` that has read 100 records, and its two live workers."""
    job = engine.execute(statement(mode))
    engine.push("src", data(100))
    wait_for(lambda: job.metrics()["records_in"] == 100, "the job to read 100 records")
    workers = worker_processes(job)
    assert len(workers) == 2 and not any(gone(w.pid) for w in workers)
    return job, workers


@pytest.mark.parametrize("mode", MODES)
def test_a_stopped_job_leaves_no_worker(engine, mode):
    job, workers = running(engine, mode)
    job.stop()
    assert job.status == "Stopped"
    assert wait_gone([w.pid for w in workers]) == []


@pytest.mark.parametrize("mode", MODES)
def test_a_killed_worker_fails_the_idle_job_naming_the_partition(engine, mode):
    job, workers = running(engine, mode)
    # Nothing more arrives: the job notices the death while its source is idle, not at the next batch.
    os.kill(workers[1].pid, signal.SIGKILL)
    with pytest.raises(WorkerError, match=r"^Partition 1 worker \(pid \d+\) was killed by SIGKILL"):
        job.wait(DEADLINE)
    assert job.status == "Error"
    assert wait_gone([w.pid for w in workers]) == []


def test_an_exception_in_the_job_leaves_no_worker(engine, tmp_path):
    """The job thread itself fails (its sink's reader went away); its workers go with it."""
    fifo = tmp_path / "out.jsonl"
    os.mkfifo(fifo)
    # The sink opens the FIFO when the job is deployed; its reader closes it straight away.
    reader = threading.Thread(target=lambda: open(fifo, "rb").close())
    reader.start()
    sink = f", 'out.type' = 'file_sink', 'out.path' = '{fifo}', 'out.format' = 'jsonl'"
    job = engine.execute(statement("rows", sink=sink))
    reader.join(DEADLINE)
    workers = worker_processes(job)
    engine.push("src", data(100))
    with pytest.raises(
        JobError, match=r"writing 100 rows to file_sink jsonl .*out\.jsonl failed: .*Broken pipe"
    ):
        job.wait(DEADLINE)
    assert job.status == "Error"
    assert wait_gone([w.pid for w in workers]) == []


def test_ctrl_c_leaves_no_worker_and_affinity_is_visible_from_outside(tmp_path):
    """``velosql run`` on V2 with affinity: each worker is pinned to one core, as the operating
    system reports it; Ctrl-C stops the job, flushes it and ends every worker."""
    (tmp_path / "in.csv").write_text("k,v\na,1\nb,2\na,3\n")
    (tmp_path / "app.sql").write_text(
        "CREATE STREAM totals AS SELECT k, sum(v) AS total FROM src GROUP BY k EMIT FINAL\n"
        "WITH ('src.type' = 'file_source', 'src.path' = 'in.csv', 'src.watch' = 'true',\n"
        "      'src.poll_interval' = '50ms', 'totals.type' = 'file_sink', 'totals.path' = 'totals.csv');\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PROCESSOR_CONFIG", "VELOSQL_CONFIG")}
    env.update(PYTHONPATH=str(REPO), TERM="xterm", COLUMNS="200")
    proc, master = start_on_pty(["run", "app.sql", "--processor", "v2:3:affinity"], tmp_path, env)
    seen: list[str] = []
    try:
        read_pty(master, proc, re.compile(r"totals\s+Running\s+-\s+3\s"), seen)
        workers = [
            child
            for child in psutil.Process(proc.pid).children()
            if any("spawn_main" in part for part in child.cmdline())
        ]
        allowed = sorted(psutil.Process().cpu_affinity())
        assert sorted(w.cpu_affinity() for w in workers) == sorted(
            [allowed[i % len(allowed)]] for i in range(3)
        )
        # The live display has a row per worker with the pid and core the system reports.
        shown = read_pty(master, proc, re.compile(r"p2 pid \d+ core \d+"), seen)
        rows = dict(re.findall(r"p\d pid (\d+) core (\d+)", shown))
        assert {int(pid): [int(core)] for pid, core in rows.items()} == {
            w.pid: w.cpu_affinity() for w in workers
        }
        proc.send_signal(signal.SIGINT)
        text = read_pty(master, proc, None, seen)
        assert proc.wait(DEADLINE) == 130, text
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert "Traceback" not in text
    assert wait_gone([w.pid for w in workers]) == []
    assert sorted((tmp_path / "totals.csv").read_text().splitlines()) == ["a,4", "b,2", "k,total"]


# ---- metrics --------------------------------------------------------------------------------------


def settled(job, n: int) -> bool:
    """Whether ``n`` records reached the workers and every reply is in (the job is idle: the job's
    own counters and watermark are set before it takes the replies)."""
    parts = job.metrics()["partitions"]
    return sum(p["records_in"] for p in parts) == n and all(p["queue_depth"] == 0 for p in parts)


def test_metrics_per_partition_in_the_job_show_jobs_and_explain_analyze(engine):
    windowed = (
        "CREATE STREAM w AS SELECT k, count(*) AS n FROM tw GROUP BY k WINDOW TUMBLING(ts, 1m) EMIT FINAL "
        "WITH ('tw.type' = 'python', 'tw.schema' = 'k VARCHAR, ts TIMESTAMP', processor = 'v2:2', "
        "partitioning_strategy = 'hash')"
    )
    job = engine.execute(windowed)
    plain = engine.execute(
        "CREATE STREAM p AS SELECT k FROM tp WITH ('tp.type' = 'python', 'tp.schema' = 'k VARCHAR', processor = 'v1')"
    )
    start = 1_700_000_000_000_000
    for batch in range(2):
        keys = [f"k{i % 7}" for i in range(100)]
        ts = pa.array([start + (batch * 100 + i) * 1_000_000 for i in range(100)], pa.timestamp("us"))
        engine.push("tw", pa.table({"k": keys, "ts": ts}))
        wait_for(lambda n=(batch + 1) * 100: settled(job, n), f"{(batch + 1) * 100} records at the workers")
    m = job.metrics()
    parts = m["partitions"]
    assert [p["partition"] for p in parts] == [0, 1]
    assert sum(p["records_in"] for p in parts) == 200
    busiest = max(p["records_in"] for p in parts)
    assert m["skew"] == round(busiest / 100, 2)
    assert m["workers_start_seconds"] > 0
    # The second batch was sent with the watermark the first one set.
    assert all(p["watermark"] is not None and p["watermark"] <= m["watermark"] for p in parts)
    assert all(p["pid"] and p["cores"] is None and p["busy_seconds"] >= 0 for p in parts)

    shown = engine.execute("SHOW JOBS").to_pylist()
    by_name = {row["name"]: row for row in shown}
    assert by_name["p"]["partitions"] is None and by_name["p"]["skew"] is None
    assert by_name["p"]["workers_start_seconds"] is None
    assert by_name["w"]["workers_start_seconds"] == m["workers_start_seconds"]
    assert [p["pid"] for p in by_name["w"]["partitions"]] == [p["pid"] for p in parts]

    text = engine.execute(f"EXPLAIN ANALYZE {windowed}")
    for p in parts:
        assert re.search(rf"^  partition {p['partition']}: pid={p['pid']}, cores=None, ", text, re.M), text
    assert re.search(r"^  metrics: .*skew=.*workers_start_seconds=\d+\.\d+", text, re.M), text
    job.stop()
    plain.stop()


# ---- latency and backpressure ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["rows", "keyed"])
def test_results_of_the_last_micro_batch_arrive_while_the_source_is_idle(engine, mode):
    """A micro-batch's output leaves the workers without waiting for more input to push it out."""
    job = engine.execute(statement(mode))
    engine.push("src", data(100))
    # One output row per input row in both modes (EMIT CHANGES: each row changes its group).
    wait_for(lambda: job.metrics()["records_out"] == 100, "the 100 result rows")
    job.stop()


@pytest.mark.parametrize("processor", ["v1", "v2:2"])
def test_a_slow_sink_makes_the_source_wait(engine, tmp_path, processor):
    """While the sink's reader reads nothing, pushing blocks once the source holds ``max_pending``
    tables: the queues between source, job, workers and sink stay bounded; once the reader reads,
    every record arrives."""
    fifo = tmp_path / "out.jsonl"
    os.mkfifo(fifo)
    release = threading.Event()
    lines: list[bytes] = []

    def read_slowly() -> None:
        with open(fifo, "rb") as fh:
            release.wait(DEADLINE)
            lines.extend(fh)

    reader = threading.Thread(target=read_slowly)
    reader.start()
    sink = f", 'out.type' = 'file_sink', 'out.path' = '{fifo}', 'out.format' = 'jsonl', max_batch_size = 1000"
    job = engine.execute(statement("rows", processor, sink))
    channel = engine.channel("src")
    batches, pushed = 500, []

    def push_all() -> None:
        for i in range(batches):
            engine.push("src", data(1000, i * 1000))
            pushed.append(i)

    pusher = threading.Thread(target=push_all)
    pusher.start()
    try:
        wait_for(lambda: channel.pending == channel.max_pending, "the source to fill up")
        # The pusher is held at the bound: what the job took is a few micro-batches in flight.
        assert pusher.is_alive()
        assert len(pushed) <= channel.max_pending + 16, len(pushed)
        assert job.metrics()["records_in"] <= 16 * 1000
    finally:
        release.set()
        pusher.join(DEADLINE)
        engine.close_source("src")
        reader.join(DEADLINE)
    job.wait(DEADLINE)
    assert len(lines) == batches * 1000
    assert job.metrics()["sink_seconds"] > 0


def test_queue_threshold_bounds_the_records_waiting_at_each_worker(engine):
    """Workers slower than the job: each one's queue (records behind the micro-batch it works on)
    stays under ``queue_threshold`` plus one micro-batch, and nothing is lost."""
    slow = "SELECT k, v, length(repeat(md5(k || v), 20000)) AS w FROM src"
    job = engine.execute(
        f"CREATE STREAM out AS {slow} WITH ({SCHEMA}, processor = 'v2:2', partitioning_strategy = "
        "'round_robin', max_batch_size = 100, queue_threshold = 150)"
    )
    for i in range(60):
        engine.push("src", data(100, i * 100))
    engine.close_source("src")
    job.wait(DEADLINE)
    m = job.metrics()
    assert m["records_out"] == 6000
    assert [p["records_in"] for p in m["partitions"]] == [3000, 3000]
    assert all(0 < p["queue_peak"] < 150 + 100 for p in m["partitions"]), m["partitions"]


@pytest.mark.parametrize("mode", ["rows", "keyed"])
def test_each_workers_records_out_are_the_rows_it_produced(engine, mode):
    """A partition's ``records_out`` counts the rows it produced (here the job's output rows), not
    the count rows of its setup, INSERT and compaction statements; its ``batches`` count the
    micro-batches it was sent."""
    job = engine.execute(
        f"CREATE STREAM out AS {MODES[mode]} WITH ({SCHEMA}, processor = 'v2:2', max_batch_size = 1000)"
    )
    for i in range(30):  # enough rows per worker for a compaction of its EMIT CHANGES state
        engine.push("src", data(1000, i * 1000))
    engine.close_source("src")
    job.wait(DEADLINE)
    m = job.metrics()
    assert m["records_out"] == 30_000
    assert sum(p["records_out"] for p in m["partitions"]) == m["records_out"], m["partitions"]
    # ... and its batches are the micro-batches it got, whole (rows: in turn) or its share of each
    # (keyed: every micro-batch holds keys of both workers), not its setup and control requests.
    batches = [p["batches"] for p in m["partitions"]]
    assert m["batches"] == 30
    assert batches == ([15, 15] if mode == "rows" else [30, 30]), m["partitions"]


PANDAS_FREE_JOBS = """
import sys
import velosql

engine = velosql.connect()
for processor, strategy, query in [
    ("v1", "sticky", "SELECT k, v * 2 AS w FROM src WHERE v > 1"),
    ("v1", "sticky", "SELECT k, count(*) AS n, max(ts) AS last FROM src GROUP BY k EMIT FINAL"),
    ("v1", "sticky", "SELECT k, sum(v) AS total FROM src GROUP BY k EMIT CHANGES"),
    # Partials computed by pyarrow (arrow_partials.py): Acero's hash aggregation.
    ("v1", "sticky", "SELECT v, count(*) AS n, sum(v) AS total, min(v) AS lo FROM src GROUP BY v EMIT FINAL"),
    # The event-time watermark: each partition's largest event time per micro-batch.
    ("v1", "sticky", "SELECT k, _window_start AS ws, count(*) AS n FROM src GROUP BY k WINDOW TUMBLING(ts, 10s) EMIT FINAL"),
    ("v2:2", "hash", "SELECT k, count(*) AS n FROM src GROUP BY k EMIT FINAL"),
]:
    job = engine.execute(
        f"CREATE STREAM o AS {query} WITH ('src.type' = 'file_source', 'src.path' = {sys.argv[1]!r}, "
        "'src.schema' = 'k VARCHAR, v BIGINT, ts TIMESTAMP', 'o.type' = 'python', "
        f"processor = '{processor}', partitioning_strategy = '{strategy}', scan_pushdown = false, "
        "'watermark.max_out_of_orderness' = '1s')"
    )
    job.wait(60)
    assert job.metrics()["records_in"] == 4, job.metrics()
    assert "pandas" not in sys.modules, query
    engine.execute("DROP STREAM o")
engine.close()
print("pandas" in sys.modules)
"""


def test_jobs_do_not_import_pandas(tmp_path):
    """pyarrow's first conversion of a Python value imports pandas when it is installed (~0.15 s
    of a job's start): V1 and V2 jobs build their scalars from buffers instead (pandas is in the
    dev install, so this can fail). The event-time watermark takes each partition's maximum
    without pyarrow's group_by, whose first call imports pyarrow.acero and pandas; pyarrow
    partials (arrow_partials.py) declare that aggregation to Acero without that import."""
    import importlib.util
    import subprocess
    import sys

    assert importlib.util.find_spec("pandas") is not None  # a dev dependency, else this proves nothing
    path = tmp_path / "in.csv"
    path.write_text(
        "k,v,ts\na,1,2024-01-01 00:00:00\nb,2,2024-01-01 00:00:05\na,3,2024-01-01 00:00:12\nb,4,2024-01-01 00:00:30\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", PANDAS_FREE_JOBS, str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def run_pushed(engine, create: str, tables):
    """Run ``create`` (reading ``src``, writing ``out``) over ``tables`` pushed in turn, to its end."""
    job = engine.execute(create)
    for table in tables:
        engine.push("src", table)
    engine.close_source("src")
    job.wait(DEADLINE)
    return job


def pushed(query: str, processor: str, options: str = "") -> tuple[list[dict], str, list[dict]]:
    """Push 1,200 rows in 12 micro-batches through ``query`` on ``processor``: its output, its
    EXPLAIN text and its partition metrics."""
    engine = velosql.connect()
    try:
        create = (
            f"CREATE STREAM out AS {query} WITH ({SCHEMA}, 'out.type' = 'python', "
            f"processor = '{processor}', max_batch_size = 100{options})"
        )
        text = engine.execute(f"EXPLAIN {create}")
        job = run_pushed(engine, create, [data(100, i * 100) for i in range(12)])
        return engine.pull("out").to_pylist(), text, job.metrics().get("partitions", [])
    finally:
        engine.close()


@pytest.mark.parametrize("mode", ["rows", "partials"])
def test_unset_strategy_spreads_a_pushed_stream_over_every_worker(mode):
    """A stream pushed without partitions is one source partition: sticky routing would give it
    all to worker 0. Unset, the job sends whole micro-batches in turn instead (a projection, or
    an aggregate without a key); the output keeps its arrival order and equals V1's."""
    query = MODES["rows"] if mode == "rows" else "SELECT count(*) AS n, sum(v) AS total FROM src EMIT FINAL"
    want, _, _ = pushed(query, "v1")
    got, text, partitions = pushed(query, "v2:2")
    assert "whole micro-batches round-robin" in text, text
    assert all(p["records_in"] > 0 for p in partitions), partitions
    assert got == want
    assert len(want) == (1200 if mode == "rows" else 1)


@pytest.mark.parametrize("mode", ["rows", "partials"])
def test_hash_without_a_key_to_hash_routes_as_when_unset(mode):
    """``hash`` asked for a query without a GROUP BY key has nothing to hash: it routes as an
    unset strategy does (here whole micro-batches in turn, not everything to worker 0 by the
    pushed stream's one partition), and EXPLAIN says why."""
    query = MODES["rows"] if mode == "rows" else "SELECT count(*) AS n, sum(v) AS total FROM src EMIT FINAL"
    want, _, _ = pushed(query, "v1")
    got, text, partitions = pushed(query, "v2:2", ", partitioning_strategy = 'hash'")
    assert "whole micro-batches round-robin" in text and "no key to hash" in text, text
    assert [p["records_in"] for p in partitions] == [600, 600], partitions
    assert got == want


@pytest.mark.parametrize(
    "query, combined",
    [
        ("SELECT k, count(*) AS n, sum(v) AS total FROM src GROUP BY k EMIT FINAL", True),
        # An ordered emission is merged by the job: each worker's share would be ordered alone.
        ("SELECT k, sum(v) AS total FROM src GROUP BY k ORDER BY total DESC EMIT FINAL", False),
    ],
    ids=["combined-in-workers", "ordered-merged-by-job"],
)
def test_hash_routing_moves_partial_rows_to_the_workers_that_own_the_groups(query, combined):
    """Hash routing of an EMIT FINAL aggregate sends input rows whole and round-robin; the partial
    rows go by key hash to the worker holding the group, which emits it. Equal to V1, in V1's
    order when the query orders its rows."""
    want, _, _ = pushed(query, "v1")
    got, text, partitions = pushed(query, "v2:3", ", partitioning_strategy = 'hash'")
    assert ("combined in the workers" in text) is combined, text
    assert ("merged by the job" in text) is not combined, text
    if combined:  # whole micro-batches in turn
        assert [p["records_in"] for p in partitions] == [400, 400, 400], partitions
        assert sorted(got, key=str) == sorted(want, key=str)
    else:
        assert got == want
    assert len(want) == 7


@pytest.mark.parametrize("emit", ["FINAL", "CHANGES"])
def test_a_key_without_a_stable_hash_is_not_hash_routed(emit):
    """A LIST key has no stable hash: a hash-routed job would fail at its first micro-batch.
    Partials are merged by the job instead, and EMIT CHANGES runs in one partition; the result
    is V1's, and EXPLAIN ANALYZE says why."""
    keys = pa.array([[i % 3, 1] if i % 5 else None for i in range(300)], pa.list_(pa.int32()))
    table = pa.table({"k": keys, "v": pa.array(range(300), pa.int64())})
    out = {}
    for processor in ("v1", "v2:2"):
        engine = velosql.connect()
        try:
            create = (
                f"CREATE STREAM out AS SELECT k, count(*) AS n, sum(v) AS total FROM src GROUP BY k "
                f"EMIT {emit} WITH ('src.type' = 'python', 'src.schema' = 'k INTEGER[], v BIGINT', "
                f"'out.type' = 'python', processor = '{processor}', partitioning_strategy = 'hash', "
                "max_batch_size = 100)"
            )
            run_pushed(engine, create, [table.slice(i * 100, 100) for i in range(3)])
            out[processor] = engine.pull("out").to_pylist()
            if processor != "v1":
                text = engine.execute(f"EXPLAIN ANALYZE {create}")
                assert re.search(r"type list<\w+: int32> has no stable hash", text), text
                # Without a job the key's type is not known yet: the plan says hash, and that it
                # is checked when the job starts.
                text = engine.execute(f"EXPLAIN {create}")
                assert re.search(r"hash of (the GROUP BY key \()?k\b", text), text
                assert "without a stable hash" in text, text
        finally:
            engine.close()
    if emit == "FINAL":
        assert sorted(out["v2:2"], key=str) == sorted(out["v1"], key=str)
        assert len(out["v1"]) == 4
    else:
        assert out["v2:2"] == out["v1"]
        assert len(out["v1"]) == 300


def test_change_rows_finished_in_arrow_and_by_duckdb_merge_as_v1s():
    """One worker's running sum leaves int64 (DuckDB's window takes its batch, HUGEINT), the
    other's stays in Arrow (int64): the parts of the micro-batch, of different types, are made
    the output's and put back in arrival order, as V1 writes them."""
    big = 2**62 - 1
    keys = ["a", "b", "c", "d", "e", "f"] * 4
    table = pa.table({"k": keys, "x": pa.array([big if k == "a" else 1 for k in keys], pa.int64())})
    out = {}
    for processor in ("v1", "v2:2"):
        engine = velosql.connect()
        try:
            create = (
                "CREATE STREAM out AS SELECT k, sum(x) AS sx, count(*) AS n FROM src GROUP BY k WITH "
                f"('src.type' = 'python', 'src.schema' = 'k VARCHAR, x BIGINT', 'out.type' = 'python', "
                f"processor = '{processor}')"
            )
            job = run_pushed(engine, create, [table])
            out[processor] = engine.pull("out")
            if processor != "v1":
                assert all(p["records_in"] for p in job.metrics()["partitions"])
        finally:
            engine.close()
    assert out["v2:2"].schema == out["v1"].schema
    assert out["v2:2"].to_pylist() == out["v1"].to_pylist()
    assert [int(r["sx"]) for r in out["v1"].to_pylist()][:7] == [big, 1, 1, 1, 1, 1, 2 * big]


BASE = dt.datetime(2026, 1, 1)


def windowed(options: str) -> str:
    """A per-key count over 10-second tumbling windows of ``src`` (``k``, ``ts``) into ``out``."""
    return (
        "CREATE STREAM out AS SELECT k, _window_start AS ws, count(*) AS n FROM src GROUP BY k "
        "WINDOW TUMBLING(ts, 10s) EMIT FINAL WITH ('src.type' = 'python', "
        f"'src.schema' = 'k VARCHAR, ts TIMESTAMP', 'out.type' = 'python', {options})"
    )


def stamped(keys: list[str], seconds) -> pa.Table:
    """Rows of ``keys`` at ``seconds`` after BASE."""
    ts = pa.array([BASE + dt.timedelta(seconds=s) for s in seconds], pa.timestamp("us"))
    return pa.table({"k": keys, "ts": ts})


@pytest.mark.parametrize(
    "processor, strategy", [("v1", None), ("v2:2", "hash"), ("v2:2", "round_robin")], ids=["v1", "hash", "rr"]
)
def test_closed_windows_come_out_while_the_stream_stays_open(processor, strategy):
    """EMIT FINAL windows come out once the watermark passes their end, not at the end of input,
    wherever V2 combines them: in the workers (hash), or in the job once every earlier reply is
    in (round_robin)."""
    choice = f", partitioning_strategy = '{strategy}'" if strategy else ""
    engine = velosql.connect()
    try:
        job = engine.execute(
            windowed(f"'watermark.max_out_of_orderness' = '0s', processor = '{processor}'{choice}")
        )
        for start in range(0, 60, 10):  # the rows of window [start, start + 10s) close the one before
            seconds = range(start, start + 10)
            engine.push("src", stamped([f"k{s % 3}" for s in seconds], seconds))
            closed = 3 * (start // 10)
            wait_for(lambda closed=closed: job.metrics()["records_out"] >= closed, f"{closed} window rows")
        while_open = job.metrics()["records_out"]
        engine.close_source("src")
        job.wait(DEADLINE)
        rows = engine.pull("out").to_pylist()
    finally:
        engine.close()
    assert while_open == 15  # five windows of three keys, before the end of input
    want = [
        (f"k{k}", BASE + dt.timedelta(seconds=w), sum(1 for s in range(w, w + 10) if s % 3 == k))
        for w in range(0, 60, 10)
        for k in range(3)
    ]
    assert sorted((r["k"], r["ws"], r["n"]) for r in rows) == sorted(want)


@pytest.mark.parametrize("strategy", ["hash", "round_robin"])
def test_windows_close_once_whatever_the_replies_interleave(monkeypatch, strategy):
    """Partial rows merged (or sent to their owners) at every reply, and a one-record queue that
    makes each send take replies first: a window must still come out once, whole, after every
    partial row of it. Equal to V1."""
    from velosql.runtime import v2

    monkeypatch.setattr(v2, "MERGE_ROWS", 1)
    monkeypatch.setattr(v2, "MERGE_TABLES", 1)
    seconds = [s // 3 + (s % 7) for s in range(3000)]  # ~1,000 s with a few seconds of disorder
    table = stamped([f"k{i % 11}" for i in range(3000)], seconds)
    out = {}
    for processor in ("v1", "v2:2"):
        engine = velosql.connect()
        try:
            create = windowed(
                "'watermark.max_out_of_orderness' = '10s', max_batch_size = 50, queue_threshold = 1, "
                f"processor = '{processor}', partitioning_strategy = '{strategy}'"
            )
            run_pushed(engine, create, [table.slice(i, 50) for i in range(0, 3000, 50)])
            out[processor] = sorted((r["k"], r["ws"], r["n"]) for r in engine.pull("out").to_pylist())
        finally:
            engine.close()
    assert out["v2:2"] == out["v1"]
    assert sum(n for _, _, n in out["v1"]) == 3000
