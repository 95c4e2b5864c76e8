"""Checkpoints and restart (issue 19): a job with a state location saves its source positions,
operator state and watermark, and a job started again on the same state location goes on from
there — no row read twice, none lost, windows in flight carried over."""

from __future__ import annotations

import contextlib
import datetime as dt
import subprocess
import threading
import time

import duckdb
import pytest
from conftest import LONG

import velosql
from velosql.errors import ConfigError

BASE = dt.datetime(2024, 1, 1)


def lines(first: int, last: int) -> str:
    """CSV rows ``first`` … ``last - 1``: three keys, a row every 7 s."""
    return "".join(
        f"k{i % 3},{i},{(BASE + dt.timedelta(seconds=7 * i)).isoformat(sep=' ')}\n"
        for i in range(first, last)
    )


TUMBLE = (
    "SELECT k, _window_start AS ws, count(*) AS n, sum(v) AS s FROM t GROUP BY k WINDOW TUMBLING(ts, 60s)"
)


def statement(path, extra: str = "", select: str = TUMBLE + " EMIT FINAL") -> str:
    return (
        f"CREATE STREAM o AS {select} WITH ('t.type' = 'file_source', 't.path' = '{path}', "
        "'t.format' = 'csv', 't.watch' = 'true', 't.poll_interval' = '5ms', 'o.type' = 'duckdb_table', "
        f"'checkpoint.interval' = '0s', max_batch_size = 7{extra})"
    )


def until(condition, seconds: float = 30) -> None:
    """Wait until ``condition()`` holds; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    tick = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        tick.wait(0.01)


def epoch(current) -> int:
    """The epoch a state location's ``CURRENT`` names (0 before the first checkpoint)."""
    try:
        return int(current.read_text())
    except (FileNotFoundError, ValueError):  # not yet, or being replaced
        return 0


def _workers(pid: int) -> list:
    """The V2 workers process ``pid`` spawned and that still run (not multiprocessing's resource
    tracker, not one that has exited)."""
    import psutil

    found = []
    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    for child in children:
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # exited meanwhile (a zombie until reaped)
            continue
    return found


def kill_and_restart(command, current, rng, planned: int, processor: str, pause, after_kill=None):
    """Run ``command`` (a job with a state location whose checkpoints ``current`` names) and
    kill it with SIGKILL at a random moment — after 1 to 3 checkpoints of the run and a pause
    drawn from ``pause`` (seconds), the process or, under V2 every other time, one of its workers
    (its job fails; the script's others go on) — and start it again, ``planned`` times or until a
    run ends by itself, which then must exit 0. ``after_kill`` runs after each kill. The kills,
    and how many of them were a worker's."""
    import psutil

    kills = workers_killed = 0
    while True:
        target = epoch(current) + rng.randint(1, 3)
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if kills < planned:
            until(lambda p=proc, t=target: p.poll() is not None or epoch(current) >= t, 60)
            threading.Event().wait(rng.uniform(*pause))
            if proc.poll() is None:  # else it ended by itself: the last run
                workers = _workers(proc.pid)
                if processor != "v1" and kills % 2 and workers:
                    with contextlib.suppress(psutil.NoSuchProcess):  # it may have just ended
                        rng.choice(workers).kill()
                        workers_killed += 1
                else:
                    proc.kill()
                proc.communicate(timeout=120)
                kills += 1
                if after_kill is not None:
                    after_kill()
                continue
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        return kills, workers_killed


def run_until_read(state, sql: str, rows: int) -> list[tuple]:
    """Deploy ``sql`` on a fresh engine with state location ``state``, stop the job once it has
    read ``rows`` records; its output rows."""
    with velosql.connect(state=state) as engine:
        job = engine.execute(sql)
        until(lambda: job.metrics()["records_in"] >= rows or job.done)
        job.stop()
        job.wait(30)
        assert job.status == "Stopped" and job.error is None, job.error
        assert job.metrics()["records_in"] == rows
        return engine.sql("SELECT * FROM o").fetchall()


@pytest.mark.parametrize("processor", ["v1", "v2:2"])
def test_a_stopped_job_resumes_from_its_checkpoint_with_the_batch_answer(tmp_path, processor):
    """The first run reads 100 rows and is stopped with windows open; the second run, on the same
    state location, reads only the 101 rows appended since (the last far ahead, so its watermark
    closes every earlier window). Together they emit each closed window once, as batch SQL."""
    src, state = tmp_path / "in.csv", tmp_path / "state"
    src.write_text("k,v,ts\n" + lines(0, 100))
    sql = statement(src, f", processor = '{processor}'")
    got = run_until_read(state, sql, 100)
    with open(src, "a") as f:
        f.write(lines(100, 200) + lines(1000, 1001))
    got += run_until_read(state, sql, 101)
    want = duckdb.sql(
        f"SELECT k, time_bucket(INTERVAL '60 seconds', ts) AS ws, count(*), sum(v) FROM read_csv('{src}') "
        f"GROUP BY ALL HAVING ws + INTERVAL '60 seconds' <= (SELECT max(ts) FROM read_csv('{src}'))"
    ).fetchall()
    assert len(want) > 60
    assert sorted(got) == sorted(want)


