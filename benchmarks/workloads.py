"""Deterministic, seeded benchmark workloads (see shared BENCHMARKS.md).

* **trades**: ``symbol`` (1,000 values ``SYM0000``…``SYM0999``), ``price`` float64 in [10, 1000),
  ``quantity`` int64 in [1, 1000], ``ts`` timestamp[ms] advancing 1 ms per row with ±50 ms jitter,
  ``_partition`` int32 = stable hash(symbol) mod 8 (CRC-32 of the UTF-8 symbol — stable across
  processes and runs, unlike Python's salted ``hash()``). Delivered as Arrow record batches of
  exactly 10,000 rows (the last one may be shorter), like a Kafka fetch.
* **1brc**: a ``station;temperature`` CSV without header, 413 stations, one decimal per temperature,
  written once to ``benchmarks/.data/`` (git-ignored) and reused.

Same seed, same rows: every generator draws from its own ``numpy.random.Generator``.
"""

from __future__ import annotations

import mmap
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

BATCH_ROWS = 10_000
N_SYMBOLS = 1_000
N_PARTITIONS = 8
TS_START_MS = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC
DATA_DIR = Path(os.environ.get("VELOSQL_BENCH_DATA", Path(__file__).resolve().parent / ".data"))

TRADES_SCHEMA = pa.schema(
    [
        ("symbol", pa.string()),
        ("price", pa.float64()),
        ("quantity", pa.int64()),
        ("ts", pa.timestamp("ms")),
        ("_partition", pa.int32()),
    ]
)


def stable_partition(key: str, n: int = N_PARTITIONS) -> int:
    """Stable hash of a key mod ``n``: CRC-32 of its UTF-8 bytes."""
    return zlib.crc32(key.encode("utf-8")) % n


def symbols(n: int = N_SYMBOLS) -> list[str]:
    return [f"SYM{i:04d}" for i in range(n)]


def trades_batches(
    rows: int, *, seed: int = 42, batch_rows: int = BATCH_ROWS, n_symbols: int = N_SYMBOLS
) -> Iterator[pa.RecordBatch]:
    """Yield the trades stream as record batches of ``batch_rows`` rows (lazily: any length)."""
    rng = np.random.default_rng(seed)
    names = pa.array(symbols(n_symbols), pa.string())
    parts = np.array([stable_partition(s) for s in names.to_pylist()], dtype=np.int32)
    done = 0
    while done < rows:
        n = min(batch_rows, rows - done)
        idx = rng.integers(0, n_symbols, n, dtype=np.int32)
        price = rng.uniform(10.0, 1000.0, n)
        quantity = rng.integers(1, 1001, n, dtype=np.int64)
        jitter = rng.integers(-50, 51, n, dtype=np.int64)
        ts = TS_START_MS + np.arange(done, done + n, dtype=np.int64) + jitter
        yield pa.RecordBatch.from_arrays(
            [
                names.take(pa.array(idx)),
                pa.array(price, pa.float64()),
                pa.array(quantity, pa.int64()),
                pa.array(ts, pa.int64()).cast(pa.timestamp("ms")),
                pa.array(parts[idx], pa.int32()),
            ],
            schema=TRADES_SCHEMA,
        )
        done += n


def trades(rows: int, *, seed: int = 42, batch_rows: int = BATCH_ROWS) -> list[pa.RecordBatch]:
    """The whole trades stream in memory, as a list of record batches."""
    return list(trades_batches(rows, seed=seed, batch_rows=batch_rows))


# ---- 1BRC ---------------------------------------------------------------------------------------

N_STATIONS = 413
_PREFIXES = (
    "Abu", "Ala", "Bel", "Ber", "Cal", "Cas", "Dal", "Dar", "El", "Fort", "Gal", "Ham", "Ist", "Jak",
    "Kar", "Kin", "La", "Lon", "Mar", "Mel", "Nor", "Oslo", "Pal", "Port", "Qui", "Rio", "San", "St",
    "Tam", "Tor", "Ula", "Val", "Win", "Yar", "Zan", "Zur",
)  # fmt: skip
_SUFFIXES = ("", "ton", "burg", "ville", " City", "abad", "grad", "polis", "ford", "holm", "mouth", "stad")


def stations(seed: int = 7) -> tuple[list[str], np.ndarray]:
    """413 distinct station names and each one's mean temperature (°C)."""
    rng = np.random.default_rng(seed)
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < N_STATIONS:
        name = f"{_PREFIXES[rng.integers(len(_PREFIXES))]}{_SUFFIXES[rng.integers(len(_SUFFIXES))]}"
        if name in seen:
            name = f"{name} {len(names)}"
        seen.add(name)
        names.append(name)
    means = np.round(rng.uniform(-10.0, 30.0, N_STATIONS), 1)
    return names, means


def brc_path(rows: int) -> Path:
    return DATA_DIR / f"1brc_{rows}.csv"


def ensure_1brc(rows: int = 10_000_000, *, seed: int = 1, chunk: int = 1_000_000) -> Path:
    """Write (once) a ``station;temperature`` CSV of ``rows`` rows; return its path."""
    path = brc_path(rows)
    if path.exists():
        return path
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    names, means = stations()
    name_arr = pa.array(names, pa.string())
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    opts = pacsv.WriteOptions(include_header=False, delimiter=";", quoting_style="none")
    schema = pa.schema([("station", pa.string()), ("temperature", pa.string())])
    with pacsv.CSVWriter(str(tmp), schema, write_options=opts) as writer:
        done = 0
        while done < rows:
            n = min(chunk, rows - done)
            idx = rng.integers(0, N_STATIONS, n)
            # tenths of a degree as integers, clipped to 1BRC's [-99.9, 99.9]; formatted with one
            # decimal exactly (e.g. "-3.0", "12.7")
            tenths = np.clip(np.rint(means[idx] * 10 + rng.normal(0.0, 100.0, n)), -999, 999).astype(np.int64)
            sign = np.where(tenths < 0, "-", "")
            a = np.abs(tenths)
            text = np.char.add(
                np.char.add(np.char.add(sign, (a // 10).astype(str)), "."), (a % 10).astype(str)
            )
            writer.write_table(
                pa.table(
                    {"station": name_arr.take(pa.array(idx)), "temperature": pa.array(text)}, schema=schema
                )
            )
            done += n
    tmp.replace(path)
    return path


def warm_memory(nbytes: int) -> None:
    """Touch ``nbytes`` of fresh memory and free it, so that the run after it finds memory the
    hypervisor has backed. This VM (virtio-balloon free page reporting) hands memory freed for a
    couple of seconds back to the host, and faulting it in again cost 0.3-2 s per GB in the same
    minute (measured with this loop). Without it, whichever run allocated first after a pause paid
    that: V2's workers write their output to new pages in /dev/shm, V1 reuses what its allocators
    kept from the run before, and V2:2 Q_filter at 50M rows took 1.0-2.1 s from one run to the next."""
    if nbytes <= 0:
        return
    area = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        for offset in range(0, nbytes, mmap.PAGESIZE):
            area[offset] = 1
    finally:
        area.close()
