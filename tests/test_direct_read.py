"""V2's direct read: with ``sticky``, each worker reads its own pieces of a bounded file source
(files, or runs of row groups of one Parquet file) and the job merges what they send back.

Differential: whatever the pieces and the worker count, the result is what DuckDB's batch SQL
gives over the same rows, and a projection's rows come in the files' order.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from conftest import LONG, examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import velosql
from velosql.runtime import v2

EXAMPLES = 8
START = dt.datetime(2024, 1, 1)
QUERIES = {
    "project": (
        "SELECT k, v, ts FROM src WHERE v % 3 <> 0",
        "SELECT k, v, ts FROM t WHERE v % 3 <> 0 ORDER BY seq",
    ),
    "group": (
        # first(v): the first in arrival order, which a cut file's runs must keep (by __seq).
        "SELECT k, count(*) AS n, sum(v) AS total, min(ts) AS lo, first(v) AS f FROM src GROUP BY k EMIT FINAL",
        "SELECT k, count(*), sum(v), min(ts), first(v ORDER BY seq) FROM t GROUP BY k",
    ),
    "tumble": (
        "SELECT k, _window_start AS ws, count(*) AS n, max(v) AS top FROM src GROUP BY k "
        "WINDOW TUMBLING(ts, 10s) EMIT FINAL",
        "SELECT k, time_bucket(INTERVAL '10 seconds', ts) AS ws, count(*), max(v) FROM t GROUP BY ALL",
    ),
}


@st.composite
def streams(draw) -> pa.Table:
    """Rows in event-time order up to a jitter of a few seconds, keys from a small set."""
    n = draw(st.integers(1, 400))
    keys = draw(st.lists(st.sampled_from(["a", "b", "c", "d", "é"]), min_size=n, max_size=n))
    jitter = draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n))
    return pa.table(
        {
            "k": keys,
            "v": pa.array([(i * 7919) % 1000 - 300 for i in range(n)], pa.int64()),
            "ts": pa.array(
                [START + dt.timedelta(seconds=i // 4 + j) for i, j in zip(range(n), jitter)],
                pa.timestamp("us"),
            ),
        }
    )


def write(table: pa.Table, folder, layout: str, pieces: int) -> str:
    """The rows as files under ``folder``; returns the source path. The files' order is the rows'."""
    if layout == "one parquet":
        pq.write_table(table, folder / "one.parquet", row_group_size=max(1, -(-table.num_rows // pieces)))
        return str(folder / "one.parquet")
    size = -(-table.num_rows // pieces)
    for i in range(pieces):
        part = table.slice(i * size, size)
        if layout == "parquet files":
            pq.write_table(part, folder / f"part{i}.parquet")
        else:
            pcsv.write_csv(part, folder / f"part{i}.csv")
    return str(folder / ("*.parquet" if layout == "parquet files" else "*.csv"))


def velosql_rows(
    path: str, query: str, processor: str, layout: str, reader: str = "duckdb", strategy: str = "sticky"
) -> tuple[list[tuple], dict]:
    options = [
        "'src.type' = 'file_source'",
        f"'src.path' = '{path}'",
        "'o.type' = 'python'",
        f"processor = '{processor}'",
        f"partitioning_strategy = '{strategy}'",
        "scan_pushdown = false",
        f"parquet_reader = '{reader}'",
        "'watermark.max_out_of_orderness' = '1h'",  # no row is late: the batch result applies
    ]
    if layout == "csv files":
        options.append("'src.schema' = 'k VARCHAR, v BIGINT, ts TIMESTAMP'")
    engine = velosql.connect()
    try:
        job = engine.execute(f"CREATE STREAM o AS {query} WITH ({', '.join(options)})")
        job.wait(60)
        return engine.pull("o").to_pylist(), job.metrics()
    finally:
        engine.close()


@pytest.mark.parametrize("processor", ["v2:2", "v2:3"])
@pytest.mark.parametrize("layout", ["one parquet", "parquet files", "csv files"])
@settings(
    max_examples=examples(EXAMPLES),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    table=streams(),
    pieces=st.integers(1, 7),
    shape=st.sampled_from(sorted(QUERIES)),
    reader=st.sampled_from(["duckdb", "pyarrow"]),
    # hash: the workers read alike, and the partial rows go to the workers owning their groups.
    strategy=st.sampled_from(["sticky", "hash"]),
)
def test_direct_read_gives_the_batch_result(
    tmp_path_factory, processor, layout, table, pieces, shape, reader, strategy
):
    folder = tmp_path_factory.mktemp("src")
    path = write(table, folder, layout, pieces)
    query, batch_sql = QUERIES[shape]
    got, metrics = velosql_rows(path, query, processor, layout, reader, strategy)
    # DuckDB's reader reads Parquet (a timestamp event time included); pyarrow reads CSV.
    duckdb_reads = reader == "duckdb" and layout != "csv files"
    readers = {p["reader"] for p in metrics["partitions"] if p["records_in"]} - {None}  # None: routed
    assert readers in (set(), {"duckdb" if duckdb_reads else "pyarrow"})
    con = duckdb.connect()
    con.register("t", table.append_column("seq", pa.array(range(table.num_rows), pa.int64())))
    want = con.execute(batch_sql).fetchall()
    rows = [tuple(r.values()) for r in got]
    assert sorted(rows) == sorted(want)
    if shape == "project":
        # Each file's rows in its order (v is unique: it names the row); one file wholly in order.
        seq = {v: i for i, v in enumerate(table["v"].to_pylist())}
        size = -(-table.num_rows // pieces) if layout != "one parquet" else table.num_rows
        for file in range(pieces):
            order = [seq[r[1]] for r in rows if seq[r[1]] // size == file]
            assert order == sorted(order)
    assert metrics["records_in"] == table.num_rows
    assert metrics["late_rows"] == 0


def test_one_parquet_file_is_read_by_every_worker(tmp_path):
    """Row groups of one file are cut into runs, one per worker: both read, neither reads twice."""
    table = pa.table({"k": ["x", "y"] * 5000, "v": pa.array(range(10_000), pa.int64())})
    pq.write_table(table, tmp_path / "one.parquet", row_group_size=1000)
    engine = velosql.connect()
    try:
        sql = (
            "CREATE STREAM o AS SELECT k, sum(v) AS s FROM src GROUP BY k EMIT FINAL "
            f"WITH ('src.type' = 'file_source', 'src.path' = '{tmp_path / 'one.parquet'}', "
            "'o.type' = 'python', processor = 'v2:2', partitioning_strategy = 'sticky', scan_pushdown = false)"
        )
        job = engine.execute(sql)
        job.wait(60)
        assert sorted(engine.pull("o").to_pylist(), key=lambda r: r["k"]) == [
            {"k": "x", "s": sum(range(0, 10_000, 2))},
            {"k": "y", "s": sum(range(1, 10_000, 2))},
        ]
        assert [p["records_in"] for p in job.metrics()["partitions"]] == [5000, 5000]
        text = engine.execute(f"EXPLAIN ANALYZE {sql}")
        assert "each worker reads its own pieces of the source (2 files, runs" in text
        # Before the job opens the source the pieces are unknown, but not that workers read them.
        assert "is read by the workers themselves" in engine.execute(f"EXPLAIN {sql}")
    finally:
        engine.close()


@st.composite
def overlapping_files(draw) -> list[pa.Table]:
    """2-4 files, each in event-time order, over time ranges that overlap in any order."""
    files = []
    for f in range(draw(st.integers(2, 4))):
        start = draw(st.integers(0, 120))
        steps = draw(st.lists(st.integers(0, 5), min_size=1, max_size=60))
        seconds = [start + sum(steps[: i + 1]) for i in range(len(steps))]
        files.append(
            pa.table(
                {
                    "k": [f"k{(f + i) % 3}" for i in range(len(seconds))],
                    "v": pa.array([f * 1000 + i for i in range(len(seconds))], pa.int64()),
                    "ts": pa.array([START + dt.timedelta(seconds=s) for s in seconds], pa.timestamp("us")),
                }
            )
        )
    return files


@pytest.mark.parametrize(("processor", "strategy"), [("v1", "hash"), ("v2:2", "sticky"), ("v2:2", "hash")])
@settings(
    max_examples=examples(EXAMPLES),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(files=overlapping_files())
def test_files_whose_event_times_overlap_are_not_late_against_each_other(
    tmp_path_factory, processor, strategy, files
):
    """Files are read one after another (V1, and each V2 worker): the watermark waits for every
    file's first row, so with no lateness at all no row is late and the result is the batch one."""
    folder = tmp_path_factory.mktemp("src")
    for i, table in enumerate(files):
        pcsv.write_csv(table, folder / f"part{i}.csv")
    engine = velosql.connect()
    try:
        job = engine.execute(
            "CREATE STREAM o AS SELECT k, _window_start AS ws, count(*) AS n, sum(v) AS total FROM src "
            "GROUP BY k WINDOW TUMBLING(ts, 10s) EMIT FINAL WITH ('src.type' = 'file_source', "
            f"'src.path' = '{folder}/*.csv', 'src.schema' = 'k VARCHAR, v BIGINT, ts TIMESTAMP', "
            f"'o.type' = 'python', processor = '{processor}', partitioning_strategy = '{strategy}', "
            "scan_pushdown = false, 'watermark.max_out_of_orderness' = '0s')"
        )
        job.wait(60)
        got = sorted(tuple(r.values()) for r in engine.pull("o").to_pylist())
        metrics = job.metrics()
    finally:
        engine.close()
    con = duckdb.connect()
    con.register("t", pa.concat_tables(files))
    want = con.execute(
        "SELECT k, time_bucket(INTERVAL '10 seconds', ts) AS ws, count(*), sum(v) FROM t GROUP BY ALL"
    ).fetchall()
    assert metrics["late_rows"] == 0
    assert got == sorted(want)


