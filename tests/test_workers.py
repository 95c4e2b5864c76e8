"""The V2 worker pool: real spawned processes and real DuckDB; waits are on events, never sleeps."""

from __future__ import annotations

import datetime as dt
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from processes import gone, wait_gone

from velosql.errors import ConfigError, InvalidPartitionCountError, JobError, WorkerError
from velosql.plan import planner
from velosql.runtime.pool import WorkerPool
from velosql.runtime.protocol import Batch, Marker, Query, Setup
from velosql.runtime.v2 import changes_call
from velosql.sql.parser import parse_one

DEADLINE = 20.0  # seconds; generous for a loaded CI machine, and only reached on failure
# Runs for minutes on one core: a worker that is busy until it is stopped or killed.
ENDLESS = "SELECT sum(i * i % 7) FROM range(10_000_000_000) t(i)"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pids_of(pool: WorkerPool) -> list[int]:
    return [m.pid for m in pool.metrics()]


def trades(n: int, offset: int = 0) -> pa.Table:
    """``n`` rows with a string, two doubles, an int64 and a timestamp column."""
    ids = pa.array(range(offset, offset + n), pa.int64())
    return pa.table(
        {
            "symbol": pa.array([f"S{i % 10}" for i in range(offset, offset + n)], pa.string()),
            "price": pa.array([i * 0.5 for i in range(offset, offset + n)], pa.float64()),
            "qty": pa.array([float(i % 3) for i in range(offset, offset + n)], pa.float64()),
            "id": ids,
            "ts": pa.array(
                [dt.datetime(2024, 1, 1) + dt.timedelta(seconds=i) for i in range(n)], pa.timestamp("us")
            ),
        }
    )


@pytest.fixture(scope="module")
def pool():
    """Two workers holding a ``trades`` table; tests using it leave no request outstanding."""
    with WorkerPool(
        2, setup=["CREATE TABLE trades (symbol VARCHAR, price DOUBLE, qty DOUBLE, id BIGINT, ts TIMESTAMP)"]
    ) as p:
        yield p
    assert all(gone(pid) for pid in pids_of(p))


def test_round_trip_batches_then_an_aggregate_query(pool):
    before = pool.metrics()
    inserted = []
    for j in range(6):
        inserted += pool.send(
            j % 2, Batch(trades(100, offset=100 * j), "INSERT INTO trades SELECT * FROM __in")
        )
    inserted += pool.drain(0) + pool.drain(1)
    assert [r.table.to_pylist() for r in inserted] == [[{"Count": 100}]] * 6  # DuckDB's DML result
    for i in range(2):
        pool.send(i, Query("SELECT count(*) AS n, sum(id) AS s FROM trades"))
        (reply,) = pool.drain(i)
        ids = [x for j in range(i, 6, 2) for x in range(100 * j, 100 * j + 100)]
        assert (reply.partition, reply.kind) == (i, "query")
        assert reply.table.to_pylist() == [{"n": 300, "s": sum(ids)}]
        pool.send(i, Query("DELETE FROM trades"))
        pool.drain(i)
    after = pool.metrics()
    assert [a.rows_sent - b.rows_sent for a, b in zip(after, before)] == [300, 300]
    assert [a.requests - b.requests for a, b in zip(after, before)] == [5, 5]
    assert all(a.busy_seconds > b.busy_seconds for a, b in zip(after, before))
    assert all(a.wait_seconds >= b.wait_seconds for a, b in zip(after, before))


def test_batch_result_round_trips_arrow_types_and_may_be_empty(pool):
    table = trades(50)
    pool.send(0, Batch(table, "SELECT * FROM __in ORDER BY id"))
    pool.send(0, Batch(table.to_batches()[0], "SELECT * FROM __in WHERE price < 0"))
    same, empty = pool.drain(0)
    assert same.table.to_pylist() == table.to_pylist()
    assert empty.table.num_rows == 0 and empty.table.column_names == table.column_names


def test_each_worker_runs_pyarrow_on_one_thread(pool):
    """N workers on N cores: pyarrow's own pools stay at one thread each, not one per CPU."""
    assert [m.pyarrow_threads for m in pool.metrics()] == [(1, 1), (1, 1)]


