"""FileSink: a job's result rows written to one CSV, JSON-lines or Parquet file.

Two jobs never write one file, and an atomic file is never seen, or left, half written:

- A sink's file is *claimed* before anything is written: an advisory lock (``flock``) on
  ``.<file>.lock`` beside it, holding the writer's pid and stream. A second job (in this process
  or another) asking for the same path is refused with that pid. The kernel releases the lock when
  its process ends, however it ends; :meth:`FileSink.close` and :meth:`FileSink.discard` release it
  (and remove the lock file) before that.
- An *atomic* sink (Parquet always; CSV and JSON lines with ``atomic = true``) writes to
  ``.<file>.velosql-tmp`` beside the final path and renames it into place when it closes: the
  final path holds the previous file until then, and a process killed meanwhile leaves it so. The
  temporary file of a killed writer is replaced by the next one (which holds the lock).
- CSV and JSON lines are written in place by default, so that readers can follow the file as rows
  are flushed (a watched source reads only complete lines).
- A FIFO or a device is written in place without a lock, and a write blocked on it gives up when
  the job abandons it (:meth:`FileSink.abort`, at the end of the job's stop timeout).
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import glob
import os
import re
import select
import stat
import threading

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DataError, OptionError
from .base import Sink, sync_file, text_scalar
from .files_formats import format_of, option, resolve_format, single_char

_TRAILING_ZEROS = r"\.0+$|(\.\d*?[1-9])0+$"  # "10:00:00.120000" → "10:00:00.12", ".000000" → ""


def check_path(name: str, path: object) -> None:
    """Refuse a sink path that cannot name a file to write: one holding a NUL byte, or a directory.

    Raises:
        OptionError: naming the sink, its path and why (without a place; the engine adds it).
    """
    if "\x00" in str(path):
        raise OptionError(f"sink {name!r} cannot write to {str(path)!r}: '{name}.path' holds a NUL byte")
    if os.path.isdir(path):
        raise OptionError(
            f"sink {name!r} cannot write to {str(path)!r}: it is a directory; "
            f"'{name}.path' names the file to write"
        )


def read_by(source_path: str, sink_path: str) -> bool:
    """Whether a file source reading ``source_path`` (a file, a directory or a glob) reads the
    file ``sink_path``, now or once it exists: the same file under any spelling or link, a file
    its directory lists (not hidden, with a known extension), or a match of its glob."""
    sink = os.path.realpath(sink_path)
    if os.path.isdir(source_path):
        return (
            os.path.dirname(sink) == os.path.realpath(source_path)
            and not os.path.basename(sink).startswith(".")
            and format_of(sink) is not None
        )
    if not glob.has_magic(source_path):
        return os.path.realpath(source_path) == sink
    if os.path.basename(sink).startswith("."):
        return False  # a glob's * matches no hidden file
    patterns = {os.path.abspath(source_path)}
    folder, last = os.path.split(source_path)
    if not glob.has_magic(folder):
        patterns.add(os.path.join(os.path.realpath(folder or "."), last))
    names = {sink, os.path.abspath(sink_path)}
    if "**" in source_path:  # any depth: fnmatch's * crosses a /
        return any(fnmatch.fnmatch(n, p) for n in names for p in patterns)
    return any(_glob_matches(p, n) for n in names for p in patterns)


def _glob_matches(pattern: str, path: str) -> bool:
    """``path`` matches ``pattern`` part by part (a ``*`` never crosses a ``/``)."""
    parts, names = pattern.split(os.sep), path.split(os.sep)
    return len(parts) == len(names) and all(fnmatch.fnmatch(n, p) for n, p in zip(names, parts))


def _beside(path: str, suffix: str) -> str:
    """The hidden file ``.<name><suffix>`` in the directory of ``path``."""
    head, tail = os.path.split(os.path.abspath(path))
    return os.path.join(head, f".{tail}{suffix}")


def is_special(path: str) -> bool:
    """Whether ``path`` is an existing FIFO, device or socket, or a name under ``/dev`` or
    ``/proc`` (``/dev/stdout`` redirected to a file): written in place, never renamed or locked."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    if os.path.abspath(path).startswith(("/dev/", "/proc/")):
        return True
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