def typed_table(n: int) -> pa.Table:
    """One column of each kind of Parquet type, a NULL in every fifth row."""

    def col(values, typ):
        return pa.array([None if i % 5 == 4 else v for i, v in enumerate(values)], typ)

    rows = range(n)
    return pa.table(
        {
            "i8": col([i % 100 - 50 for i in rows], pa.int8()),
            "i32": col([i * 3 for i in rows], pa.int32()),
            "i64": col([i * 10**12 for i in rows], pa.int64()),
            "u16": col([i for i in rows], pa.uint16()),
            "f32": col([i / 7 for i in rows], pa.float32()),
            "f64": col([i / 3 for i in rows], pa.float64()),
            "dec": col([f"{i}.25" for i in rows], pa.string()).cast(pa.decimal128(12, 2)),
            "flag": col([i % 2 == 0 for i in rows], pa.bool_()),
            "text": col([f"é{i % 7}" for i in rows], pa.string()),
            "blob": col([bytes([i % 256]) for i in rows], pa.binary()),
            "ts_ms": col([START + dt.timedelta(milliseconds=i) for i in rows], pa.timestamp("ms")),
            "ts_utc": col(
                [dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=i) for i in rows],
                pa.timestamp("us", "UTC"),
            ),
            "day": col([dt.date(2024, 1, 1) + dt.timedelta(days=i % 40) for i in rows], pa.date32()),
            "nums": col([[i, i + 1] for i in rows], pa.list_(pa.int64())),
        }
    )


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM src",
        "SELECT text, count(*) AS n, sum(dec) AS s, max(ts_ms) AS m, min(ts_utc) AS lo, "
        "max(nums) AS l, min(blob) AS b, max(f32) AS a FROM src GROUP BY text EMIT FINAL",
    ],
)
def test_duckdb_reader_gives_what_pyarrow_gives(tmp_path, query):
    """Types, values and NULLs arrive as the pyarrow reader delivers them, column for column."""
    table = typed_table(3000)
    for i in range(3):
        pq.write_table(table.slice(i * 1000, 1000), tmp_path / f"part{i}.parquet", row_group_size=300)
    path = str(tmp_path / "*.parquet")
    got = {}
    for reader in ("duckdb", "pyarrow"):
        rows, metrics = velosql_rows(path, query, "v2:2", "parquet files", reader)
        assert {p["reader"] for p in metrics["partitions"]} == {reader}
        got[reader] = rows
    key = repr if query.startswith("SELECT *") else (lambda r: r["text"] or "")
    assert sorted(got["duckdb"], key=key) == sorted(got["pyarrow"], key=key)
    assert len(got["duckdb"]) == (3000 if query.startswith("SELECT *") else 8)


