"""Whether processes are gone, for the tests that no worker outlives its pool or job."""

from __future__ import annotations

import contextlib
import os
import time
from multiprocessing.connection import wait

import psutil

DEADLINE = 20.0  # seconds; generous for a loaded CI machine, and only reached on failure


def gone(pid: int) -> bool:
    """Whether ``pid`` no longer runs (exited, or a zombie nobody has reaped yet)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids: list[int], timeout: float = DEADLINE) -> list[int]:
    """Wait until none of ``pids`` runs, at most ``timeout`` seconds; return those still running."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)  # readable once the process has exited
        except ProcessLookupError:
            continue
        except (AttributeError, OSError):  # no pidfd (not Linux, old kernel): psutil polls
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.wait_procs([psutil.Process(pid)], max(0.0, deadline - time.monotonic()))
            continue
        try:
            wait([fd], max(0.0, deadline - time.monotonic()))
        finally:
            os.close(fd)
    return [pid for pid in pids if not gone(pid)]
