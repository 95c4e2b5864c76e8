"""The exceptions velosql raises.

Every error a user can cause derives from :class:`VelosqlError`; errors caused by bad input also
derive from :class:`ValueError` so that generic callers can catch them as such::

    VelosqlError
    ├── SqlError (ValueError)          a statement does not parse or does not make sense
    │   └── OptionError                a WITH key is unknown or its value is not allowed
    ├── ConfigError (ValueError)       a processor string, YAML file or environment setting is bad
    │   ├── UnknownProcessorError
    │   └── InvalidPartitionCountError
    ├── DataError (ValueError)         a record cannot be read or processed (names file:row etc.)
    ├── JobError                       a job failed at run time
    │   └── WorkerError                a V2 partition worker died
    └── JobLimitError                  a server refused another job

Messages are full sentences naming what failed, the offending value, what is allowed, and where.
"""

from __future__ import annotations


class VelosqlError(Exception):
    """The root of every velosql error."""


class Location:
    """A place in a SQL script: file (or None for inline SQL), 1-based line and column."""

    __slots__ = ("file", "line", "col")

    def __init__(self, file: str | None, line: int, col: int) -> None:
        self.file, self.line, self.col = file, line, col

    def __str__(self) -> str:
        where = self.file or "<sql>"
        return f"{where}:{self.line}:{self.col}"

    def __repr__(self) -> str:
        return f"Location({self.file!r}, {self.line}, {self.col})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and (self.file, self.line, self.col) == (
            other.file,
            other.line,
            other.col,
        )

    def __hash__(self) -> int:
        return hash((self.file, self.line, self.col))


class SqlError(VelosqlError, ValueError):
    """A statement failed to parse or validate. ``str()`` starts with ``file:line:col:``."""

    def __init__(self, message: str, location: Location | None = None) -> None:
        self.message = message
        self.location = location
        super().__init__(f"{location}: {message}" if location else message)


class OptionError(SqlError):
    """A WITH option is unknown, or its value is not one of the allowed values."""


class ConfigError(VelosqlError, ValueError):
    """A processor configuration string, YAML config file or environment setting is invalid."""


class UnknownProcessorError(ConfigError):
    """A processor string names no known architecture or parameter."""


class InvalidPartitionCountError(ConfigError):
    """A partition count is not a positive integer."""


class DataError(VelosqlError, ValueError):
    """A record could not be decoded or processed; the message names its place (file:row, …)."""


class JobError(VelosqlError):
    """A job failed while running."""


class WorkerError(JobError):
    """A partition worker process died; the message names the partition and the cause."""


class JobLimitError(VelosqlError):
    """The server already runs its maximum number of jobs."""
