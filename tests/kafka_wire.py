"""A partition's raw log, read over the Kafka protocol, with each record's transaction status.

Why this exists: Tansu 0.6, the test broker, leaves aborted transactions out of its fetch responses
(the ``aborted_transactions`` list a read_committed client relies on is always empty), so a
confluent-kafka consumer with ``isolation.level = read_committed`` still returns the records of
aborted transactions. Exactly-once tests therefore read the log here, with read_uncommitted, and
decide each record's fate from the transaction markers (control batches) in the log itself:

* a record outside a transaction is committed;
* a transactional record is committed or aborted by the next COMMIT or ABORT marker of its
  producer id, and open while no marker follows it.

Only the standard library: sockets and struct for the protocol, gzip for gzip-compressed batches
(other codecs are refused: the producing test should set ``compression.type = none``). The fetch
goes to the partition's leader, found with a Metadata request to the first answering bootstrap
server; every request uses a version the broker lists in its ApiVersions answer (Fetch 4..11, the
non-flexible versions with record batches v2; Metadata 4). One deadline bounds the whole read. An
error code from the broker raises :class:`KafkaWireError` at once; the one retry is of a fetch
answered without the partition, which is how Tansu says "nothing within max_wait_ms".
"""

from __future__ import annotations

import enum
import gzip
import socket
import struct
import time
from dataclasses import dataclass

__all__ = ["KafkaWireError", "LogRecord", "Record", "Status", "committed_records", "read_log"]

