"""What ``velosql run`` shows while its jobs run, and the line each job leaves behind.

On a terminal a live table (rich) is redrawn on stderr; when stderr is a pipe or a file nothing is
shown while the jobs run, so logs hold only the final :func:`summary_line` of each job.
"""

from __future__ import annotations

from typing import TextIO

from ..runtime.job import Job

_COLUMNS = (
    "job",
    "status",
    "done",
    "in",
    "out",
    "rows/s",
    "watermark",
    "late",
    "dlq",
    "queue",
    "skew",
    "time",
)


def done_text(share: float | None, elapsed: float) -> str:
    """``42% 0:12`` — the share of a bounded input read and the time left at the rate so far;
    ``-`` when the input has no known end."""
    if share is None:
        return "-"
    if share >= 1 or share <= 0 or elapsed <= 0:
        return f"{share:.0%}"
    left = round(elapsed * (1 - share) / share)
    return f"{share:.0%} {left // 60}:{left % 60:02d}"


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

    Columns: the share of a bounded input read and the time left (done), records in and out,
    input rows per second, watermark, late rows, dead letters (dlq) and elapsed time; it fits an
    80-column terminal (narrow headers wrap). A V2 job with workers has a row per worker below its own: its pid and cores,
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
        self._live.update(_table(jobs, self._live.console.width), refresh=True)

    def close(self) -> None:
        self._live.stop()


def _table(jobs: list[Job], width: int = 200):
    """The jobs' table; narrower than 120 columns, a compact one that fits 80: counts with K/M,
    the watermark's time of day, no queue or skew, names cut short."""
    from rich import box
    from rich.table import Table

    compact = width < 120
    names = [c for c in _COLUMNS if not (compact and c in ("queue", "skew"))]
    if compact:
        table = Table(box=None, show_edge=False, padding=(0, 1), collapse_padding=True, header_style="bold")
    else:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for name in names:
        text = name in ("job", "status", "watermark")
        # A narrow terminal wraps the headers of the numeric columns, never a name or a timestamp.
        table.add_column(
            name,
            justify="left" if text else "right",
            no_wrap=True if compact else text,
            min_width=len(name),
            max_width=16 if compact and name == "job" else None,
            overflow="ellipsis",
        )
    count = _short if compact else str
    for job in jobs:
        m = job.metrics()
        elapsed = m["elapsed_seconds"]
        skew = m.get("skew")
        wm = m["watermark"] or "-"
        cells = {
            "job": job.name,
            "status": m["status"],
            "done": done_text(m.get("progress"), elapsed),
            "in": count(m["records_in"]),
            "out": count(m["records_out"]),
            "rows/s": count(m["records_per_second"]),
            "watermark": wm[-8:] if compact and wm != "-" else wm,
            "late": count(m["late_rows"]),
            "dlq": count(m["dead_letters"]),
            "queue": "-",
            "skew": f"{skew:.2f}" if skew is not None else "-",
            "time": f"{elapsed:.1f}s",
        }
        table.add_row(*(cells[c] for c in names))
        for p in m.get("partitions", []):
            cores = ",".join(map(str, p["cores"])) if p["cores"] else "any"
            pwm = p["watermark"] or "-"
            cells = {
                "job": f"  p{p['partition']} pid {p['pid']} core {cores}",
                "status": f"busy {p['busy_seconds'] / elapsed:.0%}" if elapsed > 0 else "",
                "done": "",
                "in": count(p["records_in"]),
                "out": count(p["records_out"]),
                "rows/s": count(round(p["records_in"] / elapsed)) if elapsed > 0 else "0",
                "watermark": pwm[-8:] if compact and pwm != "-" else pwm,
                "late": count(p["late_rows"]),
                "dlq": "",
                "queue": str(p["queue_depth"]),
                "skew": "",
                "time": "",
            }
            table.add_row(*(cells[c] for c in names))
    return table


def _short(n: int) -> str:
    """A count in at most 6 characters: 9999, 12.3K, 456K, 4.56M, 1.23G."""
    if n < 10_000:
        return str(n)
    if n < 999_500:
        return f"{n / 1e3:.1f}K" if n < 99_950 else f"{n / 1e3:.0f}K"
    if n < 999_500_000:
        return f"{n / 1e6:.3g}M"
    return f"{n / 1e9:.3g}G"


def open_progress(stream: TextIO) -> LiveProgress | QuietProgress:
    """A live display when ``stream`` is a terminal, else one that shows nothing."""
    isatty = getattr(stream, "isatty", None)
    return LiveProgress(stream) if isatty is not None and isatty() else QuietProgress()
