"""File source and sink: real files in tmp_path, every format, bad records, watching."""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import tempfile
import threading
import time
from unittest import mock

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from velosql.connectors import files_source
from velosql.connectors.base import PartitionEnd, SourceContext
from velosql.connectors.files import FileSink, FileSource
from velosql.errors import DataError, OptionError
from velosql.options import OPTIONS

# ---- helpers --------------------------------------------------------------------------------------


# CSV text decodes dictionary-encoded (DuckDB groups on dictionary vectors much faster).
TEXT = pa.dictionary(pa.int32(), pa.string())


def defaults(scope: str, kind: str) -> dict:
    return {o.name: o.default for o in OPTIONS if o.scope == scope and (o.types is None or kind in o.types)}


def source(path, **options) -> FileSource:
    return FileSource("src", {**defaults("source", "file_source"), "path": str(path), **options})


def sink(path, **options) -> FileSink:
    return FileSink("out", {**defaults("sink", "file_sink"), "path": path and str(path), **options})


def collecting_ctx() -> tuple[SourceContext, list[tuple[str, str, str | None]]]:
    rejects: list[tuple[str, str, str | None]] = []
    return SourceContext(reject_fn=lambda loc, err, raw: rejects.append((loc, err, raw))), rejects


def read_all(src: FileSource, ctx: SourceContext | None = None):
    """(all batches as one table, the events in order: ('batch', rows, partition) / ('end', p))."""
    src.open(ctx or SourceContext())
    batches, events = [], []
    try:
        for item in src.read():
            if isinstance(item, PartitionEnd):
                events.append(("end", item.partition))
            elif item is not None:
                assert item.schema == src.schema
                batches.append(item)
                events.append(("batch", item.num_rows, item.column("_partition")[0].as_py()))
    finally:
        src.close()
    return pa.Table.from_batches(batches, schema=src.schema), events


def user_rows(table: pa.Table) -> list[dict]:
    return table.drop_columns(["_partition", "_offset"]).to_pylist()


def write(path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)


def append(path, text: str) -> None:
    with open(path, "ab") as fh:
        fh.write(text.encode())


TS = dt.datetime(2024, 1, 2, 3, 4, 5, 120000)
SAMPLE = pa.table(
    {
        "id": pa.array([1, 2, 3], pa.int64()),
        "name": ["a,b", 'say "hi"', None],
        "price": [1.5, -2.25, None],
        "ok": [True, False, None],
        "ts": pa.array([TS, TS.replace(microsecond=0), None], pa.timestamp("us")),
    }
)


def write_with_sink(path, table: pa.Table, **options) -> None:
    out = sink(path, **options)
    out.open(table.schema)
    out.write(table)
    out.flush()
    out.close()


# ---- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json", "parquet"])
def test_round_trip_keeps_rows_and_types(tmp_path, fmt):
    path = tmp_path / f"out.{'parquet' if fmt == 'parquet' else fmt}"
    write_with_sink(path, SAMPLE, format=fmt)
    table, events = read_all(source(path))
    assert table.schema.names == [*SAMPLE.column_names, "_partition", "_offset"]
    assert user_rows(table) == SAMPLE.to_pylist()
    assert table.schema.field("ts").type == pa.timestamp("us")
    assert table.column("_offset").to_pylist() == [0, 1, 2]
    assert events[-1] == ("end", 0)


def test_csv_sink_writes_plain_header_iso_timestamps_and_quotes(tmp_path):
    path = tmp_path / "a" / "b" / "out.csv"
    write_with_sink(path, SAMPLE)
    assert path.read_text().splitlines() == [
        "id,name,price,ok,ts",
        '1,"a,b",1.5,true,2024-01-02T03:04:05.12',
        '2,"say ""hi""",-2.25,false,2024-01-02T03:04:05',
        "3,,,,",
    ]


def test_csv_sink_delimiter_and_no_header(tmp_path):
    path = tmp_path / "out.csv"
    write_with_sink(
        path, pa.table({"s": ["x;y", "z"], "t": [1.0, 2.5]}), format="csv_no_header", delimiter=";"
    )
    assert path.read_text() == '"x;y";1.0\nz;2.5\n'
    path2 = tmp_path / "out2.txt"
    write_with_sink(path2, pa.table({"s": ["z"]}), format="csv", has_headers=False)
    assert path2.read_text() == "z\n"


def test_json_sink_one_object_per_line_with_iso_timestamps(tmp_path):
    table = pa.table(
        {
            "k": ["a", None],
            "ts": pa.array([TS, None], pa.timestamp("us", tz="UTC")),
            "n": pa.array([{"x": 1}, {"x": 2}]),
        }
    )
    path = tmp_path / "out.jsonl"
    write_with_sink(path, table)
    assert path.read_text().splitlines() == [
        '{"k":"a","ts":"2024-01-02T03:04:05.12Z","n":{"x":1}}',
        '{"k":null,"ts":null,"n":{"x":2}}',
    ]


