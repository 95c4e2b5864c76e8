"""The processor matrix: the behavioural suite runs against V1 and V2 through one fixture.

Each entry is a processor config and a partitioning strategy (None: the automatic choice). Together
they cover every strategy, and V2 with N = 1, 2, 3 and 8 in the long profile (2 and 3 in the fast). Modules whose tests run jobs use
``pytestmark = pytest.mark.usefixtures("processor_matrix")``: every engine those tests open
without choosing a processor then runs on the entry, through the same settings a user has (the
``PROCESSOR_CONFIG`` variable, and ``processor.partitioning_strategy`` in a config file).

The property-based oracle tests take the entry as a parameter instead (:func:`property_test`), with
fewer examples per V2 entry than for V1 (``VELOSQL_EXAMPLES`` / ``VELOSQL_V2_EXAMPLES``): every
V2 example starts its job's worker processes.

Two profiles set how many examples every property test draws: ``fast`` (the default: the README's
test command stays within a few minutes on two cores) and ``long`` (``VELOSQL_PROFILE=long``, CI's
second step): :func:`examples` scales a test's count by the profile.
"""

from __future__ import annotations

import functools
import inspect
import os

import pytest
from hypothesis import HealthCheck, given, settings

PROFILE = os.environ.get("VELOSQL_PROFILE", "fast")
if PROFILE not in ("fast", "long"):
    raise pytest.UsageError(f"VELOSQL_PROFILE={PROFILE!r}: expected fast or long")
LONG = PROFILE == "long"


def examples(n: int) -> int:
    """How many examples a property test written for ``n`` draws in this profile."""
    return n if LONG else max(5, n // 4)


# Every strategy, and V2 with N = 1, 2, 3 and 8. The fast profile leaves out the entries that add
# the least for their cost: one worker, and eight (eight processes started per job on two cores).
MATRIX = [
    ("v1", None),
    *([("v2:1", None)] if LONG else []),
    ("v2:2", "sticky"),
    ("v2:3", "round_robin"),
    ("v2:8", "hash") if LONG else ("v2:2", "hash"),
    ("v2:2", "smart"),
    ("v2:3", "fan_in"),
]
IDS = [p if s is None else f"{p}-{s}" for p, s in MATRIX]
# A part of the matrix, for behaviour that does not depend on the partitioning strategy (the API,
# the command line): V1 and V2 with 2 and 3 workers. Used as
# ``pytest.mark.parametrize("processor_matrix", SOME, ids=SOME_IDS, indirect=True)``.
SOME = [("v1", None), ("v2:2", "hash"), ("v2:3", "round_robin")]
SOME_IDS = ["v1", "v2:2-hash", "v2:3-round_robin"]
V1_EXAMPLES = int(os.environ.get("VELOSQL_EXAMPLES", "20" if LONG else "10"))
V2_EXAMPLES = int(os.environ.get("VELOSQL_V2_EXAMPLES", "3" if LONG else "2"))


@pytest.fixture(params=MATRIX, ids=IDS)
def processor_matrix(request, monkeypatch, tmp_path_factory):
    """Make the entry the default of every engine the test opens; returns (processor, strategy)."""
    processor, strategy = request.param
    monkeypatch.setenv("PROCESSOR_CONFIG", processor)
    if strategy is None:
        monkeypatch.delenv("VELOSQL_CONFIG", raising=False)
    else:
        path = tmp_path_factory.mktemp("config") / "velosql.yaml"
        path.write_text(f"processor:\n  partitioning_strategy: {strategy}\n")
        monkeypatch.setenv("VELOSQL_CONFIG", str(path))
    return request.param


def split_entry(entry: str) -> tuple[str, str | None]:
    """``"v2:2-sticky"`` → ``("v2:2", "sticky")``."""
    processor, _, strategy = entry.partition("-")
    return processor, strategy or None


def strategy_option(entry: str) -> str:
    """The WITH option choosing the entry's strategy (with a leading comma), or ``""``."""
    _, strategy = split_entry(entry)
    return f", partitioning_strategy = '{strategy}'" if strategy else ""


def property_test(v1_examples: int | None = None, **strategies):
    """A hypothesis test run once per matrix entry (parameter ``processor``: an entry of ``IDS``),
    with ``VELOSQL_EXAMPLES`` examples for V1 and ``VELOSQL_V2_EXAMPLES`` for each V2 entry.

    Replaces ``@pytest.mark.parametrize("processor", …) @settings(…) @given(…)``; other pytest
    parameters of the test still work. ``v1_examples`` overrides the V1 count.
    """

    def decorate(fn):
        signature = inspect.signature(fn)
        outer = [p for name, p in signature.parameters.items() if name not in strategies]

        @pytest.mark.parametrize("processor", IDS)
        @functools.wraps(fn)
        def test(**kwargs):
            v1 = V1_EXAMPLES if v1_examples is None else examples(v1_examples)
            count = v1 if kwargs["processor"] == "v1" else V2_EXAMPLES

            @settings(
                max_examples=count,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(**strategies)
            def run(**drawn):
                fn(**kwargs, **drawn)

            run()

        test.__signature__ = signature.replace(parameters=outer)
        return test

    return decorate
