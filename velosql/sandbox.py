"""The sandbox: what a job may read and write when the SQL it runs is not trusted.

``velosql run --sandbox`` and ``velosql.connect(..., sandbox=True)`` make a :class:`Sandbox`. It
draws two boundaries:

* **DuckDB.** Every connection that runs user SQL — the engine's, the V2 workers', the scan
  pushdown's — has external access off (no file, no ``COPY``, no ``ATTACH``, no extension
  install or load); DuckDB refuses to turn it back on while the database runs. A worker
  or pushdown connection may read exactly the files of the job's source (``allowed_paths``); the
  engine's may use the state location (checkpoints) and nothing else.
* **The file connectors**, which read and write with Python and pyarrow, not through DuckDB. Every
  path a statement's WITH clause names (source and sink paths, ``config_file``,
  ``checkpoint.dir``) must lie, once symbolic links and ``..`` are resolved, under one of the
  sandbox's roots: the working directory and each ``--allow-path``. The check runs once, when
  the statement is deployed; a refused path is an :class:`OptionError` naming the statement, the
  key and the path, and nothing runs.

A connection the user opened with ``enable_external_access = false`` and gave to
``velosql.connect`` is a sandbox too (:meth:`Sandbox.of_connection`): its roots are the
directories and files its own ``allowed_directories`` and ``allowed_paths`` allow, so the file
connectors never reach further than DuckDB itself would.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass

import duckdb

from .errors import Location, OptionError


@dataclass(frozen=True)
class Sandbox:
    """The roots the file connectors may use and the state location DuckDB may use.

    ``roots`` are real (resolved, absolute) directories; ``files`` real paths of single files
    (from a user connection's ``allowed_paths``). ``inherited``: made from the user's own
    connection, whose configuration velosql leaves as it is.
    """

    roots: tuple[str, ...]
    files: tuple[str, ...] = ()
    state: str | None = None
    inherited: bool = False

    @classmethod
    def create(cls, allow_paths: Iterable[str | os.PathLike] = (), state: str | os.PathLike | None = None):
        """The sandbox of ``--sandbox``: the working directory, the ``allow_paths`` and the state
        location, if any (it must lie under one of the others)."""
        roots = tuple(dict.fromkeys(_real(p) for p in (os.getcwd(), *allow_paths)))
        sandbox = cls(roots)
        if state is None:
            return sandbox
        real = _real(state)
        if not sandbox.allows(real):
            raise OptionError(
                f"the state location {os.fspath(state)!r} is outside the sandbox: it must lie under "
                f"{sandbox.describe()}; add --allow-path for its directory"
            )
        return cls(roots, state=real)

    @classmethod
    def of_connection(cls, con: duckdb.DuckDBPyConnection) -> Sandbox | None:
        """The sandbox a connection's own settings draw, or None when it has external access."""
        (enabled, dirs, paths) = con.execute(
            "SELECT current_setting('enable_external_access'), current_setting('allowed_directories'), "
            "current_setting('allowed_paths')"
        ).fetchall()[0]
        if enabled:
            return None
        return cls(tuple(_real(d) for d in dirs or ()), tuple(_real(p) for p in paths or ()), inherited=True)

    # ---- DuckDB ---------------------------------------------------------------------------------

    def statements(self, readable: Iterable[str] = (), directories: Iterable[str] = ()) -> tuple[str, ...]:
        """The statements that lock a new connection: only ``readable`` files and ``directories``.

        No ``lock_configuration``: DuckDB itself refuses to turn external access back on, or to
        change the allowed paths, once it is off, and a locked configuration would refuse
        velosql's own later settings (progress bar, Parquet metadata cache). Extension autoload
        and autoinstall are off so that no statement reaches for one (loading any is refused
        without external access anyway).
        """
        files = sorted({os.path.abspath(p) for p in readable})
        dirs = sorted({os.path.abspath(d) for d in directories})
        return (
            "SET autoinstall_known_extensions = false",
            "SET autoload_known_extensions = false",
            f"SET allowed_directories = {_list(dirs)}",
            f"SET allowed_paths = {_list(files)}",
            "SET enable_external_access = false",
        )

    def lock(
        self, con: duckdb.DuckDBPyConnection, readable: Iterable[str] = (), directories: Iterable[str] = ()
    ) -> None:
        """Lock ``con`` (a connection velosql opened, or the engine's): see :meth:`statements`.
        A connection whose external access is already off keeps its own settings."""
        if not con.execute("SELECT current_setting('enable_external_access')").fetchall()[0][0]:
            return
        for statement in self.statements(readable, directories):
            con.execute(statement)

    def lock_workers(self, pool, sources: Iterable[object] = ()) -> None:
        """Lock every connection of a V2 worker pool before it runs any statement; a worker may
        read the files of ``sources`` (its direct Parquet reads), nothing else.

        Raises:
            JobError: a worker could not be locked (the job does not start).
        """
        from .runtime.protocol import Setup

        readable = [p for source in sources for p in getattr(source, "file_paths", ())]
        pool.broadcast(Setup(self.statements(readable)))
        for i in range(len(pool)):
            pool.drain(i)

    # ---- paths ----------------------------------------------------------------------------------

    def allows(self, path: str) -> bool:
        """Whether the real path ``path`` lies under a root (or is one of the files)."""
        return path in self.files or any(
            path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in self.roots
        )

    def check(
        self, statement: str, key: str, value: object, where: Location | None, base: str | None = None
    ) -> None:
        """Refuse ``value`` of WITH key ``key`` unless it lies in the sandbox.

        A glob is judged by the directory before its first wildcard (the source checks each
        file it finds again, see :meth:`check_file`). ``base``: the directory a relative path is
        taken from (default the working directory).

        Raises:
            OptionError: the path is outside; the message names the statement, key and path.
        """
        text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        path = os.path.join(base, text) if base else text
        fixed = _before_wildcards(path) if glob.has_magic(path) else path
        if "\x00" not in text and self.allows(_real(fixed)):
            return
        raise OptionError(
            f"statement {statement!r}: {key!r} = {text!r} is outside the sandbox: a path must lie "
            f"under {self.describe()} (after links and '..' are resolved); run with --allow-path DIR "
            "(connect(allow_paths=[...])) to allow another directory",
            where,
        )

    def check_file(self, source: str, path: str) -> None:
        """Refuse a file a source found (a link in a directory may lead out of the sandbox).

        Raises:
            OptionError: the file's real path is outside.
        """
        if not self.allows(_real(path)):
            raise OptionError(
                f"source {source!r}: file {path!r} is outside the sandbox (it resolves to "
                f"{_real(path)!r}); a path must lie under {self.describe()}"
            )

    def describe(self) -> str:
        places = [*self.roots, *self.files]
        if not places:
            return "nothing (the connection's allowed_directories and allowed_paths are empty)"
        return " or ".join(repr(p) for p in places)


def _real(path: str | os.PathLike) -> str:
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def _before_wildcards(path: str) -> str:
    """The directory part of ``path`` before its first component holding a wildcard."""
    parts = path.split(os.sep)
    for i, part in enumerate(parts):
        if glob.has_magic(part):
            return os.sep.join(parts[:i]) or (os.sep if path.startswith(os.sep) else ".")
    return path


def _list(values: list[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


__all__ = ["Sandbox"]