@pytest.mark.parametrize("compression", [None, "snappy", "zstd", "gzip", "none"])
def test_parquet_sink_compression(tmp_path, compression):
    path = tmp_path / "out.parquet"
    write_with_sink(path, SAMPLE, compression=compression)
    assert pq.read_table(path).equals(SAMPLE)
    codec = pq.ParquetFile(path).metadata.row_group(0).column(0).compression
    assert codec == {None: "SNAPPY", "none": "UNCOMPRESSED"}.get(compression, str(compression).upper())


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_sink_append_if_exists(tmp_path, fmt):
    path = tmp_path / f"out.{fmt}"
    first = pa.table({"k": ["a"], "v": [1]})
    write_with_sink(path, first)
    write_with_sink(path, pa.table({"k": ["b"], "v": [2]}), append_if_exists=True)
    lines = path.read_text().splitlines()
    if fmt == "csv":
        assert lines == ["k,v", "a,1", "b,2"]
    else:
        assert lines == ['{"k":"a","v":1}', '{"k":"b","v":2}']
    write_with_sink(path, first)  # without append_if_exists the file is replaced
    assert len(path.read_text().splitlines()) == (2 if fmt == "csv" else 1)


def test_sink_append_to_file_without_final_newline(tmp_path):
    path = tmp_path / "out.csv"
    write(path, "k,v\na,1")
    write_with_sink(path, pa.table({"k": ["b"], "v": [2]}), append_if_exists=True)
    assert path.read_text() == "k,v\na,1\nb,2\n"


def test_sink_append_creates_missing_file_with_header(tmp_path):
    path = tmp_path / "new.csv"
    write_with_sink(path, pa.table({"k": ["b"]}), append_if_exists=True)
    assert path.read_text() == "k\nb\n"


def test_empty_sinks_leave_valid_files(tmp_path):
    schema = pa.schema([("k", pa.string()), ("v", pa.float64())])
    for name in ["e.csv", "e.jsonl", "e.parquet"]:
        out = sink(tmp_path / name)
        out.open(schema)
        out.write(schema.empty_table())
        out.close()
        out.close()
    assert (tmp_path / "e.csv").read_text() == "k,v\n"
    assert (tmp_path / "e.jsonl").read_text() == ""
    assert pq.read_table(tmp_path / "e.parquet").schema == schema


def test_flush_makes_rows_visible_while_open(tmp_path):
    path = tmp_path / "live.jsonl"
    out = sink(path)
    out.open(pa.schema([("v", pa.int64())]))
    out.write(pa.table({"v": [1, 2]}))
    out.flush()
    assert path.read_text() == '{"v":1}\n{"v":2}\n'
    out.close()


def test_sink_option_errors(tmp_path):
    with pytest.raises(OptionError, match="append_if_exists"):
        sink(tmp_path / "x.parquet", append_if_exists=True)
    with pytest.raises(OptionError, match="has no path"):
        sink(None)
    with pytest.raises(DataError, match="'csv', 'csv_no_header', 'json', 'jsonl', 'parquet'"):
        sink(tmp_path / "x.xlsx")
    assert (
        sink(tmp_path / "x.csv", has_headers=False).describe()
        == f"file_sink csv_no_header {tmp_path / 'x.csv'}"
    )


def test_csv_sink_refuses_nested_columns(tmp_path):
    out = sink(tmp_path / "x.csv")
    with pytest.raises(DataError, match="'n' of type list<item: int64>.*'jsonl' or 'parquet'"):
        out.open(pa.schema([("n", pa.list_(pa.int64()))]))


def test_csv_output_reads_back_in_duckdb(tmp_path):
    path = tmp_path / "out.csv"
    write_with_sink(path, SAMPLE)
    got = duckdb.sql(f"SELECT id, ts FROM read_csv('{path}') ORDER BY id").fetchall()
    assert got == [(1, TS), (2, TS.replace(microsecond=0)), (3, None)]


# ---- CSV source ------------------------------------------------------------------------------------


def test_csv_types_inferred_from_the_data(tmp_path):
    path = tmp_path / "t.csv"
    write(
        path,
        "i,f,s,b,d,ts\n1,1.5,x,true,2024-01-02,2024-01-02 03:04:05\n2,2,y,false,2024-01-03,2024-01-02T03:04:05.5\n",
    )
    table, _ = read_all(source(path))
    types = {f.name: f.type for f in table.schema}
    assert types == {
        "i": pa.int64(),
        "f": pa.float64(),
        "s": TEXT,
        "b": pa.bool_(),
        "d": pa.date32(),
        "ts": pa.timestamp("us"),
        "_partition": pa.int32(),
        "_offset": pa.int64(),
    }
    assert table.column("ts").to_pylist() == [
        dt.datetime(2024, 1, 2, 3, 4, 5),
        dt.datetime(2024, 1, 2, 3, 4, 5, 500000),
    ]


def test_brc_style_semicolon_no_header_with_schema(tmp_path):
    path = tmp_path / "measurements.txt"
    write(path, "Hamburg;12.0\nBulawayo;8.9\nPalembang;38.8\nHamburg;-3.5\n")
    src = source(path, format="csv_no_header", delimiter=";", schema="station VARCHAR, temperature DOUBLE")
    table, events = read_all(src)
    assert table.schema.field("temperature").type == pa.float64()
    assert user_rows(table)[3] == {"station": "Hamburg", "temperature": -3.5}
    assert events == [("batch", 4, 0), ("end", 0)]


