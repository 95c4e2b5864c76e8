"""``velosql serve``: the real program serving watched CSV files, read through its HTTP endpoints.

Every wait has a deadline and waits on something the program says (a line on stderr, an HTTP
answer, its exit), never on a fixed sleep.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner
from test_cli import env  # the program's environment: this checkout, no ambient config
from test_cli import velosql as velosql_cli  # velosql …, as a subprocess

import velosql
from velosql import metrics
from velosql.cli.main import cli
from velosql.monitor import MonitorServer

DEADLINE = 30.0  # seconds; generous for a loaded machine, and only reached on failure
BASE = dt.datetime(2024, 1, 1)


def lines(first: int, last: int) -> str:
    """CSV rows ``first`` … ``last - 1``: three keys, a row every 7 s."""
    return "".join(
        f"k{i % 3},{i},{(BASE + dt.timedelta(seconds=7 * i)).isoformat(sep=' ')}\n"
        for i in range(first, last)
    )


WATCHED = "'t.type' = 'file_source', 't.path' = 'in.csv', 't.watch' = 'true', 't.poll_interval' = '20ms'"
# A per-minute aggregate of a watched file into a CSV file, and a bounded job that finishes.
APP = f"""\
CREATE STREAM per_min AS
SELECT k, _window_start AS ws, count(*) AS n, sum(v) AS s FROM t GROUP BY k
WINDOW TUMBLING(ts, 60s) EMIT FINAL
WITH ({WATCHED}, 'checkpoint.interval' = '50ms',
      'per_min.type' = 'file_sink', 'per_min.path' = 'per_min.csv');
CREATE STREAM doubled AS SELECT id, v * 2 AS v2 FROM b
WITH ('b.type' = 'file_source', 'b.path' = 'b.csv', 'doubled.type' = 'file_sink', 'doubled.path' = 'doubled.csv');
"""


# ---- the program ---------------------------------------------------------------------------------


class Serve:
    """``velosql serve …`` running in ``cwd``; its stderr lines gathered by a thread."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "velosql", "serve", *args],
            cwd=cwd,
            env=env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        match = self.wait_line(re.compile(r"^velosql: serving (http://\S+) \((\d+) jobs?\)$"))
        self.url, self.jobs = match.group(1), int(match.group(2))

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_line(self, pattern: re.Pattern) -> re.Match:
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no line matching {pattern.pattern} in time: {self.seen}")
            if line is None:
                pytest.fail(f"the program ended ({self.proc.wait()}) before {pattern.pattern}: {self.seen}")
            self.seen.append(line)
            if m := pattern.search(line):
                return m

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str]:
        """Send ``signum``; the exit code and all of stderr."""
        self.proc.send_signal(signum)
        code = self.proc.wait(DEADLINE)
        while (line := self.lines.get(timeout=DEADLINE)) is not None:
            self.seen.append(line)
        return code, "\n".join(self.seen)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def get(self, path: str) -> tuple[int, str, str]:
        return get(self.url + path)

    def jobs_by_name(self) -> dict[str, dict]:
        status, _, body = self.get("/jobs")
        assert status == 200
        return {job["name"]: job for job in json.loads(body)}

    def until(self, condition, what: str):
        """Wait for ``condition()`` to be true (every 20 ms); fail naming ``what`` at the deadline
        or once the program has ended."""
        deadline = time.monotonic() + DEADLINE
        while not (value := condition()):
            if self.proc.poll() is not None:
                pytest.fail(f"the program ended ({self.proc.returncode}) before {what}: {self.seen}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting until {what}")
            select.select([], [], [], 0.02)
        return value


