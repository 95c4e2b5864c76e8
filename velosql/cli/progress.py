"""What ``velosql run`` shows while its jobs run, and the line each job leaves behind.

On a terminal a live table (rich) is redrawn on stderr; when stderr is a pipe or a file nothing is
shown while the jobs run, so logs hold only the final :func:`summary_line` of each job.
"""

from __future__ import annotations

from typing import TextIO

from ..runtime.job import Job

_COLUMNS = ("job", "status", "in", "out", "rows/s", "watermark", "late", "dlq", "queue", "skew", "time")


def summary_line(job: Job) -> str:
    """E.g. ``velosql: job hello Finished: 5 records in, 5 out, 0 late, 0 dead letters, 0.05s (100 rows/s)``."""
    m = job.metrics()
    return (
        f"velosql: job {job.name} {m['status']}: {m['records_in']} records in, {m['records_out']} out, "
        f"{m['late_rows']} late, {m['dead_letters']} dead letters, {m['elapsed_seconds']:.2f}s "
        f"({m['records_per_second']} rows/s)"
    )


class QuietProgress:
    """Shows nothing: for a stderr that is not a terminal."""

    def update(self, jobs: list[Job]) -> None:
        pass

    def close(self) -> None:
        pass


class LiveProgress:
    """A table of the jobs' metrics, redrawn in place on a terminal at every :meth:`update`.

    Columns: records in and out, input rows per second, watermark, late rows, dead letters (dlq)
    and elapsed time. A V2 job with workers has a row per worker below its own: its pid and cores,
    how busy it was (share of the elapsed time), its rows, the watermark it last worked with and
    its queue (requests not yet answered); the job's row shows the skew (busiest worker's rows
    over the mean).

    The table is transient: :meth:`close` erases it, leaving the terminal to the summary lines.
    """

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.live import Live

        self._live = Live(
            console=Console(file=stream),
            auto_refresh=False,  # the caller's wait loop sets the pace; no extra thread
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live.start()

    def update(self, jobs: list[Job]) -> None:
        self._live.update(_table(jobs), refresh=True)

    def close(self) -> None:
        self._live.stop()


def _table(jobs: list[Job]):
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for name in _COLUMNS:
        text = name in ("job", "status", "watermark")
        # A narrow terminal wraps the headers of the numeric columns, never a name or a timestamp.
        table.add_column(name, justify="left" if text else "right", no_wrap=text, min_width=len(name))
    for job in jobs:
        m = job.metrics()
        elapsed = m["elapsed_seconds"]
        skew = m.get("skew")
        table.add_row(
            job.name,
            m["status"],
            str(m["records_in"]),
            str(m["records_out"]),
            str(m["records_per_second"]),
            m["watermark"] or "-",
            str(m["late_rows"]),
            str(m["dead_letters"]),
            "-",
            f"{skew:.2f}" if skew is not None else "-",
            f"{elapsed:.1f}s",
        )
        for p in m.get("partitions", []):
            cores = ",".join(map(str, p["cores"])) if p["cores"] else "any"
            table.add_row(
                f"  p{p['partition']} pid {p['pid']} core {cores}",
                f"busy {p['busy_seconds'] / elapsed:.0%}" if elapsed > 0 else "",
                str(p["records_in"]),
                str(p["records_out"]),
                str(round(p["records_in"] / elapsed)) if elapsed > 0 else "0",
                p["watermark"] or "-",
                str(p["late_rows"]),
                "",
                str(p["queue_depth"]),
                "",
                "",
            )
    return table


def open_progress(stream: TextIO) -> LiveProgress | QuietProgress:
    """A live display when ``stream`` is a terminal, else one that shows nothing."""
    isatty = getattr(stream, "isatty", None)
    return LiveProgress(stream) if isatty is not None and isatty() else QuietProgress()
