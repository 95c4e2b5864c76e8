"""The general operator: the user's whole SELECT over each closed window's rows, or over every
row at the end of a bounded input.

It runs any SELECT DuckDB accepts (CTEs, subqueries, DISTINCT, window functions, QUALIFY,
WITHIN GROUP, …), because it hands DuckDB exactly the rows batch SQL would see. The on-time rows
wait in the temporary table ``__gbuf`` (DuckDB spills it to disk as it does any table), in
arrival order, so order-sensitive aggregates follow arrival as in batch SQL over the input. A row
is forgotten once the last window holding it has closed: memory is bounded by the open windows.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from ...plan import windows as W
from ...plan.operators import GeneralSpec
from ..watermark import NEG_INF
from . import Operator, concat


class GeneralOperator(Operator):
    state_values = ("rows", "closed_through", "min_open_end")

    def __init__(self, spec: GeneralSpec) -> None:
        self.spec = spec
        self.state_tables = spec.buffers
        self.window = spec.window
        self.rows = 0  # rows in __gbuf
        self.closed_through = NEG_INF  # every window ending at or before this was emitted
        self.min_open_end: int | None = None  # the earliest end of a window holding a row

    def bind(self, con, batch) -> pa.Schema:
        self.con = con
        buffers = self.spec.buffers
        for i, buf in enumerate(buffers):
            source = "__in" if len(buffers) == 1 else f"__in{i}"
            con.execute(f"CREATE OR REPLACE TEMP TABLE {buf} AS SELECT * FROM {source} LIMIT 0").fetchall()
        if self.spec.close:  # sessions: bind the statements on the empty buffer
            con.execute(self.spec.close.replace("$WM", "0")).fetchall()
            con.execute(self.spec.keep.replace("$WM", "0")).fetchall()
            return con.sql(self.spec.select.replace("$SN", "1")).to_arrow_table().schema
        return con.sql(self._select(0, 0)).to_arrow_table().schema

    def process(self, batch: pa.Table, side: int = 0, late: bool = True) -> None:
        (n,) = self.con.execute(
            f"INSERT INTO {self.spec.buffers[side]} SELECT * FROM __in WHERE {self.spec.on_time}"
        ).fetchall()[0]
        if n and self.window is not None and self.window.kind != "session":
            end = W.min_window_end(self.window, pc.min(batch["__et"]).as_py())
            self.min_open_end = end if self.min_open_end is None else min(self.min_open_end, end)
        self.rows += n
        return None

    def on_watermark(self, wm: int) -> pa.Table | None:
        if self.window is not None and self.window.kind == "session":
            return self._close_sessions(wm)
        if self.window is None or self.min_open_end is None or self.min_open_end > wm:
            return None
        size = self.window.size_us
        starts = self.con.execute(
            f"SELECT __ws FROM ({self.spec.starts}) WHERE __ws + {size} <= {wm} "
            f"AND __ws + {size} > {self.closed_through} ORDER BY __ws"
        ).fetchall()
        out = [self.con.sql(self._select(ws, ws + size)).to_arrow_table() for (ws,) in starts]
        for buf in self.spec.buffers:
            evict = self.spec.evict.replace("$WM", str(wm)).replace("$BUF", buf)
            (deleted,) = self.con.execute(evict).fetchall()[0]
            self.rows -= deleted
        self.closed_through = wm
        self.min_open_end = W.next_window_end(self.window, wm) if self.rows else None
        return concat(out)

    def finish(self, wm: int) -> pa.Table | None:
        if self.window is not None and self.window.kind == "session":
            return self._close_sessions(wm)
        if self.window is None:
            return concat([self.con.sql(self.spec.select).to_arrow_table()])
        if self.rows:
            self.min_open_end = NEG_INF
        return self.on_watermark(wm)

    def _close_sessions(self, wm: int) -> pa.Table | None:
        """Each session that ``wm`` closed, one after another in start order; a session's end is
        known only once its rows are sessionized, so every watermark step sessionizes the buffer."""
        if not self.rows or wm == NEG_INF:
            return None
        self.con.execute(self.spec.close.replace("$WM", str(wm))).fetchall()
        (sessions,) = self.con.execute("SELECT coalesce(max(__sn), 0) FROM __gsess").fetchall()[0]
        if not sessions:
            return None
        out = [
            self.con.sql(self.spec.select.replace("$SN", str(n))).to_arrow_table()
            for n in range(1, sessions + 1)
        ]
        self.con.execute(self.spec.keep.replace("$WM", str(wm))).fetchall()
        (self.rows,) = self.con.execute("SELECT count(*) FROM __gbuf").fetchall()[0]
        return concat(out)

    def _select(self, start: int, end: int) -> str:
        return self.spec.select.replace("$WS", str(start)).replace("$WE", str(end))