def test_a_parquet_file_whose_types_differ_is_read_by_pyarrow(tmp_path):
    """A file whose column type is not the source's own goes through pyarrow's conversion."""
    pq.write_table(pa.table({"k": ["a", "b"], "v": pa.array([1, 2], pa.int32())}), tmp_path / "p0.parquet")
    pq.write_table(pa.table({"k": ["a", "c"], "v": pa.array([3, 4], pa.int64())}), tmp_path / "p1.parquet")
    engine = velosql.connect()
    try:
        job = engine.execute(
            "CREATE STREAM o AS SELECT k, sum(v) AS s FROM src GROUP BY k EMIT FINAL WITH ("
            f"'src.type' = 'file_source', 'src.path' = '{tmp_path}/*.parquet', 'src.schema' = 'k VARCHAR, v BIGINT', "
            "'o.type' = 'python', processor = 'v2:2', partitioning_strategy = 'sticky', scan_pushdown = false)"
        )
        job.wait(60)
        assert sorted(tuple(r.values()) for r in engine.pull("o").to_pylist()) == [
            ("a", 4),
            ("b", 2),
            ("c", 4),
        ]
        readers = {p["partition"]: p["reader"] for p in job.metrics()["partitions"]}
        assert readers == {0: "pyarrow", 1: "duckdb"}
    finally:
        engine.close()


