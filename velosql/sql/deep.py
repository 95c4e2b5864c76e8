"""Room for sqlglot's recursion, so that expressions nest as deep as DuckDB lets them.

sqlglot parses, rewrites and generates SQL recursively: each level of nesting (a function call, a
parenthesis, a CASE) costs about 25 Python frames, so an expression nested 40 deep exceeds
Python's default limit of 1000 frames, while DuckDB accepts 1000 levels (its
``max_expression_depth``). :func:`deep_call` runs a step (parsing a statement, planning it) as it
is, and only when that hits the limit runs it again in a thread with a large stack while the
interpreter's recursion limit fits :data:`MAX_LEVELS` levels; deeper still, it raises a
:class:`~velosql.errors.SqlError` at the statement. Retrying is safe because the steps it wraps
build new objects and change none they are given.

The recursion limit is one setting of the whole interpreter: it is raised only while a deep step
runs and put back when the last one ends.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import TypeVar

from ..errors import Location, SqlError

T = TypeVar("T")

FRAMES_PER_LEVEL = 25  # measured: nested function calls and parentheses; CASE takes 19
MAX_LEVELS = 4000
# Python 3.11+ keeps Python frames off the C stack, but C-level recursion (and 3.14's stack-based
# limit) still needs room; the thread reserves this much address space, touched only as deep as
# the recursion goes (250,000 frames ran in 64 MiB here).
STACK_BYTES = 256 * 1024 * 1024

_lock = threading.Lock()
_running = 0
_saved_limit = 0
_inside = threading.local()


def deep_call(fn: Callable[..., T], *args: object, where: Location | None, **kwargs: object) -> T:
    """``fn(*args, **kwargs)``, with room for :data:`MAX_LEVELS` levels of nesting when it needs it.

    Raises:
        SqlError: at ``where``, when ``fn`` recurses deeper than that.
    """
    if getattr(_inside, "deep", False):
        return fn(*args, **kwargs)
    try:
        return fn(*args, **kwargs)
    except RecursionError:
        pass
    outcome: dict[str, object] = {}

    def run() -> None:
        _inside.deep = True
        try:
            outcome["value"] = fn(*args, **kwargs)
        except RecursionError:
            outcome["error"] = SqlError(
                f"an expression is nested too deeply: velosql parses and plans about {MAX_LEVELS} "
                "levels of nesting (DuckDB itself accepts 1000 unless SET max_expression_depth "
                "raises that)",
                where,
            )
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    _enter()
    try:
        thread = _start(run)
        thread.join()
    finally:
        _leave()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def _start(target: Callable[[], None]) -> threading.Thread:
    with _lock:  # the stack size is a process-wide setting for threads created next
        previous = threading.stack_size(STACK_BYTES)
        try:
            thread = threading.Thread(target=target, name="velosql-deep", daemon=True)
            thread.start()
        finally:
            threading.stack_size(previous)
    return thread


def _enter() -> None:
    global _running, _saved_limit
    with _lock:
        if _running == 0:
            _saved_limit = sys.getrecursionlimit()
            sys.setrecursionlimit(max(_saved_limit, MAX_LEVELS * FRAMES_PER_LEVEL))
        _running += 1


def _leave() -> None:
    global _running
    with _lock:
        _running -= 1
        if _running == 0:
            sys.setrecursionlimit(_saved_limit)