_API_VERSIONS, _METADATA, _FETCH = 18, 3, 1
_FETCH_VERSIONS = range(4, 12)  # v12 and later are flexible (compact strings, tagged fields)
_METADATA_VERSION = 4  # the oldest one Kafka 4 still answers; Tansu 0.6 answers 0..12
_ERRORS = {
    1: "OFFSET_OUT_OF_RANGE",
    3: "UNKNOWN_TOPIC_OR_PARTITION",
    5: "LEADER_NOT_AVAILABLE",
    6: "NOT_LEADER_OR_FOLLOWER",
    7: "REQUEST_TIMED_OUT",
    29: "TOPIC_AUTHORIZATION_FAILED",
    35: "UNSUPPORTED_VERSION",
}
_CODECS = {1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
_TRANSACTIONAL, _CONTROL, _LOG_APPEND_TIME = 0x10, 0x20, 0x08


class KafkaWireError(RuntimeError):
    """The broker answered with an error, or the log holds something this reader does not decode."""


class Status(enum.Enum):
    """A record's fate, as the transaction markers in the log tell it."""

    COMMITTED = "committed"  # outside a transaction, or followed by its producer's COMMIT marker
    ABORTED = "aborted"  # followed by its producer's ABORT marker
    OPEN = "open"  # transactional, and no marker of its producer follows it yet


@dataclass(frozen=True)
class Record:
    """A data record as a consumer sees it (control records are never ``Record`` s)."""

    offset: int
    timestamp: int  # milliseconds since the epoch
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


@dataclass(frozen=True)
class LogRecord:
    """A data record with its status and the producer id of its batch (-1 outside transactions)."""

    record: Record
    status: Status
    producer_id: int


def committed_records(brokers: str, topic: str, partition: int, timeout: float = 10.0) -> list[Record]:
    """The records a correct read_committed consumer returns from the partition, in offset order."""
    return [e.record for e in read_log(brokers, topic, partition, timeout) if e.status is Status.COMMITTED]


def read_log(
    brokers: str,
    topic: str,
    partition: int,
    timeout: float = 10.0,
    *,
    max_bytes: int = 1 << 20,
    live: bool = False,
) -> list[LogRecord]:
    """Every data record of the partition, up to its high watermark, in offset order, with its status.

    Args:
        brokers: ``bootstrap.servers``, ``host:port`` pairs separated by commas.
        topic: the topic.
        partition: the partition.
        timeout: seconds for the whole read; a slower broker raises :class:`TimeoutError`.
        max_bytes: the most bytes asked for in one fetch; the log is fetched in as many fetches as
            it takes, each from the offset after the previous one's last batch.
        live: the log is still being written: read as far as the broker gives whole batches
            (below the high watermark, it may have none to give while a transaction is open)
            instead of raising.

    Raises:
        KafkaWireError: the broker answered with an error, or a batch is not decodable here (a
            compression other than gzip, a message format older than v2, a bad CRC).
    """
    deadline = time.monotonic() + timeout
    where = f"{topic}/{partition}"
    with _leader(brokers, topic, partition, deadline) as conn:
        batches = _fetch_all(conn, topic, partition, max_bytes, live)
    return _statuses(batches, where)


# --- transactions -------------------------------------------------------------------------------


@dataclass
class _Batch:
    base_offset: int
    last_offset: int
    producer_id: int
    transactional: bool
    control: bool
    records: list[Record]


def _statuses(batches: list[_Batch], where: str) -> list[LogRecord]:
    """Settle each transactional record by the next marker of its producer id."""
    log: list[LogRecord] = []
    pending: dict[int, list[int]] = {}  # producer id -> indexes in log of its open records
    for batch in batches:
        if batch.control:
            for marker in batch.records:
                status = _marker_status(marker, where)
                for i in pending.pop(batch.producer_id, []):
                    log[i] = LogRecord(log[i].record, status, batch.producer_id)
            continue
        for record in batch.records:
            if batch.transactional:
                pending.setdefault(batch.producer_id, []).append(len(log))
                log.append(LogRecord(record, Status.OPEN, batch.producer_id))
            else:
                log.append(LogRecord(record, Status.COMMITTED, -1))
    return log


def _marker_status(marker: Record, where: str) -> Status:
    """A control record's key is (version int16, type int16): type 0 aborts, 1 commits."""
    if marker.key is None or len(marker.key) < 4:
        raise KafkaWireError(f"{where}@{marker.offset}: a control record with the key {marker.key!r}")
    kind = struct.unpack_from(">hh", marker.key)[1]
    if kind not in (0, 1):
        raise KafkaWireError(f"{where}@{marker.offset}: control record type {kind}; expected 0 or 1")
    return Status.COMMITTED if kind == 1 else Status.ABORTED


# --- fetching -----------------------------------------------------------------------------------


def _fetch_all(conn: _Connection, topic: str, partition: int, max_bytes: int, live: bool) -> list[_Batch]:
    """Fetch from offset 0 (or the log start) to the high watermark, batch after batch; ``live``:
    up to where the broker has batches to give (a log being written, transactions open)."""
    version = conn.version(_FETCH, _FETCH_VERSIONS)
    where = f"{topic}/{partition}"
    batches: list[_Batch] = []
    offset = 0
    max_wait = 10  # ms: what an empty partition costs (Tansu waits it out even with min_bytes 0)
    while True:
        answer = _fetch(conn, version, topic, partition, offset, max_wait, max_bytes)
        if answer is None:
            # Tansu answers a fetch that finds nothing within max_wait_ms with no partitions at
            # all (always so at 0 ms): ask again, waiting longer, until the deadline.
            max_wait *= 2
            continue
        high_watermark, log_start, records = answer
        if high_watermark is None:  # OFFSET_OUT_OF_RANGE at 0: the log starts later
            if offset != 0 or log_start <= 0:
                raise KafkaWireError(f"{where}@{offset}: OFFSET_OUT_OF_RANGE (log start {log_start})")
            offset = log_start
            continue
        if offset >= high_watermark:
            return batches
        got = _decode_batches(records, where)
        if not got and live:
            return batches  # the rest is being written
        if not got:
            # Brokers return at least one whole batch whatever max_bytes says (KIP-74); one that
            # does not would fetch the same offset forever.
            raise KafkaWireError(
                f"{where}@{offset}: the fetch returned no whole record batch below the high watermark "
                f"{high_watermark} ({len(records)} bytes, max_bytes {max_bytes})"
            )
        for batch in got:
            if batch.last_offset < offset:
                continue  # a batch fetched before; a broker may resend it
            batch.records = [r for r in batch.records if r.offset >= offset]
            batches.append(batch)
            offset = batch.last_offset + 1


def _fetch(
    conn: _Connection, version: int, topic: str, partition: int, offset: int, max_wait: int, max_bytes: int
) -> tuple[int | None, int, bytes] | None:
    """One Fetch (read_uncommitted): (high watermark or None if out of range, log start, records),
    or None if the answer leaves the partition out."""
    # replica id (a consumer's), max wait, min bytes, max bytes, isolation level (read_uncommitted)
    body = struct.pack(">iiiib", -1, max_wait, 0, max_bytes, 0)
    if version >= 7:
        body += struct.pack(">ii", 0, -1)  # no fetch session
    body += struct.pack(">i", 1) + _string(topic) + struct.pack(">ii", 1, partition)
    if version >= 9:
        body += struct.pack(">i", -1)  # current leader epoch: unknown
    body += struct.pack(">q", offset)
    if version >= 5:
        body += struct.pack(">q", -1)  # log start offset: only followers send it
    body += struct.pack(">i", max_bytes)
    if version >= 7:
        body += struct.pack(">i", 0)  # no forgotten topics
    if version >= 11:
        body += _string("")  # rack id
    r = _Reader(conn.request(_FETCH, version, body))
    r.int32()  # throttle time
    if version >= 7:
        _check(r.int16(), f"fetch of {topic}/{partition}")
        r.int32()  # session id
    for _ in range(r.int32()):
        name = r.string()
        for _ in range(r.int32()):
            index, error, high_watermark = r.int32(), r.int16(), r.int64()
            r.int64()  # last stable offset
            log_start = r.int64() if version >= 5 else -1
            for _ in range(max(r.int32(), 0)):  # aborted transactions: what Tansu leaves empty
                r.int64(), r.int64()
            if version >= 11:
                r.int32()  # preferred read replica
            records = r.blob() or b""
            if (name, index) != (topic, partition):
                continue
            if error == 1:
                return None, log_start, b""
            _check(error, f"fetch of {topic}/{partition}@{offset}")
            return high_watermark, log_start, records
    return None


# --- record batches v2 --------------------------------------------------------------------------


def _decode_batches(data: bytes, where: str) -> list[_Batch]:
    """The whole batches in ``data``; a batch cut short at the end (the fetch's size limit) is left."""
    batches = []
    pos = 0
    while pos + 12 <= len(data):
        base_offset, length = struct.unpack_from(">qi", data, pos)
        end = pos + 12 + length
        if end > len(data):
            break
        batches.append(_decode_batch(data[pos:end], base_offset, f"{where}@{base_offset}"))
        pos = end
    return batches


def _decode_batch(data: bytes, base_offset: int, where: str) -> _Batch:
    magic = data[16]
    if magic != 2:
        raise KafkaWireError(f"{where}: a message set of format v{magic}; only record batches v2 are read")
    crc = struct.unpack_from(">I", data, 17)[0]
    if _crc32c(data, 21) != crc:
        raise KafkaWireError(f"{where}: the record batch fails its CRC-32C check")
    r = _Reader(data, 21)
    attributes, last_delta = r.int16(), r.int32()
    base_timestamp, max_timestamp = r.int64(), r.int64()
    producer_id = r.int64()
    r.int16(), r.int32()  # producer epoch, base sequence
    count = r.int32()
    codec = attributes & 0x07
    if codec == 1:
        r = _Reader(gzip.decompress(data[r.pos :]))
    elif codec:
        raise KafkaWireError(
            f"{where}: a batch compressed with {_CODECS.get(codec, codec)}; this reader decodes "
            "uncompressed and gzip batches only: produce with compression.type = none"
        )
    # With LogAppendTime the broker's time, stamped once for the batch, is every record's timestamp.
    append_time = max_timestamp if attributes & _LOG_APPEND_TIME else None
    records = [_decode_record(r, base_offset, base_timestamp, append_time) for _ in range(count)]
    return _Batch(
        base_offset,
        base_offset + last_delta,
        producer_id,
        bool(attributes & _TRANSACTIONAL),
        bool(attributes & _CONTROL),
        records,
    )


def _decode_record(r: _Reader, base_offset: int, base_timestamp: int, append_time: int | None) -> Record:
    end = r.varint()  # the record's length
    end += r.pos
    r.int8()  # attributes: unused
    timestamp = base_timestamp + r.varint()
    offset = base_offset + r.varint()
    key, value = r.varbytes(), r.varbytes()
    headers = []
    for _ in range(r.varint()):
        name = r.varbytes() or b""
        headers.append((name.decode(), r.varbytes()))
    r.pos = end
    return Record(offset, timestamp if append_time is None else append_time, key, value, headers)


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # Castagnoli, reflected
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def _crc32c(data: bytes, start: int) -> int:
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in memoryview(data)[start:]:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --- the connection -----------------------------------------------------------------------------


class _Connection:
    """One socket to one broker, requests answered in order, the broker's API versions known."""

    def __init__(self, host: str, port: int, deadline: float):
        self.deadline = deadline
        self.sock = socket.create_connection((host, port), timeout=self._left())
        self.address = f"{host}:{port}"
        self.correlation = 0
        r = _Reader(self.request(_API_VERSIONS, 0, b""))
        _check(r.int16(), f"ApiVersions from {self.address}")
        self.versions = {}
        for _ in range(r.int32()):
            key, low, high = r.int16(), r.int16(), r.int16()
            self.versions[key] = range(low, high + 1)

    def __enter__(self) -> _Connection:
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("reading the Kafka log took longer than its timeout")
        return left

    def version(self, api: int, wanted: range) -> int:
        """The highest of ``wanted`` the broker answers."""
        both = [v for v in wanted if v in self.versions.get(api, ())]
        if not both:
            raise KafkaWireError(
                f"{self.address} answers API {api} in versions {self.versions.get(api)}; this reader "
                f"speaks {wanted.start}..{wanted.stop - 1}"
            )
        return both[-1]

    def request(self, api: int, version: int, body: bytes) -> bytes:
        """Send a request (header v1) and return its response after the correlation id (header v0)."""
        self.correlation += 1
        message = struct.pack(">hhi", api, version, self.correlation) + _string("velosql-tests") + body
        self.sock.settimeout(self._left())
        self.sock.sendall(struct.pack(">i", len(message)) + message)
        size = struct.unpack(">i", self._read(4))[0]
        response = self._read(size)
        correlation = struct.unpack_from(">i", response)[0]
        if correlation != self.correlation:
            raise KafkaWireError(f"{self.address} answered request {correlation}, not {self.correlation}")
        return response[4:]

    def _read(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            self.sock.settimeout(self._left())
            chunk = self.sock.recv_into(view[got:])
            if not chunk:
                raise KafkaWireError(f"{self.address} closed the connection")
            got += chunk
        return bytes(buf)


def _leader(brokers: str, topic: str, partition: int, deadline: float) -> _Connection:
    """A connection to the partition's leader, found through the first bootstrap server that answers."""
    errors = []
    for address in brokers.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            conn = _Connection(host.strip("[]"), int(port), deadline)
        except OSError as exc:
            errors.append(f"{address}: {exc}")
            continue
        with conn:
            conn.version(_METADATA, range(_METADATA_VERSION, _METADATA_VERSION + 1))
            body = struct.pack(">i", 1) + _string(topic) + b"\x00"  # no auto-creation
            host, port = _leader_address(_Reader(conn.request(_METADATA, 4, body)), topic, partition)
        return _Connection(host, port, deadline)
    raise KafkaWireError(f"no bootstrap server answered: {'; '.join(errors)}")


def _leader_address(r: _Reader, topic: str, partition: int) -> tuple[str, int]:
    """Parse a Metadata v4 response down to the leader of one partition."""
    r.int32()  # throttle time
    nodes = {}
    for _ in range(r.int32()):
        node, host, port = r.int32(), r.string(), r.int32()
        r.string()  # rack
        nodes[node] = (host, port)
    r.string(), r.int32()  # cluster id, controller id
    for _ in range(r.int32()):
        error, name = r.int16(), r.string()
        r.int8()  # internal
        for _ in range(r.int32()):
            p_error, index, leader = r.int16(), r.int32(), r.int32()
            for _ in range(2):  # replicas, in-sync replicas
                for _ in range(r.int32()):
                    r.int32()
            if name == topic and index == partition:
                _check(p_error, f"metadata of {topic}/{partition}")
                if leader not in nodes:
                    raise KafkaWireError(f"{topic}/{partition} has no leader (leader id {leader})")
                return nodes[leader]
        if name == topic:
            _check(error, f"metadata of {topic}")
    raise KafkaWireError(f"the metadata lists no partition {partition} of {topic}")


# --- primitive encoding -------------------------------------------------------------------------


def _string(s: str) -> bytes:
    data = s.encode()
    return struct.pack(">h", len(data)) + data


def _check(error: int, what: str) -> None:
    if error:
        raise KafkaWireError(f"{what}: error {error} ({_ERRORS.get(error, 'see the Kafka protocol')})")


class _Reader:
    """Big-endian fields and zigzag varints from a buffer, left to right."""

    def __init__(self, data: bytes, pos: int = 0):
        self.data = data
        self.pos = pos

    def _unpack(self, fmt: str, size: int) -> int:
        value = struct.unpack_from(fmt, self.data, self.pos)[0]
        self.pos += size
        return value

    def int8(self) -> int:
        return self._unpack(">b", 1)

    def int16(self) -> int:
        return self._unpack(">h", 2)

    def int32(self) -> int:
        return self._unpack(">i", 4)

    def int64(self) -> int:
        return self._unpack(">q", 8)

    def string(self) -> str | None:
        n = self.int16()
        return None if n < 0 else self._take(n).decode()

    def blob(self) -> bytes | None:
        n = self.int32()
        return None if n < 0 else self._take(n)

    def varint(self) -> int:
        shift = result = 0
        while True:
            byte = self.data[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return (result >> 1) ^ -(result & 1)
            shift += 7

    def varbytes(self) -> bytes | None:
        n = self.varint()
        return None if n < 0 else self._take(n)

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise KafkaWireError(
                f"a field of {n} bytes runs past the end of its {len(self.data)}-byte buffer"
            )
        value = self.data[self.pos : self.pos + n]
        self.pos += n
        return bytes(value)
