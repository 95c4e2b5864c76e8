"""The interactive shell: ``velosql`` on a terminal, or ``velosql shell [DATABASE]``.

A prompt_toolkit session (litecli's and pgcli's set-up): input ends at a ``;`` outside strings and
comments (or is one dot-command line), history persists under the XDG data directory, Tab
completes from the live catalogue (``completion.py``), SQL is highlighted with pygments' lexer.
Statements run through the same :class:`~velosql.cli.script.Runner` as scripts, except that
nothing waits for jobs: a streaming statement deploys a background job and returns at once.

Ctrl-C clears the input, or interrupts a running query; Ctrl-D (or ``.exit``) stops the jobs —
they flush — and ends the shell. An error prints one message and the prompt comes back.

Attached to a ``velosql serve`` (``--server URL`` or ``.server URL``), ``SHOW JOBS`` (and
``.jobs``) lists that server's jobs instead: its ``GET /jobs`` answer, typed as the
``velosql_jobs`` rows it is made of and rendered as any result. Everything else stays local.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

import pyarrow as pa
from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings

from .. import __version__, system
from ..engine import Engine, connect
from ..errors import VelosqlError
from ..sql import ShowJobs
from ..sql.statements import Statement
from . import dotcommands, render
from .completion import SqlCompleter
from .script import Runner

PROMPT = "velosql> "
_DOLLAR = re.compile(r"\$(?:[A-Za-z_]\w*)?\$")
CONTINUATION = "    ...> "
# How long SHOW JOBS waits for an attached server's answer: /jobs never waits for a job, so a
# server that has not answered by then is not going to.
SERVER_TIMEOUT = 5.0


def history_path() -> Path:
    """``$XDG_DATA_HOME/velosql/history``, by default ``~/.local/share/velosql/history``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "velosql" / "history"


def complete(text: str) -> bool:
    """Whether the input is ready to run: empty, a dot-command, or ending with ``;`` outside
    strings (``'…'``, ``$$…$$``), quoted identifiers and comments."""
    stripped = text.strip()
    if not stripped or stripped.startswith("."):
        return True
    last, i, n = "", 0, len(text)
    while i < n:
        ch = text[i]
        if ch in "'\"":
            end = text.find(ch, i + 1)
            while end != -1 and text[end + 1 : end + 2] == ch:  # '' and "" escape the quote
                end = text.find(ch, end + 2)
            if end == -1:
                return False
            last, i = ch, end + 1
        elif ch == "$" and (tag := _DOLLAR.match(text, i)):  # $$…$$ and $name$…$name$
            end = text.find(tag.group(0), tag.end())
            if end == -1:
                return False
            last, i = "$", end + len(tag.group(0))
        elif text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end == -1 else end + 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end == -1:
                return False
            i = end + 2
        else:
            if not ch.isspace():
                last = ch
            i += 1
    return last == ";"


