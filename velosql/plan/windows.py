"""Window assignment and lateness as DuckDB SQL over integer event time.

Event time travels as ``__et``: BIGINT microseconds since the epoch. A window is identified by its
start ``__ws`` (same unit). Positive modulo keeps negative (pre-1970) times in the right window.
"""

from __future__ import annotations

from ..sql.statements import WindowSpec

ET = "__et"
WM = "__wm"


def _floor(expr: str, step: int) -> str:
    """``expr`` rounded down to a multiple of ``step`` (also for negative values)."""
    return f"({expr} - ((({expr}) % {step}) + {step}) % {step})"


def tumbling_start(w: WindowSpec) -> str:
    return _floor(ET, w.size_us)


def nonnegative_variant(sql: str, w: WindowSpec | None) -> str:
    """``sql`` with the window start of ``__et`` as plain integer division, which DuckDB computes
    faster; only valid for a batch whose event times are all >= 0 (DuckDB's ``//`` truncates)."""
    if w is None or w.kind == "session":
        return sql
    step = w.size_us if w.kind == "tumbling" else w.advance_us
    return sql.replace(_floor(ET, step), f"(({ET} // {step}) * {step})")


def sliding_count(w: WindowSpec) -> int:
    """How many sliding windows can contain one instant (an upper bound; extra ones are filtered)."""
    return -(-w.size_us // w.advance_us)


def sliding_start(w: WindowSpec, j: str = "__sw.__j") -> str:
    """The start of the j-th sliding window containing ``__et`` (j = 0 is the latest)."""
    return f"({_floor(ET, w.advance_us)} - {j} * {w.advance_us})"


def min_end(w: WindowSpec) -> str:
    """The end of the earliest window that contains ``__et``: a row is late once that closed."""
    if w.kind == "tumbling":
        return f"({tumbling_start(w)} + {w.size_us})"
    if w.kind == "sliding":
        earliest = f"({_floor(f'({ET} - {w.size_us})', w.advance_us)} + {w.advance_us})"
        return f"({earliest} + {w.size_us})"
    raise ValueError(w.kind)


def late_condition(w: WindowSpec | None) -> str:
    """SQL that is true for a row that arrives after the watermark closed (one of) its window(s).

    Judged against ``__wm``, the watermark the row's predecessors had set. A session row is late
    when it is behind the watermark: it could otherwise join a session that was already emitted.
    """
    if w is None:
        return "FALSE"
    if w.kind == "session":
        return f"({ET} < {WM})"
    return f"({min_end(w)} <= {WM})"


def window_end(w: WindowSpec, start: str = "__ws") -> str:
    return f"({start} + {w.size_us})"


def sliding_relation(w: WindowSpec) -> tuple[str, str, str]:
    """(extra FROM, window start, extra WHERE) that give a row one result row per sliding window
    it lies in."""
    start = sliding_start(w)
    return (
        f", unnest(range(0, {sliding_count(w)})) AS __sw(__j)",
        start,
        f" AND {start} > {ET} - {w.size_us}",
    )


def starts_sql(w: WindowSpec, table: str) -> str:
    """The start ``__ws`` of every window that holds a row of ``table`` (tumbling or sliding)."""
    if w.kind == "tumbling":
        return f"SELECT DISTINCT {tumbling_start(w)} AS __ws FROM {table}"
    extra_from, start, extra_where = sliding_relation(w)
    return f"SELECT DISTINCT {start} AS __ws FROM {table}{extra_from} WHERE TRUE{extra_where}"


def last_end(w: WindowSpec) -> str:
    """The end of the latest window that contains ``__et``: a row is needed until that closed."""
    step = w.size_us if w.kind == "tumbling" else w.advance_us
    return f"({_floor(ET, step)} + {w.size_us})"


def min_window_end(w: WindowSpec, et: int) -> int:
    """``min_end`` in Python: the end of the earliest window that contains event time ``et``."""
    if w.kind == "tumbling":
        return et - et % w.size_us + w.size_us
    t = et - w.size_us
    return t - t % w.advance_us + w.advance_us + w.size_us


def next_window_end(w: WindowSpec, wm: int) -> int:
    """The earliest end after ``wm`` a window can have (ends are ``size`` past a multiple of the step)."""
    step = w.size_us if w.kind == "tumbling" else w.advance_us
    return ((wm - w.size_us) // step + 1) * step + w.size_us


def sessionize(rel: str, keys: list[str], gap: int) -> str:
    """Rows of ``rel`` with their session: ``__sid`` (numbered per key), its bounds ``__ss`` /
    ``__se`` in microseconds and ``_window_start`` / ``_window_end`` as TIMESTAMPs.

    A new session starts when the gap to the previous row of the same key (by event time, then
    arrival) is at least ``gap``; a session ends ``gap`` after its last row. A zero gap is read
    as the smallest one, 1 µs, for the split: a session then holds the rows of one event time,
    and ends at that time.
    """
    part = f"PARTITION BY {', '.join(keys)} " if keys else ""
    brk = (
        f"SELECT *, CASE WHEN {ET} - lag({ET}) OVER ({part}ORDER BY {ET}, __seq) >= {max(gap, 1)} "
        f"THEN 1 ELSE 0 END AS __brk FROM {rel}"
    )
    sid = f"SELECT *, sum(__brk) OVER ({part}ORDER BY {ET}, __seq ROWS UNBOUNDED PRECEDING) AS __sid FROM ({brk})"
    spart = f"PARTITION BY {', '.join([*keys, '__sid'])}"
    return (
        f"SELECT * EXCLUDE (__brk), min({ET}) OVER ({spart}) AS __ss, max({ET}) OVER ({spart}) + {gap} AS __se, "
        f"make_timestamp(min({ET}) OVER ({spart})) AS _window_start, "
        f"make_timestamp(max({ET}) OVER ({spart}) + {gap}) AS _window_end FROM ({sid})"
    )


def session_closed(w: WindowSpec) -> str:
    """SQL true for a sessionized row whose session watermark ``$WM`` has closed: no row that is
    not late can join it any more. With a zero gap a session ends at its last row, and a row of
    that very time is not late yet."""
    return "__se <= $WM" if w.size_us else "__se < $WM"
