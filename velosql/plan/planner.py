"""From a parsed CREATE STREAM|TABLE statement to a :class:`StreamPlan`.

The planner validates WITH options against :mod:`velosql.options`, resolves the source, sinks,
event time, watermark and processor, classifies the query into one of four shapes and asks
:mod:`velosql.plan.sqlgen` for the SQL each shape runs. It never touches a DuckDB connection.

Shapes:
* ``project`` — filters and projections: stateless, one output row per passing input row.
* ``buffered`` — analytic functions ``OVER (ROWS WINDOW BUFFER N ROWS …)``: the last N rows per key.
* ``aggregate`` — GROUP BY / aggregates, optionally TUMBLING or SLIDING: partial state in DuckDB.
* ``session`` — aggregates over SESSION windows: rows buffered until their session closes.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from sqlglot import exp

from .. import options as opts
from ..config import JobProcessorConfig, processor_from_statement
from ..errors import ConfigError, Location, OptionError, SqlError
from ..sql.deep import deep_call
from ..sql.statements import CreateStream, WindowSpec
from . import constructs, general, multi, sqlgen
from .aggregates import AggSpec
from .operators import (
    AggregateSpec,
    BufferSpec,
    DistinctSpec,
    GeneralSpec,
    JoinSpec,
    ProjectSpec,
    SessionSpec,
    UnionSpec,
)

# The message timestamp column of a kafka_source: its event time when no column is named.
KAFKA_TIMESTAMP = "_timestamp"


@dataclass(frozen=True)
class SourceSpec:
    """The FROM source: its name, alias in the query, connector type and options (no prefix)."""

    name: str
    alias: str
    type: str | None
    options: dict


@dataclass(frozen=True)
class SinkSpec:
    """Where results go. ``key`` lists the output columns a keyed (upsert) table uses."""

    name: str
    type: str
    options: dict
    key: tuple[str, ...] = ()


@dataclass(frozen=True)
class TimeSpec:
    """Event time and watermark settings. ``column`` None means processing time."""

    column: str | None
    format: str | None
    lateness_us: int
    idle_timeout_us: int | None


@dataclass(frozen=True)
class InputSpec:
    """One stream of a statement that reads several (in input order): its source and event time."""

    source: SourceSpec
    time: TimeSpec


@dataclass(frozen=True)
class StreamPlan:
    """Everything a processor needs to run one streaming statement (frozen: a spec, not runtime)."""

    name: str
    kind: str
    text: str
    location: Location
    shape: str
    emit: str
    source: SourceSpec
    sinks: tuple[SinkSpec, ...]
    time: TimeSpec
    window: WindowSpec | None
    group_keys: tuple[str, ...]
    aggregates: tuple[AggSpec, ...]
    processor: JobProcessorConfig | None
    job_options: dict
    annotations: dict
    sql: sqlgen.ShapeSQL
    primary_key: tuple[str, ...] = ()
    limit: int | None = None
    notes: tuple[str, ...] = field(default=())
    # The spec of the operator that runs the statement (velosql.runtime.operators builds it).
    operator: (
        AggregateSpec
        | GeneralSpec
        | DistinctSpec
        | UnionSpec
        | JoinSpec
        | ProjectSpec
        | BufferSpec
        | SessionSpec
        | None
    ) = None
    # The streams of a statement that reads several (multi.py), ``source`` and ``time`` being the
    # first's; empty for a statement over one stream.
    inputs: tuple[InputSpec, ...] = ()
    # Output columns bounded by the watermark: (name, offset µs) when every row still to come has
    # a value of at least the watermark minus the offset (a window's end or start). A statement
    # reading this one's output with such a column as its event time takes the watermark along.
    watermarked: tuple[tuple[str, int], ...] = ()

    def carried(self, column: str | None) -> int | None:
        """The offset of output column ``column`` if the watermark bounds it (see ``watermarked``)."""
        if column is None:
            return None
        return dict(self.watermarked).get(column.lower())

    @property
    def windowed(self) -> bool:
        return self.window is not None

    @property
    def needs_event_time(self) -> bool:
        return self.window is not None

    @property
    def stream(self) -> str:
        """The stream's name (a group member's task, ``<stream>.p<k>``, writes the stream's tables)."""
        return self.job_options.get("__stream") or self.name

    @property
    def late_table(self) -> str:
        return f"{self.stream}__late"

    @property
    def dlq_table(self) -> str:
        return f"{self.stream}__dlq"


def plan(stmt: CreateStream) -> StreamPlan:
    """Validate ``stmt`` and build its plan; raises SqlError/OptionError naming file:line:col."""
    return deep_call(_plan, stmt, where=stmt.location)


