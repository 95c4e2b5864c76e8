"""Issue 19, file sources: every decode problem is one dead letter naming its place, and the job
goes on; nothing is silently altered. Real files, real DuckDB, jobs run through ``velosql.connect()``.

Bounded cases run on V1 and on V2 with ``sticky`` routing, whose workers read the file pieces
themselves (runtime/direct.py, direct_parquet.py).
"""

from __future__ import annotations

import logging
import os
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import velosql

PROCESSORS = ["v1", "v2:2"]  # v2:2 with sticky routing: the workers read the files directly


def with_clause(path, processor: str = "v1", sink: dict | None = None, **source) -> str:
    """The WITH clause of a statement reading ``src`` from ``path`` into ``o``."""
    opts = {
        "src.type": "file_source",
        "src.path": str(path),
        **{f"src.{k}": v for k, v in source.items()},
        **{f"o.{k}": v for k, v in (sink or {"type": "duckdb_table"}).items()},
        "processor": processor,
        "scan_pushdown": False,
    }
    if processor.startswith("v2"):
        opts["partitioning_strategy"] = "sticky"
    return "WITH (" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in opts.items()) + ")"


def _key(k: str) -> str:
    return f"'{k}'" if "." in k else k


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "'" + str(v).replace("'", "''") + "'"


ALL = "SELECT *, _partition AS part_, _offset AS off_ FROM src"


def run(path, select: str = ALL, processor: str = "v1", sink=None, **source):
    """(result rows as dicts, dead letters (location, error, raw) sorted by location) of
    ``CREATE STREAM o AS <select>`` over ``path``; rows in the files' order when ``select`` keeps
    ``part_`` and ``off_`` (:data:`ALL`), else as they were written."""
    with velosql.connect() as engine:
        job = engine.execute(f"CREATE STREAM o AS {select} {with_clause(path, processor, sink, **source)}")
        job.wait(120)
        rows = []
        if sink is None:
            ordered = select == ALL
            rel = engine.sql(
                "SELECT * EXCLUDE (part_, off_) FROM o ORDER BY part_, off_"
                if ordered
                else "SELECT * FROM o ORDER BY rowid"
            )
            rows = [dict(zip(rel.columns, r)) for r in rel.fetchall()]
        dead = engine.sql("SELECT location, error, raw FROM o__dlq ORDER BY location").fetchall()
    return rows, dead


def write(path, data: str | bytes) -> None:
    path.write_bytes(data.encode() if isinstance(data, str) else data)


# ---- JSON lines -----------------------------------------------------------------------------------


@pytest.mark.parametrize("processor", PROCESSORS)
def test_invalid_utf8_in_a_json_string_is_one_dead_letter_and_the_other_rows_go_on(tmp_path, processor):
    path = tmp_path / "e.jsonl"
    write(path, b'{"k": "a", "v": 1}\n{"k": "b\xff", "v": 2}\n{"k": "c", "v": 3}\n')
    rows, dead = run(path, processor=processor)
    assert rows == [{"k": "a", "v": 1}, {"k": "c", "v": 3}]
    assert [(loc, "UTF-8" in err) for loc, err, _ in dead] == [(f"{path}:2", True)]


def test_invalid_utf8_in_a_json_string_never_reaches_a_file_sink(tmp_path):
    path, out = tmp_path / "e.jsonl", tmp_path / "out.jsonl"
    write(path, b'{"k": "a"}\n{"k": "\xc3("}\n{"k": "c"}\n')
    _, dead = run(path, "SELECT k FROM src", sink={"type": "file_sink", "path": str(out)})
    assert out.read_bytes().decode("utf-8").splitlines() == ['{"k":"a"}', '{"k":"c"}']
    assert [loc for loc, _, _ in dead] == [f"{path}:2"]


@pytest.mark.parametrize("processor", PROCESSORS)
def test_a_json_line_that_is_not_an_object_is_a_dead_letter(tmp_path, processor):
    path = tmp_path / "e.jsonl"
    write(path, '{"k": "a", "v": 1}\nnull\n{"k": "b", "v": 2}\n  null\n7\n"x"\n[1]\ntrue\n{}\n')
    rows, dead = run(path, processor=processor)
    assert rows == [{"k": "a", "v": 1}, {"k": "b", "v": 2}, {"k": None, "v": None}]
    assert [loc for loc, _, _ in dead] == [f"{path}:{n}" for n in (2, 4, 5, 6, 7, 8)]
    assert all("not a JSON object" in err for _, err, _ in dead)
    assert [raw for _, _, raw in dead] == ["null", "  null", "7", '"x"', "[1]", "true"]