TIME_TYPES = {
    "timestamp[ms]": (pa.timestamp("ms"), "duckdb"),
    "timestamp[s]": (pa.timestamp("s"), "duckdb"),
    "timestamp[us, UTC]": (pa.timestamp("us", "UTC"), "duckdb"),
    "date32": (pa.date32(), "duckdb"),
    "timestamp[ns]": (pa.timestamp("ns"), "pyarrow"),  # event time read by pyarrow: its rules
}


@st.composite
def disordered(draw) -> tuple[list[int], list[bool]]:
    """100-300 rows: seconds out of order by up to a minute (some rows late for a 5 s
    lateness) and now and then a day behind; some event times NULL."""
    n = 100 * draw(st.integers(1, 3))
    jitter = draw(st.lists(st.integers(-70, 5), min_size=n, max_size=n))
    nulls = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    seconds = [i * 30 + (j if j > -65 else -86_400) for i, j in enumerate(jitter)]
    return seconds, [b and i % 9 == 0 for i, b in enumerate(nulls)]


@pytest.mark.parametrize("kind", sorted(TIME_TYPES))
@settings(
    # Five kinds, each example V2 reading files: three examples a kind in the fast profile.
    max_examples=EXAMPLES if LONG else 3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    files=st.lists(disordered(), min_size=2, max_size=3),
    size=st.sampled_from(["1m", "1h", "1d"]),
    statistics=st.booleans(),
)
def test_duckdb_reader_judges_event_time_as_pyarrow_does(tmp_path_factory, kind, files, size, statistics):
    """Windows, late rows and NULL event times: the same from both readers, whatever the type of
    the time column (DuckDB's reader computes event time in SQL only where it is exactly
    pyarrow's; elsewhere pyarrow reads).

    One worker reads every file (v2:1 direct read), in reads of 100 rows that both readers cut
    alike: each read is judged against the same watermark, so the same rows are late. With
    ``statistics`` the DuckDB path takes each read's earliest and latest event time and NULL
    count from the row groups' statistics; without, it computes them."""
    typ, expected = TIME_TYPES[kind]
    folder = tmp_path_factory.mktemp("src")
    tz = dt.timezone.utc if typ == pa.timestamp("us", "UTC") else None
    nulls = 0
    for f, (seconds, null) in enumerate(files):
        base = dt.datetime(2024, 1, 1, tzinfo=tz) + dt.timedelta(minutes=f)
        times = [None if x else base + dt.timedelta(seconds=s) for s, x in zip(seconds, null)]
        if typ == pa.date32():
            times = [None if t is None else t.date() for t in times]
        nulls += sum(null)
        table = pa.table(
            {
                "k": [f"k{i % 3}" for i in range(len(times))],
                "v": pa.array([f * 1000 + i for i in range(len(times))], pa.int64()),
                # Nested: two Parquet leaf columns, so ts is not the file's third column chunk
                # (and the one at ts's place holds timestamps too, ten days off).
                "pair": pa.array(
                    [{"a": i, "b": START + dt.timedelta(days=10, seconds=i)} for i in range(len(times))],
                    pa.struct([("a", pa.int64()), ("b", pa.timestamp("ms"))]),
                ),
                "ts": pa.array(times, typ),
            }
        )
        pq.write_table(table, folder / f"p{f}.parquet", row_group_size=50, write_statistics=statistics)
    got = {}
    for reader in ("duckdb", "pyarrow"):
        engine = velosql.connect()
        try:
            job = engine.execute(
                "CREATE STREAM o AS SELECT k, _window_start AS ws, count(*) AS n, sum(v) AS total FROM src "
                f"GROUP BY k WINDOW TUMBLING(ts, {size}) EMIT FINAL WITH ('src.type' = 'file_source', "
                f"'src.path' = '{folder}/*.parquet', 'src.batch_size' = 100, 'o.type' = 'python', "
                f"processor = 'v2:1', partitioning_strategy = 'sticky', parquet_reader = '{reader}', "
                # Reads of 100 rows both ways: pyarrow's source batches, DuckDB's runs of two row
                # groups (runs of partials hold PARTIAL_RUN_BATCHES x max_batch_size rows, cut
                # after the row group that reaches them: 96 rows end with the second).
                "'watermark.max_out_of_orderness' = '5s', "
                f"max_batch_size = {100 // v2.PARTIAL_RUN_BATCHES})"
            )
            job.wait(60)
            readers = {p["reader"] for p in job.metrics()["partitions"]}
            assert readers == {expected if reader == "duckdb" else "pyarrow"}
            got[reader] = (
                sorted(tuple(r.values()) for r in engine.pull("o").to_pylist()),
                engine.sql(
                    "SELECT k, v, ts::VARCHAR, _event_time, _watermark FROM o__late ORDER BY v"
                ).fetchall(),
                engine.sql("SELECT location, error FROM o__dlq ORDER BY location").fetchall(),
            )
        finally:
            engine.close()
    assert got["duckdb"] == got["pyarrow"]
    assert len(got["duckdb"][2]) == nulls


