"""HTTP endpoints of a running engine: ``/health``, ``/jobs`` and ``/metrics`` (``velosql serve``).

>>> monitor = MonitorServer(engine, "127.0.0.1", 0)   # binds now: a busy port fails here
>>> monitor.start()                                   # answers from a daemon thread
>>> monitor.url
'http://127.0.0.1:41234'

Standard library only (``http.server``): each request is answered on its own daemon thread from
what :class:`velosql.metrics.Scrape` reads — the system tables' rows, read from Python
attributes of the jobs, never from DuckDB — so a request neither waits for a job nor uses the
engine's connection. Only GET; there is no authentication, which is why the default address is
the loopback interface.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import metrics
from .runtime.job import FAILED

_log = logging.getLogger("velosql")


def health(engine) -> tuple[int, dict]:
    """200 ``{"status": "ok", …}``, or 503 with status ``failing`` while any job has failed."""
    jobs = engine.jobs()
    failed = sum(job.status == FAILED for job in jobs)
    body = {"status": "failing" if failed else "ok", "jobs": len(jobs), "failed": failed}
    return (HTTPStatus.SERVICE_UNAVAILABLE if failed else HTTPStatus.OK), body


def jobs(engine) -> list[dict]:
    """Per job: its ``velosql_jobs`` row, then ``workers`` (its ``velosql_partitions`` rows),
    ``watermarks`` (its ``velosql_watermarks`` rows) and ``checkpoint`` (epoch, age and duration
    of the last one; null before the first or without a state location)."""
    scrape = metrics.Scrape(engine)
    out = []
    for row in scrape.job_rows:
        name = row["name"]
        out.append(
            {
                **row,
                "workers": [_without(r, "stream") for r in scrape.partition_rows if r["stream"] == name],
                "watermarks": [_without(r, "stream") for r in scrape.watermark_rows if r["stream"] == name],
                "checkpoint": scrape.checkpoint(name),
            }
        )
    return out


def _without(row: dict, key: str) -> dict:
    return {k: v for k, v in row.items() if k != key}


def _json(value) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    raise TypeError(f"{type(value).__name__} is not JSON")


class MonitorServer:
    """The endpoints of ``engine`` on ``host:port`` (port 0: a free one, see :attr:`url`).

    Raises:
        OSError: the address cannot be bound (in use, not an address of this machine).
    """

    def __init__(self, engine, host: str = "127.0.0.1", port: int = 0) -> None:
        self.engine = engine
        server = _Server6 if ":" in host else ThreadingHTTPServer
        self._httpd = server((host, port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.monitor = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> MonitorServer:
        """Answer requests from a daemon thread; returns the server."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="velosql-http", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop answering and release the port."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> MonitorServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server_version = "velosql"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        engine = self.server.monitor.engine
        path = self.path.split("?", 1)[0]
        try:
            if path == "/health":
                status, body = health(engine)
                self._send_json(status, body)
            elif path == "/jobs":
                self._send_json(HTTPStatus.OK, jobs(engine))
            elif path == "/metrics":
                self._send(HTTPStatus.OK, metrics.CONTENT_TYPE, metrics.render(engine).encode())
            else:
                self._send_json(
                    HTTPStatus.NOT_FOUND,
                    {"error": f"no endpoint {path!r}: GET /health, /jobs or /metrics"},
                )
        except Exception as exc:  # noqa: BLE001 - answered, and logged with its traceback
            _log.exception("velosql: GET %s failed", path)
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})

    def _not_allowed(self) -> None:
        self._send_json(
            HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"{self.command} is not served: only GET"}, allow=True
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _not_allowed  # noqa: N815

    def _send_json(self, status: int, body, *, allow: bool = False) -> None:
        data = (json.dumps(body, default=_json) + "\n").encode()
        self._send(status, "application/json", data, allow=allow)

    def _send(self, status: int, content_type: str, data: bytes, *, allow: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if allow:
            self.send_header("Allow", "GET")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        _log.debug("velosql http: " + format, *args)
