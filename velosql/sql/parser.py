"""Split a SQL script into typed statements.

The script is tokenized once with the :class:`~velosql.sql.dialect.Velosql` tokenizer, so a ``;``
inside a string, identifier or comment never splits a statement, and every token keeps its offset
in the whole file. Each statement is then classified from its tokens:

* ``CREATE STREAM …`` and ``CREATE TABLE … AS SELECT`` with a streaming clause (WINDOW kind(…),
  EMIT, PRIMARY KEY, ROWS WINDOW BUFFER or a trailing ``WITH (…)``) are parsed strictly by the
  dialect into :class:`CreateStream`; ``EXPLAIN [ANALYZE]`` of one into :class:`Explain`;
* ``SHOW STREAMS``, ``SHOW JOBS``, ``DESCRIBE name``, ``DROP STREAM [IF EXISTS] name``,
  ``TERMINATE name``;
* anything else is DuckDB's: a :class:`DuckDBStatement` holding the original text, never parsed,
  so statements sqlglot does not understand (``INSTALL``, ``PRAGMA``, ``CREATE MACRO``…) still run.

Errors are :class:`~velosql.errors.SqlError` located at the offending token in the whole file.
"""

from __future__ import annotations

import bisect
import re

from sqlglot import exp
from sqlglot.errors import ErrorLevel, ParseError, TokenError
from sqlglot.tokens import Token, TokenType

from ..errors import Location, SqlError
from .deep import deep_call
from .dialect import WINDOW_KINDS, KeyColumn, StreamingCreate, StreamWindow, Velosql, interval_us
from .hints import diagnose
from .statements import (
    CreateStream,
    Describe,
    DropStream,
    DuckDBStatement,
    Explain,
    ShowJobs,
    ShowStreams,
    Statement,
    Terminate,
    WindowSpec,
)

_DIALECT = Velosql()
_ANNOTATION = re.compile(r"^[ \t]*--[ \t]*@([\w.\-]+)[ \t]*:?[ \t]*(.*?)[ \t]*$", re.MULTILINE)
_HEADER = re.compile(
    r"^[ \t]*--[ \t]*(SQL Application|Version|Description)[ \t]*:[ \t]*(.*?)[ \t]*$",
    re.MULTILINE | re.IGNORECASE,
)
_HEADER_KEYS = {"sql application": "app", "version": "version", "description": "description"}
_NAME_TOKENS = (TokenType.VAR, TokenType.IDENTIFIER)


def parse_script(text: str, file: str | None = None) -> list[Statement]:
    """Parse a script of ``;``-separated statements (the last ``;`` is optional).

    ``-- @name: value`` annotations (and ``-- SQL Application:``/``Version:``/``Description:``,
    stored as ``app``/``version``/``description``) written before the first statement apply to
    every streaming statement; those between two statements apply to the next one and win.
    """
    return _Script(text, file).statements()


def parse_one(text: str, file: str | None = None) -> Statement:
    """Parse exactly one statement."""
    statements = parse_script(text, file)
    if len(statements) != 1:
        raise SqlError(f"expected exactly one statement, found {len(statements)}", Location(file, 1, 1))
    return statements[0]


