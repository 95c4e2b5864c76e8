"""What `velosql run` shows while jobs run: the share of a bounded input read, the time left, and a
table that fits an 80-column terminal."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

import velosql
from velosql.cli.progress import _table, done_text
from velosql.connectors.base import SourceContext
from velosql.connectors.files import FileSource


def _shares(path, options: dict) -> list[float]:
    source = FileSource("src", {"path": str(path), "batch_size": 100, **options})
    source.open(SourceContext())
    try:
        shares = [source.progress()]
        for _ in source.read():
            shares.append(source.progress())
    finally:
        source.close()
    return shares


def test_a_bounded_file_read_reports_its_share_done(tmp_path):
    for part in range(4):  # text: files read one after another (a file's blocks are read ahead)
        rows = "".join(f"k{i % 5},{part * 1000 + i}\n" for i in range(1000))
        (tmp_path / f"in-{part}.csv").write_text("k,v\n" + rows)
    table = pa.table({"k": [f"k{i % 5}" for i in range(5000)], "v": range(5000)})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=500)
    for path, fmt in ((tmp_path / "in-*.csv", "csv"), (tmp_path / "in.parquet", "parquet")):
        shares = _shares(path, {"format": fmt})
        assert shares[0] == 0
        assert shares == sorted(shares)  # never goes back
        assert any(0 < s < 1 for s in shares), (fmt, shares)  # in steps, not all at once
        assert shares[-1] == 1


def test_a_watched_source_has_no_share_done(tmp_path):
    (tmp_path / "a.csv").write_text("k,v\na,1\n")
    source = FileSource("src", {"path": str(tmp_path / "*.csv"), "watch": True})
    source.open(SourceContext())
    try:
        assert source.progress() is None
    finally:
        source.close()


def test_the_time_left_is_the_rate_so_far():
    assert done_text(0.25, 30) == "25% 1:30"
    assert done_text(None, 30) == "-"
    assert done_text(1.0, 30) == "100%"


def test_the_live_table_of_a_job_fits_80_columns(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("k,v\n" + "".join(f"key_{i % 5},{i}\n" for i in range(2000)))
    with velosql.connect() as engine:
        job = engine.execute(
            "CREATE STREAM a_rather_long_statement_name AS SELECT k, v FROM src WHERE v > 10 "
            f"WITH ('src.type' = 'file_source', 'src.path' = '{path}', processor = 'v2:2')"
        )
        job.wait(60)
        assert job.metrics()["progress"] == 1.0
        for width in (80, 160):
            out = io.StringIO()
            Console(file=out, width=width).print(_table([job], width))
            lines = out.getvalue().splitlines()
            assert max(len(line) for line in lines) <= width
            row = next(line for line in lines if "a_rather" in line)
            assert "100%" in row and "1989" in row
