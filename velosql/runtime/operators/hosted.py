"""An operator hosted by a V2 worker: the functions a :class:`~velosql.runtime.protocol.Call`
runs in the worker, with the worker's connection and the state dict it keeps.

A partitioned driver (``runtime/multi.py`` under V2 for a join of streams, ``runtime/v2.py`` for
SESSION windows and ROWS WINDOW BUFFER) binds one operator in each worker and then sends each
worker its share of every micro-batch (the rows whose key hashes to it, registered as
``__in``), the watermark and the end of the input; each call returns the rows the operator made.
"""

from __future__ import annotations

import pyarrow as pa

from . import build


def bind(con, state: dict, arg) -> tuple[None, pa.Table]:
    """Build the operator of ``spec`` and bind it to each input's empty stamped batch; its output
    schema comes back as an empty table."""
    spec, empties = arg
    operator = build(spec)
    # One input binds as ``__in``, several as ``__in0``, ``__in1``, … (see ``operators``).
    names = ["__in"] if len(empties) == 1 else [f"__in{i}" for i in range(len(empties))]
    for name, empty in zip(names, empties):
        con.register(name, empty)
    try:
        schema = operator.bind(con, empties[0] if len(empties) == 1 else empties)
    finally:
        for name in names:
            con.unregister(name)
    state["operator"] = operator
    return None, schema.empty_table()


def process(con, state: dict, side: int) -> tuple[None, pa.Table | None]:
    """The worker's share of a micro-batch of input ``side``, registered as ``__in``."""
    return None, state["operator"].process(None, side)


def on_watermark(con, state: dict, wm: int) -> tuple[None, pa.Table | None]:
    return None, state["operator"].on_watermark(wm)


def finish(con, state: dict, wm: int) -> tuple[None, pa.Table | None]:
    return None, state["operator"].finish(wm)
