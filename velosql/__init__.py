"""velosql: streaming SQL embedded in DuckDB.

>>> import velosql
>>> engine = velosql.connect()
>>> job = engine.execute("CREATE STREAM big AS SELECT * FROM trades WHERE price > 100 "
...                      "WITH ('trades.type' = 'file_source', 'trades.path' = 'trades.csv')")
"""

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

__version__ = "0.1.0"

# Imported on first use: a V2 worker process imports this package too, and needs none of these.
_LAZY = {
    "JobProcessorConfig": ".config",
    "Engine": ".engine",
    "connect": ".engine",
    "Job": ".runtime.job",
    "JobProcessor": ".runtime.processor",
    "JobProcessorFactory": ".runtime.processor",
    "StreamJobServer": ".server",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'velosql' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


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
    "StreamJobServer",
    "VelosqlError",
    "WorkerError",
    "connect",
]
