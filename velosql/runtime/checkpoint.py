"""Checkpoints: a consistent cut of a job, from which a restart goes on as if it never stopped.

A checkpoint holds each source partition's position (the next ``_offset`` to read), the
operator's state tables and values (:meth:`Operator.snapshot`), the watermark tracker and the
arrival sequence. V1 takes one between two micro-batches, when nothing is in flight.

A job's checkpoints live in its state location, ``<dir>/<job>/``: each is a DuckDB file
``chk-<epoch>.duckdb`` (a user can ``ATTACH`` it read-only and read every table), and ``CURRENT``
names the last complete one. A checkpoint is written to a temporary file, synced and renamed into
place before ``CURRENT`` moves to it (itself written the same way), so a crash at any moment leaves
the previous checkpoint whole; older files are removed once ``CURRENT`` has moved.

Exactly-once output into the job's database (a file): the job's connection holds one transaction
per epoch — the result rows of ``duckdb_table`` sinks, late rows and dead letters — and commits it
with a row ``velosql_state.commits(job, epoch)`` once checkpoint ``epoch`` is written, before
``CURRENT`` moves. That commit is the point of no return: a restart that finds the database's
epoch one past ``CURRENT`` finishes the move (the file is there), and a crash before it leaves the
database at the previous epoch, as ``CURRENT`` is.

Tables of a checkpoint file:

- ``checkpoint``: one row, the epoch, the statement's text, the processor and partitions, the
  time it was taken and the job's values (``values``, JSON: sequence, watermark, operator values);
- ``positions``: ``(source, partition, next_offset)``, every source partition read so far;
- ``state_<table>``: each of the operator's state tables, as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from ..connectors.base import sync_file
from ..errors import ConfigError

CURRENT = "CURRENT"
_FILE = re.compile(r"chk-(\d+)\.duckdb")


@dataclass
class Checkpoint:
    """What a job saves, and what a restart reads back."""

    epoch: int
    statement: str
    processor: str
    values: dict
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    tables: tuple[str, ...] = ()  # the operator's state tables saved with it (names in ``con``)
    # Tables held elsewhere (V2 workers'), saved as ``state<name>``: name -> rows.
    rows: dict = field(default_factory=dict)


class CheckpointStore:
    """The checkpoints of one job in its state location (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, job: str) -> None:
        self.dir = Path(root) / job
        self.job = job

    def latest(self) -> int | None:
        """The epoch of the last complete checkpoint, or None."""
        try:
            text = (self.dir / CURRENT).read_text().strip()
        except FileNotFoundError:
            return None
        if not text.isdigit() or not (self.dir / f"chk-{text}.duckdb").is_file():
            raise ConfigError(
                f"the state location {self.dir} is damaged: {CURRENT} names no checkpoint file "
                f"({text!r}); remove the directory to start the job afresh"
            )
        return int(text)

    def path(self, epoch: int) -> Path:
        return self.dir / f"chk-{epoch}.duckdb"

    def write(self, con: duckdb.DuckDBPyConnection, ck: Checkpoint) -> Path:
        """Write checkpoint ``ck`` (its state tables read from the job's connection ``con``) to
        its file; :meth:`commit` makes it the current one."""
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.path(ck.epoch)
        tmp = final.with_name(final.name + ".tmp")
        tmp.unlink(missing_ok=True)
        # A connection of its own: the job's may hold a transaction on its database, and one
        # DuckDB transaction writes to one database only.
        out = duckdb.connect(str(tmp))
        try:
            out.execute(
                "CREATE TABLE checkpoint (epoch BIGINT, statement VARCHAR, processor VARCHAR, "
                'taken_at TIMESTAMPTZ, "values" JSON)'
            )
            out.execute(
                "INSERT INTO checkpoint VALUES (?, ?, ?, now(), ?)",
                [ck.epoch, ck.statement, ck.processor, json.dumps(ck.values)],
            )
            out.execute("CREATE TABLE positions (source VARCHAR, partition INTEGER, next_offset BIGINT)")
            if ck.positions:
                out.executemany(
                    "INSERT INTO positions VALUES (?, ?, ?)",
                    [[s, p, o] for (s, p), o in sorted(ck.positions.items())],
                )
            held = {table: con.sql(f"SELECT * FROM {table}").to_arrow_table() for table in ck.tables}
            for table, rows in {**held, **ck.rows}.items():
                out.register("__rows", rows)
                out.execute(f"CREATE TABLE state{table} AS SELECT * FROM __rows").fetchall()
                out.unregister("__rows")
            out.execute("CHECKPOINT").fetchall()
        finally:
            out.close()
        sync_file(tmp)
        os.replace(tmp, final)
        return final

    def commit(self, epoch: int) -> None:
        """Make checkpoint ``epoch`` (written) the current one, and remove the older ones."""
        _replace_text(self.dir / CURRENT, str(epoch))
        for old in self.dir.iterdir():
            m = _FILE.fullmatch(old.name)
            if m and int(m.group(1)) < epoch:
                old.unlink(missing_ok=True)

    @contextlib.contextmanager
    def read(self, con: duckdb.DuckDBPyConnection, epoch: int):
        """The checkpoint of ``epoch``, attached read-only to ``con`` as ``__ckpt`` while the
        block runs (its state tables are ``__ckpt.state<table>``)."""
        path = self.path(epoch)
        con.execute(f"ATTACH '{_literal(path)}' AS __ckpt (READ_ONLY)").fetchall()
        try:
            (row,) = con.execute(
                'SELECT epoch, statement, processor, "values" FROM __ckpt.checkpoint'
            ).fetchall()
            positions = {(s, p): o for s, p, o in con.execute("SELECT * FROM __ckpt.positions").fetchall()}
            tables = tuple(
                name.removeprefix("state")
                for (name,) in con.execute(
                    "SELECT table_name FROM duckdb_tables() WHERE database_name = '__ckpt' "
                    "AND table_name LIKE 'state%'"
                ).fetchall()
            )
            yield Checkpoint(row[0], row[1], row[2], json.loads(row[3]), positions, tables)
        finally:
            con.execute("DETACH __ckpt").fetchall()


def _literal(path: Path) -> str:
    return str(path).replace("'", "''")


def _replace_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file, synced, renamed over it)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- in a V2 worker (Calls: velosql.runtime.checkpoint:…) ---------------------------------------


def worker_snapshot(con, state: dict, table: str):
    """A worker's state for a checkpoint: its hosted operator's values and the rows of its state
    ``table`` (the running totals of EMIT CHANGES written into it first)."""
    log = state.get("changelog")
    if log is not None:
        log.checkpoint()
    operator = state.get("operator")
    values = operator.snapshot() if operator is not None else {}
    return values, con.sql(f"SELECT * FROM {table}").to_arrow_table()


def worker_restore(con, state: dict, arg):
    """Take back a worker's state (its rows registered as ``__in``): into its state table, bound
    and empty, keeping the table's types; its hosted operator's values. A running EMIT CHANGES
    reads its totals from the table from here on."""
    table, values = arg
    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM __in").fetchall()
    operator = state.get("operator")
    if operator is not None:
        operator.restore(values)
    state["restored"] = True
    return None, None
