"""``velosql verify APP.sql``: prints, per streaming statement, ``identical`` or the rows that differ.

The work is :func:`velosql.verify.verify`'s; this module shows its progress on a terminal and
prints its outcomes: a rich table of the differing rows on a terminal, plain text otherwise.
"""

from __future__ import annotations

from typing import TextIO

from ..verify import Outcome, Run
from . import render

IDENTICAL, DIFFERENT = 0, 1


def report(path: str, outcomes: list[Outcome], out: TextIO, rich: bool) -> int:
    """Print the outcomes of ``path``'s statements; 1 when one differs, else 0."""
    out.write(f"{path}\n")
    for o in outcomes:
        where = f"{o.name} (line {o.location.line})"
        if o.status == "skipped":
            out.write(f"  {where}: skipped: {o.note}\n")
        elif o.status == "identical":
            late = f"; {o.late_rows} late rows left out" if o.late_rows else ""
            out.write(f"  {where}: identical: {o.rows} rows, in {_runs(o.runs)}{late}\n")
            if o.rounded:
                out.write(
                    f"    but for {o.rounded} floating-point value(s) that differed in their last rounded "
                    "digit: sums of DOUBLEs depend on the order of addition (DECIMAL sums exactly)\n"
                )
        else:
            out.write(f"  {where}: different under {o.differing.describe()}\n")
            for rows, count, what in (
                (o.missing, o.missing_count, "rows batch SQL gives that the stream did not"),
                (o.extra, o.extra_count, "rows the stream gave that batch SQL does not"),
            ):
                if count:
                    shown = f"the first {len(rows)} of {count}" if count > len(rows) else str(count)
                    out.write(f"    {what} ({shown}):\n")
                    _table(o.columns, rows, out, rich)
    out.flush()
    return DIFFERENT if any(o.status == "different" for o in outcomes) else IDENTICAL


def _runs(runs: list[Run]) -> str:
    """E.g. ``10 runs: V1, V2:2; file order (3 batch sizes), shuffled within 5s (2 orders)``."""
    processors = ", ".join(dict.fromkeys(r.processor.upper() for r in runs))
    file_sizes = {r.batch_size for r in runs if r.order == "file order"}
    orders = list(dict.fromkeys(r.order for r in runs if r.order != "file order"))
    kinds = [f"file order ({_count(len(file_sizes), 'batch size')})"]
    if orders:
        kinds.append(f"{orders[0].split(' (')[0]} ({_count(len(orders), 'order')})")
    return f"{_count(len(runs), 'run')}: {processors}; {', '.join(kinds)}"


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _table(columns: list[str], rows: list[tuple], out: TextIO, rich: bool) -> None:
    if rich:
        from rich.console import Console
        from rich.table import Table

        table = Table(*columns, show_edge=True, pad_edge=True)
        for row in rows:
            table.add_row(*(render.text(v) for v in row))
        Console(file=out, width=render_width(out)).print(table)
        return
    text = render.render_rows(render.Rows(columns, [""] * len(columns), rows), render.Settings(mode="table"))
    out.write("".join(f"    {line}\n" for line in text.splitlines()))


def render_width(out: TextIO) -> int:
    import os

    try:
        return os.get_terminal_size(out.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 100


class Progress:
    """The run under way, on one line of a terminal (rich), erased when done; nothing elsewhere."""

    def __init__(self, stream: TextIO) -> None:
        self.status = None
        if stream.isatty():
            from rich.console import Console

            self.status = Console(file=stream).status("verifying")
            self.status.start()

    def __call__(self, what: str) -> None:
        if self.status is not None:
            self.status.update(f"verifying {what}")

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()