def test_large_batches_travel_as_files_in_memory_and_leave_none_behind():
    """A batch of FILE_MIN_ROWS rows or more goes through a mapped Arrow file, not the pipe; the
    worker removes each file after use and close() the directory."""
    from velosql.runtime import protocol

    table = trades(protocol.FILE_MIN_ROWS + 5)
    with WorkerPool(2) as p:
        directory = p._files
        for i in range(2):
            p.send(i, Batch(table, "SELECT count(*) AS n, sum(id) AS s, max(symbol) AS m FROM __in"))
            p.send(
                i, Batch(table.slice(0, 10), "SELECT count(*) AS n, sum(id) AS s, max(symbol) AS m FROM __in")
            )
        replies = p.drain(0) + p.drain(1)
        assert os.listdir(directory) == []
    assert [r.table.to_pylist()[0]["n"] for r in replies] == [table.num_rows, 10] * 2
    assert replies[0].table.to_pylist()[0]["s"] == sum(range(table.num_rows))
    assert not os.path.exists(directory)


def test_a_scattered_batch_gives_each_worker_its_rows_and_leaves_no_file():
    """scatter(): one file for all; each worker sees only its rows, without the routing column;
    the file goes once the last of them has replied."""
    table = trades(3000)
    route = pa.array([(i * 7) % 3 for i in range(3000)], pa.int32())
    with WorkerPool(3) as p:
        directory = p._files
        p.scatter(table.append_column("__route", route), "__route", [0, 2], "SELECT * FROM __in ORDER BY id")
        first = p.receive(0)
        assert len(os.listdir(directory)) == 1  # worker 2 has not replied yet
        second = p.receive(2)
        assert os.listdir(directory) == []
    for reply, worker in ((first, 0), (second, 2)):
        want = table.filter(pc.equal(route, worker))
        assert reply.table.column_names == table.column_names
        assert reply.table.to_pylist() == want.to_pylist()


@pytest.mark.parametrize("max_in_flight", [1, 2, 3])
def test_replies_come_back_in_request_order_with_bounded_in_flight(max_in_flight):
    with WorkerPool(1, max_in_flight=max_in_flight) as p:
        replies = []
        for i in range(20):
            request = (
                Query(f"SELECT {i} AS i") if i % 2 else Batch(pa.table({"i": [i]}), "SELECT i FROM __in")
            )
            collected = p.send(0, request)
            assert len(collected) == (1 if i >= max_in_flight else 0)
            assert p.outstanding(0) <= max_in_flight
            replies += collected
        replies += p.drain(0)
        assert [r.table["i"][0].as_py() for r in replies] == list(range(20))
        assert [r.kind for r in replies] == ["batch", "query"] * 10


def test_a_broadcast_marker_reaches_every_worker_after_its_earlier_batches(pool):
    collected = []  # sends return the replies they collect to stay within max_in_flight
    for i in range(2):
        for j in range(3):
            collected += pool.send(i, Batch(pa.table({"j": [j]}), "SELECT j FROM __in"))
    collected += pool.broadcast(Marker(("watermark", 42)))
    collected += pool.broadcast(Marker("end"))
    for i in range(2):
        replies = [r for r in collected if r.partition == i] + pool.drain(i)
        assert [r.kind for r in replies] == ["batch"] * 3 + ["marker"] * 2
        assert [r.table["j"][0].as_py() for r in replies[:3]] == [0, 1, 2]
        assert [r.value for r in replies[3:]] == [("watermark", 42), "end"]
        assert replies[-1].table is None


def test_setup_runs_later_too_and_markers_echo_any_small_value(pool):
    pool.broadcast(Setup(("CREATE TABLE extra (x INT)", "INSERT INTO extra VALUES (7)")))
    pool.broadcast(Marker({"watermark": 42}))
    for i in range(2):
        setup, marker = pool.drain(i)
        assert (setup.kind, setup.table) == ("setup", None)
        assert marker.value == {"watermark": 42}
        with pytest.raises((pickle.PicklingError, AttributeError)):
            pool.send(i, Marker(lambda: None))  # refused before a byte is written
        pool.send(i, Setup("INSERT INTO extra VALUES (8)"))  # one statement, not one per character
        pool.send(i, Query("SELECT x FROM extra ORDER BY x"))
        assert pool.drain(i)[1].table.to_pylist() == [{"x": 7}, {"x": 8}]
        pool.send(i, Query("DROP TABLE extra"))
        pool.drain(i)


