"""Running COUNT/SUM/AVG per key for EMIT CHANGES, computed with pyarrow kernels.

DuckDB's window operator (``PARTITION BY key ORDER BY seq``) sorts on the key and runs at about
3M rows/s on one thread; that sort dominates EMIT CHANGES. Here the key is dictionary-encoded, the
rows are stably sorted by its integer code, and each running value is a cumulative sum minus the
sum before its key's first row — a few linear passes. Integer inputs only: the subtraction is exact
for integers, while for floating point it would lose precision the window version does not.

The result is the batch's running partials in the column layout of the plan's partial state, so
the plan's merge/final SQL (``running_output``) finishes the change rows exactly as the window
version does.
"""

from __future__ import annotations

import contextlib

import pyarrow as pa
import pyarrow.compute as pc

from ..connectors.base import _arange, int_array, int_scalar, null_scalar

# plan.aggregates.SEQ, not imported: that module brings sqlglot, which a V2 worker never loads.
SEQ = "__seq"

# Built from buffers: a Python int handed to a compute function is converted, and pyarrow's
# first conversion imports pandas when it is installed.
ZERO, ONE = int_scalar(0), int_scalar(1)

INTEGER_TYPES = (pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32())


def supported(aggregates, schema: pa.Schema) -> bool:
    """Whether every aggregate can run here, given the types of the running-input columns."""
    for i, a in enumerate(aggregates):
        if a.running in ("sum", "avg") and schema.field(f"__x{i}").type not in INTEGER_TYPES:
            return False
    return True


class Running:
    """A batch's running partials, sorted by key (arrival order within a key)."""

    def __init__(self, table: pa.Table, order: pa.Array, last: pa.Array) -> None:
        self.table = table  # __k0, __seq and each aggregate's running partial columns
        self.order = order  # row i of ``table`` is row order[i] of the batch
        self.last = last  # the position in ``table`` of each key's last row


def plain_rows(table: pa.Table, columns: tuple[str, ...], aggregates) -> pa.Table:
    """What the plan's ``running_input`` selects, taken from the micro-batch without DuckDB:
    the key, ``__seq`` and each aggregate's argument (``columns``: the key's then the arguments'
    source columns)."""
    names = {c.lower(): c for c in table.column_names}
    key = table.column(names[columns[0].lower()]).combine_chunks()
    if pa.types.is_dictionary(key.type):
        key = key.dictionary_decode()
    out = {"__k0": key, SEQ: table.column(SEQ)}
    args = iter(columns[1:])
    for i, a in enumerate(aggregates):
        if a.arg is not None:
            out[f"__x{i}"] = table.column(names[next(args).lower()])
    return pa.table(out)


def running_partials(rows: pa.Table, aggregates) -> Running:
    """Per row: the key, ``__seq`` and each aggregate's running partial columns.

    Raises ``pa.ArrowInvalid`` when a running sum overflows int64 (DuckDB's sums do not).
    """
    n = rows.num_rows
    # NULL is a group of its own, as in GROUP BY.
    codes = pc.dictionary_encode(rows.column("__k0"), null_encoding="encode").combine_chunks().indices
    order = pc.sort_indices(codes)  # stable: rows of one key stay in arrival order
    sorted_codes = codes.take(order)
    starts = pc.not_equal(
        sorted_codes, pa.concat_arrays([int_array([-1], codes.type), sorted_codes.slice(0, n - 1)])
    )
    position = _arange(n)
    first = pc.fill_null_forward(pc.if_else(starts, position, null_scalar(pa.int64())))
    count_star = pc.add(pc.subtract(position, first), ONE)
    start_at = pc.indices_nonzero(starts).cast(pa.int64())
    last = pa.concat_arrays([pc.subtract(start_at.slice(1), ONE), int_array([n - 1])])

    def running_sum(values: pa.Array) -> pa.Array:
        total = pc.cumulative_sum_checked(values)
        before_key = pc.fill_null_forward(
            pc.if_else(starts, pc.subtract(total, values), null_scalar(pa.int64()))
        )
        return pc.subtract(total, before_key)

    columns = {"__k0": rows.column("__k0").take(order), SEQ: rows.column(SEQ).take(order)}
    for i, a in enumerate(aggregates):
        if a.running == "count_star":
            columns[a.parts[0]] = count_star
            continue
        x = rows.column(f"__x{i}").combine_chunks().take(order).cast(pa.int64())
        seen = running_sum(pc.cast(pc.is_valid(x), pa.int64()))
        if a.running == "count":
            columns[a.parts[0]] = seen
            continue
        total = running_sum(pc.fill_null(x, ZERO))
        # SUM of no non-null value is NULL, as in SQL.
        total = pc.if_else(pc.equal(seen, ZERO), null_scalar(pa.int64()), total)
        columns[a.parts[0]] = total
        if a.running == "avg":
            columns[a.parts[1]] = seen
    return Running(pa.table(columns), order, last)