class SinkLock:
    """The advisory lock that makes one job the only writer of a file sink's path.

    ``flock`` on ``.<file>.lock`` beside the file, which records ``<pid> <stream>`` of its holder.
    Released by :meth:`release` or by the kernel when the holder's process ends.
    """

    def __init__(self, fd: int, lock_path: str) -> None:
        self._fd: int | None = fd
        self.lock_path = lock_path

    @classmethod
    def acquire(cls, name: str, path: str, holder: str) -> SinkLock:
        """Lock ``path`` for the stream ``holder`` (sink ``name``), creating its directory.

        Raises:
            OptionError: another job holds it (naming its pid and stream), or it cannot be locked.
        """
        lock_path = _beside(path, ".lock")
        try:
            os.makedirs(os.path.dirname(lock_path), exist_ok=True)
            while True:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    held_by = os.pread(fd, 256, 0).decode("utf-8", "replace").split(None, 1)
                    os.close(fd)
                    raise OptionError(_busy(name, path, held_by, lock_path)) from None
                except BaseException:
                    os.close(fd)
                    raise
                # The holder removes the file as it releases it: a lock taken on a file that is no
                # longer at the path locks nothing anyone else sees; take the one there now.
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                        break
                os.close(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {holder}\n".encode(), 0)
        except OSError as exc:
            raise OptionError(
                f"sink {name!r} cannot write to {path!r}: cannot lock {lock_path!r}: {exc.strerror or exc}"
            ) from None
        return cls(fd, lock_path)

    def release(self) -> None:
        """Remove the lock file and unlock it; idempotent."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.lock_path)  # while still locked: see acquire
        os.close(self._fd)
        self._fd = None


def _busy(name: str, path: str, held_by: list[str], lock_path: str) -> str:
    pid, stream = (held_by + ["?", "?"])[:2] if held_by else ("?", "?")
    stream = stream.strip()
    who = (
        f"this process (pid {pid}), stream {stream!r}, is writing it"
        if pid == str(os.getpid())
        else f"velosql process {pid} (stream {stream!r}) is writing it"
    )
    return (
        f"sink {name!r} cannot write to {path!r}: {who}; stop that job or choose another "
        f"'{name}.path' (lock file {lock_path})"
    )


class _SpecialFile:
    """A FIFO or device opened for writing; a write blocked on it returns when ``aborted`` is set."""

    def __init__(self, path: str, aborted: threading.Event) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)  # a FIFO waits here for its reader
        os.set_blocking(self.fd, False)
        self.path = path
        self.aborted = aborted
        self.closed = False

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        while view:
            if self.aborted.is_set():
                raise OSError(
                    f"the write to {self.path!r} was abandoned: the job stopped while it was blocked"
                )
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                select.select([], [self.fd], [], 0.1)
        return len(data) if isinstance(data, bytes) else memoryview(data).nbytes

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)


class FileSink(Sink):
    """Writes result rows to one file: CSV (header by default), JSON lines or Parquet.

    :meth:`open` claims the path (:class:`SinkLock`, unless the engine claimed it already and
    passed ``lock``), creates the parent directories and the file it writes (a CSV gets its header
    at once, a Parquet file its schema at :meth:`close`, so a sink that received no rows still
    leaves a valid empty file). An atomic sink writes beside the final path and renames its file
    into place at :meth:`close` (see the module docstring). With ``append_if_exists`` a non-empty
    CSV or JSON-lines file is appended to, without a second header (an atomic sink copies it first
    and appends the whole run at close). Timestamps are written to CSV and JSON as ISO-8601 text
    (``2024-01-01T10:00:00.5``, with ``Z`` when the column has a time zone). :meth:`flush` makes
    in-place CSV and JSON rows visible to readers; an atomic file becomes visible when it closes.

    Args:
        name: the sink's name (the stream or table being created).
        options: the sink's WITH options without the ``<name>.`` prefix; a missing key takes its
            default from ``OPTIONS``.
        lock: the path's lock, taken by the engine before any job of the script started.

    Raises:
        OptionError: no path, a NUL byte in it, a directory, a delimiter that is not one
            character, ``append_if_exists`` or ``atomic = false`` with Parquet.
        DataError: an unknown format.
    """

    def __init__(self, name: str, options: dict, lock: SinkLock | None = None) -> None:
        self.name = name
        opt = lambda key: option(options, "sink", key)  # noqa: E731
        self._path = opt("path")
        if not self._path:
            raise OptionError(f"file sink {name!r} has no path: set '{name}.path'")
        check_path(name, self._path)
        self._format = resolve_format(opt("format"), str(self._path))
        self._delimiter = single_char(opt("delimiter"), f"{name}.delimiter", allow_empty=False) or ","
        self._header = bool(opt("has_headers")) and self._format == "csv"
        self._append = bool(opt("append_if_exists"))
        if self._append and self._format == "parquet":
            raise OptionError(
                f"'{name}.append_if_exists' works for CSV and JSON-lines files, not Parquet ({self._path!r})"
            )
        atomic = opt("atomic")
        if atomic is False and self._format == "parquet":
            raise OptionError(
                f"'{name}.atomic' = false: a Parquet file is written whole (its footer comes last), "
                f"so {self._path!r} is always written beside and renamed into place"
            )
        self._atomic = self._format == "parquet" if atomic is None else bool(atomic)
        compression = opt("compression")
        self._compression = (
            "snappy" if compression is None else None if compression == "none" else compression
        )
        self._writer: _Writer | None = None
        self._lock = lock
        self._temp: str | None = None  # the file an atomic sink writes, renamed at close
        # A job with a state location (runtime/checkpoint.py): resuming, what its checkpoint
        # committed (else None); the file of the epoch precommitted and not committed yet.
        self._resume: dict | None = None
        self.epochs = False  # the job has a state location: only commit() publishes
        self._pending: str | None = None
        self._schema: pa.Schema | None = None
        self._aborted = threading.Event()

    def claim(self) -> None:
        """Take the path's lock unless held already (a FIFO or device takes none)."""
        if self._lock is None and not is_special(self._path):
            self._lock = SinkLock.acquire(self.name, self._path, self.name)

    def open(self, schema: pa.Schema) -> None:
        """Claim the path, create the directories and the file; write the CSV header unless appending."""
        self.claim()
        try:
            self._writer = self._open_writer(schema)
        except BaseException:
            self.discard()
            raise

    def _open_writer(self, schema: pa.Schema, base: str | None = None) -> _Writer:
        """The writer; ``base``: the file whose rows an atomic sink's new file starts with (by
        default the final path, when appending or resuming from a checkpoint)."""
        self._schema = schema
        path, special = self._path, None
        append = self._append or self._resume is not None
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if is_special(path):
            special = _SpecialFile(path, self._aborted)
        elif self._atomic:
            path = self._temp = _beside(self._path, ".velosql-tmp")  # a killed writer's is replaced
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            base = base or (self._path if append else None)
            if base is not None and os.path.isfile(base) and self._format != "parquet":
                import shutil  # here: only an atomic append needs it

                shutil.copy2(base, path)
        if self._format == "parquet":
            writer = _ParquetWriter(special or path, schema, self._compression)
            if special is None and base is not None and os.path.isfile(base):
                writer.copy(base)  # the rows committed before, then this run's
            return writer
        if self._format == "jsonl":
            return _JsonWriter(path, schema, append, special)
        return _CsvWriter(path, schema, append, self._delimiter, self._header, special)

    def write(self, table: pa.Table) -> None:
        """Append ``table``'s rows (columns in the order of the schema given to :meth:`open`)."""
        if table.num_rows:
            self._writer.write(table)

    def flush(self) -> None:
        """Hand the rows written so far to the operating system (CSV and JSON lines)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the file (writes the Parquet footer), rename an atomic sink's file into
        place and release the path. Safe to call twice. A sink of a job with a state location
        publishes only what a checkpoint committed (:meth:`commit`): the rest is discarded."""
        if self.epochs:
            self.discard()
            return
        try:
            if self._writer is not None:
                writer, self._writer = self._writer, None
                writer.close()
                if self._temp is not None:
                    sync_file(self._temp)
                    os.replace(self._temp, self._path)
                    self._temp = None
        finally:
            self.discard()

    def discard(self) -> None:
        """Close without making anything visible: an atomic sink's file is removed and the final
        path keeps what it held (an in-place file keeps what was flushed); release the path."""
        try:
            if self._writer is not None:
                writer, self._writer = self._writer, None
                with contextlib.suppress(Exception):
                    writer.close()
            if self._temp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._temp)
                self._temp = None
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    # ---- epochs of a job with a state location (runtime/checkpoint.py) ---------------------------

    def precommit(self, epoch: int) -> dict | None:
        """Make every row written so far durable in a form :meth:`commit` can publish, and
        return what :meth:`recover` needs to publish or undo it: an in-place file's size, or an
        atomic file's whole content so far at ``.<file>.epoch-<epoch>`` (the writer goes on in a
        new file starting with it)."""
        if self._writer is None or is_special(self._path):
            return None
        if not self._atomic:
            self._writer.flush()
            os.fsync(self._writer.file.fileno())
            return {"size": os.path.getsize(self._path)}
        writer, self._writer = self._writer, None
        writer.close()
        pending = _beside(self._path, f".epoch-{epoch}")
        sync_file(self._temp)
        os.replace(self._temp, pending)
        self._pending = pending
        self._writer = self._open_writer(self._schema, base=pending)
        return {"pending": pending}

    def commit(self, epoch: int) -> None:
        """The checkpoint of ``epoch`` is taken: publish its file (atomic sinks)."""
        if self._pending is not None:
            os.replace(self._pending, self._path)
            self._pending = None

    def recover(self, token: dict | None) -> None:
        """Before :meth:`open`, resuming from a checkpoint whose :meth:`precommit` gave
        ``token``: the file as that checkpoint committed it — an in-place file cut back to its
        size then, an atomic one's pending file published if the crash came before — and the
        rows of later epochs (written, never committed) gone."""
        self._resume = token or {}
        if is_special(self._path):
            return
        self.claim()  # before the file is touched
        pending = self._resume.get("pending")
        if pending is not None and os.path.isfile(pending):
            os.replace(pending, self._path)
        folder, name = os.path.split(os.path.abspath(self._path))
        for leftover in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.epoch-*")):
            os.unlink(leftover)
        size = self._resume.get("size")
        if not self._atomic and os.path.isfile(self._path):
            if os.path.getsize(self._path) > (size or 0):
                os.truncate(self._path, size or 0)

    def abort(self) -> None:
        """A write blocked on a FIFO or device gives up (raises) soon; files are never blocked."""
        self._aborted.set()

    def describe(self) -> str:
        fmt = "csv_no_header" if self._format == "csv" and not self._header else self._format
        return f"file_sink {fmt} {self._path}" + (" (append)" if self._append else "")


