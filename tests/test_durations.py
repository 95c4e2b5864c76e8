"""One duration parser: a window size and a duration WITH option read the same text the same way."""

from __future__ import annotations

import pytest

from velosql.durations import parse_duration
from velosql.errors import OptionError, SqlError
from velosql.plan.planner import plan
from velosql.sql import parse_one

US, MS, S, MIN, H, D = 1, 1_000, 1_000_000, 60_000_000, 3_600_000_000, 86_400_000_000

# (the duration as written in SQL, microseconds). A quoted form is a string in both places; an
# unquoted one is tokens in a WINDOW clause and the same text quoted in WITH.
DURATIONS = [
    ("5s", 5 * S),
    ("500ms", 500 * MS),
    ("1m", MIN),
    ("2h", 2 * H),
    ("1d", D),
    ("250us", 250 * US),
    ("1.5m", 90 * S),
    ("5", 5 * S),
    ("3 sec", 3 * S),
    ("10 minutes", 10 * MIN),
    ("'10 minutes'", 10 * MIN),
    ("'45s'", 45 * S),
    ("'1 hour 30 minutes'", 90 * MIN),
    ("'1h 30m'", 90 * MIN),
    ("INTERVAL '1' MINUTE", MIN),
    ("INTERVAL '90' SECONDS", 90 * S),
    ("INTERVAL 5 MINUTES", 5 * MIN),
    ("INTERVAL '1 hour 30 minutes'", 90 * MIN),
    ("INTERVAL '250' MILLISECOND", 250 * MS),
]


def _as_with_value(written: str) -> str:
    if written.startswith("'"):
        return written
    return "'" + written.replace("'", "''") + "'"


@pytest.mark.parametrize(("written", "us"), DURATIONS)
def test_a_window_size_is_read_by_the_duration_parser(written, us):
    statement = parse_one(f"CREATE STREAM s AS SELECT COUNT(*) FROM t WINDOW TUMBLING(ts, {written})")
    assert statement.window.size_us == us


@pytest.mark.parametrize(("written", "us"), DURATIONS)
def test_a_duration_option_is_read_by_the_same_parser(written, us):
    statement = parse_one(
        "CREATE STREAM s AS SELECT * FROM t WITH ('t.type' = 'python', "
        f"'watermark.max_out_of_orderness' = {_as_with_value(written)}, retry_backoff = {_as_with_value(written)})"
    )
    p = plan(statement)
    assert p.time.lateness_us == us
    assert p.job_options["retry_backoff"] == us


@pytest.mark.parametrize(
    ("value", "us"), [(5, 5 * S), (0.25, 250 * MS), (0, 0), ("0s", 0), ("1h30m", 90 * MIN)]
)
def test_numbers_are_seconds_and_zero_is_a_duration(value, us):
    assert parse_duration(value) == us


@pytest.mark.parametrize(
    "value", ["soon", "", "-5s", "5 parsecs", "1 month", "INTERVAL '1' YEAR", "5 10", "1m extra", True, -1]
)
def test_a_bad_duration_names_the_value_and_the_allowed_forms(value):
    with pytest.raises(ValueError) as raised:
        parse_duration(value)
    assert str(raised.value) == (
        f"invalid duration {value!r}: expected a duration such as "
        "1m, 30s, 500ms, '10 minutes' or INTERVAL '1' MINUTE"
    )


def test_a_bad_duration_option_says_the_same_and_names_its_key():
    statement = parse_one(
        "CREATE STREAM s AS SELECT * FROM t WITH ('t.type' = 'python', 'watermark.max_out_of_orderness' = '5 parsecs')"
    )
    with pytest.raises(OptionError) as raised:
        plan(statement)
    assert raised.value.message == (
        "invalid value '5 parsecs' for 'watermark.max_out_of_orderness': expected a duration such as "
        "1m, 30s, 500ms, '10 minutes' or INTERVAL '1' MINUTE"
    )


def test_a_bad_window_size_says_the_same_where_it_is_written():
    with pytest.raises(SqlError) as raised:
        parse_one("CREATE STREAM s AS SELECT COUNT(*) FROM t\nWINDOW TUMBLING(ts, '5 parsecs')")
    assert str(raised.value) == (
        "<sql>:2:21: expected a window size such as 1m, 30s, 500ms, '10 minutes' or INTERVAL '1' MINUTE, "
        "found \"'5 parsecs'\""
    )
