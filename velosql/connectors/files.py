"""File connectors: read and write CSV, JSON lines and Parquet files.

:class:`FileSource` streams a file, a glob or a directory (each file one partition, optionally
watched for appended rows and new files); :class:`FileSink` writes a job's result rows to one file.
The implementations live in :mod:`.files_source`, :mod:`.files_sink` and :mod:`.files_formats`.
"""

from __future__ import annotations

from .files_sink import FileSink
from .files_source import FileSource

__all__ = ["FileSink", "FileSource"]
