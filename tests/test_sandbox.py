"""The boundary around the engine (issue 19): ``velosql run --sandbox``, ``connect(sandbox=True)``,
a user's connection without external access, and WITH values that are never run as SQL."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_cli import velosql as velosql_cli  # velosql …, as a subprocess

import velosql
from velosql.errors import OptionError


def copy_sql(src: str = "in.csv", out: str = "out.csv", select: str = "a, b", extra: str = "") -> str:
    return f"""\
CREATE STREAM out AS SELECT {select} FROM src
WITH ('src.type' = 'file_source', 'src.path' = '{src}',
      'out.type' = 'file_sink', 'out.path' = '{out}'{extra});
"""


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """A working directory with an input, and a secret beside it that no statement names."""
    (tmp_path / "in.csv").write_text("a,b\n1,10\n2,20\n1,30\n")
    (tmp_path / "secret.txt").write_text("s3cr3t\n")
    return tmp_path


@pytest.fixture
def in_dir(app: Path):
    """Run in the app's directory (the sandbox's root is the working directory)."""
    before = os.getcwd()
    os.chdir(app)
    try:
        yield app
    finally:
        os.chdir(before)


# ---- WITH values are never SQL -------------------------------------------------------------------


@pytest.mark.parametrize(
    "schema",
    [
        "a INT); COPY (SELECT 42) TO 'pwned.csv'; CREATE TEMP TABLE x (b INT",
        "a INT) AS SELECT * FROM read_csv('pwned.csv'",
        "a INT DEFAULT (SELECT 42)",
        "a DECIMAL((SELECT 4), 2)",
        "a INT /* ); COPY (SELECT 42) TO 'pwned.csv' */",
        "a INT, CHECK (a > 0)",
    ],
    ids=["second-statement", "as-select", "default-subquery", "type-subquery", "comment", "check"],
)
def test_schema_option_is_parsed_as_a_column_list_never_run(in_dir: Path, schema: str):
    escaped = schema.replace("'", "''")
    sql = copy_sql(extra=f", 'src.schema' = '{escaped}'")
    with velosql.connect() as engine, pytest.raises(OptionError) as err:
        engine.execute(sql)
    assert "'src.schema'" in str(err.value)
    assert not (in_dir / "pwned.csv").exists()
    assert not (in_dir / "out.csv").exists()


def test_schema_option_keeps_every_duckdb_type(in_dir: Path):
    (in_dir / "in.csv").write_text("a,b\n1,2.50\n")
    sql = copy_sql(select="a, b", extra=", 'src.schema' = 'a HUGEINT, b DECIMAL(10, 2)'")
    with velosql.connect() as engine:
        engine.execute(sql).wait(60)
    assert (in_dir / "out.csv").read_text().splitlines() == ["a,b", "1,2.50"]


def test_python_source_schema_is_not_run_either(in_dir: Path):
    sql = """CREATE STREAM out AS SELECT a FROM feed
    WITH ('feed.type' = 'python', 'feed.schema' = 'a INT); COPY (SELECT 1) TO ''pwned.csv''; SELECT (1');"""
    with velosql.connect() as engine, pytest.raises(OptionError, match="'feed.schema'"):
        engine.execute(sql)
    assert not (in_dir / "pwned.csv").exists()


def test_duckdb_table_sink_name_is_quoted(in_dir: Path):
    name = 'x"; DROP TABLE keep; --'
    sql = copy_sql().replace("'out.type' = 'file_sink', 'out.path' = 'out.csv'", f"'out.table' = '{name}'")
    with velosql.connect() as engine:
        engine.sql("CREATE TABLE keep AS SELECT 1 AS k")
        engine.execute(sql).wait(60)
        assert engine.sql('SELECT count(*) FROM "x""; DROP TABLE keep; --"').fetchall() == [(3,)]
        assert engine.sql("SELECT k FROM keep").fetchall() == [(1,)]


@pytest.mark.parametrize("processor", ["v1", "v2:2"])
def test_source_path_with_a_quote_is_read_by_duckdb_as_a_literal(in_dir: Path, processor: str):
    """Paths go into read_parquet / read_csv (scan pushdown, V2 direct reads) as escaped literals."""
    folder = in_dir / "it's') UNION SELECT 1 --"
    folder.mkdir()
    for i in range(2):
        pq.write_table(pa.table({"a": [1, 2, 1], "b": [10 * i, 20, 30]}), folder / f"p{i}.parquet")
    sql = f"""CREATE STREAM out AS SELECT a, sum(b) AS s FROM src GROUP BY a EMIT FINAL
    WITH ('src.type' = 'file_source', 'src.path' = '{str(folder).replace("'", "''")}',
          'out.type' = 'file_sink', 'out.path' = 'out.csv', processor = '{processor}');"""
    with velosql.connect(sandbox=True) as engine:
        engine.execute(sql).wait(60)
    assert sorted((in_dir / "out.csv").read_text().splitlines()) == ["1,70", "2,40", "a,s"]


# ---- velosql run --sandbox -----------------------------------------------------------------------


def test_sandbox_run_streaming_sql_cannot_read_a_file_no_statement_names(app: Path):
    (app / "app.sql").write_text(copy_sql(select="a, (SELECT content FROM read_text('secret.txt')) AS leak"))
    result = velosql_cli(app, "run", "--sandbox", "app.sql")
    assert result.returncode != 0, result.stderr
    assert "disabled by configuration" in result.stderr
    assert "s3cr3t" not in (app / "out.csv").read_text() if (app / "out.csv").exists() else True


def test_sandbox_run_plain_sql_cannot_copy_or_attach(app: Path):
    outside = app.parent / f"{app.name}-copied.csv"
    (app / "app.sql").write_text(f"COPY (SELECT 42) TO '{outside}';\n")
    result = velosql_cli(app, "run", "--sandbox", "app.sql")
    assert result.returncode == 1
    assert "disabled by configuration" in result.stderr
    assert not outside.exists()
    (app / "app.sql").write_text("ATTACH 'other.db' AS o;\n")
    result = velosql_cli(app, "run", "--sandbox", "app.sql")
    assert result.returncode == 1
    assert not (app / "other.db").exists()


@pytest.mark.parametrize(
    "out", ["../escaped.csv", "/tmp/velosql-sandbox-escaped.csv", "sub/../../escaped.csv"]
)
def test_sandbox_run_refuses_a_sink_path_outside_the_working_directory(app: Path, out: str):
    (app / "app.sql").write_text(copy_sql(out=out))
    result = velosql_cli(app, "run", "--sandbox", "app.sql")
    assert result.returncode == 2, result.stderr
    assert "statement 'out'" in result.stderr and "'out.path'" in result.stderr and out in result.stderr
    assert "outside the sandbox" in result.stderr
    assert "records in" not in result.stderr  # nothing ran
    target = (app / out) if not out.startswith("/") else Path(out)
    assert not target.resolve().exists()


def test_sandbox_run_refuses_a_source_path_outside_the_working_directory(app: Path):
    (app / "app.sql").write_text(copy_sql(src="/etc/passwd", extra=", 'src.format' = 'csv'"))
    result = velosql_cli(app, "run", "--sandbox", "app.sql")
    assert result.returncode == 2, result.stderr
    assert "'src.path' = '/etc/passwd' is outside the sandbox" in result.stderr
    assert not (app / "out.csv").exists()


def test_sandbox_run_refuses_a_link_leading_out_of_the_working_directory(app: Path):
    outside = app.parent / f"{app.name}-outside"
    outside.mkdir()
    (outside / "x.csv").write_text("a,b\n9,9\n")
    (app / "data").mkdir()
    (app / "data" / "a.csv").write_text("a,b\n1,1\n")
    os.symlink(outside / "x.csv", app / "data" / "b.csv")
    (app / "app.sql").write_text(copy_sql(src="data"))
    result = velosql_cli(app, "run", "--sandbox", "app.sql")
    assert result.returncode == 2, result.stderr
    assert "b.csv" in result.stderr and "outside the sandbox" in result.stderr
    assert not (app / "out.csv").exists()


def test_sandbox_run_allow_path_admits_another_directory(app: Path):
    other = app.parent / f"{app.name}-results"
    other.mkdir()
    (app / "app.sql").write_text(copy_sql(out=str(other / "out.csv")))
    assert velosql_cli(app, "run", "--sandbox", "app.sql").returncode == 2
    result = velosql_cli(app, "run", "--sandbox", "--allow-path", str(other), "app.sql")
    assert result.returncode == 0, result.stderr
    assert (other / "out.csv").read_text().splitlines() == ["a,b", "1,10", "2,20", "1,30"]


def test_sandbox_run_reads_and_writes_what_the_with_clause_names(app: Path):
    (app / "app.sql").write_text(copy_sql(out="results/out.csv"))
    result = velosql_cli(app, "run", "--sandbox", "app.sql")
    assert result.returncode == 0, result.stderr
    assert (app / "results" / "out.csv").read_text().splitlines() == ["a,b", "1,10", "2,20", "1,30"]


# ---- connect(sandbox=True): every DuckDB connection that runs the statement ----------------------


@pytest.mark.parametrize("processor", ["v1", "v2:2"])
def test_sandbox_holds_in_scan_pushdown_and_workers(in_dir: Path, processor: str):
    """A GROUP BY over bounded files runs in DuckDB's own reader (pushdown) or in V2 workers
    reading their own Parquet pieces: those connections read the source's files, nothing else."""
    pq.write_table(pa.table({"a": [1, 2], "b": [10, 20]}), in_dir / "p0.parquet")
    pq.write_table(pa.table({"a": [1, 2], "b": [30, 40]}), in_dir / "p1.parquet")
    good = f"""CREATE STREAM out AS SELECT a, sum(b) AS s FROM src GROUP BY a EMIT FINAL
    WITH ('src.type' = 'file_source', 'src.path' = 'p*.parquet', 'out.type' = 'file_sink',
          'out.path' = 'out.csv', processor = '{processor}', scan_pushdown = {processor == "v1"});"""
    with velosql.connect(sandbox=True) as engine:
        job = engine.execute(good)
        job.wait(60)
        # The connections this test is about did the reading: the pushdown's, or the workers'.
        assert job.executor.scan is not None if processor == "v1" else job.executor.direct
    assert sorted((in_dir / "out.csv").read_text().splitlines()) == ["1,40", "2,60", "a,s"]
    leak = good.replace("sum(b) AS s", "sum(b) + (SELECT count(*) FROM read_text('secret.txt')) AS s")
    with (
        velosql.connect(sandbox=True) as engine,
        pytest.raises(velosql.VelosqlError, match="disabled by config"),
    ):
        engine.execute(leak).wait(60)


