"""DuckDB's command-line habits: ``velosql -c``, ``-f``, SQL piped on stdin, the output flags.

The program runs for real (``python -m velosql``); these statements are DuckDB SQL or run one small
job on V1, so the processor matrix of ``test_cli.py`` adds nothing here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import TIMEOUT, env

ROW = "SELECT 1 AS a, 'x' AS b"


def velosql(cwd: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "velosql", *args],
        cwd=cwd,
        env=env(PROCESSOR_CONFIG="v1"),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def test_c_prints_a_duckbox_with_duckdb_types(tmp_path):
    result = velosql(tmp_path, "-c", ROW)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "┌───────┬─────────┐",
        "│   a   │    b    │",
        "│ int32 │ varchar │",
        "├───────┼─────────┤",
        "│     1 │ x       │",
        "└───────┴─────────┘",
    ]
    assert result.stderr == ""


def test_long_results_are_elided_in_the_middle_with_a_row_count(tmp_path):
    lines = velosql(tmp_path, "-c", "SELECT * FROM range(100)").stdout.splitlines()
    values = [line.strip("│ ") for line in lines]
    assert values[4:7] == ["0", "1", "2"] and "99" in values and "50" not in values
    assert "100 rows" in lines[-2] and "(40 shown)" in lines[-1]


def test_c_and_f_run_in_command_line_order(tmp_path):
    (tmp_path / "two.sql").write_text("SELECT 2 AS n;\nSELECT 3 AS n;\n")
    result = velosql(tmp_path, "-csv", "-c", "SELECT 1 AS n", "-f", "two.sql", "-c", "SELECT 4 AS n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "n\n1\nn\n2\nn\n3\nn\n4\n"


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["-csv"], "a,b\n1,x\n"),
        (["-csv", "-noheader"], "1,x\n"),
        (["-json"], '[{"a":1,"b":"x"}]\n'),
        (["-jsonlines"], '{"a":1,"b":"x"}\n'),
        (["-line"], "a = 1\nb = x\n"),
        (["-markdown"], "| a | b |\n|--:|---|\n| 1 | x |\n"),
        (["-box"], "┌───┬───┐\n│ a │ b │\n├───┼───┤\n│ 1 │ x │\n└───┴───┘\n"),
        (["-table"], "+---+---+\n| a | b |\n+---+---+\n| 1 | x |\n+---+---+\n"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_output_flags(tmp_path, flags, expected):
    result = velosql(tmp_path, *flags, "-c", ROW)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected


@pytest.mark.parametrize(
    "flag, expected",
    [("-csv", "a\n"), ("-json", "[]\n"), ("-table", "+---+\n| a |\n+---+\n+---+\n")],
)
def test_an_empty_result(tmp_path, flag, expected):
    assert velosql(tmp_path, flag, "-c", "SELECT 1 AS a WHERE false").stdout == expected


def test_statements_that_only_change_rows_print_nothing(tmp_path):
    result = velosql(
        tmp_path, "-csv", "-c", "CREATE TABLE t (a INT); INSERT INTO t VALUES (1), (2); UPDATE t SET a = a + 1; "
        "COPY t TO 't.csv'; SELECT sum(a) AS s FROM t",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "s\n5\n"


def test_an_error_in_c_stops_with_one_message_a_caret_and_exit_1(tmp_path):
    result = velosql(
        tmp_path,
        "-csv",
        "-c",
        "SELECT 1 AS a",
        "-c",
        "SELECT prise FROM (SELECT 1 AS price)",
        "-c",
        "SELECT 3",
    )
    assert result.returncode == 1
    assert result.stdout == "a\n1\n"  # the third -c did not run
    assert result.stderr.splitlines() == [
        'velosql: error: Binder Error: Referenced column "prise" not found in FROM clause!',
        'Candidate bindings: "price"',
        "",
        "LINE 1: SELECT prise FROM (SELECT 1 AS price)",
        "               ^",
    ]


def test_an_error_in_a_file_names_the_file_line_and_column(tmp_path):
    (tmp_path / "app.sql").write_text("SELECT 1 AS a;\n\nSELECT\n  1 +;\nSELECT 2 AS b;\n")
    result = velosql(tmp_path, "-csv", "-f", "app.sql")
    assert result.returncode == 1
    assert result.stdout == "a\n1\n"
    assert "Traceback" not in result.stderr
    first, *rest = result.stderr.splitlines()
    assert first.startswith('velosql: error: app.sql:4:5: Parser Error: syntax error at or near "+"')
    assert rest[-2:] == ["LINE 4:   1 +;", "            ^"]


def test_stdin_goes_on_after_an_error_and_exits_1(tmp_path):
    result = velosql(tmp_path, "-csv", stdin="SELECT 1 AS a;\nselec 2;\nSELECT 3 AS b;\n")
    assert result.returncode == 1
    assert result.stdout == "a\n1\nb\n3\n"
    assert result.stderr.count("velosql: error:") == 1


def test_bail_stops_stdin_at_the_first_error(tmp_path):
    result = velosql(tmp_path, "-csv", "-bail", stdin="SELECT 1 AS a;\nselec 2;\nSELECT 3 AS b;\n")
    assert result.returncode == 1
    assert result.stdout == "a\n1\n"


def test_nothing_on_stdin_does_nothing(tmp_path):
    result = velosql(tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_velosql_errors_have_a_caret_too(tmp_path):
    result = velosql(tmp_path, "-c", "SELECT 1;\nDROP STREAM nope extra")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-3:] == [
        "",
        "LINE 2: DROP STREAM nope extra",
        "                         ^",
    ]
    assert result.stdout == ""  # nothing ran: the script did not parse


def test_database_file_is_created_and_keeps_tables(tmp_path):
    first = velosql(tmp_path, "--database", "my.duckdb", "-c", "CREATE TABLE t AS SELECT 42 AS answer")
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "my.duckdb").exists()
    second = velosql(tmp_path, "--database", "my.duckdb", "-csv", "-noheader", "-c", "SELECT answer FROM t")
    assert second.stdout == "42\n"


def test_a_query_after_a_streaming_statement_sees_the_whole_result(tmp_path):
    (tmp_path / "in.csv").write_text("id,v\n" + "".join(f"{i},{i * 10}\n" for i in range(1000)))
    script = (
        "CREATE STREAM doubled AS SELECT id, v * 2 AS v2 FROM src "
        "WITH ('src.type' = 'file_source', 'src.path' = 'in.csv');\n"
        "SELECT count(*) AS n, sum(v2) AS total FROM doubled;"
    )
    result = velosql(tmp_path, "-csv", stdin=script)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"n,total\n1000,{sum(i * 20 for i in range(1000))}\n"
    assert "velosql: job doubled Finished: 1000 records in, 1000 out" in result.stderr


def test_c_runs_dot_commands_too(tmp_path):
    result = velosql(
        tmp_path,
        "-c",
        ".mode csv",
        "-c",
        "CREATE TABLE t AS SELECT 1 AS a",
        "-c",
        "SELECT * FROM t",
        "-c",
        ".tables",
    )
    assert (result.returncode, result.stdout) == (0, "a\n1\nt\n"), result.stderr
    result = velosql(tmp_path, "-c", ".nope", "-c", "SELECT 1")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "velosql: error: unknown command '.nope': .help lists the commands\n"


def test_values_are_spelled_as_duckdb_prints_them(tmp_path):
    result = velosql(
        tmp_path, "-csv", "-c",
        "SELECT TIMESTAMP '2024-01-01 09:30:00.375' AS ts, true AS b, [1, 2] AS l, NULL AS n, 2.50::DECIMAL(4,2) AS d",
    )  # fmt: skip
    assert result.stdout == 'ts,b,l,n,d\n2024-01-01 09:30:00.375,true,"[1, 2]",NULL,2.50\n'
