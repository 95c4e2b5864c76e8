"""``velosql verify``: identical on the examples in ``sql/``, a difference where a query is made to
differ (a function DuckDB evaluates anew each time), and the exit codes of the real program."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cli_sql import velosql

from velosql.verify import rounding_only, verify

ROOT = Path(__file__).resolve().parents[1]
APPS = sorted((ROOT / "sql").glob("*.sql"))
ORDERS = ROOT / "sql" / "data" / "orders.csv"
NOISY = f"""CREATE STREAM noisy AS
SELECT order_id, customer, round(random() * 1000) AS noise FROM orders
WITH ('orders.type' = 'file_source', 'orders.path' = '{ORDERS}');
"""


@pytest.mark.parametrize("app", APPS, ids=lambda p: p.name)
def test_the_examples_stream_to_their_batch_answer(app, monkeypatch):
    monkeypatch.chdir(ROOT)  # the examples name their data from the repository's root
    # Their own batch size and one shuffled order (the suite's time): other batch sizes are
    # tried by the next test and by the page's command (tests/test_shell_docs.py).
    outcomes = verify(app.read_text(encoding="utf-8"), str(app), splits=0, orders=1)
    assert [o.status for o in outcomes] == ["identical"] * len(outcomes), outcomes
    for o in outcomes:
        assert {r.processor for r in o.runs} == {"v1", "v2:2"} and o.rows > 0
        windowed_with_lateness = "max_out_of_orderness" in app.read_text(encoding="utf-8")
        assert any(r.order.startswith("shuffled") for r in o.runs) is windowed_with_lateness
    if app.name == "trades_1m.sql":  # its three late rows are left out of the batch answer too
        assert outcomes[0].late_rows == 3


def test_a_statement_over_a_table_and_a_later_statement_reading_it():
    script = (
        "CREATE TABLE t AS SELECT i % 3 AS k, i AS v, TIMESTAMP '2024-01-01' + INTERVAL (i) SECOND AS ts "
        "FROM range(500) r(i);\n"
        "CREATE STREAM per_k AS SELECT k, _window_start, sum(v) AS s FROM t GROUP BY k "
        "WINDOW SLIDING(ts, 2m, 1m);\n"
        "CREATE STREAM totals AS SELECT k, sum(s) AS s FROM per_k GROUP BY k EMIT FINAL;\n"
    )
    outcomes = verify(script, splits=1, orders=0, processors=("v1",))
    assert [(o.name, o.status) for o in outcomes] == [("per_k", "identical"), ("totals", "identical")]
    assert outcomes[1].rows == 3


def test_a_processing_time_function_is_found_to_differ():
    (outcome,) = verify(NOISY, processors=("v1",), splits=0)
    assert outcome.status == "different" and outcome.differing.processor == "v1"
    assert outcome.columns == ["order_id", "customer", "noise"]
    assert outcome.missing_count == outcome.extra_count > 400  # a few draws may agree by chance
    assert len(outcome.missing) == len(outcome.extra) == 5


def test_only_a_last_rounded_digit_is_told_apart_from_a_difference():
    assert rounding_only([("c037", 32.47)], [("c037", 32.46)]) == 1
    assert rounding_only([("c037", 32.47)], [("c037", 32.45)]) == 0
    assert rounding_only([("c037", 1)], [("c037", 2)]) == 0
    assert rounding_only([("a", 1.5)], [("b", 1.5)]) == 0
    assert rounding_only([], []) == 0


def test_exit_codes_and_output_of_the_program(tmp_path):
    (tmp_path / "noisy.sql").write_text(NOISY, encoding="utf-8")
    (tmp_path / "filter.sql").write_text((ROOT / "sql" / "filter.sql").read_text(encoding="utf-8"))
    (tmp_path / "sql").symlink_to(ROOT / "sql")
    (tmp_path / "bad.sql").write_text(NOISY.replace("orders.csv", "missing.csv"), encoding="utf-8")

    same = velosql(tmp_path, "verify", "--processor", "v1", "--splits", "0", "filter.sql")
    assert same.returncode == 0, same.stderr
    assert same.stdout.splitlines() == [
        "filter.sql",
        "  big_orders (line 11): identical: 45 rows, in 1 run: V1; file order (1 batch size)",
    ]
    differ = velosql(tmp_path, "verify", "--processor", "v1", "--splits", "0", "noisy.sql")
    assert differ.returncode == 1, differ.stderr
    lines = differ.stdout.splitlines()
    assert lines[1] == "  noisy (line 1): different under V1, file order, its own batch size"
    assert lines[2].startswith("    rows batch SQL gives that the stream did not (the first 5 of ")
    assert lines[4].split() == ["|", "order_id", "|", "customer", "|", "noise", "|"]
    bad = velosql(tmp_path, "verify", "bad.sql")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("velosql: error: bad.sql:1:1: file source 'orders': no file matches path")
    assert "Traceback" not in bad.stderr