def _declared_job(tmp_path, group_by: str, key: str, strategy: str | None = None, split: str = "k"):
    """A V2:2 job over 4 Parquet files split by ``split % 4`` (by default each value of ``k`` in one file)
    declaring ``'src.partition_key' = key``: its rows, metrics and EXPLAIN ANALYZE text."""
    table = pa.table({"k": pa.array([i % 8 for i in range(4000)], pa.int64()), "v": pa.array(range(4000))})
    for f in range(4):
        pq.write_table(
            table.filter(pa.compute.equal(pa.compute.bit_wise_and(table[split], 3), f)),
            tmp_path / f"p{f}.parquet",
        )
    opts = [
        "'src.type' = 'file_source'",
        f"'src.path' = '{tmp_path}'",
        f"'src.partition_key' = '{key}'",
        "'o.type' = 'python'",
        "processor = 'v2:2'",
        "scan_pushdown = false",
    ]
    if strategy:
        opts.append(f"partitioning_strategy = '{strategy}'")
    sql = f"CREATE STREAM o AS SELECT {group_by} AS g, count(*) AS n, sum(v) AS s FROM src GROUP BY {group_by} EMIT FINAL WITH ({', '.join(opts)})"
    engine = velosql.connect()
    try:
        job = engine.execute(sql)
        job.wait(60)
        rows = sorted(tuple(r.values()) for r in engine.pull("o").to_pylist())
        return rows, job.metrics(), engine.execute(f"EXPLAIN ANALYZE {sql}"), table
    finally:
        engine.close()