def test_no_header_columns_are_numbered_without_schema(tmp_path):
    path = tmp_path / "x.csv"
    write(path, "a,1\nb,2\n")
    table, _ = read_all(source(path, has_headers=False))
    assert user_rows(table) == [{"column0": "a", "column1": 1}, {"column0": "b", "column1": 2}]


def test_header_is_replaced_by_schema_names(tmp_path):
    path = tmp_path / "x.csv"
    write(path, "A,B\n007,2\n")
    table, _ = read_all(source(path, schema="code VARCHAR, n INTEGER"))
    assert user_rows(table) == [{"code": "007", "n": 2}]
    assert table.schema.field("n").type == pa.int32()


def test_schema_types_dates_times_enums(tmp_path):
    path = tmp_path / "t.csv"
    write(path, "d,t,ns,e\n2024-01-02,10:00:01,2024-01-01 10:00:00.123456789,a\n")
    table, _ = read_all(source(path, schema="d DATE, t TIME, ns TIMESTAMP_NS, e ENUM('a', 'b')"))
    assert [f.type for f in table.schema][:4] == [
        pa.date32(),
        pa.time64("us"),
        pa.timestamp("ns"),
        TEXT,
    ]
    assert user_rows(table)[0]["d"] == dt.date(2024, 1, 2)

    path = tmp_path / "t.jsonl"
    write(path, '{"d": "2024-01-02", "n": 1}\n{"d": "not a date"}\n')
    ctx, rejects = collecting_ctx()
    table, _ = read_all(source(path, schema="d DATE"), ctx)
    assert user_rows(table) == [{"d": dt.date(2024, 1, 2)}]
    assert rejects[0][0] == f"{path}:2" and rejects[0][1].startswith("field 'd': cannot convert to date32")


@pytest.mark.parametrize(
    "fmt, schema", [("csv", "x INTERVAL"), ("csv", "x INTEGER[]"), ("jsonl", "x INTERVAL")]
)
def test_schema_types_the_reader_cannot_produce(tmp_path, fmt, schema):
    path = tmp_path / f"t.{fmt}"
    write(path, "x\n")
    with pytest.raises(OptionError, match="of column 'x' in 'src.schema'.*read it as VARCHAR"):
        source(path, schema=schema).open(SourceContext())


def test_brc_file_matches_duckdb_read_csv(tmp_path):
    path = tmp_path / "brc.csv"
    stations = ["Abha", "Zürich", "St. John's", "Ouagadougou", "X"]
    lines = [f"{stations[i % 5]};{(i * 37 % 1000 - 500) / 10}" for i in range(30_000)]
    write(path, "\n".join(lines) + "\n")
    src = source(path, format="csv_no_header", delimiter=";", schema="station VARCHAR, temperature DOUBLE")
    table, _ = read_all(src)
    expected = duckdb.sql(
        f"SELECT * FROM read_csv('{path}', delim=';', header=false, "
        "columns={'station': 'VARCHAR', 'temperature': 'DOUBLE'})"
    ).fetchall()
    assert [tuple(r.values()) for r in user_rows(table)] == expected
    assert table.column("_offset").to_pylist() == list(range(30_000))


def test_quoting_doubled_quotes_and_delimiters_in_values(tmp_path):
    path = tmp_path / "q.csv"
    write(path, 'k,v\n"a,b","say ""hi"""\nc,plain\n')
    table, _ = read_all(source(path))
    assert user_rows(table) == [{"k": "a,b", "v": 'say "hi"'}, {"k": "c", "v": "plain"}]


def test_custom_quote_and_escape(tmp_path):
    path = tmp_path / "q.csv"
    write(path, "k|v\n'a|b'|'it\\'s'\n")
    table, _ = read_all(source(path, delimiter="|", quote="'", escape="\\"))
    assert user_rows(table) == [{"k": "a|b", "v": "it's"}]


def test_crlf_blank_lines_and_missing_final_newline(tmp_path):
    path = tmp_path / "w.csv"
    write(path, "k,v\r\na,1\r\n\r\n\nb,2")
    ctx, rejects = collecting_ctx()
    table, _ = read_all(source(path), ctx)
    assert user_rows(table) == [{"k": "a", "v": 1}, {"k": "b", "v": 2}]
    assert table.column("_offset").to_pylist() == [0, 1]
    assert rejects == []


def test_skip_lines_then_header(tmp_path):
    path = tmp_path / "s.csv"
    write(path, "# exported\n# by a tool\nk,v\na,1\nb,x\n")
    ctx, rejects = collecting_ctx()
    table, _ = read_all(source(path, skip_lines=2, schema="k VARCHAR, v INTEGER"), ctx)
    assert user_rows(table) == [{"k": "a", "v": 1}]
    assert [r[0] for r in rejects] == [f"{path}:5"]


def test_types_stay_fixed_after_inference(tmp_path):
    write(tmp_path / "d" / "1.csv", "k,n\na,1\nb,2\n")
    write(tmp_path / "d" / "2.csv", "k,n\nc,3\nd,4.5\ne,5\n")
    ctx, rejects = collecting_ctx()
    table, _ = read_all(source(tmp_path / "d"), ctx)
    assert table.schema.field("n").type == pa.int64()
    assert [r["k"] for r in user_rows(table)] == ["a", "b", "c", "e"]
    assert rejects[0][0] == f"{tmp_path / 'd' / '2.csv'}:3"
    assert "column 'n': cannot convert to int64" in rejects[0][1]
    assert rejects[0][2] == "d,4.5"


