"""The shell's dot-commands, registered in one table (DuckDB's names where DuckDB has the command).

Each command is a function of the shell and its argument words; it returns :data:`EXIT` to end
the shell. ``.help`` prints the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import duckdb

from .. import system
from ..errors import Location, VelosqlError
from ..sql import ShowJobs, ShowStreams
from . import render

EXIT = "exit"


@dataclass(frozen=True)
class DotCommand:
    """A dot-command: its name, its arguments and help as ``.help`` shows them, and its function
    (called with the shell and the argument words; may raise :class:`VelosqlError`)."""

    name: str
    args: str
    help: str
    run: Callable


def _help(shell, args: list[str]) -> None:
    width = max(len(f"{c.name} {c.args}") for c in COMMANDS.values())
    lines = [f"{f'{c.name} {c.args}'.strip().ljust(width)}  {c.help}" for c in COMMANDS.values()]
    shell.write("\n".join(lines) + "\n")


def _tables(shell, args: list[str]) -> None:
    # The system tables (temporary views) are left out, as DuckDB's .tables leaves out its own.
    names = [
        n
        for (n,) in shell.engine.con.execute(
            "SELECT table_name FROM duckdb_tables() UNION SELECT view_name FROM duckdb_views() "
            "WHERE NOT internal AND NOT (temporary AND list_contains($system, view_name)) ORDER BY 1",
            {"system": list(system.NAMES)},
        ).fetchall()
    ]
    if names:  # in columns, as DuckDB's .tables prints them
        width = max(map(len, names)) + 2
        per_line = max(1, shell.settings_width() // width)
        rows = [names[i : i + per_line] for i in range(0, len(names), per_line)]
        shell.write("".join("".join(n.ljust(width) for n in row).rstrip() + "\n" for row in rows))


def _show(statement):
    def run(shell, args: list[str]) -> None:
        shell.runner.execute(statement("", Location(None, 1, 1)), "", None)

    return run


def _schema(shell, args: list[str]) -> None:
    streams = {j.name: j for j in shell.engine.jobs()}
    wanted = args[0].lower() if args else None
    texts = [j.plan.text.rstrip(";") + ";" for name, j in streams.items() if wanted in (None, name)]
    rows = (
        shell.engine.con.cursor()
        .execute(
            "SELECT sql FROM (SELECT table_name AS name, sql FROM duckdb_tables() UNION ALL "
            "SELECT view_name, sql FROM duckdb_views() WHERE NOT internal) "
            "WHERE $name IS NULL OR lower(name) = $name ORDER BY name",
            {"name": wanted},
        )
        .fetchall()
    )
    texts += [sql.rstrip(";") + ";" for (sql,) in rows if sql]
    if texts:
        shell.write("\n".join(texts) + "\n")


def _mode(shell, args: list[str]) -> None:
    if not args:
        shell.write(f"current output mode: {shell.settings.mode}\n")
        return
    if args[0] not in render.MODES:
        raise VelosqlError(f"unknown mode {args[0]!r}: choose one of {', '.join(render.MODES)}")
    shell.settings.mode = args[0]


def _maxrows(shell, args: list[str]) -> None:
    if not args:
        shell.write(f"current max rows: {shell.settings.maxrows}\n")
        return
    try:
        shell.settings.maxrows = int(args[0])
    except ValueError:
        raise VelosqlError(f".maxrows takes a number of rows, not {args[0]!r}") from None


def _timer(shell, args: list[str]) -> None:
    if args[:1] not in (["on"], ["off"]):
        raise VelosqlError(".timer takes on or off")
    shell.runner.timer = args[0] == "on"


def _read(shell, args: list[str]) -> None:
    if len(args) != 1:
        raise VelosqlError(".read takes one file name")
    try:
        with open(args[0], encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise VelosqlError(f"{args[0]}: cannot read the script: {exc}") from None
    shell.run_file(text, args[0])


def _open(shell, args: list[str]) -> None:
    if len(args) != 1:
        raise VelosqlError(".open takes one database file name")
    shell.open(args[0])


def _output(shell, args: list[str]) -> None:
    shell.redirect(args[0] if args else None)


def _server(shell, args: list[str]) -> None:
    from .shell import server_url

    if len(args) > 1:
        raise VelosqlError(".server takes the URL of a velosql serve, or off")
    if not args:
        what = "none: SHOW JOBS lists this shell's jobs" if shell.server is None else shell.server
        shell.write(f"current server: {what}\n")
        return
    shell.server = None if args[0] == "off" else server_url(args[0])


def _exit(shell, args: list[str]) -> str:
    return EXIT


COMMANDS: dict[str, DotCommand] = {
    c.name: c
    for c in (
        DotCommand(".help", "", "Show this list", _help),
        DotCommand(".tables", "", "List the tables and views (results of streams among them)", _tables),
        DotCommand(".streams", "", "List the streams: SHOW STREAMS", _show(ShowStreams)),
        DotCommand(".jobs", "", "List the jobs and their metrics: SHOW JOBS", _show(ShowJobs)),
        DotCommand(
            ".schema", "[NAME]", "Show the CREATE statements of the streams, tables and views", _schema
        ),
        DotCommand(".mode", "MODE", f"Set the output mode: {'|'.join(render.MODES)}", _mode),
        DotCommand(".maxrows", "N", "Show at most N rows in duckbox mode (0: all)", _maxrows),
        DotCommand(".timer", "on|off", "Print the time each statement takes", _timer),
        DotCommand(
            ".read", "FILE", "Run the statements of FILE (a statement after a job waits for it)", _read
        ),
        DotCommand(".open", "FILE", "Stop the jobs, close the database and open FILE (a DuckDB file)", _open),
        DotCommand(".output", "[FILE]", "Send results to FILE, or back to the terminal", _output),
        DotCommand(
            ".server",
            "[URL|off]",
            "SHOW JOBS lists the jobs of the velosql serve at URL; off: this shell's",
            _server,
        ),
        DotCommand(".exit", "", "Stop the jobs (they flush) and exit", _exit),
        DotCommand(".quit", "", "The same as .exit", _exit),
    )
}


def run(shell, line: str):
    """Run a dot-command line; ``EXIT`` when the shell should end."""
    name, *args = line.split()
    command = COMMANDS.get(name)
    if command is None:
        raise VelosqlError(f"unknown command {name!r}: .help lists the commands")
    try:
        return command.run(shell, args)
    except duckdb.Error as exc:
        raise VelosqlError(str(exc)) from None