def test_a_block_of_null_lines_is_dead_letters_not_a_crash(tmp_path):
    """pyarrow's JSON reader crashes the process on input holding only ``null`` lines."""
    path = tmp_path / "e.jsonl"
    write(path, '{"v": 1}\n' + "null\n" * 3)
    rows, dead = run(path, schema="v BIGINT")
    assert rows == [{"v": 1}]
    assert [loc for loc, _, _ in dead] == [f"{path}:{n}" for n in (2, 3, 4)]


# ---- Parquet --------------------------------------------------------------------------------------


def corrupt_row_group(path, group: int, column: int = 1) -> None:
    """Overwrite the middle of a column chunk's data page of row group ``group`` with garbage."""
    chunk = pq.ParquetFile(path).metadata.row_group(group).column(column)
    data = bytearray(path.read_bytes())
    start = chunk.data_page_offset
    end = (chunk.dictionary_page_offset or start) + chunk.total_compressed_size
    mid = (start + end) // 2
    for i in range(mid - 8, mid + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def numbers(first: int, n: int) -> pa.Table:
    return pa.table(
        {
            "k": [f"k{i % 7}" for i in range(first, first + n)],
            "v": pa.array(range(first, first + n), pa.int64()),
        }
    )


@pytest.mark.parametrize("processor", PROCESSORS)
def test_a_corrupt_parquet_row_group_is_a_dead_letter_and_the_rest_is_read(tmp_path, processor):
    pq.write_table(numbers(0, 300), tmp_path / "a.parquet", row_group_size=100, compression="snappy")
    pq.write_table(numbers(300, 100), tmp_path / "b.parquet")
    corrupt_row_group(tmp_path / "a.parquet", 1)
    rows, dead = run(tmp_path, "SELECT v FROM src", processor=processor)
    assert sorted(r["v"] for r in rows) == [*range(100), *range(200, 400)]
    assert [loc for loc, _, _ in dead] == [f"{tmp_path / 'a.parquet'}, row group 1 (rows 100-199)"]


@pytest.mark.parametrize("processor", PROCESSORS)
def test_a_later_parquet_file_without_a_column_reads_it_as_null(tmp_path, processor, caplog):
    pq.write_table(numbers(0, 3), tmp_path / "a.parquet")
    pq.write_table(numbers(3, 2).drop_columns(["k"]), tmp_path / "b.parquet")
    pq.write_table(numbers(5, 2), tmp_path / "c.parquet")
    with caplog.at_level(logging.WARNING, logger="velosql"):
        rows, dead = run(tmp_path, "SELECT k, v FROM src", processor=processor)
    assert sorted(rows, key=lambda r: r["v"]) == [
        {"k": "k0", "v": 0}, {"k": "k1", "v": 1}, {"k": "k2", "v": 2}, {"k": None, "v": 3},
        {"k": None, "v": 4}, {"k": "k5", "v": 5}, {"k": "k6", "v": 6},
    ]  # fmt: skip
    assert dead == []
    if processor == "v1":  # V2's workers log in their own processes
        assert f"{tmp_path / 'b.parquet'}: no column 'k'" in caplog.text


@pytest.mark.parametrize("processor", PROCESSORS)
def test_a_parquet_column_that_does_not_convert_is_a_dead_letter_naming_the_file(tmp_path, processor):
    pq.write_table(numbers(0, 3), tmp_path / "a.parquet")
    pq.write_table(pa.table({"k": ["x", "y"], "v": ["3", "four"]}), tmp_path / "b.parquet")
    pq.write_table(pa.table({"k": ["z"], "v": [[1, 2]]}), tmp_path / "c.parquet")
    pq.write_table(numbers(5, 2), tmp_path / "d.parquet")
    rows, dead = run(tmp_path, "SELECT k, v FROM src", processor=processor)
    assert sorted(r["v"] for r in rows) == [0, 1, 2, 5, 6]
    assert [loc for loc, _, _ in dead] == [
        f"{tmp_path / 'b.parquet'}, row group 0 (rows 0-1)",
        f"{tmp_path / 'c.parquet'}",
    ]
    assert "column 'v'" in dead[0][1] and "column 'v'" in dead[1][1]


# ---- CSV ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("processor", PROCESSORS)
def test_later_csv_files_are_matched_by_header_name(tmp_path, processor, caplog):
    write(tmp_path / "a.csv", "a,b,c\n1,2,x\n")
    write(tmp_path / "b.csv", "b,a,c\n20,10,y\n")  # the same columns in another order
    write(tmp_path / "c.csv", "c,a\nz,100\n")  # no b: NULL
    write(tmp_path / "d.csv", "a,extra,b,c\n7,ignored,8,w\n")  # an unknown column: reported, left out
    with caplog.at_level(logging.WARNING, logger="velosql"):
        rows, dead = run(tmp_path, processor=processor)
    assert rows == [
        {"a": 1, "b": 2, "c": "x"},
        {"a": 10, "b": 20, "c": "y"},
        {"a": 100, "b": None, "c": "z"},
        {"a": 7, "b": 8, "c": "w"},
    ]
    assert dead == []
    if processor == "v1":
        assert f"{tmp_path / 'c.csv'}: no column 'b'" in caplog.text
        assert f"{tmp_path / 'd.csv'}: column 'extra' is not a column of source 'src'" in caplog.text


def test_byte_ranges_of_a_later_csv_file_are_matched_by_its_header(tmp_path, monkeypatch):
    """V2 workers reading byte ranges of one file each match its columns by its header, which
    only the first range holds."""
    from velosql.connectors import files_source

    monkeypatch.setattr(files_source, "MIN_RANGE", 64)  # cut even a small file
    write(tmp_path / "a.csv", "a,b\n0,0\n")
    write(tmp_path / "b.csv", "b,a\n" + "".join(f"{-i},{i}\n" for i in range(1, 200)))
    with velosql.connect() as engine:
        query = "SELECT a, b, count(*) AS n FROM src GROUP BY a, b EMIT FINAL"  # ranges need no order
        sql = f"CREATE STREAM o AS {query} {with_clause(tmp_path, 'v2:3', sink={'type': 'python'})}"
        job = engine.execute(sql)
        job.wait(120)
        assert "byte ranges of text files" in engine.execute(f"EXPLAIN ANALYZE {sql}")
        rows = engine.pull("o").to_pylist()
    assert sorted((r["a"], r["b"], r["n"]) for r in rows) == [(i, -i, 1) for i in range(200)]


def test_a_declared_schema_names_the_first_files_columns_and_later_files_follow_by_header(tmp_path):
    write(tmp_path / "a.csv", "x,y\n1,2\n")
    write(tmp_path / "b.csv", "y,x\n20,10\n")
    rows, _ = run(tmp_path, schema="first BIGINT, second BIGINT")
    assert rows == [{"first": 1, "second": 2}, {"first": 10, "second": 20}]


@pytest.mark.parametrize("processor", PROCESSORS)
def test_files_matched_by_header_give_the_same_aggregate_with_scan_pushdown(tmp_path, processor):
    write(tmp_path / "a.csv", "k,v\na,1.5\nb,2.5\n")
    write(tmp_path / "b.csv", "v,k\n10.0,a\n")
    query = "SELECT k, sum(v) AS s FROM src GROUP BY k EMIT FINAL"
    with velosql.connect() as engine:
        clause = with_clause(tmp_path, processor).replace("scan_pushdown = false", "scan_pushdown = true")
        engine.execute(f"CREATE TABLE o AS {query} {clause}").wait(120)
        assert sorted(engine.sql("SELECT k, s FROM o").fetchall()) == [("a", 11.5), ("b", 2.5)]


@pytest.mark.parametrize("processor", PROCESSORS)
def test_a_csv_field_of_5_mb_is_read_whole(tmp_path, processor):
    path = tmp_path / "big.csv"
    big = "x" * (5 << 20)
    write(path, f"k,v\na,{big}\nb,short\n")
    rows, dead = run(path, "SELECT k, length(v) AS n FROM src", processor=processor)
    assert rows == [{"k": "a", "n": 5 << 20}, {"k": "b", "n": 5}]
    assert dead == []


# ---- watched files --------------------------------------------------------------------------------


def wait_until(condition, what: str, timeout: float = 30) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()  # never set: a wait between polls
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        tick.wait(0.005)


def watch(engine, path, processor: str = "v1"):
    clause = with_clause(path, processor, watch=True, poll_interval="5ms")
    return engine.execute(f"CREATE STREAM o AS {ALL} {clause}")


@pytest.mark.parametrize("rotation", ["copy-truncate", "replaced", "rewritten past the position"])
def test_a_rotated_watched_file_is_read_from_its_start(tmp_path, rotation, caplog):
    path = tmp_path / "log.csv"
    write(path, "k,v\na,1\nb,2\nc,3\n")
    with caplog.at_level(logging.INFO, logger="velosql"), velosql.connect() as engine:
        job = watch(engine, path)
        wait_until(lambda: job.metrics()["records_in"] == 3, "the first 3 rows")
        if rotation == "copy-truncate":
            with open(path, "r+b") as fh:
                fh.truncate(0)
            with open(path, "ab") as fh:
                fh.write(b"k,v\nd,4\n")
            new = [("d", 4)]
        elif rotation == "replaced":
            write(tmp_path / "next.tmp", "k,v\nd,4\ne,5\nf,6\ng,7\n")
            os.replace(tmp_path / "next.tmp", path)
            new = [("d", 4), ("e", 5), ("f", 6), ("g", 7)]
        else:  # same file, same size or larger, other content: only the bytes read tell
            with open(path, "r+b") as fh:
                fh.write(b"k,v\nd,4\ne,5\nf,6\ng,7\n")
            new = [("d", 4), ("e", 5), ("f", 6), ("g", 7)]
        wait_until(lambda: job.metrics()["records_in"] == 3 + len(new), "the new content")
        job.stop()
        rows = engine.sql("SELECT k, v FROM o ORDER BY off_").fetchall()
        dead = engine.sql("SELECT location FROM o__dlq").fetchall()
    assert rows == [("a", 1), ("b", 2), ("c", 3), *new]
    assert dead == []
    assert f"{path}: the file was" in caplog.text and "reading it from its start" in caplog.text


@pytest.mark.parametrize("processor", PROCESSORS)
def test_an_unterminated_last_line_of_a_watched_file_is_a_dead_letter_at_stop(tmp_path, processor):
    path = tmp_path / "log.jsonl"
    write(path, '{"v": 1}\n{"v": 2}\n{"v": 3')
    with velosql.connect() as engine:
        job = watch(engine, path, processor)
        wait_until(lambda: job.metrics()["records_in"] == 2, "the complete lines")
        job.stop()
        rows = engine.sql("SELECT v FROM o ORDER BY off_").fetchall()
        dead = engine.sql("SELECT location, error, raw FROM o__dlq").fetchall()
    assert rows == [(1,), (2,)]
    assert dead == [
        (f"{path}:3", "the last line has no end of line: the job stopped before it was complete", '{"v": 3')
    ]


@pytest.mark.parametrize("processor", PROCESSORS)
def test_a_corrupt_row_group_under_duckdbs_own_scan_is_a_dead_letter_too(tmp_path, processor):
    """A GROUP BY without a window over bounded files is DuckDB's own scan (scan pushdown), which
    stops at the corrupt row group: the job then reads the files record by record, and the row
    group is one dead letter while the rest is aggregated (it failed the job)."""
    pq.write_table(numbers(0, 300), tmp_path / "a.parquet", row_group_size=100, compression="snappy")
    pq.write_table(numbers(300, 100), tmp_path / "b.parquet")
    corrupt_row_group(tmp_path / "a.parquet", 1)
    where = with_clause(tmp_path, processor).replace("scan_pushdown = false", "scan_pushdown = true")
    assert "scan_pushdown = true" in where
    with velosql.connect() as engine:
        job = engine.execute(
            f"CREATE STREAM o AS SELECT k, count(*) AS n, sum(v) AS s FROM src GROUP BY k EMIT FINAL {where}"
        )
        job.wait(120)
        assert job.error is None, job.error
        got = sorted(engine.sql("SELECT k, n, s FROM o").fetchall())
        dead = engine.sql("SELECT location FROM o__dlq").fetchall()
    kept = [i for i in range(400) if not 100 <= i < 200]
    want = sorted(
        (f"k{m}", len([i for i in kept if i % 7 == m]), sum(i for i in kept if i % 7 == m)) for m in range(7)
    )
    assert got == want
    assert dead == [(f"{tmp_path / 'a.parquet'}, row group 1 (rows 100-199)",)]