def test_header_only_file_gives_text_columns(tmp_path):
    path = tmp_path / "h.csv"
    write(path, "k,v\n")
    table, events = read_all(source(path))
    assert table.num_rows == 0 and table.schema.field("v").type == TEXT
    assert events == [("end", 0)]


def test_empty_file_without_schema_is_an_error(tmp_path):
    path = tmp_path / "e.csv"
    write(path, "")
    with pytest.raises(DataError, match="no data to infer the columns.*'src.schema'"):
        source(path).open(SourceContext())


def test_system_column_names_are_refused(tmp_path):
    path = tmp_path / "e.csv"
    write(path, "_offset,v\n1,2\n")
    with pytest.raises(DataError, match="'_offset'"):
        source(path).open(SourceContext())


# ---- several files, batches, limits ---------------------------------------------------------------


def test_glob_files_are_partitions_in_name_order(tmp_path):
    for name, rows in [("b.csv", ["3", "4", "5"]), ("a.csv", ["1", "2"]), ("c.json", ["9"])]:
        write(tmp_path / name, "v\n" + "\n".join(rows) + "\n")
    src = source(tmp_path / "*.csv")
    table, events = read_all(src)
    assert table.column("v").to_pylist() == [1, 2, 3, 4, 5]
    assert table.column("_partition").to_pylist() == [0, 0, 1, 1, 1]
    assert table.column("_offset").to_pylist() == [0, 1, 0, 1, 2]
    assert events == [("batch", 2, 0), ("end", 0), ("batch", 3, 1), ("end", 1)]
    assert src.describe() == f"file_source csv {tmp_path / '*.csv'} (2 files)"


def test_directory_reads_known_extensions_and_skips_hidden_files(tmp_path):
    write(tmp_path / "2.jsonl", '{"v": 2}\n')
    write(tmp_path / "1.jsonl", '{"v": 1}\n')
    write(tmp_path / ".3.jsonl", '{"v": 3}\n')
    write(tmp_path / "notes.txt", "not data\n")
    table, events = read_all(source(tmp_path))
    assert table.column("v").to_pylist() == [1, 2]
    assert events == [("batch", 1, 0), ("end", 0), ("batch", 1, 1), ("end", 1)]


def test_directory_of_mixed_formats_needs_a_format(tmp_path):
    write(tmp_path / "a.csv", "v\n1\n")
    write(tmp_path / "b.jsonl", '{"v": 2}\n')
    with pytest.raises(DataError, match="several formats.*'src.format'"):
        source(tmp_path).open(SourceContext())
    table, _ = read_all(source(tmp_path, format="json"))
    assert table.column("v").to_pylist() == [2]


@pytest.mark.parametrize("batch_size", [1, 7, 100, 65536])
def test_batches_have_batch_size_rows(tmp_path, batch_size):
    write(tmp_path / "a.csv", "v\n" + "".join(f"{i}\n" for i in range(250)))
    write(tmp_path / "b.csv", "v\n" + "".join(f"{i}\n" for i in range(30)))
    with mock.patch.object(files_source, "_READ_BLOCK", 64):  # many blocks per file
        table, events = read_all(source(tmp_path / "*.csv", batch_size=batch_size))
    sizes = {0: [], 1: []}
    for event in events:
        if event[0] == "batch":
            sizes[event[2]].append(event[1])
    for part, total in [(0, 250), (1, 30)]:
        assert sum(sizes[part]) == total
        assert all(n == batch_size for n in sizes[part][:-1]) and 0 < sizes[part][-1] <= batch_size
    assert table.column("_offset").to_pylist() == list(range(250)) + list(range(30))


def test_max_records_stops_the_source(tmp_path):
    write(tmp_path / "a.csv", "v\n1\n2\n")
    write(tmp_path / "b.csv", "v\n3\n4\n5\n")
    table, events = read_all(source(tmp_path / "*.csv", max_records=4, batch_size=1))
    assert table.column("v").to_pylist() == [1, 2, 3, 4]
    assert events[-1] == ("end", 1)
    table, events = read_all(source(tmp_path / "*.csv", max_records=0))
    assert table.num_rows == 0 and events == []


def test_blocks_decoded_ahead_keep_order_rejects_and_offsets(tmp_path):
    # Blocks are decoded several at once on worker threads; rows, offsets and rejects stay in file
    # order, and nothing past max_records is rejected although later blocks were already decoded.
    lines = ["k,v"]
    for i in range(200):
        lines.append(f"r{i},x" if i % 37 == 5 else f"r{i},{i}")
    path = tmp_path / "many.csv"
    write(path, "\n".join(lines))  # no final newline either
    good = [i for i in range(200) if i % 37 != 5]
    for max_records, block in [(None, 32), (None, 100), (60, 32), (None, 1 << 20)]:
        ctx, rejects = collecting_ctx()
        options = {"schema": "k VARCHAR, v BIGINT", "batch_size": 7}
        if max_records is not None:
            options["max_records"] = max_records
        with mock.patch.object(files_source, "_READ_BLOCK", block):
            table, _ = read_all(source(path, **options), ctx)
        kept = good[:max_records] if max_records is not None else good
        assert table.column("v").to_pylist() == kept
        assert table.column("_offset").to_pylist() == kept  # a rejected record uses up its offset
        last = kept[-1]
        assert [r[0] for r in rejects] == [f"{path}:{i + 2}" for i in range(200) if i % 37 == 5 and i < last]
        assert all(r[1] == "column 'v': cannot convert to int64: invalid value 'x'" for r in rejects)


