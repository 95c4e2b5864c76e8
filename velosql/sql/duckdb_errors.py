"""DuckDB's errors about a statement, told at the place the user wrote, with DuckDB's hints.

DuckDB's message is a first line (``Binder Error: Referenced column "prize" not found in FROM
clause!``), hint lines (``Candidate bindings: "price"``, ``Did you mean "sum"?``) and sometimes a
``LINE n: …`` context with a caret under the offending place. For a streaming statement DuckDB ran
SQL that velosql generated, so that context and the internal names in it (``__in``, ``__seq``)
mean nothing to the user: :func:`duckdb_error` keeps the first line and the hints, drops the
context and internal names, and finds the name DuckDB complains about in the statement as the
user typed it. For SQL DuckDB ran as written, the caret itself gives the place.
"""

from __future__ import annotations

import re

from sqlglot.errors import TokenError
from sqlglot.tokens import TokenType

from ..errors import Location, SqlError
from .dialect import Velosql

# The name a message is about, in the forms DuckDB 2.0 writes them.
_NAMED = tuple(
    re.compile(p)
    for p in (
        r'Referenced column "([^"]+)" not found',
        r'does not have a column named "([^"]+)"',
        r'Referenced table "([^"]+)" not found',
        r'(?:Scalar|Table|Aggregate) Function with name "?([^"\s]+?)"? does not exist',
        r'Table with name "?([^"\s]+?)"? does not exist',
        r'column "?([^"\s]+?)"? must appear in the GROUP BY',
    )
)
_CONTEXT = re.compile(r"^LINE (\d+): ")
_INTERNAL = re.compile(r'"(?:[^"]*\.)?__\w*"')  # "__seq", "t.__et": columns velosql adds


def duckdb_message(exc: BaseException) -> str:
    """DuckDB's first line and its hints on one line, without the context of the SQL it ran."""
    first, hints, _ = _split(str(exc))
    return " ".join([first or type(exc).__name__, *hints])


def duckdb_error(
    exc: BaseException, text: str, location: Location | None, *, as_written: bool = False
) -> SqlError:
    """A :class:`SqlError` for DuckDB's ``exc`` about the statement ``text`` found at ``location``.

    ``as_written``: DuckDB ran ``text`` itself (not SQL generated from it), so the caret of its
    ``LINE n:`` context points into ``text``. Else the place is the first occurrence of the name
    the message is about (a column, function or table), and the statement's start without one.
    """
    first, hints, caret = _split(str(exc))
    message = " ".join([first or type(exc).__name__, *hints])
    if location is None:
        return SqlError(message)
    offset = _caret_offset(text, caret) if as_written else None
    if offset is None:
        offset = _name_offset(text, first)
    return SqlError(message, _at(location, text, offset or 0))


def _split(raw: str) -> tuple[str, list[str], tuple[int, str, int] | None]:
    """(first line, hint lines, (line number, context text, caret column) of a LINE context)."""
    lines = raw.strip().splitlines()
    first, hints, caret = (lines[0].strip() if lines else ""), [], None
    i = 1
    while i < len(lines):
        context = _CONTEXT.match(lines[i])
        if context:
            under = lines[i + 1] if i + 1 < len(lines) else ""
            if "^" in under:
                caret = (int(context.group(1)), lines[i][context.end() :], under.index("^") - context.end())
            i += 2
            continue
        hint = _without_internal_names(lines[i].strip())
        if hint:
            hints.append(hint)
        i += 1
    return first, hints, caret


def _without_internal_names(hint: str) -> str:
    """``Candidate bindings: "__seq", "price"`` → ``Candidate bindings: "price"``; "" if none is left."""
    head, sep, names = hint.partition(":")
    quoted = re.findall(r'"[^"]*"', names)
    if not sep or not quoted:
        return hint
    kept = [q for q in quoted if not _INTERNAL.fullmatch(q)]
    return f"{head}: {', '.join(kept)}" if kept else ""


def _caret_offset(text: str, caret: tuple[int, str, int] | None) -> int | None:
    """Where the caret points in ``text``, when the context line is that line of ``text``."""
    if caret is None:
        return None
    number, shown, column = caret
    lines = text.split("\n")
    if not 1 <= number <= len(lines) or lines[number - 1].rstrip() != shown.rstrip():
        return None  # DuckDB shortened the line, or ran other text
    return sum(len(line) + 1 for line in lines[: number - 1]) + column


def _name_offset(text: str, first_line: str) -> int | None:
    """The offset in ``text`` of the first unquoted-string token naming what ``first_line`` names."""
    name = next((m.group(1) for p in _NAMED if (m := p.search(first_line))), None)
    if name is None:
        return None
    wanted = name.rsplit(".", 1)[-1].lower()
    try:
        tokens = Velosql().tokenize(text)
    except TokenError:
        return None
    return next(
        (t.start for t in tokens if t.token_type != TokenType.STRING and t.text.lower() == wanted),
        None,
    )


def _at(location: Location, text: str, offset: int) -> Location:
    """The place of ``text[offset]``, ``text`` being found at ``location``."""
    before = text[:offset]
    line = before.count("\n")
    col = location.col + offset if line == 0 else offset - before.rfind("\n")
    return Location(location.file, location.line + line, col)
