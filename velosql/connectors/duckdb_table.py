"""Results as tables of the engine's DuckDB database, and DuckDB tables as bounded sources."""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import pyarrow as pa

from .base import PartitionEnd, Sink, Source, SourceContext, empty_table, with_system_columns


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class DuckDBTableSink(Sink):
    """Appends result rows to a table; with ``key``, keeps only the latest row per key (upsert).

    Writes go through the job's own connection, so each database has one writer per job.
    """

    def __init__(self, name: str, con: duckdb.DuckDBPyConnection, table: str, key: tuple[str, ...] = ()):
        self.name, self.con, self.table, self.key = name, con, table, tuple(key)
        self.resume = False
        self.in_transaction = False  # the job's transaction holds the writes (checkpoint.py)

    def open(self, schema: pa.Schema) -> None:
        empty = empty_table(schema)
        self.con.register("__sink_empty", empty)
        # A job resuming from a checkpoint keeps the rows its runs before committed.
        create = "CREATE TABLE IF NOT EXISTS" if self.resume else "CREATE OR REPLACE TABLE"
        self.con.execute(f"{create} {quote(self.table)} AS SELECT * FROM __sink_empty").fetchall()
        self.con.unregister("__sink_empty")
        missing = [k for k in self.key if k not in schema.names]
        if missing:
            # A key that is not an output column cannot key the table: keep every row instead.
            self.key = ()

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self.con.register("__sink_batch", table)
        try:
            if not self.key:
                self.con.execute(f"INSERT INTO {quote(self.table)} SELECT * FROM __sink_batch").fetchall()
                return
            keys = ", ".join(quote(k) for k in self.key)
            match = " AND ".join(f"t.{quote(k)} IS NOT DISTINCT FROM b.{quote(k)}" for k in self.key)
            if not self.in_transaction:
                self.con.execute("BEGIN").fetchall()
            self.con.execute(
                "CREATE OR REPLACE TEMP TABLE __sink_last AS SELECT * EXCLUDE (__i) FROM "
                "(SELECT *, row_number() OVER () AS __i FROM __sink_batch) "
                f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY __i DESC) = 1"
            ).fetchall()
            self.con.execute(
                f"DELETE FROM {quote(self.table)} t USING __sink_last b WHERE {match}"
            ).fetchall()
            self.con.execute(f"INSERT INTO {quote(self.table)} SELECT * FROM __sink_last").fetchall()
            if not self.in_transaction:
                self.con.execute("COMMIT").fetchall()
        finally:
            self.con.unregister("__sink_batch")

    def describe(self) -> str:
        kind = f"keyed by {', '.join(self.key)}" if self.key else "append"
        return f"duckdb_table {self.table} ({kind})"


class DuckDBTableSource(Source):
    """Reads a table (or view) of the engine's database once: a bounded source, partition 0."""

    def __init__(self, name: str, con: duckdb.DuckDBPyConnection, table: str, batch_size: int = 65536):
        self.name, self.con, self.table, self.batch_size = name, con, table, batch_size

    def open(self, ctx: SourceContext) -> None:
        self.ctx = ctx
        self._reader = self.con.sql(f"SELECT * FROM {quote(self.table)}").to_arrow_reader(self.batch_size)

    @property
    def schema(self) -> pa.Schema:
        return with_system_columns(pa.RecordBatch.from_pylist([], schema=self._reader.schema), 0, 0).schema

    def read(self) -> Iterator[pa.RecordBatch | PartitionEnd | None]:
        offset = 0
        for batch in self._reader:
            if self.ctx.stop.is_set():
                return
            yield with_system_columns(batch, 0, offset)
            offset += batch.num_rows
        yield PartitionEnd(0)

    def describe(self) -> str:
        return f"table {self.table}"