class Changes:
    """What :func:`change_rows` finished for one batch."""

    def __init__(self, out: pa.Table, partials: pa.Table, totals: pa.Table) -> None:
        self.out = out  # the change rows, arrival order, one column per output item
        self.partials = partials  # the batch's own partials per key (what the state appends)
        self.totals = totals  # each key's merged state after the batch


def change_rows(run: Running, aggregates, items, state_of) -> Changes | None:
    """The batch's change rows, finished here instead of in DuckDB.

    ``state_of(keys)`` returns the combined state of those keys. Each row's values are its key's
    state merged with its running partials, then finished as the plan's final forms do: a count
    is the merged count, a sum the merged sum (NULL while no value was seen), an average their
    quotient. None when a state value does not fit int64 (the SQL path then takes the batch).
    """
    t = run.table
    keys = t.column("__k0").combine_chunks()
    batch = t.take(run.last).drop_columns([SEQ])
    state = state_of(batch.select(["__k0"]))
    try:
        at = pc.index_in(
            keys, value_set=state.column("__k0").combine_chunks().cast(keys.type), skip_nulls=False
        )
        old = {p: state.column(p).cast(pa.int64()).take(at) for a in aggregates for p in a.parts}
        merged = {}
        for a in aggregates:
            count_parts = a.parts if a.running in ("count_star", "count") else a.parts[1:]
            for p in a.parts:
                b = t.column(p).combine_chunks()
                if p in count_parts:
                    merged[p] = pc.add_checked(pc.fill_null(old[p], ZERO), b)
                else:
                    merged[p] = pc.coalesce(pc.add_checked(old[p], b), old[p], b)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    finals = []
    for a in aggregates:
        if a.running == "avg":
            s, c = merged[a.parts[0]], merged[a.parts[1]]
            nonzero = pc.if_else(pc.greater(c, ZERO), c, null_scalar(pa.int64()))
            finals.append(pc.divide(s.cast(pa.float64()), nonzero.cast(pa.float64())))
        else:
            finals.append(merged[a.parts[0]])
    # Back to arrival order: row order[i] of the batch is row i here.
    back = pc.scatter(_arange(t.num_rows), run.order.cast(pa.int64()))
    columns = [keys if kind == "k" else finals[i] for kind, i in items]
    out = pa.Table.from_arrays([c.take(back) for c in columns], names=[f"__o{j}" for j in range(len(items))])
    totals = pa.table({"__k0": keys.take(run.last), **{p: v.take(run.last) for p, v in merged.items()}})
    return Changes(out, batch, totals)


