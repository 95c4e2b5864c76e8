"""Routing for the V2 processor: which worker process gets which rows of a micro-batch.

The router runs in the job's process and splits each Arrow micro-batch into one sub-batch per worker.
Grouped queries route by a hash of the GROUP BY key, so that every row of a group reaches the same
worker. Other queries route whole batches round-robin, or keep each source partition on one worker
(sticky), so that the order within a source partition survives.

The key hash must be the same in every process, run, machine and Python version: a job restored from a
checkpoint, or a router restarted next to running workers, must send a key to where its state already
is. Python's ``hash()`` is salted per process and Arrow's internal hashes may change between releases,
so the hash is defined here, value by value:

- NULL hashes to :data:`NULL_HASH`, whatever the column type.
- Every other value becomes 64 bits, then ``fmix64(bits ^ seed of its kind)`` (MurmurHash3's
  finaliser; the seed keeps the integer 1, TRUE and the string '1' apart):

  - integers: their value, whatever the width or signedness (int32 7 and int64 7 are one value);
  - floats: their float64 bits, ``-0.0`` read as ``0.0`` and every NaN as one NaN, because GROUP BY
    puts each of those in one group;
  - booleans 0/1; dates days since 1970; timestamps (whatever the time zone), times and durations
    nanoseconds, so that a change of unit between runs keeps the routing;
  - strings, binaries and decimals: the CRC-32 of their UTF-8, their bytes, their decimal text.

- A dictionary column hashes as its values: the indices mean nothing outside their batch.
- Several key columns combine left to right as ``h = h * 1000003 ^ next`` modulo 2**64, and the
  row's partition is ``h % n``.

Numbers are hashed in vectorised uint64 arithmetic over the whole column (Arrow's non-checked
``multiply`` wraps, as the mixing needs). Strings are dictionary-encoded first, so Python computes one
CRC per distinct value of the batch and ``take`` spreads the hashes over the rows. On 262,144 rows:
~16 ns a row for a 1,000-value string key, ~11 for an int64 key, ~25 for both together, ~200 for a
string key whose every value differs (where Python's per-value work dominates).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from zlib import crc32

import pyarrow as pa
import pyarrow.compute as pc

from ..connectors.base import int_scalar

__all__ = [
    "NULL_HASH",
    "column_hashes",
    "dictionary_text",
    "round_robin",
    "split",
    "stable_partition_ids",
    "sticky_partition_ids",
]

NULL_HASH = 0x9E3779B97F4A7C15
"""The hash of NULL in every column type (the 64-bit golden ratio: any fixed constant would do)."""

_U64 = pa.uint64()
_MULTIPLIER = int_scalar(1000003, _U64)
_FMIX_1 = int_scalar(0xFF51AFD7ED558CCD, _U64)
_FMIX_2 = int_scalar(0xC4CEB9FE1A85EC53, _U64)
_SHIFT = int_scalar(33, _U64)
# Arbitrary but fixed for good (SHA-512's and SHA-384's initial values): changing one would move every
# key of its kind to another worker, away from the state restored for it.
_SEEDS = {
    kind: int_scalar(seed, _U64)
    for kind, seed in {
        "integer": 0x6A09E667F3BCC908,
        "float": 0xBB67AE8584CAA73B,
        "boolean": 0x3C6EF372FE94F82B,
        "date": 0xA54FF53A5F1D36F1,
        "timestamp": 0x510E527FADE682D1,
        "time": 0x9B05688C2B3E6C1F,
        "duration": 0x1F83D9ABFB41BD6B,
        "string": 0x5BE0CD19137E2179,
        "binary": 0xCBBB9D5DC1059ED8,
        "decimal": 0x629A292A367CD507,
    }.items()
}
_NANOS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_AS_BINARY = {
    pa.string().id: pa.binary(),
    pa.large_string().id: pa.large_binary(),
    pa.string_view().id: pa.binary_view(),
}
# Below this many partitions one filter per partition beats a sort and a take (see split()).
_FILTER_BELOW = 4


def stable_partition_ids(table: pa.Table, keys: list[str], n: int) -> pa.Array:
    """The partition (0..n-1) of each row, by a stable hash of the key columns ``keys``.

    Rows with equal keys get equal ids in every batch, process and run, also when one batch carries a
    key column dictionary-encoded and another plainly. The hash is defined in the module docstring.

    Raises:
        ValueError: ``n`` is below 1, or ``keys`` is empty (a global aggregate has no key to keep
            together: route it with :func:`round_robin`).
        TypeError: a key column's type has no stable hash here (lists, structs, maps, unions).
    """
    _check_n(n)
    if not keys:
        raise ValueError("stable_partition_ids needs at least one key column; route by round_robin instead")
    h = column_hashes(table.column(keys[0]))
    for name in keys[1:]:
        h = pc.bit_wise_xor(pc.multiply(h, _MULTIPLIER), column_hashes(table.column(name)))
    return pc.modulo(h, int_scalar(n, _U64)).cast(pa.int32())


def column_hashes(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The stable uint64 hash of each value of one column (defined in the module docstring)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()  # also unifies the dictionaries of dictionary chunks
    t = column.type
    if pa.types.is_dictionary(t):
        if len(column.dictionary) > len(column) and _text_kind(t.value_type):
            # A dictionary shared by a whole stream may be far larger than one batch; hashing it
            # would spend Python on values no row uses.
            column = pc.dictionary_encode(column.dictionary_decode())
        return _spread(column_hashes(column.dictionary), column.indices)
    kind = _number_kind(t)
    if kind is not None:
        return _mix(_canonical_bits(column, kind), kind)
    if _text_kind(t):
        # Nulls masked rather than encoded (null_encoding="encode"): pyarrow 26 encodes a NULL of a
        # string_view column as "", which would route NULL with the empty string.
        encoded = pc.dictionary_encode(column)
        return _spread(_text_hashes(encoded.dictionary), encoded.indices)
    if pa.types.is_null(t):
        return pa.repeat(int_scalar(NULL_HASH, _U64), len(column))
    raise TypeError(
        f"cannot route by a key of type {t}: stable hashes exist for strings, binaries, numbers, "
        "booleans, decimals, dates, times, timestamps, durations and dictionaries of those"
    )


def hashable(t: pa.DataType) -> bool:
    """Whether :func:`column_hashes` has a stable hash for values of type ``t``."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return _number_kind(t) is not None or _text_kind(t) is not None or pa.types.is_null(t)


