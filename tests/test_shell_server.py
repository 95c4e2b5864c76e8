"""The shell attached to a running ``velosql serve``: ``--server URL`` and ``.server URL`` make
SHOW JOBS list the server's jobs.

One real server (``test_serve.Serve``) serves a watched CSV file and a bounded one for the whole
module; real shells in pseudo-terminals (``terminal.Terminal``) attach to it. Every wait waits on
something the programs show or answer, never on a fixed sleep.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner
from test_serve import Serve, lines
from test_shell import (
    PROMPT,
    shell,  # noqa: F401 - the fixture: a real shell in a pty
)

from velosql.cli.main import cli
from velosql.cli.shell import server_jobs
from velosql.errors import VelosqlError

ENTER = "\r"
APP = """\
CREATE STREAM watched AS SELECT k, v FROM t
WITH ('t.type' = 'file_source', 't.path' = 'in.csv', 't.watch' = 'true', 't.poll_interval' = '20ms',
      'watched.type' = 'file_sink', 'watched.path' = 'watched.csv');
CREATE STREAM bounded AS SELECT id, v * 2 AS v2 FROM b
WITH ('b.type' = 'file_source', 'b.path' = 'b.csv', 'bounded.type' = 'file_sink', 'bounded.path' = 'bounded.csv');
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Serve]:
    """A server whose watched job is Running (it read the file's 5 rows) and bounded job Finished."""
    where = tmp_path_factory.mktemp("serve")
    (where / "in.csv").write_text("k,v,ts\n" + lines(0, 5))
    (where / "b.csv").write_text("id,v\n1,10\n2,20\n")
    (where / "app.sql").write_text(APP)
    served = Serve(where, "app.sql", "--http", "0", "--processor", "v1")
    try:
        served.until(
            lambda: (
                (j := served.jobs_by_name())["watched"]["records_in"] == 5
                and j["bounded"]["status"] == "Finished"
            ),
            "the watched job read its file and the bounded one finished",
        )
        yield served
    finally:
        served.kill()


# The server's two jobs as SHOW JOBS lists them in csv mode: the velosql_jobs columns.
HEADER = r"\nname,status,processor,records_in,records_out,batches,"
WATCHED_ROW = r'\nwatched,Running,"V1 \(Single-threaded[^\n]*\)",5,5,'
BOUNDED_ROW = r'\nbounded,Finished,"V1 \(Single-threaded[^\n]*\)",2,2,'


def test_the_server_option_makes_show_jobs_list_the_servers_jobs(server, shell):  # noqa: F811
    t = shell("--server", server.url)
    assert f"Attached to {server.url}: SHOW JOBS lists its jobs." in t.text
    # A job of the shell's own, which SHOW JOBS leaves out while attached.
    t.send("CREATE TABLE nums AS SELECT 1 AS n;" + ENTER)
    t.send("CREATE STREAM mine AS SELECT n FROM nums;" + ENTER)
    t.expect(r"STREAM mine started")
    t.send(".mode csv" + ENTER + "SHOW JOBS;" + ENTER)
    t.expect(HEADER)
    t.expect(WATCHED_ROW)
    t.expect(BOUNDED_ROW)
    t.expect(PROMPT)
    t.send(".server off" + ENTER + "SHOW JOBS;" + ENTER)
    t.expect(r'\nmine,Finished,"V1')
    t.send(".exit" + ENTER)
    assert t.wait() == 0
    assert "watched" not in t.text[t.text.rindex(".server off") :]
    assert "Traceback" not in t.text


def test_the_server_dot_command_attaches_shows_which_and_detaches(server, shell):  # noqa: F811
    t = shell("shell")
    t.send(".server" + ENTER)
    t.expect(r"current server: none: SHOW JOBS lists this shell's jobs")
    t.send(f".server {server.url.removeprefix('http://')}/" + ENTER + ".server" + ENTER)
    t.expect(rf"current server: {server.url}\n")
    t.send(".mode csv" + ENTER + ".jobs" + ENTER)
    t.expect(WATCHED_ROW)
    t.send(".server off" + ENTER + ".server" + ENTER)
    t.expect(r"current server: none")
    t.send(".server ftp://example.org" + ENTER)
    t.expect(r"Error: 'ftp://example\.org' is not the URL of a velosql serve: give http://HOST:PORT")
    t.send(".exit" + ENTER)
    assert t.wait() == 0


def test_a_server_that_does_not_answer_gives_one_error_and_the_shell_goes_on(shell):  # noqa: F811
    with socket.socket() as bound:  # bound, not listening: a connection is refused at once
        bound.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{bound.getsockname()[1]}"
        t = shell("--server", url)
        t.send("SHOW JOBS;" + ENTER)
        t.expect(
            rf"\nError: {url}/jobs: no answer \(Connection refused\); is velosql serve running there\? "
            r"\(\.server off detaches\)\n"
        )
        t.send("SELECT 42 AS answer;" + ENTER)
        t.expect(r"│\s+42\s+│")
        t.send(".exit" + ENTER)
        assert t.wait() == 0
    assert "Traceback" not in t.text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--server", "http://127.0.0.1:8123", "-c", "SHOW JOBS"],
            "--server attaches the shell to a server, and -c, -f and stdin do not open the shell",
        ),
        (["--server", "127.0.0.1:http"], "'127.0.0.1:http' is not the URL of a velosql serve"),
        (["shell", "--server", "http://host/jobs"], "'http://host/jobs' is not the URL of a velosql serve"),
    ],
)
def test_the_server_option_is_refused_where_it_cannot_apply(args, message):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (404, b'{"error": "no endpoint"}', r"/jobs: the server answered 404 Not Found$"),
        (200, b"<html>a web page</html>", r"/jobs: not a velosql server's list of jobs \(Expecting value"),
        (
            200,
            b'{"status": "ok"}',
            r"/jobs: not a velosql server's list of jobs \(a list was expected, not dict\)",
        ),
    ],
)
def test_an_answer_that_is_not_a_list_of_jobs_is_one_error_naming_the_url(status, body, message):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Handler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        with pytest.raises(VelosqlError, match="^" + re.escape(url) + message):
            server_jobs(url)
        httpd.shutdown()