@pytest.mark.parametrize("processor", ["v1", "v2:2", "v2:3"])
def test_running_values_go_on_from_the_checkpoint_of_each_partition(tmp_path, processor):
    """EMIT CHANGES: each key's running count and sum carry over the stop. Under V2 each worker
    holds its keys' totals: the checkpoint takes each worker's, and the restart gives them back."""
    src, state = tmp_path / "in.csv", tmp_path / "state"
    src.write_text("k,v,ts\n" + lines(0, 60))
    select = "SELECT k, count(*) AS n, sum(v) AS s FROM t GROUP BY k EMIT CHANGES"
    sql = statement(src, f", processor = '{processor}'", select)
    got = run_until_read(state, sql, 60)
    with open(src, "a") as f:
        f.write(lines(60, 130))
    got += run_until_read(state, sql, 70)
    w = "OVER (PARTITION BY k ORDER BY v ROWS UNBOUNDED PRECEDING)"
    want = duckdb.sql(f"SELECT k, count(*) {w}, sum(v) {w} FROM read_csv('{src}')").fetchall()
    assert sorted(got) == sorted(want)


@pytest.mark.parametrize("processor", ["v1", "v2:2"])
def test_sessions_open_at_a_stop_close_in_the_next_run(tmp_path, processor):
    """SESSION windows (under V2 held by the workers' session operators): a session open at the
    stop goes on with the rows of the next run."""
    src, state = tmp_path / "in.csv", tmp_path / "state"
    # Three keys, each a row every 21 s but 42 s where a tenth row is missing: sessions of ~3 rows.
    rows = [i for i in range(130) if i % 10]
    src.write_text("k,v,ts\n" + "".join(lines(i, i + 1) for i in rows if i < 60))
    select = (
        "SELECT k, _window_start AS ws, count(*) AS n, sum(v) AS s FROM t GROUP BY k "
        "WINDOW SESSION(ts, 30s) EMIT FINAL"
    )
    sql = statement(src, f", processor = '{processor}'", select)
    first = sum(1 for i in rows if i < 60)
    got = run_until_read(state, sql, first)
    with open(src, "a") as f:
        f.write("".join(lines(i, i + 1) for i in rows if i >= 60) + lines(1000, 1001))
    got += run_until_read(state, sql, len(rows) + 1 - first)
    want = duckdb.sql(
        f"""WITH b AS (SELECT *, CASE WHEN epoch(ts) - lag(epoch(ts)) OVER (PARTITION BY k ORDER BY ts) >= 30
                                      THEN 1 ELSE 0 END AS brk FROM read_csv('{src}')),
                 s AS (SELECT *, sum(brk) OVER (PARTITION BY k ORDER BY ts) AS sid FROM b)
            SELECT k, min(ts), count(*), sum(v) FROM s GROUP BY k, sid
            HAVING max(ts) + INTERVAL '30 seconds' <= (SELECT max(ts) FROM read_csv('{src}'))"""
    ).fetchall()
    assert any(n > 2 for _, _, n, _ in want)
    assert sorted(got) == sorted(want)


def test_a_checkpoint_is_a_duckdb_file_holding_positions_state_and_the_statement(tmp_path):
    src, state = tmp_path / "in.csv", tmp_path / "state"
    src.write_text("k,v,ts\n" + lines(0, 50))
    run_until_read(state, statement(src), 50)
    files = sorted(p.name for p in (state / "o").iterdir())
    current = (state / "o" / "CURRENT").read_text().strip()
    assert files == ["CURRENT", f"chk-{current}.duckdb"]  # older checkpoints are removed
    con = duckdb.connect()
    con.execute(f"ATTACH '{state / 'o' / f'chk-{current}.duckdb'}' AS ck (READ_ONLY)")
    assert con.sql("SELECT source, partition, next_offset FROM ck.positions").fetchall() == [("t", 0, 50)]
    (text,) = con.execute("SELECT statement FROM ck.checkpoint").fetchone()
    assert text.startswith("CREATE STREAM o AS SELECT k")
    # The open windows' partial rows: every row of the windows the watermark has not closed.
    held = con.execute("SELECT count(*) FROM ck.state__state").fetchone()[0]
    assert held > 0


