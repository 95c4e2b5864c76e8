"""Scan pushdown (runtime/pushdown.py): DuckDB's reader computing the partials of a bounded file
source must give what reading the files record by record gives — rows, dead letters and counts."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SOME, SOME_IDS, property_test, split_entry
from hypothesis import strategies as st

import velosql
from velosql.errors import DataError

# The jobs of the tests marked so run on V1 and on each V2 entry of the processor matrix
# (conftest.py); the property test takes the entry as a parameter, with fewer examples for V2.
matrix = pytest.mark.usefixtures("processor_matrix")
V1_EXAMPLES = int(__import__("os").environ.get("VELOSQL_HYPOTHESIS_EXAMPLES", "40"))  # scaled by the profile
QUERY = (
    "SELECT k, count(*) AS n, count(v) AS nv, sum(v) AS sv, min(v) AS lo, max(f) AS hi, avg(f) AS af, "
    "string_agg(DISTINCT k, '|') AS ks FROM src {where}GROUP BY k {having} EMIT FINAL"
)


def run(
    path, query: str, pushdown: bool, processor: str | None = None, **options
) -> tuple[list[tuple], list[tuple], dict, object]:
    """(result rows sorted, dead letters (location, error, raw) sorted, metrics, whether the scan
    was pushed down). ``processor``: a matrix entry (else the engine's default)."""
    if processor is not None:
        processor, strategy = split_entry(processor)
        if strategy:
            options["partitioning_strategy"] = strategy
    engine = velosql.connect(processor=processor)
    try:
        job = engine.execute(
            f"CREATE TABLE o AS {query} {with_file(path, scan_pushdown=pushdown, **options)}"
        )
        pushed = job.executor.scan is not None
        job.wait(60)
        rows = [tuple("NaN" if v != v else v for v in r) for r in engine.sql("SELECT * FROM o").fetchall()]
        dlq = engine.sql("SELECT location, error, raw FROM o__dlq").fetchall()
        return sorted(rows, key=repr), sorted(dlq, key=repr), job.metrics(), pushed
    finally:
        engine.close()


def with_file(path, **options) -> str:
    """The WITH clause of a statement reading ``src`` from ``path`` (options keyed as written)."""
    opts = {"src.type": "file_source", "src.path": str(path), **options}
    return "WITH (" + ", ".join(f"'{k}' = {_value(v)}" for k, v in opts.items()) + ")"


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "'" + str(v).replace("'", "''") + "'"


def same_both_ways(path, query: str, **options) -> None:
    got, dlq, m, pushed = run(path, query, True, **options)
    want, want_dlq, want_m, not_pushed = run(path, query, False, **options)
    assert pushed and not not_pushed
    assert len(got) == len(want) and all(map(same_row, got, want)), (got, want)
    assert dlq == want_dlq
    assert (m["records_in"], m["dead_letters"]) == (want_m["records_in"], want_m["dead_letters"])


def same_row(a: tuple, b: tuple) -> bool:
    """Equal, floating point up to summation order (DuckDB's parallel scan adds in another order)."""
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9)
        if isinstance(x, float) and isinstance(y, float)
        else x == y
        for x, y in zip(a, b)
    )


KEYS = st.sampled_from(["a", "b", "", '"q,uo""te"', "NA", "null", " sp "])
INTS = st.sampled_from(["1", "-7", "0", "", "12345678901", "x1", "1.5", "+3", " 4", "1e400", "0x10"])
FLOATS = st.sampled_from(["0.5", "-1e3", "", "NaN", "inf", "-0.0", "1,5", "abc", "3"])


@st.composite
def csv_files(draw):
    header = draw(st.booleans())
    rows = draw(st.lists(st.tuples(KEYS, INTS, FLOATS), min_size=0, max_size=40))
    lines = ["k,v,f"] if header else []
    for k, v, f in rows:
        fields = [k if not k or k[0] != '"' else k, v, f]
        shape = draw(st.sampled_from(["ok"] * 8 + ["short", "long"]))
        if shape == "short":
            fields = fields[:2]
        elif shape == "long":
            fields = [*fields, "extra"]
        lines.append(",".join(fields))
        if draw(st.integers(0, 15)) == 0:
            lines.append("")  # a blank line
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    return header, newline.join(lines) + (newline if draw(st.booleans()) else "")