def test_bad_sql_raises_job_error_naming_the_partition_and_no_process_is_left():
    p = WorkerPool(2)
    try:
        p.send(1, Query("SELEC 1"))
        with pytest.raises(
            JobError, match=r"Partition 1 failed running a query `SELEC 1`: .*syntax error"
        ) as err:
            p.receive(1, timeout=DEADLINE)
        assert not isinstance(err.value, WorkerError)
        p.send(0, Batch(trades(3), "INSERT INTO missing SELECT * FROM __in"))
        with pytest.raises(
            JobError, match=r"Partition 0 failed running a batch `INSERT INTO missing.*missing"
        ):
            p.drain(0)
        p.send(1, Query("SELECT 1 AS one"))  # the worker is still usable after an error
        assert p.receive(1).table.to_pylist() == [{"one": 1}]
    finally:
        p.close()
    assert all(gone(pid) for pid in pids_of(p))


def test_a_failing_setup_fails_the_constructor_without_leaving_a_process():
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    with pytest.raises(JobError, match=r"Partition \d failed running a setup of 2 statement\(s\): .*nope"):
        WorkerPool(2, setup=["CREATE TABLE ok (x INT)", "INSERT INTO nope VALUES (1)"])
    after = {c.pid for c in psutil.Process().children(recursive=True)}
    assert not [pid for pid in after - before if not gone(pid)]


def test_invalid_arguments_start_nothing():
    with pytest.raises(InvalidPartitionCountError):
        WorkerPool(0)
    with pytest.raises(ConfigError, match="max_in_flight"):
        WorkerPool(1, max_in_flight=0)


def test_a_killed_worker_raises_worker_error_naming_the_partition_and_signal():
    with WorkerPool(2, stop_timeout=1.0) as p:
        pids = pids_of(p)
        p.send(1, Query("SELECT 1"))
        p.drain(1)
        os.kill(pids[1], signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(WorkerError, match=r"Partition 1 worker \(pid \d+\) was killed by SIGKILL") as err:
            p.send(1, Query("SELECT 2"))  # may still fit in the pipe: then the receive sees the death
            p.receive(1, timeout=DEADLINE)
        assert time.monotonic() - started < DEADLINE
        with pytest.raises(WorkerError) as again:  # the pool remembers: no new wait, same error
            p.send(1, Query("SELECT 3"))
        assert again.value is err.value
        # A worker killed while busy and with a request outstanding: the waiting parent wakes up.
        p.send(0, Query(ENDLESS))
        os.kill(pids[0], signal.SIGKILL)
        with pytest.raises(WorkerError, match=r"Partition 0 .*SIGKILL.* 1 request\(s\) were left unanswered"):
            p.receive(0, timeout=DEADLINE)
    assert all(gone(pid) for pid in pids)


def test_a_reply_timeout_raises_and_close_terminates_a_busy_worker():
    p = WorkerPool(1, stop_timeout=0.5)
    try:
        p.send(0, Query(ENDLESS))
        with pytest.raises(JobError, match=r"Partition 0 did not reply within 0.2 s to a query `SELECT sum"):
            p.receive(0, timeout=0.2)
        assert p.outstanding(0) == 1  # nothing was consumed
    finally:
        started = time.monotonic()
        p.close()
    assert time.monotonic() - started < DEADLINE
    assert all(gone(pid) for pid in pids_of(p))


def test_close_leaves_no_process_and_is_idempotent():
    with WorkerPool(2) as p:
        pids = pids_of(p)
        p.send(0, Query("SELECT 1"))  # an unread reply is discarded
        assert not any(gone(pid) for pid in pids)
    assert p.closed and all(gone(pid) for pid in pids)
    p.close()
    with pytest.raises(JobError, match="closed"):
        p.send(0, Query("SELECT 1"))


def test_a_worker_imports_neither_sqlglot_nor_the_planner_nor_the_pool():
    """Every V2 job waits for its workers to start, so a worker imports what it runs and no more:
    pyarrow, DuckDB and the protocol, not the SQL and plan layers, the job's pool or numpy."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules.setdefault("numpy", None)  # as worker_boot does
        import velosql.runtime.worker
        print(*sorted(name for name, module in sys.modules.items() if module is not None))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=DEADLINE * 3
    )
    assert done.returncode == 0, done.stderr
    heavy = ("sqlglot", "numpy", "velosql.sql", "velosql.plan", "velosql.engine", "velosql.runtime.pool")
    assert [m for m in done.stdout.split() if m.startswith(heavy)] == []


def test_workers_die_with_a_parent_that_exits_abruptly():
    script = textwrap.dedent(
        f"""
        import os
        from velosql.runtime.pool import WorkerPool
        from velosql.runtime.protocol import Query

        pool = WorkerPool(2)
        pool.send(1, Query({ENDLESS!r}))  # one worker idle, one busy in DuckDB
        print(pool._files, *(m.pid for m in pool.metrics()), flush=True)
        os._exit(3)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=DEADLINE * 3
    )
    assert done.returncode == 3, done.stderr
    files, *pids = done.stdout.split()
    pids = [int(pid) for pid in pids]
    assert len(pids) == 2
    survivors = wait_gone(pids)
    for pid in survivors:  # don't leak them into the rest of the run
        os.kill(pid, signal.SIGKILL)
    assert survivors == []
    assert not os.path.exists(files)  # the workers removed the pool's directory in /dev/shm


