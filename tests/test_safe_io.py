"""Nothing lost, nothing doubled, nothing corrupted: sink paths that are refused, the lock that keeps
two jobs off one file, files that appear whole, workers that never write to the terminal, and a stop
that ends a job whose sink is blocked.

Real files in tmp_path, real processes (``velosql run`` and Python scripts driven as subprocesses),
FIFOs and pipes for blocked readers; every wait is on a condition, with a deadline that is only
reached on failure.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_cli import env  # the program's environment: this checkout, no ambient config
from test_cli import velosql as run_cli  # velosql run …, as a subprocess

import velosql
from velosql.errors import OptionError

DEADLINE = 60.0  # seconds; generous for a loaded machine, and only reached on failure


# ---- helpers --------------------------------------------------------------------------------------


def start(cwd: Path, *args: str, **kwargs) -> subprocess.Popen:
    kwargs.setdefault("stdout", subprocess.DEVNULL)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(
        [sys.executable, "-m", "velosql", *args], cwd=cwd, env=env(), stdin=subprocess.DEVNULL, **kwargs
    )


def wait_until(condition, what: str, timeout: float = DEADLINE, proc: subprocess.Popen | None = None):
    """Wait for ``condition()`` to be true (checked every 20 ms); fail naming ``what`` at the
    deadline, or at once when ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the program exited ({proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        select.select([], [], [], 0.02)
    return value


def statement(
    sink_path: str,
    *,
    source: str = "in.csv",
    name: str = "doubled",
    extra: str = "",
    sink_extra: str = "",
    watch: bool = False,
) -> str:
    watched = ", 'src.watch' = 'true', 'src.poll_interval' = '20ms'" if watch else ""
    return f"""\
CREATE STREAM {name} AS
SELECT id, v * 2 AS v2 FROM src
WITH ('src.type' = 'file_source', 'src.path' = '{source}', 'src.schema' = 'id INTEGER, v INTEGER'{watched},
      '{name}.type' = 'file_sink', '{name}.path' = '{sink_path}'{sink_extra}{extra});
"""


INPUT = "id,v\n1,10\n2,20\n3,40\n"


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "in.csv").write_text(INPUT)
    return tmp_path


def assert_refused(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("velosql: error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


# ---- 1. sink paths that are refused before anything runs ---------------------------------------


@pytest.mark.parametrize(
    "sink_path, source",
    [
        ("in.csv", "in.csv"),
        ("./data/../in.csv", "in.csv"),
        ("data/out.csv", "data"),
        ("data/out.csv", "data/*.csv"),
        ("link.csv", "in.csv"),
    ],
    ids=["same-file", "same-file-other-spelling", "in-source-directory", "matched-by-source-glob", "symlink"],
)
def test_run_refuses_a_sink_its_own_source_reads_and_leaves_the_input_alone(work, sink_path, source):
    (work / "data").mkdir()
    (work / "data" / "a.csv").write_text(INPUT)
    (work / "link.csv").symlink_to(work / "in.csv")
    (work / "app.sql").write_text(statement(sink_path, source=source))
    result = run_cli(work, "run", "app.sql")
    assert_refused(result, "app.sql:4:", "'doubled'", repr(sink_path), "its source")
    assert (work / "in.csv").read_text() == INPUT
    assert (work / "data" / "a.csv").read_text() == INPUT
    assert not (work / "data" / "out.csv").exists()


def test_run_allows_a_hidden_sink_file_in_the_source_directory(work):
    # A directory source reads no hidden file, so this is no loop.
    (work / "data").mkdir()
    (work / "data" / "a.csv").write_text(INPUT)
    (work / "app.sql").write_text(statement("data/.out.csv", source="data"))
    result = run_cli(work, "run", "app.sql")
    assert result.returncode == 0, result.stderr
    header, *body = (work / "data" / ".out.csv").read_text().splitlines()
    assert (header, sorted(body)) == ("id,v2", ["1,20", "2,40", "3,80"])


def test_run_refuses_a_sink_path_that_is_a_directory(work):
    (work / "out.csv").mkdir()
    (work / "app.sql").write_text(statement("out.csv"))
    assert_refused(run_cli(work, "run", "app.sql"), "app.sql:4:", "'doubled'", "'out.csv'", "directory")


def test_run_refuses_a_sink_path_holding_a_nul_byte(work):
    (work / "app.sql").write_text(statement("o\x00ut.csv"))
    assert_refused(run_cli(work, "run", "app.sql"), "app.sql:4:", "'doubled'", "NUL")


def test_execute_raises_the_refusal_before_any_job_runs(work, monkeypatch):
    monkeypatch.chdir(work)
    with velosql.connect() as engine:
        first = statement("first.csv", name="first")
        for bad, why in [("in.csv", "its source"), (".", "directory"), ("a\x00b.csv", "NUL")]:
            with pytest.raises(OptionError, match=why) as caught:
                engine.execute(first + statement(bad))
            assert "'doubled'" in str(caught.value)
            assert engine.jobs() == []
    assert (work / "in.csv").read_text() == INPUT
    assert not (work / "first.csv").exists()


def test_a_second_job_writing_the_same_sink_is_refused_naming_the_first(work):
    (work / "first.sql").write_text(statement("out.parquet", watch=True))
    (work / "second.sql").write_text(statement("out.parquet", name="again"))
    first = start(work, "run", "first.sql")
    try:
        lock = work / ".out.parquet.lock"
        wait_until(
            lambda: lock.exists() and lock.read_text().startswith(f"{first.pid} "),
            "the first job holds the sink's lock",
            proc=first,
        )
        second = run_cli(work, "run", "second.sql")
        assert_refused(second, "second.sql:4:", "'again'", "'out.parquet'", str(first.pid))
        first.send_signal(signal.SIGTERM)
        assert first.wait(DEADLINE) == 143
    finally:
        if first.poll() is None:
            first.kill()
        first.stderr.close()
    # The first job's file is whole: the second never touched it.
    assert pq.read_table(work / "out.parquet").to_pydict() == {"id": [1, 2, 3], "v2": [20, 40, 80]}
    assert not lock.exists()


def test_two_statements_of_one_script_writing_one_file_are_refused(work):
    script = statement("out.csv", name="one") + statement("out.csv", name="two")
    (work / "app.sql").write_text(script)
    assert_refused(run_cli(work, "run", "app.sql"), "'two'", "'out.csv'", "this process")
    assert not (work / "out.csv").exists()


def test_the_sink_lock_is_released_on_every_way_a_job_ends(work, monkeypatch):
    monkeypatch.chdir(work)
    again = statement("out.csv", name="again")

    def can_write_again() -> None:
        with velosql.connect() as engine:
            job = engine.execute(again)
            assert job.wait(DEADLINE)
            assert job.status == "Finished"

    # It ended by itself.
    with velosql.connect() as engine:
        job = engine.execute(statement("out.csv"))
        assert job.wait(DEADLINE)
        assert engine.execute(again).wait(DEADLINE)  # the same engine too
    # It failed.
    (work / "bad.csv").write_text("id,v\n1,10\nx,20\n")
    with velosql.connect() as engine:
        job = engine.execute(statement("out.csv", source="bad.csv", extra=", failure_strategy = 'FailBatch'"))
        with pytest.raises(velosql.VelosqlError):
            job.wait(DEADLINE)
        assert job.status == "Error"
        assert engine.execute(again).wait(DEADLINE)
    # It was stopped.
    with velosql.connect() as engine:
        job = engine.execute(statement("out.csv", watch=True))
        job.stop()
        assert job.status == "Stopped"
        assert engine.execute(again).wait(DEADLINE)
    # A later statement of its script did not bind: it never started.
    with velosql.connect() as engine:
        with pytest.raises(velosql.VelosqlError):
            engine.execute(statement("out.csv") + statement("other.csv", name="b").replace("v * 2", "nope"))
        assert engine.jobs() == []
        assert engine.execute(again).wait(DEADLINE)
    # Ctrl-C in the program embedding it, while it ran.
    with pytest.raises(KeyboardInterrupt), velosql.connect() as engine:
        engine.execute(statement("out.csv", watch=True))
        raise KeyboardInterrupt
    can_write_again()
    assert not (work / ".out.csv.lock").exists()


# ---- 2. files appear whole ------------------------------------------------------------------------

WATCHED_TO_PARQUET = """\
import sys, velosql
engine = velosql.connect()
job = engine.execute(sys.argv[1])
while job.metrics()["records_out"] < 3:
    if job.wait(0.05):
        sys.exit(f"the job ended: {job.status} {job.error}")
print("written", flush=True)
job.wait()
"""


def read_line(proc: subprocess.Popen, timeout: float = DEADLINE) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the script printed nothing in time"
    return proc.stdout.readline().strip()


@pytest.mark.parametrize(
    "path, options",
    [("out.parquet", ""), ("out.csv", ", 'doubled.atomic' = 'true'")],
    ids=["parquet", "csv-atomic"],
)
def test_kill_9_mid_job_leaves_the_previous_file_whole(work, path, options):
    """The final path holds the previous run's complete file while a job writes, and after it is
    killed; the next run replaces it whole and leaves no temporary file behind."""
    out = work / path
    read = (lambda: pq.read_table(out).to_pydict()) if path.endswith(".parquet") else out.read_text
    (work / "first.sql").write_text(statement(path, sink_extra=options))
    assert run_cli(work, "run", "first.sql").returncode == 0
    previous = read()
    (work / "in.csv").write_text(INPUT + "4,50\n")
    child = subprocess.Popen(
        [sys.executable, "-c", WATCHED_TO_PARQUET, statement(path, sink_extra=options, watch=True)],
        cwd=work,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert read_line(child) == "written", child.stderr.read()
        assert read() == previous  # a reader sees the previous file, never a partial one
        child.kill()
        child.wait(DEADLINE)
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()
        child.stderr.close()
    assert read() == previous
    assert run_cli(work, "run", "first.sql").returncode == 0
    assert read() != previous
    assert sorted(p.name for p in work.iterdir()) == sorted(["in.csv", "first.sql", path])


def test_parquet_sink_refuses_to_write_in_place(work):
    (work / "app.sql").write_text(statement("out.parquet", sink_extra=", 'doubled.atomic' = 'false'"))
    assert_refused(run_cli(work, "run", "app.sql"), "'doubled.atomic'", "Parquet")


def test_atomic_append_adds_a_whole_run_or_nothing(work):
    (work / "app.sql").write_text(
        statement("out.csv", sink_extra=", 'doubled.atomic' = 'true', 'doubled.append_if_exists' = 'true'")
    )
    assert run_cli(work, "run", "app.sql").returncode == 0
    assert run_cli(work, "run", "app.sql").returncode == 0
    # Appending keeps today's meaning: a second run of the same input adds its rows again.
    assert (work / "out.csv").read_text().splitlines() == ["id,v2", *["1,20", "2,40", "3,80"] * 2]


def test_csv_sink_is_written_in_place_by_default_for_readers_that_follow_it(work, monkeypatch):
    monkeypatch.chdir(work)
    with velosql.connect() as engine:
        job = engine.execute(statement("out.csv", watch=True))
        wait_until(lambda: (work / "out.csv").exists() and len((work / "out.csv").read_text().splitlines()) == 4,
                   "the rows are in the file while the job runs")  # fmt: skip
        job.stop()


# ---- 3. V2 workers never write to the terminal ----------------------------------------------------

# A filter slow enough (more than DuckDB's 2 s before it draws a progress bar) in each worker.
SLOW_FILTER = """\
CREATE STREAM slow AS
SELECT v FROM src
WHERE regexp_matches(repeat(v::VARCHAR, 400), '(1|2)*9(3|4)*5')
WITH ('src.type' = 'file_source', 'src.path' = 'in.parquet', processor = 'v2:2',
      'slow.type' = 'file_sink', 'slow.path' = 'out.parquet');
"""


def test_v2_workers_write_nothing_to_a_stdout_nobody_reads(tmp_path):
    """``velosql run app.sql | reader-that-waits``: with the pipe full, a worker that printed
    DuckDB's progress bar would block in write() and the job would never end."""
    pq.write_table(pa.table({"v": pa.array(range(600_000), pa.int64())}), tmp_path / "in.parquet",
                   row_group_size=300_000)  # fmt: skip
    (tmp_path / "app.sql").write_text(SLOW_FILTER)
    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
        os.set_blocking(write_end, False)
        filled = 0
        while True:  # fill the pipe: the next write of anyone blocks
            try:
                filled += os.write(write_end, b"x" * 4096)
            except BlockingIOError:
                break
        os.set_blocking(write_end, True)
        proc = start(tmp_path, "run", "app.sql", stdout=write_end)
        os.close(write_end)
        write_end = None
        try:
            code = proc.wait(120)  # a failure bound: it finishes in a few seconds
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("the job never ended: a worker was blocked writing to the full stdout pipe")
        finally:
            err = proc.stderr.read().decode()
            proc.stderr.close()
        assert code == 0, err
        written = b""
        while chunk := os.read(read_end, 65536):
            written += chunk
        assert written == b"x" * filled  # nobody wrote after the test filled it
    finally:
        os.close(read_end)
        if write_end is not None:
            os.close(write_end)
    assert pq.read_table(tmp_path / "out.parquet").num_rows > 0


# ---- 4. a stop ends a job whose sink is blocked ---------------------------------------------------


def wide_input(path: Path, rows: int = 20_000) -> None:
    """Rows whose output is far more than a pipe holds."""
    path.write_text("id,v\n" + "".join(f"{i},{i}\n" for i in range(rows)))


def blocked_fifo(path: Path) -> int:
    """A FIFO at ``path`` with a reader that never reads; the reader's descriptor."""
    os.mkfifo(path)
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK)


def fifo_full(reader: int) -> bool:
    """Whether the job has written half of what the FIFO holds: it has begun, and its output is
    many times more than the FIFO holds, so it is blocked or about to block (a pipe may refuse a
    write short of its capacity: pages are not shared between writes)."""
    waiting = fcntl.ioctl(reader, termios.FIONREAD, b"\0\0\0\0")
    return int.from_bytes(waiting, sys.byteorder) >= fcntl.fcntl(reader, fcntl.F_GETPIPE_SZ) // 2


def fifo_statement(processor: str, extra: str = "") -> str:
    return f"""\
CREATE STREAM wide AS
SELECT id, repeat('x', 60) AS pad FROM src
WITH ('src.type' = 'file_source', 'src.path' = 'in.csv', 'src.schema' = 'id INTEGER, v INTEGER',
      processor = '{processor}', 'wide.type' = 'file_sink', 'wide.path' = 'out.csv'{extra});
"""


@pytest.mark.parametrize("processor", ["v1", "v2:2"])
def test_sigterm_ends_a_job_blocked_on_its_sink_within_the_stop_timeout(tmp_path, processor):
    wide_input(tmp_path / "in.csv")
    reader = blocked_fifo(tmp_path / "out.csv")
    (tmp_path / "app.sql").write_text(fifo_statement(processor))
    proc = start(tmp_path, "run", "app.sql", "--stop-timeout", "1")
    try:
        wait_until(lambda: fifo_full(reader), "the sink is blocked on the full FIFO", proc=proc)
        proc.send_signal(signal.SIGTERM)
        asked = time.monotonic()
        try:
            code = proc.wait(25)  # without a bound the job stays Stopping for 30 s and more
        except subprocess.TimeoutExpired:
            pytest.fail("the job was still stopping 25 s after SIGTERM")
        took = time.monotonic() - asked
        err = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
        os.close(reader)
    assert code == 143, err
    assert took < 10, took
    assert "Traceback" not in err
    assert "velosql: job wide Stopped" in err, err
    # What was not flushed is said: the sink, and that its rows were not written.
    assert "out.csv" in err and "not written" in err and "stop.timeout" in err, err


@pytest.mark.parametrize("processor", ["v1", "v2:2"])
def test_job_stop_returns_within_the_stop_timeout_option_with_a_blocked_sink(
    tmp_path, monkeypatch, processor
):
    monkeypatch.chdir(tmp_path)
    wide_input(tmp_path / "in.csv")
    reader = blocked_fifo(tmp_path / "out.csv")
    try:
        with velosql.connect() as engine:
            job = engine.execute(fifo_statement(processor, ", 'stop.timeout' = '1s'"))
            wait_until(lambda: fifo_full(reader), "the sink is blocked on the full FIFO")
            asked = time.monotonic()
            job.stop()
            took = time.monotonic() - asked
            assert job.done
            assert job.status == "Stopped"
            assert "out.csv" in job.unflushed and "not written" in job.unflushed
            assert took < 10, took
    finally:
        os.close(reader)


def test_stop_timeout_defaults_to_ten_seconds(work, monkeypatch):
    monkeypatch.chdir(work)
    with velosql.connect() as engine:
        job = engine.execute(statement("out.csv"))
        job.wait(DEADLINE)
        assert job.stop_timeout == 10.0
        assert job.unflushed is None
