"""The interactive shell: ``velosql`` on a terminal, or ``velosql shell [DATABASE]``.

A prompt_toolkit session (litecli's and pgcli's set-up): input ends at a ``;`` outside strings and
comments (or is one dot-command line), history persists under the XDG data directory, Tab
completes from the live catalogue (``completion.py``), SQL is highlighted with pygments' lexer.
Statements run through the same :class:`~velosql.cli.script.Runner` as scripts, except that
nothing waits for jobs: a streaming statement deploys a background job and returns at once.

Ctrl-C clears the input, or interrupts a running query; Ctrl-D (or ``.exit``) stops the jobs —
they flush — and ends the shell. An error prints one message and the prompt comes back.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings

from .. import __version__
from ..engine import Engine, connect
from ..errors import VelosqlError
from . import dotcommands, render
from .completion import SqlCompleter
from .script import Runner

PROMPT = "velosql> "
_DOLLAR = re.compile(r"\$(?:[A-Za-z_]\w*)?\$")
CONTINUATION = "    ...> "


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

    def __init__(self, engine: Engine, database: str | None, settings: render.Settings | None = None) -> None:
        self.engine = engine
        self.database = database
        self.settings = settings or render.Settings()
        self.out: TextIO = sys.stdout
        self.runner = self._runner()

    def _runner(self) -> Runner:
        return Runner(self.engine, self.settings, self.out, sys.stderr, wait_for_jobs=False)

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
        runner = Runner(self.engine, self.settings, self.out, sys.stderr, wait_for_jobs=True)
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
