"""Velostream conformance: its quickstart applications and its 1BRC demo run unchanged.

The SQL below reproduces each statement of Velostream's ``demo/quickstart/`` (``hello_world.sql``,
``01_filter.sql`` … ``04_window.sql``) and ``demo/1brc/1brc.sql`` the way its users write them: the
``-- SQL Application:`` header, comments between clauses and inside the select list and WITH list,
quoted ``'<name>.<key>'`` properties and ``./relative`` paths resolved against the working
directory. The inputs have the same columns and values as its CSVs; the assertions are the results
its README and test spec document.

Velostream's CSV sink writes columns in alphabetical order, ours in SELECT order, so outputs are
compared by column name.
"""

from __future__ import annotations

import csv
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SOME, SOME_IDS
from velostream_quickstart import AGGREGATE_SQL, FILTER_SQL, HELLO_WORLD_SQL, TRANSFORM_SQL, WINDOW_SQL

import velosql
from velosql.sql import parse_script

# Every job these tests run, on V1 and V2 with 2 and 3 workers (conftest.SOME): reading
# Velostream's files does not depend on the partitioning strategy.
pytestmark = [
    pytest.mark.usefixtures("processor_matrix"),
    pytest.mark.parametrize("processor_matrix", SOME, ids=SOME_IDS, indirect=True),
]

HELLO_INPUT = """\
id,name,value,timestamp
1,Alice,100,2024-01-01T10:00:00
2,Bob,200,2024-01-01T10:01:00
3,Carol,150,2024-01-01T10:02:00
4,Dave,300,2024-01-01T10:03:00
5,Eve,250,2024-01-01T10:04:00
"""

# Velostream's hello_world_expected.csv: its sink orders the columns alphabetically.
HELLO_EXPECTED = """\
id,name,timestamp,value
1,Alice,2024-01-01T10:00:00,100
2,Bob,2024-01-01T10:01:00,200
3,Carol,2024-01-01T10:02:00,150
4,Dave,2024-01-01T10:03:00,300
5,Eve,2024-01-01T10:04:00,250
"""

AGGREGATE_INPUT = """\
id,category,amount,timestamp
1,Electronics,299.99,2024-01-01T10:00:00
2,Books,24.99,2024-01-01T10:01:00
3,Electronics,149.99,2024-01-01T10:02:00
4,Clothing,79.99,2024-01-01T10:03:00
5,Books,19.99,2024-01-01T10:04:00
6,Electronics,599.99,2024-01-01T10:05:00
7,Clothing,49.99,2024-01-01T10:06:00
8,Books,34.99,2024-01-01T10:07:00
"""

WINDOW_INPUT = """\
symbol,price,timestamp
AAPL,150.00,2024-01-01T10:00:00
GOOGL,140.00,2024-01-01T10:00:01
AAPL,151.50,2024-01-01T10:00:02
GOOGL,141.25,2024-01-01T10:00:03
AAPL,150.75,2024-01-01T10:00:04
GOOGL,142.00,2024-01-01T10:00:05
AAPL,152.00,2024-01-01T10:00:06
GOOGL,140.50,2024-01-01T10:00:07
"""


# demo/1brc/1brc.sql: its generator writes a `station;temperature` header line.
ONE_BRC_SQL = """\
-- SQL Application: 1brc
-- Version: 1.0.0
-- Description: One Billion Row Challenge
-- =============================================================================
-- MIN/AVG/MAX temperature per weather station
-- =============================================================================
--
-- Usage:
--   generate measurements.txt, then run this file

-- @job_mode: simple
-- @batch_size: 10000
-- @num_partitions: 6
-- @partitioning_strategy: hash

CREATE STREAM results AS
SELECT
    station,
    MIN(temperature) AS min_temp,
    AVG(temperature) AS avg_temp,
    MAX(temperature) AS max_temp
FROM measurements
GROUP BY station
EMIT FINAL
WITH (
    'measurements.type' = 'file_source_mmap',
    'measurements.path' = './measurements.txt',
    'measurements.format' = 'csv',
    'measurements.delimiter' = ';',
    'results.type' = 'file_sink',
    'results.path' = './1brc_results.csv',
    'results.format' = 'csv'
);
"""