class Shell:
    """The read-eval-print loop on ``engine`` (opened on ``database``, None: in memory)."""

    def __init__(
        self,
        engine: Engine,
        database: str | None,
        settings: render.Settings | None = None,
        *,
        server: str | None = None,
    ) -> None:
        self.engine = engine
        self.database = database
        self.settings = settings or render.Settings()
        self.server = server  # the URL of the velosql serve whose jobs SHOW JOBS lists
        self.out: TextIO = sys.stdout
        self.runner = self._runner()

    def _runner(self, *, wait_for_jobs: bool = False) -> Runner:
        return _ShellRunner(
            self.engine,
            self.settings,
            self.out,
            sys.stderr,
            wait_for_jobs=wait_for_jobs,
            server=lambda: self.server,
        )

    # ---- the loop -------------------------------------------------------------------------------

    def loop(self) -> int:
        """Run until Ctrl-D or ``.exit``; the exit code (0)."""
        session = self._session()
        self._banner()
        try:
            while True:
                try:
                    text = session.prompt(PROMPT)
                except KeyboardInterrupt:
                    continue  # Ctrl-C: the input is dropped
                except EOFError:
                    break  # Ctrl-D
                try:
                    if self.handle(text) == dotcommands.EXIT:
                        break
                except KeyboardInterrupt:
                    sys.stderr.write("Interrupted\n")
                except Exception as exc:  # noqa: BLE001 - a bug of ours must not end the session
                    sys.stderr.write(f"Error: {type(exc).__name__}: {exc}\n")
        finally:
            self.close()
        return 0

    def handle(self, text: str):
        """Run what was typed: a dot-command line or SQL statements."""
        stripped = text.strip()
        if not stripped:
            return None
        if self.out.isatty():  # the terminal may have been resized since the last statement
            self.settings.width = shutil.get_terminal_size().columns
        if stripped.startswith("."):
            try:
                return dotcommands.run(self, stripped)
            except VelosqlError as exc:
                sys.stderr.write(f"Error: {exc}\n")
                return None
        self.runner.run(text)
        return None

    def _session(self) -> PromptSession:
        bindings = KeyBindings()

        @bindings.add("enter")
        def _enter(event) -> None:
            buffer = event.current_buffer
            if buffer.complete_state is not None:  # Enter picks the completion shown
                buffer.complete_state = None
            elif complete(buffer.text):
                buffer.validate_and_handle()
            else:
                buffer.insert_text("\n")

        return PromptSession(
            history=_history(),
            lexer=_lexer(),
            completer=SqlCompleter(lambda: self.engine),
            complete_while_typing=False,
            multiline=True,
            key_bindings=bindings,
            prompt_continuation=CONTINUATION,
            enable_open_in_editor=False,
        )

    def _banner(self) -> None:
        import duckdb

        where = (
            f"Connected to {self.database}."
            if self.database
            else "Connected to a transient in-memory database.\n"
            'Use ".open FILENAME" to reopen on a persistent database.'
        )
        if self.server is not None:
            where += f"\nAttached to {self.server}: SHOW JOBS lists its jobs."
        sys.stdout.write(
            f"velosql {__version__} (DuckDB {duckdb.__version__})\n"
            f'Enter ".help" for usage hints; a statement ends with ";".\n{where}\n'
        )
        sys.stdout.flush()

    # ---- what dot-commands use ------------------------------------------------------------------

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def settings_width(self) -> int:
        return self.settings.width or 80

    def run_file(self, text: str, file: str) -> None:
        """``.read FILE``: the statements run as a script's do (see ``script.py``)."""
        runner = self._runner(wait_for_jobs=True)
        runner.timer = self.runner.timer
        runner.run(text)

    def open(self, database: str) -> None:
        """``.open FILE``: stop the jobs, close this database, open ``database``."""
        try:
            engine = connect(database, processor=self.engine.default_processor)
        except Exception as exc:  # noqa: BLE001 - duckdb.Error and OS errors alike
            raise VelosqlError(f"{database}: cannot open the database: {exc}") from None
        engine.config_path = self.engine.config_path
        self._stop_jobs()
        self.engine.close()
        self.engine, self.database = engine, database
        timer = self.runner.timer
        self.runner = self._runner()
        self.runner.timer = timer

    def redirect(self, path: str | None) -> None:
        """``.output [FILE]``: results to FILE (created or replaced), or back to the terminal."""
        if self.out is not sys.stdout:
            self.out.close()
        if path is None:
            self.out = sys.stdout
        else:
            try:
                self.out = open(path, "w", encoding="utf-8")  # noqa: SIM115 - open until the next .output
            except OSError as exc:
                self.out = sys.stdout
                raise VelosqlError(f"{path}: cannot write: {exc}") from None
        self.runner.out = self.out

    def close(self) -> None:
        self._stop_jobs()
        self.engine.close()
        if self.out is not sys.stdout:
            self.out.close()

    def _stop_jobs(self) -> None:
        running = [j for j in self.engine.jobs() if not j.done]
        if running:
            names = ", ".join(j.name for j in running)
            sys.stderr.write(f"Stopping {len(running)} job{'s' * (len(running) > 1)} ({names})…\n")
            sys.stderr.flush()
            self.engine.stop()
            for job in running:
                sys.stderr.write(f"{job.name}: {job.status}, {job.metrics()['records_out']} rows out\n")


