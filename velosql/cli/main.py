"""The ``velosql`` command: run a streaming SQL application, or show its plan.

Exit codes of ``velosql run``: 0 every job finished (or was stopped by ``--until-idle``); 1 a job
failed while running; 2 the script, an option, the configuration or the command line is wrong
(nothing ran); 130 / 143 stopped by SIGINT / SIGTERM (the jobs were stopped cleanly and flushed).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

import click

from .. import __version__
from ..config import JobProcessorConfig, load_settings
from ..engine import Engine, connect
from ..errors import ConfigError, SqlError, VelosqlError
from ..runtime.job import FAILED, Job
from ..server import StreamJobServer
from .progress import open_progress, summary_line

# How long the wait loop blocks on one job before it looks at signals, idleness and the display.
POLL_SECONDS = 0.2
MAX_JOBS = 1000  # statements of one application
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


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="velosql", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """velosql: streaming SQL embedded in DuckDB."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


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


def _read_script(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{path}: cannot read the script: {exc}") from None


def _open_engine(processor: str | None, config: str | None) -> Engine:
    if config is not None:
        try:
            load_settings(config)  # report a bad file now, even if no statement falls back to it
        except ConfigError as exc:
            raise CliError(str(exc)) from None
    engine = connect(processor=processor)
    engine.config_path = config
    return engine


def _message(exc: VelosqlError, path: str) -> str:
    """The error's text, its location naming ``path`` when the engine did not know the file."""
    loc = getattr(exc, "location", None)
    if isinstance(exc, SqlError) and loc is not None and loc.file is None:
        return f"{path}:{loc.line}:{loc.col}: {exc.message}"
    return str(exc)


# ---- velosql run ---------------------------------------------------------------------------------


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
@_config_option
def run(app: str, processor: str | None, until_idle: float | None, config: str | None) -> None:
    """Run the streaming statements of APP.sql until their input ends."""
    text = _read_script(app)
    with _StopSignals() as signals:
        engine = _open_engine(processor, config)
        try:
            try:
                StreamJobServer(max_jobs=MAX_JOBS, engine=engine).deploy_app(text, file=app)
            except VelosqlError as exc:
                raise CliError(_message(exc, app)) from None
            code = _supervise(engine, until_idle, signals)
        finally:
            engine.close()
    sys.exit(code)


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


def _supervise(engine: Engine, until_idle: float | None, signals: _StopSignals) -> int:
    """Wait for the jobs (showing progress), stop them when asked, report them; the exit code."""
    jobs = engine.jobs()
    idle = _IdleClock(until_idle)
    progress = open_progress(sys.stderr)
    try:
        while True:
            running = [j for j in jobs if not j.done]
            if not running:
                break
            if signals.received or idle.expired(jobs) or any(j.status == FAILED for j in jobs):
                engine.stop()
                break
            _wait(running[0], POLL_SECONDS)
            progress.update(jobs)
    finally:
        progress.close()
    for job in jobs:
        click.echo(summary_line(job), err=True)
    errors = [err for err in map(_job_error, jobs) if err is not None]
    for err in errors:
        click.echo(f"velosql: error: {err}", err=True)
    if signals.exit_code is not None:
        return signals.exit_code
    return JOB_FAILED if errors else 0


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
