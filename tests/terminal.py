"""Reading a program's terminal (a pty) in tests of the ``velosql`` command."""

from __future__ import annotations

import errno
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\r")


def read_pty(
    master: int, proc: subprocess.Popen, until: re.Pattern | None, seen: list[str], timeout: float = 60
) -> str:
    """Read the program's terminal into ``seen`` until ``until`` matches it (ANSI codes removed)
    or, when ``until`` is None, until the program has exited and its terminal is drained."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = ANSI.sub("", "".join(seen))
        if until is not None and until.search(text):
            return text
        ready, _, _ = select.select([master], [], [], 0.1)
        chunk = read_chunk(master) if ready else b""
        if chunk:
            seen.append(chunk.decode("utf-8", "replace"))
        elif proc.poll() is not None:
            if until is None:
                return text
            pytest.fail(f"velosql exited ({proc.returncode}) before showing {until.pattern!r}:\n{text}")
    proc.kill()
    pytest.fail(f"timed out reading velosql's terminal:\n{ANSI.sub('', ''.join(seen))}")


def read_chunk(master: int) -> bytes:
    try:
        return os.read(master, 65536)
    except OSError as exc:  # EIO: the program exited and its end of the terminal is closed
        if exc.errno != errno.EIO:
            raise
        return b""


def start_on_pty(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    """``python -m velosql *args`` with its stderr on a new terminal; returns the process and the
    terminal's master end (for :func:`read_pty`; the caller closes it)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "velosql", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    return proc, master


class Terminal:
    """A program with its stdin, stdout and stderr on a new terminal of ``rows`` x ``cols``, which is
    its controlling terminal (so Ctrl-C typed there is SIGINT, as in a real one).

    :meth:`expect` waits for a pattern in what the program showed (ANSI codes removed) after the
    previous match; :meth:`send` types.
    """

    CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z~]|\x1b\][^\x07]*\x07|\x1b[()][A-Za-z0-9]|\x1b[=>]|\r")

    def __init__(
        self, args: list[str], cwd: Path, env: dict[str, str], rows: int = 40, cols: int = 150
    ) -> None:
        import fcntl
        import struct
        import termios

        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "velosql", *args],
            cwd=cwd,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(slave)
        self.master = master
        self.raw: list[str] = []
        self.pos = 0  # where the next expect starts looking

    @property
    def text(self) -> str:
        return self.CODES.sub("", "".join(self.raw))

    def send(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def expect(self, pattern: str, timeout: float = 60) -> re.Match:
        found = self.poll(pattern, timeout)
        if found is None:
            pytest.fail(f"timed out waiting for {pattern!r} in the terminal:\n{self.text[self.pos :]}")
        return found

    def poll(self, pattern: str, timeout: float) -> re.Match | None:
        """Like :meth:`expect`, but None when ``pattern`` has not shown within ``timeout``."""
        wanted = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = wanted.search(self.text, self.pos)
            if found:
                self.pos = found.end()
                return found
            if time.monotonic() > deadline:
                return None
            ready, _, _ = select.select([self.master], [], [], 0.1)
            chunk = read_chunk(self.master) if ready else b""
            if chunk:
                self.raw.append(chunk.decode("utf-8", "replace"))
            elif self.proc.poll() is not None and not ready:
                pytest.fail(
                    f"velosql exited ({self.proc.returncode}) before showing {pattern!r}:\n{self.text}"
                )

    def wait(self, timeout: float = 60) -> int:
        """Wait for the program to exit, reading its terminal meanwhile; its exit code."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            chunk = read_chunk(self.master) if ready else b""
            if chunk:
                self.raw.append(chunk.decode("utf-8", "replace"))
        return self.proc.wait(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