def test_a_changed_statement_is_refused_saying_how_to_start_afresh(tmp_path):
    src, state = tmp_path / "in.csv", tmp_path / "state"
    src.write_text("k,v,ts\n" + lines(0, 20))
    run_until_read(state, statement(src), 20)
    with velosql.connect(state=state) as engine:
        with pytest.raises(ConfigError, match=r"is not the one its checkpoint .* remove .*state/o"):
            engine.execute(statement(src, ", 'watermark.max_out_of_orderness' = '1m'"))


def test_a_source_pushed_from_python_is_refused_with_a_state_location(tmp_path):
    """A pushed stream cannot be read again from a position: refused, alone or in a join."""
    src = tmp_path / "in.csv"
    src.write_text("k,v,ts\n" + lines(0, 5))
    with velosql.connect(state=tmp_path / "state") as engine:
        engine.push("p", duckdb.sql("SELECT 'k1' AS k, 1 AS v").to_arrow_table())
        with pytest.raises(ConfigError, match="'p' is pushed from Python and cannot be read again"):
            engine.execute("CREATE STREAM a AS SELECT v FROM p WITH ('p.type' = 'python')")
        with pytest.raises(ConfigError, match="'p' is pushed from Python and cannot be read again"):
            engine.execute(
                "CREATE STREAM b AS SELECT t.k FROM t JOIN p ON t.k = p.k WITH ("
                f"'t.type' = 'file_source', 't.path' = '{src}', 'p.type' = 'python')"
            )


# V2:2 in the long profile (CI's second step): its runs spawn workers at every restart, the
# costliest test of the fast profile on two cores.
@pytest.mark.parametrize("processor", ["v1", *(["v2:2"] if LONG else [])])
def test_a_job_killed_at_random_moments_and_restarted_commits_each_result_once(tmp_path, processor):
    """``velosql run --database … --state …``: three jobs over a CSV file — a tumbling-window
    aggregate into a Parquet file and into a ``duckdb_table``, a projection into a CSV file —
    killed with SIGKILL at random moments (the process, or under V2 every other time one of its
    workers: the job fails), each after a checkpoint at least so that it gets somewhere, most of
    them amid an epoch's output, and started again, until a run ends by itself: every output is
    the batch answer, nothing missing and nothing twice, and the Parquet file opens whenever it
    is looked at. 10 kills per processor in the long profile (20 in all, V1 and V2:2), 3 on V1 in
    the fast one."""
    import random
    import sys

    src, state, db = tmp_path / "in.csv", tmp_path / "state", tmp_path / "out.duckdb"
    src.write_text("k,v,ts\n" + lines(0, 150_000 if LONG else 40_000))
    source = (
        f"'t.type' = 'file_source', 't.path' = '{src}', 't.batch_size' = 500, "
        f"'checkpoint.interval' = '50ms', max_batch_size = 500, processor = '{processor}'"
    )
    agg = (
        "SELECT k, _window_start AS ws, count(*) AS n, sum(v) AS s FROM t GROUP BY k WINDOW TUMBLING(ts, 60s)"
    )
    pq_out, csv_out = tmp_path / "out" / "agg.parquet", tmp_path / "out" / "proj.csv"
    app = tmp_path / "app.sql"
    app.write_text(
        f"CREATE STREAM agg_db AS {agg} EMIT FINAL WITH ({source}, 'agg_db.type' = 'duckdb_table');\n"
        f"CREATE STREAM agg_pq AS {agg} EMIT FINAL WITH ({source}, 'agg_pq.type' = 'file_sink', "
        f"'agg_pq.path' = '{pq_out}');\n"
        f"CREATE STREAM proj AS SELECT k, v FROM t WHERE v % 7 = 0 WITH ({source}, 'proj.type' = 'file_sink', "
        f"'proj.path' = '{csv_out}', 'proj.format' = 'csv');\n"
    )
    command = [sys.executable, "-m", "velosql", "run", "--database", str(db), "--state", str(state), str(app)]
    rng = random.Random(19)
    current = state / "agg_db" / "CURRENT"

    def parquet_opens() -> None:
        if pq_out.exists():  # whole, whenever a reader opens it
            duckdb.sql(f"SELECT count(*) FROM '{pq_out}'").fetchall()

    kills, workers_killed = kill_and_restart(
        command, current, rng, 10 if LONG else 3, processor, (0, 0.05), parquet_opens
    )
    assert kills >= 3
    assert processor == "v1" or workers_killed >= 1
    con = duckdb.connect(str(db))
    want = sorted(
        con.execute(
            f"SELECT k, time_bucket(INTERVAL '60 seconds', ts) AS ws, count(*), sum(v) FROM read_csv('{src}') "
            "GROUP BY ALL"
        ).fetchall()
    )
    assert sorted(con.execute("SELECT * FROM agg_db").fetchall()) == want
    assert sorted(con.execute(f"SELECT * FROM '{pq_out}'").fetchall()) == want
    got = sorted(con.execute(f"SELECT * FROM read_csv('{csv_out}')").fetchall())
    assert got == sorted(con.execute(f"SELECT k, v FROM read_csv('{src}') WHERE v % 7 = 0").fetchall())


