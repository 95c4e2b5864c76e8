"""The ``velosql`` command: the shell, DuckDB's ``-c``/``-f``/stdin habits, ``run``, ``serve`` and ``explain``.

``velosql`` on a terminal opens the shell (``shell.py``); with ``-c SQL`` (repeatable), ``-f FILE``
or SQL piped on stdin it runs the statements and prints their results as DuckDB's CLI does
(``script.py``, ``render.py``).

Exit codes: 0 every statement ran and every job finished (or was stopped by ``--until-idle``);
1 a statement or a job failed (``-c``, ``-f`` and ``run`` stop at the first failed statement,
stdin goes on unless ``-bail``, as DuckDB's CLI does), or a stop timed out with rows unwritten;
2 the script, an option, the configuration or the command line is wrong, or a sink's file is
refused (nothing ran); 130 / 143 stopped by SIGINT / SIGTERM (the jobs were stopped and flushed,
each within its stop timeout). ``serve`` runs until SIGINT / SIGTERM, which is its normal end: 0,
or 1 if a stop timed out with rows unwritten (a job that failed meanwhile was reported then).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

import click
import duckdb

from .. import __version__
from ..config import JobProcessorConfig, load_settings
from ..engine import Engine, connect
from ..errors import ConfigError, SqlError, VelosqlError
from ..runtime.job import FAILED, Job
from . import render
from .progress import open_progress, summary_line
from .script import FAILED as FAILED_OUTCOME
from .script import INVALID, OK, Runner

# How long the wait loop blocks on one job before it looks at signals, idleness and the display.
POLL_SECONDS = 0.2
USAGE_ERROR = 2
JOB_FAILED = 1


class CliError(click.ClickException):
    """An error reported as ``velosql: error: <message>`` with an exit code, without a traceback."""

    def __init__(self, message: str, exit_code: int = USAGE_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(f"velosql: error: {self.message}", err=True)


def main() -> None:
    """Console-script entry point (``velosql`` and ``python -m velosql``)."""
    try:
        cli(prog_name="velosql")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    # By now every job is stopped and every sink, file and database closed (``run`` closes the
    # engine before it returns). Tearing the interpreter down would only free memory the system
    # reclaims anyway: ~60 ms of a short run (1BRC: 0.91 -> 0.85 s), so the process ends here.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _Command(click.Group):
    """The group, remembering the order of ``-c`` and ``-f`` on the command line (DuckDB runs them
    in that order; click gathers each repeated option's values apart)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        order, i = [], 0
        while i < len(args) and args[i] not in self.commands:
            if args[i] in ("-c", "-f"):
                order.append(args[i])
                i += 1
            i += 1
        ctx.meta["velosql.order"] = order
        return super().parse_args(ctx, args)


def _sandbox_options(fn):
    fn = click.option(
        "--allow-path",
        "allow_paths",
        metavar="DIR",
        multiple=True,
        type=click.Path(file_okay=False),
        help="With --sandbox: a directory besides the working directory whose files the "
        "statements may read and write (repeatable).",
    )(fn)
    return click.option(
        "--sandbox",
        is_flag=True,
        help="Run SQL that is not trusted: DuckDB reads and writes no file and installs no "
        "extension, and the file connectors use only the paths the WITH clauses name, under the "
        "working directory or an --allow-path.",
    )(fn)


def _check_server(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from .shell import server_url

    try:
        return server_url(value)
    except VelosqlError as exc:
        raise click.BadParameter(str(exc)) from None


_server_option = click.option(
    "--server",
    metavar="URL",
    callback=_check_server,
    help="The shell: SHOW JOBS lists the jobs of the velosql serve at URL (http://HOST:PORT, as "
    "serve prints it) instead of its own; .server changes it.",
)


def _mode_flags(fn):
    for mode in reversed(render.MODES):
        fn = click.option(f"-{mode}", "mode", flag_value=mode, help=f"Print results in {mode} mode.")(fn)
    return fn


@click.group(
    cls=_Command,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="velosql", message="%(prog)s %(version)s")
@click.option("-c", "commands", metavar="SQL", multiple=True, help="Run SQL (repeatable, in order with -f).")
@click.option("-f", "files", metavar="FILE", multiple=True, type=click.Path(dir_okay=False),
              help="Run the statements of FILE (repeatable).")  # fmt: skip
@_mode_flags
@click.option("-noheader", "header", flag_value=False, default=True, help="Print no column names.")
@click.option("-header", "header", flag_value=True, help="Print column names (the default).")
@click.option("-bail", is_flag=True, help="Stop SQL piped on stdin at its first error (-c and -f always do).")
@click.option("--database", "-d", metavar="FILE", type=click.Path(dir_okay=False),
              help="A DuckDB database file (created if missing) that keeps every table; default in memory.")  # fmt: skip
@click.option("--processor", metavar="STR", callback=lambda c, p, v: _check_processor(c, p, v),
              help="Processor of statements that choose none (v1, v2, v2:N, …).")  # fmt: skip
@click.option("--config", metavar="YAML", type=click.Path(dir_okay=False), help="YAML config file.")
@_server_option
@_sandbox_options
@click.pass_context
def cli(
    ctx: click.Context,
    commands,
    files,
    mode,
    header,
    bail,
    database,
    processor,
    config,
    server,
    sandbox,
    allow_paths,
) -> None:
    """velosql: streaming SQL embedded in DuckDB.

    On a terminal, opens the shell. With -c, -f or SQL piped on stdin, runs the statements and
    prints their results as DuckDB's CLI does.
    """
    if ctx.invoked_subcommand is not None:
        return
    settings = render.Settings(mode=mode or "duckbox", header=header, width=_width())
    scripts = _scripts(ctx, commands, files)
    if not scripts and sys.stdin.isatty():
        from .shell import Shell

        engine = _open_engine(processor, config, database, sandbox=sandbox, allow_paths=allow_paths)
        sys.exit(Shell(engine, database, settings, server=server).loop())
    if server is not None:
        raise CliError(
            "--server attaches the shell to a server, and -c, -f and stdin do not open the shell: "
            f"GET {server}/jobs answers the jobs as JSON"
        )
    engine = _open_engine(processor, config, database, sandbox=sandbox, allow_paths=allow_paths)
    try:
        if scripts:
            code = _run_scripts(engine, scripts, settings, bail=True, database=database)
        else:
            code = _run_scripts(engine, [(sys.stdin.read(), None)], settings, bail=bail, database=database)
    finally:
        engine.close()
    sys.exit(code)


# ---- shared options ------------------------------------------------------------------------------


def _check_processor(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            JobProcessorConfig.parse(value)
        except ConfigError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


_app_argument = click.argument("app", metavar="APP.sql", type=click.Path(exists=True, dir_okay=False))
_processor_option = click.option(
    "--processor",
    metavar="STR",
    callback=_check_processor,
    help="Processor of statements that choose none: v1, v2, v2:N, v2:affinity or v2:N:affinity. "
    "Overrides $PROCESSOR_CONFIG and the config file.",
)
_config_option = click.option(
    "--config",
    metavar="YAML",
    type=click.Path(dir_okay=False),
    help="YAML config file (processor.architecture, …); default $VELOSQL_CONFIG or ./velosql.yaml.",
)
_database_option = click.option(
    "--database",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="A DuckDB database file (created if missing) that keeps every table, late rows and dead "
    "letters included; default in memory.",
)


def _read_script(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{path}: cannot read the script: {exc}") from None


def _open_engine(
    processor: str | None,
    config: str | None,
    database: str | None = None,
    *,
    state: str | None = None,
    sandbox: bool = False,
    allow_paths: tuple[str, ...] = (),
) -> Engine:
    if config is not None:
        try:
            load_settings(config)  # report a bad file now, even if no statement falls back to it
        except ConfigError as exc:
            raise CliError(str(exc)) from None
    if allow_paths and not sandbox:
        raise CliError("--allow-path is a setting of the sandbox: give --sandbox too")
    try:
        engine = connect(
            database or ":memory:", processor=processor, state=state, sandbox=sandbox, allow_paths=allow_paths
        )
    except duckdb.Error as exc:
        raise CliError(f"{database}: cannot open the database: {exc}") from None
    except VelosqlError as exc:
        raise CliError(str(exc)) from None
    engine.config_path = config
    return engine


def _width() -> int | None:
    """The terminal's width for wide results; None (DuckDB's choice) when stdout is not one."""
    return os.get_terminal_size(sys.stdout.fileno()).columns if sys.stdout.isatty() else None


def _message(exc: VelosqlError, path: str) -> str:
    """The error's text, its location naming ``path`` when the engine did not know the file."""
    loc = getattr(exc, "location", None)
    if isinstance(exc, SqlError) and loc is not None and loc.file is None:
        return f"{path}:{loc.line}:{loc.col}: {exc.message}"
    return str(exc)


# ---- scripts: -c, -f, stdin, run -----------------------------------------------------------------


def _scripts(
    ctx: click.Context, commands: tuple[str, ...], files: tuple[str, ...]
) -> list[tuple[str, str | None]]:
    """The ``-c`` strings and ``-f`` files as (text, file name) in command-line order."""
    commands_left, files_left = list(commands), list(files)
    scripts: list[tuple[str, str | None]] = []
    for flag in ctx.meta.get("velosql.order", []):
        if flag == "-c" and commands_left:
            scripts.append((commands_left.pop(0), None))
        elif flag == "-f" and files_left:
            path = files_left.pop(0)
            scripts.append((_read_script(path), path))
    return scripts


def _run_scripts(
    engine: Engine,
    scripts: list[tuple[str, str | None]],
    settings: render.Settings,
    *,
    bail: bool,
    database: str | None,
    until_idle: float | None = None,
    invalid_code: int = JOB_FAILED,
    serving: Callable[[Engine], contextlib.AbstractContextManager] | None = None,
) -> int:
    """Run scripts in order (stopping at the first failure when ``bail``), wait for the jobs to
    finish, report them; the exit code. ``invalid_code`` is the code of a script that did not
    validate (nothing of it ran).

    With ``serving`` (``velosql serve``), once every statement has run the jobs are served (inside
    ``serving(engine)``) until a signal, whether they end or fail meanwhile, and that signal is a
    clean end (see :func:`_supervise`)."""
    with _StopSignals() as signals:
        runner = Runner(
            engine,
            settings,
            sys.stdout,
            sys.stderr,
            wait_for_jobs=True,
            prefix="velosql: error: ",
            stopping=lambda: signals.received is not None,
            progress=lambda: open_progress(sys.stderr),
        )
        outcomes = []
        for text, file in scripts:
            if file is None and text.lstrip().startswith("."):
                outcomes.append(_dot_command(engine, settings, text))
            else:
                outcomes.append(runner.run(text, file, bail=bail))
            if outcomes[-1] != OK and bail:
                break
        if outcomes and outcomes[-1] != OK and bail:
            engine.stop()
        serve = serving is not None and all(o == OK for o in outcomes)
        with serving(engine) if serve else contextlib.nullcontext():
            code = _supervise(engine, until_idle, signals, serving=serve)
        _report_kept_tables(engine, database)
    if serve:
        return code
    if signals.exit_code is not None:
        return signals.exit_code
    if any(o != OK for o in outcomes):
        only_invalid = all(o in (OK, INVALID) for o in outcomes) and not engine.jobs()
        return invalid_code if only_invalid else JOB_FAILED
    return code


def _dot_command(engine: Engine, settings: render.Settings, line: str) -> str:
    """``-c .tables``, ``-c ".mode csv"``: a dot-command, as the shell runs it."""
    from . import dotcommands
    from .shell import Shell

    try:
        dotcommands.run(Shell(engine, None, settings), line.strip())
    except VelosqlError as exc:
        click.echo(f"velosql: error: {exc}", err=True)
        return FAILED_OUTCOME
    return OK


def _report_kept_tables(engine: Engine, database: str | None) -> None:
    """Name the late-row and dead-letter tables that hold rows (they vanish with an in-memory database)."""
    where = f"in {database}" if database else "(in memory: --database FILE keeps them)"
    for job in engine.jobs():
        kept = []
        for table, what in ((job.plan.late_table, "late rows"), (job.plan.dlq_table, "dead letters")):
            try:
                count = engine.sql(f'SELECT count(*) FROM "{table}"').fetchall()[0][0]
            except duckdb.Error:
                continue  # no such table: nothing was kept
            if count:
                kept.append(f"{count} {what} in table {table}")
        if kept:
            click.echo(f"velosql: job {job.name}: {', '.join(kept)} {where}", err=True)


# ---- velosql shell -------------------------------------------------------------------------------


@cli.command()
@click.argument("database", required=False, type=click.Path(dir_okay=False))
@_processor_option
@_config_option
@_server_option
@_sandbox_options
def shell(
    database: str | None,
    processor: str | None,
    config: str | None,
    server: str | None,
    sandbox: bool,
    allow_paths: tuple,
) -> None:
    """Open the interactive shell on DATABASE (a DuckDB file, created if missing; default in memory)."""
    from .shell import Shell

    engine = _open_engine(processor, config, database, sandbox=sandbox, allow_paths=allow_paths)
    sys.exit(Shell(engine, database, render.Settings(width=_width()), server=server).loop())


# ---- velosql run ---------------------------------------------------------------------------------


_stop_timeout_option = click.option(
    "--stop-timeout",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="How long a stopped job may take to flush before a sink still blocked is abandoned "
    "(what was not written is reported); for statements without 'stop.timeout'. Default 10.",
)
_state_option = click.option(
    "--state",
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="State location: every job checkpoints there (each 'checkpoint.interval', 10 s, and when "
    "stopped) and a run with the same DIR resumes from the last checkpoint.",
)


def _open_app_engine(
    processor: str | None,
    config: str | None,
    database: str | None,
    state: str | None,
    stop_timeout: float | None,
    sandbox: bool,
    allow_paths: tuple[str, ...],
) -> Engine:
    """The engine of ``run`` and ``serve``."""
    engine = _open_engine(processor, config, database, state=state, sandbox=sandbox, allow_paths=allow_paths)
    if stop_timeout is not None:
        engine.stop_timeout = stop_timeout
    return engine


@cli.command()
@_app_argument
@_processor_option
@click.option(
    "--until-idle",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Stop the jobs (they flush) once no job has read a record for SECONDS; "
    "ends jobs of watched sources.",
)
@_stop_timeout_option
@_config_option
@_database_option
@_state_option
@_sandbox_options
def run(
    app: str,
    processor: str | None,
    until_idle: float | None,
    stop_timeout: float | None,
    config: str | None,
    database: str | None,
    state: str | None,
    sandbox: bool,
    allow_paths: tuple[str, ...],
) -> None:
    """Run APP.sql: deploy its streaming statements and print the results of the others, in order.

    A statement that follows streaming statements runs once every earlier job with bounded input
    has finished (a note says when one runs beside a job of unbounded input).
    """
    text = _read_script(app)
    engine = _open_app_engine(processor, config, database, state, stop_timeout, sandbox, allow_paths)
    try:
        code = _run_scripts(
            engine,
            [(text, app)],
            render.Settings(width=_width()),
            bail=True,
            database=database,
            until_idle=until_idle,
            invalid_code=USAGE_ERROR,
        )
    finally:
        engine.close()
    sys.exit(code)


# ---- velosql serve -------------------------------------------------------------------------------

DEFAULT_HTTP = "127.0.0.1:8123"


def _check_address(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, int]:
    """``PORT`` (on 127.0.0.1), ``HOST:PORT`` or ``[IPv6]:PORT`` as (host, port)."""
    host, _, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        raise click.BadParameter(f"{value!r} is not [HOST:]PORT: a port from 0 to 65535 (0 picks a free one)")
    return host, int(port)


@cli.command()
@click.argument(
    "apps", metavar="APP.sql...", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False)
)
@_processor_option
@click.option(
    "--http",
    "address",
    metavar="[HOST:]PORT",
    default=DEFAULT_HTTP,
    show_default=True,
    callback=_check_address,
    help="Where to answer GET /health, /jobs and /metrics: a port on 127.0.0.1, or HOST:PORT "
    "(no authentication: another host than the loopback exposes the jobs' state). Port 0 picks a "
    "free port; the URL is printed on stderr.",
)
@_stop_timeout_option
@_config_option
@_database_option
@_state_option
@_sandbox_options
def serve(
    apps: tuple[str, ...],
    processor: str | None,
    address: tuple[str, int],
    stop_timeout: float | None,
    config: str | None,
    database: str | None,
    state: str | None,
    sandbox: bool,
    allow_paths: tuple[str, ...],
) -> None:
    """Serve APP.sql...: deploy their statements, as run does, and keep the jobs running until
    SIGTERM or SIGINT, answering GET /health, /jobs and /metrics over HTTP.

    Jobs that end (bounded input) or fail stay listed with their status; a failure is reported on
    stderr and the other jobs go on. SIGTERM or SIGINT stops every job (with --state each takes
    its checkpoint) and ends with 0, or 1 if a stop timed out with rows unwritten.
    """
    from ..monitor import MonitorServer

    scripts = [(_read_script(app), app) for app in apps]
    engine = _open_app_engine(processor, config, database, state, stop_timeout, sandbox, allow_paths)
    monitor = None
    try:
        host, port = address
        try:
            monitor = MonitorServer(engine, host, port)
        except OSError as exc:
            raise CliError(
                f"cannot serve HTTP on {host}:{port}: {exc.strerror or exc}; choose another address "
                "with --http [HOST:]PORT (port 0 picks a free one)"
            ) from None
        code = _run_scripts(
            engine,
            scripts,
            render.Settings(width=_width()),
            bail=True,
            database=database,
            invalid_code=USAGE_ERROR,
            serving=lambda e: _serving(monitor, e),
        )
    finally:
        if monitor is not None:
            monitor.close()
        engine.close()
    sys.exit(code)


@contextlib.contextmanager
def _serving(monitor, engine: Engine):
    """Answer HTTP requests while the jobs are served; say where on stderr."""
    monitor.start()
    n = len(engine.jobs())
    click.echo(f"velosql: serving {monitor.url} ({n} job{'' if n == 1 else 's'})", err=True)
    try:
        yield
    finally:
        monitor.close()


class _StopSignals:
    """Turns SIGINT and SIGTERM into a request to stop the jobs cleanly; a second signal kills."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signum
        # Should flushing hang, the next Ctrl-C ends the process the default way.
        signal.signal(signum, signal.SIG_DFL)

    def __enter__(self) -> _StopSignals:
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    @property
    def exit_code(self) -> int | None:
        return None if self.received is None else 128 + self.received


class _IdleClock:
    """Tells when no job's ``records_in`` has changed for ``seconds`` (never when ``seconds`` is None)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._seen: tuple[int, ...] | None = None
        self._since = time.monotonic()

    def expired(self, jobs: list[Job]) -> bool:
        if self.seconds is None:
            return False
        seen = tuple(j.metrics()["records_in"] for j in jobs)
        now = time.monotonic()
        if seen != self._seen:
            self._seen, self._since = seen, now
        return now - self._since >= self.seconds


def _supervise(
    engine: Engine, until_idle: float | None, signals: _StopSignals, *, serving: bool = False
) -> int:
    """Wait for the jobs (showing progress), stop them when asked, report them; the exit code.

    ``run`` waits until every job has ended, stopping them all at a signal, once idle or once one
    has failed. ``serve`` (``serving``) waits for a signal only: a job that fails is reported
    at once and the others go on; the signal stops them all and is a clean end (0) unless a stop
    left rows unwritten.
    """
    jobs = engine.jobs()
    idle = _IdleClock(until_idle)
    progress = open_progress(sys.stderr)
    reported: set[int] = set()
    try:
        while True:
            running = [j for j in jobs if not j.done]
            if not running and not serving:
                break
            failed = any(j.status == FAILED for j in jobs) and not serving
            if signals.received or idle.expired(jobs) or failed:
                engine.stop()
                break
            if serving:
                _report_failures(jobs, reported)
            if running:
                _wait(running[0], POLL_SECONDS)
            else:
                time.sleep(POLL_SECONDS)  # every job has ended: a server waits for its signal
            progress.update(jobs)
    finally:
        progress.close()
    for job in jobs:
        click.echo(summary_line(job), err=True)
    errors = []
    for job in jobs:
        err = _job_error(job)
        if err is not None:
            errors.append(err)
            if id(job) not in reported:
                click.echo(f"velosql: error: {err}", err=True)
    # A stop that timed out left rows unwritten (the warning said which): not a clean end.
    lost = any(getattr(job, "unflushed", None) for job in jobs)
    if serving:
        return JOB_FAILED if lost else 0
    if signals.exit_code is not None:
        return signals.exit_code
    return JOB_FAILED if errors or lost else 0


def _report_failures(jobs: list[Job], reported: set[int]) -> None:
    """``serve``: say on stderr which job has just failed (once; the server goes on)."""
    for job in jobs:
        err = _job_error(job)
        if err is not None and id(job) not in reported:
            reported.add(id(job))
            click.echo(f"velosql: error: {err}; the other jobs go on", err=True)


def _wait(job: Job, timeout: float) -> None:
    try:
        job.wait(timeout)
    except VelosqlError:
        pass  # reported by _job_error once every job has ended


def _job_error(job: Job) -> str | None:
    if not job.done or job.status != FAILED:
        return None
    try:
        job.wait(0)
    except VelosqlError as exc:
        return str(exc)
    return f"job {job.name!r} failed"


# ---- velosql explain -----------------------------------------------------------------------------


@cli.command()
@_app_argument
@_processor_option
@_config_option
def explain(app: str, processor: str | None, config: str | None) -> None:
    """Print the plan of each streaming statement of APP.sql (nothing runs)."""
    text = _read_script(app)
    engine = _open_engine(processor, config)
    try:
        plans = engine.explain(text)
    except VelosqlError as exc:
        raise CliError(_message(exc, app)) from None
    finally:
        engine.close()
    if not plans:
        click.echo(f"velosql: {app} has no streaming statement", err=True)
        return
    # Engine.explain parses without a file name, so its headers say "<sql>:line:col".
    click.echo(plans.replace("(<sql>:", f"({app}:"))


# ---- velosql verify ------------------------------------------------------------------------------


@cli.command()
@click.argument(
    "apps", metavar="APP.sql...", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False)
)
@click.option("--processor", "processors", metavar="STR", multiple=True, callback=lambda c, p, v: [_check_processor(c, p, x) for x in v],
              help="A processor to stream with (repeatable); default v1 and v2:2.")  # fmt: skip
@click.option("--splits", type=click.IntRange(min=0), default=2, show_default=True,
              help="Batch sizes tried beside the statement's own, in file order.")  # fmt: skip
@click.option("--orders", type=click.IntRange(min=0), default=2, show_default=True,
              help="Arrival orders shuffled within the lateness (windowed statements).")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the batch sizes and orders.")
@_config_option
def verify(
    apps: tuple[str, ...], processors, splits: int, orders: int, seed: int, config: str | None
) -> None:
    """Check that each streaming statement of APP.sql gives DuckDB's batch answer.

    Each statement over bounded input runs as a stream under each processor, in file order at
    several batch sizes and (windowed) in arrival orders shuffled within its lateness, and as
    DuckDB batch SQL over the same rows. Prints "identical" or the first rows that differ. Exit
    status: 0 all identical, 1 one differs, 2 an error. Nothing is written to the sinks.
    """
    from ..verify import PROCESSORS
    from ..verify import verify as run_verify
    from .verify import Progress, report

    if config is not None:
        try:
            load_settings(config)
        except ConfigError as exc:
            raise CliError(str(exc)) from None
    code = 0
    for app in apps:
        text = _read_script(app)
        progress = Progress(sys.stderr)
        try:
            outcomes = run_verify(text, app, processors=tuple(processors) or PROCESSORS, splits=splits,
                                  orders=orders, seed=seed, config_path=config, progress=progress)  # fmt: skip
        except VelosqlError as exc:
            raise CliError(_message(exc, app)) from None
        finally:
            progress.close()
        if not outcomes:
            raise CliError(f"{app} has no streaming statement to verify")
        code = max(code, report(app, outcomes, sys.stdout, rich=sys.stdout.isatty()))
    sys.exit(code)
