"""The interactive shell, driven as a user drives it: ``python -m velosql`` on a pseudo-terminal.

What the shell shows is read back with ANSI codes removed; prompt_toolkit redraws the input line
as it is typed, so the patterns look for results and messages, not for exact screens.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from terminal import Terminal
from test_cli import env

ENTER, UP, TAB, CTRL_C, CTRL_D = "\r", "\x1b[A", "\t", "\x03", "\x04"
PROMPT = r"velosql>"
TRADES = "ts,sym,price\n2024-01-01 10:00:00,A,1.5\n2024-01-01 10:00:30,B,2\n2024-01-01 10:01:10,A,3\n"


@pytest.mark.parametrize(
    ("typed", "ready"),
    [
        ("", True),
        ("   ", True),
        (".tables", True),
        ("SELECT 1;", True),
        ("SELECT 1", False),
        ("SELECT 1;  -- done", True),
        ("SELECT 1 -- not yet;", False),
        ("SELECT 'a;b'", False),
        ("SELECT 'a;b';", True),
        ("SELECT 'it''s;'", False),
        ("SELECT 'open;", False),
        ('SELECT "a;b" FROM t', False),
        ("SELECT 1 /* ; */", False),
        ("SELECT 1 /* open ;", False),
        ("SELECT $$a;b$$", False),
        ("SELECT $tag$a;$$;b$tag$;", True),
        ("SELECT 1;\nSELECT 2", False),
        ("SELECT 1;\nSELECT 2;", True),
    ],
)
def test_input_ends_at_a_semicolon_outside_strings_and_comments(typed, ready):
    from velosql.cli.shell import complete

    assert complete(typed) is ready


@pytest.fixture
def shell(tmp_path: Path):
    """Start a shell in ``tmp_path`` (arguments as given); every one started is killed at the end."""
    started: list[Terminal] = []

    def start(*args: str) -> Terminal:
        terminal = Terminal(
            list(args),
            tmp_path,
            env(
                PROCESSOR_CONFIG="v1",
                TERM="xterm",
                PROMPT_TOOLKIT_NO_CPR="1",  # no cursor-position queries a test terminal would not answer
                XDG_DATA_HOME=str(tmp_path / "xdg"),
            ),
        )
        started.append(terminal)
        terminal.expect(PROMPT)
        return terminal

    yield start
    for terminal in started:
        terminal.close()


def test_banner_multi_line_statement_and_ctrl_d(shell):
    t = shell()
    assert "Connected to a transient in-memory database." in t.text
    t.send("SELECT 1 AS one," + ENTER)
    t.expect(r"\.\.\.>")  # not complete yet: a continuation line
    t.send("  'x' AS s; -- a comment" + ENTER)
    t.expect(r"│\s+one\s+│\s+s\s+│\n│\s+int32\s+│\s+varchar\s+│")
    t.expect(PROMPT)
    t.send(CTRL_D)
    assert t.wait() == 0


def test_sql_is_highlighted_as_typed(shell):
    t = shell()
    t.send("SELECT 'str' AS x;" + ENTER)
    t.expect(r"│ str\s+│")
    raw = "".join(t.raw)
    # Keywords and strings in colours of their own (pygments' SQL lexer), not the input's default.
    keyword = re.search(r"\x1b\[([0-9;]+)mSELECT\x1b\[0m", raw)
    string = re.search(r"\x1b\[([0-9;]+)m'str'\x1b\[0m", raw)
    assert keyword and string and keyword.group(1) != string.group(1), repr(raw)


def test_a_semicolon_inside_a_string_or_comment_does_not_end_the_statement(shell):
    t = shell()
    t.send("SELECT 'a;b' AS v -- not the end;" + ENTER)
    t.expect(r"\.\.\.>")
    t.send("/* ; */ ;" + ENTER)
    t.expect(r"│ a;b\s+│")


def test_an_error_shows_one_message_with_a_caret_and_the_prompt_comes_back(shell):
    t = shell()
    t.send("CREATE TABLE trades AS SELECT 1.5 AS price;" + ENTER)
    t.expect(PROMPT)
    t.send("SELECT sym," + ENTER + "  prise FROM trades;" + ENTER)
    t.expect(r'Binder Error: Referenced column "sym" not found in FROM clause!\nCandidate bindings: "price"')
    t.expect(r"\nLINE 1: SELECT sym,\n {15}\^")
    t.expect(PROMPT)
    t.send("SELECT 2 AS two;" + ENTER)
    t.expect(r"│\s+two\s+│")
    assert "Traceback" not in t.text


def test_mode_csv_maxrows_and_timer(shell):
    t = shell()
    t.send(".mode csv" + ENTER)
    t.expect(PROMPT)
    t.send("SELECT 42 AS answer, NULL AS nothing;" + ENTER)
    t.expect(r"answer,nothing\n42,NULL\n")
    t.send(".mode duckbox" + ENTER + ".maxrows 4" + ENTER + ".timer on" + ENTER)
    t.send("SELECT * FROM range(10);" + ENTER)
    t.expect(r"10 rows\s*\n\s*\(4 shown\)")
    t.expect(r"Run Time \(s\): real \d+\.\d+")


def test_ctrl_c_cancels_the_input(shell):
    t = shell()
    t.send("SELECT 'forgotten' AS f" + ENTER)
    t.expect(r"\.\.\.>")
    t.send(CTRL_C)
    t.expect(PROMPT)
    t.send("SELECT 'kept' AS k;" + ENTER)
    t.expect(r"│ kept\s+│")
    assert "forgotten  │" not in t.text and "│ forgotten" not in t.text


def test_ctrl_c_interrupts_a_running_query(shell):
    t = shell()
    t.send("SELECT count(*) FROM range(100000000000) a WHERE a.range % 7 = 3;" + ENTER)
    # Ctrl-C typed before the query starts only clears the next prompt's input: type it until
    # the query is interrupted.
    deadline = time.monotonic() + 60
    while t.poll("Interrupted", 0.5) is None:
        assert time.monotonic() < deadline, t.text
        t.send(CTRL_C)
    t.expect(PROMPT)
    t.send("SELECT 'still here' AS s;" + ENTER)
    t.expect(r"│ still here\s+│")


def test_history_persists_across_sessions(shell, tmp_path):
    first = shell()
    first.send("SELECT 'remembered' AS h;" + ENTER)
    first.expect(r"│ remembered\s+│")
    first.expect(PROMPT)  # control keys typed ahead would go to the terminal, not to the shell
    first.send(CTRL_D)
    assert first.wait() == 0
    assert "SELECT 'remembered' AS h;" in (tmp_path / "xdg" / "velosql" / "history").read_text()
    second = shell()
    second.send(UP + ENTER)
    second.expect(r"│ remembered\s+│")


def test_completion_of_a_column_name_and_a_with_key_and_value(shell, tmp_path):
    (tmp_path / "trades.csv").write_text(TRADES)
    t = shell()
    t.send("CREATE TABLE trades (quantity_sold INT, price DOUBLE);" + ENTER)
    t.expect(PROMPT)
    # Completion runs in the background: wait for it to show before typing on.
    t.send("SELECT quantity_s" + TAB)
    t.expect("SELECT quantity_sold")
    t.send(" FROM trades;" + ENTER)
    t.expect(r"│\s+quantity_sold\s+│")
    t.expect(PROMPT)
    # The statement as completed is the one deployed: .schema prints it back.
    t.send("CREATE STREAM s AS SELECT * FROM src WITH ('src.wat" + TAB)
    t.expect("'src.watch'")
    t.send(" = 'fa" + TAB)
    t.expect("'false'")
    t.send(", 'src.type' = 'file_source', 'src.path' = 'trades.csv');" + ENTER)
    t.expect(r"STREAM s started")
    t.send(".schema s" + ENTER)
    t.expect(r"WITH \('src\.watch' = 'false', 'src\.type'")


def test_streams_show_describe_terminate_drop_and_dot_commands(shell, tmp_path):
    (tmp_path / "trades.csv").write_text(TRADES)
    t = shell("shell", "my.duckdb")
    assert "Connected to my.duckdb." in t.text
    t.send(
        "CREATE STREAM per_sym AS SELECT sym, count(*) AS n FROM trades GROUP BY sym EMIT CHANGES "
        "WITH ('trades.type' = 'file_source', 'trades.path' = 'trades.csv', 'trades.watch' = 'true');" + ENTER
    )
    t.expect(r"STREAM per_sym started: V1 .*; sinks: duckdb_table per_sym")
    t.send(".mode csv" + ENTER + "SHOW STREAMS;" + ENTER)
    t.expect(r"per_sym,STREAM,trades,duckdb_table,CHANGES,,Running")
    t.send("DESCRIBE per_sym;" + ENTER)
    t.expect(r"column_name,column_type\nsym,VARCHAR\nn,BIGINT")
    t.send(
        "EXPLAIN CREATE STREAM other AS SELECT sym, count(*) AS n FROM trades GROUP BY sym "
        "WITH ('trades.type' = 'file_source', 'trades.path' = 'trades.csv');" + ENTER
    )
    t.expect(r"source:\s+trades \[file_source\]")
    t.send(".tables" + ENTER)
    t.expect(r"per_sym\s+per_sym__dlq")
    t.send(".schema per_sym" + ENTER)
    t.expect(r"CREATE STREAM per_sym AS SELECT sym")
    t.send("TERMINATE per_sym;" + ENTER + ".streams" + ENTER)
    t.expect(r"per_sym,STREAM,trades,duckdb_table,CHANGES,,Stopped")
    t.send("SELECT sym, max(n) AS n FROM per_sym GROUP BY sym ORDER BY sym;" + ENTER)
    t.expect(r"sym,n\nA,2\nB,1")
    t.send("DROP STREAM per_sym;" + ENTER + "SHOW STREAMS;" + ENTER)
    t.expect(r"\nname,kind,source,sinks,emit,window,status\n")  # no stream left: the header alone
    t.send(".help" + ENTER)
    t.expect(r"\.mode MODE\s+Set the output mode")
    t.send(".exit" + ENTER)
    assert t.wait() == 0


def test_output_read_and_open(shell, tmp_path):
    (tmp_path / "script.sql").write_text("CREATE TABLE t AS SELECT 7 AS seven;\nSELECT seven FROM t;\n")
    t = shell()
    t.send(".output out.txt" + ENTER + ".mode csv" + ENTER + ".read script.sql" + ENTER)
    t.send(".output" + ENTER + "SELECT 'back' AS b;" + ENTER)
    t.expect(r"b\nback\n")
    assert (tmp_path / "out.txt").read_text() == "seven\n7\n"
    t.send(".open other.duckdb" + ENTER + "CREATE TABLE kept AS SELECT 1 AS k;" + ENTER + ".tables" + ENTER)
    t.expect(r"\nkept\n")
    t.send(".quit" + ENTER)
    assert t.wait() == 0
    assert (tmp_path / "other.duckdb").exists()


def test_ctrl_d_stops_a_running_job_cleanly(shell, tmp_path):
    (tmp_path / "trades.csv").write_text(TRADES)
    t = shell()
    t.send(
        "CREATE STREAM per_min AS SELECT sym, count(*) AS n, _window_start AS ws FROM trades GROUP BY sym "
        "WINDOW TUMBLING(ts, 1m) EMIT FINAL WITH ('trades.type' = 'file_source', 'trades.path' = 'trades.csv', "
        "'trades.watch' = 'true', 'trades.poll_interval' = '50ms', "
        "'per_min.type' = 'file_sink', 'per_min.path' = 'per_min.csv');" + ENTER
    )
    t.expect(r"STREAM per_min started")
    t.send(".mode csv" + ENTER + "SHOW JOBS;" + ENTER)
    t.expect(r"per_min,Running")
    t.expect(PROMPT)
    t.send(CTRL_D)
    t.expect(r"Stopping 1 job \(per_min\)")
    t.expect(r"per_min: Stopped, 3 rows out")
    assert t.wait() == 0
    # EMIT FINAL flushed the windows still open when the shell stopped the job.
    rows = (tmp_path / "per_min.csv").read_text().splitlines()
    assert rows[0] == "sym,n,ws" and len(rows) == 4
    assert not re.search("Traceback", t.text)


# ---- push queries -------------------------------------------------------------------------------

WATCHED = "WITH ('trades.type' = 'file_source', 'trades.path' = 'trades.csv', 'trades.watch' = 'true')"


def test_push_query_appends_its_changelog_live_until_ctrl_c(shell, tmp_path):
    (tmp_path / "trades.csv").write_text(TRADES)
    t = shell()
    t.send(".mode changelog" + ENTER)
    t.send(f"SELECT sym, count(*) AS n FROM trades GROUP BY sym EMIT CHANGES {WATCHED};" + ENTER)
    t.expect(r"op \| sym \| n\n\+I \| A \| 1\n\+I \| B \| 1\n\+U \| A \| 2\n")
    # The source is watched: the query runs on until Ctrl-C, which ends it and not the shell.
    with (tmp_path / "trades.csv").open("a") as fh:
        fh.write("2024-01-01 10:02:00,B,4\n")
    t.expect(r"\+U \| B \| 2\n")
    t.send(CTRL_C)
    t.expect(r"4 rows, \d+\.\d\d s")
    t.expect(PROMPT)
    t.send("SHOW STREAMS;" + ENTER)  # the transient job is gone
    t.expect(r"\| op \| name \| kind \| source \|.*\n\+----\+------\+.*\n\+----\+------\+")


def test_limit_ends_a_push_query(shell, tmp_path):
    (tmp_path / "trades.csv").write_text(TRADES)
    t = shell()
    t.send(".mode csv" + ENTER)
    t.send(f"SELECT sym, price FROM trades LIMIT 2 EMIT CHANGES {WATCHED};" + ENTER)
    t.expect(r"sym,price\nA,1.5\nB,2.0\n2 rows, ")
    t.expect(PROMPT)


def test_push_query_in_table_mode_keeps_one_row_per_key(shell, tmp_path):
    (tmp_path / "trades.csv").write_text(TRADES)
    t = shell()
    t.send(
        "SELECT sym, sum(price) AS total FROM trades GROUP BY sym EMIT CHANGES "
        "WITH ('trades.type' = 'file_source', 'trades.path' = 'trades.csv');" + ENTER
    )
    t.expect(r"│ A\s+│\s+4\.5 │\n│ B\s+│\s+2\.0 │\n└")
    t.expect(r"3 rows, ")


# ---- the guide's transcript ---------------------------------------------------------------------

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide.md"
START, END = "<!-- shell-transcript:start -->\n```text\n", "```\n<!-- shell-transcript:end -->"
TIMING = re.compile(r"\d+ rows, \d+\.\d\d s")


def transcript_inputs(block: str) -> list[str]:
    """What was typed at each prompt of a transcript (continuation lines joined)."""
    inputs: list[str] = []
    for line in block.splitlines():
        if line.startswith("velosql> "):
            inputs.append(line.removeprefix("velosql> "))
        elif line.startswith("    ...> "):
            inputs[-1] += "\n" + line.removeprefix("    ...> ")
    return inputs


def replay(inputs: list[str]) -> str:
    """The session the shell prints for ``inputs``: each prompt with its input, then the output."""
    import contextlib
    import io

    import velosql
    from velosql.cli import render
    from velosql.cli.shell import Shell

    screen = io.StringIO()
    with contextlib.redirect_stdout(screen), contextlib.redirect_stderr(screen):
        shell = Shell(velosql.connect(), None, render.Settings(width=100))
        try:
            for text in inputs:
                first, *rest = text.split("\n")
                screen.write("".join([f"velosql> {first}\n", *(f"    ...> {r}\n" for r in rest)]))
                shell.handle(text)
        finally:
            shell.engine.close()
    return screen.getvalue()


def test_the_guides_transcript_is_what_the_shell_prints(monkeypatch):
    monkeypatch.setenv("PROCESSOR_CONFIG", "v1")
    monkeypatch.chdir(GUIDE.parents[1])  # the transcript reads sql/data/trades.csv
    text = GUIDE.read_text(encoding="utf-8")
    block = text.split(START, 1)[1].split(END, 1)[0]
    session = block[block.index("velosql> ") :]
    assert TIMING.sub("N rows, T s", replay(transcript_inputs(session))) == TIMING.sub("N rows, T s", session)


def test_an_error_in_a_push_query_points_into_the_statement_as_typed():
    import io

    import velosql
    from velosql.cli import render
    from velosql.cli.script import Runner

    out, err = io.StringIO(), io.StringIO()
    with velosql.connect() as engine:
        runner = Runner(engine, render.Settings(), out, err, wait_for_jobs=False)
        runner.run("SELECT 1 AS one;\nSELECT sym FROM trades\n  EMIT CHANGES LIMIT 2;")
    assert err.getvalue().splitlines() == [
        "Error: expected WITH (…) or the end of the statement, found 'LIMIT'",
        "",
        "LINE 3:   EMIT CHANGES LIMIT 2;",
        "                       ^",
    ]
