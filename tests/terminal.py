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