@pytest.mark.parametrize("strategy", [None, "smart"])
def test_a_source_partitioned_by_the_group_key_is_read_by_the_workers(tmp_path, strategy):
    rows, metrics, text, data = _declared_job(tmp_path, "k", "K", strategy)
    assert "sticky, as the source is partitioned by K (partition_key)" in text
    assert {p["reader"] for p in metrics["partitions"]} == {"duckdb"}  # no router: direct reads
    want = duckdb.sql("SELECT k, count(*), sum(v) FROM data GROUP BY k").fetchall()
    assert rows == sorted(want)


def test_a_partition_key_outside_the_group_key_keeps_hash_routing(tmp_path):
    """Hash routing of partial aggregates: each worker reads its own files, and the partial rows
    go by key hash to the workers that combine them."""
    rows, metrics, text, data = _declared_job(tmp_path, "v % 5", "k")
    assert "hash of the GROUP BY key (v % 5)" in text and "combined in the workers" in text
    assert {p["reader"] for p in metrics["partitions"]} == {"duckdb"}  # no row passes the job
    want = duckdb.sql("SELECT v % 5, count(*), sum(v) FROM data GROUP BY 1").fetchall()
    assert rows == sorted(want)


def test_a_wrong_partition_key_costs_speed_not_results(tmp_path):
    """Every file holds every ``k``, though the source says it is partitioned by ``k``: workers
    still compute partial aggregates, which the job merges, so each group comes out whole."""
    rows, metrics, text, data = _declared_job(tmp_path, "k", "k", split="v")
    assert "sticky, as the source is partitioned by k (partition_key)" in text
    want = duckdb.sql("SELECT k, count(*), sum(v) FROM data GROUP BY k").fetchall()
    assert rows == sorted(want)


def test_a_partition_key_names_a_column_of_the_source(tmp_path):
    pq.write_table(pa.table({"k": [1]}), tmp_path / "p.parquet")
    engine = velosql.connect()
    try:
        with pytest.raises(velosql.OptionError, match=r"'src.partition_key': 'nope' is not a column"):
            engine.execute(
                "CREATE STREAM o AS SELECT k, count(*) FROM src GROUP BY k WITH ('src.type' = "
                f"'file_source', 'src.path' = '{tmp_path}', 'src.partition_key' = 'k, nope', 'o.type' = 'python')"
            ).wait(60)
    finally:
        engine.close()