def _plan(stmt: CreateStream) -> StreamPlan:
    loc = stmt.location
    if stmt.select is None or not isinstance(stmt.select, (exp.Select, exp.SetOperation)):
        raise SqlError("expected SELECT after AS", loc)
    select = constructs.inline_aliases(stmt.select)
    streams = _declared_streams(select, stmt)
    if len(streams) > 1:
        return _multi(stmt, select, streams)
    source_table = _stream_source(select, stmt)
    src_name = source_table.name.lower()
    alias = source_table.alias_or_name
    name = stmt.name.lower()

    grouped = _split_options(stmt, src_name, name)
    job = _job_options(grouped["job"], stmt)
    source = _source_spec(src_name, alias, grouped["source"], stmt)
    processor = _processor(stmt)

    emit = stmt.emit or ("final" if stmt.window else "changes")
    window = stmt.window
    time = _time_spec(window, source, job)
    found = constructs.inspect(select, src_name)
    if (
        window is not None
        and not found.general
        and not constructs.aggregating(select)
        and not select.find(exp.Window)
    ):
        # A window over rows no aggregate reads: each window's rows when it closes.
        found = dataclasses.replace(found, general=("a WINDOW over a SELECT without aggregates",))
    if found.general:
        return _general(stmt, select, found, source, job, processor, emit, time, grouped)
    query = sqlgen.analyse(select, source_table, window, loc)
    shape = query.shape
    if window is not None and shape not in ("aggregate", "session"):
        raise SqlError("a WINDOW clause needs an aggregate (COUNT, SUM, …) or GROUP BY", loc)
    if window is not None and window.kind == "session" and emit == "changes":
        raise SqlError(
            "EMIT CHANGES over SESSION windows is not supported: a session's rows can merge with a "
            "later session, so running values could be retracted; use EMIT FINAL",
            loc,
        )
    if shape == "buffered" and emit == "final":
        raise SqlError("ROWS WINDOW BUFFER produces one row per input row: use EMIT CHANGES", loc)
    primary_key = tuple(k.lower() for k in stmt.primary_key)
    sinks = _sink_specs(name, stmt.kind, grouped["sink"], stmt, primary_key, query)
    shape_sql = sqlgen.generate(query, window, emit)
    return StreamPlan(
        name=name,
        kind=stmt.kind,
        text=stmt.text,
        location=loc,
        shape=shape,
        emit=emit,
        source=source,
        sinks=sinks,
        time=time,
        window=window,
        group_keys=query.key_sql,
        aggregates=query.aggregates,
        processor=processor,
        job_options=job,
        annotations=dict(stmt.annotations),
        sql=shape_sql,
        primary_key=primary_key,
        limit=query.limit,
        notes=_notes(window, time),
        watermarked=_watermarked(select, window),
        operator=_shape_operator(shape, shape_sql, window, query.aggregates),
    )


def _shape_operator(shape: str, sql: sqlgen.ShapeSQL, window, aggregates):
    """The operator spec of a specialised shape."""
    if shape == "aggregate":
        return AggregateSpec(sql, window, tuple(aggregates))
    if shape == "project":
        return ProjectSpec(sql.project)
    if shape == "buffered":
        create = f"CREATE OR REPLACE TEMP TABLE __rbuf AS {sql.buffer_insert} LIMIT 0"
        ordered = sqlgen.with_arrival_order(sql.project)
        return BufferSpec(create=create, project=sql.project, keep=sql.state_update, ordered=ordered)
    if shape == "session":
        return SessionSpec(
            create=f"CREATE OR REPLACE TEMP TABLE __sbuf AS {sql.buffer_insert} LIMIT 0",
            insert=f"INSERT INTO __sbuf {sql.buffer_insert}",
            emit=sql.session_emit,
            keep=sql.session_keep,
            reference=sql.reference,
        )
    raise AssertionError(f"no operator for shape {shape!r}")


def _watermarked(select: exp.Expression, window: WindowSpec | None) -> tuple[tuple[str, int], ...]:
    """The output columns that are the window's end (offset 0: every window still to come ends
    after the watermark) or, for TUMBLING and SLIDING windows, its start (ends minus the size)."""
    if window is None or not isinstance(select, exp.Select):
        return ()
    out = []
    for item in select.expressions:
        inner = item.unalias()
        if isinstance(inner, exp.Column) and not inner.table:
            if inner.name.lower() == "_window_end":
                out.append((item.alias_or_name.lower(), 0))
            elif inner.name.lower() == "_window_start" and window.kind != "session":
                out.append((item.alias_or_name.lower(), window.size_us))
    return tuple(out)


