"""Expressions nest as deep as DuckDB accepts (its max_expression_depth, 1000 by default).

sqlglot parses and generates SQL recursively (about 25 Python frames a level); velosql gives it
room (velosql/sql/deep.py). DuckDB counts ``(x + 1)`` as two levels, a function call or a CASE as
one: its limits below were measured on DuckDB 2.0.
"""

from __future__ import annotations

import sys

import duckdb
import pytest

import velosql
from velosql.errors import SqlError
from velosql.plan.planner import plan
from velosql.sql import parse_one
from velosql.sql.deep import MAX_LEVELS

# The deepest nesting of each form DuckDB itself runs as a SELECT item.
DUCKDB_MAX = {"paren": 499, "case": 992, "func": 993}


def nested(kind: str, levels: int, column: str = "x") -> str:
    e = column
    for i in range(levels):
        if kind == "paren":
            e = f"({e} + 1)"
        elif kind == "case":
            e = f"CASE WHEN {column} > {i % 7} THEN {e} ELSE -1 END"
        else:
            e = f"abs({e})"
    return e


@pytest.mark.parametrize("kind", ["paren", "case"])  # DuckDB binds 993 nested calls in seconds
def test_duckdb_limits_are_what_these_tests_assume(kind):
    con = duckdb.connect()
    con.sql(f"SELECT {nested(kind, DUCKDB_MAX[kind])} FROM (SELECT 1 AS x)").fetchall()
    with pytest.raises(duckdb.Error, match="Max expression depth"):
        con.sql(f"SELECT {nested(kind, DUCKDB_MAX[kind] + 10)} FROM (SELECT 1 AS x)").fetchall()


@pytest.mark.parametrize("kind", sorted(DUCKDB_MAX))
@pytest.mark.parametrize("depth", [40, 250, "duckdb-max"])
def test_a_deeply_nested_streaming_statement_parses_and_plans(kind, depth):
    levels = DUCKDB_MAX[kind] if depth == "duckdb-max" else depth
    e = nested(kind, levels)
    statement = parse_one(
        f"CREATE STREAM s AS SELECT k, SUM({e}) AS total FROM src WHERE {e} > 0 GROUP BY k "
        "EMIT CHANGES WITH ('src.type' = 'python')"
    )
    p = plan(statement)
    assert p.shape == "aggregate"
    node = {"func": "ABS(", "paren": "+ 1", "case": "CASE"}[kind]
    assert p.sql.reference.upper().count(node) == 2 * levels


@pytest.mark.parametrize("processor", ["v1", "v2:2"])
def test_a_deeply_nested_streaming_query_gives_duckdbs_rows(processor):
    paren, case = nested("paren", DUCKDB_MAX["paren"]), nested("case", 250)
    query = f"SELECT id, {paren} AS p, {case} AS c FROM src WHERE {paren} > 520"
    with velosql.connect() as engine:
        engine.sql("CREATE TABLE src AS SELECT range AS id, range * 7 % 300 AS x FROM range(60)")
        engine.execute(
            f"CREATE STREAM deep AS {query} EMIT CHANGES WITH ('src.type' = 'table', processor = '{processor}')"
        ).wait(120)
        got = sorted(engine.sql("SELECT * FROM deep").fetchall())
        want = sorted(engine.sql(query).fetchall())
    assert len(want) > 10
    assert got == want


def test_a_deeply_nested_group_by_key_under_v2_routes_by_it():
    key = nested("paren", 300, "k")
    query = f"SELECT {key} AS g, COUNT(*) AS n FROM src GROUP BY {key}"
    with velosql.connect() as engine:
        engine.sql("CREATE TABLE src AS SELECT range % 5 AS k FROM range(40)")
        engine.execute(
            f"CREATE STREAM deep AS {query} EMIT FINAL WITH ('src.type' = 'table', processor = 'v2:2')"
        ).wait(120)
        assert sorted(engine.sql("SELECT * FROM deep").fetchall()) == sorted(engine.sql(query).fetchall())


def test_a_deeply_nested_plain_duckdb_statement_runs():
    with velosql.connect() as engine:
        result = engine.execute(f"SELECT 1;\nSELECT {nested('paren', DUCKDB_MAX['paren'], '0')} AS v")
        assert result.fetchall() == [(DUCKDB_MAX["paren"],)]


def test_explain_shows_a_deeply_nested_statement():
    with velosql.connect() as engine:
        text = engine.explain(
            f"CREATE STREAM s AS SELECT {nested('func', 400)} AS v FROM src WITH ('src.type' = 'python')"
        )
    assert "STREAM s" in text


def test_nesting_beyond_what_velosql_supports_is_an_error_at_the_statement():
    limit = sys.getrecursionlimit()
    script = f"SELECT 1;\n\n  CREATE STREAM s AS SELECT {nested('func', MAX_LEVELS + 100)} AS v FROM src"
    with pytest.raises(SqlError) as raised:
        parse_one(script.split(";", 1)[1], "app.sql")
    assert str(raised.value) == (
        f"app.sql:3:3: an expression is nested too deeply: velosql parses and plans about {MAX_LEVELS} "
        "levels of nesting (DuckDB itself accepts 1000 unless SET max_expression_depth raises that)"
    )
    assert sys.getrecursionlimit() == limit
