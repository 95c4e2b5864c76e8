"""Aggregates split into partial / combine / merge / final forms.

Every aggregate call in a streaming query becomes an :class:`AggSpec` with four SQL forms:

* ``partial`` — aggregates over input rows, producing one or more partial-state columns;
  ``partial_w`` is the same as a running window aggregate (``… OVER __w``) for EMIT CHANGES.
* ``combine`` — aggregates over partial-state rows, producing the same columns (used to merge the
  partials of many micro-batches, and of V2 partitions: two-phase aggregation).
* ``merge`` — a scalar merge of two partial states ``a`` and ``b`` (older first), for running values.
* ``final`` — a scalar expression turning partial state into the user's value.

Decomposable aggregates (COUNT, SUM, AVG, MIN, MAX, variance family, FIRST/LAST, BOOL_AND/OR) keep
O(1) state per group. Holistic ones (MEDIAN, quantiles, MODE, COUNT(DISTINCT), STRING_AGG, …) keep
the values they need as a DuckDB list and finish with ``list_aggregate``: correct, with memory
proportional to the values of open groups.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

from sqlglot import exp

from ..errors import SqlError

SEQ = "__seq"  # the arrival sequence number of a row within its job


@dataclass(frozen=True)
class AggSpec:
    """One aggregate call and its decomposition. Column names in the SQL are already resolved."""

    id: str
    call: str
    holistic: bool
    parts: tuple[str, ...]
    partial: tuple[str, ...]
    partial_w: tuple[str, ...]
    combine: tuple[str, ...]
    merge: tuple[str, ...]
    final: str
    pre: tuple[tuple[str, str], ...] = ()  # (column, window SQL with {part}) computed before combine
    # What the running (EMIT CHANGES) fast path needs to know: "count_star", "count", "sum" or
    # "avg" over ``arg`` with no FILTER or DISTINCT; None when the aggregate is anything else.
    running: str | None = None
    arg: str | None = None

    def merge_sql(self, a: str, b: str) -> list[str]:
        """The merge expressions with ``a``/``b`` as the relation prefixes of the two states."""
        out = []
        for template in self.merge:
            mapping = {}
            for p in self.parts:
                short = p.rsplit("_", 1)[1]
                mapping[f"a_{short}"] = f"{a}.{p}"
                mapping[f"b_{short}"] = f"{b}.{p}"
            out.append(template.format(**mapping))
        return out


# Aggregates DuckDB knows that sqlglot parses as anonymous functions or as its own classes; all of
# these are finished from a list of values by list_aggregate.
HOLISTIC = {
    "median", "quantile", "quantile_cont", "quantile_disc", "mode", "product", "entropy",
    "kurtosis", "kurtosis_pop", "skewness", "mad", "fsum", "sumkahan", "kahan_sum", "histogram",
    "bit_and", "bit_or", "bit_xor", "geomean", "geometric_mean", "favg", "sem",
}  # fmt: skip
DECOMPOSABLE = {
    "count", "sum", "avg", "mean", "min", "max", "stddev", "stddev_samp", "stddev_pop", "variance",
    "var_samp", "var_pop", "first", "last", "arbitrary", "any_value", "bool_and", "bool_or",
    "listagg", "string_agg", "group_concat", "array_agg", "list", "count_if", "countif",
}  # fmt: skip
NONDETERMINISTIC = {"approx_count_distinct", "approx_quantile", "reservoir_quantile", "approx_top_k"}
_NAME_ALIASES = {
    "bitwiseandagg": "bit_and", "bitwiseoragg": "bit_or", "bitwisexoragg": "bit_xor",
    "logicaland": "bool_and", "logicalor": "bool_or", "variancepop": "var_pop",
}  # fmt: skip

KNOWN = HOLISTIC | DECOMPOSABLE


def aggregate_name(node: exp.Expression) -> str | None:
    """The DuckDB name of an aggregate call (lower case), or None when ``node`` is no aggregate."""
    if isinstance(node, exp.Filter):
        return aggregate_name(node.this)
    if isinstance(node, exp.IgnoreNulls):
        return aggregate_name(node.this)
    if isinstance(node, exp.Anonymous):
        name = node.name.lower()
        return name if name in KNOWN | NONDETERMINISTIC else None
    if isinstance(node, exp.AggFunc):
        alias = _NAME_ALIASES.get(type(node).__name__.lower())
        if alias:
            return alias
        return node.sql("duckdb").split("(", 1)[0].strip().lower()
    return None


def is_aggregate(node: exp.Expression) -> bool:
    """True for an aggregate call (not one used as a window function ``… OVER (…)``)."""
    if aggregate_name(node) is None or isinstance(node.parent, (exp.Filter, exp.IgnoreNulls)):
        return False
    return not isinstance(node.parent, exp.Window) or node.parent.this is not node


@functools.cache
def duckdb_aggregates() -> frozenset[str]:
    """The names of every aggregate function DuckDB has (its catalogue, read once: metadata of
    the library, not of any job's database)."""
    import duckdb

    rows = duckdb.sql(
        "SELECT DISTINCT lower(function_name) FROM duckdb_functions() WHERE function_type = 'aggregate'"
    ).fetchall()
    return frozenset(r[0] for r in rows)


def function_name(node: exp.Expression) -> str | None:
    """The DuckDB name of a function call (lower case), or None for anything else."""
    if isinstance(node, exp.Anonymous):
        return node.name.lower()
    if isinstance(node, exp.Func):
        return node.sql("duckdb").split("(", 1)[0].strip().lower()
    return None


def is_any_aggregate(node: exp.Expression) -> bool:
    """True for a call of any DuckDB aggregate, known to the decomposition or not (not one used
    as a window function). sqlglot parses every DuckDB aggregate as an ``AggFunc`` or as an
    anonymous function; only for the latter is DuckDB's catalogue asked (reading it costs
    ~0.1 s, which a statement of known functions does not pay)."""
    if is_aggregate(node):
        return True
    named = isinstance(node, exp.AggFunc) or (
        isinstance(node, exp.Anonymous) and node.name.lower() in duckdb_aggregates()
    )
    return named and (not isinstance(node.parent, exp.Window) or node.parent.this is not node)


# Aggregates whose result depends on the order of their rows, when they have no ORDER BY.
ORDER_SENSITIVE = {"first", "last", "arbitrary", "string_agg", "listagg", "group_concat", "array_agg", "list"}


def in_arrival_order(select: exp.Expression) -> exp.Expression:
    """``select`` with each order-sensitive aggregate that has no ORDER BY of its own ordered by
    the rows' arrival (``ORDER BY __seq``): for SQL whose rows come in another order than they
    arrived (a session's rows are sorted by event time to find the sessions)."""

    def order(node: exp.Expression) -> exp.Expression:
        if (
            isinstance(node, exp.AggFunc)
            and aggregate_name(node) in ORDER_SENSITIVE
            and isinstance(node.this, exp.Expression)
            and not isinstance(node.this, exp.Order)
            and not any(isinstance(a, exp.Order) for a in node.args.values())
        ):
            node = node.copy()
            ordered = exp.Ordered(this=exp.column(SEQ), nulls_first=False)
            node.set("this", exp.Order(this=node.this, expressions=[ordered]))
        return node

    return select.transform(order)


def _arguments(node: exp.Expression) -> tuple[list[exp.Expression], bool]:
    """The argument expressions of an aggregate call and whether it is DISTINCT."""
    if isinstance(node, exp.Anonymous):
        args = list(node.expressions)
    else:
        args = [node.this] if node.this is not None else []
        for key in ("expression", "quantile", "separator"):
            if node.args.get(key) is not None:
                args.append(node.args[key])
        args.extend(node.expressions if isinstance(node.args.get("expressions"), list) else [])
    distinct = False
    if args and isinstance(args[0], exp.Distinct):
        distinct = True
        args = list(args[0].expressions) + args[1:]
    return args, distinct


def decompose(node: exp.Expression, index: int, location=None) -> AggSpec:
    """Build the :class:`AggSpec` of aggregate call ``node``; its columns are ``__a<index>_*``."""
    call = node.sql("duckdb")
    conds: list[str] = []
    if isinstance(node, exp.Filter):
        conds.append(f"({node.expression.this.sql('duckdb')})")
        node = node.this
    if isinstance(node, exp.IgnoreNulls):
        node = node.this
    name = aggregate_name(node)
    if name in NONDETERMINISTIC:
        raise SqlError(
            f"{name}() is approximate and cannot give the same result streamed and batched; "
            "use its exact form (COUNT(DISTINCT …), QUANTILE_CONT, …)",
            location,
        )
    if name is None or name not in KNOWN:
        raise SqlError(f"unsupported aggregate function {call}", location)
    args, distinct = _arguments(node)
    star = bool(args) and isinstance(args[0], exp.Star)
    x = args[0].sql("duckdb") if args and not star else None
    extra = [a.sql("duckdb") for a in args[1:]]
    spec = _decompose(name, index, call, conds, x, extra, distinct, star, location)
    running = None
    if not conds and not distinct and not extra:
        running = {"count": "count_star" if x is None else "count", "sum": "sum", "avg": "avg",
                   "mean": "avg"}.get(name)  # fmt: skip
    return dataclasses.replace(spec, running=running, arg=x)


def _decompose(name, index, call, conds, x, extra, distinct, star, location) -> AggSpec:
    p = f"__a{index}"
    build = _Builder(p, index, call, conds)

    if name in ("count", "count_if", "countif") and not distinct:
        if name != "count":
            build.conds.append(f"({x})")
            x = None
        return build.simple("c", f"count({x or '*'})", "sum({c})", "coalesce({a_c}, 0) + coalesce({b_c}, 0)",
                            "CAST(coalesce({c}, 0) AS BIGINT)")  # fmt: skip
    if distinct or name in HOLISTIC:
        return build.values(x, name, extra, distinct)
    if name == "sum":
        return build.simple("s", f"sum({x})", "sum({s})", _nullsafe("{a_s} + {b_s}", "s"), "{s}")
    if name in ("min", "max", "bool_and", "bool_or"):
        merge = {"min": "least({a_m}, {b_m})", "max": "greatest({a_m}, {b_m})",
                 "bool_and": _nullsafe("({a_m} AND {b_m})", "m"),
                 "bool_or": _nullsafe("({a_m} OR {b_m})", "m")}[name]  # fmt: skip
        return build.simple("m", f"{name}({x})", f"{name}({{m}})", merge, "{m}")
    if name in ("avg", "mean"):
        return build.spec(
            [("s", f"sum({x})", "sum({s})", _nullsafe("{a_s} + {b_s}", "s")),
             ("c", f"count({x})", "sum({c})", "coalesce({a_c}, 0) + coalesce({b_c}, 0)")],
            "CASE WHEN {c} > 0 THEN {s} / {c} END",
        )  # fmt: skip
    if name in ("stddev", "stddev_samp", "stddev_pop", "variance", "var_samp", "var_pop"):
        return build.variance(x, name)
    if name in ("first", "last", "arbitrary", "any_value"):
        if name == "any_value":
            build.conds.append(f"({x}) IS NOT NULL")
        fn = "max" if name == "last" else "min"
        merge = "greatest({a_f}, {b_f})" if fn == "max" else "least({a_f}, {b_f})"
        return build.simple("f", f"{fn}({{'s': {SEQ}, 'v': {x}}})", f"{fn}({{f}})", merge,
                            "struct_extract({f}, 'v')")  # fmt: skip
    if name in ("listagg", "string_agg", "group_concat", "array_agg", "list"):
        return build.ordered_list(x, name, extra)
    raise SqlError(f"unsupported aggregate function {call}", location)  # pragma: no cover


def _nullsafe(expr: str, part: str) -> str:
    return f"CASE WHEN {{a_{part}}} IS NULL THEN {{b_{part}}} WHEN {{b_{part}}} IS NULL THEN {{a_{part}}} ELSE {expr} END"


class _Builder:
    """Assembles an AggSpec from short part names (``c`` → ``__a0_c``) and FILTER conditions."""

    def __init__(self, prefix: str, index: int, call: str, conds: list[str]) -> None:
        self.prefix, self.index, self.call, self.conds = prefix, index, call, conds

    def _filter(self, extra: list[str] = ()) -> str:
        conds = self.conds + list(extra)
        return f" FILTER (WHERE {' AND '.join(conds)})" if conds else ""

    def simple(self, part, partial, combine, merge, final) -> AggSpec:
        return self.spec([(part, partial, combine, merge)], final)

    def spec(self, parts, final, holistic=False, pre=(), partial_w=None, filter_extra=()) -> AggSpec:
        names = {short: f"{self.prefix}_{short}" for short, *_ in parts}
        flt = self._filter(filter_extra)
        partial = tuple(f"{p[1]}{flt}" for p in parts)
        if partial_w is None:
            partial_w = tuple(f"{p[1]}{flt} OVER __w" for p in parts)
        return AggSpec(
            id=self.prefix,
            call=self.call,
            holistic=holistic,
            parts=tuple(names.values()),
            partial=partial,
            partial_w=tuple(partial_w),
            combine=tuple(p[2].format(**names) for p in parts),
            merge=tuple(p[3] for p in parts),
            final=final.format(**names),
            pre=tuple((f"{self.prefix}_{col}", sql.format(**names, part="{part}")) for col, sql in pre),
        )

    def variance(self, x: str, name: str) -> AggSpec:
        # Partial state (n, mean, M2) merged with Chan et al.'s formulas: numerically stable where
        # sum/sum-of-squares would cancel catastrophically.
        g = f"{self.prefix}_g"
        parts = [
            ("n", f"count({x})", "sum({n})", "coalesce({a_n}, 0) + coalesce({b_n}, 0)"),
            ("m", f"avg({x})", f"any_value({g})",
             "CASE WHEN coalesce({a_n}, 0) = 0 THEN {b_m} WHEN coalesce({b_n}, 0) = 0 THEN {a_m} "
             "ELSE {a_m} + ({b_m} - {a_m}) * {b_n} / ({a_n} + {b_n}) END"),
            ("q", f"coalesce(var_pop({x}), 0) * count({x})", f"sum({{q}} + {{n}} * ({{m}} - {g}) ** 2)",
             "CASE WHEN coalesce({a_n}, 0) = 0 THEN {b_q} WHEN coalesce({b_n}, 0) = 0 THEN {a_q} "
             "ELSE {a_q} + {b_q} + ({b_m} - {a_m}) ** 2 * {a_n} * {b_n} / ({a_n} + {b_n}) END"),
        ]  # fmt: skip
        pre = [
            (
                "g",
                "sum({n} * {m}) OVER (PARTITION BY {part}) / nullif(sum({n}) OVER (PARTITION BY {part}), 0)",
            )
        ]
        if name.endswith("_pop"):
            var = "CASE WHEN {n} > 0 THEN greatest({q}, 0) / {n} END"
        else:
            var = "CASE WHEN {n} > 1 THEN greatest({q}, 0) / ({n} - 1) END"
        final = f"sqrt({var})" if name.startswith("stddev") else var
        flt = self._filter()
        running = [  # the same partials as running window aggregates (EMIT CHANGES)
            f"count({x}){flt} OVER __w",
            f"avg({x}){flt} OVER __w",
            f"coalesce(var_pop({x}){flt} OVER __w, 0) * count({x}){flt} OVER __w",
        ]
        return self.spec(parts, final, pre=pre, partial_w=running)

    def values(self, x: str | None, name: str, extra: list[str], distinct: bool) -> AggSpec:
        if x is None:
            raise SqlError(f"{self.call}: expected a column or expression argument")
        agg = "count" if name == "count" else name
        dist = "DISTINCT " if distinct else ""
        listed = "list_distinct({l})" if distinct else "{l}"
        args = "".join(f", {e}" for e in extra)
        part = ("l", f"list({dist}{x})", "flatten(list({l}))", "list_concat({a_l}, {b_l})")
        combine_distinct = "list_distinct(flatten(list({l})))" if distinct else part[2]
        flt = self._filter([f"({x}) IS NOT NULL"])
        return self.spec(
            [(part[0], part[1], combine_distinct, part[3])],
            f"list_aggregate({listed}, '{agg}'{args})",
            holistic=True,
            partial_w=[f"list({x}){flt} OVER __w"],
            filter_extra=[f"({x}) IS NOT NULL"],
        )

    def ordered_list(self, x: str, name: str, extra: list[str]) -> AggSpec:
        # Arrival order is the order of a single-threaded batch scan. Each value travels with its
        # arrival number, and partials are combined by sorting on it: a partial may hold rows of
        # several interleaved runs (a V2 worker reading several files), so ordering whole
        # partials by their first row would not do.
        keep_nulls = name in ("array_agg", "list")
        nn = [] if keep_nulls else [f"({x}) IS NOT NULL"]
        flt = self._filter(nn)
        values = "list_transform({l}, lambda __e: __e.v)"
        if keep_nulls:
            final = values
        else:
            sep = extra[0] if extra else "','"
            final = f"list_aggregate({values}, 'string_agg', {sep})"
        pair = f"{{'o': {SEQ}, 'v': {x}}}"
        parts = [
            (
                "l",
                f"list({pair} ORDER BY {SEQ})",
                "list_sort(flatten(list({l})))",
                "list_concat({a_l}, {b_l})",
            )
        ]
        return self.spec(
            parts,
            final,
            holistic=True,
            partial_w=[f"list({pair}){flt} OVER __w"],
            filter_extra=nn,
        )
