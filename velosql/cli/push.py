"""Push queries: a ``SELECT … EMIT CHANGES`` typed at the prompt, shown live until it ends.

The SELECT runs as a transient job (``CREATE STREAM __push_N AS <the SELECT>`` with a python sink)
whose rows are shown as they arrive: in ``table`` form (the duckbox, box and table modes) one row
per key of the GROUP BY, updated in place (rich); in ``changelog`` mode every row is appended with
its operation, ``+I`` for a key's first row and ``+U`` for its updates (Flink's notation); in the
other modes the rows are appended in that format. The query ends when its input ends, after
``LIMIT n`` rows, or at Ctrl-C; then ``N rows, T s`` and the prompt. The job and its late-row and
dead-letter tables are dropped.

A SELECT is a push query when it has an EMIT clause or a trailing ``WITH (…)`` of source options;
any other SELECT is DuckDB's and runs once.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import TextIO

import pyarrow as pa

from ..errors import Location, SqlError, VelosqlError
from ..sql import CreateStream, DropStream, parse_one
from ..sql.statements import Statement
from . import render

POLL_SECONDS = 0.1
_numbers = itertools.count(1)


def push_query(stmt: Statement) -> CreateStream | None:
    """The transient streaming statement of a push query, or None when ``stmt`` is not one.

    Errors in it are located in the statement as typed.
    """
    words = stmt.text.upper().split()
    if not words or words[0] != "SELECT" or not ("EMIT" in words or "WITH" in stmt.text.upper()):
        return None
    name = f"__push_{next(_numbers)}"
    try:
        created = parse_one(f"CREATE STREAM {name} AS\n{stmt.text}")
    except SqlError as exc:
        if "EMIT" not in words:
            return None  # DuckDB's own SELECT (a WITH of its own): DuckDB runs it
        raise _relocated(exc, stmt.location) from None
    if not isinstance(created, CreateStream) or (created.emit is None and not created.properties):
        return None
    # Its locations stay those of the wrapped text: run() moves them back.
    return dataclasses.replace(
        created, text=stmt.text, properties={**created.properties, f"{name}.type": "python"}
    )


def _relocated(exc: SqlError, start: Location) -> SqlError:
    """An error of the wrapped text moved back to the statement as typed (its line 2 is line 1)."""
    where = exc.location
    if where is None or where.line < 2:
        return SqlError(exc.message, start)
    line = start.line + where.line - 2
    col = start.col + where.col - 1 if where.line == 2 else where.col
    return SqlError(exc.message, Location(start.file, line, col))


def run(
    engine, stmt: CreateStream, start: Location, settings: render.Settings, out: TextIO, err: TextIO
) -> None:
    """Deploy the push query (typed at ``start``), show its rows until it ends or Ctrl-C, then drop it."""
    try:
        plan = engine.plan_of(stmt)
        (job,) = engine.deploy([plan])
    except SqlError as exc:
        raise _relocated(exc, start) from None
    view = _view(settings, plan.group_keys, out)
    started, rows = time.monotonic(), 0
    try:
        while True:
            ended = job.done  # read before the pull, so the last rows are not left behind
            table = engine.pull(plan.name)
            if plan.limit is not None:
                table = table.slice(0, max(0, plan.limit - rows))
            if table.num_rows:
                rows += table.num_rows
                view.add(table)
            if ended or (plan.limit is not None and rows >= plan.limit):
                break
            try:
                job.wait(POLL_SECONDS)
            except VelosqlError:
                pass  # raised below, once the view is closed
    except KeyboardInterrupt:
        pass  # Ctrl-C ends the query, not the shell
    finally:
        view.close()
        engine.run_statement(DropStream(f"DROP STREAM {plan.name}", start, name=plan.name, if_exists=True))
        for table in (plan.late_table, plan.dlq_table):
            engine.sql(f'DROP TABLE IF EXISTS "{table}"')
    err.write(f"{rows} rows, {time.monotonic() - started:.2f} s\n")
    err.flush()
    if job.error is not None:
        job.wait(0)  # raises the job's error, which the caller prints


def _view(settings: render.Settings, keys: tuple[str, ...], out: TextIO):
    if settings.mode in ("duckbox", "box", "table"):
        return _LiveTable(keys, settings, out)
    if settings.mode == "changelog":
        return _Changelog(keys, out)
    return _Appended(settings, out)


class _LiveTable:
    """One row per key (or the latest rows, without keys), redrawn in place."""

    def __init__(self, keys: tuple[str, ...], settings: render.Settings, out: TextIO) -> None:
        from rich.console import Console
        from rich.live import Live

        self.keys = keys
        self.limit = settings.maxrows if settings.maxrows > 0 else 2**62
        self.columns: list[str] = []
        self.numeric: list[bool] = []
        self.rows: dict[object, tuple] = {}
        self.count = 0
        self.live = Live(
            console=Console(file=out), auto_refresh=False, redirect_stdout=False, redirect_stderr=False
        )
        self.live.start()

    def add(self, table: pa.Table) -> None:
        self.columns = table.column_names
        self.numeric = [
            pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
            for t in table.schema.types
        ]
        index = [self.columns.index(k) for k in self.keys if k in self.columns]
        for row in zip(*(c.to_pylist() for c in table.columns)):
            key = tuple(row[i] for i in index) if index else self.count
            self.count += 1
            self.rows[key] = row
        if not index:  # no key: the latest rows only
            for old in list(self.rows)[: max(0, len(self.rows) - self.limit)]:
                del self.rows[old]
        self.live.update(self._table(), refresh=True)

    def _table(self):
        from rich import box
        from rich.table import Table

        table = Table(box=box.SQUARE)
        for name, numeric in zip(self.columns, self.numeric):
            table.add_column(name, justify="right" if numeric else "left")
        for row in self.rows.values():
            table.add_row(*(render.text(v) for v in row))
        return table

    def close(self) -> None:
        self.live.stop()
        if not self.live.console.is_terminal:  # a terminal's cursor is already below the table
            self.live.console.line()


class _Changelog:
    """Every row appended with its operation: ``+I`` a key's first row, ``+U`` its updates."""

    def __init__(self, keys: tuple[str, ...], out: TextIO) -> None:
        self.keys, self.out = keys, out
        self.seen: set = set()
        self.header = False

    def add(self, table: pa.Table) -> None:
        names = table.column_names
        index = [names.index(k) for k in self.keys if k in names]
        lines = []
        if not self.header:
            lines.append(" | ".join(["op", *names]))
            self.header = True
        for row in zip(*(c.to_pylist() for c in table.columns)):
            key = tuple(row[i] for i in index)
            op = "+U" if index and key in self.seen else "+I"
            self.seen.add(key)
            lines.append(" | ".join([op, *(render.text(v) for v in row)]))
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()

    def close(self) -> None:
        pass


class _Appended:
    """Rows appended in a row format (csv, json lines, line, markdown): the header once."""

    def __init__(self, settings: render.Settings, out: TextIO) -> None:
        mode = "jsonlines" if settings.mode == "json" else settings.mode
        self.settings = dataclasses.replace(settings, mode=mode)
        self.out = out

    def add(self, table: pa.Table) -> None:
        rows = render.Rows(
            table.column_names,
            [str(t) for t in table.schema.types],
            list(zip(*(c.to_pylist() for c in table.columns))),
        )
        self.out.write(render.render_rows(rows, self.settings))
        self.out.flush()
        self.settings = dataclasses.replace(self.settings, header=False)

    def close(self) -> None:
        pass