def dictionary_text(table: pa.Table, names: Sequence[str]) -> pa.Table:
    """``table`` with its columns ``names`` that hold strings or binaries dictionary-encoded (one
    chunk each); other columns as they are. Their hashes do not change (a dictionary column
    hashes as its values), and so neither do their partitions."""
    for name in names:
        i = table.schema.get_field_index(name)
        column = table.column(i)
        if _text_kind(column.type) in ("string", "binary"):
            table = table.set_column(i, name, pc.dictionary_encode(column.combine_chunks()))
    return table


def split(table: pa.Table, ids: pa.Array, n: int) -> list[pa.Table]:
    """The rows of ``table`` for each of the ``n`` partitions, each in arrival order.

    ``ids`` holds each row's partition (0..n-1), as :func:`stable_partition_ids` returns it. Measured
    on 262,144 rows of six columns (string key, int64, float64, timestamp, ``_partition``, ``_offset``):
    one ``filter`` per partition takes 3.0, 3.8, 4.4 ms for n = 2, 3, 4 and ~0.5 ms more for each
    further partition (every filter reads every row), while a stable sort of ``ids``, one ``take``
    and zero-copy slices take 4.0-4.7 ms for any n from 2 to 8. Hence filters below 4 partitions
    and the sort from 4 on, where they tie (also on a two-column int table: 2.5 vs 2.2 ms).
    """
    _check_n(n)
    if len(ids) != table.num_rows:
        raise ValueError(f"split got {len(ids)} partition ids for {table.num_rows} rows")
    if n == 1:
        return [table]
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if n < _FILTER_BELOW:
        return [table.filter(pc.equal(ids, int_scalar(p, ids.type))) for p in range(n)]
    order = pc.sort_indices(ids)  # stable: rows of one partition keep their arrival order
    runs = pc.run_end_encode(ids.take(order))  # one run per non-empty partition, in partition order
    ends = [0] * (n + 1)
    for p, end in zip(runs.values.to_pylist(), runs.run_ends.to_pylist()):
        ends[p + 1] = end
    for p in range(n):  # an empty partition ends where the one before it ended
        ends[p + 1] = max(ends[p + 1], ends[p])
    ordered = table.take(order)
    return [ordered.slice(ends[p], ends[p + 1] - ends[p]) for p in range(n)]


def round_robin(batch_number: int, n: int) -> int:
    """The partition of a whole batch when no rows need to stay together: batch k goes to k % n."""
    _check_n(n)
    return batch_number % n


