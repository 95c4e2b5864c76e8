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