class _Script:
    def __init__(self, text: str, file: str | None) -> None:
        # A byte-order mark (Windows editors save UTF-8 with one) is not part of the first
        # statement; columns count from the character after it, as editors show them.
        self.text, self.file = text.removeprefix("\ufeff"), file
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", self.text)]
        self.tokens = self._tokenize()

    def location(self, offset: int) -> Location:
        line = bisect.bisect_right(self._line_starts, offset)
        return Location(self.file, line, offset - self._line_starts[line - 1] + 1)

    def _tokenize(self) -> list[Token]:
        tokenizer = _DIALECT.tokenizer()
        try:
            return tokenizer.tokenize(self.text)
        except TokenError:
            # It fails on an unterminated string, identifier or comment; its (private) scan state
            # tells where that token starts.
            start = getattr(getattr(tokenizer, "_core", tokenizer), "_start", 0)
            opening = self.text[start : start + 2]
            what = next((w for p, w in _UNTERMINATED if opening.startswith(p)), "token")
            snippet = self.text[start:].splitlines()[0][:20] if self.text[start:] else ""
            message = f"unterminated {what} starting with {snippet!r}"
            raise SqlError(message, self.location(start)) from None

    def statements(self) -> list[Statement]:
        header: dict[str, str] = {}
        result: list[Statement] = []
        gap_start = 0
        chunk: list[Token] = []
        for token in [*self.tokens, None]:
            if token is not None and token.token_type != TokenType.SEMICOLON:
                chunk.append(token)
                continue
            if chunk:
                own = _annotations(self.text[gap_start : chunk[0].start])
                if not result:
                    header = own
                result.append(self._statement(chunk, {**header, **own}))
            if token is not None:
                gap_start = token.end + 1
            chunk = []
        return result

    # ---- classification ---------------------------------------------------------------------------
    def _statement(self, tokens: list[Token], annotations: dict[str, str]) -> Statement:
        text = self.text[tokens[0].start : tokens[-1].end + 1]
        where = self.location(tokens[0].start)
        words = [t.text.upper() for t in tokens[:4]]

        if _is_streaming_create(tokens):
            return self._create_stream(tokens, annotations)
        if words[0] == "EXPLAIN":
            analyze = len(tokens) > 1 and words[1] == "ANALYZE"
            inner = tokens[1 + analyze :]
            if inner and _is_streaming_create(inner):
                statement = self._create_stream(inner, annotations)
                return Explain(text, where, statement=statement, analyze=analyze)
        if words[:2] == ["SHOW", "STREAMS"] and len(tokens) == 2:
            return ShowStreams(text, where)
        if words[:2] == ["SHOW", "JOBS"] and len(tokens) == 2:
            return ShowJobs(text, where)
        if words[0] in ("DESCRIBE", "DESC"):
            rest = tokens[2:] if words[1:2] == ["STREAM"] else tokens[1:]
            if len(rest) == 1 and (rest[0].token_type in _NAME_TOKENS or rest[0].text.isidentifier()):
                return Describe(text, where, name=rest[0].text)
        if words[:2] == ["DROP", "STREAM"]:
            return self._drop_stream(tokens, text, where)
        if words[0] == "TERMINATE":
            return self._terminate(tokens, text, where)
        return DuckDBStatement(text, where)

    def _drop_stream(self, tokens: list[Token], text: str, where: Location) -> DropStream:
        if_exists = [t.text.upper() for t in tokens[2:4]] == ["IF", "EXISTS"]
        rest = tokens[2 + 2 * if_exists :]
        if len(rest) != 1 or not (rest[0].token_type in _NAME_TOKENS or rest[0].text.isidentifier()):
            bad = rest[1] if len(rest) > 1 else (rest[0] if rest else tokens[-1])
            found = f"found {bad.text!r}" if rest else "found the end of the statement"
            raise SqlError(f"expected DROP STREAM [IF EXISTS] <name>, {found}", self.location(bad.start))
        return DropStream(text, where, name=rest[0].text, if_exists=if_exists)

    def _terminate(self, tokens: list[Token], text: str, where: Location) -> Terminate:
        rest = tokens[1:]
        if len(rest) != 1 or not (rest[0].token_type in _NAME_TOKENS or rest[0].text.isidentifier()):
            bad = rest[1] if len(rest) > 1 else tokens[-1]
            found = f"found {bad.text!r}" if rest else "found the end of the statement"
            raise SqlError(f"expected TERMINATE <name>, {found}", self.location(bad.start))
        return Terminate(text, where, name=rest[0].text)

    # ---- CREATE STREAM ----------------------------------------------------------------------------
    def _create_stream(self, tokens: list[Token], annotations: dict[str, str]) -> CreateStream:
        where = self.location(tokens[0].start)
        return deep_call(self._parse_create_stream, tokens, annotations, where=where)

    def _parse_create_stream(self, tokens: list[Token], annotations: dict[str, str]) -> CreateStream:
        tree = self._parse(tokens)
        if not isinstance(tree, StreamingCreate):
            raise SqlError(
                "expected a streaming CREATE STREAM|TABLE … AS SELECT", self.location(tokens[0].start)
            )
        select = tree.expression
        while isinstance(select, exp.Subquery) and not select.alias:
            select = select.this  # CREATE STREAM s AS (SELECT …)
        if not isinstance(select, (exp.Select, exp.SetOperation)):
            raise SqlError("expected a SELECT after AS", self.location(tokens[0].start))
        select.pop()  # the planner gets a root query, detached from the CREATE, without comments
        for node in select.walk():
            node.comments = None
        # A set operation's WINDOW is written after its last SELECT, its PRIMARY KEY in its first.
        last = first = select
        while isinstance(last, exp.SetOperation):
            last = last.expression
        while isinstance(first, exp.SetOperation):
            first = first.this
        window = self._window(last.args.get("stream_window"))
        last.set("stream_window", None)

        primary_key = []
        for projection in first.expressions:
            if isinstance(projection, KeyColumn):
                primary_key.append(projection.this.alias_or_name)
                projection.replace(projection.this)
        leftover = select.find(StreamWindow, KeyColumn)
        if leftover is not None:
            clause = "WINDOW" if isinstance(leftover, StreamWindow) else "PRIMARY KEY"
            start = leftover.meta.get("start", tokens[0].start)
            raise SqlError(f"{clause} is only allowed in the outermost SELECT", self.location(start))

        properties: dict[str, object] = {}
        locations: dict[str, Location] = {}
        for prop in tree.args["properties"].expressions if tree.args.get("properties") else []:
            key = prop.this.name
            if key in properties:
                raise SqlError(
                    f"WITH key {key!r} is given twice (first at {locations[key]})",
                    self.location(prop.meta["start"]),
                )
            properties[key] = _python_value(prop.args["value"])
            locations[key] = self.location(prop.meta["start"])

        emit = tree.args.get("emit")
        return CreateStream(
            self.text[tokens[0].start : tokens[-1].end + 1],
            self.location(tokens[0].start),
            kind=tree.text("kind").lower(),
            name=".".join(part.name for part in tree.this.parts),
            select=select,
            window=window,
            emit=emit.name.lower() if emit else None,
            properties=properties,
            property_locations=locations,
            primary_key=tuple(primary_key),
            annotations=annotations,
        )

    def _parse(self, tokens: list[Token]) -> exp.Expr:
        parser = _DIALECT.parser(error_level=ErrorLevel.IMMEDIATE)
        try:
            return parser.parse(tokens, self.text)[0]
        except ParseError as error:
            raise self._error(error, tokens) from None

    def _error(self, error: ParseError, tokens: list[Token]) -> SqlError:
        detail = error.errors[0] if error.errors else {}
        message = detail.get("description") or str(error)
        # ParseError points at a token's last character; report where the token starts instead.
        ends = {(t.line, t.col): i for i, t in enumerate(tokens)}
        index = ends.get((detail.get("line"), detail.get("col")))
        token = tokens[index] if index is not None else None
        # sqlglot's own messages, and ours for tokens left over after the query, only say what
        # was expected where a typo stopped the grammar: look around for the typo itself.
        generic = "found" not in message or _LEFT_OVER in message
        if "found" not in message:
            for pattern, replacement in _GENERIC:
                message = re.sub(pattern, replacement, message)
            found = f"found {token.text!r}" if token else "found the end of the statement"
            message = f"{message}, {found}"
        hint = diagnose(tokens, len(tokens) if index is None else index, self.text) if generic else None
        if hint is not None:
            message, token = hint
        where = self.location(token.start) if token else Location(self.file, detail.get("line", 1), 1)
        return SqlError(message, where)

    @staticmethod
    def _window(node: StreamWindow | None) -> WindowSpec | None:
        if node is None:
            return None
        column = node.args.get("time_column")
        return WindowSpec(
            kind=WINDOW_KINDS[node.name],
            size_us=interval_us(node.args["size"]),
            advance_us=interval_us(node.args.get("advance")),
            time_column=".".join(p.name for p in column.parts) if column is not None else None,
        )


