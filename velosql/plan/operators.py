"""The frozen specs of the operators the planner chooses for statements of no specialised shape.

A spec holds everything its operator needs as plain SQL and values; the runtime builds the
operator from it (``velosql.runtime.operators.build``) and never parses SQL. ``$WS`` and ``$WE``
in a spec's SQL stand for a window's bounds (microseconds), filled in when the window closes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..sql.statements import WindowSpec


@dataclass(frozen=True)
class GeneralSpec:
    """The user's whole SELECT, run over the on-time rows of each window the watermark closes, or
    once over every row at the end of a bounded input (no window).

    ``select`` reads the buffered rows of one window through ``__gbuf`` (with ``$WS``/``$WE``) or
    one session through ``__gsess``;
    ``why`` names the constructs that brought the statement here, for EXPLAIN. Windowed:
    ``on_time`` is the condition a micro-batch's rows (``__in``) are kept on, ``starts`` gives
    the start ``__ws`` of every window holding a buffered row, and ``evict`` forgets the rows no
    window open after watermark ``$WM`` holds.
    """

    select: str
    window: WindowSpec | None
    why: tuple[str, ...]
    on_time: str = "TRUE"
    starts: str = ""
    evict: str = ""
    # SESSION windows: ``close`` numbers the sessions watermark ``$WM`` closes (``__sn`` from 1,
    # in ``__gsess``, each session's rows in arrival order) and ``keep`` leaves the others in
    # ``__gbuf``; ``select`` then reads session ``$SN``.
    close: str = ""
    keep: str = ""


@dataclass(frozen=True)
class DistinctSpec:
    """``SELECT DISTINCT`` over a stateless body: the first occurrence of each distinct row passes.

    ``rows`` is the body without DISTINCT, over one micro-batch (``__in``); its output rows, in
    arrival order, are compared with the rows seen before.
    """

    rows: str