@property_test(v1_examples=V1_EXAMPLES, data=csv_files(), where=st.booleans(), having=st.booleans())
def test_pushed_down_csv_scan_matches_reading_record_by_record(processor, tmp_path, data, where, having):
    header, text = data
    path = tmp_path / "in.csv"
    path.write_bytes(text.encode())
    query = QUERY.format(where="WHERE v IS DISTINCT FROM 0 " if where else "",
                         having="HAVING count(*) > 1" if having else "")  # fmt: skip
    schema = "k VARCHAR, v DOUBLE, f DOUBLE"
    options = {"src.format": "csv" if header else "csv_no_header", "src.schema": schema}
    same_both_ways(path, query, processor=processor, **options)


@matrix
def test_pushed_down_csv_with_inferred_types_delimiter_and_several_files(tmp_path):
    for i in range(3):
        lines = ["station;temp"] + [f"s{j % 5};{(i * 31 + j * 7) % 50 - 20}.{j % 10}" for j in range(200)]
        if i == 1:
            lines.insert(50, "s1;warm")  # a bad record in the middle of the second file
        (tmp_path / f"part{i}.csv").write_text("\n".join(lines) + "\n")
    same_both_ways(
        tmp_path / "*.csv",
        "SELECT station, min(temp), avg(temp), max(temp), count(*) FROM src GROUP BY station EMIT FINAL",
        **{"src.delimiter": ";"},
    )
    _, dlq, m, _ = run(
        tmp_path / "*.csv", "SELECT count(*) FROM src GROUP BY () EMIT FINAL", True, **{"src.delimiter": ";"}
    )
    error = "column 'temp': cannot convert to double: invalid value 'warm'"
    assert dlq == [(f"{tmp_path / 'part1.csv'}:51", error, "s1;warm")]
    assert m["records_in"] == 600 and m["dead_letters"] == 1


@matrix
def test_pushed_down_parquet_scan(tmp_path):
    table = pa.table({"k": ["a", "b", None, "a"] * 50, "v": pa.array(range(200), pa.int32())})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=64)
    same_both_ways(
        tmp_path / "t.parquet",
        "SELECT k, sum(v), count(*), median(v) FROM src WHERE v % 3 <> 0 GROUP BY k EMIT FINAL",
    )


@pytest.mark.usefixtures("processor_matrix")
@pytest.mark.parametrize("processor_matrix", SOME, ids=SOME_IDS, indirect=True)  # declining is per statement
@pytest.mark.parametrize(
    ("query", "options"),
    [
        ("SELECT k, first(v) FROM src GROUP BY k EMIT FINAL", {}),  # arrival order: needs the stream
        ("SELECT k, count(*), max(_offset) FROM src GROUP BY k EMIT FINAL", {}),
        ("SELECT k, count(*) FROM src GROUP BY k EMIT CHANGES", {}),
        ("SELECT k, count(*) FROM src GROUP BY k WINDOW TUMBLING(ts, 1m) EMIT FINAL", {}),
        ("SELECT k, v FROM src", {}),
        ("SELECT k, count(*) FROM src GROUP BY k EMIT FINAL", {"scan_pushdown": False}),
        ("SELECT k, count(*) FROM src GROUP BY k EMIT FINAL", {"src.max_records": "2"}),
        (
            "SELECT k, count(*) FROM src GROUP BY k EMIT FINAL",
            {"src.schema": "k VARCHAR, v BIGINT, ts TIMESTAMP"},
        ),
    ],
)
def test_no_pushdown_where_it_could_change_the_result(tmp_path, query, options):
    path = tmp_path / "in.csv"
    path.write_text("k,v,ts\na,1,2024-01-01 00:00:00\nb,2,2024-01-01 00:00:01\na,3,2024-01-01 00:00:02\n")
    engine = velosql.connect()
    try:
        job = engine.execute(f"CREATE STREAM o AS {query} {with_file(path, **options)}")
        assert job.executor.scan is None
        job.wait(60)
        assert job.status == "Finished"
    finally:
        engine.close()