_LEFT_OVER = "or the end of the statement, found"  # the dialect's message for tokens after the query
# sqlglot's own messages, reworded in the style of ours (", found …" is appended).
_GENERIC = (
    (r"^Expecting (.*)$", r"expected '\1'"),
    (r"^Invalid expression / Unexpected token$", "unexpected token"),
    (r"^Required keyword: '\w+' missing for <class '[\w.]*\.(\w+)'>$", lambda m: _incomplete(m.group(1))),
    (r"^Expected (.*?) but got <Token .*>$", r"expected \1"),
)
# Operators whose right-hand side is missing, as the user wrote them (sqlglot names their nodes).
_OPERATORS = {"Add": "+", "Sub": "-", "Mul": "*", "Div": "/", "IntDiv": "//", "Mod": "%", "Pow": "^",
              "DPipe": "||", "EQ": "=", "NEQ": "<>", "GT": ">", "GTE": ">=", "LT": "<", "LTE": "<=",
              "And": "AND", "Or": "OR", "Like": "LIKE", "ILike": "ILIKE"}  # fmt: skip


def _incomplete(node: str) -> str:
    if node not in _OPERATORS:
        return f"incomplete {node}"
    op = _OPERATORS[node]
    return f"expected an expression after {op if op.isalpha() else repr(op)}"


