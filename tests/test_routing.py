"""The V2 router's routing step: stable key hashes, splitting a batch, round-robin and sticky routing.

The key hash is checked against what it promises rather than against stored values: rows of one key
share a partition whatever the column's type, encoding, chunking or batch; another process with
another hash seed computes the same ids; the hash follows the definition in the module docstring
(a per-row Python reimplementation); and 1,000 keys spread evenly.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from zlib import crc32

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from velosql.runtime import routing
from velosql.runtime.routing import (
    NULL_HASH,
    column_hashes,
    round_robin,
    split,
    stable_partition_ids,
    sticky_partition_ids,
)

NAN = float("nan")
# A NaN with the sign bit set and a signalling NaN: other bit patterns GROUP BY puts in the NaN group.
NEG_NAN = -NAN
SIGNALLING_NAN = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000001))[0]

# Small pools so that keys repeat; each holds the values that are easy to get wrong.
KINDS = {
    "string": (pa.string(), ["", "a", "b", "1", "SYM0001", "é", None]),
    "large_string": (pa.large_string(), ["", "a", "1", "ключ", None]),
    "int64": (pa.int64(), [0, 1, -1, 2**40, -(2**63), 2**63 - 1, None]),
    "int8": (pa.int8(), [0, 1, -1, 127, -128, None]),
    "float64": (pa.float64(), [0.0, -0.0, NAN, NEG_NAN, SIGNALLING_NAN, 1.5, math.inf, -math.inf, None]),
    "bool": (pa.bool_(), [True, False, None]),
    "date32": (pa.date32(), [date(1970, 1, 1), date(1969, 12, 31), date(2024, 2, 29), None]),
    "timestamp": (pa.timestamp("us"), [datetime(2024, 1, 1), datetime(1960, 1, 1, 0, 0, 0, 1), None]),
}
REPRESENTATIONS = ["plain", "chunked", "dictionary", "chunked dictionary", "own dictionary"]


def canonical(value):
    """A Python value that is equal exactly when GROUP BY puts two values in one group."""
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else value + 0.0  # -0.0 + 0.0 is 0.0
    return value


def chunks_of(values: list, draw) -> list[list]:
    cuts = sorted(draw(st.lists(st.integers(0, len(values)), max_size=3)))
    bounds = [0, *cuts, len(values)]
    return [values[a:b] for a, b in zip(bounds, bounds[1:])]


def own_dictionary(values: list, pool: list, typ: pa.DataType, draw) -> pa.DictionaryArray:
    """A dictionary array whose dictionary has unused values, a duplicate and a NULL, in any order;
    a NULL row points at the NULL value or has a NULL index."""
    dictionary = draw(st.permutations([*pool, pool[0]]))
    indices = []
    for v in values:
        if v is None and draw(st.booleans()):
            indices.append(None)
        else:
            matches = [
                i
                for i, d in enumerate(dictionary)
                if (d is None) == (v is None) and canonical(d) == canonical(v)
            ]
            indices.append(draw(st.sampled_from(matches)))
    return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), pa.array(dictionary, typ))


def column(values: list, kind: str, representation: str, draw) -> pa.Array | pa.ChunkedArray:
    typ, pool = KINDS[kind]
    if representation == "plain":
        return pa.array(values, typ)
    if representation == "chunked":
        return pa.chunked_array([pa.array(c, typ) for c in chunks_of(values, draw)], typ)
    if representation == "dictionary":
        return pc.dictionary_encode(pa.array(values, typ))
    if representation == "chunked dictionary":
        # Each chunk with its own dictionary, as batches from different sources would have them.
        parts = [pc.dictionary_encode(pa.array(c, typ)) for c in chunks_of(values, draw)]
        return pa.chunked_array(parts, pa.dictionary(pa.int32(), typ))
    return own_dictionary(values, pool, typ, draw)


@st.composite
def key_values(draw, max_rows: int = 40) -> tuple[list[str], list[list]]:
    """The kinds of 1-3 key columns and each column's values."""
    rows = draw(st.integers(0, max_rows))
    kinds = draw(st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=3))
    values = [draw(st.lists(st.sampled_from(KINDS[k][1]), min_size=rows, max_size=rows)) for k in kinds]
    return kinds, values


def keyed_table(kinds: list[str], values: list[list], draw) -> pa.Table:
    """Key columns ``k0``, ``k1``, … in drawn representations, then ``row`` (the arrival position)."""
    rows = len(values[0])
    columns = {
        f"k{i}": column(v, kind, draw(st.sampled_from(REPRESENTATIONS)), draw)
        for i, (kind, v) in enumerate(zip(kinds, values))
    }
    return pa.table({**columns, "row": pa.array(range(rows), pa.int64())})