def sticky_partition_ids(table: pa.Table, partition_column: str, n: int) -> pa.Array:
    """The partition of each row by its source partition (``partition_column``, normally ``_partition``)
    modulo ``n``: every row of one source partition reaches one worker, in arrival order.

    A NULL source partition goes to partition 0.
    """
    _check_n(n)
    column = table.column(partition_column).combine_chunks().cast(pa.int64())
    ids = pc.modulo(column, int_scalar(n))  # floored: a negative partition still lands in 0..n-1
    return pc.fill_null(ids, int_scalar(0, ids.type)).cast(pa.int32())


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of partitions must be a positive integer, got {n!r}")


def _number_kind(t: pa.DataType) -> str | None:
    """The kind of a type whose values hash as 64-bit numbers, or None."""
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamp"
    if pa.types.is_time(t):
        return "time"
    if pa.types.is_duration(t):
        return "duration"
    return None


def _text_kind(t: pa.DataType) -> str | None:
    """The kind of a type whose values hash by CRC-32 of their bytes, or None."""
    if t.id in _AS_BINARY:
        return "string"
    if (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_binary_view(t)
        or pa.types.is_fixed_size_binary(t)
    ):
        return "binary"
    if pa.types.is_decimal(t):
        return "decimal"
    return None


def _canonical_bits(values: pa.Array, kind: str) -> pa.Array:
    """The canonical 64 bits of each number, as uint64 (nulls stay null)."""
    t = values.type
    if kind == "integer":
        # Sign-extends; a uint64 keeps its bits, so it agrees with int64 below 2**63.
        return values.cast(_U64, safe=False)
    if kind == "float":
        x = values.cast(pa.float64())
        x = pc.if_else(pc.equal(x, 0.0), 0.0, x)
        x = pc.if_else(pc.is_nan(x), float("nan"), x)
        return x.view(pa.int64()).view(_U64)
    if kind == "boolean":
        return values.cast(_U64)
    if kind == "date":
        if pa.types.is_date64(t):
            values = values.cast(pa.date32())
        return values.view(pa.int32()).cast(pa.int64()).view(_U64)
    raw = values.view(pa.int32() if t.bit_width == 32 else pa.int64()).cast(pa.int64())
    if _NANOS[t.unit] != 1:
        # Non-checked, so it wraps (harmlessly, for hashing) only beyond the year 2262.
        raw = pc.multiply(raw, int_scalar(_NANOS[t.unit]))
    return raw.view(_U64)


def _mix(bits: pa.Array, kind: str) -> pa.Array:
    """fmix64(bits ^ seed of ``kind``) of each value, NULL_HASH for a null, in vectorised uint64."""
    h = pc.bit_wise_xor(bits, _SEEDS[kind])
    h = pc.bit_wise_xor(h, pc.shift_right(h, _SHIFT))
    h = pc.multiply(h, _FMIX_1)
    h = pc.bit_wise_xor(h, pc.shift_right(h, _SHIFT))
    h = pc.multiply(h, _FMIX_2)
    h = pc.bit_wise_xor(h, pc.shift_right(h, _SHIFT))
    return pc.fill_null(h, NULL_HASH) if h.null_count else h


def _text_hashes(values: pa.Array) -> pa.Array:
    """The hash of each string, binary or decimal: Python runs once per value, so callers pass a
    batch's distinct values only.

    CRC-32 rather than a cryptographic digest: ~45 ns a value where BLAKE2b takes ~325, which shows on
    keys with many distinct values per batch. Its 32 bits spread keys over workers as well, and a
    collision only sends two keys to the same worker.
    """
    kind = _text_kind(values.type)
    if kind == "decimal":
        payloads = [None if v is None else str(v).encode() for v in values.to_pylist()]
    elif kind == "string":
        # The binary view of a string is zero-copy, and converts to bytes without decoding UTF-8.
        payloads = values.cast(_AS_BINARY[values.type.id]).to_pylist()
    else:
        payloads = values.to_pylist()
    crcs = array("I", [0 if p is None else crc32(p) for p in payloads])
    # From the buffer, not pa.array(list): pyarrow's first conversion of Python values imports pandas.
    bits = pa.Array.from_buffers(pa.uint32(), len(crcs), [None, pa.py_buffer(crcs)]).cast(_U64)
    h = _mix(bits, kind)
    if values.null_count:  # only a dictionary column's own dictionary may hold a NULL
        h = pc.if_else(values.is_null(), int_scalar(NULL_HASH, _U64), h)
    return h


def _spread(value_hashes: pa.Array, indices: pa.Array) -> pa.Array:
    """Each row's hash from its dictionary index; a NULL index hashes as NULL."""
    h = value_hashes.take(indices)
    return pc.fill_null(h, NULL_HASH) if h.null_count else h