def test_long_lines_and_quotes_across_small_blocks(tmp_path):
    path = tmp_path / "long.csv"
    long_text = "y" * 300
    write(path, f'k,v\na,1\n"{long_text}",2\nb,"3\n"c,d",4\n"{long_text}",5')
    ctx, rejects = collecting_ctx()
    with mock.patch.object(files_source, "_READ_BLOCK", 16):  # lines longer than a block
        table, _ = read_all(source(path, schema="k VARCHAR, v VARCHAR"), ctx)
    assert user_rows(table) == [
        {"k": "a", "v": "1"},
        {"k": long_text, "v": "2"},
        {"k": "c,d", "v": "4"},
        {"k": long_text, "v": "5"},
    ]
    assert table.column("_offset").to_pylist() == [0, 1, 3, 4]
    assert rejects == [(f"{path}:4", "unterminated quoted value", 'b,"3')]


def test_decoding_threads_end_with_the_read(tmp_path):
    write(tmp_path / "a.csv", "v\n" + "".join(f"{i}\n" for i in range(100)))
    src = source(tmp_path / "a.csv", batch_size=10)

    def decoding() -> bool:
        return any(t.name.startswith("velosql-src-decode") for t in threading.enumerate())

    src.open(SourceContext())
    with mock.patch.object(files_source, "_READ_BLOCK", 32):
        reader = src.read()
        next(reader)  # a batch out, later blocks still being decoded
        assert decoding()
        reader.close()  # abandoned half-way
        assert not decoding()
        table, _ = read_all(source(tmp_path / "a.csv", batch_size=10))
        assert table.num_rows == 100 and not decoding()
    src.close()


# ---- JSON and Parquet sources ---------------------------------------------------------------------


def test_json_lines_missing_fields_and_timestamps(tmp_path):
    path = tmp_path / "e.json"
    write(
        path,
        '{"id": 1, "ts": "2024-01-02T03:04:05", "tags": ["a"]}\n\n{"ts": "2024-01-02 03:04:06.5", "x": 1}\n',
    )
    table, _ = read_all(source(path))
    assert table.schema.field("ts").type == pa.timestamp("us")
    assert user_rows(table) == [
        {"id": 1, "ts": dt.datetime(2024, 1, 2, 3, 4, 5), "tags": ["a"], "x": None},
        {"id": None, "ts": dt.datetime(2024, 1, 2, 3, 4, 6, 500000), "tags": None, "x": 1},
    ]


def test_bad_json_lines_are_rejected_with_their_line(tmp_path):
    path = tmp_path / "e.jsonl"
    write(path, '{"k": "a", "v": 1}\n{"k": "b", "v": \n{"k": "c", "v": "x"}\n[1]\n{"k": "d", "v": 4}\n')
    ctx, rejects = collecting_ctx()
    table, _ = read_all(source(path), ctx)
    assert user_rows(table) == [{"k": "a", "v": 1}, {"k": "d", "v": 4}]
    assert table.column("_offset").to_pylist() == [0, 4]
    assert [(loc, raw) for loc, _, raw in rejects] == [
        (f"{path}:2", '{"k": "b", "v": '),
        (f"{path}:3", '{"k": "c", "v": "x"}'),
        (f"{path}:4", "[1]"),
    ]
    assert "field 'v' changed from number to string" in rejects[1][1]


def test_json_schema_override(tmp_path):
    path = tmp_path / "e.jsonl"
    write(path, '{"a": 1, "b": "x", "c": true}\n')
    table, _ = read_all(source(path, schema="c BOOLEAN, a DOUBLE"))
    assert user_rows(table) == [{"c": True, "a": 1.0}]


def test_parquet_row_groups_in_order_in_one_partition(tmp_path):
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"v": list(range(1000))}), path, row_group_size=300)
    table, events = read_all(source(path, batch_size=256))
    assert table.column("v").to_pylist() == list(range(1000))
    assert table.column("_offset").to_pylist() == list(range(1000))
    assert events[-1] == ("end", 0) and {e[2] for e in events if e[0] == "batch"} == {0}


def test_parquet_schema_override_selects_and_casts(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), path)
    table, _ = read_all(source(path, schema="b VARCHAR, a DOUBLE"))
    assert user_rows(table) == [{"b": "x", "a": 1.0}, {"b": "y", "a": 2.0}]
    with pytest.raises(DataError, match=r"none of the source's columns \(zz\)"):
        read_all(source(path, schema="zz INTEGER"))


def test_corrupt_parquet_file_is_rejected(tmp_path):
    pq.write_table(pa.table({"v": [1]}), tmp_path / "a.parquet")
    write(tmp_path / "b.parquet", b"PAR1 not really")
    ctx, rejects = collecting_ctx()
    table, _ = read_all(source(tmp_path), ctx)
    assert table.column("v").to_pylist() == [1]
    assert rejects[0][0] == str(tmp_path / "b.parquet")


# ---- errors ---------------------------------------------------------------------------------------