class _ShellRunner(Runner):
    """The shell's runner: while ``server()`` names a server, SHOW JOBS lists that server's jobs."""

    def __init__(self, *args, server: Callable[[], str | None], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.server = server

    def _result(self, stmt: Statement) -> str:
        url = self.server()
        if url is not None and isinstance(stmt, ShowJobs):
            return self._text(server_jobs(url))
        return super()._result(stmt)


# ---- an attached server: --server URL, .server URL -----------------------------------------------


def server_url(text: str) -> str:
    """The URL of a ``velosql serve`` as given (``http://HOST:PORT`` as the server prints it, or
    ``HOST:PORT``), without a trailing ``/``.

    Raises:
        VelosqlError: it is not an http(s) URL of a host (and port), without a path.
    """
    url = (text if "://" in text else f"http://{text}").rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number from 0 to 65535
    except ValueError:
        valid = False
    else:
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        valid = valid and not (parts.path or parts.query or parts.fragment)
    if not valid:
        raise VelosqlError(
            f"{text!r} is not the URL of a velosql serve: give http://HOST:PORT, as the server prints it"
        )
    return url


def server_jobs(url: str) -> pa.Table:
    """The jobs of the ``velosql serve`` at ``url`` (its ``GET /jobs``) as the rows of its
    ``velosql_jobs`` table, typed as that table declares them.

    Raises:
        VelosqlError: the server did not answer, or not with a list of jobs (the message names the URL).
    """
    address = f"{url}/jobs"
    try:
        with urllib.request.urlopen(address, timeout=SERVER_TIMEOUT) as answer:
            body = answer.read()
    except urllib.error.HTTPError as exc:
        raise VelosqlError(f"{address}: the server answered {exc.code} {exc.reason}") from None
    except OSError as exc:  # URLError (refused, unknown host), a timeout, a reset connection
        reason = getattr(exc, "reason", None) or exc
        reason = getattr(reason, "strerror", None) or reason  # "Connection refused", not "[Errno 111] …"
        raise VelosqlError(
            f"{address}: no answer ({reason}); is velosql serve running there? (.server off detaches)"
        ) from None
    try:
        return _jobs_table(json.loads(body))
    except (ValueError, TypeError, AttributeError, pa.ArrowException) as exc:
        raise VelosqlError(f"{address}: not a velosql server's list of jobs ({exc})") from None


def _jobs_table(jobs: list[dict]) -> pa.Table:
    """A server's jobs as its ``velosql_jobs`` rows (each job's workers, watermarks and checkpoint
    are left out: SHOW JOBS has one row per job)."""
    if not isinstance(jobs, list):
        raise TypeError(f"a list was expected, not {type(jobs).__name__}")
    table = next(t for t in system.TABLES if t.name == "velosql_jobs")
    rows = [{c.name: _value(job.get(c.name), c.type) for c in table.columns} for job in jobs]
    return pa.Table.from_pylist(rows, schema=table.schema) if rows else table.schema.empty_table()


def _value(value, duckdb_type: str):
    """A value of a /jobs answer as the system table holds it (JSON writes a TIMESTAMP as text)."""
    if duckdb_type == "TIMESTAMP" and isinstance(value, str):
        return dt.datetime.fromisoformat(value)
    return value


def _history() -> History:
    path = history_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
    except OSError:
        return InMemoryHistory()  # e.g. a read-only home: the session still works
    return FileHistory(str(path))


def _lexer():
    try:
        from prompt_toolkit.lexers import PygmentsLexer
        from pygments.lexers.sql import SqlLexer
    except ImportError:  # pygments comes with rich; without it, no colours
        return None
    return PygmentsLexer(SqlLexer)