def _notes(window: WindowSpec | None, time: TimeSpec) -> tuple[str, ...]:
    if window is not None and time.column is None:
        return ("no event-time column: windows use processing time (arrival time)",)
    return ()


def _general(stmt, select, found, source, job, processor, emit, time, grouped) -> StreamPlan:
    """The plan of a statement with constructs no specialised operator reads (general.py)."""
    name = stmt.name.lower()
    chosen = general.choose(select, source.name, found, stmt.window, emit, stmt.location)
    primary_key = tuple(k.lower() for k in stmt.primary_key)
    sinks = _sink_specs(name, stmt.kind, grouped["sink"], stmt, primary_key, None)
    return StreamPlan(
        name=name, kind=stmt.kind, text=stmt.text, location=stmt.location, shape=chosen.shape,
        emit=emit, source=source, sinks=sinks, time=time, window=stmt.window, group_keys=(),
        aggregates=(), processor=processor, job_options=job, annotations=dict(stmt.annotations),
        sql=chosen.sql, primary_key=primary_key, limit=chosen.limit, notes=_notes(stmt.window, time),
        operator=chosen.operator, watermarked=_watermarked(select, stmt.window),
    )  # fmt: skip


def _multi(stmt: CreateStream, select: exp.Expression, streams: list[str]) -> StreamPlan:
    """The plan of a statement that reads several streams (multi.py)."""
    name = stmt.name.lower()
    streams = multi.order_streams(select, streams)
    grouped = _split_options(stmt, streams, name)
    job = _job_options(grouped["job"], stmt)
    aliases = {t.name.lower(): t.alias_or_name for t in select.find_all(exp.Table)}
    sources = [_source_spec(s, aliases[s], grouped["sources"][s], stmt) for s in streams]
    window = stmt.window
    emit = stmt.emit or ("final" if window else "changes")
    declared = [s.options.get("event.time.field") or job.get("event.time.field") for s in sources]
    hints = {k: v for k, v in job.items() if k.startswith("join.") and v is not None}
    chosen = multi.choose(select, streams, declared, window, emit, stmt.location, hints)
    by_name = {s.name: s for s in sources}
    inputs = []
    for stream, column in zip(chosen.streams, chosen.times):
        source = by_name[stream]
        time = _time_spec(window, source, job)
        inputs.append(InputSpec(source, dataclasses.replace(time, column=column)))
    primary_key = tuple(k.lower() for k in stmt.primary_key)
    sinks = _sink_specs(name, stmt.kind, grouped["sink"], stmt, primary_key, None)
    shape_sql = sqlgen.ShapeSQL(late=f"SELECT * FROM __in WHERE {chosen.late}")
    return StreamPlan(
        name=name, kind=stmt.kind, text=stmt.text, location=stmt.location, shape=chosen.shape,
        emit=emit, source=inputs[0].source, sinks=sinks, time=inputs[0].time, window=window,
        group_keys=(), aggregates=(), processor=_processor(stmt), job_options=job,
        annotations=dict(stmt.annotations), sql=shape_sql, primary_key=primary_key,
        limit=chosen.limit, notes=_notes(window, inputs[0].time), operator=chosen.operator,
        inputs=tuple(inputs), watermarked=_watermarked(select, window),
    )  # fmt: skip


def _declared_streams(select: exp.Expression, stmt: CreateStream) -> list[str]:
    """The tables ``select`` reads that the WITH keys declare as sources, in the order read."""
    declared = _declared_names(stmt)
    defined = constructs.ctes(select)
    out: list[str] = []
    for t in select.find_all(exp.Table):
        name = t.name.lower()
        if isinstance(t.this, exp.Identifier) and not t.args.get("db") and name not in defined:
            if name in declared and name not in out:
                out.append(name)
    return out


def _declared_names(stmt: CreateStream) -> set[str]:
    """The names the WITH keys give options to, the sink's aside."""
    return {
        key.lower().partition(".")[0]
        for key in stmt.properties
        if "." in key and opts.find("job", key.lower()) is None
    } - {stmt.name.lower()}


def _stream_source(select: exp.Expression, stmt: CreateStream) -> exp.Table:
    """The table the statement streams from: the one its WITH keys declare as a source, else the
    first table its outermost FROM reads (through CTEs and subqueries); the others are DuckDB
    tables it looks up."""
    defined = constructs.ctes(select)
    named = [
        t
        for t in select.find_all(exp.Table)
        if isinstance(t.this, exp.Identifier) and t.name.lower() not in defined and not t.args.get("db")
    ]
    declared = _declared_names(stmt)
    for table in named:
        if table.name.lower() in declared:
            return table
    table = constructs.first_table(select, defined)
    if table is None:
        raise SqlError("a streaming query needs FROM <source>", stmt.location)
    return table