@st.composite
def text_lines(draw) -> tuple[list[str | None], list[int]]:
    """100-400 records in roughly event-time order, some a day behind (late for a 5 s lateness);
    each is a good line (``None`` marks a NULL event time) or, now and then, a bad one; between
    them, sometimes an empty line."""
    n = draw(st.integers(100, 400))
    kinds = draw(st.lists(st.sampled_from(["ok"] * 12 + ["null", "bad", "blank"]), min_size=n, max_size=n))
    behind = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    seconds = [i * 2 - (86_400 if b and i % 7 == 0 else 0) for i, b in enumerate(behind)]
    return kinds, seconds


def _text_file(path, fmt: str, kinds: list[str], seconds: list[int], crlf: bool) -> None:
    nl = "\r\n" if crlf else "\n"
    out = ["k,v,ts"] if fmt == "csv" else []
    for i, (kind, s) in enumerate(zip(kinds, seconds)):
        ts = (START + dt.timedelta(seconds=s)).isoformat(sep=" ")
        if kind == "blank":
            out.append("")
            continue
        if fmt == "csv":
            out.append(
                {"ok": f"k{i % 3},{i},{ts}", "null": f"k{i % 3},{i},", "bad": f"k{i % 3},x{i},{ts}"}[kind]
            )
        else:
            value = {"ok": f'"{ts}"', "null": "null", "bad": f'"{ts}"'}[kind]
            v = f'"x{i}"' if kind == "bad" else str(i)
            out.append(f'{{"k": "k{i % 3}", "v": {v}, "ts": {value}}}')
    path.write_bytes((nl.join(out) + nl).encode())


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@settings(
    max_examples=examples(EXAMPLES),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    lines=text_lines(),
    crlf=st.booleans(),
    processor=st.sampled_from(["v2:2", "v2:3"]),
    strategy=st.sampled_from(["sticky", "hash"]),
)
def test_byte_ranges_of_one_text_file_number_records_as_v1(
    tmp_path_factory, monkeypatch, fmt, lines, crlf, processor, strategy
):
    """One CSV or JSON-lines file is cut into byte ranges the workers read at once. Whatever the
    empty lines, bad lines and NULL event times before a range, its late rows and dead letters
    name each record as V1 does (file line, partition and offset), the windows hold every row
    that was not late, and ``first(v)`` sees the file's order. With hash routing the windows
    close in the workers that own their keys, while reads are still in flight."""
    from velosql.connectors import files_source

    monkeypatch.setattr(files_source, "MIN_RANGE", 256)  # cut even a small file
    kinds, seconds = lines
    path = tmp_path_factory.mktemp("src") / f"one.{fmt}"
    _text_file(path, fmt, kinds, seconds, crlf)
    query = (
        "SELECT k, _window_start AS ws, count(*) AS n, sum(v) AS total, first(v) AS f FROM src "
        "GROUP BY k WINDOW TUMBLING(ts, 1m) EMIT FINAL"
    )
    opts = (
        f"'src.type' = 'file_source', 'src.path' = '{path}', 'src.schema' = 'k VARCHAR, v BIGINT, ts TIMESTAMP', "
        "'src.batch_size' = 20, 'o.type' = 'python', max_batch_size = 20, scan_pushdown = false"
    )
    engine = velosql.connect()
    try:
        # V1's numbering of every record, read whole: the oracle for offsets and dead letters.
        job = engine.execute(
            f"CREATE STREAM numbered AS SELECT v, _offset FROM src WITH ({opts.replace('o.type', 'numbered.type')}, processor = 'v1')"
        )
        job.wait(60)
        offsets = {r["v"]: r["_offset"] for r in engine.pull("numbered").to_pylist()}
        v1_dead = sorted(engine.sql("SELECT location, error FROM numbered__dlq").fetchall())
        sql = f"CREATE STREAM o AS {query} WITH ({opts}, processor = '{processor}', partitioning_strategy = '{strategy}', 'watermark.max_out_of_orderness' = '5s')"
        job = engine.execute(sql)
        job.wait(60)
        assert "byte ranges of text files" in engine.execute(f"EXPLAIN ANALYZE {sql}")
        assert all(p["records_in"] for p in job.metrics()["partitions"])  # every worker read
        late = engine.sql("SELECT v, _partition, _offset FROM o__late").fetchall()
        assert all(part == 0 and off == offsets[v] for v, part, off in late)
        dead = sorted(engine.sql("SELECT location, error FROM o__dlq").fetchall())
        # NULL event times name partition and offset; bad lines name the file's line: as V1's
        # projection, which rejected the bad lines (a projection has no event time to be NULL).
        want_nulls = sorted(
            f"src partition 0 offset {k}"
            for k, kind in enumerate(k2 for k2 in kinds if k2 != "blank")
            if kind == "null"
        )
        assert sorted(loc for loc, err in dead if "is NULL" in err) == want_nulls
        assert sorted((loc, err) for loc, err in dead if "is NULL" not in err) == v1_dead
        rows = engine.pull("o").to_pylist()
        good = {v for v, kind in zip(range(len(kinds)), kinds) if kind == "ok"}
        assert sum(r["n"] for r in rows) + len(late) == len(good)
        late_v = {v for v, _, _ in late}
        con = duckdb.connect()
        con.execute("CREATE TABLE t (k VARCHAR, v BIGINT, ts TIMESTAMP, seq BIGINT)")
        con.executemany(
            "INSERT INTO t VALUES (?, ?, ?, ?)",
            [
                (f"k{i % 3}", i, START + dt.timedelta(seconds=seconds[i]), offsets[i])
                for i in sorted(good - late_v)
            ],
        )
        want = con.execute(
            "SELECT k, time_bucket(INTERVAL '1 minute', ts), count(*), sum(v), first(v ORDER BY seq) FROM t GROUP BY ALL"
        ).fetchall()
        assert sorted(tuple(r.values()) for r in rows) == sorted(want)
    finally:
        engine.close()


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@settings(
    max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lines=text_lines(), crlf=st.booleans(), cuts=st.integers(2, 6))
