"""The ``velosql`` command, run as a real program (``python -m velosql``) in a scratch directory."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from conftest import SOME, SOME_IDS
from terminal import read_pty, start_on_pty

# Every job these tests run, on V1 and on V2 with 2 and 3 workers: the command line's behaviour
# does not depend on the partitioning strategy, which the query and oracle tests cover on every
# entry of the processor matrix (conftest.py).
pytestmark = [
    pytest.mark.usefixtures("processor_matrix"),
    pytest.mark.parametrize("processor_matrix", SOME, ids=SOME_IDS, indirect=True),
]

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 60  # seconds a command may take before the test gives up on it
SUMMARY = re.compile(
    r"^velosql: job (\w+) (\w+): (\d+) records in, (\d+) out, (\d+) late, (\d+) dead letters, "
    r"[0-9.]+s \((\d+) rows/s\)$"
)

TRADES = "ts,sym,price\n2024-01-01 10:00:00,A,1.5\n2024-01-01 10:00:30,B,2\n2024-01-01 10:01:10,A,3\n"
# Per-minute totals of a watched file: the 10:01 window is still open when the job is stopped.
PER_MINUTE = """\
CREATE STREAM per_min AS
SELECT sym, COUNT(*) AS n, SUM(price) AS total, _window_start AS ws FROM trades
GROUP BY sym
WINDOW TUMBLING(ts, 1m)
EMIT FINAL
WITH ('trades.type' = 'file_source', 'trades.path' = 'trades.csv', 'trades.watch' = 'true',
      'trades.poll_interval' = '50ms',
      'per_min.type' = 'file_sink', 'per_min.path' = 'per_min.csv');
"""
PER_MINUTE_ROWS = [
    "sym,n,total,ws",
    "A,1,1.5,2024-01-01T10:00:00",
    "A,1,3.0,2024-01-01T10:01:00",
    "B,1,2.0,2024-01-01T10:00:00",
]


def doubled(src: str = "in.csv", out: str = "out.csv", extra: str = "") -> str:
    return f"""\
CREATE STREAM hello_world AS
SELECT id, v * 2 AS v2 FROM src
WITH ('src.type' = 'file_source', 'src.path' = '{src}', 'src.schema' = 'id INTEGER, v INTEGER',
      'hello_world.type' = 'file_sink', 'hello_world.path' = '{out}'{extra});