def test_missing_path_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "data.csv"
    with pytest.raises(DataError, match=f"no file matches path '{missing}'"):
        source(missing).open(SourceContext())
    with pytest.raises(DataError, match="no file matches path"):
        source(tmp_path / "*.csv").open(SourceContext())
    with pytest.raises(DataError, match="has no path: set 'src.path'"):
        FileSource("src", {}).open(SourceContext())


def test_unknown_formats_list_the_allowed_ones(tmp_path):
    write(tmp_path / "x.xlsx", "k\n")
    with pytest.raises(DataError, match="'csv', 'csv_no_header', 'json', 'jsonl', 'parquet'"):
        source(tmp_path / "x.xlsx").open(SourceContext())
    with pytest.raises(DataError, match="unsupported file format 'avro': allowed formats are 'csv'"):
        source(tmp_path / "x.xlsx", format="avro").open(SourceContext())


def test_option_errors():
    with pytest.raises(OptionError, match="'src.delimiter': expected one character"):
        source("x.csv", delimiter=";;")
    with pytest.raises(OptionError, match="'src.batch_size'"):
        source("x.csv", batch_size=0)


def test_bad_schema_text(tmp_path):
    write(tmp_path / "x.csv", "a\n1\n")
    with pytest.raises(OptionError, match="'src.schema'.*e.g. 'station VARCHAR"):
        source(tmp_path / "x.csv", schema="a NOSUCHTYPE").open(SourceContext())


def test_bad_csv_rows_are_rejected_and_good_rows_kept(tmp_path):
    path = tmp_path / "bad.csv"
    write(path, 'k,v\na,1\nb,2,3\nc\nd,abc\ne,"5\nf,"6"x"\ng,7\n')
    ctx, rejects = collecting_ctx()
    table, _ = read_all(source(path, schema="k VARCHAR, v DOUBLE"), ctx)
    assert user_rows(table) == [{"k": "a", "v": 1.0}, {"k": "g", "v": 7.0}]
    assert table.column("_offset").to_pylist() == [0, 6]
    assert rejects == [
        (f"{path}:3", "expected 2 fields, got 3", "b,2,3"),
        (f"{path}:4", "expected 2 fields, got 1", "c"),
        (f"{path}:5", "column 'v': cannot convert to double: invalid value 'abc'", "d,abc"),
        (f"{path}:6", "unterminated quoted value", 'e,"5'),
        (f"{path}:7", "unterminated quoted value", 'f,"6"x"'),
    ]


def test_unterminated_quote_in_a_text_column_does_not_swallow_lines(tmp_path):
    path = tmp_path / "bad.csv"
    write(path, 'k,v\n"a,1\nb,2\nc,"3\nd,4\n')
    ctx, rejects = collecting_ctx()
    table, _ = read_all(source(path, schema="k VARCHAR, v VARCHAR"), ctx)
    assert user_rows(table) == [{"k": "b", "v": "2"}, {"k": "d", "v": "4"}]
    assert [r[0] for r in rejects] == [f"{path}:2", f"{path}:4"]


def test_invalid_utf8_is_rejected(tmp_path):
    path = tmp_path / "bad.csv"
    write(path, b"k,v\na,1\nb\xff,2\n")
    ctx, rejects = collecting_ctx()
    table, _ = read_all(source(path, schema="k VARCHAR, v INTEGER"), ctx)
    assert user_rows(table) == [{"k": "a", "v": 1}]
    assert rejects[0][0] == f"{path}:3" and "UTF8" in rejects[0][1]


def test_failing_reject_stops_the_read(tmp_path):
    path = tmp_path / "bad.csv"
    write(path, "k,v\na,1\nb,x\nc,3\n")

    def fail(location, error, raw):
        raise DataError(f"{location}: {error}")

    with pytest.raises(DataError, match=f"{path}:3: column 'v'"):
        read_all(source(path, schema="k VARCHAR, v INTEGER"), SourceContext(reject_fn=fail))
    with pytest.raises(DataError, match=f"{path}:3"):  # no reject_fn: the context raises itself
        read_all(source(path, schema="k VARCHAR, v INTEGER"))


GOOD_ROW = st.tuples(
    st.text(alphabet="abcxyz ,\"'é", min_size=0, max_size=6),
    st.integers(-10_000, 10_000),
)
BAD_LINES = {
    "csv": ["onlyone", "a,1,2", "b,notanumber", '"c,3', 'd,"4', "e,1.5", "f,2,"],
    "jsonl": ['{"k": "a", "v": }', '{"k": "b", "v": "x"}', "[1]", '{"k": "c", "v": 1.5}', "nope", '{"k": 5}'],
}