def key_names(kinds: list[str]) -> list[str]:
    return [f"k{i}" for i in range(len(kinds))]


# ---- stable_partition_ids ----------------------------------------------------------------------------


@settings(max_examples=examples(150), deadline=None)
@given(key_values(), st.integers(1, 8), st.data())
def test_rows_of_one_key_share_a_partition(kv, n, data):
    kinds, values = kv
    table = keyed_table(kinds, values, data.draw)
    ids = stable_partition_ids(table, key_names(kinds), n)
    assert ids.type == pa.int32() and len(ids) == table.num_rows and ids.null_count == 0
    partitions_of = defaultdict(set)
    for row, p in enumerate(ids.to_pylist()):
        assert 0 <= p < n
        partitions_of[tuple(canonical(v[row]) for v in values)].add(p)
    assert all(len(ps) == 1 for ps in partitions_of.values())


TEXT_TYPES = (
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_string_view,
    pa.types.is_binary,
    pa.types.is_large_binary,
    pa.types.is_binary_view,
    pa.types.is_fixed_size_binary,
)


@settings(max_examples=examples(150), deadline=None)
@given(key_values(), st.integers(1, 8), st.data())
def test_dictionary_text_keeps_values_and_partitions(kv, n, data):
    """Hash routing sends text keys dictionary-encoded: the same values, the same partitions."""
    kinds, values = kv
    table = keyed_table(kinds, values, data.draw)
    names = key_names(kinds)
    encoded = routing.dictionary_text(table, names)
    assert encoded.column_names == table.column_names
    for name in table.column_names:
        before, after = table.column(name), encoded.column(name)
        if any(is_text(before.type) for is_text in TEXT_TYPES):
            assert pa.types.is_dictionary(after.type) and after.num_chunks <= 1
            assert after.to_pylist() == before.to_pylist()
        else:  # untouched: the same type and bytes (NaN included)
            assert after.type == before.type
            assert [c.buffers() for c in after.chunks] == [c.buffers() for c in before.chunks]
    assert stable_partition_ids(encoded, names, n) == stable_partition_ids(table, names, n)


@settings(max_examples=examples(150), deadline=None)
@given(key_values(), st.integers(1, 8), st.data())
def test_ids_depend_on_the_values_only(kv, n, data):
    """The same rows in another order, another representation and another batch get the same ids."""
    kinds, values = kv
    ids = stable_partition_ids(keyed_table(kinds, values, data.draw), key_names(kinds), n).to_pylist()
    order = data.draw(st.permutations(range(len(ids))))
    shuffled = [[v[i] for i in order] for v in values]
    again = stable_partition_ids(keyed_table(kinds, shuffled, data.draw), key_names(kinds), n).to_pylist()
    assert again == [ids[i] for i in order]


@pytest.mark.parametrize(
    "arrays",
    [
        [pa.array([5, -1, None], t) for t in (pa.int8(), pa.int16(), pa.int32(), pa.int64())],
        [pa.array([5, 200, None], t) for t in (pa.uint8(), pa.int32(), pa.uint64())],
        [
            pa.array([0.0, -0.0, NAN, NEG_NAN, SIGNALLING_NAN, 1.5]),
            pa.array([0.0, 0.0, NAN, NAN, NAN, 1.5]),
            pa.array([-0.0, 0.0, SIGNALLING_NAN, NAN, NEG_NAN, 1.5], pa.float32()),
            pa.array([0.0, -0.0, NAN, NEG_NAN, SIGNALLING_NAN, 1.5]).cast(pa.float16()),
        ],
        [pa.array(["x", "", None], t) for t in (pa.string(), pa.large_string(), pa.string_view())],
        [pa.array([b"x", b"", None], t) for t in (pa.binary(), pa.large_binary(), pa.binary_view())],
        [
            pa.array([date(2024, 2, 29), date(1969, 12, 31), None], pa.date32()),
            pa.array([date(2024, 2, 29), date(1969, 12, 31), None], pa.date64()),
        ],
        [
            pa.array([datetime(2024, 1, 1, 12), datetime(1960, 5, 1), None], pa.timestamp(unit, tz))
            for unit in ("s", "ms", "us", "ns")
            for tz in (None, "UTC")
        ],
        [pa.array([time(12, 30, 1), time(0), None], t) for t in (pa.time32("s"), pa.time64("us"))],
        [pa.array([timedelta(seconds=3), timedelta(0), None], pa.duration(u)) for u in ("s", "ms", "ns")],
    ],
    ids=["signed", "unsigned", "float", "string", "binary", "date", "timestamp", "time", "duration"],
)
def test_equal_values_hash_equally_in_every_type(arrays):
    """Widths, units, time zones, string flavours, -0.0/0.0 and NaN payloads do not change a hash."""
    expected = column_hashes(arrays[0]).to_pylist()
    for a in arrays:
        assert column_hashes(a).to_pylist() == expected, a.type
        assert column_hashes(pc.dictionary_encode(a)).to_pylist() == expected, a.type


