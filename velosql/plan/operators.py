"""The frozen specs of the operators the planner chooses: one per statement.

A spec holds everything its operator needs as plain SQL and values; the runtime builds the
operator from it (``velosql.runtime.operators.build``) and never parses SQL. ``$WS`` and ``$WE``
in a spec's SQL stand for a window's bounds (microseconds), filled in when the window closes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a V2 worker unpickles specs: their module must not import sqlglot (~0.1 s)
    from ..sql.statements import WindowSpec
    from .aggregates import AggSpec
    from .sqlgen import ShapeSQL


@dataclass(frozen=True)
class GeneralSpec:
    """The user's whole SELECT, run over the on-time rows of each window the watermark closes, or
    once over every row at the end of a bounded input (no window).

    ``select`` reads the buffered rows of one window through ``__gbuf`` (with ``$WS``/``$WE``) or
    one session through ``__gsess``; a statement over several streams keeps each stream's rows in
    its own buffer (``buffers``, in input order) and reads each through its own;
    ``why`` names the constructs that brought the statement here, for EXPLAIN. Windowed:
    ``on_time`` is the condition a micro-batch's rows (``__in``) are kept on, ``starts`` gives
    the start ``__ws`` of every window holding a buffered row, and ``evict`` forgets the rows no
    window open after watermark ``$WM`` holds from buffer ``$BUF``.
    """

    select: str
    window: WindowSpec | None
    why: tuple[str, ...]
    on_time: str = "TRUE"
    starts: str = ""
    evict: str = ""
    buffers: tuple[str, ...] = ("__gbuf",)
    # SESSION windows: ``close`` numbers the sessions watermark ``$WM`` closes (``__sn`` from 1,
    # in ``__gsess``, each session's rows in arrival order) and ``keep`` leaves the others in
    # ``__gbuf``; ``select`` then reads session ``$SN``.
    close: str = ""
    keep: str = ""


@dataclass(frozen=True)
class AggregateSpec:
    """GROUP BY, incremental: each micro-batch's partial aggregate (``sql.partial``, or
    ``sql.partial_all`` for a batch with no late row) is appended to ``__state``; ``sql.emit``
    finishes the groups (of the windows watermark ``$WM`` closed), ``sql.evict`` forgets those
    windows, ``sql.state_update`` compacts the state, ``sql.changes`` and the ``running_*`` SQL
    give EMIT CHANGES rows. ``aggregates`` describe each aggregate's partial columns."""

    sql: ShapeSQL
    window: WindowSpec | None
    aggregates: tuple[AggSpec, ...]


@dataclass(frozen=True)
class ProjectSpec:
    """Filters and projections: ``project`` over each micro-batch (``__in``) is its output."""

    project: str


@dataclass(frozen=True)
class BufferSpec:
    """``… OVER (ROWS WINDOW BUFFER N ROWS …)``: the last rows of each key wait in ``__rbuf``
    (created by ``create``); ``project`` gives a micro-batch's output rows from the batch and the
    buffer, and ``keep`` is the buffer after it. ``ordered`` is ``project`` with each row's
    arrival sequence first, as ``__order``: a partitioned driver puts its workers' rows back in
    arrival order by it."""

    create: str
    project: str
    keep: str
    ordered: str = ""


@dataclass(frozen=True)
class SessionSpec:
    """Aggregates over SESSION windows: the on-time rows (``insert``, over ``__in``) wait in
    ``__sbuf`` (created by ``create``); ``emit`` gives the sessions watermark ``$WM`` closed and
    ``keep`` the rows of the sessions still open."""

    create: str
    insert: str
    emit: str
    keep: str
    reference: str  # the statement's output columns, as batch SQL over __in


@dataclass(frozen=True)
class DistinctSpec:
    """``SELECT DISTINCT`` over a stateless body: the first occurrence of each distinct row passes.

    ``rows`` is the body without DISTINCT, over one micro-batch (``__in``); its output rows, in
    arrival order, are compared with the rows seen before.
    """

    rows: str


@dataclass(frozen=True)
class UnionSpec:
    """Streams whose rows never meet (``UNION ALL`` of per-row SELECTs over different streams):
    each input's micro-batch goes through ``selects[i]``, the statement with that input read from
    ``__in`` and every other stream read as empty (``__empty<j>``)."""

    selects: tuple[str, ...]


@dataclass(frozen=True)
class JoinSpec:
    """A join of two streams (inputs 0 and 1: the FROM stream and the joined one), incremental:
    each side's on-time rows wait in ``__jb0``/``__jb1``; a micro-batch of one side is joined
    with the other side's rows so far, so each matching pair is produced once, when its later
    row arrives.

    ``delta[i]`` is the statement, its stream join made INNER, with side ``i`` read from the
    micro-batch (``__in``) and the other side from its buffer. ``kind`` is the join as written
    (``inner``, ``left``, ``right``, ``full``); for an outer side ``pairs[i]`` gives the
    ``(__s, __o)`` sequence numbers of this side's and the other side's rows the micro-batch
    matched on the ON condition alone (as SQL decides outer rows), and ``outer[i]`` is the
    statement as written over side ``i``'s rows that can match no more (``$EXPIRED``, a
    condition) and were never matched, the other side empty: the NULL-extended rows.
    ``expired[i]`` says which buffered rows of side ``i`` no future row of the other side can
    match once watermark ``$WM`` holds ('' while the ON condition bounds no time difference:
    the rows are then kept to the end of the input). ``bound`` describes that bound for EXPLAIN.
    """

    kind: str
    delta: tuple[str, str]
    pairs: tuple[str, str]
    outer: tuple[str, str]
    expired: tuple[str, str]
    on_time: str
    bound: str
    why: tuple[str, ...] = ()
    # ``lo <= b.t - a.t <= hi`` in microseconds (None: unbounded), from the ON condition.
    interval: tuple[int | None, int | None] = (None, None)
    # The equi-join keys of each side as SQL over its rows (``__in``), pairwise equal in ON:
    # rows whose keys hash alike meet in one V2 worker. Empty when ON has no such equality.
    keys: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
