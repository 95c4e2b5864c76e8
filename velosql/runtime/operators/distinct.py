"""SELECT DISTINCT as a stream: the first occurrence of each distinct row passes, in arrival order.

The rows already passed are kept in ``__seen`` (one row per distinct value: memory grows with the
number of distinct rows, as batch DISTINCT's does). Rows compare as DISTINCT compares them: NULLs
equal.
"""

from __future__ import annotations

import pyarrow as pa

from ...plan.operators import DistinctSpec
from . import Operator


class DistinctOperator(Operator):
    state_tables = ("__seen",)

    def __init__(self, spec: DistinctSpec) -> None:
        self.spec = spec

    def bind(self, con, batch: pa.Table) -> pa.Schema:
        self.con = con
        schema = con.sql(self.spec.rows).to_arrow_table().schema
        cols = [f"__c{i}" for i in range(len(schema))]
        self.cols = ", ".join(cols)
        # Each new row, numbered in arrival order, unless an equal row passed before.
        same = " AND ".join(f"s.{c} IS NOT DISTINCT FROM n.{c}" for c in cols)
        rows = f"SELECT *, row_number() OVER () AS __ord FROM ({self.spec.rows}) AS __r({self.cols})"
        self.new = (
            f"SELECT {self.cols} FROM ({rows}) AS n WHERE NOT EXISTS (SELECT 1 FROM __seen s WHERE {same}) "
            f"QUALIFY row_number() OVER (PARTITION BY {self.cols} ORDER BY __ord) = 1 ORDER BY __ord"
        )
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE __seen AS SELECT * FROM ({self.spec.rows}) AS __r({self.cols}) LIMIT 0"
        ).fetchall()
        return schema

    def process(self, batch: pa.Table, side: int = 0, late: bool = True) -> pa.Table | None:
        out = self.con.sql(self.new).to_arrow_table()
        if not out.num_rows:
            return None
        self.con.register("__passed", out)
        try:
            self.con.execute("INSERT INTO __seen SELECT * FROM __passed").fetchall()
        finally:
            self.con.unregister("__passed")
        return out