@pytest.fixture(params=["v1", "v2:2"])
def processor(request):
    """Every application runs under both processors (statements that choose one keep theirs)."""
    return request.param


def run_app(tmp_path: Path, monkeypatch, processor: str, sql: str, inputs: dict[str, str]):
    """Write the application and its inputs into ``tmp_path``, run it there, return the engine."""
    for name, text in inputs.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    app = tmp_path / "app.sql"
    app.write_text(sql, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    engine = velosql.connect(processor=processor)
    try:
        jobs = engine.run("app.sql", timeout=60)
    except BaseException:
        engine.close()
        raise
    assert jobs and all(job.status == "Finished" for job in jobs), [job.status for job in jobs]
    return engine


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_hello_world_sql_text_is_a_streaming_application():
    """Header, annotations and comments between clauses parse; the sink is named by the stream."""
    (stmt,) = parse_script(HELLO_WORLD_SQL, "hello_world.sql")
    assert stmt.name == "hello_world"
    assert stmt.annotations["app"] == "hello_world"
    assert stmt.annotations["version"] == "1.0.0"
    assert stmt.emit == "changes"
    assert stmt.properties["input_data.path"] == "./hello_world_input.csv"


def test_hello_world_passes_every_row_through(tmp_path, monkeypatch, processor):
    with run_app(tmp_path, monkeypatch, processor, HELLO_WORLD_SQL, {"hello_world_input.csv": HELLO_INPUT}):
        out = read_csv("output/hello_world_output.csv")
    expected = list(csv.DictReader(HELLO_EXPECTED.splitlines()))
    assert out == expected  # dicts: equal by column name, whatever the column order


def test_filter_keeps_rows_with_value_over_150(tmp_path, monkeypatch, processor):
    with run_app(tmp_path, monkeypatch, processor, FILTER_SQL, {"hello_world_input.csv": HELLO_INPUT}):
        out = read_csv("output/01_filter_output.csv")
    assert [r["name"] for r in out] == ["Bob", "Dave", "Eve"]
    expected = [r for r in csv.DictReader(HELLO_EXPECTED.splitlines()) if int(r["value"]) > 150]
    assert out == expected


def test_transform_selects_renames_and_computes(tmp_path, monkeypatch, processor):
    with run_app(tmp_path, monkeypatch, processor, TRANSFORM_SQL, {"hello_world_input.csv": HELLO_INPUT}):
        out = read_csv("output/02_transform_output.csv")
    assert out == [
        {"id": "1", "name": "Alice", "doubled_value": "200", "name_upper": "ALICE"},
        {"id": "2", "name": "Bob", "doubled_value": "400", "name_upper": "BOB"},
        {"id": "3", "name": "Carol", "doubled_value": "300", "name_upper": "CAROL"},
        {"id": "4", "name": "Dave", "doubled_value": "600", "name_upper": "DAVE"},
        {"id": "5", "name": "Eve", "doubled_value": "500", "name_upper": "EVE"},
    ]


def test_aggregate_emit_changes_one_row_per_input_row(tmp_path, monkeypatch, processor):
    inputs = {"03_aggregate_input.csv": AGGREGATE_INPUT}
    with run_app(tmp_path, monkeypatch, processor, AGGREGATE_SQL, inputs) as engine:
        out = read_csv("output/03_aggregate_output.csv")
        table = engine.sql(
            "SELECT category, transaction_count, total_amount, avg_amount FROM category_stats ORDER BY category"
        ).fetchall()

    # 8 rows in, 8 change rows out, each with its category's running count/sum/avg.
    running: dict[str, list[float]] = {}
    expected = []
    for row in csv.DictReader(AGGREGATE_INPUT.splitlines()):
        amounts = running.setdefault(row["category"], [])
        amounts.append(float(row["amount"]))
        expected.append((row["category"], len(amounts), sum(amounts), sum(amounts) / len(amounts)))
    assert len(out) == 8
    got = [
        (r["category"], int(r["transaction_count"]), float(r["total_amount"]), float(r["avg_amount"]))
        for r in out
    ]
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    for g, e in zip(got, expected):
        assert g[2:] == pytest.approx(e[2:])
    assert {r["category"] for r in out} == {"Electronics", "Books", "Clothing"}

    # CREATE TABLE … PRIMARY KEY also keeps the latest row per category as a DuckDB table.
    assert [(c, n) for c, n, *_ in table] == [("Books", 3), ("Clothing", 2), ("Electronics", 3)]
    assert [float(t) for _, _, t, _ in table] == pytest.approx([79.97, 129.98, 1049.97])


def test_window_lag_gives_the_previous_price_per_symbol(tmp_path, monkeypatch, processor):
    with run_app(tmp_path, monkeypatch, processor, WINDOW_SQL, {"04_window_input.csv": WINDOW_INPUT}):
        out = read_csv("output/04_window_output.csv")
    assert len(out) == 8
    assert {r["symbol"] for r in out} == {"AAPL", "GOOGL"}
    previous: dict[str, float] = {}
    for row in out:
        price = float(row["price"])
        prior = previous.get(row["symbol"])
        if prior is None:  # the first row of each symbol has no previous price: NULL
            assert row["previous_price"] == "" and row["price_change"] == ""
        else:
            assert float(row["previous_price"]) == prior
            assert float(row["price_change"]) == pytest.approx(price - prior)
        previous[row["symbol"]] = price
    assert [r["timestamp"] for r in out] == [f"2024-01-01T10:00:0{i}" for i in range(8)]


def _measurements(rng: random.Random, n: int) -> tuple[str, dict[str, list[float]]]:
    stations = {"Hamburg": 9.7, "Bulawayo": 18.9, "Palembang": 27.3, "St. John's": 5.0, "Cracow": 9.3,
                "Bridgetown": 27.0, "Istanbul": 13.9, "Roseau": 26.2, "Conakry": 26.4, "Zürich": 9.3}  # fmt: skip
    lines = ["station;temperature"]
    seen: dict[str, list[float]] = {}
    for _ in range(n):
        name = rng.choice(list(stations))
        temp = round(max(-99.9, min(99.9, rng.gauss(stations[name], 10))), 1) + 0.0
        lines.append(f"{name};{temp:.1f}")
        seen.setdefault(name, []).append(temp)
    return "\n".join(lines) + "\n", seen


def test_1brc_min_avg_max_per_station_emit_final(tmp_path, monkeypatch, processor):
    text, seen = _measurements(random.Random(42), 20_000)
    with run_app(tmp_path, monkeypatch, processor, ONE_BRC_SQL, {"measurements.txt": text}) as engine:
        out = read_csv("1brc_results.csv")
        # `@job_mode: simple` is V1, and under it `@num_partitions` is ignored, as in Velostream.
        assert engine.job("results").processor.processor_version() == "V1"
    # EMIT FINAL without a window: one row per station when the file is exhausted.
    assert len(out) == len(seen)
    by_station = {r["station"]: r for r in out}
    assert set(by_station) == set(seen)
    for name, temps in seen.items():
        row = by_station[name]
        assert float(row["min_temp"]) == min(temps)
        assert float(row["max_temp"]) == max(temps)
        assert float(row["avg_temp"]) == pytest.approx(sum(temps) / len(temps))


def test_quickstart_runs_through_the_cli(tmp_path):
    """``velosql run`` (as ``python -m velosql``) from the application's directory."""
    (tmp_path / "hello_world_input.csv").write_text(HELLO_INPUT, encoding="utf-8")
    (tmp_path / "02_transform.sql").write_text(TRANSFORM_SQL, encoding="utf-8")
    root = Path(velosql.__file__).resolve().parent.parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-m", "velosql", "run", "02_transform.sql"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = read_csv(tmp_path / "output" / "02_transform_output.csv")
    assert [r["name_upper"] for r in out] == ["ALICE", "BOB", "CAROL", "DAVE", "EVE"]