_UNTERMINATED = (("'", "string"), ('"', "quoted identifier"), ("/*", "comment"), ("$", "dollar-quoted string"),
                 ("E'", "string"))  # fmt: skip


def _is_streaming_create(tokens: list[Token]) -> bool:
    """CREATE STREAM, or CREATE TABLE name AS … with a streaming clause (see the module docstring)."""
    words = [t.text.upper() for t in tokens]
    i = 3 if words[1:3] == ["OR", "REPLACE"] else 1
    if words[0] != "CREATE" or len(words) <= i:
        return False
    if words[i] == "STREAM":
        return True
    if tokens[i].token_type != TokenType.TABLE:
        return False
    for j in range(i + 1, len(tokens)):
        if tokens[j].token_type == TokenType.L_PAREN:
            return False  # CREATE TABLE t (column definitions)
        if tokens[j].token_type == TokenType.ALIAS:
            return _has_streaming_clause(tokens[j + 1 :])
    return False


def _has_streaming_clause(tokens: list[Token]) -> bool:
    depth = 0
    for i, token in enumerate(tokens):
        kind = token.token_type
        after = tokens[i + 1 : i + 3]
        words = [t.text.upper() for t in after]
        if kind == TokenType.ROWS and words == ["WINDOW", "BUFFER"]:
            return True
        if kind == TokenType.L_PAREN:
            depth += 1
        elif kind == TokenType.R_PAREN:
            depth -= 1
        elif depth == 0 and (
            kind == TokenType.PRIMARY_KEY
            or (kind == TokenType.WINDOW and len(after) == 2 and after[1].token_type == TokenType.L_PAREN)
            or (kind == TokenType.WITH and after and after[0].token_type == TokenType.L_PAREN)
            or (token.text.upper() == "EMIT" and after and after[0].token_type == TokenType.VAR)
        ):
            return True
    return False


def _annotations(gap: str) -> dict[str, str]:
    found = {_HEADER_KEYS[m.group(1).lower()]: m.group(2).strip() for m in _HEADER.finditer(gap)}
    found.update((m.group(1).lower(), m.group(2).strip()) for m in _ANNOTATION.finditer(gap))
    return found


def _python_value(node: exp.Expr) -> object:
    if isinstance(node, exp.Boolean):
        return node.this
    if isinstance(node, exp.Literal) and not node.is_string:
        return int(node.this) if re.fullmatch(r"-?\d+", node.this) else float(node.this)
    return node.name
