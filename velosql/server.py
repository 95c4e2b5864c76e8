"""StreamJobServer: deploys, lists and stops streaming jobs on one engine (the seed's job server).

>>> server = StreamJobServer(max_jobs=10).with_processor_config(JobProcessorConfig.parse("v2:2"))
>>> job = server.deploy_job("big_trades", "CREATE STREAM big AS SELECT * FROM trades WHERE qty > 100 "
...                         "WITH ('trades.type' = 'file_source', 'trades.path' = 'trades.csv')")
>>> server.job_status("big_trades")
'Running'

Jobs share the server's DuckDB database (their results are tables of it) and nothing else: each
has its own thread, connection and processor. The server's processor config is the default for
statements that choose none (``WITH (processor = …)`` or ``-- @job_mode`` annotations win): V2
over the usable CPUs on a server with its own engine, unless set with
:meth:`StreamJobServer.with_processor_config`. On an engine passed in, the engine's own default
chain applies until then (``--processor``, ``PROCESSOR_CONFIG``, the config file, V1): that is
how ``velosql run`` deploys an application.
"""

from __future__ import annotations

import logging
import threading

from .config import JobProcessorConfig, resolve_processor
from .engine import Engine, connect
from .errors import JobError, JobLimitError, SqlError
from .runtime.job import Job
from .sql.parser import parse_script
from .sql.statements import CreateStream

_log = logging.getLogger("velosql")


class StreamJobServer:
    """Deploys streaming jobs, at most ``max_jobs`` running at once.

    Args:
        brokers: Kafka bootstrap servers (the seed's API; kept for the Kafka connectors, which
            are not built yet).
        group_id: Kafka consumer group (likewise).
        max_jobs: The most jobs running at once; deploying another raises
            :class:`~velosql.errors.JobLimitError`.
        engine: The engine whose database the jobs use; by default a new in-memory one, closed
            with the server.
    """

    def __init__(
        self,
        brokers: str = "localhost:9092",
        group_id: str = "velosql",
        max_jobs: int = 100,
        *,
        engine: Engine | None = None,
    ) -> None:
        if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1:
            raise ValueError(f"max_jobs must be an integer of at least 1, not {max_jobs!r}")
        self.brokers = brokers
        self.group_id = group_id
        self.max_jobs = max_jobs
        self.engine = engine if engine is not None else connect()
        self._owns_engine = engine is None
        self._config: JobProcessorConfig | None = None
        if self._owns_engine:
            self._config = JobProcessorConfig.V2()
            self.engine.default_processor = str(self._config)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.RLock()

    # ---- processor ------------------------------------------------------------------------------

    def with_processor_config(self, config: JobProcessorConfig | str) -> StreamJobServer:
        """Set the processor of jobs whose statement chooses none; returns the server."""
        if isinstance(config, str):
            config = JobProcessorConfig.parse(config)
        self._config = config
        self.engine.default_processor = str(config)
        _log.info("StreamJobServer default processor: %s", config.description())
        return self

    def processor_config(self) -> JobProcessorConfig:
        """The processor of jobs whose statement chooses none (see the module docstring)."""
        if self._config is not None:
            return self._config
        return resolve_processor(None, cli=self.engine.default_processor, config_path=self.engine.config_path)

    # ---- jobs -----------------------------------------------------------------------------------

    def deploy_job(self, name: str, sql: str, *, file: str | None = None) -> Job:
        """Validate and start the one streaming statement of ``sql`` as job ``name``.

        Other statements of ``sql`` (DuckDB SQL) run first, in order.

        Raises:
            JobLimitError: ``max_jobs`` jobs are running (``Maximum jobs limit reached (N)``).
            JobError: a job of that name is still running.
            SqlError: ``sql`` does not hold exactly one streaming statement, or fails to validate.
        """
        streams = [s for s in parse_script(sql, file) if isinstance(s, CreateStream)]
        if len(streams) != 1:
            raise SqlError(
                f"deploy_job takes one streaming statement (CREATE STREAM|TABLE … AS SELECT); "
                f"{len(streams)} found: use deploy_app for an application"
            )
        with self._lock:
            current = self._jobs.get(name)
            if current is not None and not current.done:
                raise JobError(f"job {name!r} is already running; stop it first")
            self._check_room(1)
            job = self.engine.execute(sql, file=file)
            self._jobs[name] = job
        self._announce(name, job)
        return job

    def deploy_app(self, sql: str, *, file: str | None = None) -> list[Job]:
        """Validate every statement of an application, then start each streaming one as a job
        named after its stream (nothing starts when one fails to validate)."""
        count = sum(isinstance(s, CreateStream) for s in parse_script(sql, file))
        with self._lock:
            self._check_room(count)
            before = {id(j) for j in self.engine.jobs()}
            self.engine.execute(sql, file=file)
            jobs = [j for j in self.engine.jobs() if id(j) not in before]
            for job in jobs:
                self._jobs[job.name] = job
        for job in jobs:
            self._announce(job.name, job)
        return jobs

    def _check_room(self, wanted: int) -> None:
        running = sum(not j.done for j in self._jobs.values())
        if running + wanted > self.max_jobs:
            raise JobLimitError(f"Maximum jobs limit reached ({self.max_jobs})")

    def _announce(self, name: str, job: Job) -> None:
        _log.info("Job '%s' using JobProcessor architecture: %s", name, job.processor.description())

    def list_jobs(self) -> list[dict]:
        """Every job deployed here: name, stream, status, processor, records in and out."""
        with self._lock:
            jobs = list(self._jobs.items())
        out = []
        for name, job in jobs:
            m = job.metrics()
            out.append(
                {
                    "name": name,
                    "stream": job.name,
                    "status": job.status,
                    "processor": m["processor"],
                    "records_in": m["records_in"],
                    "records_out": m["records_out"],
                }
            )
        return out

    def job(self, name: str) -> Job:
        """The job deployed as ``name``."""
        with self._lock:
            job = self._jobs.get(name)
        if job is None:
            known = ", ".join(sorted(self._jobs)) or "none"
            raise JobError(f"no job named {name!r} (jobs: {known})")
        return job

    def job_status(self, name: str) -> str:
        """``Starting``, ``Running``, ``Stopping``, ``Stopped``, ``Finished`` or ``Error``."""
        return self.job(name).status

    def stop_job(self, name: str, timeout: float | None = 30) -> None:
        """Stop job ``name``: it stops reading, flushes what it read and ends."""
        self.job(name).stop(timeout)

    def close(self) -> None:
        """Stop every job; close the engine if the server opened it."""
        if self._owns_engine:
            self.engine.close()
        else:
            for job in list(self._jobs.values()):
                job.stop()

    def __enter__(self) -> StreamJobServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