def test_kinds_of_values_hash_apart():
    """1, '1', b'1', TRUE, 1.0, day 1, 1 µs and 1 s are different GROUP BY values."""
    ones = [
        pa.array([1], pa.int64()),
        pa.array(["1"]),
        pa.array([b"1"]),
        pa.array([True]),
        pa.array([1.0]),
        pa.array([1], pa.int32()).cast(pa.date32()),
        pa.array([1_000_000_000], pa.timestamp("ns")),
        pa.array([1], pa.duration("s")),
        pa.array([1], pa.time32("s")),
        pa.array([Decimal("1")], pa.decimal128(5, 0)),
    ]
    hashes = [column_hashes(a)[0].as_py() for a in ones]
    assert len(set(hashes)) == len(ones)


def test_null_hashes_alike_in_every_type():
    nulls = [
        pa.nulls(2, t) for t in (pa.string(), pa.int64(), pa.float64(), pa.bool_(), pa.date32(), pa.null())
    ]
    nulls.append(pa.DictionaryArray.from_arrays(pa.array([0, None], pa.int32()), pa.array([None, "a"])))
    for a in nulls:
        assert column_hashes(a).to_pylist() == [NULL_HASH, NULL_HASH], a.type


def test_a_dictionary_larger_than_its_batch_routes_by_value():
    """A stream-wide dictionary: the batch uses three of its 10,000 values."""
    dictionary = pa.array([f"v{i}" for i in range(10_000)])
    shared = pa.DictionaryArray.from_arrays(pa.array([9_999, 3, None, 3], pa.int32()), dictionary)
    plain = pa.array(["v9999", "v3", None, "v3"])
    assert column_hashes(shared).to_pylist() == column_hashes(plain).to_pylist()


# A per-row Python reading of the hash defined in the routing module's docstring.
M64 = 2**64 - 1