def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of GET ``url``."""
    try:
        with urllib.request.urlopen(url, timeout=DEADLINE) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


# ---- Prometheus text format 0.0.4, parsed strictly ----------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{((?:{_LABEL})(?:,{_LABEL})*)?\}})? (\S+)(?: -?\d+)?$")
_HELP = re.compile(rf"^# HELP ({_NAME}) (.*)$")
_TYPE = re.compile(rf"^# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)$")
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def parse_prometheus(text: str) -> dict[str, dict[tuple, float]]:
    """Metric name -> {sorted (label, value) pairs: value}; fails on any line out of format, a
    sample without HELP and TYPE before it, a family split in two, or a label set seen twice."""
    assert text.endswith("\n")
    helps, types, families = set(), {}, {}
    current = None
    for line in text[:-1].split("\n"):
        if m := _HELP.match(line):
            assert m.group(1) not in helps, f"HELP twice: {line}"
            helps.add(m.group(1))
        elif m := _TYPE.match(line):
            assert m.group(1) not in types, f"TYPE twice: {line}"
            assert m.group(1) not in families, f"TYPE after samples: {line}"
            types[m.group(1)] = m.group(2)
        elif line.startswith("#"):
            pytest.fail(f"a comment out of format: {line!r}")
        else:
            m = _SAMPLE.match(line)
            assert m, f"a sample line out of format: {line!r}"
            name, labels, value = m.groups()
            assert name in helps and name in types, f"{name} has no HELP or TYPE before it"
            assert name == current or name not in families, f"{name}'s samples are not together"
            current = name
            if value in ("+Inf", "-Inf", "NaN"):
                number = float(value.replace("Inf", "inf").replace("NaN", "nan"))
            else:
                assert re.fullmatch(r"-?\d+(\.\d+)?([eE][-+]?\d+)?", value), line
                number = float(value)
            key = tuple(sorted(_PAIR.findall(labels or "")))
            samples = families.setdefault(name, {})
            assert key not in samples, f"a label set twice: {line}"
            samples[key] = number
    assert helps == set(types), "a metric has HELP without TYPE, or TYPE without HELP"
    for name in helps:
        families.setdefault(name, {})
    return families


def metric(families: dict, name: str, **labels: str) -> float | None:
    return families[name].get(tuple(sorted(labels.items())))


# ---- serve ---------------------------------------------------------------------------------------


def test_serve_answers_health_jobs_and_metrics_and_resumes_after_sigterm(tmp_path):
    """One server, two jobs: the bounded one finishes and stays listed, the watched one reads
    rows as they are appended; SIGTERM stops it with a checkpoint (exit 0), and a server started
    again on the same --state reads only the rows appended since. Together they wrote each
    closed window once, as DuckDB batch SQL over all the rows."""
    src = tmp_path / "in.csv"
    src.write_text("k,v,ts\n" + lines(0, 30))
    (tmp_path / "b.csv").write_text("id,v\n1,10\n2,20\n")
    (tmp_path / "app.sql").write_text(APP)
    server = Serve(tmp_path, "app.sql", "--http", "0", "--state", "state", "--processor", "v1")
    try:
        assert server.jobs == 2
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.url)
        assert server.get("/health") == (
            200,
            "application/json",
            '{"status": "ok", "jobs": 2, "failed": 0}\n',
        )

        jobs = server.until(
            lambda: (
                (j := server.jobs_by_name())["per_min"]["records_in"] == 30
                and j["doubled"]["status"] == "Finished"
                and j["per_min"]["checkpoint"]
                and j
            ),
            "the watched job read 30 rows and checkpointed, and the bounded one finished",
        )
        per_min = jobs["per_min"]
        assert per_min["status"] == "Running"
        assert per_min["processor"].startswith("V1")
        assert per_min["watermark"] == "2024-01-01 00:03:23"  # row 29: 29 * 7 s
        assert per_min["workers"] == []
        assert {w["scope"] for w in per_min["watermarks"]} == {"job", "source partition"}
        assert per_min["checkpoint"]["epoch"] >= 1
        assert jobs["doubled"]["records_out"] == 2 and jobs["doubled"]["error"] is None

        status, content_type, text = server.get("/metrics")
        assert status == 200 and content_type == metrics.CONTENT_TYPE
        families = parse_prometheus(text)
        assert set(families) == {m.name for m in metrics.METRICS}
        assert metric(families, "velosql_records_in_total", job="per_min") == 30
        assert metric(families, "velosql_records_out_total", job="doubled") == 2
        assert metric(families, "velosql_job_info", job="doubled", status="Finished", processor=per_min["processor"]) == 1  # fmt: skip
        assert (
            metric(families, "velosql_watermark_seconds", job="per_min")
            == ((BASE + dt.timedelta(seconds=7 * 29)) - dt.datetime(1970, 1, 1)).total_seconds()
        )
        wm = metric(families, "velosql_source_watermark_seconds", job="per_min", source="t", partition="0")
        assert wm == metric(families, "velosql_watermark_seconds", job="per_min")
        assert metric(families, "velosql_source_offset", job="per_min", source="t", partition="0") == 30
        assert metric(families, "velosql_checkpoint_epoch", job="per_min") >= 1
        assert 0 <= metric(families, "velosql_checkpoint_age_seconds", job="per_min") < DEADLINE
        assert 0 < metric(families, "velosql_checkpoint_duration_seconds", job="per_min") < DEADLINE

        assert server.get("/nope")[:2] == (404, "application/json")
        assert "no endpoint '/nope'" in json.loads(server.get("/nope")[2])["error"]
        request = urllib.request.Request(server.url + "/health", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=DEADLINE)
        assert refused.value.code == 405 and refused.value.headers["Allow"] == "GET"

        with open(src, "a") as f:
            f.write(lines(30, 60))
        server.until(
            lambda: parse_prometheus(server.get("/metrics")[2])["velosql_records_in_total"][(("job", "per_min"),)] == 60,
            "the rows appended are read",
        )  # fmt: skip
        code, err = server.stop(signal.SIGTERM)
    finally:
        server.kill()
    assert code == 0, err
    assert "Traceback" not in err
    assert re.search(r"^velosql: job per_min Stopped: 60 records in", err, re.M), err
    assert re.search(r"^velosql: job doubled Finished: 2 records in, 2 out", err, re.M), err
    assert (tmp_path / "state" / "per_min" / "CURRENT").is_file()

    # Started again: only the rows appended meanwhile are read (the last far ahead, so that its
    # watermark closes every window before it).
    with open(src, "a") as f:
        f.write(lines(60, 90) + lines(1000, 1001))
    server = Serve(tmp_path, "app.sql", "--http", "0", "--state", "state", "--processor", "v1")
    try:
        server.until(lambda: server.jobs_by_name()["per_min"]["records_in"] == 31, "the new rows are read")
        code, err = server.stop(signal.SIGINT)
    finally:
        server.kill()
    assert code == 0, err
    want = duckdb.sql(
        f"SELECT k, time_bucket(INTERVAL '60 seconds', ts) AS ws, count(*), sum(v) FROM read_csv('{src}') "
        f"GROUP BY ALL HAVING ws + INTERVAL '60 seconds' <= (SELECT max(ts) FROM read_csv('{src}'))"
    ).fetchall()
    got = duckdb.sql(f"SELECT * FROM read_csv('{tmp_path / 'per_min.csv'}')").fetchall()
    assert len(want) > 20
    assert sorted(got) == sorted(want)


def test_a_failed_job_is_reported_and_the_others_go_on(tmp_path):
    (tmp_path / "in.csv").write_text("k,v,ts\n" + lines(0, 5))
    (tmp_path / "b.csv").write_text("id,v\n1,10\nx,20\n")
    (tmp_path / "app.sql").write_text(
        f"CREATE STREAM copy AS SELECT k, v FROM t WITH ({WATCHED}, 'copy.type' = 'file_sink', 'copy.path' = 'copy.csv');\n"
        "CREATE STREAM bad AS SELECT id, v FROM b WITH ('b.type' = 'file_source', 'b.path' = 'b.csv', "
        "'b.schema' = 'id INTEGER, v INTEGER', failure_strategy = 'FailBatch', 'bad.type' = 'duckdb_table');\n"
    )  # fmt: skip
    server = Serve(tmp_path, "app.sql", "--http", "127.0.0.1:0", "--processor", "v2:2")
    try:
        server.wait_line(re.compile(r"^velosql: error: .*b\.csv:3:.*; the other jobs go on$"))
        assert server.get("/health") == (
            503,
            "application/json",
            '{"status": "failing", "jobs": 2, "failed": 1}\n',
        )
        jobs = server.jobs_by_name()
        assert jobs["bad"]["status"] == "Error" and "b.csv:3" in jobs["bad"]["error"]
        with open(tmp_path / "in.csv", "a") as f:
            f.write(lines(5, 9))
        server.until(lambda: server.jobs_by_name()["copy"]["records_in"] == 9, "the other job reads on")
        assert len(server.jobs_by_name()["copy"]["workers"]) == 2
        code, err = server.stop()
    finally:
        server.kill()
    assert code == 0, err
    assert err.count("b.csv:3") == 1, err  # reported once, when it failed
    assert re.search(r"^velosql: job bad Error: ", err, re.M), err


def test_an_address_in_use_or_wrong_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "in.csv").write_text("k,v,ts\n" + lines(0, 5))
    (tmp_path / "app.sql").write_text(
        f"CREATE STREAM copy AS SELECT k, v FROM t WITH ({WATCHED}, 'copy.type' = 'file_sink', 'copy.path' = 'copy.csv');\n"
    )  # fmt: skip
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = velosql_cli(tmp_path, "serve", "app.sql", "--http", str(port))
    assert result.returncode == 2, result.stderr
    assert f"velosql: error: cannot serve HTTP on 127.0.0.1:{port}: " in result.stderr
    assert "--http [HOST:]PORT (port 0 picks a free one)" in result.stderr
    assert not (tmp_path / "copy.csv").exists()
    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "app.sql"), "--http", "localhost:http"])
    assert result.exit_code == 2 and "'localhost:http' is not [HOST:]PORT" in result.output


# ---- in the process: the embedding API and the exposition's details ------------------------------


def test_a_source_lag_is_exposed_and_label_values_are_escaped(tmp_path):
    (tmp_path / "in.csv").write_text("k,v,ts\n" + lines(0, 3))
    sql = (
        f"CREATE STREAM copy AS SELECT k, v FROM t WITH ({WATCHED.replace('in.csv', str(tmp_path / 'in.csv'))}, "
        "processor = 'v1')"
    )
    with velosql.connect() as engine, MonitorServer(engine).start() as monitor:
        job = engine.execute(sql)
        job.executor.source.lag = lambda: {1: 7, 0: 3}  # what a Kafka source reports
        text = get(monitor.url + "/metrics")[2]
        families = parse_prometheus(text)
        assert metric(families, "velosql_kafka_lag", job="copy", source="t", partition="0") == 3
        assert metric(families, "velosql_kafka_lag", job="copy", source="t", partition="1") == 7
        job.executor.source.lag = lambda: 1 / 0  # a lag that cannot be read costs only itself
        assert parse_prometheus(get(monitor.url + "/metrics")[2])["velosql_kafka_lag"] == {}
    assert metrics._escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    assert [metrics._number(v) for v in (3, 0.5, math.inf, -math.inf)] == ["3", "0.5", "+Inf", "-Inf"]
