"""Operators over several streams: the union of streams whose rows never meet, and the
incremental join of two streams (``velosql.plan.multi`` plans both).

The join keeps each side's on-time rows in ``__jb0``/``__jb1`` with a flag ``__m`` (the row
matched a row of the other side on the ON condition). A micro-batch of one side is joined with
the other side's rows so far and then kept: every pair is produced once, when its later row
arrives, whatever the order the two streams' rows come in. After each watermark step the rows
that no future row can match are dropped, and those of an outer side that never matched first
give their NULL-extended rows: that is when such a row is known to have no match.
"""

from __future__ import annotations

import pyarrow as pa

from ...plan.operators import JoinSpec, UnionSpec
from ..watermark import NEG_INF
from . import Operator, concat


def _bind_each(con, batches: list[pa.Table], statements) -> pa.Schema | None:
    """Bind statement ``i`` with input ``i``'s empty batch as ``__in``; the first's schema."""
    schema = None
    for i, sql in enumerate(statements):
        if not sql:
            continue
        con.register("__in", batches[i])
        try:
            found = con.sql(sql.replace("$WM", "0").replace("$EXPIRED", "TRUE")).to_arrow_table().schema
        finally:
            con.unregister("__in")
        schema = schema or found
    return schema


class UnionOperator(Operator):
    """Each input's micro-batch through the statement with the other streams empty."""

    def __init__(self, spec: UnionSpec) -> None:
        self.spec = spec
        self.state_tables = tuple(f"__empty{i}" for i in range(len(spec.selects)))

    def bind(self, con, batch) -> pa.Schema:
        self.con = con
        for i, table in enumerate(self.state_tables):
            con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT * FROM __in{i} LIMIT 0").fetchall()
        return _bind_each(con, batch, self.spec.selects)

    def process(self, batch: pa.Table, side: int = 0, late: bool = True) -> pa.Table | None:
        return self.con.sql(self.spec.selects[side]).to_arrow_table()


class JoinOperator(Operator):
    """Two streams joined as they arrive; see the module docstring."""

    state_tables = ("__jb0", "__jb1")
    state_values = ("held", "last_wm")

    def __init__(self, spec: JoinSpec) -> None:
        self.spec = spec
        self.outer = any(spec.outer)
        self.held = [0, 0]  # rows in each buffer
        self.last_wm = NEG_INF

    def bind(self, con, batch) -> pa.Schema:
        self.con = con
        for i, table in enumerate(self.state_tables):
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT *, FALSE AS __m FROM __in{i} LIMIT 0"
            ).fetchall()
        schema = _bind_each(con, batch, self.spec.delta)
        _bind_each(con, batch, self.spec.pairs)
        for sql in self.spec.outer:
            if sql:
                con.sql(sql.replace("$EXPIRED", "TRUE")).fetchall()
        return schema

    def process(self, batch: pa.Table, side: int = 0, late: bool = True) -> pa.Table | None:
        spec, con = self.spec, self.con
        out = con.sql(spec.delta[side]).to_arrow_table()
        other = 1 - side
        if self.outer:
            con.execute(f"CREATE OR REPLACE TEMP TABLE __jp AS {spec.pairs[side]}").fetchall()
            matched = "__seq IN (SELECT __s FROM __jp)"
            if spec.outer[other]:
                con.execute(
                    f"UPDATE __jb{other} SET __m = TRUE WHERE NOT __m AND __seq IN (SELECT __o FROM __jp)"
                ).fetchall()
        else:
            matched = "FALSE"
        (n,) = con.execute(
            f"INSERT INTO __jb{side} SELECT *, {matched} FROM __in WHERE {spec.on_time}"
        ).fetchall()[0]
        self.held[side] += n
        return out

    def on_watermark(self, wm: int) -> pa.Table | None:
        if wm <= self.last_wm:
            return None
        self.last_wm = wm
        return self._expire(
            {i: cond.replace("$WM", str(wm)) for i, cond in enumerate(self.spec.expired) if cond}
        )

    def finish(self, wm: int) -> pa.Table | None:
        return self._expire({0: "TRUE", 1: "TRUE"})

    def _expire(self, expired: dict[int, str]) -> pa.Table | None:
        """The outer rows of the rows ``expired`` names, which are then dropped."""
        out = []
        for side, cond in expired.items():
            if not self.held[side]:
                continue
            if self.spec.outer[side]:
                out.append(self.con.sql(self.spec.outer[side].replace("$EXPIRED", cond)).to_arrow_table())
            (n,) = self.con.execute(f"DELETE FROM __jb{side} WHERE {cond}").fetchall()[0]
            self.held[side] -= n
        return concat(out)
