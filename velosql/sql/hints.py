"""Say what is wrong where a statement fails to parse, when the grammar can only say what it expected.

A typo rarely fails where it is: ``FROM trades GROUPBY symbol`` reads ``GROUPBY`` as the alias of
``trades`` and fails at ``symbol``, and ``SELECT symbol COUNT(*)`` reads ``COUNT`` as the alias of
``symbol`` and fails at ``(``. :func:`diagnose` looks at the tokens around the failure for the
usual causes, in this order, and names the token to blame:

* a keyword written as one word (``GROUPBY``, ``ORDERBY``, ``PARTITIONBY``);
* ``GROUP`` or ``ORDER`` without ``BY``;
* a misspelt clause keyword in a clause's place (``WERE``, ``FORM``, ``HAVNG``, ``LIMT``, ``JION``);
* a missing comma between two items of the outermost select list;
* an operator or clause left without its operand before ``EMIT`` (``WHERE EMIT CHANGES``).

Anything else keeps the parser's own message.
"""

from __future__ import annotations

import difflib

from sqlglot.tokens import Token, TokenType

FUSED = {"GROUPBY": "GROUP BY", "ORDERBY": "ORDER BY", "PARTITIONBY": "PARTITION BY"}
# Clause keywords a misspelling is compared with, and how each is written in full.
CLAUSES = {
    "SELECT": "SELECT", "FROM": "FROM", "WHERE": "WHERE", "GROUP": "GROUP BY", "HAVING": "HAVING",
    "ORDER": "ORDER BY", "LIMIT": "LIMIT", "OFFSET": "OFFSET", "QUALIFY": "QUALIFY", "WINDOW": "WINDOW",
    "EMIT": "EMIT", "WITH": "WITH", "JOIN": "JOIN", "INNER": "INNER JOIN", "LEFT": "LEFT JOIN",
    "UNION": "UNION",
}  # fmt: skip
# Tokens after which a keyword may start a clause (the end of an expression or a table name).
_ENDS = {TokenType.VAR, TokenType.IDENTIFIER, TokenType.NUMBER, TokenType.STRING, TokenType.R_PAREN,
         TokenType.STAR}  # fmt: skip
# Tokens that end the select list of the SELECT they follow (at its parenthesis depth).
_AFTER_ITEMS = {TokenType.FROM, TokenType.WHERE, TokenType.GROUP_BY, TokenType.HAVING, TokenType.ORDER_BY,
                TokenType.LIMIT, TokenType.WINDOW, TokenType.QUALIFY, TokenType.UNION, TokenType.EXCEPT,
                TokenType.INTERSECT, TokenType.WITH, TokenType.INTO, TokenType.SEMICOLON}  # fmt: skip
_LOOK_BACK = 3  # tokens before the failure where a misspelt keyword is looked for


def diagnose(tokens: list[Token], index: int, text: str) -> tuple[str, Token] | None:
    """What is wrong when parsing ``tokens`` (of the SQL ``text``) failed at ``tokens[index]``
    (``index == len(tokens)``: at the end), and the token to report it at; None if unknown."""
    window = range(max(0, index - _LOOK_BACK), min(index + 1, len(tokens)))
    for i in reversed(window):
        word = _word(tokens[i])
        if word in FUSED:
            return f"{tokens[i].text} is not a keyword: did you mean {FUSED[word]}?", tokens[i]
    for i in reversed(window):
        word = _word(tokens[i])
        after = _word(tokens[i + 1]) if i + 1 < len(tokens) else None
        if word in ("GROUP", "ORDER") and after != "BY" and i > 0 and tokens[i - 1].token_type in _ENDS:
            return f"{tokens[i].text} must be followed by BY: did you mean {word} BY?", tokens[i]
    for i in reversed(window):
        word = _word(tokens[i])
        if word and word not in CLAUSES and i > 0 and tokens[i - 1].token_type in _ENDS:
            match = difflib.get_close_matches(word, CLAUSES, n=1, cutoff=0.75)
            if match:
                return f"{tokens[i].text} is not a keyword: did you mean {CLAUSES[match[0]]}?", tokens[i]
    return _emit_as_operand(tokens, index) or _missing_comma(tokens, index, text)


def _emit_as_operand(tokens: list[Token], index: int) -> tuple[str, Token] | None:
    """``WHERE EMIT CHANGES``: the condition is missing, and EMIT was read as a column."""
    if not 2 <= index < len(tokens) or _word(tokens[index - 1]) != "EMIT":
        return None
    if _word(tokens[index]) not in ("CHANGES", "FINAL") or tokens[index - 2].token_type in _ENDS:
        return None
    before = tokens[index - 2].text
    shown = before.upper() if before.isalpha() else repr(before)
    return f"expected an expression after {shown}, found 'EMIT'", tokens[index - 1]


def _word(token: Token) -> str | None:
    """The upper-cased text of an unquoted word (a keyword or a name), else None."""
    if token.token_type == TokenType.IDENTIFIER or not token.text.replace("_", "").isalnum():
        return None
    return token.text.upper()


def _missing_comma(tokens: list[Token], index: int, text: str) -> tuple[str, Token] | None:
    """``SELECT a b c`` fails at ``c``; ``SELECT symbol COUNT(*)`` at ``(``: items without a comma."""
    if index >= len(tokens) or index < 2:
        return None
    start = next((i for i, t in enumerate(tokens) if t.token_type == TokenType.SELECT), None)
    if start is None or index <= start + 1:
        return None
    depth, item = 0, start + 1
    for i in range(start + 1, index):
        kind = tokens[i].token_type
        depth += (kind == TokenType.L_PAREN) - (kind == TokenType.R_PAREN)
        if depth < 0 or (depth == 0 and (kind in _AFTER_ITEMS or _word(tokens[i]) == "EMIT")):
            return None  # the failure is past the select list
        if depth == 0 and kind == TokenType.COMMA:
            item = i + 1
    if depth != 0 or index - item < 2:
        return None  # inside parentheses, or the item is a single token: not two items run together
    failed = tokens[index]
    if failed.token_type == TokenType.L_PAREN and tokens[index - 1].token_type == TokenType.VAR:
        # `symbol COUNT(*)`: the function's name was read as the alias of the item before it.
        name = tokens[index - 1]
        before = text[tokens[item].start : tokens[index - 2].end + 1]
        return f"missing comma between select items? {name.text}(…) follows {before!r}", name
    if failed.token_type not in _ENDS - {TokenType.R_PAREN}:
        return None
    before = text[tokens[item].start : tokens[index - 1].end + 1]
    return f"missing comma between select items? {failed.text!r} follows {before!r}", failed
