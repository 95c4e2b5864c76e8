"""velosql: streaming SQL embedded in DuckDB.

>>> import velosql
>>> engine = velosql.connect()
>>> job = engine.execute("CREATE STREAM big AS SELECT * FROM trades WHERE price > 100 "
...                      "WITH ('trades.type' = 'file_source', 'trades.path' = 'trades.csv')")
"""

from .config import JobProcessorConfig
from .engine import Engine, connect
from .errors import (
    ConfigError,
    DataError,
    JobError,
    JobLimitError,
    OptionError,
    SqlError,
    VelosqlError,
    WorkerError,
)
from .runtime.job import Job
from .runtime.processor import JobProcessor, JobProcessorFactory

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "Engine",
    "Job",
    "JobError",
    "JobLimitError",
    "JobProcessor",
    "JobProcessorConfig",
    "JobProcessorFactory",
    "OptionError",
    "SqlError",
    "VelosqlError",
    "WorkerError",
    "connect",
]