class Totals:
    """Each key's combined state (``__k0`` and int64 partial columns), held in Arrow.

    EMIT CHANGES reads its keys' state every batch; asking DuckDB for it costs a few milliseconds
    per batch, more than all the rest. While there are at most :data:`HOT_KEYS` keys the state is
    read from here instead, and DuckDB's ``__state`` is replaced by a snapshot of it now and then
    (and before anything else reads it); beyond that the job reads DuckDB's state again.
    """

    def __init__(self, parts: list[str]) -> None:
        self.parts = parts
        self.table: pa.Table | None = None
        self._rest: pa.Table | None = None

    @property
    def num_rows(self) -> int:
        return 0 if self.table is None else self.table.num_rows

    def state_of(self, keys: pa.Table) -> pa.Table:
        """The state rows of ``keys`` (remembering the others for :meth:`update`)."""
        want = keys.column("__k0").combine_chunks()
        if self.table is None:
            self._rest = None
            empty = pa.nulls(0, pa.int64())
            return pa.table({"__k0": want.slice(0, 0), **{p: empty for p in self.parts}})
        mine = pc.is_in(self.table.column("__k0"), value_set=want, skip_nulls=False)
        self._rest = self.table.filter(pc.invert(mine))
        return self.table.filter(mine)

    def update(self, totals: pa.Table) -> None:
        """Replace the state of the keys last asked for by their totals after the batch."""
        if self._rest is None or self._rest.num_rows == 0:
            self.table = totals
        else:
            self.table = pa.concat_tables([self._rest, totals.cast(self._rest.schema)]).combine_chunks()
        self._rest = None


HOT_KEYS = 65_536
CHECKPOINT_ROWS = 65_536  # batch partials between snapshots of Arrow-held totals into __state
COMPACT_MIN_ROWS = 16_384  # EMIT CHANGES partial rows in __state before its first compaction


def compaction_due(rows: int, compacted: int, floor: int = COMPACT_MIN_ROWS) -> bool:
    """Whether a ``__state`` of ``rows`` partial rows (``compacted`` right after its last
    compaction) is rewritten now: past ``floor`` and four times its compacted size, so the
    rewrites stay amortised."""
    return rows > max(floor, 4 * compacted)


def compact_statements(state_update: str) -> tuple[str, str]:
    """Rewrite ``__state`` as one combined row per group (``state_update``), then count it."""
    return f"CREATE OR REPLACE TEMP TABLE __state AS {state_update}", "SELECT count(*) FROM __state"


def compact(con, state_update: str) -> int:
    """Run :func:`compact_statements` on ``con``; the rows ``__state`` has now."""
    rewrite, count = compact_statements(state_update)
    con.execute(rewrite).fetchall()
    return con.execute(count).fetchall()[0][0]


