"""The operators of the specialised shapes whose state is plain SQL: filters and projections,
ROWS WINDOW BUFFER functions, and aggregates over SESSION windows (the incremental aggregate is
in ``aggregate.py``)."""

from __future__ import annotations

import pyarrow as pa

from ...plan.operators import BufferSpec, ProjectSpec, SessionSpec
from ..watermark import NEG_INF
from . import Operator


class ProjectOperator(Operator):
    """Stateless: each micro-batch's output is the projection over it."""

    stateless = True

    def __init__(self, spec: ProjectSpec) -> None:
        self.spec = spec

    def bind(self, con, batch) -> pa.Schema:
        self.con = con
        return con.sql(self.spec.project).to_arrow_table().schema

    def process(self, batch: pa.Table, side: int = 0, late: bool = True) -> pa.Table:
        return self.con.sql(self.spec.project).to_arrow_table()


class BufferOperator(Operator):
    """The last rows of each key in ``__rbuf``; a micro-batch's rows read them, then replace the
    buffer with the newest rows of the buffer and the batch."""

    state_tables = ("__rbuf",)

    def __init__(self, spec: BufferSpec) -> None:
        self.spec = spec

    def bind(self, con, batch) -> pa.Schema:
        self.con = con
        con.execute(self.spec.create).fetchall()
        return con.sql(self.spec.project).to_arrow_table().schema

    def process(self, batch: pa.Table, side: int = 0, late: bool = True) -> pa.Table:
        out = self.con.sql(self.spec.project).to_arrow_table()
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE __rbuf AS {self.spec.keep}").fetchall()
        return out


class SessionOperator(Operator):
    """On-time rows wait in ``__sbuf`` until the watermark closes their session."""

    state_tables = ("__sbuf",)

    def __init__(self, spec: SessionSpec) -> None:
        self.spec = spec

    def bind(self, con, batch) -> pa.Schema:
        self.con = con
        con.execute(self.spec.create).fetchall()
        con.execute(self.spec.keep.replace("$WM", "0")).fetchall()
        con.execute(self.spec.emit.replace("$WM", "0")).fetchall()
        return con.sql(self.spec.reference).to_arrow_table().schema

    def process(self, batch: pa.Table, side: int = 0, late: bool = True) -> None:
        self.con.execute(self.spec.insert).fetchall()
        return None

    def on_watermark(self, wm: int) -> pa.Table | None:
        if wm == NEG_INF:
            return None
        out = self.con.sql(self.spec.emit.replace("$WM", str(wm))).to_arrow_table()
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE __sbuf AS {self.spec.keep.replace('$WM', str(wm))}"
        ).fetchall()
        return out