def test_a_record_rejected_before_the_checkpoint_is_not_a_dead_letter_again(tmp_path):
    """The restart reads the file again from its start: the bad lines its checkpoint had already
    reported are not reported twice (the dead-letter table, in a database file, holds each once)."""
    src, state, db = tmp_path / "in.csv", tmp_path / "state", tmp_path / "db.duckdb"
    good = lines(0, 40).splitlines(keepends=True)
    src.write_text("k,v,ts\n" + "".join(g + ("k1,1\n" if i % 10 == 3 else "") for i, g in enumerate(good)))
    select = "SELECT k, count(*) AS n FROM t GROUP BY k EMIT CHANGES"
    sql = statement(src, "", select)
    for extra, read in (("", 40), ("k2,2\n" + lines(40, 50), 10)):
        with open(src, "a") as f:
            f.write(extra)
        with velosql.connect(str(db), state=state) as engine:
            job = engine.execute(sql)
            until(
                lambda j=job, r=read: (
                    j.metrics()["records_in"] >= r and j.metrics()["dead_letters"] >= (4 if r == 40 else 1)
                )
            )
            job.stop()
            assert job.error is None, job.error
    con = duckdb.connect(str(db))
    dead = con.execute("SELECT location FROM o__dlq ORDER BY location").fetchall()
    assert [loc.rsplit(":", 1)[1] for (loc,) in dead] == sorted(["6", "17", "28", "39", "46"])
    assert con.execute("SELECT sum(n) FROM (SELECT max(n) AS n FROM o GROUP BY k)").fetchall() == [(50,)]


@pytest.mark.parametrize("processor", ["v1", "v2:2"])
def test_a_join_of_two_streams_resumes_with_each_sides_rows_and_positions(tmp_path, processor):
    """An interval join of two watched files, stopped and started again: the rows each side
    holds for the other carry over, each file goes on from its own position, and the pairs of
    both runs are the batch join's, each once (under V2 the join then runs in the job's process,
    where its checkpoints take its state)."""
    a, b, state = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "state"
    a.write_text("k,v,ts\n" + lines(0, 30))
    b.write_text("k,v,ts\n" + lines(0, 10))
    select = (
        "SELECT x.k, x.v AS xv, y.v AS yv FROM a x JOIN b y ON x.k = y.k "
        "AND y.ts BETWEEN x.ts - INTERVAL '30' SECOND AND x.ts + INTERVAL '30' SECOND"
    )
    watch = "'format' = 'csv', 'watch' = 'true', 'poll_interval' = '5ms'"
    opts = ", ".join(
        f"'{s}.type' = 'file_source', '{s}.path' = '{p}', "
        + watch.replace("'f", f"'{s}.f").replace("'w", f"'{s}.w").replace("'p", f"'{s}.p")
        for s, p in (("a", a), ("b", b))
    )
    sql = (
        f"CREATE STREAM o AS {select} WITH ({opts}, 'o.type' = 'duckdb_table', "
        f"'watermark.max_out_of_orderness' = '1h', 'checkpoint.interval' = '0s', processor = '{processor}')"
    )
    got = run_until_read(state, sql, 40)
    with open(a, "a") as f:
        f.write(lines(30, 50))
    with open(b, "a") as f:
        f.write(lines(10, 50))  # their pairs with the first run's rows of a need a's held rows
    got += run_until_read(state, sql, 60)
    con = duckdb.connect()
    con.execute(f"CREATE VIEW a AS SELECT * FROM read_csv('{a}')")
    con.execute(f"CREATE VIEW b AS SELECT * FROM read_csv('{b}')")
    want = con.execute(select).fetchall()
    assert len(want) > 40
    assert sorted(got) == sorted(want)


def test_a_pipeline_is_refused_with_a_state_location_saying_what_to_do(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("k,v,ts\n" + lines(0, 5))
    with velosql.connect(state=tmp_path / "state") as engine:
        with pytest.raises(ConfigError, match="reads the output of statement 'a' as a stream .* file sink"):
            engine.execute(
                f"CREATE STREAM a AS SELECT k, v FROM t WITH ('t.type' = 'file_source', 't.path' = '{src}');\n"
                "CREATE STREAM b AS SELECT k FROM a"
            )
