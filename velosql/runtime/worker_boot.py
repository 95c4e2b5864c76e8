"""The first code of a V2 worker process: the ``spawn`` target, so it imports nothing heavy.

A worker exchanges Arrow with DuckDB and never uses numpy, which DuckDB and pyarrow import at
import time when it is installed. Keeping it out saves 35-80 ms of each worker's start (measured:
importing pyarrow, pyarrow.compute and DuckDB and connecting took 0.17-0.22 s with numpy, 0.14 s
without), which every V2 job pays before its first row.
"""

from __future__ import annotations

import sys


def main(conn, core: int | None, files: str | None = None) -> None:
    sys.modules.setdefault("numpy", None)  # "import numpy" now raises ImportError: both do without
    from . import worker

    worker.main(conn, core, files)
