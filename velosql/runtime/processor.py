"""Job processors: the objects that execute a planned streaming job.

A :class:`JobProcessor` is built from a :class:`~velosql.config.JobProcessorConfig` by
:class:`JobProcessorFactory`; :meth:`JobProcessor.run` hands the job to the execution engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from ..config import JobProcessorConfig
from ..errors import ConfigError, InvalidPartitionCountError

__all__ = ["JobProcessor", "JobProcessorFactory", "V1Processor", "V2Processor"]


class JobProcessor(ABC):
    """Executes streaming jobs with one processor architecture.

    Lifecycle:
        1. Construction (normally through :class:`JobProcessorFactory`) only records the config and
           fixes the partition count; it opens no connection and starts no thread or process, so
           it is cheap and may happen in any thread.
        2. :meth:`run` is called once per job, by the thread that owns the job. It blocks until the
           job ends (bounded sources exhausted, stopped, or failed) and returns the engine's result;
           a failure propagates to the caller as an exception.
        3. Every resource a run needs (DuckDB connections, worker processes, queues) is acquired and
           released inside :meth:`run`, so a processor holds nothing between runs and may run several
           jobs one after another. Concurrent runs need one processor each.

    The metadata methods (:meth:`processor_name`, :meth:`processor_version`, :meth:`num_partitions`,
    :meth:`description`) are pure and may be called at any time, e.g. by ``EXPLAIN``.
    """

    _ARCHITECTURE: str  # the config architecture this class runs

    def __init__(self, config: JobProcessorConfig) -> None:
        if config.architecture != self._ARCHITECTURE:
            raise ConfigError(f"{type(self).__name__} cannot run a {config} config; use JobProcessorFactory")
        self._config = config
        # Fixed once: a job's partition count must not change if the CPU affinity mask does.
        self._num_partitions = config.effective_partitions()

    @property
    def config(self) -> JobProcessorConfig:
        """The configuration this processor was built from."""
        return self._config

    @abstractmethod
    def processor_name(self) -> str:
        """A human name, e.g. ``"V1 Single-threaded Processor"``."""

    @abstractmethod
    def processor_version(self) -> str:
        """``"V1"`` or ``"V2"``."""

    def num_partitions(self) -> int:
        """How many partitions a job runs on: 1 for V1; N (or the usable CPU count) for V2."""
        return self._num_partitions

    def description(self) -> str:
        """The config's one-line description (see :meth:`JobProcessorConfig.description`)."""
        return self._config.description()

    def run(self, job: Any) -> Any:
        """Execute ``job`` and block until it ends; returns what the engine returns.

        Args:
            job: A planned job from :mod:`velosql.plan`.
        """
        # Imported here: the engine imports this module, and metadata callers need no engine.
        from .v1 import run_job

        return run_job(self, job)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self._config)!r})"


class V1Processor(JobProcessor):
    """Single-threaded: one DuckDB connection, one partition, records in arrival order."""

    _ARCHITECTURE = "v1"

    def __init__(self, config: JobProcessorConfig | None = None) -> None:
        super().__init__(JobProcessorConfig.V1 if config is None else config)

    def processor_name(self) -> str:
        return "V1 Single-threaded Processor"

    def processor_version(self) -> str:
        return "V1"


class V2Processor(JobProcessor):
    """Partitioned: records are routed to N partitions, each with its own worker.

    Until the partitioned engine exists, :meth:`run` executes jobs on the V1 engine: results are
    the same, only the parallel speed-up is missing. The metadata (partition count, affinity)
    already reflects the V2 config.
    """

    _ARCHITECTURE = "v2"

    def __init__(self, config: JobProcessorConfig | None = None) -> None:
        super().__init__(JobProcessorConfig.V2() if config is None else config)

    def processor_name(self) -> str:
        return "V2 Partitioned Processor"

    def processor_version(self) -> str:
        return "V2"

    def enable_core_affinity(self) -> bool:
        """Whether each partition worker is pinned to its own core."""
        return self._config.enable_core_affinity


class JobProcessorFactory:
    """Builds processors from configs, strings or the common presets."""

    @staticmethod
    def create(config: JobProcessorConfig) -> JobProcessor:
        """The processor for ``config``: a :class:`V1Processor` or a :class:`V2Processor`."""
        return V1Processor(config) if config.architecture == "v1" else V2Processor(config)

    @staticmethod
    def create_from_str(text: str) -> JobProcessor:
        """The processor for a processor string such as ``"v2:8:affinity"``.

        Raises:
            UnknownProcessorError: The string is not a processor string.
            InvalidPartitionCountError: Its partition count is not ≥ 1.
        """
        return JobProcessorFactory.create(JobProcessorConfig.parse(text))

    @staticmethod
    def create_v1() -> V1Processor:
        """A V1 processor."""
        return V1Processor()

    @staticmethod
    def create_v2_default() -> V2Processor:
        """A V2 processor with one partition per usable CPU and no core affinity."""
        return V2Processor()

    @staticmethod
    def create_v2_with_partitions(n: int) -> V2Processor:
        """A V2 processor with ``n`` partitions and no core affinity.

        Raises:
            InvalidPartitionCountError: ``n`` is not an integer ≥ 1.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidPartitionCountError(f"Invalid partition count: {n}")
        return V2Processor(JobProcessorConfig.V2(n))