class _Writer:
    def write(self, table: pa.Table) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class _TextWriter(_Writer):
    """A CSV or JSON-lines file opened for writing or appending; columns made text-friendly."""

    def __init__(self, path: str, schema: pa.Schema, append: bool, special: _SpecialFile | None) -> None:
        self.schema = schema
        if special is not None:
            self.appending, self.file = False, special
            return
        existing = os.path.getsize(path) if append and os.path.isfile(path) else 0
        self.appending = existing > 0
        self.file = open(path, "ab" if self.appending else "wb")  # noqa: SIM115 - closed in close()
        if self.appending:
            with open(path, "rb") as fh:
                fh.seek(existing - 1)
                if fh.read(1) != b"\n":
                    self.file.write(b"\n")  # the last row of the existing file was not terminated

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _text_columns(table: pa.Table) -> pa.Table:
    """Timestamps as ISO-8601 text and dictionaries decoded, for the CSV and JSON writers."""
    columns = []
    for col in table.columns:
        t = col.type
        if pa.types.is_dictionary(t):
            col = col.cast(t.value_type)
        elif pa.types.is_timestamp(t):
            utc = t.tz is not None
            if utc:
                col = col.cast(pa.timestamp(t.unit, "UTC"))
            text = pc.replace_substring_regex(
                pc.strftime(col, format="%Y-%m-%dT%H:%M:%S"), _TRAILING_ZEROS, r"\1"
            )
            col = pc.binary_join_element_wise(text, _Z, _EMPTY) if utc else text
        columns.append(col)
    return pa.table(columns, names=table.column_names)


