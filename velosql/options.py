"""Every WITH option velosql accepts, declared once as data.

Validation (the planner), ``EXPLAIN``, ``velosql options`` and the SQL reference in ``docs/`` all come
from :data:`OPTIONS`; ``tests/test_docs.py`` fails when the docs miss one.

Keys come in two scopes:

* ``job`` options are written bare (``processor = 'v2:4'``) or quoted (``'watermark.max_out_of_orderness'``).
* ``source`` / ``sink`` options are written ``'<name>.<key>'`` where ``<name>`` is the FROM identifier
  (source) or the stream/table being created (sink): ``'trades.type' = 'file_source'``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .durations import EXAMPLES, parse_duration
from .errors import Location, OptionError

SOURCE_TYPES = ("file_source", "file_source_mmap", "kafka_source", "python", "table")
SINK_TYPES = ("file_sink", "kafka_sink", "duckdb_table", "python")
FILE_FORMATS = ("csv", "csv_no_header", "json", "jsonl", "parquet")
FAILURE_STRATEGIES = ("SendToDLQ", "LogAndContinue", "FailBatch", "RetryWithBackoff")
PARTITIONING_STRATEGIES = (
    "hash", "always_hash", "sticky", "sticky_partition", "smart", "smart_repartition",
    "round_robin", "roundrobin", "fan_in", "fanin",
)  # fmt: skip


@dataclass(frozen=True)
class Option:
    """One WITH key: its scope, value kind, default and the text the docs show.

    ``kind`` is one of ``str``, ``int``, ``bool``, ``duration`` (a value such as ``'5s'``, ``'500ms'``,
    ``'10 minutes'`` or a bare number of seconds, read by :func:`velosql.durations.parse_duration`
    into integer microseconds) and ``enum``
    (one of ``choices``, compared case-insensitively). ``types`` restricts a source/sink option to the
    connector types that understand it (``None``: every type of its scope).
    """

    name: str
    scope: str  # "job" | "source" | "sink"
    kind: str
    default: object
    help: str
    choices: tuple[str, ...] | None = None
    types: tuple[str, ...] | None = None


def _src(name, kind, default, help, choices=None, types=("file_source", "file_source_mmap")):
    return Option(name, "source", kind, default, help, choices, types)


def _sink(name, kind, default, help, choices=None, types=("file_sink",)):
    return Option(name, "sink", kind, default, help, choices, types)


def _job(name, kind, default, help, choices=None):
    return Option(name, "job", kind, default, help, choices)


_KAFKA_SRC = ("kafka_source",)
_KAFKA_SINK = ("kafka_sink",)
# ``'<name>.kafka.<librdkafka key>'``: any librdkafka setting, handed to the Kafka client as it is
# (not declared here: librdkafka has hundreds; the planner keeps them, values as strings).
KAFKA_PASSTHROUGH = "kafka."

OPTIONS: tuple[Option, ...] = (
    # ---- sources --------------------------------------------------------------------------------
    _src(
        "type",
        "enum",
        None,
        "Connector of the source. Without it: a python source if data is "
        "pushed from Python, a table source if a DuckDB table of that name exists.",
        SOURCE_TYPES,
        None,
    ),
    _src(
        "path",
        "str",
        None,
        "File, glob (`data/*.csv`) or directory to read; relative to the working directory.",
    ),
    _src(
        "format",
        "enum",
        None,
        "File format; by default taken from the file extension "
        "(`.csv`, `.json`/`.jsonl`/`.ndjson`, `.parquet`). A kafka_source reads `json` (its "
        "default: one JSON object per message), `csv` (one CSV record per message, no header) or "
        "`raw` (each message as one column `value`); `avro` is refused (see docs/kafka.md).",
        (*FILE_FORMATS, "raw", "avro"),
        types=("file_source", "file_source_mmap", "kafka_source"),
    ),
    _src(
        "delimiter",
        "str",
        ",",
        "CSV field delimiter (one character).",
        types=("file_source", "file_source_mmap", "kafka_source"),
    ),
    _src(
        "has_headers",
        "bool",
        True,
        "Whether the CSV's first line names the columns. `format = 'csv_no_header'` sets it to false.",
    ),
    _src(
        "quote", "str", '"', "CSV quote character.", types=("file_source", "file_source_mmap", "kafka_source")
    ),
    _src("escape", "str", None, "CSV escape character (default: quotes are escaped by doubling)."),
    _src("skip_lines", "int", 0, "Lines to skip at the start of every file, before the header."),
    _src("max_records", "int", None, "Stop after this many records (the source is then exhausted)."),
    _src(
        "schema",
        "str",
        None,
        "Column names and DuckDB types, overriding inference, e.g. "
        "`'station VARCHAR, temperature DOUBLE'`. Names the columns of a headerless CSV "
        "(otherwise `column0`, `column1`, …); lets a python source be deployed before any push.",
        types=("file_source", "file_source_mmap", "python", "kafka_source"),
    ),
    _src(
        "batch_size",
        "int",
        65536,
        "Rows per batch read from the source (a kafka_source: messages per poll, at most 65536).",
        types=("file_source", "file_source_mmap", "kafka_source"),
    ),
    _src(
        "partition_key",
        "str",
        None,
        "Columns (comma-separated) the source is partitioned by: no value of them is in two "
        "files. With a GROUP BY holding them, `smart` and an unset `partitioning_strategy` let "
        "each V2 worker read its own files (sticky) instead of hashing every row. Only speed "
        "depends on it: workers still merge partial aggregates. A kafka_source: the columns the "
        "topic is keyed by (no value of them in two partitions); `assignment = 'group'` needs it "
        "for aggregates.",
        types=("file_source", "file_source_mmap", "kafka_source"),
    ),
    _src(
        "watch",
        "bool",
        False,
        "Keep reading rows appended to the file(s) and new files in the directory until the job is stopped.",
    ),
    _src(
        "poll_interval",
        "duration",
        500_000,
        "How often a watched source looks for new data; how long a kafka_source waits in one poll.",
        types=("file_source", "file_source_mmap", "kafka_source"),
    ),
    _src(
        "event.time.field", "str", None, "Column holding the event time of this source's records.", types=None
    ),
    _src(
        "event.time.format",
        "str",
        None,
        "How to read the event-time column when it is not a "
        "timestamp: `epoch_millis`, `epoch_seconds`, `iso8601` or a strftime pattern.",
        types=None,
    ),
    _src(
        "config_file",
        "str",
        None,
        "YAML file (relative to the SQL file) holding more `<key>: value` options for this connector.",
        types=None,
    ),
    _src(
        "topic.name",
        "str",
        None,
        "Kafka topic to read, or several, comma-separated (`'a, b'`): every partition of each; "
        "`_topic` tells them apart.",
        types=_KAFKA_SRC,
    ),
    _src(
        "bootstrap.servers",
        "str",
        None,
        "Kafka brokers (`host:port,…`); default: the environment variable `VELOSQL_KAFKA_BROKERS`.",
        types=_KAFKA_SRC,
    ),
    _src(
        "auto.offset.reset",
        "enum",
        "earliest",
        "Where to start without committed offsets.",
        ("earliest", "latest"),
        types=_KAFKA_SRC,
    ),
    _src(
        "group.id",
        "str",
        None,
        "Kafka consumer group (default: `velosql-<source>`). Partitions are assigned, not "
        "subscribed: the group's committed offsets, if any, are where reading starts.",
        types=_KAFKA_SRC,
    ),
    _src(
        "assignment",
        "enum",
        "all",
        "`all`: read every partition of the topic (assigned). `group`: share the partitions with the "
        "other servers running the statement in the same consumer group (`group.id`): each server "
        "runs a task per partition it is given, and a partition's state moves with it through the "
        "shared state location (`--state`). Aggregates need the topic keyed by their GROUP BY "
        "(`partition_key`).",
        ("all", "group"),
        types=_KAFKA_SRC,
    ),
    _src(
        "stop.at.end",
        "bool",
        False,
        "Read every partition up to its end offset when the job starts, then end (backfills, "
        "tests); otherwise a kafka_source is unbounded.",
        types=_KAFKA_SRC,
    ),
    _src(
        "max.message.bytes",
        "int",
        1 << 20,
        "Largest message value decoded; a larger one is a dead letter saying its size (the "
        "consumer's fetch limits are set above it, so it never stalls a partition).",
        types=_KAFKA_SRC,
    ),
    _src(
        "topic.metadata.refresh",
        "duration",
        5_000_000,
        "How often an unbounded kafka_source looks for partitions added to its topics; a new one "
        "is read from its beginning.",
        types=_KAFKA_SRC,
    ),
    _src(
        "table",
        "str",
        None,
        "DuckDB table to read for `type = 'table'` (default: the source name).",
        types=("table",),
    ),
    # ---- sinks ----------------------------------------------------------------------------------
    _sink(
        "type",
        "enum",
        "duckdb_table",
        "Connector of the sink; by default a table of the stream's name in the engine's "
        "database. A `CREATE TABLE` result is also kept there as a table with the latest row "
        "per key, whatever its sink.",
        SINK_TYPES,
        None,
    ),
    _sink("path", "str", None, "File to write; relative to the working directory; its directory is created."),
    _sink(
        "format",
        "enum",
        None,
        "File format; by default taken from the extension. A kafka_sink writes `json` (its default).",
        FILE_FORMATS,
        types=("file_sink", "kafka_sink"),
    ),
    _sink("delimiter", "str", ",", "CSV field delimiter."),
    _sink("has_headers", "bool", True, "Write a CSV header line."),
    _sink(
        "append_if_exists",
        "bool",
        False,
        "Append to an existing file instead of replacing it (CSV and JSON lines).",
    ),
    _sink(
        "atomic",
        "bool",
        None,
        "Write the file beside its path (`.<file>.velosql-tmp`) and rename it into place when the job "
        "ends, so the path always holds a whole file: the previous one until then (also if the job "
        "is killed). Default: true for Parquet (which cannot be false), false for CSV and JSON lines, "
        "which are written in place so that readers can follow them.",
    ),
    _sink("compression", "enum", None, "Parquet compression codec.", ("snappy", "zstd", "gzip", "none")),
    _sink("table", "str", None, "DuckDB table to write (default: the stream name).", types=("duckdb_table",)),
    _sink(
        "topic.name",
        "str",
        None,
        "Kafka topic to write. Each row is a JSON message keyed by the PRIMARY KEY or GROUP BY "
        "columns (several joined with `|`).",
        types=_KAFKA_SINK,
    ),
    _sink(
        "bootstrap.servers",
        "str",
        None,
        "Kafka brokers (`host:port,…`); default: the environment variable `VELOSQL_KAFKA_BROKERS`.",
        types=_KAFKA_SINK,
    ),
    _sink(
        "headers",
        "str",
        None,
        "Headers put on every message, `'name=value, …'`.",
        types=_KAFKA_SINK,
    ),
    # ---- job ------------------------------------------------------------------------------------
    _job(
        "processor",
        "str",
        None,
        "Processor architecture: `v1`, `v2`, `v2:N`, `v2:affinity`, "
        "`v2:N:affinity` (also `simple`, `adaptive[:N]`).",
    ),
    _job("enable_affinity", "bool", False, "Pin V2 partition workers to cores."),
    _job(
        "partitioning_strategy", "enum", None, "How V2 routes records to partitions.", PARTITIONING_STRATEGIES
    ),
    _job(
        "queue_threshold",
        "int",
        1000,
        "Records that may wait in a V2 worker's queue behind the micro-batch it works on; when "
        "full the job waits, and so does the source (backpressure). One micro-batch always fits.",
    ),
    _job(
        "failure_strategy",
        "enum",
        "SendToDLQ",
        "What happens to a record that cannot be decoded (unparseable row, wrong type, NULL "
        "event time): `SendToDLQ` and `LogAndContinue` store it in the `<stream>__dlq` table and "
        "go on (LogAndContinue also logs it); `FailBatch` stops the job with an error naming the "
        "record. `RetryWithBackoff` stores bad records like SendToDLQ and retries a failing sink "
        "write `max_retries` times before failing the job. An error in the query itself (e.g. a "
        "failing CAST) fails the job under every strategy.",
        FAILURE_STRATEGIES,
    ),
    _job(
        "dlq.topic",
        "str",
        None,
        "Kafka topic that also receives every dead letter, as a JSON object (`source`, "
        "`location`, `error`, `raw`, `topic`, `partition`, `offset`) keyed by the source name.",
    ),
    _job(
        "dlq.bootstrap.servers",
        "str",
        None,
        "Brokers of `dlq.topic`; default: the kafka_source's, else `VELOSQL_KAFKA_BROKERS`.",
    ),
    _job(
        "stop.timeout",
        "duration",
        None,
        "How long a stopped job may take to flush. Past it, a sink still blocked (a FIFO nobody "
        "reads, …) is abandoned, the job ends `Stopped` and a warning says what was not written. "
        "Default: `velosql run --stop-timeout`, else 10 s.",
    ),
    _job("max_retries", "int", 3, "Sink write retries under `RetryWithBackoff`."),
    _job("retry_backoff", "duration", 100_000, "First retry delay under `RetryWithBackoff`; doubles."),
    _job(
        "max_batch_size",
        "int",
        262144,
        "Rows coalesced into one micro-batch before it reaches "
        "DuckDB (larger amortises DuckDB's per-call cost).",
    ),
    _job(
        "batch_timeout",
        "duration",
        200_000,
        "Longest a partly filled micro-batch waits for more rows before it is processed.",
    ),
    _job(
        "checkpoint.dir",
        "str",
        None,
        "State location: the job checkpoints its source positions, operator state and watermark "
        "there and resumes from the last complete checkpoint when it starts again (also "
        "`velosql run --state DIR`, `velosql.connect(state=DIR)`). See docs/guarantees.md.",
    ),
    _job(
        "checkpoint.interval",
        "duration",
        10_000_000,
        "Time between two checkpoints of a job with a state location (one is also taken when it stops).",
    ),
    _job(
        "event.time.field", "str", None, "Event-time column for every source (Velostream's unprefixed form)."
    ),
    _job("event.time.format", "str", None, "Format of the event-time column for every source."),
    _job(
        "watermark.strategy",
        "enum",
        "bounded_out_of_orderness",
        "`ascending` means a lateness of 0.",
        ("bounded_out_of_orderness", "ascending"),
    ),
    _job(
        "watermark.max_out_of_orderness",
        "duration",
        0,
        "Allowed lateness: the watermark trails the largest event time seen by this much.",
    ),
    _job(
        "watermark.idle_timeout",
        "duration",
        None,
        "A source partition without records for this long stops holding the watermark back.",
    ),
    _job(
        "join.type",
        "enum",
        None,
        "Velostream's join hint: `interval` or `window`. The kind of join is read from the SELECT "
        "itself; the hint is checked against it.",
        ("interval", "window"),
    ),
    _job(
        "join.lower_bound",
        "duration",
        None,
        "Velostream's interval-join bound: the joined stream's event time is at least this much "
        "after the FROM stream's. Accepted when the ON condition states the same bound "
        "(`AND b.ts BETWEEN a.ts + <lower> AND a.ts + <upper>`), so the result stays the batch "
        "result of the SELECT as written.",
    ),
    _job(
        "join.upper_bound",
        "duration",
        None,
        "The interval join's other bound: the joined stream's event time at most this much after "
        "the FROM stream's (checked against the ON condition like `join.lower_bound`).",
    ),
    _job(
        "join.retention",
        "duration",
        None,
        "How long a join keeps a row: accepted when at least as long as the ON condition's bound "
        "needs (the rows are dropped by the watermark then, never earlier).",
    ),
    _job(
        "late.data.strategy",
        "enum",
        "dead_letter",
        "Late rows are always counted and kept in `<stream>__late`; `drop` keeps only the count.",
        ("dead_letter", "drop"),
    ),
    _job(
        "scan_pushdown",
        "bool",
        True,
        "A GROUP BY without a window that emits FINAL over bounded `file_source` files lets "
        "DuckDB's own CSV/Parquet reader compute the partial aggregates on all cores (same "
        "result and dead letters as reading record by record); `false` reads record by record.",
    ),
    _job(
        "parquet_reader",
        "enum",
        "duckdb",
        "How V2 workers that read their own Parquet pieces (sticky direct read) read them: "
        "`duckdb` runs the partition-local SQL straight on DuckDB's Parquet reader, one run of "
        "whole row groups (about 4 × `max_batch_size` rows: its scan costs more to start) per "
        "read, when every file holds the source's columns with the "
        "source's types and the event time (if any) is a timestamp or date column (else pyarrow "
        "reads them); `pyarrow` always decodes to Arrow first.",
        ("duckdb", "pyarrow"),
    ),
    _job(
        "mode",
        "str",
        None,
        "Velostream's job mode (accepted for compatibility; `processor` decides the architecture).",
    ),
)

# Velostream spells some choices differently; these map onto ours.
_ALIASES = {"log_and_continue": "LogAndContinue", "send_to_dlq": "SendToDLQ",
            "fail_batch": "FailBatch", "retry_with_backoff": "RetryWithBackoff", "dlq": "SendToDLQ",
            "fail": "FailBatch"}  # fmt: skip


def find(scope: str, name: str) -> Option | None:
    """The option called ``name`` in ``scope``, or None."""
    for opt in OPTIONS:
        if opt.scope == scope and opt.name == name:
            return opt
    return None


def names(scope: str) -> list[str]:
    return sorted({o.name for o in OPTIONS if o.scope == scope})


def convert(opt: Option, value: object, key: str, location: Location | None = None) -> object:
    """Check ``value`` against ``opt`` and return it converted; ``key`` is how the user wrote it."""
    try:
        if value is None:
            return None
        if opt.kind == "str":
            return str(value)
        if opt.kind == "int":
            text = str(value).strip()
            if isinstance(value, bool) or not text.lstrip("-").isdigit():
                raise ValueError
            return int(text)
        if opt.kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if opt.kind == "duration":
            try:
                return parse_duration(value)
            except ValueError:
                raise ValueError(f"expected a duration such as {EXAMPLES}") from None
        if opt.kind == "enum":
            text = str(value).strip()
            for choice in opt.choices or ():
                if choice.lower() == text.lower():
                    return choice
            if text.lower() in _ALIASES and _ALIASES[text.lower()] in (opt.choices or ()):
                return _ALIASES[text.lower()]
            raise OptionError(
                f"invalid value {value!r} for {key!r}: allowed values are "
                + ", ".join(repr(c) for c in opt.choices or ()),
                location,
            )
    except OptionError:
        raise
    except ValueError as exc:
        detail = str(exc) if str(exc) else f"expected {_kind_text(opt.kind)}"
        raise OptionError(f"invalid value {value!r} for {key!r}: {detail}", location) from None
    raise AssertionError(opt.kind)


def _kind_text(kind: str) -> str:
    return {"int": "an integer", "bool": "true or false", "str": "a string"}.get(kind, kind)
