"""The incremental aggregate: GROUP BY (with or without a TUMBLING/SLIDING window) as partial
aggregates in ``__state``, finished when a window closes (EMIT FINAL) or per input row (EMIT
CHANGES).

Every micro-batch adds its partial aggregate (a row per group, or per group and window) to
``__state``; ``emit`` combines a group's partial rows and finishes them, ``evict`` forgets the
windows a watermark closed, and the state is compacted (one combined row per group) now and then
so its size follows the groups, not the batches. The partials are associative, so they may be
computed anywhere: by DuckDB over the batch here, by pyarrow (``arrow_partials``), by DuckDB's own
reader of bounded files (``pushdown``), or by V2 workers; :meth:`AggregateOperator.merge` takes
those computed elsewhere.

EMIT CHANGES gives each input row's group values as of that row: the plan's window SQL over the
batch joined with the state, or for running COUNT/SUM/AVG the pyarrow running sums of
:mod:`velosql.runtime.running` (from the batch's own columns when the keys and arguments are bare
source columns: DuckDB then does not scan the batch at all).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from ...plan import windows as W
from ...plan.operators import AggregateSpec
from .. import running
from ..arrow_partials import ArrowPartials
from ..watermark import NEG_INF
from . import Operator

COMPACT_MIN_ROWS = 200_000  # EMIT FINAL partial rows in __state before its first compaction
_FALLBACK = object()  # the running fast path cannot take a batch: the SQL path does


class AggregateOperator(Operator):
    """GROUP BY over partial aggregates (see the module docstring)."""

    state_tables = ("__state",)
    state_values = ("min_open_end", "state_rows", "compacted_rows")

    def __init__(self, spec: AggregateSpec) -> None:
        self.spec = spec
        self.sql = spec.sql
        self.window = spec.window
        self.aggregates = spec.aggregates
        self.min_open_end: int | None = None  # the earliest end of a window with partial rows
        self.state_rows = 0  # partial rows in __state, and right after its last compaction
        self.compacted_rows = 0
        self.arrow: ArrowPartials | None = None  # pyarrow computes a micro-batch's partials
        self.running = False  # EMIT CHANGES through the pyarrow running-aggregate fast path
        self.plain_rows = False  # … taking its input rows from the batch without DuckDB
        self.changelog: running.Changelog | None = None  # … with the change rows finished in Arrow

    # ---- lifecycle ------------------------------------------------------------------------------

    def bind(self, con, batch: pa.Table) -> pa.Schema:
        self.con = con
        sql = self.sql
        con.execute(f"CREATE OR REPLACE TEMP TABLE __state AS {sql.partial} LIMIT 0").fetchall()
        if not sql.changes:
            self.arrow = ArrowPartials.build(sql.arrow_partial, batch.schema)
        con.sql(sql.emit.replace("$WM", "0")).fetchall()
        if sql.changes:
            con.sql(sql.changes).fetchall()
        if sql.running_input:
            inputs = con.sql(sql.running_input).to_arrow_table().schema
            self.running = running.supported(self.aggregates, inputs)
            if self.running and sql.running_items:
                con.sql(sql.running_state.replace("__keys", "(SELECT NULL AS __k0)")).fetchall()
                self.changelog = running.Changelog(con, self.aggregates, sql)
            if self.running and sql.running_columns:
                plain = running.plain_rows(batch, sql.running_columns, self.aggregates)
                self.plain_rows = running.supported(self.aggregates, plain.schema)
        return con.sql(sql.reference).to_arrow_table().schema

    def process(self, batch: pa.Table, side: int = 0, late: bool = True) -> pa.Table | None:
        """The change rows of the batch (EMIT CHANGES; None under EMIT FINAL), its partials added
        to the state. ``late``: False when the driver knows the batch holds no late row."""
        if self.running:
            out = self._running_changes(batch)
            if out is not _FALLBACK:
                return out
        out = self.con.sql(self.sql.changes).to_arrow_table() if self.sql.changes else None
        self._insert_partials(batch, late)
        return out

    def on_watermark(self, wm: int) -> pa.Table | None:
        """Emit (EMIT FINAL) and forget the windows ``wm`` closed."""
        if not self.closes(wm):
            return None
        return self.close(wm)

    def finish(self, wm: int) -> pa.Table | None:
        if self.changelog is not None:
            self.changelog.checkpoint()
        if self.window is None:
            return None if self.sql.changes else self._emit(wm)
        self.min_open_end = NEG_INF
        return self.on_watermark(wm)

    def snapshot(self) -> dict:
        if self.changelog is not None:  # the Arrow-held totals into __state
            self.changelog.checkpoint()
            return {**super().snapshot(), "state_rows": self.changelog.state_rows, "compacted_rows": 0}
        return super().snapshot()

    def restore(self, values: dict) -> None:
        super().restore(values)
        if self.changelog is not None:  # the state is read from DuckDB from here on
            self.changelog.totals = None
            self.changelog.state_rows = self.state_rows

    # ---- partials computed elsewhere (V2 workers, DuckDB's scan) --------------------------------

    def merge(self, rows: pa.Table) -> None:
        """Append partial rows computed elsewhere (pyarrow, DuckDB's scan, V2 workers)."""
        self.con.register("__partials", rows)
        try:
            (n,) = self.con.execute("INSERT INTO __state BY NAME SELECT * FROM __partials").fetchall()[0]
        finally:
            self.con.unregister("__partials")
        self._inserted(n)

    def partial_sql(self, batch: pa.Table, late: bool) -> str:
        """The partial aggregate SQL of the micro-batch (registered as ``__in`` where it runs);
        its windows count as open from now on. ``late``: whether the batch may hold late rows."""
        partial, low = self._partial_for(batch, late)
        if low is not None:
            self.open_window(low)
        return partial

    def open_window(self, low: int) -> None:
        """Partials from event time ``low`` on are in the state: note the earliest window end."""
        end = W.min_window_end(self.window, low)
        self.min_open_end = end if self.min_open_end is None else min(self.min_open_end, end)

    def closes(self, wm: int) -> bool:
        """Whether watermark ``wm`` closes a window holding partial rows."""
        return self.window is not None and self.min_open_end is not None and self.min_open_end <= wm

    def passed(self, wm: int) -> None:
        """Windows up to ``wm`` were closed elsewhere (V2 workers holding the state): the next
        that can close ends after it."""
        self.min_open_end = W.next_window_end(self.window, wm)

    def close(self, wm: int) -> pa.Table | None:
        """Emit (EMIT FINAL) and forget every window ``wm`` closes, whatever was noted open; the
        windows noted open beyond it stay noted."""
        noted = self.min_open_end
        out = None if self.sql.changes else self._emit(wm)
        (deleted,) = self.con.execute(self.sql.evict.replace("$WM", str(wm))).fetchall()[0]
        self.state_rows -= deleted
        # Every window left ends after wm: the next one that can close is the first end past it.
        self.min_open_end = W.next_window_end(self.window, wm) if self.state_rows else None
        if noted is not None and noted > wm:
            self.min_open_end = noted if self.min_open_end is None else min(self.min_open_end, noted)
        return out

    # ---- inside ---------------------------------------------------------------------------------

    def _emit(self, wm: int) -> pa.Table:
        return self.con.sql(self.sql.emit.replace("$WM", str(wm))).to_arrow_table()

    def _insert_partials(self, batch: pa.Table, late: bool) -> None:
        rows = self.arrow.compute(batch) if self.arrow is not None and not late else None
        if rows is not None:
            self.merge(rows)
            return
        partial, low = self._partial_for(batch, late)
        (n,) = self.con.execute(f"INSERT INTO __state {partial}").fetchall()[0]
        if low is not None and n:
            self.open_window(low)
        self._inserted(n)

    def _partial_for(self, batch: pa.Table, late: bool) -> tuple[str, int | None]:
        """The batch's partial aggregate SQL, and its earliest event time (windowed plans)."""
        partial = self.sql.partial if late else self.sql.partial_all
        low = pc.min(batch["__et"]).as_py() if self.window is not None else None
        if low is not None and low >= 0:
            partial = W.nonnegative_variant(partial, self.window)
        return partial, low

    def _inserted(self, n: int) -> None:
        if self.changelog is not None:  # it compacts the state it reads
            self.changelog.inserted(n)
            return
        self.state_rows += n
        # EMIT CHANGES reads the (combined) state every batch, so it keeps the state smaller.
        floor = running.COMPACT_MIN_ROWS if self.sql.changes else COMPACT_MIN_ROWS
        if running.compaction_due(self.state_rows, self.compacted_rows, floor):
            self.state_rows = self.compacted_rows = running.compact(self.con, self.sql.state_update)

    def _running_changes(self, batch: pa.Table):
        """EMIT CHANGES of running COUNT/SUM/AVG without DuckDB's window sort (see running.py):
        the change rows, with the batch's partials in the state; ``_FALLBACK`` when the SQL path
        must take the batch (the Arrow-held totals are then given up)."""
        sql, aggs = self.sql, self.aggregates
        if self.plain_rows:
            rows = running.plain_rows(batch, sql.running_columns, aggs)
        else:
            rows = self.con.sql(sql.running_input).to_arrow_table()
        if rows.num_rows == 0:
            return None
        if self.changelog is not None:
            out = self.changelog.changes(rows)
            return _FALLBACK if out is None else out
        try:
            run = running.running_partials(rows, aggs)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            # A running sum beyond int64, or a key pyarrow cannot encode (a LIST or STRUCT):
            # DuckDB's window (HUGEINT sums, any key type) takes the batch.
            return _FALLBACK
        self.con.register("__b", run.table)
        try:
            out = self.con.sql(sql.running_output).to_arrow_table()
        finally:
            self.con.unregister("__b")
        self._insert_partials(batch, late=False)
        return out