def _split_options(stmt: CreateStream, srcs: str | list[str], sink: str) -> dict[str, dict]:
    """Sort WITH keys into job / source / sink scopes: ``{scope: {key: (value, written_key, loc)}}``;
    ``sources`` holds each source's scope by name and ``source`` the first's."""
    srcs = [srcs] if isinstance(srcs, str) else srcs
    out: dict[str, dict] = {"job": {}, "sink": {}, "sources": {s: {} for s in srcs}}
    out["source"] = out["sources"][srcs[0]]
    named = ", ".join(repr(s) for s in srcs)
    for key, value in stmt.properties.items():
        loc = stmt.property_locations.get(key, stmt.location)
        k = key.lower()
        if opts.find("job", k) is not None:
            out["job"][k] = (value, key, loc)
            continue
        prefix, _, rest = k.partition(".")
        if rest and prefix in out["sources"]:
            out["sources"][prefix][rest] = (value, key, loc)
        elif rest and prefix == sink:
            out["sink"][rest] = (value, key, loc)
        elif rest and opts.find("source", rest) is not None:
            raise OptionError(
                f"WITH key {key!r} names {prefix!r}, which is neither a source of this statement "
                f"({named}) nor its sink {sink!r}",
                loc,
            )
        else:
            raise OptionError(
                f"unknown WITH key {key!r}: job keys are {', '.join(opts.names('job'))}; "
                f"connector keys are written '{srcs[0]}.<key>' or '{sink}.<key>'",
                loc,
            )
    return out


def _load_config_file(scoped: dict, stmt: CreateStream) -> dict:
    if "config_file" not in scoped:
        return scoped
    value, key, loc = scoped["config_file"]
    base = os.path.dirname(stmt.location.file) if stmt.location.file else os.getcwd()
    path = os.path.join(base, str(value))
    import yaml  # only when there is a config file

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise OptionError(f"{key!r}: cannot read config file {path}: {exc}", loc) from None
    if not isinstance(data, dict):
        raise OptionError(f"{key!r}: config file {path} must hold `key: value` pairs", loc)
    merged = {str(k).lower(): (v, f"{path}: {k}", loc) for k, v in _flatten(data).items()}
    merged.update(scoped)
    return merged


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# Connector types whose ``'<name>.kafka.<librdkafka key>'`` options go to librdkafka as they are.
_KAFKA_TYPES = {"source": "kafka_source", "sink": "kafka_sink"}


def _convert_scope(scope: str, scoped: dict, conn_type: str | None, owner: str) -> dict:
    result = {}
    for name, (value, key, loc) in scoped.items():
        if name.startswith(opts.KAFKA_PASSTHROUGH) and scope in _KAFKA_TYPES:
            result[name] = _kafka_passthrough(name, value, key, loc, conn_type, _KAFKA_TYPES[scope])
            continue
        opt = opts.find(scope, name)
        if opt is None:
            allowed = sorted(
                o.name
                for o in opts.OPTIONS
                if o.scope == scope and (o.types is None or conn_type is None or conn_type in o.types)
            )
            kind = f"{conn_type} " if conn_type else ""
            raise OptionError(
                f"unknown WITH key {key!r} for {kind}{scope} {owner!r}: allowed keys are "
                + ", ".join(f"'{owner}.{n}'" for n in allowed),
                loc,
            )
        if opt.types is not None and conn_type is not None and conn_type not in opt.types:
            raise OptionError(
                f"WITH key {key!r} does not apply to a {conn_type}: it is for {', '.join(opt.types)}",
                loc,
            )
        result[name] = opts.convert(opt, value, key, loc)
    for opt in opts.OPTIONS:
        if opt.scope == scope and opt.name not in result:
            if opt.types is None or conn_type is None or conn_type in opt.types:
                result[opt.name] = opt.default
    return result


def _kafka_passthrough(name: str, value, key: str, loc, conn_type: str | None, kafka_type: str) -> str:
    """A librdkafka setting given through (``kafka.fetch.min.bytes``): kept under its full name,
    its value as the string librdkafka reads; refused for a connector that is not Kafka's."""
    if conn_type != kafka_type:
        kind = f"a {conn_type}" if conn_type else "a connector without a 'type'"
        raise OptionError(
            f"WITH key {key!r} is a librdkafka setting, passed through only by a {kafka_type}; "
            f"it does not apply to {kind}",
            loc,
        )
    if name == opts.KAFKA_PASSTHROUGH or value is None:
        raise OptionError(f"WITH key {key!r}: give a librdkafka key after 'kafka.' and a value", loc)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _connector_type(scoped: dict, scope: str, owner: str) -> str | None:
    if "type" not in scoped:
        return None
    value, key, loc = scoped["type"]
    ctype = opts.convert(opts.find(scope, "type"), value, key, loc)
    return ctype


