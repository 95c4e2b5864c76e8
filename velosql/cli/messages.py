"""Error messages of the command line: one message, DuckDB's hints kept, a caret under the place.

A statement fails with a velosql error (located at a line and column of the script) or a DuckDB
error. DuckDB's text is kept whole except its ``LINE n:`` excerpt, which counts lines from the
start of the statement; the excerpt is drawn again from the script as it was typed or written, so
its line number is the file's (or the input's). DuckDB names no place for binder and catalog errors;
the caret then goes under the first mention of the name they quote, when the statement has one.

    Binder Error: Referenced column "prise" not found in FROM clause!
    Candidate bindings: "price"

    LINE 1: SELECT prise FROM trades;
                   ^
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import duckdb

from ..errors import Location, SqlError, VelosqlError

_EXCERPT = re.compile(r"^LINE (\d+): (.*)\n( *)\^+", re.MULTILINE)
_QUOTED = (re.compile(r'"([^"]+)"'), re.compile(r"with name (\w+) does not exist"))


@dataclass(frozen=True)
class Place:
    """A 1-based line and column of the script the statement came from."""

    line: int
    col: int


def describe(exc: BaseException, script: str, start: Location | None) -> tuple[str, Place | None]:
    """The message of ``exc`` (without an excerpt) and where in ``script`` it points, if known.

    ``start`` is where the failing statement starts in ``script`` (None: not known).
    """
    if isinstance(exc, duckdb.Error):
        return _duckdb(str(exc).strip(), script, start)
    if isinstance(exc, SqlError):
        where = exc.location
        return exc.message, Place(where.line, where.col) if where is not None else None
    if isinstance(exc, VelosqlError):
        return str(exc), None
    return f"{type(exc).__name__}: {exc}", None


def excerpt(script: str, place: Place) -> str:
    """``LINE n: <the line>`` and a caret under the column, DuckDB's layout."""
    lines = script.splitlines() or [""]
    line = lines[min(place.line, len(lines)) - 1].expandtabs(1)
    head = f"LINE {place.line}: "
    return f"{head}{line}\n{' ' * (len(head) + place.col - 1)}^"


def format_error(exc: BaseException, script: str, start: Location | None, *, file: str | None = None) -> str:
    """The whole message: ``[file:line:col: ]message``, hints, and the excerpt with its caret.

    Messages of the shell have no file; DuckDB's start with their category (``Parser Error:``),
    velosql's with ``Error:``.
    """
    message, place = describe(exc, script, start)
    if file is not None:
        head = f"{file}:{place.line}:{place.col}: {message}" if place else message  # it names its place
    elif isinstance(exc, duckdb.Error):
        head = message
    else:
        head = f"Error: {message}"
    if place is None:
        return head
    return f"{head}\n\n{excerpt(script, place)}"


def _duckdb(text: str, script: str, start: Location | None) -> tuple[str, Place | None]:
    found = _EXCERPT.search(text)
    message = _EXCERPT.sub("", text).strip() if found else text
    if start is None:
        return message, None
    statement = _statement_text(script, start)
    offset = _offset_from_excerpt(found, statement) if found else _offset_of_name(message, statement)
    if offset is None:
        return message, None
    return message, _place(start, statement, offset)


def _statement_text(script: str, start: Location) -> str:
    lines = script.splitlines(keepends=True)
    before = "".join(lines[: start.line - 1])
    return script[len(before) + start.col - 1 :]


def _offset_from_excerpt(found: re.Match, statement: str) -> int | None:
    """Where DuckDB's ``LINE n: text`` and caret point, as an offset into ``statement``."""
    number, shown, caret = (
        int(found.group(1)),
        found.group(2),
        len(found.group(3)) - len(f"LINE {found.group(1)}: "),
    )
    lines = statement.splitlines(keepends=True)
    if not 1 <= number <= len(lines):
        return None
    line = lines[number - 1]
    if shown.startswith("..."):  # DuckDB cut the start of a long line
        shown, caret = shown[3:], caret - 3
    shown = shown.removesuffix("...")
    at = line.find(shown) if shown else 0
    return sum(map(len, lines[: number - 1])) + max(at, 0) + max(caret, 0)


def _offset_of_name(message: str, statement: str) -> int | None:
    first = message.splitlines()[0] if message else ""
    for pattern in _QUOTED:
        for name in pattern.findall(first):
            hit = re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", statement, re.IGNORECASE)
            if hit:
                return hit.start()
    return None


def _place(start: Location, statement: str, offset: int) -> Place:
    before = statement[:offset]
    newlines = before.count("\n")
    if newlines == 0:
        return Place(start.line, start.col + offset)
    return Place(start.line + newlines, offset - before.rfind("\n"))
