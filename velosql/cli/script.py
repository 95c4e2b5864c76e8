"""Running statements one at a time and printing their results: the shell, ``-c``, ``-f``, stdin, ``run``.

A :class:`Runner` runs the statements of a script (a file, a ``-c`` string, what was typed at the
prompt) in order on one engine. Streaming statements deploy jobs; consecutive ones are bound
together, so that all of them start or none does. Every other statement runs on the engine's
database and its result is printed in the output mode.

Scripts (``wait_for_jobs``) read like batch SQL: a statement that follows streaming statements
runs after **every earlier job whose input is bounded** has finished, so a ``SELECT`` or ``COPY``
of a result table sees the whole result. Jobs reading unbounded input (a watched file) never
finish: the statement runs while they run, and a note on stderr says so. Waiting for all earlier
bounded jobs, rather than only those whose tables the statement reads, is deliberate: it needs no
guess at which tables a statement reads (views, macros and ``SHOW JOBS`` read them too), and a
script's output is the same on every run. At the prompt nothing waits: jobs run in the background
while the user queries their tables.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TextIO

import duckdb

from ..errors import VelosqlError
from ..plan.planner import StreamPlan
from ..runtime.job import FAILED as FAILED_JOB
from ..runtime.job import Job
from ..sql import CreateStream, DuckDBStatement, parse_script
from ..sql.statements import Statement
from . import push, render
from .messages import format_error
from .progress import QuietProgress

POLL_SECONDS = 0.2
OK, INVALID, FAILED = "ok", "invalid", "failed"  # outcomes of Runner.run
# Statements whose DuckDB result is only a count of changed rows, which DuckDB's CLI does not print.
_QUIET_WORDS = {"INSERT", "UPDATE", "DELETE", "COPY", "CREATE", "DROP", "ALTER", "ATTACH", "DETACH",
                "SET", "RESET", "USE", "INSTALL", "LOAD", "BEGIN", "COMMIT", "ROLLBACK", "CHECKPOINT",
                "VACUUM", "EXPORT", "IMPORT", "MERGE", "TRUNCATE", "COMMENT", "ANALYZE"}  # fmt: skip


class Runner:
    """Runs scripts on ``engine``, results to ``out`` and messages to ``err``.

    Args:
        settings: The output mode and its options (shared with the dot-commands that change them).
        wait_for_jobs: Script semantics (see the module docstring); False at the prompt.
        prefix: What each error message starts with (``velosql: error: `` in scripts).
        stopping: Tells a waiting script to give up (a signal was received).
        progress: Opens the display shown while a script waits for jobs (``update(jobs)``,
            ``close()``; the live table of ``run``). It is open only while waiting, so that
            results printed between waits do not run through it.
    """

    def __init__(
        self,
        engine,
        settings: render.Settings,
        out: TextIO,
        err: TextIO,
        *,
        wait_for_jobs: bool,
        prefix: str = "",
        stopping: Callable[[], bool] = lambda: False,
        progress: Callable[[], object] = QuietProgress,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.out, self.err = out, err
        self.wait_for_jobs = wait_for_jobs
        self.prefix = prefix
        self.stopping = stopping
        self.progress = progress
        self.timer = False
        self._noted: set[str] = set()
        # DuckDB's progress bar would print into a captured duckbox, and while it draws, holds
        # the interpreter: Ctrl-C would wait for the query's end.
        engine.sql("SET enable_progress_bar = false")

    # ---- scripts --------------------------------------------------------------------------------

    def run(self, text: str, file: str | None = None, *, bail: bool = True) -> str:
        """Run ``text``; ``OK``, ``INVALID`` (it did not parse, or a streaming statement did not
        validate or bind, before anything ran) or ``FAILED`` (a statement failed; with ``bail``
        the rest did not run)."""
        try:
            statements = parse_script(text, file)
            plans = {id(s): self.engine.plan_of(s) for s in statements if isinstance(s, CreateStream)}
        except VelosqlError as exc:
            self.error(exc, text, None, file)
            return INVALID
        outcome, ran = OK, False
        pending: list[tuple[CreateStream, StreamPlan]] = []
        for stmt in [*statements, None]:
            if isinstance(stmt, CreateStream):
                pending.append((stmt, plans[id(stmt)]))
                continue
            if pending and not self._deploy(pending, text, file):
                return FAILED if ran else INVALID  # a source that cannot be bound: none started
            ran = ran or bool(pending)
            pending = []
            if stmt is None or self.stopping():
                break
            ran = True
            if not self.execute(stmt, text, file):
                outcome = FAILED
                if bail:
                    break
        return outcome

    def _deploy(self, pending: list[tuple[CreateStream, StreamPlan]], text: str, file: str | None) -> bool:
        try:
            jobs = self.engine.deploy([p for _, p in pending])
        except VelosqlError as exc:
            first = pending[0][0]
            self.error(exc, text, first.location, file)
            return False
        if not self.wait_for_jobs:
            self.write("".join(f"{_deployed(job)}\n" for job in jobs))
        return True

    # ---- one statement --------------------------------------------------------------------------

    def execute(self, stmt: Statement, text: str, file: str | None) -> bool:
        """Run one statement that is not streaming and print its result; False when it failed."""
        if self.wait_for_jobs and not self._wait(stmt, file):
            return False
        started, cpu = time.perf_counter(), os.times()
        try:
            pushed = (
                push.push_query(stmt)
                if isinstance(stmt, DuckDBStatement) and not self.wait_for_jobs
                else None
            )
            if pushed is not None:
                push.run(self.engine, pushed, stmt.location, self.settings, self.out, self.err)
                return True
            self.write(self._interruptible(lambda: self._result(stmt)))
        except KeyboardInterrupt:
            self.err.write("Interrupted\n")
            return False
        except (duckdb.Error, VelosqlError) as exc:
            self.error(exc, text, stmt.location, file)
            return False
        finally:
            if self.timer:
                self._time(started, cpu)
        return True

    def _result(self, stmt: Statement) -> str:
        """Run ``stmt`` and render its result (in a worker thread: see :meth:`_interruptible`)."""
        if isinstance(stmt, DuckDBStatement):
            result = self.engine.sql(stmt.text)
            if result is None or _quiet(stmt, result):
                return ""
        else:
            result = self.engine.run_statement(stmt)
            if result is None:
                return ""
        return self._text(result)

    def _interruptible(self, work: Callable[[], str]) -> str:
        """``work()``, run in a thread while this one waits: a signal handler only runs in the main
        thread, between Python instructions, so a query the main thread ran itself could not be
        interrupted until it ended. Ctrl-C (or a stop request) interrupts DuckDB's query."""
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                outcome["value"] = work()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                outcome["error"] = exc

        thread = threading.Thread(target=run, name="velosql-statement", daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                thread.join(POLL_SECONDS)
                if self.stopping():
                    self.engine.con.interrupt()
        except KeyboardInterrupt:
            self.engine.con.interrupt()
            thread.join()
            raise
        if "error" in outcome:
            error = outcome["error"]
            if isinstance(error, duckdb.InterruptException):
                raise KeyboardInterrupt from None
            raise error
        return outcome["value"]

    def _text(self, result) -> str:
        if isinstance(result, str):  # EXPLAIN of a streaming statement: the plan
            return result.rstrip("\n") + "\n"
        if isinstance(result, Job):
            return ""
        if not isinstance(result, duckdb.DuckDBPyRelation):  # SHOW STREAMS|JOBS, DESCRIBE: Arrow
            result = self.engine.con.cursor().from_arrow(result)
        return render.render(result, self.settings)

    def _wait(self, stmt: Statement, file: str | None) -> bool:
        """Wait for the earlier jobs with bounded input; False if stopped meanwhile."""
        jobs = self.engine.jobs()
        for job in jobs:
            if not job.done and not bounded(job.plan) and job.name not in self._noted:
                self._noted.add(job.name)
                where = f"{file}:{stmt.location.line}" if file else f"line {stmt.location.line}"
                self.err.write(
                    f"velosql: note: the statement at {where} runs while job {job.name} is still "
                    f"running (its input is unbounded)\n"
                )
        waiting = [j for j in jobs if bounded(j.plan)]
        if all(j.done for j in waiting):
            return not any(j.status == FAILED_JOB for j in jobs)
        display = self.progress()
        try:
            while any(not j.done for j in waiting):
                if self.stopping() or any(j.status == FAILED_JOB for j in jobs):
                    return False  # the caller stops the jobs and reports why
                try:
                    next(j for j in waiting if not j.done).wait(POLL_SECONDS)
                except VelosqlError:
                    pass
                display.update(jobs)
        finally:
            display.close()
        return not any(j.status == FAILED_JOB for j in jobs)

    def _time(self, started: float, cpu: os.times_result) -> None:
        now = os.times()
        self.write(
            f"Run Time (s): real {time.perf_counter() - started:.3f} user {now.user - cpu.user:.6f} "
            f"sys {now.system - cpu.system:.6f}\n"
        )

    # ---- output ---------------------------------------------------------------------------------

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def error(self, exc: BaseException, text: str, start, file: str | None) -> None:
        self.err.write(self.prefix + format_error(exc, text, start, file=file) + "\n")
        self.err.flush()


def bounded(plan: StreamPlan) -> bool:
    """Whether a job's input ends by itself: files not watched, tables, Kafka read to the end
    offsets seen at its start ('stop.at.end'); not Python or Kafka otherwise."""
    kind = plan.source.type
    if kind == "kafka_source":
        return str(plan.source.options.get("stop.at.end", False)).lower() in ("true", "1")
    if kind == "python":
        return False
    return str(plan.source.options.get("watch", False)).lower() not in ("true", "1")


def _quiet(stmt: Statement, rel: duckdb.DuckDBPyRelation) -> bool:
    first = stmt.text.split(None, 1)[0].upper() if stmt.text.strip() else ""
    return first in _QUIET_WORDS and rel.columns in (["Count"], ["Success"])


def _deployed(job: Job) -> str:
    """The one line the shell prints for a deployed statement: name, processor, sinks."""
    sinks = ", ".join(
        f"{s.type} {s.options.get('path') or s.options.get('table') or s.name}" for s in job.plan.sinks
    )
    return f"{job.plan.kind.upper()} {job.name} started: {job.processor.description()}; sinks: {sinks}"
