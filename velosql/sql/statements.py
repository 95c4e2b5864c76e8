"""Typed statements: what the parser hands to the planner and the engine.

:func:`velosql.sql.parse_script` turns a script into a list of these. Streaming statements carry a
sqlglot ``exp.Select`` stripped of everything streaming (WINDOW/EMIT/WITH/PRIMARY KEY), so the
planner works on plain DuckDB SQL; everything else is kept as the user's original text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlglot import exp

from ..errors import Location


@dataclass(frozen=True)
class WindowSpec:
    """``WINDOW TUMBLING|SLIDING|SESSION(...)``. Durations are integer microseconds.

    ``size_us`` is the tumbling/sliding size or the session gap; ``advance_us`` the sliding advance
    (None otherwise); ``time_column`` the column named first inside the parentheses, if any.
    """

    kind: str  # "tumbling" | "sliding" | "session"
    size_us: int
    advance_us: int | None = None
    time_column: str | None = None


@dataclass(frozen=True)
class Statement:
    """Base: every statement knows its original text and where it starts."""

    text: str
    location: Location


@dataclass(frozen=True)
class CreateStream(Statement):
    """``CREATE STREAM|TABLE name AS SELECT … [WINDOW …] [EMIT …] [WITH (…)]``.

    ``select`` is a plain sqlglot Select, or a set operation of Selects (``UNION ALL`` …), in the
    DuckDB dialect, without the streaming clauses. Window
    functions written with ``OVER (ROWS WINDOW BUFFER N ROWS …)`` are ordinary ``exp.Window`` nodes
    whose ``meta["buffer_rows"]`` is N. ``properties`` maps each WITH key as written (lower-cased,
    quotes removed) to its value (str, int, float or bool); ``property_locations`` to where it stands.
    ``annotations`` holds the ``-- @name: value`` comments above the statement and the file header.
    """

    kind: str = "stream"  # "stream" | "table"
    name: str = ""
    select: exp.Select | exp.SetOperation | None = None
    window: WindowSpec | None = None
    emit: str | None = None  # "changes" | "final" | None (not written)
    properties: dict[str, object] = field(default_factory=dict)
    property_locations: dict[str, Location] = field(default_factory=dict)
    primary_key: tuple[str, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DuckDBStatement(Statement):
    """Any statement that is not ours: run verbatim (``text``) against the engine's database."""


@dataclass(frozen=True)
class ShowStreams(Statement):
    pass


@dataclass(frozen=True)
class ShowJobs(Statement):
    pass


@dataclass(frozen=True)
class Describe(Statement):
    """``DESCRIBE name`` where name is a stream; for other names it stays DuckDB's DESCRIBE."""

    name: str = ""


@dataclass(frozen=True)
class DropStream(Statement):
    name: str = ""
    if_exists: bool = False


@dataclass(frozen=True)
class Terminate(Statement):
    """``TERMINATE name`` (ksqlDB's word): stop the job (it flushes) and keep it listed, unlike DROP STREAM."""

    name: str = ""


@dataclass(frozen=True)
class Explain(Statement):
    """``EXPLAIN [ANALYZE] <streaming statement>``."""

    statement: CreateStream | None = None
    analyze: bool = False
