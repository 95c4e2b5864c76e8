"""StreamJobServer: the seed's job server API over real engines, jobs and DuckDB."""

from __future__ import annotations

import logging

import pyarrow as pa
import pytest

import velosql
from velosql import JobProcessorConfig, StreamJobServer
from velosql.config import usable_cpus
from velosql.errors import JobError, JobLimitError, SqlError


def counting(stream: str, source: str, extra: str = "") -> str:
    return (
        f"CREATE TABLE {stream} AS SELECT k, count(*) AS n FROM {source} GROUP BY k EMIT FINAL "
        f"WITH ('{source}.type' = 'python', '{source}.schema' = 'k VARCHAR'{extra})"
    )


@pytest.fixture
def server():
    with StreamJobServer(max_jobs=2) as s:
        yield s


def test_defaults_to_v2_over_the_usable_cpus_and_can_be_set(server, caplog):
    assert server.processor_config() == JobProcessorConfig.V2()
    assert server.processor_config().description() == (
        f"V2 (Multi-partition: {usable_cpus()}, {usable_cpus()}x baseline expected)"
    )
    with caplog.at_level(logging.INFO, logger="velosql"):
        assert server.with_processor_config(JobProcessorConfig.V1) is server
    assert server.processor_config() == JobProcessorConfig.V1
    assert "V1 (Single-threaded, single partition, 1x baseline)" in caplog.text
    assert server.with_processor_config("v2:3").processor_config() == JobProcessorConfig.V2(3)


def test_deploy_job_uses_the_server_default_unless_the_statement_chooses(server, caplog):
    server.with_processor_config("v2:3")
    with caplog.at_level(logging.INFO, logger="velosql"):
        a = server.deploy_job("counts_a", counting("a", "src_a"))
        b = server.deploy_job("counts_b", counting("b", "src_b", ", processor = 'v1'"))
    assert a.processor.description() == "V2 (Multi-partition: 3, 3x baseline expected)"
    assert b.processor.description() == "V1 (Single-threaded, single partition, 1x baseline)"
    assert (
        "Job 'counts_a' using JobProcessor architecture: V2 (Multi-partition: 3, 3x baseline expected)"
        in (caplog.text)
    )
    assert "Job 'counts_b' using JobProcessor architecture: V1 (" in caplog.text
    for src in ("src_a", "src_b"):
        server.engine.close_source(src)


def test_max_jobs_counts_running_jobs(server):
    first = server.deploy_job("one", counting("t1", "s1"))
    server.deploy_job("two", counting("t2", "s2"))
    with pytest.raises(JobLimitError, match=r"^Maximum jobs limit reached \(2\)$"):
        server.deploy_job("three", counting("t3", "s3"))
    assert [j["status"] for j in server.list_jobs()] == ["Running", "Running"]
    server.stop_job("one")
    assert first.done and server.job_status("one") == "Stopped"
    server.deploy_job("three", counting("t3", "s3"))  # a stopped job no longer counts
    with pytest.raises(JobError, match="already running"):
        server.deploy_job("two", counting("t4", "s4"))
    for src in ("s2", "s3"):
        server.engine.close_source(src)


def test_jobs_run_side_by_side_and_are_listed(server):
    server.deploy_job("evens", counting("evens", "e"))
    server.deploy_job("odds", counting("odds", "o"))
    server.engine.push("e", pa.table({"k": ["x", "y", "x"]}))
    server.engine.push("o", pa.table({"k": ["z"] * 5}))
    for src in ("e", "o"):
        server.engine.close_source(src)
    for name in ("evens", "odds"):
        server.job(name).wait(60)
    assert sorted(server.engine.sql("SELECT * FROM evens").fetchall()) == [("x", 2), ("y", 1)]
    assert server.engine.sql("SELECT * FROM odds").fetchall() == [("z", 5)]
    listed = {j["name"]: j for j in server.list_jobs()}
    assert listed["evens"]["status"] == "Finished" and listed["evens"]["records_in"] == 3
    assert listed["odds"]["stream"] == "odds" and listed["odds"]["records_out"] == 1


def test_deploy_job_takes_exactly_one_streaming_statement(server):
    with pytest.raises(SqlError, match="one streaming statement"):
        server.deploy_job("two", counting("a", "s1") + ";\n" + counting("b", "s2"))
    with pytest.raises(SqlError, match="one streaming statement"):
        server.deploy_job("none", "CREATE TABLE plain (x INTEGER)")
    with pytest.raises(JobError, match="no job named 'missing'"):
        server.job_status("missing")


def test_deploy_app_starts_every_streaming_statement_or_none(server):
    jobs = server.deploy_app(counting("a", "s1") + ";\n" + counting("b", "s2") + ";")
    assert [j.name for j in jobs] == ["a", "b"]
    with pytest.raises(JobLimitError):
        server.deploy_app(counting("c", "s3") + ";")
    for src in ("s1", "s2"):
        server.engine.close_source(src)


def test_on_an_engine_passed_in_the_engine_default_applies_until_set():
    engine = velosql.connect(processor="v2:2")
    server = StreamJobServer(engine=engine)
    assert server.processor_config() == JobProcessorConfig.V2(2)
    server.close()  # stops its jobs; the engine stays open for its owner
    assert engine.sql("SELECT 1").fetchall() == [(1,)]
    engine.close()