def _job_options(scoped: dict, stmt: CreateStream) -> dict:
    return _convert_scope("job", scoped, None, stmt.name)


def _source_spec(name: str, alias: str, scoped: dict, stmt: CreateStream) -> SourceSpec:
    scoped = _load_config_file(scoped, stmt)
    ctype = _connector_type(scoped, "source", name)
    if ctype == "file_source_mmap":
        ctype = "file_source"
    converted = _convert_scope("source", scoped, ctype, name)
    if ctype == "file_source" and not converted.get("path"):
        raise OptionError(f"source {name!r} is a file_source but has no '{name}.path'", stmt.location)
    if ctype == "kafka_source" and not converted.get("topic.name"):
        raise OptionError(f"source {name!r} is a kafka_source but has no '{name}.topic.name'", stmt.location)
    _check_format(name, ctype, converted.get("format"), scoped)
    if converted.get("format") == "csv_no_header":
        converted["has_headers"] = False
    converted.pop("type", None)
    return SourceSpec(name=name, alias=alias.lower(), type=ctype, options=converted)


def _check_format(name: str, ctype: str | None, fmt: str | None, scoped: dict) -> None:
    """Formats of one connector only: ``raw`` is Kafka's, ``parquet`` a file's; ``avro`` is refused."""
    if fmt is None:
        return
    _, key, loc = scoped["format"]
    if fmt == "avro":
        raise OptionError(
            f"{key!r} = 'avro' is not supported: Avro needs a schema registry, which this release "
            "is not tested against; produce JSON (format 'json', the default), or read each message "
            "with format 'raw' and decode it in SQL",
            loc,
        )
    if ctype == "kafka_source" and fmt == "parquet":
        raise OptionError(f"{key!r} = 'parquet': a kafka_source reads 'json', 'csv' or 'raw'", loc)
    if ctype != "kafka_source" and fmt == "raw":
        raise OptionError(
            f"{key!r} = 'raw' is a kafka_source format: files are csv, json, jsonl or parquet", loc
        )


def _sink_specs(name, kind, scoped, stmt, primary_key, query) -> tuple[SinkSpec, ...]:
    scoped = _load_config_file(scoped, stmt)
    ctype = _connector_type(scoped, "sink", name) or "duckdb_table"
    converted = _convert_scope("sink", scoped, ctype, name)
    converted.pop("type", None)
    if ctype == "file_sink" and not converted.get("path"):
        raise OptionError(f"sink {name!r} is a file_sink but has no '{name}.path'", stmt.location)
    if ctype == "kafka_sink" and not converted.get("topic.name"):
        raise OptionError(f"sink {name!r} is a kafka_sink but has no '{name}.topic.name'", stmt.location)
    key = primary_key or (query.key_names if query is not None else ())
    # A table's rows are upserted by key; a Kafka sink's messages are keyed by it.
    keyed = kind == "table" or ctype == "kafka_sink"
    sinks = [SinkSpec(name=name, type=ctype, options=converted, key=key if keyed else ())]
    if kind == "table" and ctype not in ("duckdb_table", "python"):
        # A CREATE TABLE result is also kept as a DuckDB table with the latest row per key.
        sinks.append(SinkSpec(name=name, type="duckdb_table", options={"table": None}, key=key))
    return tuple(sinks)


def _processor(stmt: CreateStream) -> JobProcessorConfig | None:
    try:
        return processor_from_statement(stmt.properties, stmt.annotations)
    except ConfigError as exc:
        raise OptionError(str(exc), stmt.location) from None


def _time_spec(window: WindowSpec | None, source: SourceSpec, job: dict) -> TimeSpec:
    column = (window.time_column if window else None) or source.options.get("event.time.field")
    column = column or job.get("event.time.field")
    if column is None and window is not None and source.type == "kafka_source":
        column = KAFKA_TIMESTAMP  # a window over Kafka messages: their own timestamps
    fmt = source.options.get("event.time.format") or job.get("event.time.format")
    lateness = 0 if job.get("watermark.strategy") == "ascending" else job["watermark.max_out_of_orderness"]
    return TimeSpec(column, fmt, lateness or 0, job.get("watermark.idle_timeout"))
