"""SQL front end: the Velosql dialect, the script parser and the typed statements it produces."""

from .dialect import Velosql
from .parser import parse_one, parse_script
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

__all__ = [
    "CreateStream",
    "Describe",
    "DropStream",
    "DuckDBStatement",
    "Explain",
    "ShowJobs",
    "ShowStreams",
    "Statement",
    "Terminate",
    "Velosql",
    "WindowSpec",
    "parse_one",
    "parse_script",
]