def test_every_byte_range_numbers_each_record_as_the_whole_file_does(
    tmp_path_factory, monkeypatch, fmt, lines, crlf, cuts
):
    """Read in process, without workers: each record of each range, its ``_offset`` made exact
    (:meth:`FileSource.exact_offsets`), and each bad line's ``path:line`` are what one reader of
    the whole file gives, whatever empty lines, bad lines and CRs come before the range."""
    import threading

    from velosql.connectors import files_source
    from velosql.connectors.base import SourceContext

    monkeypatch.setattr(files_source, "MIN_RANGE", 64)
    kinds, seconds = lines
    path = tmp_path_factory.mktemp("src") / f"one.{fmt}"
    _text_file(path, fmt, kinds, seconds, crlf)
    options = {"path": str(path), "schema": "k VARCHAR, v BIGINT, ts TIMESTAMP", "batch_size": 7}

    def read(source) -> tuple[dict, list]:
        offsets = {}
        for item in source.read():
            if isinstance(item, pa.RecordBatch):
                exact = source.exact_offsets(item.column("_partition"), item.column("_offset"))
                offsets.update(zip(item.column("v").to_pylist(), exact.to_pylist()))
        return offsets

    whole_bad: list = []
    whole = files_source.FileSource("src", options)
    whole.open(SourceContext(stop=threading.Event(), reject_fn=lambda loc, err, raw: whole_bad.append(loc)))
    want = read(whole)
    pieces = whole.splits(cuts, True, True)
    assert len(pieces) >= 2 and all(p[4] is not None for p in pieces)
    got, bad = {}, []
    ctx = SourceContext(stop=threading.Event(), reject_fn=lambda loc, err, raw: bad.append(loc))
    for k, piece in enumerate(pieces):
        part = files_source.FileSource.for_partitions(whole.partition_reader([(k, piece)]), ctx)
        got.update(read(part))
    assert got == want
    assert sorted(bad) == sorted(whole_bad)
