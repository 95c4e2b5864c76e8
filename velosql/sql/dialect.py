"""The Velosql dialect: DuckDB plus Velostream's streaming clauses.

Everything DuckDB's sqlglot dialect parses still parses; on top of it::

    CREATE [OR REPLACE] STREAM|TABLE [IF NOT EXISTS] name AS
    SELECT expr [[AS] alias] [PRIMARY KEY], … FROM … [WHERE …] [GROUP BY …] [HAVING …]
    [WINDOW TUMBLING|SLIDING|HOPPING|SESSION([time_column,] size[, advance])]
    [ORDER BY …] [LIMIT …]
    [EMIT CHANGES|FINAL]
    [WITH ('key' = value, bare.key = value, …)]

and ``OVER (ROWS WINDOW BUFFER n ROWS PARTITION BY … ORDER BY …)``, which becomes an ordinary
``exp.Window`` whose ``meta["buffer_rows"]`` is n. Window sizes are durations as
:mod:`velosql.durations` reads them (``1m``, ``30s``, ``500ms``, ``'10 minutes'``, a bare number
of seconds or an ``INTERVAL``); they parse to an ``exp.Interval`` (``INTERVAL '1' MINUTE`` when
they have one unit) and :func:`interval_us` turns one into microseconds.

The streaming nodes are :class:`StreamingCreate`, :class:`StreamWindow` (stored on the Select under
the ``stream_window`` key, so the DuckDB generator never prints it), :class:`Emit` and
:class:`KeyColumn`. ``CREATE TABLE … AS SELECT`` without any streaming clause stays an ``exp.Create``.
"""

from __future__ import annotations

import re

from sqlglot import exp
from sqlglot.dialects.duckdb import DuckDB
from sqlglot.tokens import TokenType

from ..durations import EXAMPLES, parse_duration, unit_name

# The window kinds as written → WindowSpec.kind (HOPPING is another name for SLIDING).
WINDOW_KINDS = {"TUMBLING": "tumbling", "SLIDING": "sliding", "HOPPING": "sliding", "SESSION": "session"}
EMIT_MODES = ("CHANGES", "FINAL")

_ONE_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")  # '30s', '10 minutes', '5'
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*$")


def interval_us(node: exp.Expr | None) -> int | None:
    """Microseconds of an ``exp.Interval`` such as ``INTERVAL '5' MINUTE`` or ``INTERVAL '1 hour
    30 minutes'``; None when it is not an interval or not a duration (see :mod:`velosql.durations`)."""
    if not isinstance(node, exp.Interval) or not isinstance(node.this, exp.Literal):
        return None
    try:
        return parse_duration(f"{node.this.name} {node.text('unit')}")
    except ValueError:
        return None


class StreamWindow(exp.Expression):
    """``WINDOW kind([time_column,] size[, advance])``; ``this`` is the kind as written, upper-case."""

    arg_types = {"this": True, "time_column": False, "size": True, "advance": False}


class Emit(exp.Expression):
    """``EMIT CHANGES`` or ``EMIT FINAL``; ``this`` is ``CHANGES`` or ``FINAL``."""


class KeyColumn(exp.Expression):
    """A projection marked ``PRIMARY KEY``; ``this`` is the projection (possibly aliased)."""


class StreamingCreate(exp.Expression):
    """``CREATE STREAM|TABLE name AS <query> [EMIT …] [WITH (…)]``.

    ``kind`` is ``STREAM`` or ``TABLE``; ``properties`` an ``exp.Properties`` of ``exp.Property``
    nodes whose ``this`` is the key (a string literal when quoted, else a Var) and whose
    ``meta["start"]`` is the key's offset in the SQL text.
    """

    arg_types = {
        "this": True,
        "kind": True,
        "expression": True,
        "emit": False,
        "properties": False,
        "replace": False,
        "exists": False,
    }


def _streaming_create_sql(self, e: StreamingCreate) -> str:
    replace = " OR REPLACE" if e.args.get("replace") else ""
    exists = " IF NOT EXISTS" if e.args.get("exists") else ""
    sql = f"CREATE{replace} {e.text('kind')}{exists} {self.sql(e, 'this')} AS {self.sql(e, 'expression')}"
    if e.args.get("emit"):
        sql += self.seg(self.sql(e, "emit"))
    properties = e.args.get("properties")
    if properties:
        pairs = (f"{self.sql(p, 'this')} = {self.sql(p, 'value')}" for p in properties.expressions)
        sql += self.seg(f"WITH ({', '.join(pairs)})")
    return sql


def _has_buffer(query: exp.Expr) -> bool:
    return any("buffer_rows" in w.meta for w in query.find_all(exp.Window))


