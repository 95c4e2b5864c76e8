"""The first code of a V2 worker process: the ``spawn`` target, so it imports nothing heavy.

A worker exchanges Arrow with DuckDB and never uses numpy, which DuckDB and pyarrow import at
import time when it is installed. Keeping it out saves 35-80 ms of each worker's start (measured:
importing pyarrow, pyarrow.compute and DuckDB and connecting took 0.17-0.22 s with numpy, 0.14 s
without), which every V2 job pays before its first row.
"""

from __future__ import annotations

import os
import sys


def main(conn, core: int | None, files: str | None = None) -> None:
    _no_stdout()
    sys.modules.setdefault("numpy", None)  # "import numpy" now raises ImportError: both do without
    from . import worker

    worker.main(conn, core, files)


def _no_stdout() -> None:
    """Point the worker's stdout at the null device: a worker answers only through its pipe.

    Its stdout is the job's, often a terminal or a pipe (``velosql run app.sql | reader``): a
    worker writing there (DuckDB's progress bar, a stray print) would block in ``write()`` while
    the reader waits for the job to end, and the job would never end. Its stderr stays the job's,
    for the traceback of a worker that crashes.
    """
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
    finally:
        os.close(null)
