"""Tab completion in the shell, fed from the live catalogue (litecli's and pgcli's way).

Words come from DuckDB itself (``duckdb_keywords()``, ``duckdb_functions()``, the tables, views
and columns of the database), from the running streams (their names and output columns), and
from the WITH options declared in :mod:`velosql.options`: inside ``WITH (…)`` a quoted
``'<name>.`` completes to the source and sink keys, and the value after ``'<key>' = '`` to the
key's allowed values. The database part is read again at each completion, so a table created a
moment ago completes; keywords and functions are read once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from prompt_toolkit.completion import Completer, Completion
from prompt_toolkit.document import Document

from .. import options, system

_WORD = re.compile(r"'?[\w.]*$")
_VALUE = re.compile(r"'([\w.]+)'\s*=\s*('?\w*)$")
_IN_WITH = re.compile(r"\bWITH\s*\((?:[^()]|\([^()]*\))*$", re.IGNORECASE | re.DOTALL)
_BOOLEAN = ("true", "false")


class SqlCompleter(Completer):
    """Completes SQL keywords, functions, tables, streams, columns and WITH keys and values.

    ``engine`` is called for the engine at each completion (``.open`` replaces it).
    """

    def __init__(self, engine: Callable[[], object]) -> None:
        self._engine = engine
        self._static: list[str] | None = None

    def get_completions(self, document: Document, complete_event) -> Iterable[Completion]:
        before = document.text_before_cursor
        value = _VALUE.search(before)
        if value and _IN_WITH.search(before):
            yield from _values(value.group(1), value.group(2))
            return
        word = _WORD.search(before).group(0)
        if word.startswith("'"):
            if _IN_WITH.search(before):
                yield from _with_keys(word)
            return
        if not word:
            return
        lower = word.lower()
        seen = set()
        for name in self._names():
            if name.lower().startswith(lower) and name.lower() != lower and name not in seen:
                seen.add(name)
                yield Completion(_cased(name, word), start_position=-len(word))

    def _names(self) -> list[str]:
        con = self._engine().con.cursor()
        try:
            if self._static is None:
                keywords = [
                    k.upper() for (k,) in con.sql("SELECT keyword_name FROM duckdb_keywords()").fetchall()
                ]
                functions = [
                    f
                    for (f,) in con.sql(
                        "SELECT DISTINCT function_name FROM duckdb_functions() ORDER BY 1"
                    ).fetchall()
                ]
                extra = ["STREAM", "STREAMS", "JOBS", "EMIT", "CHANGES", "FINAL", "TUMBLING", "SLIDING",
                         "SESSION", "TERMINATE", "WATERMARK"]  # fmt: skip
                self._static = sorted(set(keywords + extra)) + functions + options.names("job")
            tables = [
                n
                for (n,) in con.sql(
                    "SELECT table_name FROM duckdb_tables() UNION SELECT view_name FROM duckdb_views() "
                    "WHERE NOT internal ORDER BY 1"
                ).fetchall()
            ]
            columns = [
                c
                for (c,) in con.sql(
                    "SELECT DISTINCT column_name FROM duckdb_columns() WHERE NOT internal ORDER BY 1"
                ).fetchall()
            ]
        finally:
            con.close()
        streams, stream_columns = [], []
        for job in self._engine().jobs():
            streams.append(job.name)
            schema = getattr(job.executor, "out_schema", None)
            stream_columns += list(schema.names) if schema is not None else []
        # The system tables are temporary views of the engine's connection, which this cursor
        # does not see: their names and columns come from their declaration.
        system_names = [t.name for t in system.TABLES]
        system_columns = [c.name for t in system.TABLES for c in t.columns]
        return [*tables, *streams, *system_names, *columns, *stream_columns, *system_columns, *self._static]


def _cased(name: str, typed: str) -> str:
    """Keywords in the case the user types them (``sel`` → ``select``); names as they are."""
    if name.isupper() and typed.islower():
        return name.lower()
    return name


def _with_keys(word: str) -> Iterable[Completion]:
    """``'trades.ty`` → ``'trades.type'``; ``'water`` → ``'watermark.max_out_of_orderness'``."""
    body = word[1:]
    if "." in body:
        prefix, _, partial = body.partition(".")
        keys = sorted(set(options.names("source")) | set(options.names("sink")))
        for key in keys:
            if key.startswith(partial):
                yield Completion(f"'{prefix}.{key}'", start_position=-len(word))
    for key in options.names("job"):
        if key.startswith(body) and "." in key:
            yield Completion(f"'{key}'", start_position=-len(word))


def _values(key: str, partial: str) -> Iterable[Completion]:
    """The allowed values of a WITH key: its choices, or true/false."""
    opt = options.find("job", key)
    if opt is None and "." in key:
        name = key.split(".", 1)[1]
        opt = options.find("source", name) or options.find("sink", name)
    if opt is None:
        return
    choices = opt.choices or (_BOOLEAN if opt.kind == "bool" else ())
    for choice in choices:
        if choice.lower().startswith(partial.lstrip("'").lower()):
            yield Completion(f"'{choice}'", start_position=-len(partial))
