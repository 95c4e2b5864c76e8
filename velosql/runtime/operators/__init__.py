"""Operators: the stateful logic of one statement, built from the frozen spec the planner made.

An operator owns named state tables in the DuckDB connection a driver gives it and knows nothing
of where its rows come from or where its output goes: sources, routing, transport to workers and
sinks belong to the drivers (``velosql.runtime.v1`` runs operators on the job's connection,
``velosql.runtime.v2`` in worker processes or, for the aggregate, over partials the workers made).
Lateness is judged before an operator sees a row (``__wm``, stamped once per micro-batch by the
driver), and late rows are stored by the driver; an operator keeps only on-time rows.

The lifecycle, every call from the job's thread:

1. ``build(spec)`` makes the operator; it touches no connection.
2. ``bind(con, batch)`` once, with an empty stamped micro-batch registered as ``__in``: create
   the state tables, check the SQL against the source's schema, return the output schema.
   DuckDB's errors propagate from here (the driver names the statement).
3. ``process(batch, side)`` per micro-batch, registered as ``__in`` for the call; returns the
   output rows it makes at once (or None). ``side`` is the input the batch came from (0 for a
   statement over one stream); a statement over several streams gets each input's batches on
   their own, in arrival order, and binds with every input's empty batch, registered as
   ``__in0``, ``__in1``, … .
4. ``on_watermark(wm)`` after each micro-batch of a windowed statement: the rows of what ``wm``
   closed (or None). Watermarks never go back.
5. ``finish(wm)`` once at the end of the input (``wm`` then passes every window): the rest.

A checkpoint (``velosql.runtime.checkpoint``) takes an operator between two calls: ``snapshot()``
completes its state tables and returns its state values (JSON); on a restart the driver binds a
new operator, fills the state tables from the checkpoint and hands it the values
(``restore(values)``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import duckdb
import pyarrow as pa

from ...plan.operators import (
    AggregateSpec,
    BufferSpec,
    DistinctSpec,
    GeneralSpec,
    JoinSpec,
    ProjectSpec,
    SessionSpec,
    UnionSpec,
)


class Operator(ABC):
    """One statement's state and logic (see the module docstring for the lifecycle)."""

    #: The temporary tables the operator keeps in its connection.
    state_tables: tuple[str, ...] = ()
    #: Its attributes that are state too: saved by a checkpoint beside the tables.
    state_values: tuple[str, ...] = ()
    #: Each micro-batch's output depends on that micro-batch only (nothing is held back).
    stateless: bool = False

    con: duckdb.DuckDBPyConnection

    @abstractmethod
    def bind(self, con: duckdb.DuckDBPyConnection, batch: pa.Table | list[pa.Table]) -> pa.Schema:
        """Create the state tables on ``con`` and return the output schema (``batch``: one empty
        stamped batch per input for a statement over several streams)."""

    @abstractmethod
    def process(self, batch: pa.Table, side: int = 0, late: bool = True) -> pa.Table | None:
        """Take one stamped micro-batch of input ``side`` (registered as ``__in``); the output
        it makes at once. ``late``: False when the driver knows the batch holds no late row."""

    def on_watermark(self, wm: int) -> pa.Table | None:
        """The output of what watermark ``wm`` closed."""
        return None

    def finish(self, wm: int) -> pa.Table | None:
        """The output still held at the end of the input."""
        return self.on_watermark(wm)

    def snapshot(self) -> dict:
        """Complete the state tables and return the state values (for a checkpoint)."""
        return {name: getattr(self, name) for name in self.state_values}

    def restore(self, values: dict) -> None:
        """Take the values of :meth:`snapshot`; the driver has filled the state tables."""
        for name in self.state_values:
            setattr(self, name, values[name])


def build(spec) -> Operator:
    """The operator a spec (``velosql.plan.operators``) describes."""
    from .aggregate import AggregateOperator
    from .distinct import DistinctOperator
    from .general import GeneralOperator
    from .join import JoinOperator, UnionOperator
    from .shapes import BufferOperator, ProjectOperator, SessionOperator

    kinds = {
        AggregateSpec: AggregateOperator,
        GeneralSpec: GeneralOperator,
        DistinctSpec: DistinctOperator,
        UnionSpec: UnionOperator,
        JoinSpec: JoinOperator,
        ProjectSpec: ProjectOperator,
        BufferSpec: BufferOperator,
        SessionSpec: SessionOperator,
    }
    return kinds[type(spec)](spec)


def concat(tables: list[pa.Table]) -> pa.Table | None:
    """The tables one after another, or None when there are none with rows."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return None
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)
