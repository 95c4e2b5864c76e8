"""The embedded engine: a DuckDB database plus the streaming jobs deployed on it.

``velosql.connect()`` returns an :class:`Engine`. Streaming statements deploy jobs; every other
statement is DuckDB SQL run from its original text on the engine's database, where results land
as tables too.
"""

from __future__ import annotations

import dataclasses
import os
import threading

import duckdb
import pyarrow as pa

from . import system
from .config import JobProcessorConfig, configured_settings, resolve_processor
from .connectors.duckdb_table import DuckDBTableSink, DuckDBTableSource
from .connectors.python import Channel, ChannelSink, PythonSink, PythonSource
from .errors import ConfigError, OptionError, SqlError, VelosqlError
from .plan.explain import explain_text
from .plan.planner import StreamPlan, plan
from .runtime.job import DEFAULT_STOP_TIMEOUT, FAILED, FINISHED, STOPPED, Job
from .runtime.processor import JobProcessorFactory
from .sandbox import Sandbox
from .sql import parse_script
from .sql.duckdb_errors import duckdb_error
from .sql.statements import (
    CreateStream,
    Describe,
    DropStream,
    Explain,
    ShowJobs,
    ShowStreams,
    Statement,
    Terminate,
)


def connect(
    database: str | duckdb.DuckDBPyConnection = ":memory:",
    *,
    processor: str | JobProcessorConfig | None = None,
    threads: int | None = 1,
    state: str | os.PathLike | None = None,
    sandbox: bool = False,
    allow_paths: list[str | os.PathLike] | tuple = (),
) -> Engine:
    """Open an engine on a new DuckDB database (a path or ``:memory:``) or an existing connection.

    ``threads`` sets DuckDB's thread count for a database velosql opens (V1 runs each job on one
    connection with one thread); an existing connection keeps its settings. ``processor`` is the
    default processor for statements that do not choose one. ``state``: the state location of
    every job (``'checkpoint.dir'``): each checkpoints there and resumes from its last checkpoint.

    ``sandbox``: run SQL that is not trusted (see :mod:`velosql.sandbox`): DuckDB's external
    access is off and locked on every connection that runs the statements, and every path a WITH
    clause names must lie under the working directory or one of ``allow_paths``. A connection
    given with ``enable_external_access = false`` is a sandbox without asking: the file
    connectors then use only what its ``allowed_directories`` and ``allowed_paths`` allow.
    """
    return Engine(
        database, processor=processor, threads=threads, state=state, sandbox=sandbox, allow_paths=allow_paths
    )