def _good_line(fmt: str, k: str, v: int) -> str:
    if fmt == "jsonl":
        return json.dumps({"k": k, "v": v}, ensure_ascii=False)
    quoted = '"' + k.replace('"', '""') + '"' if any(c in k for c in ',"') or k == "" else k
    return f"{quoted},{v}"


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(["csv", "jsonl"]),
    rows=st.lists(GOOD_ROW, max_size=40),
    bad=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 5)), max_size=8),
    header=st.booleans(),
    skip=st.integers(0, 2),
    block=st.sampled_from([16, 64, 1 << 20]),
)
def test_property_good_rows_yielded_bad_lines_rejected_with_line_numbers(fmt, rows, bad, header, skip, block):
    header = header and fmt == "csv"
    lines, expected_rejects, expected_offsets = [f"skipped {i}" for i in range(skip)], [], []
    if header:
        lines.append("k,v")
    record = 0  # a rejected record uses up its offset too
    for i in range(len(rows) + 1):
        for text in [BAD_LINES[fmt][choice] for pos, choice in sorted(bad) if pos == i]:
            lines.append(text)
            expected_rejects.append((len(lines), text))
            record += 1
        if i < len(rows):
            lines.append(_good_line(fmt, *rows[i]))
            expected_offsets.append(record)
            record += 1
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"p.{fmt}")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
        ctx, rejects = collecting_ctx()
        src = source(path, schema="k VARCHAR, v BIGINT", has_headers=header, skip_lines=skip)
        with mock.patch.object(files_source, "_READ_BLOCK", block):
            table, _ = read_all(src, ctx)
    assert [(r["k"], r["v"]) for r in user_rows(table)] == rows
    assert table.column("_offset").to_pylist() == expected_offsets
    assert [(loc, raw) for loc, _, raw in rejects] == [(f"{path}:{n}", text) for n, text in expected_rejects]


# ---- watching -------------------------------------------------------------------------------------


class Consumer:
    """Iterates a watching source in a thread; the test waits on what it yielded, with deadlines."""

    def __init__(self, src: FileSource, ctx: SourceContext) -> None:
        self.src, self.ctx = src, ctx
        self.items: queue.Queue = queue.Queue()
        self.rows: list[dict] = []
        src.open(ctx)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for item in self.src.read():
            self.items.put(item)
        self.items.put("done")

    def wait_rows(self, n: int, timeout: float = 10.0) -> list[dict]:
        """Wait until ``n`` rows in all arrived; returns them (with system columns)."""
        deadline = time.monotonic() + timeout
        while len(self.rows) < n:
            item = self.items.get(timeout=max(0.0, deadline - time.monotonic()))
            if isinstance(item, pa.RecordBatch):
                self.rows.extend(item.to_pylist())
        return self.rows

    def wait_idle_poll(self, timeout: float = 10.0) -> None:
        """Wait for the next idle poll (a ``None``): everything available by then was read."""
        deadline = time.monotonic() + timeout
        while True:
            item = self.items.get(timeout=max(0.0, deadline - time.monotonic()))
            if isinstance(item, pa.RecordBatch):
                self.rows.extend(item.to_pylist())
            elif item is None:
                return

    def stop(self) -> None:
        self.ctx.stop.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


def test_watch_appended_lines_and_new_files(tmp_path):
    data = tmp_path / "in"
    write(data / "a.csv", "k,v\nx,1.0\n")
    ctx, rejects = collecting_ctx()
    src = source(data, watch=True, poll_interval=5_000)
    assert not src.bounded
    consumer = Consumer(src, ctx)
    assert consumer.wait_rows(1)[0] == {"k": "x", "v": 1.0, "_partition": 0, "_offset": 0}

    append(data / "a.csv", "y,2.0\nz,3")  # the last line is not complete yet
    consumer.wait_rows(2)
    consumer.wait_idle_poll()
    consumer.wait_idle_poll()
    assert len(consumer.rows) == 2
    append(data / "a.csv", ".5\nbad,abc\n")
    assert consumer.wait_rows(3)[2] == {"k": "z", "v": 3.5, "_partition": 0, "_offset": 2}

    write(data / "b.csv", "k,v\nw,9\n")  # a new file: a new partition, same fixed types
    assert consumer.wait_rows(4)[3] == {"k": "w", "v": 9.0, "_partition": 1, "_offset": 0}
    consumer.wait_idle_poll()
    consumer.stop()
    assert consumer.items.get(timeout=10) in (None, "done")
    assert rejects == [
        (f"{data / 'a.csv'}:5", "column 'v': cannot convert to double: invalid value 'abc'", "bad,abc")
    ]


def test_watch_json_file_and_glob(tmp_path):
    write(tmp_path / "e1.jsonl", '{"v": 1}\n')
    ctx = SourceContext()
    consumer = Consumer(source(tmp_path / "e*.jsonl", watch=True, poll_interval=5_000), ctx)
    consumer.wait_rows(1)
    append(tmp_path / "e1.jsonl", '{"v": 2}\n')
    write(tmp_path / "e2.jsonl", '{"v": 3}\n')
    rows = consumer.wait_rows(3)
    assert sorted((r["_partition"], r["v"]) for r in rows) == [(0, 1), (0, 2), (1, 3)]
    consumer.stop()


def test_watch_empty_directory_with_schema(tmp_path):
    ctx = SourceContext()
    consumer = Consumer(
        source(tmp_path, watch=True, poll_interval=5_000, format="csv", schema="v INTEGER"), ctx
    )
    consumer.wait_idle_poll()
    write(tmp_path / "late.csv", "v\n42\n")
    assert consumer.wait_rows(1)[0]["v"] == 42
    consumer.stop()


