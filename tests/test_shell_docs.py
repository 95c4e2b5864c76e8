"""``docs/shell.md`` stays true: its session is what the shell prints, its commands print what it
shows, and its tables of the system tables' columns come from their declaration."""

from __future__ import annotations

import shlex
from pathlib import Path

from test_cli_sql import velosql
from test_shell import END, START, TIMING, replay, transcript_inputs

from velosql import system

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "shell.md"
COMMANDS = "<!-- command-transcript:start -->\n```text\n", "```\n<!-- command-transcript:end -->"


def test_the_session_is_what_the_shell_prints(monkeypatch):
    monkeypatch.setenv("PROCESSOR_CONFIG", "v1")
    monkeypatch.chdir(ROOT)  # the session reads sql/data/trades.csv
    block = DOC.read_text(encoding="utf-8").split(START, 1)[1].split(END, 1)[0]
    session = block[block.index("velosql> ") :]
    assert TIMING.sub("N rows, T s", replay(transcript_inputs(session))) == TIMING.sub("N rows, T s", session)


def test_each_command_prints_what_the_page_shows():
    blocks = [b.split(COMMANDS[1], 1)[0] for b in DOC.read_text(encoding="utf-8").split(COMMANDS[0])[1:]]
    assert len(blocks) == 2
    for block in blocks:
        command, expected = block.split("\n", 1)
        args = shlex.split(command.removeprefix("$ "))
        assert args[0] == "velosql", command
        result = velosql(ROOT, *args[1:])
        assert result.returncode == 0, result.stderr
        assert result.stdout == expected


def test_the_system_tables_columns_are_documented_as_declared():
    assert system.markdown() in DOC.read_text(encoding="utf-8"), "docs/shell.md: paste system.markdown()"