def test_sandbox_refuses_checkpoint_dir_in_with(in_dir: Path):
    sql = copy_sql(extra=", 'checkpoint.dir' = '/tmp/velosql-sandbox-state'")
    with velosql.connect(sandbox=True) as engine, pytest.raises(OptionError, match="'checkpoint.dir'"):
        engine.execute(sql)


def test_sandbox_refuses_a_config_file_outside(in_dir: Path):
    sql = copy_sql(extra=", 'src.config_file' = '/etc/hostname'")
    with velosql.connect(sandbox=True) as engine, pytest.raises(OptionError, match="src.config_file"):
        engine.execute(sql)


# ---- a user's connection without external access --------------------------------------------------


def test_user_connection_without_external_access_is_not_bypassed(in_dir: Path):
    con = duckdb.connect(config={"enable_external_access": False})
    with velosql.connect(con) as engine, pytest.raises(OptionError, match="'src.path' = 'in.csv' is outside"):
        engine.execute(copy_sql())
    assert not (in_dir / "out.csv").exists()


def test_user_connection_allowed_directories_are_what_the_connectors_may_use(in_dir: Path):
    con = duckdb.connect()
    con.execute(f"SET allowed_directories = ['{in_dir}']")
    con.execute("SET enable_external_access = false")
    with velosql.connect(con) as engine:
        engine.execute(copy_sql()).wait(60)
        with pytest.raises(OptionError, match="outside the sandbox"):
            engine.execute(copy_sql(out="../elsewhere.csv"))
    assert (in_dir / "out.csv").read_text().splitlines() == ["a,b", "1,10", "2,20", "1,30"]