def test_watch_stops_at_once_despite_a_long_poll_interval(tmp_path):
    write(tmp_path / "a.csv", "v\n1\n")
    ctx = SourceContext()
    consumer = Consumer(source(tmp_path / "a.csv", watch=True, poll_interval=3_600_000_000), ctx)
    consumer.wait_rows(1)
    consumer.wait_idle_poll()
    started = time.monotonic()
    consumer.stop()
    assert time.monotonic() - started < 5
    assert "watching every 3600s" in consumer.src.describe()


@pytest.mark.parametrize(("processor", "strategy"), [("v1", None), ("v2:2", "sticky"), ("v2:2", "hash")])
def test_a_parquet_column_the_query_does_not_read_is_not_read(tmp_path, processor, strategy):
    """``note`` holds text, though the declared schema says INTEGER: reading it makes each row
    group a dead letter. A GROUP BY that does not use it never decodes it; a windowed query keeps
    its late rows whole, so it reads (and rejects on) every column."""
    import velosql

    for f in range(2):
        pq.write_table(
            pa.table(
                {
                    "k": pa.array([i % 3 for i in range(100)], pa.int64()),
                    "v": pa.array(range(f * 100, f * 100 + 100), pa.int64()),
                    "ts": pa.array([dt.datetime(2024, 1, 1, 0, 0, i % 60) for i in range(100)]),
                    "note": ["abc"] * 100,
                }
            ),
            tmp_path / f"p{f}.parquet",
        )
    options = (
        f"'src.type' = 'file_source', 'src.path' = '{tmp_path}', "
        "'src.schema' = 'k BIGINT, v BIGINT, ts TIMESTAMP, note INTEGER', 'o.type' = 'python', "
        f"processor = '{processor}', scan_pushdown = false"
        + (f", partitioning_strategy = '{strategy}'" if strategy else "")
    )
    with velosql.connect() as engine:
        job = engine.execute(
            f"CREATE STREAM o AS SELECT k, count(*) AS n, sum(v) AS s FROM src WHERE v > 10 GROUP BY k EMIT FINAL WITH ({options})"
        )
        job.wait(60)
        want = duckdb.sql(
            "SELECT k, count(*), sum(v) FROM range(200) AS r(v), (SELECT v % 100 % 3 AS k) WHERE v > 10 GROUP BY k"
        ).fetchall()
        assert sorted(tuple(r.values()) for r in engine.pull("o").to_pylist()) == sorted(want)
        engine.execute(
            f"CREATE STREAM w AS SELECT k, count(*) AS n FROM src GROUP BY k "
            f"WINDOW TUMBLING(ts, 1m) EMIT FINAL WITH ({options.replace('o.type', 'w.type')})"
        ).wait(60)
        assert engine.pull("w").num_rows == 0
        dead = engine.sql("SELECT location, error FROM w__dlq ORDER BY location").fetchall()
        assert [loc for loc, _ in dead] == [
            f"{tmp_path / f'p{f}.parquet'}, row group 0 (rows 0-99)" for f in range(2)
        ]
        assert all(error.startswith("column 'note': cannot convert to int32") for _, error in dead)


@pytest.mark.parametrize(
    ("sql", "names"),
    [
        ("SELECT k, count(*) FROM __in GROUP BY k", {"k"}),
        ("SELECT src.a, sum(b) FROM __in AS src WHERE c > 1 GROUP BY src.a", {"src", "a", "b", "c"}),
        ("SELECT t.x, count(*) FROM __in AS src JOIN t USING (k) GROUP BY t.x", {"t", "x", "k"}),
        ("SELECT * FROM __in", None),
        ("SELECT COLUMNS('a.*') FROM __in", None),
        ("SELECT t.x FROM __in AS src NATURAL JOIN t", None),
        ("SELECT to_json(src) FROM __in AS src", None),
        ("SELECT #1, count(*) FROM __in GROUP BY #1", None),
    ],
)
def test_the_columns_a_statement_reads(sql, names):
    """What a source is pruned to: every column a statement may read, or None when that cannot
    be told (a star, COLUMNS, a column by position, a NATURAL join, a whole row used as a value)."""
    from velosql.plan.sqlgen import referenced_columns

    assert referenced_columns(sql) == (None if names is None else frozenset(names))


def test_a_join_on_a_column_named_only_in_using_keeps_it(tmp_path):
    """``k`` appears only in ``USING (k)``: pruning the Parquet source must keep it."""
    import velosql

    pq.write_table(
        pa.table({"k": pa.array([i % 3 for i in range(30)], pa.int64()), "v": pa.array(range(30))}),
        tmp_path / "p.parquet",
    )
    with velosql.connect() as engine:
        engine.sql("CREATE TABLE names AS SELECT * FROM (VALUES (0, 'a'), (1, 'b'), (2, 'c')) AS t(k, name)")
        job = engine.execute(
            "CREATE STREAM o AS SELECT name, count(*) AS n, sum(v) AS s FROM src JOIN names USING (k) "
            f"GROUP BY name EMIT FINAL WITH ('src.type' = 'file_source', 'src.path' = '{tmp_path}', "
            "'o.type' = 'python', scan_pushdown = false)"
        )
        job.wait(60)
        got = sorted(tuple(r.values()) for r in engine.pull("o").to_pylist())
    assert got == [
        ("a", 10, sum(range(0, 30, 3))),
        ("b", 10, sum(range(1, 30, 3))),
        ("c", 10, sum(range(2, 30, 3))),
    ]