class Changelog:
    """One partition's EMIT CHANGES of running COUNT/SUM/AVG per key, finished in Arrow: V1's job
    holds one, and so does each V2 worker for the keys routed to it.

    ``con`` holds the partition's ``__state`` (partial rows, several per key until compacted).
    While there are at most :data:`HOT_KEYS` keys their totals are held in Arrow (:class:`Totals`)
    and ``__state`` gets a snapshot every :data:`CHECKPOINT_ROWS` merged rows and before SQL reads
    it (:meth:`checkpoint`); beyond that, or once a batch needed DuckDB's window, the state is read
    from DuckDB. ``sql`` names the plan's ``running_items``, ``running_state`` and
    ``state_update`` (a :class:`~velosql.plan.sqlgen.ShapeSQL` or a namespace with them).
    """

    def __init__(self, con, aggregates, sql, limits: tuple[int, int] | None = None) -> None:
        self.con, self.aggregates, self.sql = con, aggregates, sql
        # HOT_KEYS and CHECKPOINT_ROWS as the job saw them (a worker is given the job's).
        self.hot_keys, self.checkpoint_rows = limits or (HOT_KEYS, CHECKPOINT_ROWS)
        self.totals: Totals | None = Totals([p for a in aggregates for p in a.parts])
        self.pending = 0  # partial rows merged into the totals since the last snapshot
        self.state_rows = 0  # rows in __state, and right after its last compaction
        self.compacted_rows = 0

    def changes(self, rows: pa.Table) -> pa.Table | None:
        """The change rows (arrival order, a column per output item) of a batch whose running
        input is ``rows``, with the batch's partials merged into the state. None when the batch
        needs DuckDB's window (a sum beyond int64, a key pyarrow cannot encode): the caller runs
        the plan's SQL on it, and the state is DuckDB's from then on."""
        try:
            run = running_partials(rows, self.aggregates)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            self.drop_totals()
            return None
        state_of = self.totals.state_of if self.totals is not None else self._state_of
        changes = change_rows(run, self.aggregates, self.sql.running_items, state_of)
        if changes is None:
            self.drop_totals()
            return None
        if self.totals is None:
            with _registered(self.con, "__bp", changes.partials):
                (n,) = self.con.execute("INSERT INTO __state BY NAME SELECT * FROM __bp").fetchall()[0]
            self.inserted(n)
            return changes.out
        self.totals.update(changes.totals)
        self.pending += changes.partials.num_rows
        if self.totals.num_rows > self.hot_keys:
            self.drop_totals()
        elif self.pending >= max(self.checkpoint_rows, self.totals.num_rows):
            self.checkpoint()
        return changes.out

    def inserted(self, n: int) -> None:
        """``n`` partial rows were appended to ``__state``: compact it now and then (every batch
        reads the combined state of its keys, so it is kept small)."""
        self.state_rows += n
        if compaction_due(self.state_rows, self.compacted_rows):
            self.state_rows = self.compacted_rows = compact(self.con, self.sql.state_update)

    def checkpoint(self) -> None:
        """Replace ``__state`` by the Arrow-held totals (one row per key), if any are held."""
        if self.totals is None:
            return
        self.pending = 0
        self.con.execute("DELETE FROM __state").fetchall()
        n = 0
        if self.totals.table is not None:
            with _registered(self.con, "__totals", self.totals.table):
                (n,) = self.con.execute("INSERT INTO __state BY NAME SELECT * FROM __totals").fetchall()[0]
        self.state_rows = self.compacted_rows = n

    def drop_totals(self) -> None:
        """From here on the state is read from DuckDB (after it receives the totals)."""
        self.checkpoint()
        self.totals = None

    def _state_of(self, keys: pa.Table) -> pa.Table:
        """The combined state of ``keys`` (one row per key found), from DuckDB."""
        with _registered(self.con, "__keys", keys):
            return self.con.sql(self.sql.running_state).to_arrow_table()


def worker_changes(con, state: dict, spec: dict):
    """A V2 worker's statement for EMIT CHANGES of running COUNT/SUM/AVG (a worker call, with the
    micro-batch of the keys routed to it registered as ``__in``): the change rows, with the arrival
    sequence first as ``__order`` when ``spec["order"]``.

    The worker's :class:`Changelog` finishes them in Arrow; a batch it cannot take runs the plan's
    window SQL (``spec["changes"]``, the same columns) and appends its partials to ``__state``.
    """
    log = state.get("changelog")
    if log is None:
        log = state["changelog"] = Changelog(con, spec["aggregates"], spec["sql"], spec["limits"])
        if state.get("restored"):  # the state restored from a checkpoint is in __state
            log.totals = None
    rows = con.sql(spec["input"]).to_arrow_table()
    out = log.changes(rows) if rows.num_rows else None
    if out is None:
        out = con.sql(spec["changes"]).to_arrow_table()
        (n,) = con.execute(f"INSERT INTO __state {spec['partial']}").fetchall()[0]
        log.inserted(n)
        return None, out
    return None, out.add_column(0, "__order", rows.column(SEQ)) if spec["order"] else out


@contextlib.contextmanager
def _registered(con, name: str, table: pa.Table):
    """``table`` registered in ``con`` as ``name`` for the block."""
    con.register(name, table)
    try:
        yield
    finally:
        con.unregister(name)