"""


def env(**extra: str) -> dict[str, str]:
    """The environment of the program: this checkout importable, no ambient processor config."""
    e = {k: v for k, v in os.environ.items() if k not in ("PROCESSOR_CONFIG", "VELOSQL_CONFIG")}
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    e.update(extra)
    return e


def velosql(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "velosql", *args],
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def rows(path: Path) -> list[str]:
    """The header line, then the rows in sorted order (the order rows are written in is not fixed)."""
    header, *body = path.read_text().splitlines()
    return [header, *sorted(body)]


def assert_clean_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


@pytest.fixture
def app(tmp_path: Path) -> Path:
    (tmp_path / "in.csv").write_text("id,v\n1,10\n2,20\n3,40\n")
    path = tmp_path / "app.sql"
    path.write_text(doubled())
    return path


# ---- success ------------------------------------------------------------------------------------


def test_run_writes_the_sink_and_exits_0(tmp_path, app):
    result = velosql(tmp_path, "run", "app.sql")
    assert result.returncode == 0, result.stderr
    assert rows(tmp_path / "out.csv") == ["id,v2", "1,20", "2,40", "3,80"]
    assert result.stdout == ""


def test_piped_run_prints_one_summary_line_per_job(tmp_path, app):
    app.write_text(doubled() + doubled(out="out2.csv").replace("hello_world", "second"))
    result = velosql(tmp_path, "run", "app.sql")
    assert result.returncode == 0, result.stderr
    summaries = [SUMMARY.match(line) for line in result.stderr.splitlines()]
    assert all(summaries), result.stderr
    assert [m.group(1, 2, 3, 4, 5, 6) for m in summaries] == [
        ("hello_world", "Finished", "3", "3", "0", "0"),
        ("second", "Finished", "3", "3", "0", "0"),
    ]


def test_a_script_starting_with_a_bom_runs(tmp_path, app):
    app.write_text("\ufeff" + doubled(), encoding="utf-8")
    result = velosql(tmp_path, "run", "app.sql")
    assert result.returncode == 0, result.stderr
    assert rows(tmp_path / "out.csv") == ["id,v2", "1,20", "2,40", "3,80"]


def test_a_bom_does_not_move_the_place_of_an_error(tmp_path, app):
    app.write_text("\ufeff" + doubled().replace("v * 2", "v *"), encoding="utf-8")
    result = velosql(tmp_path, "run", "app.sql")
    assert_clean_error(result, 2, "app.sql:2:")
    assert re.search(r"app\.sql:2:\d+: ", result.stderr).group() == "app.sql:2:16: "


def test_a_deeply_nested_expression_runs_end_to_end(tmp_path):
    # 499 levels of (x + 1) is the deepest DuckDB accepts (it counts each as two); CASE adds more.
    paren = "x"
    for _ in range(499):
        paren = f"({paren} + 1)"
    case = "x"
    for i in range(250):
        case = f"CASE WHEN x > {i % 7} THEN {case} ELSE -1 END"
    (tmp_path / "in.csv").write_text("id,x\n" + "".join(f"{i},{i * 7 % 300}\n" for i in range(50)))
    query = f"SELECT id, {paren} AS p, {case} AS c FROM src WHERE {paren} > 520"
    (tmp_path / "app.sql").write_text(
        f"CREATE STREAM deep AS\n{query}\nEMIT CHANGES\nWITH ('src.type' = 'file_source', 'src.path' = 'in.csv',"
        "\n      'deep.type' = 'file_sink', 'deep.path' = 'out.csv');\n"
    )
    result = velosql(tmp_path, "run", "app.sql")
    assert result.returncode == 0, result.stderr
    batch = duckdb.connect().sql(query.replace("FROM src", f"FROM '{tmp_path / 'in.csv'}'")).fetchall()
    assert len(batch) > 10
    assert rows(tmp_path / "out.csv") == ["id,p,c", *sorted(",".join(map(str, r)) for r in batch)]


def test_relative_paths_resolve_against_the_working_directory(tmp_path, app):
    (tmp_path / "apps").mkdir()
    app.rename(tmp_path / "apps" / "app.sql")
    result = velosql(tmp_path, "run", "apps/app.sql", "--processor", "v2:2")
    assert result.returncode == 0, result.stderr
    assert rows(tmp_path / "out.csv") == ["id,v2", "1,20", "2,40", "3,80"]


def test_until_idle_ends_a_watched_job(tmp_path):
    (tmp_path / "trades.csv").write_text(TRADES)
    (tmp_path / "app.sql").write_text(PER_MINUTE)
    result = velosql(tmp_path, "run", "app.sql", "--until-idle", "1")
    assert result.returncode == 0, result.stderr
    assert rows(tmp_path / "per_min.csv") == PER_MINUTE_ROWS
    assert SUMMARY.match(result.stderr.strip()).group(1, 2, 3) == ("per_min", "Stopped", "3")


def test_run_prints_other_statements_results_in_order_after_the_jobs_they_follow(tmp_path, app):
    app.write_text(
        "SELECT 'before' AS step;\n"
        + doubled().replace(
            "'hello_world.type' = 'file_sink', 'hello_world.path' = 'out.csv'",
            "'hello_world.type' = 'duckdb_table'",
        )
        + "SELECT count(*) AS n, sum(v2) AS total FROM hello_world;\n"
        "COPY (SELECT * FROM hello_world ORDER BY id) TO 'copy.csv';\n"
    )
    result = velosql(tmp_path, "run", "app.sql")
    assert result.returncode == 0, result.stderr
    cells = [
        [c.strip() for c in line.strip("│").split("│")] for line in result.stdout.splitlines() if "│" in line
    ]
    assert cells == [["step"], ["varchar"], ["before"], ["n", "total"], ["int64", "int128"], ["3", "140"]]
    assert (tmp_path / "copy.csv").read_text() == "id,v2\n1,20\n2,40\n3,80\n"


def test_run_database_keeps_results_late_rows_and_dead_letters(tmp_path):
    (tmp_path / "trades.csv").write_text(
        "ts,sym,price\n2024-01-01 10:00:00,A,1.5\n2024-01-01 10:01:10,A,3\n"
        "2024-01-01 10:00:30,B,2\n2024-01-01 10:01:20,B,oops\n"
    )
    (tmp_path / "app.sql").write_text(
        PER_MINUTE.replace("'trades.watch' = 'true',", "'trades.schema' = 'ts TIMESTAMP, sym VARCHAR, price DOUBLE',")
        .replace("'per_min.type' = 'file_sink', 'per_min.path' = 'per_min.csv'", "failure_strategy = 'SendToDLQ'")
    )  # fmt: skip
    result = velosql(tmp_path, "run", "app.sql", "--database", "kept.duckdb")
    assert result.returncode == 0, result.stderr
    assert (
        "velosql: job per_min: 1 late rows in table per_min__late, 1 dead letters in table per_min__dlq in kept.duckdb"
        in result.stderr
    )
    import duckdb

    with duckdb.connect(str(tmp_path / "kept.duckdb"), read_only=True) as con:
        counts = [
            con.sql(f"SELECT count(*) FROM {t}").fetchall()[0][0]
            for t in ("per_min", "per_min__late", "per_min__dlq")
        ]
    assert counts == [2, 1, 1]


def test_run_says_when_a_statement_runs_beside_a_job_of_unbounded_input(tmp_path):
    (tmp_path / "trades.csv").write_text(TRADES)
    (tmp_path / "app.sql").write_text(PER_MINUTE + "SELECT 42 AS answer;\n")
    result = velosql(tmp_path, "run", "app.sql", "--until-idle", "1")
    assert result.returncode == 0, result.stderr
    assert "42" in result.stdout
    assert (
        "velosql: note: the statement at app.sql:9 runs while job per_min is still running" in result.stderr
    )


# ---- errors before anything runs: exit 2, no traceback ------------------------------------------


def test_syntax_error_names_file_line_and_column(tmp_path, app):
    app.write_text("CREATE STREAM x AS\nSELECT id FROM src\nWHERE id = = 1\nWITH ('src.path' = 'in.csv');\n")
    result = velosql(tmp_path, "run", "app.sql")
    assert_clean_error(result, 2, "velosql: error: app.sql:")
    assert re.search(r"app\.sql:\d+:\d+: ", result.stderr), result.stderr


def test_unknown_with_key_is_named(tmp_path, app):
    app.write_text(doubled().replace("'src.schema'", "'src.shema'"))
    result = velosql(tmp_path, "run", "app.sql")
    assert_clean_error(result, 2, "app.sql:3:", "'src.shema'")
    assert not (tmp_path / "out.csv").exists()


def test_a_source_that_cannot_be_bound_is_reported_with_its_place(tmp_path, app):
    message = "velosql: error: app.sql:{}:1: file source 'src': no file matches path 'missing.csv'"
    app.write_text(doubled(src="missing.csv"))
    assert_clean_error(velosql(tmp_path, "run", "app.sql"), 2, message.format(1))  # nothing ran
    app.write_text("SELECT 'first' AS s;\n" + doubled(src="missing.csv"))
    result = velosql(tmp_path, "run", "app.sql")
    assert_clean_error(result, 1, message.format(2))  # the SELECT before it ran
    assert "first" in result.stdout


def test_unknown_processor_string(tmp_path, app):
    result = velosql(tmp_path, "run", "app.sql", "--processor", "v9")
    assert_clean_error(result, 2, "--processor", "v9")


def test_missing_script(tmp_path):
    assert_clean_error(velosql(tmp_path, "run", "nope.sql"), 2, "nope.sql")


def test_bad_config_file(tmp_path, app):
    (tmp_path / "velosql.yaml").write_text("processor:\n  architecture: v7\n")
    result = velosql(tmp_path, "run", "app.sql", "--config", "velosql.yaml")
    assert_clean_error(result, 2, "velosql: error: velosql.yaml: processor.architecture", "v7")


# ---- errors while running: exit 1 -----------------------------------------------------------------


def test_malformed_row_with_fail_batch_fails_the_job(tmp_path, app):
    (tmp_path / "in.csv").write_text("id,v\n1,10\nx,20\n3,40\n")
    app.write_text(doubled(extra=", failure_strategy = 'FailBatch'"))
    result = velosql(tmp_path, "run", "app.sql")
    assert_clean_error(result, 1, "velosql: error: in.csv:3:")
    assert SUMMARY.match(result.stderr.splitlines()[0]).group(1, 2) == ("hello_world", "Error")


# ---- signals: the jobs stop cleanly and flush --------------------------------------------------


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_a_watched_job_and_flushes(tmp_path, signum, code):
    (tmp_path / "trades.csv").write_text(TRADES)
    (tmp_path / "app.sql").write_text(PER_MINUTE)
    proc, master = start_on_pty(["run", "app.sql"], tmp_path, env(TERM="xterm", COLUMNS="200"))
    seen: list[str] = []
    try:
        # The live display on the terminal shows when all three rows have been read (a watched
        # file has no end, so no share done: "-").
        read_pty(master, proc, re.compile(r"per_min\s+Running\s+-\s+3\s"), seen)
        proc.send_signal(signum)
        text = read_pty(master, proc, None, seen)
        assert proc.wait(TIMEOUT) == code, text
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert "Traceback" not in text
    assert re.search(r"velosql: job per_min Stopped: 3 records in, 3 out", text), text
    # EMIT FINAL flushed the window that was still open when the signal came.
    assert rows(tmp_path / "per_min.csv") == PER_MINUTE_ROWS


# ---- explain, version, help ---------------------------------------------------------------------


def test_explain_prints_the_plan(tmp_path):
    (tmp_path / "trades.csv").write_text(TRADES)
    (tmp_path / "app.sql").write_text(PER_MINUTE)
    result = velosql(tmp_path, "explain", "app.sql", "--processor", "v2:3")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "STREAM per_min  (app.sql:1:1)" in out
    assert re.search(r"source:\s+trades \[file_source\]", out)
    assert re.search(r"window:\s+TUMBLING 1m", out)
    assert "aggregates:" in out and "COUNT(*)" in out and "SUM(price)" in out
    assert re.search(r"processor:\s+V2 \(Multi-partition: 3", out)
    assert not (tmp_path / "per_min.csv").exists()


def test_explain_error_exits_2(tmp_path, app):
    app.write_text(doubled().replace("'src.schema'", "'src.shema'"))
    assert_clean_error(velosql(tmp_path, "explain", "app.sql"), 2, "app.sql:3:", "'src.shema'")


def test_version(tmp_path):
    result = velosql(tmp_path, "--version")
    assert result.returncode == 0
    assert re.fullmatch(r"velosql \d+\.\d+\.\d+\S*\n", result.stdout)


def test_help(tmp_path):
    result = velosql(tmp_path, "--help")
    assert result.returncode == 0
    assert "Usage: velosql" in result.stdout
    assert "run" in result.stdout and "explain" in result.stdout and "shell" in result.stdout
