"""Output modes: a statement's result as text, the way DuckDB's CLI prints it.

``duckbox`` (the default) is DuckDB's own renderer (``DuckDBPyRelation.show``): column names with
DuckDB's types under them, long results elided in the middle with a row count, wide ones in the
middle columns. The other modes are written here from the rows, with DuckDB's spellings of the
values (``NULL``, ``true``, ``[1, 2]``): ``box`` and ``table`` (grids without types), ``line``
(one ``name = value`` per line), ``csv``, ``json`` (one array), ``jsonlines``, ``markdown``, and
``changelog`` (each row with its operation, ``+I`` for a query's rows, as Flink's SQL client shows
a changelog).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
from dataclasses import dataclass

MODES = ("duckbox", "box", "line", "csv", "json", "jsonlines", "markdown", "table", "changelog")
DEFAULT_MAXROWS = 40  # DuckDB's: the first and last 20 rows of a longer result


@dataclass
class Settings:
    """How results are printed: the state of ``.mode``, ``.maxrows`` and ``-noheader``."""

    mode: str = "duckbox"
    maxrows: int = DEFAULT_MAXROWS
    header: bool = True
    width: int = 120


class Rows:
    """A result already read: column names, DuckDB type names, and rows of Python values."""

    def __init__(self, columns: list[str], types: list[str], rows: list[tuple]) -> None:
        self.columns, self.types, self.rows = columns, types, rows


def render(rel, settings: Settings) -> str:
    """The text of a DuckDB relation in the settings' mode (the relation runs once, here)."""
    if settings.mode == "duckbox":
        return duckbox(rel, settings)
    return render_rows(Rows(list(rel.columns), [str(t) for t in rel.types], rel.fetchall()), settings)


def duckbox(rel, settings: Settings) -> str:
    out = io.StringIO()
    maxrows = settings.maxrows if settings.maxrows > 0 else 2**62
    with contextlib.redirect_stdout(out):  # show() prints through Python's sys.stdout
        rel.show(max_rows=maxrows, max_width=settings.width)
    return out.getvalue().rstrip("\n") + "\n"


def render_rows(result: Rows, settings: Settings) -> str:
    """Rows already read (e.g. a push query's) in any mode but duckbox, which falls back to box."""
    mode = settings.mode
    if mode in ("box", "duckbox"):
        return _grid(result, settings.header, "┌─┬┐", "├─┼┤", "└─┴┘", "│")
    if mode == "table":
        return _grid(result, settings.header, "+-++", "+-++", "+-++", "|")
    if mode == "changelog":
        ops = Rows(["op", *result.columns], ["VARCHAR", *result.types], [("+I", *r) for r in result.rows])
        return _grid(ops, settings.header, "+-++", "+-++", "+-++", "|")
    if mode == "line":
        return _line(result)
    if mode == "csv":
        return _csv(result, settings.header)
    if mode == "json":
        rows = [
            json.dumps(_record(result, r), ensure_ascii=False, separators=(",", ":")) for r in result.rows
        ]
        return "[" + ",\n".join(rows) + "]\n"
    if mode == "jsonlines":
        return "".join(
            json.dumps(_record(result, r), ensure_ascii=False, separators=(",", ":")) + "\n"
            for r in result.rows
        )
    if mode == "markdown":
        return _markdown(result, settings.header)
    raise ValueError(f"unknown output mode {mode!r}")


def text(value) -> str:
    """A value as DuckDB's CLI prints it."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        whole, _, fraction = value.isoformat(sep=" ").partition(".")
        fraction = fraction.rstrip("0")  # DuckDB prints .375, not .375000
        return f"{whole}.{fraction}" if fraction else whole
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_nested(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_nested(k)}: {_nested(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bytes):
        return "".join(chr(b) if 32 <= b < 127 and b != 92 else f"\\x{b:02X}" for b in value)
    return str(value)


def _nested(value) -> str:
    return f"'{value}'" if isinstance(value, str) else text(value)


def _numeric(type_name: str) -> bool:
    base = type_name.split("(")[0].upper()
    return base in {
        "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
        "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL",
    }  # fmt: skip


def _grid(result: Rows, header: bool, top: str, mid: str, bottom: str, bar: str) -> str:
    cells = [[text(v) for v in row] for row in result.rows]
    widths = [max([len(c) for c in [name, *(r[i] for r in cells)]]) for i, name in enumerate(result.columns)]
    right = [_numeric(t) for t in result.types]

    def rule(chars: str) -> str:
        left, fill, cross, end = chars
        return left + cross.join(fill * (w + 2) for w in widths) + end

    def line(values: list[str], centre: bool = False) -> str:
        padded = [
            v.center(w) if centre else v.rjust(w) if r else v.ljust(w)
            for v, w, r in zip(values, widths, right)
        ]
        return bar + bar.join(f" {p} " for p in padded) + bar

    lines = [rule(top)]
    if header:
        lines += [line(result.columns, centre=True), rule(mid)]
    lines += [line(r) for r in cells]
    lines.append(rule(bottom))
    return "\n".join(lines) + "\n"


def _line(result: Rows) -> str:
    width = max((len(c) for c in result.columns), default=0)
    blocks = [
        "\n".join(f"{c.rjust(width)} = {text(v)}" for c, v in zip(result.columns, row)) for row in result.rows
    ]
    return "\n\n".join(blocks) + "\n" if blocks else ""


def _csv(result: Rows, header: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(result.columns)
    writer.writerows([text(v) for v in row] for row in result.rows)
    return out.getvalue()


def _markdown(result: Rows, header: bool) -> str:
    cells = [[text(v).replace("|", "\\|") for v in row] for row in result.rows]
    widths = [max([len(c) for c in [name, *(r[i] for r in cells)]]) for i, name in enumerate(result.columns)]
    lines = []
    if header:
        lines.append("| " + " | ".join(c.center(w) for c, w in zip(result.columns, widths)) + " |")
        marks = ["-" * (w + 1) + ":" if _numeric(t) else "-" * (w + 2) for w, t in zip(widths, result.types)]
        lines.append("|" + "|".join(marks) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines) + "\n" if lines else ""


def _record(result: Rows, row: tuple) -> dict:
    return {c: _json_value(v) for c, v in zip(result.columns, row)}


def _json_value(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return text(value)  # decimals, timestamps, UUIDs, … as strings, as DuckDB's CLI writes them