class _CsvWriter(_TextWriter):
    """CSV text built column-wise with pyarrow compute: values quoted only when they need it."""

    def __init__(
        self,
        path: str,
        schema: pa.Schema,
        append: bool,
        delimiter: str,
        header: bool,
        special: _SpecialFile | None = None,
    ) -> None:
        nested = [f for f in schema if pa.types.is_nested(f.type)]
        if nested:
            raise DataError(
                f"cannot write column {nested[0].name!r} of type {nested[0].type} to the CSV file "
                f"{path!r}: use format 'jsonl' or 'parquet'"
            )
        super().__init__(path, schema, append, special)
        self.delimiter = delimiter
        self._delimiter_scalar = text_scalar(delimiter)
        # Quote empty strings too, so that they read back as '' and an empty field as NULL.
        self.needs_quotes = f'[{re.escape(delimiter)}"\r\n]|^$'
        if header and not self.appending:
            # The header in Python (a few names): converting them to Arrow would import pandas.
            names = [
                f'"{n.replace(chr(34), chr(34) * 2)}"' if re.search(self.needs_quotes, n) else n
                for n in schema.names
            ]
            self.file.write((delimiter.join(names) + "\n").encode())

    def write(self, table: pa.Table) -> None:
        table = _text_columns(table)
        for batch in table.to_batches():
            fields = [_csv_field(col, self.delimiter, self.needs_quotes) for col in batch.columns]
            rows = pc.binary_join_element_wise(*fields, self._delimiter_scalar)
            self.file.write(_string_bytes(pc.binary_join_element_wise(rows, _NEWLINE, _EMPTY)))


