"""Helpers to run a streaming statement over in-memory data, for tests and ``velosql verify``."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from .engine import connect


def run_stream(
    sql: str,
    data: pa.Table,
    *,
    source: str = "t",
    splits: Sequence[int] = (),
    processor: str | None = None,
    timeout: float = 60,
) -> pa.Table:
    """Run one streaming statement over ``data`` pushed as batches cut at ``splits`` (row indexes).

    The statement reads the python source ``source``. Returns the rows of its python sink (in
    emission order) when it declares ``'<stream>.type' = 'python'``, else its DuckDB table.
    """
    engine = connect(processor=processor)
    try:
        push_split(engine, source, data, splits)
        job = engine.execute(sql)
        job.wait(timeout)
        if not job.done:
            raise TimeoutError(f"job {job.name} did not finish within {timeout}s")
        if job.name in engine._outputs:
            return engine.pull(job.name)
        return engine.sql(f'SELECT * FROM "{job.name}"').to_arrow_table()
    finally:
        engine.close()


def push_split(engine, source: str, data: pa.Table, splits: Sequence[int] = ()) -> None:
    """Push ``data`` into python source ``source`` as batches cut at ``splits``, then close it.

    An empty table is still pushed once, so the source has a schema.
    """
    bounds = [0, *sorted(s for s in set(splits) if 0 < s < data.num_rows), data.num_rows]
    channel = engine.channel(source)
    for lo, hi in zip(bounds, bounds[1:]):
        if hi > lo or data.num_rows == 0:
            channel.push(data.slice(lo, hi - lo))
    channel.close()
