"""Running COUNT/SUM/AVG per key for EMIT CHANGES, computed with pyarrow kernels.

DuckDB's window operator (``PARTITION BY key ORDER BY seq``) sorts on the key and runs at about
3M rows/s on one thread; that sort dominates EMIT CHANGES. Here the key is dictionary-encoded, the
rows are stably sorted by its integer code, and each running value is a cumulative sum minus the
sum before its key's first row — a few linear passes. Integer inputs only: the subtraction is exact
for integers, while for floating point it would lose precision the window version does not.

The result is the batch's running partials in the column layout of the plan's partial state, so
the plan's merge/final SQL (``running_output``) finishes the change rows exactly as the window
version does.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from ..connectors.base import _arange
from ..plan.aggregates import SEQ

INTEGER_TYPES = (pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32())


def supported(aggregates, schema: pa.Schema) -> bool:
    """Whether every aggregate can run here, given the types of the running-input columns."""
    for i, a in enumerate(aggregates):
        if a.running in ("sum", "avg") and schema.field(f"__x{i}").type not in INTEGER_TYPES:
            return False
    return True


def running_partials(rows: pa.Table, aggregates) -> pa.Table:
    """Per row (in arrival order): the key, ``__seq`` and each aggregate's running partial columns."""
    n = rows.num_rows
    # NULL is a group of its own, as in GROUP BY.
    codes = pc.dictionary_encode(rows.column("__k0"), null_encoding="encode").combine_chunks().indices
    order = pc.sort_indices(codes)  # stable: rows of one key stay in arrival order
    sorted_codes = codes.take(order)
    starts = pc.not_equal(
        sorted_codes, pa.concat_arrays([pa.array([-1], codes.type), sorted_codes.slice(0, n - 1)])
    )
    position = _arange(n)
    first = pc.fill_null_forward(pc.if_else(starts, position, pa.scalar(None, pa.int64())))
    count_star = pc.add(pc.subtract(position, first), 1)

    def running_sum(values: pa.Array) -> pa.Array:
        total = pc.cumulative_sum_checked(values)
        before_key = pc.fill_null_forward(
            pc.if_else(starts, pc.subtract(total, values), pa.scalar(None, pa.int64()))
        )
        return pc.subtract(total, before_key)

    columns = {"__k0": rows.column("__k0").take(order), SEQ: rows.column(SEQ).take(order)}
    for i, a in enumerate(aggregates):
        if a.running == "count_star":
            columns[a.parts[0]] = count_star
            continue
        x = rows.column(f"__x{i}").combine_chunks().take(order).cast(pa.int64())
        seen = running_sum(pc.cast(pc.is_valid(x), pa.int64()))
        if a.running == "count":
            columns[a.parts[0]] = seen
            continue
        total = running_sum(pc.fill_null(x, 0))
        # SUM of no non-null value is NULL, as in SQL.
        total = pc.if_else(pc.equal(seen, 0), pa.scalar(None, pa.int64()), total)
        columns[a.parts[0]] = total
        if a.running == "avg":
            columns[a.parts[1]] = seen
    return pa.table(columns)