# Literal operands of the compute calls, built without pyarrow's conversion (see text_scalar).
_EMPTY, _Z, _NEWLINE, _POINT_ZERO, _QUOTE = (text_scalar(t) for t in ("", "Z", "\n", ".0", '"'))
_FALSE = pa.Array.from_buffers(pa.bool_(), 1, [None, pa.py_buffer(b"\x00")])[0]


def _csv_field(col: pa.Array, delimiter: str, needs_quotes: str) -> pa.Array:
    """One column as CSV field text: NULL empty, quoted (quotes doubled) where needed."""
    if not pa.types.is_string(col.type):
        text = pc.cast(col, pa.string())
        if pa.types.is_floating(col.type):
            # "1.0", not pyarrow's "1": a reader must not infer an integer column from it.
            integral = pc.fill_null(pc.match_substring_regex(text, r"^-?\d+$"), _FALSE)
            if pc.any(integral).as_py():
                suffixed = pc.binary_join_element_wise(pc.filter(text, integral), _POINT_ZERO, _EMPTY)
                text = pc.replace_with_mask(text, integral, suffixed)
        if not pa.types.is_binary(col.type) and not (delimiter.isalnum() or delimiter in ".-+:"):
            return pc.fill_null(text, _EMPTY)  # a number's, date's or flag's text cannot need quotes
    else:
        text = col
    needs = pc.match_substring_regex(text, needs_quotes)
    if pc.any(needs).as_py():
        chosen = pc.filter(text, needs)
        quoted = pc.binary_join_element_wise(_QUOTE, pc.replace_substring(chosen, '"', '""'), _QUOTE, _EMPTY)
        text = pc.replace_with_mask(text, pc.fill_null(needs, _FALSE), quoted)
    return pc.fill_null(text, _EMPTY)


class _JsonWriter(_TextWriter):
    """One JSON object per row, encoded by DuckDB's ``to_json`` (no per-row Python)."""

    def __init__(
        self, path: str, schema: pa.Schema, append: bool, special: _SpecialFile | None = None
    ) -> None:
        super().__init__(path, schema, append, special)
        self.con = duckdb.connect()

    def write(self, table: pa.Table) -> None:
        self.con.register("velosql_sink_rows", _text_columns(table))
        try:
            lines = self.con.sql("SELECT to_json(t) || chr(10) FROM velosql_sink_rows AS t").to_arrow_table()
        finally:
            self.con.unregister("velosql_sink_rows")
        for chunk in lines.column(0).chunks:
            self.file.write(_string_bytes(chunk))

    def close(self) -> None:
        super().close()
        self.con.close()


def _string_bytes(arr: pa.Array) -> pa.Buffer:
    """The concatenated characters of a string array without nulls, as one zero-copy buffer."""
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.large_string())
    offset_type = pa.int32() if pa.types.is_string(arr.type) else pa.int64()
    offsets = pa.Array.from_buffers(offset_type, len(arr) + 1, [None, arr.buffers()[1]], offset=arr.offset)
    first, last = offsets[0].as_py(), offsets[len(arr)].as_py()
    return arr.buffers()[2].slice(first, last - first)


class _ParquetWriter(_Writer):
    def __init__(self, where: str | _SpecialFile, schema: pa.Schema, compression: str | None) -> None:
        self.schema = schema
        self.special = where if isinstance(where, _SpecialFile) else None
        import pyarrow.parquet as pq  # here: most jobs write no Parquet

        self.writer = pq.ParquetWriter(where, schema, compression=compression or "none")

    def copy(self, path: str) -> None:
        """Write the rows of the Parquet file ``path`` first (a resumed or continued file)."""
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=262_144):
            self.write(pa.Table.from_batches([batch]))

    def write(self, table: pa.Table) -> None:
        if not table.schema.equals(self.schema):
            table = table.cast(self.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        try:
            self.writer.close()
        finally:
            if self.special is not None:
                self.special.close()