def _stream_window_sql(self, e: StreamWindow) -> str:
    args = self.format_args(e.args.get("time_column"), e.args.get("size"), e.args.get("advance"))
    return f"WINDOW {e.name}({args})"


class Velosql(DuckDB):
    """DuckDB's dialect extended with Velostream's streaming grammar (see the module docstring)."""

    class Tokenizer(DuckDB.Tokenizer):
        # DuckDB's tokenizer turns the rest of EXPLAIN/CALL/EXECUTE/… into one opaque string token
        # with inexact offsets; we need real tokens to see `EXPLAIN CREATE STREAM …` and to cut
        # every statement's exact text. The parser still reads these statements as commands.
        COMMANDS: set[TokenType] = set()

    class Parser(DuckDB.Parser):
        STATEMENT_PARSERS = {
            **{
                command: lambda self: self._parse_as_command(self._prev)
                for command in DuckDB.Tokenizer.COMMANDS
            },
            **DuckDB.Parser.STATEMENT_PARSERS,
        }

        QUERY_MODIFIER_PARSERS = {
            **DuckDB.Parser.QUERY_MODIFIER_PARSERS,
            TokenType.WINDOW: lambda self: (
                ("stream_window", self._parse_stream_window())
                if self._at_stream_window()
                else ("windows", self._parse_window_clause())
            ),
        }

        _buffer_rows: int | None = None

        # ---- lookahead helpers -------------------------------------------------------------------
        def _found(self) -> str:
            return f"found {self._curr.text!r}" if self._curr else "found the end of the statement"

        def _at_stream_window(self) -> bool:
            """``WINDOW <kind> (`` — as opposed to a named window ``WINDOW w AS (…)``."""
            return (
                self._curr.token_type == TokenType.WINDOW
                and self._index + 2 < len(self._tokens)
                and self._tokens[self._index + 2].token_type == TokenType.L_PAREN
            )

        def _at_emit(self) -> bool:
            """``EMIT`` followed by a word or nothing: never an implicit alias (``FROM t EMIT CHANGES``)."""
            return (
                bool(self._curr)
                and self._curr.text.upper() == "EMIT"
                and (not self._next or self._next.token_type == TokenType.VAR)
            )

        # ---- narrow overrides: keep EMIT / WINDOW kind( / trailing WITH out of DuckDB's grammar --
        def _can_parse_named_window(self) -> bool:
            return super()._can_parse_named_window() or self._at_stream_window()

        def _parse_table_alias(self, alias_tokens=None):
            if self._at_emit():
                return None
            return super()._parse_table_alias(alias_tokens=alias_tokens)

        def _parse_alias(self, this, explicit=False):
            if self._at_emit():
                return this
            return super()._parse_alias(this, explicit=explicit)

        def _parse_group(self, skip_group_by_token: bool = False):
            # `GROUP BY ALL EMIT FINAL`: DuckDB's grammar would read EMIT as a grouping expression.
            after_all = self._index + 2
            if (
                not skip_group_by_token
                and self._match(TokenType.GROUP_BY, advance=False)
                and self._next
                and self._next.token_type == TokenType.ALL
                and after_all < len(self._tokens)
                and self._tokens[after_all].text.upper() == "EMIT"
            ):
                self._advance(2)
                return self.expression(exp.Group(all=True))
            return super()._parse_group(skip_group_by_token)

        def _parse_table_hints(self):
            # DuckDB has no table hints; `FROM t WITH (…)` is our trailing property list.
            if self._match(TokenType.WITH, advance=False):
                return None
            return super()._parse_table_hints()

        # ---- PRIMARY KEY after a projection ------------------------------------------------------
        def _parse_projections(self):
            return self._parse_csv(self._parse_projection), None

        def _parse_projection(self) -> exp.Expr | None:
            this = self._parse_expression()
            if this is not None and self._match(TokenType.PRIMARY_KEY):
                start = self._prev.start
                this = self.expression(KeyColumn(this=self._parse_alias(this)))
                this.meta["start"] = start
            return this

        # ---- OVER (ROWS WINDOW BUFFER n ROWS …) --------------------------------------------------
        def _parse_window(self, this, alias=False):
            outer, self._buffer_rows = self._buffer_rows, None
            window = super()._parse_window(this, alias=alias)
            if self._buffer_rows is not None and isinstance(window, exp.Window):
                window.meta["buffer_rows"] = self._buffer_rows
            self._buffer_rows = outer
            return window

        def _parse_partition_and_order(self):
            if self._match_text_seq("ROWS", "WINDOW", "BUFFER"):
                count = self._curr
                if not self._match(TokenType.NUMBER) or not count.text.isdigit():
                    self.raise_error(
                        f"expected a number of rows after ROWS WINDOW BUFFER, {self._found()}", count
                    )
                if not self._match(TokenType.ROWS):
                    self.raise_error(f"expected ROWS after ROWS WINDOW BUFFER {count.text}, {self._found()}")
                self._buffer_rows = int(count.text)
            return super()._parse_partition_and_order()

        # ---- WINDOW TUMBLING|SLIDING|HOPPING|SESSION(…) ------------------------------------------
        def _parse_stream_window(self) -> StreamWindow:
            self._match(TokenType.WINDOW)
            kind_token = self._curr
            kind = kind_token.text.upper()
            if kind not in WINDOW_KINDS:
                self.raise_error(
                    "unknown window kind: expected TUMBLING, SLIDING, HOPPING or SESSION, "
                    f"found {kind_token.text!r}",
                    kind_token,
                )
            self._advance(2)  # the kind and "("

            time_column = None
            if self._curr and self._curr.token_type not in (
                TokenType.NUMBER,
                TokenType.STRING,
                TokenType.INTERVAL,
            ):
                index = self._index
                time_column = self._parse_column()
                if not (time_column and self._match(TokenType.COMMA)):
                    time_column = None
                    self._retreat(index)

            what = "session gap" if kind == "SESSION" else "window size"
            size = self._parse_duration(what, zero=kind == "SESSION")
            advance = None
            if kind in ("SLIDING", "HOPPING"):
                if not self._match(TokenType.COMMA):
                    self.raise_error(
                        f"expected ',' and the advance after the size of a {kind} window, {self._found()}"
                    )
                advance = self._parse_duration("window advance")
            if not self._match(TokenType.R_PAREN):
                self.raise_error(f"expected ')' to close WINDOW {kind}(…), {self._found()}")

            window = self.expression(
                StreamWindow(this=kind, time_column=time_column, size=size, advance=advance)
            )
            window.meta["start"] = kind_token.start
            return window

        def _parse_duration(self, what: str, zero: bool = False) -> exp.Interval:
            """``1m``, ``500ms``, ``5`` (seconds), ``'30s'``, ``'1 hour 30 minutes'`` or ``INTERVAL …``
            → an Interval (canonical ``INTERVAL 'n' UNIT`` when it has one unit); ``what`` names it in
            errors (``window size``); ``zero`` allows a zero duration (a session gap)."""
            token = self._curr
            interval: exp.Expr | None = None
            if self._match(TokenType.INTERVAL, advance=False):
                interval = self._parse_interval()
            elif self._match(TokenType.NUMBER):
                unit = "SECOND"
                if self._curr and self._curr.token_type == TokenType.VAR and unit_name(self._curr.text):
                    unit = unit_name(self._advance_any().text)
                interval = exp.Interval(this=exp.Literal.string(token.text), unit=exp.var(unit))
            elif self._match(TokenType.STRING):
                m = _ONE_PART.fullmatch(token.text)
                unit = unit_name(m.group(2) or "s") if m else None
                if unit:
                    interval = exp.Interval(this=exp.Literal.string(m.group(1)), unit=exp.var(unit))
                else:
                    interval = exp.Interval(this=exp.Literal.string(token.text))
            us = interval_us(interval)
            if us is None:
                written = self._find_sql(token, self._prev) if interval else token and token.text
                found = f"found {written!r}" if written else "found the end of the statement"
                self.raise_error(f"expected a {what} such as {EXAMPLES}, {found}", token)
            if us == 0 and not zero:
                written = self._find_sql(token, self._prev)
                self.raise_error(f"a {what} must be greater than zero, found {written!r}", token)
            return interval

        # ---- CREATE STREAM|TABLE … AS SELECT … [EMIT …] [WITH (…)] ------------------------------
        def _parse_create(self):
            index = self._index
            replace = self._match_pair(TokenType.OR, TokenType.REPLACE)
            if self._match_text_seq("STREAM"):
                kind = "STREAM"
            elif self._match(TokenType.TABLE):
                kind = "TABLE"
            else:
                self._retreat(index)
                return super()._parse_create()
            exists = self._match_text_seq("IF", "NOT", "EXISTS")
            name_token = self._curr
            name = None if self._match(TokenType.ALIAS, advance=False) else self._parse_table_parts()
            if not name or not name.name:
                self.raise_error(f"expected the name of the {kind.lower()}, {self._found()}", name_token)
            if not self._match(TokenType.ALIAS):
                if kind == "TABLE":
                    self._retreat(index)
                    return super()._parse_create()
                self.raise_error(f"expected AS after CREATE STREAM {name.sql()}, {self._found()}")

            query_token = self._curr
            query = self._parse_select(nested=True)
            if not isinstance(query, exp.Query):
                self.raise_error(f"expected a SELECT after AS, {self._found()}", query_token)
            emit = self._parse_emit()
            properties = self._parse_stream_properties()
            if self._curr:
                expected = [c for c, seen in (("EMIT", emit), ("WITH (…)", properties)) if not seen]
                expected = ", ".join(expected) + " or " if expected else ""
                self.raise_error(f"expected {expected}the end of the statement, {self._found()}")

            streaming = emit or properties or query.find(StreamWindow, KeyColumn)
            if kind == "TABLE" and not streaming and not _has_buffer(query):
                return self.expression(
                    exp.Create(this=name, kind=kind, expression=query, replace=replace, exists=exists)
                )
            return self.expression(
                StreamingCreate(
                    this=name,
                    kind=kind,
                    expression=query,
                    emit=emit,
                    properties=properties,
                    replace=replace or None,
                    exists=exists or None,
                )
            )

        def _parse_emit(self) -> Emit | None:
            if not self._match_text_seq("EMIT"):
                return None
            if not self._match_texts(EMIT_MODES):
                self.raise_error(f"expected CHANGES or FINAL after EMIT, {self._found()}")
            return self.expression(Emit(this=self._prev.text.upper()))

        def _parse_stream_properties(self) -> exp.Properties | None:
            if not self._match(TokenType.WITH):
                return None
            if not self._match(TokenType.L_PAREN):
                self.raise_error(f"expected '(' after WITH, {self._found()}")
            properties: list[exp.Expr] = []
            while not self._match(TokenType.R_PAREN):
                key_token = self._curr
                key = self._parse_property_key()
                if not self._match(TokenType.EQ):
                    self.raise_error(f"expected '=' after the WITH key {key.name!r}, {self._found()}")
                prop = self.expression(exp.Property(this=key, value=self._parse_property_value(key)))
                prop.meta["start"] = key_token.start
                properties.append(prop)
                if not self._match(TokenType.COMMA) and not self._match(TokenType.R_PAREN, advance=False):
                    self.raise_error(f"expected ',' or ')' in WITH (…), {self._found()}")
            return exp.Properties(expressions=properties)  # not validated: `WITH ()` is allowed

        def _parse_property_key(self) -> exp.Expr:
            if self._match(TokenType.STRING):
                return exp.Literal.string(self._prev.text.lower())
            parts = [self._parse_key_part()]
            while self._match(TokenType.DOT):
                parts.append(self._parse_key_part())
            return exp.var(".".join(parts))

        def _parse_key_part(self) -> str:
            token = self._curr
            if token and (token.token_type == TokenType.IDENTIFIER or _WORD.match(token.text)):
                self._advance()
                return token.text.lower()
            self.raise_error(f"expected a WITH key such as 'source.type' or processor, {self._found()}")

        def _parse_property_value(self, key: exp.Expr) -> exp.Expr:
            token = self._curr
            if self._match(TokenType.STRING):
                return exp.Literal.string(token.text)
            if self._match_set((TokenType.TRUE, TokenType.FALSE)):
                return exp.Boolean(this=token.token_type == TokenType.TRUE)
            negative = self._match(TokenType.DASH)
            if self._match(TokenType.NUMBER):
                return exp.Literal(this=("-" if negative else "") + self._prev.text, is_string=False)
            if not negative and self._curr and _WORD.match(self._curr.text):
                return exp.Literal.string(self._advance_any(ignore_reserved=True).text)
            self.raise_error(
                f"expected a string, number, true or false as the value of {key.name!r}, {self._found()}"
            )

    class Generator(DuckDB.Generator):
        TRANSFORMS = {
            **DuckDB.Generator.TRANSFORMS,
            StreamingCreate: _streaming_create_sql,
            StreamWindow: _stream_window_sql,
            Emit: lambda self, e: f"EMIT {e.name}",
            KeyColumn: lambda self, e: f"{self.sql(e, 'this')} PRIMARY KEY",
        }

        AFTER_HAVING_MODIFIER_TRANSFORMS = {
            "stream_window": lambda self, e: (
                self.seg(self.sql(e, "stream_window")) if e.args.get("stream_window") else ""
            ),
            **DuckDB.Generator.AFTER_HAVING_MODIFIER_TRANSFORMS,
        }

        def partition_by_sql(self, expression):
            sql = super().partition_by_sql(expression)
            rows = expression.meta.get("buffer_rows") if isinstance(expression, exp.Window) else None
            if rows is None:
                return sql
            return f"ROWS WINDOW BUFFER {rows} ROWS {sql}".rstrip()