class Engine:
    """Deploys streaming statements as jobs and runs DuckDB SQL; a context manager."""

    def __init__(
        self,
        database=":memory:",
        *,
        processor=None,
        threads: int | None = 1,
        state=None,
        sandbox: bool = False,
        allow_paths=(),
    ) -> None:
        # Checked before a database file is opened (or created) outside it.
        boundary = Sandbox.create(allow_paths, state) if sandbox else None
        if isinstance(database, duckdb.DuckDBPyConnection):
            self.con, self._owns = database, False
        else:
            config = {"threads": threads} if threads else {}
            self.con, self._owns = duckdb.connect(database, config=config), True
        # The connection's own boundary wins: velosql cannot widen what the user locked.
        self.sandbox: Sandbox | None = Sandbox.of_connection(self.con) or boundary
        if boundary is not None:
            boundary.lock(self.con, directories=[boundary.state] if boundary.state else [])
        if isinstance(processor, JobProcessorConfig):
            processor = str(processor)
        self.default_processor = processor
        self.state_dir = None if state is None else os.fspath(state)  # 'checkpoint.dir' of every job
        self.config_path: str | None = None
        # How long a stopped job may take to flush when its statement sets no 'stop.timeout'.
        self.stop_timeout: float = DEFAULT_STOP_TIMEOUT
        self._jobs: dict[str, Job] = {}
        self._channels: dict[str, Channel] = {}
        self._outputs: dict[str, PythonSink] = {}
        self._pipes: set[str] = set()  # statements whose results later statements read as a stream
        # A statement reading a pipe -> the offset of the watermark it takes along (None: none).
        self._carried: dict[str, int | None] = {}
        self._lock = threading.RLock()
        self._closed = False
        # File sink paths locked by a deploy before its jobs prepare, by (statement, sink): each
        # sink takes its lock over as the job makes it (_make_sinks); the deploy releases the rest.
        self._claims: dict[tuple[str, str], object] = {}
        # Where each file sink's path is written, by (statement, sink), for the errors of the lock.
        self._path_places: dict[tuple[str, str], object] = {}
        # velosql_jobs, velosql_streams, …: views over the jobs' live state (system.py), created
        # by the first statement that names one (registering them imports pandas where it is
        # installed: ~0.2 s no job should pay).
        self._system_tables = False

    # ---- statements -----------------------------------------------------------------------------

    def execute(self, sql: str, *, file: str | None = None):
        """Run a script. Returns the last statement's result: a :class:`Job` for a streaming
        statement, a DuckDB relation for a query, the plan text for EXPLAIN, an Arrow table for SHOW.

        Every streaming statement is validated (parsed, planned, bound to its source's schema) before
        any job starts: when one fails, none runs.
        """
        statements = parse_script(sql, file)
        plans = {id(s): self._plan(s) for s in statements if isinstance(s, CreateStream)}
        self._connect_pipelines([plans[id(s)] for s in statements if isinstance(s, CreateStream)])
        claims = self._claim_sinks(list(plans.values()))
        prepared: list[Job] = []
        result = None
        try:
            for stmt in statements:
                if isinstance(stmt, CreateStream):
                    job = self._prepare(plans[id(stmt)])
                    prepared.append(job)
                    result = job
                else:
                    result = self._run_other(stmt)
        except BaseException:
            self._discard(prepared)
            raise
        finally:
            self._release_claims(claims)
        for job in prepared:
            job.start()
        return result

    def plan_of(self, stmt: CreateStream) -> StreamPlan:
        """Validate a streaming statement: its plan, with the config file's defaults (nothing runs)."""
        return self._plan(stmt)

    def deploy(self, plans: list[StreamPlan]) -> list[Job]:
        """Bind and start planned statements (see :meth:`plan_of`): all of them start, or none
        when one fails to bind to its source. The statement-at-a-time path of the command line."""
        self._connect_pipelines(plans)
        claims = self._claim_sinks(plans)
        prepared: list[Job] = []
        try:
            for p in plans:
                prepared.append(self._prepare(p))
        except BaseException:
            self._discard(prepared)
            raise
        finally:
            self._release_claims(claims)
        for job in prepared:
            job.start()
        return prepared

    def run_statement(self, stmt: Statement):
        """Run one statement that is not streaming; its result as :meth:`execute` returns it."""
        return self._run_other(stmt)

    def _discard(self, prepared: list[Job]) -> None:
        for job in prepared:
            _discard_sinks(job)  # nothing ran: each file keeps what it held
            job.executor.close()  # its source, sinks and scan were opened by prepare
            self._jobs.pop(job.name, None)

    def _claim_sinks(self, plans: list[StreamPlan]) -> list[tuple[str, str]]:
        """Lock the path of every file sink of ``plans`` before any of them prepares: a path
        another job writes (in this process or another) fails the deploy before anything ran.
        The keys of the claims taken; :meth:`_release_claims` releases those no sink took over."""
        # A statement whose job still runs is refused by _prepare, saying so.
        running = {n for n, j in self._jobs.items() if not j.done}
        wanted = [(p, s) for p in plans if p.name not in running for s in p.sinks if s.type == "file_sink"]
        if not wanted:
            return []
        from .connectors.files_sink import SinkLock, is_special

        taken: list[tuple[str, str]] = []
        try:
            for p, spec in wanted:
                path = str(spec.options.get("path"))
                if is_special(path):
                    continue  # a FIFO or device: written in place, without a lock
                try:
                    lock = SinkLock.acquire(spec.name, path, p.name)
                except OptionError as exc:
                    where = self._path_places.get((p.name, spec.name), p.location)
                    raise OptionError(exc.message, where) from None
                with self._lock:
                    self._claims[(p.name, spec.name)] = lock
                taken.append((p.name, spec.name))
        except BaseException:
            self._release_claims(taken)
            raise
        return taken

    def _release_claims(self, keys: list[tuple[str, str]]) -> None:
        with self._lock:
            left = [self._claims.pop(k) for k in keys if k in self._claims]
        for lock in left:
            lock.release()

    def _connect_pipelines(self, plans: list[StreamPlan]) -> None:
        """A statement that reads an earlier statement of the script as its source (not declared
        in WITH) reads every row that statement emits, as a stream, not its table once: the
        earlier statement's results also go to a channel of its name, which ends with its job."""
        earlier: dict[str, StreamPlan] = {}
        for p in plans:
            name = p.source.name
            if p.source.type is None and name in earlier:
                with self._lock:
                    channel = self._channels.get(name)
                    if channel is None or channel.closed:
                        self._channels[name] = Channel(name)
                    self._pipes.add(name)
                    # The earlier statement's watermark comes along when it bounds the column this
                    # statement takes its event time from (a window's end or start).
                    self._carried[p.name] = earlier[name].carried(p.time.column) if p.windowed else None
            earlier[p.name] = p

    def run(self, path_or_sql: str, *, wait: bool = True, timeout: float | None = None) -> list[Job]:
        """Deploy a .sql file (or SQL text) and, by default, wait for its jobs to finish."""
        if os.path.exists(path_or_sql) and not path_or_sql.lstrip().upper().startswith(("CREATE", "SELECT")):
            with open(path_or_sql, encoding="utf-8") as fh:
                text = fh.read()
            before = set(self._jobs)
            self.execute(text, file=path_or_sql)
        else:
            before = set(self._jobs)
            self.execute(path_or_sql)
        jobs = [j for n, j in self._jobs.items() if n not in before]
        if wait:
            for job in jobs:
                job.wait(timeout)
        return jobs

    def sql(self, query: str):
        """Run DuckDB SQL on the engine's database (results of jobs are tables here)."""
        self._install_system_tables(query)
        return self.con.sql(query)

    def _install_system_tables(self, sql: str) -> None:
        if not self._system_tables:
            self._system_tables = system.install_for(self, sql)

    def _plan(self, stmt: CreateStream) -> StreamPlan:
        # The config file's processor settings apply, as if written in WITH, where the statement
        # does not choose.
        settings = configured_settings(self.config_path)
        defaults = {
            "partitioning_strategy": settings.partitioning_strategy,
            "queue_threshold": str(settings.queue_threshold),
        }
        added = {
            key: value
            for key, value in defaults.items()
            if value is not None and key not in stmt.properties and key not in stmt.annotations
        }
        # A table the statement reads that data was pushed to (engine.push) is a stream, as if
        # declared '<name>.type' = 'python': two of them joined are two streams.
        added.update({f"{name}.type": "python" for name in self._pushed_tables(stmt)})
        if added:
            stmt = dataclasses.replace(stmt, properties={**stmt.properties, **added})
        if self.sandbox is not None:
            self._check_config_files(stmt)
        p = plan(stmt)
        if self.sandbox is not None:
            self._check_sandbox(p, stmt)
        self._check_file_sinks(p, stmt)
        return p

    def _check_config_files(self, stmt: CreateStream) -> None:
        """In a sandbox, refuse a ``config_file`` outside it before the planner reads it."""
        base = os.path.dirname(stmt.location.file) if stmt.location.file else None
        for key, value in stmt.properties.items():
            if key.lower() == "config_file" or key.lower().endswith(".config_file"):
                where = stmt.property_locations.get(key, stmt.location)
                self.sandbox.check(stmt.name, key, value, where, base)

    def _check_sandbox(self, p: StreamPlan, stmt: CreateStream) -> None:
        """In a sandbox, refuse every path of a file connector (and a state location) outside it."""
        places = {k.lower(): loc for k, loc in stmt.property_locations.items()}

        def check(key: str, value) -> None:
            self.sandbox.check(p.name, key, value, places.get(key.lower(), p.location))

        for src in (p.source, *(i.source for i in p.inputs)):
            if src.type in ("file_source", "file_source_mmap") and src.options.get("path") is not None:
                check(f"{src.name}.path", src.options["path"])
        for spec in p.sinks:
            if spec.type == "file_sink" and spec.options.get("path") is not None:
                check(f"{spec.name}.path", spec.options["path"])
        state = p.job_options.get("checkpoint.dir")
        if state is not None and (self.sandbox.state is None or not _same_dir(state, self.sandbox.state)):
            raise OptionError(
                f"statement {p.name!r}: 'checkpoint.dir' = {state!r} is refused in a sandbox: give the "
                "state location with --state DIR (connect(state=DIR)), which the sandbox lets DuckDB use",
                places.get("checkpoint.dir", p.location),
            )

    def _check_file_sinks(self, p: StreamPlan, stmt: CreateStream) -> None:
        """Refuse, before anything runs, a file sink path that holds a NUL byte, is a directory,
        or is read by the statement's own source (writing it would destroy the input)."""
        files = [s for s in p.sinks if s.type == "file_sink"]
        if not files:
            return
        from .connectors.files_sink import check_path, read_by

        sources = [p.source, *(i.source for i in p.inputs)]
        for spec in files:
            path = str(spec.options.get("path"))
            key = f"{spec.name}.path"
            where = next((loc for k, loc in stmt.property_locations.items() if k.lower() == key), p.location)
            self._path_places[(p.name, spec.name)] = where
            try:
                check_path(spec.name, path)
            except OptionError as exc:
                raise OptionError(exc.message, where) from None
            for src in sources:
                read = src.options.get("path") if src.type == "file_source" else None
                if read and read_by(str(read), path):
                    raise OptionError(
                        f"sink {spec.name!r} cannot write to {path!r}: its source {src.name!r} reads "
                        f"that file ('{src.name}.path' = {str(read)!r}), which writing would destroy; "
                        f"choose another '{key}'",
                        where,
                    )

    def _pushed_tables(self, stmt: CreateStream) -> list[str]:
        """The tables ``stmt`` reads that are channels of pushed data, declared by no WITH key and
        not tables or views of the database."""
        from sqlglot import exp

        if stmt.select is None or not self._channels:
            return []
        declared = {k.lower().partition(".")[0] for k in stmt.properties if "." in k}
        defined = {c.alias_or_name.lower() for c in stmt.select.find_all(exp.CTE)}
        names = {
            t.name.lower()
            for t in stmt.select.find_all(exp.Table)
            if isinstance(t.this, exp.Identifier) and not t.args.get("db")
        }
        # Not an earlier statement's output: that one is read as a pipeline (_connect_pipelines).
        candidates = sorted(
            n
            for n in names - declared - defined
            if n in self._channels and n not in self._pipes and n not in self._jobs
        )
        if not candidates:
            return []
        existing = {
            n.lower()
            for (n,) in self.con.execute(
                "SELECT table_name FROM duckdb_tables() UNION ALL SELECT view_name FROM duckdb_views()"
            ).fetchall()
        }
        return [n for n in candidates if n not in existing]

    def _prepare(self, p: StreamPlan) -> Job:
        with self._lock:
            existing = self._jobs.get(p.name)
            if existing is not None and not existing.done:
                raise SqlError(
                    f"stream {p.name!r} is already running; DROP STREAM {p.name} first", p.location
                )
            try:
                cfg = resolve_processor(p.processor, cli=self.default_processor, config_path=self.config_path)
            except ConfigError as exc:
                raise SqlError(str(exc), p.location) from None
            job = Job(p, self, JobProcessorFactory.create(cfg))
            self._jobs[p.name] = job
        try:
            job.prepare()
        except BaseException:
            _discard_sinks(job)
            with self._lock:
                if self._jobs.get(p.name) is job:
                    del self._jobs[p.name]
            raise
        return job

    def _run_other(self, stmt: Statement):
        if isinstance(stmt, ShowStreams):
            return self._show_streams()
        if isinstance(stmt, ShowJobs):
            return self._show_jobs()
        if isinstance(stmt, Explain):
            p = self._plan(stmt.statement)
            job = self._jobs.get(p.name) if stmt.analyze else None
            return explain_text(p, self._processor_for(p), job)
        if isinstance(stmt, DropStream):
            job = self._jobs.pop(stmt.name.lower(), None)
            if job is None and not stmt.if_exists:
                raise SqlError(f"no stream named {stmt.name!r}", stmt.location)
            if job is not None:
                job.stop()
            return None
        if isinstance(stmt, Terminate):
            job = self._jobs.get(stmt.name.lower())
            if job is None:
                raise SqlError(f"no stream named {stmt.name!r}", stmt.location)
            job.stop()
            return None
        if isinstance(stmt, Describe) and stmt.name.lower() in self._jobs:
            job = self._jobs[stmt.name.lower()]
            schema = job.executor.out_schema
            # DuckDB's names of the types (BIGINT, VARCHAR), as its own DESCRIBE shows them.
            types = self.con.cursor().from_arrow(schema.empty_table()).types
            return pa.table({"column_name": schema.names, "column_type": [str(t) for t in types]})
        text = stmt.text
        self._install_system_tables(text)
        try:
            return self.con.sql(text)
        except duckdb.Error as exc:
            raise duckdb_error(exc, text, stmt.location, as_written=True) from None

    def _processor_for(self, p: StreamPlan) -> JobProcessorConfig:
        return resolve_processor(p.processor, cli=self.default_processor, config_path=self.config_path)

    def explain(self, sql: str, *, file: str | None = None) -> str:
        """The plan of each streaming statement of ``sql`` (from ``file``, for error places) as text."""
        texts = []
        for stmt in parse_script(sql, file):
            if isinstance(stmt, CreateStream):
                p = self._plan(stmt)
                texts.append(explain_text(p, self._processor_for(p), None))
        return "\n\n".join(texts)

    # ---- jobs -----------------------------------------------------------------------------------

    def jobs(self) -> list[Job]:
        return list(self._jobs.values())

    def job(self, name: str) -> Job:
        try:
            return self._jobs[name.lower()]
        except KeyError:
            raise VelosqlError(f"no job named {name!r}") from None

    def wait(self, timeout: float | None = None) -> None:
        for job in self.jobs():
            job.wait(timeout)

    def _show_streams(self) -> pa.Table:
        # The first columns of the system table velosql_streams: one source of truth.
        table = system.show(self, "velosql_streams")
        return table.select(table.column_names[:7])

    def _show_jobs(self) -> pa.Table:
        rows = [j.metrics() for j in self.jobs()]
        if not rows:
            return pa.table({"name": pa.array([], pa.string())})
        # Every job's keys (V2 jobs add skew, workers_start_seconds and partitions), name first; missing values are NULL.
        keys = list(dict.fromkeys(["name", "status", "processor", *(k for r in rows for k in r)]))
        return pa.table({k: [r.get(k) for r in rows] for k in keys})

    # ---- Python in and out ----------------------------------------------------------------------

    def channel(self, name: str) -> Channel:
        with self._lock:
            key = name.lower()
            if key not in self._channels:
                self._channels[key] = Channel(key)
            return self._channels[key]

    def push(self, source: str, data) -> int:
        """Push records (Arrow, pandas, dict of columns, list of dicts) into a python source."""
        return self.channel(source).push(data)

    def close_source(self, source: str) -> None:
        """Declare a python source finished: its jobs flush and end once they read everything."""
        self.channel(source).close()

    def pull(self, stream: str) -> pa.Table:
        """Results of a stream with ``'<stream>.type' = 'python'`` written since the last pull."""
        try:
            return self._outputs[stream.lower()].pull()
        except KeyError:
            raise VelosqlError(
                f"stream {stream!r} has no python sink; declare '{stream}.type' = 'python' or query "
                f"its table with engine.sql('SELECT * FROM {stream}')"
            ) from None

    # ---- wiring used by executors ---------------------------------------------------------------

    def _job_connection(self) -> duckdb.DuckDBPyConnection:
        return self.con.cursor()

    def _make_source(self, p: StreamPlan, spec=None):
        """The source of ``p`` (or of its input ``spec``, for a statement over several streams)."""
        spec = spec or p.source
        stype = spec.type or self._infer_source_type(spec.name, p)
        if stype == "file_source":
            from .connectors.files import FileSource

            source = FileSource(spec.name, spec.options, self.con)
            source.sandbox = self.sandbox  # checks each file it finds; locks the scan pushdown
            return source
        if stype == "python":
            declared = spec.options.get("schema")
            if declared:
                from .connectors.files_formats import schema_from_sql

                declared = schema_from_sql(declared, f"{spec.name}.schema", self.con)
            return PythonSource(
                spec.name,
                self.channel(spec.name),
                spec.options.get("poll_interval") or 200_000,
                declared,
                carried=self._carried.get(p.name) if spec is p.source else None,
            )
        if stype == "kafka_source":
            from .connectors.files_formats import schema_from_sql
            from .connectors.kafka import KafkaSource

            declared = spec.options.get("schema")
            declared = declared and schema_from_sql(declared, f"{spec.name}.schema", self.con)
            return KafkaSource(spec.name, spec.options, declared or None)
        if stype == "table":
            table = spec.options.get("table") or spec.name
            return DuckDBTableSource(
                spec.name, self.con.cursor(), table, spec.options.get("batch_size") or 65536
            )
        raise SqlError(f"source {spec.name!r}: unsupported type {stype!r}", p.location)

    def _infer_source_type(self, name: str, p: StreamPlan) -> str:
        if name in self._channels:
            return "python"
        found = self.con.execute(
            "SELECT count(*) FROM (SELECT table_name AS n FROM duckdb_tables() UNION ALL "
            "SELECT view_name FROM duckdb_views()) WHERE lower(n) = ?",
            [name],
        ).fetchall()[0][0]
        if found:
            return "table"
        raise SqlError(
            f"source {name!r} is not defined: give '{name}.type' (file_source, python or table) "
            f"with its options, create a DuckDB table {name}, or push data with engine.push({name!r}, …)",
            p.location,
        )

    def _make_sinks(self, p: StreamPlan, con: duckdb.DuckDBPyConnection) -> list:
        sinks = []
        try:
            for spec in p.sinks:
                if spec.type == "duckdb_table":
                    sinks.append(
                        DuckDBTableSink(spec.name, con, spec.options.get("table") or spec.name, spec.key)
                    )
                elif spec.type == "python":
                    sink = PythonSink(spec.name)
                    self._outputs[spec.name] = sink
                    sinks.append(sink)
                elif spec.type == "file_sink":
                    from .connectors.files import FileSink

                    with self._lock:  # the path's lock, claimed by the deploy
                        lock = self._claims.pop((p.name, spec.name), None)
                    try:
                        sinks.append(FileSink(spec.name, spec.options, lock))
                    except BaseException:
                        if lock is not None:
                            lock.release()
                        raise
                elif spec.type == "kafka_sink":
                    from .connectors.kafka_sink import KafkaSink

                    sinks.append(KafkaSink(spec.name, spec.options, spec.key, p.name))
                else:
                    raise SqlError(f"sink {spec.name!r}: unsupported type {spec.type!r}", p.location)
        except BaseException:
            for sink in sinks:
                getattr(sink, "discard", sink.close)()
            raise
        if p.name in self._pipes:
            sinks.append(ChannelSink(p.name, self.channel(p.name)))
        return sinks

    # ---- lifecycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every job (they flush) and wait for them, each at most its stop timeout (and a
        grace): a job whose sink is still blocked then is abandoned (see :meth:`Job.stop`)."""
        for job in self.jobs():
            job.request_stop()
        for job in self.jobs():
            job.stop()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for ch in self._channels.values():
            ch.close()
        self.stop()
        if self._owns:
            self.con.close()
        elif self._system_tables:
            system.uninstall(self)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _same_dir(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _discard_sinks(job: Job) -> None:
    """Close the sinks a job made without making their files visible (the job never ran)."""
    for sink in getattr(job.executor, "sinks", None) or []:
        try:
            getattr(sink, "discard", sink.close)()
        except Exception:  # noqa: BLE001 - releasing the others matters more
            pass


__all__ = ["Engine", "connect", "FINISHED", "STOPPED", "FAILED"]