def fmix64(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & M64
    return k ^ (k >> 33)


def reference_hash(kind: str, value) -> int:
    if value is None:
        return NULL_HASH
    bits = value & M64 if kind == "integer" else crc32(value.encode())
    return fmix64(bits ^ routing._SEEDS[kind].as_py())


@settings(max_examples=examples(50), deadline=None)
@given(
    st.lists(st.tuples(st.none() | st.integers(-(2**63), 2**63 - 1), st.none() | st.text()), max_size=30),
    st.integers(1, 64),
)
def test_hash_follows_its_definition(rows, n):
    """Checks the uint64 arithmetic too: fmix64 and the combination need wrapping multiplication."""
    table = pa.table(
        {"i": pa.array([i for i, _ in rows], pa.int64()), "s": pa.array([s for _, s in rows], pa.string())}
    )
    expected_i = [reference_hash("integer", i) for i, _ in rows]
    expected_s = [reference_hash("string", s) for _, s in rows]
    assert column_hashes(table.column("i")).to_pylist() == expected_i
    assert column_hashes(table.column("s")).to_pylist() == expected_s
    combined = [(((hi * 1000003) & M64) ^ hs) % n for hi, hs in zip(expected_i, expected_s)]
    assert stable_partition_ids(table, ["i", "s"], n).to_pylist() == combined


def fixed_ids() -> dict[str, list[int]]:
    """Ids of a fixed table with a column of every supported type, by several keys (also run in a
    subprocess by the stability test)."""
    rows = range(240)
    table = pa.table(
        {
            "s": pa.array([None if i % 11 == 0 else f"SYM{i % 37:04d}" for i in rows]),
            "i": pa.array([(i * 7919) % 101 - 50 for i in rows], pa.int64()),
            "u": pa.array([2**64 - 1 - i % 5 for i in rows], pa.uint64()),
            "f": pa.array([[0.0, -0.0, NAN, 1.5, None, -2.25][i % 6] for i in rows]),
            "b": pa.array([[True, False, None][i % 3] for i in rows]),
            "d": pa.array([date(2024, 1, 1) + timedelta(days=i % 9) for i in rows]),
            "ts": pa.array(
                [datetime(2024, 1, 1) + timedelta(seconds=i % 13) for i in rows], pa.timestamp("ms", "UTC")
            ),
            "t": pa.array([time(i % 24) for i in rows], pa.time64("us")),
            "dur": pa.array([timedelta(milliseconds=i % 7) for i in rows], pa.duration("ms")),
            "y": pa.array([bytes([i % 17]) for i in rows]),
            "dec": pa.array([Decimal(i % 19) / 4 for i in rows], pa.decimal128(10, 2)),
            "dict": pc.dictionary_encode(pa.array([f"k{i % 23}" for i in rows])),
        }
    )
    keys = [[name] for name in table.column_names] + [
        ["s", "i"],
        ["dict", "f", "ts", "b"],
        table.column_names,
    ]
    return {",".join(k): stable_partition_ids(table, k, 7).to_pylist() for k in keys}


def test_ids_are_the_same_in_another_process():
    """Another interpreter, with other hash seeds than this one, routes every key alike."""
    here = fixed_ids()
    root = Path(__file__).resolve().parents[1]
    code = "import json, test_routing; print(json.dumps(test_routing.fixed_ids()))"
    for seed in ("1", "2"):  # two seeds: at least one differs from this process's
        env = {
            **os.environ,
            "PYTHONHASHSEED": seed,
            "PYTHONPATH": os.pathsep.join([str(root / "tests"), str(root)]),
        }
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert json.loads(done.stdout) == here


@pytest.mark.parametrize(
    "table",
    [
        pa.table({"k": [f"SYM{i:04d}" for i in range(1000)]}),
        pa.table({"k": pa.array(range(1000), pa.int64())}),
        pa.table(
            {
                "k": [f"S{i % 10}" for i in range(1000)],
                "j": pa.array([i // 10 for i in range(1000)], pa.int32()),
            }
        ),
    ],
    ids=["string", "int64", "string+int32"],
)
def test_a_thousand_keys_spread_evenly(table):
    sizes = Counter(stable_partition_ids(table, table.column_names, 8).to_pylist())
    assert sorted(sizes) == list(range(8))
    assert all(80 <= size <= 170 for size in sizes.values()), sizes


def test_refuses_what_it_cannot_route():
    table = pa.table({"k": [1, 2], "l": [[1], [2]]})
    with pytest.raises(TypeError, match="list"):
        stable_partition_ids(table, ["l"], 2)
    with pytest.raises(ValueError, match="at least one key"):
        stable_partition_ids(table, [], 2)
    for n in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="positive integer"):
            stable_partition_ids(table, ["k"], n)


# ---- split, round_robin, sticky_partition_ids ----------------------------------------------------------


@settings(max_examples=examples(150), deadline=None)
@given(key_values(), st.integers(1, 8), st.data())
def test_split_keeps_every_row_once_in_arrival_order(kv, n, data):
    kinds, values = kv
    table = keyed_table(kinds, values, data.draw)
    if data.draw(st.booleans()):
        ids = stable_partition_ids(table, key_names(kinds), n)
    else:  # any ids, so that some partitions are empty and some hold everything
        ids = pa.array(
            data.draw(st.lists(st.integers(0, n - 1), min_size=len(table), max_size=len(table))), pa.int32()
        )
    parts = split(table, ids, n)
    assert len(parts) == n
    seen = []
    for p, part in enumerate(parts):
        assert part.schema == table.schema
        rows = part.column("row").to_pylist()
        assert rows == sorted(rows)
        assert all(ids[r].as_py() == p for r in rows)
        seen += rows
    assert sorted(seen) == list(range(table.num_rows))


def test_round_robin_spreads_whole_batches_evenly():
    for n in (1, 3, 8):
        counts = Counter(round_robin(b, n) for b in range(5 * n))
        assert counts == {p: 5 for p in range(n)}


def test_sticky_routes_by_source_partition():
    source = [[0, 5, -3], [None, 12, 7]]
    partitions = pa.chunked_array([pa.array(c, pa.int32()) for c in source])
    table = pa.table({"x": range(6), "_partition": partitions})
    for n in (1, 4):
        ids = sticky_partition_ids(table, "_partition", n)
        assert ids.type == pa.int32()
        # Python's floored %, as Arrow's modulo: a negative partition lands in 0..n-1. NULL goes to 0.
        assert ids.to_pylist() == [0 if p is None else p % n for c in source for p in c]