@pytest.mark.skipif(not hasattr(psutil.Process(), "cpu_affinity"), reason="no CPU affinity on this platform")
def test_affinity_pins_each_worker_to_one_core_round_robin():
    allowed = sorted(psutil.Process().cpu_affinity())
    with WorkerPool(3, affinity=True) as p:
        for i, m in enumerate(p.metrics()):
            core = allowed[i % len(allowed)]
            assert (m.cores, m.affinity_error) == ((core,), None)
            worker = psutil.Process(m.pid)
            assert worker.cpu_affinity() == [core]
            if hasattr(os, "sched_getaffinity"):  # Linux: every thread, not just the main one
                assert {frozenset(os.sched_getaffinity(t.id)) for t in worker.threads()} == {
                    frozenset([core])
                }
    with WorkerPool(1) as p:
        assert (p.metrics()[0].cores, p.metrics()[0].affinity_error) == (None, None)


def test_a_call_among_a_batchs_statements_keeps_running_totals_in_the_worker():
    """V2's EMIT CHANGES of running COUNT/SUM: a :class:`Call` among a Batch's statements
    (``running.worker_changes``) finishes the change rows in Arrow with the batch registered, and
    the worker keeps its keys' totals in Arrow between batches: ``__state`` stays empty until a
    snapshot. A batch the Arrow path cannot take (a running sum beyond int64) gets the totals
    written to ``__state`` first and runs DuckDB's window over them."""
    plan = planner.plan(
        parse_one(
            "CREATE STREAM o AS SELECT k, count(*) AS n, sum(x) AS s FROM t GROUP BY k EMIT CHANGES "
            "WITH ('o.type' = 'python')"
        )
    )
    call = changes_call(plan, plan.sql.partial_all, ordered=True)

    def batch(keys: list[str], xs: list[int], first: int) -> pa.Table:
        seq = pa.array(range(first, first + len(keys)), pa.int64())
        return pa.table({"k": pa.array(keys, pa.string()), "x": pa.array(xs, pa.int64()), "__seq": seq})

    big = 2**62
    requests = [
        Batch(batch([], [], 0), f"CREATE TEMP TABLE __state AS {plan.sql.partial} LIMIT 0"),
        Batch(batch(["a", "b", "a"], [1, 2, 3], 0), call),
        Query("SELECT count(*) FROM __state"),
        Batch(batch(["b", "b", "a"], [big, big, 5], 3), call),
        Query('SELECT "__k0", sum("__a0_c"), sum("__a1_s") FROM __state GROUP BY 1 ORDER BY 1'),
    ]
    with WorkerPool(1) as pool:
        replies = [reply for request in requests for reply in pool.send(0, request)] + pool.drain(0)
    first, held, second, state = (reply.table.to_pylist() for reply in replies[1:])
    rows = lambda t: [tuple(r.values()) for r in t]  # noqa: E731
    assert rows(first) == [(0, "a", 1, 1), (1, "b", 1, 2), (2, "a", 2, 4)]
    assert held == [{"count_star()": 0}]
    assert rows(second) == [(3, "b", 2, 2 + big), (4, "b", 3, 2 + 2 * big), (5, "a", 3, 9)]
    assert rows(state) == [("a", 3, 9), ("b", 3, 2 + 2 * big)]