@matrix
def test_fail_batch_names_the_file_and_line_of_the_bad_record(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("k,v\na,1\nb,oops\n")
    engine = velosql.connect()
    try:
        options = {"src.schema": "k VARCHAR, v DOUBLE", "failure_strategy": "FailBatch"}
        job = engine.execute(
            f"CREATE STREAM o AS SELECT k, sum(v) FROM src GROUP BY k EMIT FINAL {with_file(path, **options)}"
        )
        assert job.executor.scan is not None
        with pytest.raises(DataError, match=f"{path}:3"):
            job.wait(60)
    finally:
        engine.close()


@matrix
def test_explain_says_when_the_scan_is_pushed_down(tmp_path, processor_matrix):
    path = tmp_path / "in.csv"
    path.write_text("k,v\na,1\n")
    engine = velosql.connect()
    try:
        sql = f"CREATE STREAM o AS SELECT k, sum(v) FROM src GROUP BY k EMIT FINAL {with_file(path)}"
        text = engine.explain(sql)
        job = engine.execute(sql)
        job.wait(60)
    finally:
        engine.close()
    assert "scan pushdown" in text
    if processor_matrix[0].startswith("v2"):
        # A pushed-down scan runs without workers: EXPLAIN says so before the job, beside what
        # runs otherwise (which one is known once the files are open).
        routing = next(line for line in text.splitlines() if line.strip().startswith("routing:"))
        assert "when the scan pushdown applies (see scan:), no worker process starts" in routing
        assert job.executor.scan is None or job.executor.pool is None


@matrix
def test_the_scan_estimates_the_rows_it_will_read_for_progress(tmp_path):
    lines = [f"s{i % 7};{i % 50}.5" for i in range(20_000)]
    (tmp_path / "a.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "b.csv").write_text("\n".join(lines[:5_000]) + "\n")
    engine = velosql.connect()
    try:
        job = engine.execute(
            "CREATE STREAM o AS SELECT column0, count(*) FROM src GROUP BY column0 EMIT FINAL "
            + with_file(f"{tmp_path}/*.csv", **{"src.delimiter": ";", "src.format": "csv_no_header"})
        )
        estimate = job.executor.scan.estimated_rows
        job.wait(60)
        assert job.metrics()["records_in"] == 25_000
    finally:
        engine.close()
    assert 0.9 * 25_000 < estimate < 1.1 * 25_000


@matrix
def test_a_stopped_scan_ends_the_job_stopped_with_nothing_emitted(tmp_path):
    """A stop interrupts the scan (or comes before it): no partial result, no dead letters of it."""
    path = tmp_path / "in.csv"
    path.write_text("k,v\na,1\nb,oops\n")
    engine = velosql.connect()
    try:
        job = engine.execute(
            "CREATE TABLE o AS SELECT k, sum(v) FROM src GROUP BY k EMIT FINAL "
            + with_file(path, **{"src.schema": "k VARCHAR, v DOUBLE"})
        )
        scan = job.executor.scan
        job.stop()
        assert job.status in ("Stopped", "Finished")  # the scan may have ended before the stop came
        stop = __import__("threading").Event()
        stop.set()
        assert scan.run(stop) is None
        # All or nothing: the whole result with its dead letter, or neither.
        (rows,) = engine.sql("SELECT count(*) FROM o").fetchall()[0]
        (dead,) = engine.sql("SELECT count(*) FROM o__dlq").fetchall()[0]
        assert (rows, dead) in ((0, 0), (1, 1))
    finally:
        engine.close()
