"""What a streaming SELECT is made of, as far as choosing its operator goes.

The specialised operators (projection, incremental aggregate, session, row buffer) read one
shape of query: a single SELECT over the stream, its clauses rewritten for state kept between
micro-batches. Anything else DuckDB accepts — CTEs, subqueries in FROM, DISTINCT, window
functions, QUALIFY, WITHIN GROUP, set operations — is named here, so the planner can run it
another way (per micro-batch when it is stateless, per closed window or at end of input
otherwise) or refuse it with the construct's name. Nothing here touches a connection.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from .aggregates import KNOWN, NONDETERMINISTIC, aggregate_name, function_name, is_any_aggregate

# Columns a source row has beside its own: they exist in a statement's relation only where the
# statement names them, so ``SELECT *`` reads what batch SQL over the same input reads.
SYSTEM_COLUMNS = ("_partition", "_offset")
WINDOW_COLUMNS = ("_window_start", "_window_end")


@dataclass(frozen=True)
class Constructs:
    """A SELECT's constructs, judged against the stream it reads.

    ``general`` names each construct the specialised operators do not read (in the order found;
    empty when they read the whole statement). ``stateless`` says every row of the stream goes
    through per-row steps only (filters, projections, UNION ALL, lookups in tables): the query
    over a micro-batch gives that micro-batch's share of the result. ``distinct`` says the
    outermost SELECT is DISTINCT over such a stateless body.
    """

    general: tuple[str, ...]
    stateless: bool
    distinct: bool
    references: frozenset[str]  # lower-cased column names the query names anywhere


def ctes(select: exp.Expression) -> dict[str, exp.Expression]:
    """The common table expressions defined anywhere in ``select``, by lower-cased name."""
    return {c.alias_or_name.lower(): c.this for c in select.find_all(exp.CTE)}


def stream_tables(select: exp.Expression, stream: str) -> list[exp.Table]:
    """Every table reference that reads the stream (a name, not a table function)."""
    return [
        t
        for t in select.find_all(exp.Table)
        if isinstance(t.this, exp.Identifier) and t.name.lower() == stream and not t.args.get("db")
    ]


def first_table(select: exp.Expression, defined: dict[str, exp.Expression]) -> exp.Table | None:
    """The table the outermost FROM reads first, looking through CTEs, subqueries and set
    operations: the stream of a statement that declares no source by its WITH keys."""
    seen: set[str] = set()
    node = select
    while node is not None:
        if isinstance(node, exp.SetOperation):
            node = node.this
            continue
        if isinstance(node, exp.Subquery):
            node = node.this
            continue
        if isinstance(node, exp.Select):
            from_ = node.args.get("from_")
            node = from_.this if from_ is not None else None
            continue
        if isinstance(node, exp.Table):
            name = node.name.lower()
            if isinstance(node.this, exp.Identifier) and name in defined and name not in seen:
                seen.add(name)
                node = defined[name]
                continue
            return node if isinstance(node.this, exp.Identifier) else None
        return None
    return None


def inspect(select: exp.Expression, stream: str) -> Constructs:
    """The constructs of ``select`` that matter for streaming it, against stream ``stream``."""
    touching = _touching_ctes(select, stream)
    found: list[str] = []

    def note(what: str) -> None:
        if what not in found:
            found.append(what)

    if isinstance(select, exp.SetOperation):
        note(_set_operation_name(select))
    for node in select.walk():
        if isinstance(node, exp.With):
            note("WITH (a common table expression)")
        elif isinstance(node, exp.Subquery) and isinstance(node.parent, (exp.From, exp.Join)):
            note("a subquery in FROM")
        elif isinstance(node, exp.SetOperation) and node is not select:
            note(_set_operation_name(node))
        elif isinstance(node, exp.Select) and node.args.get("distinct") is not None:
            note("DISTINCT ON" if node.args["distinct"].args.get("on") else "SELECT DISTINCT")
        elif isinstance(node, exp.Window) and node.meta.get("buffer_rows") is None:
            note("a window function OVER (…)")
        elif isinstance(node, exp.Qualify):
            note("QUALIFY")
        elif isinstance(node, exp.WithinGroup):
            note("WITHIN GROUP")
        elif is_any_aggregate(node) and (aggregate_name(node) or function_name(node)) not in (
            KNOWN | NONDETERMINISTIC
        ):
            note(f"the aggregate {function_name(node)}()")
        elif is_any_aggregate(node) and any(isinstance(a, exp.Order) for a in node.args.values()):
            note("an aggregate with its own ORDER BY")
    if isinstance(select, exp.Select):
        grouped = aggregating(select)
        if grouped and any(_is_subquery_expression(n) for n in select.walk()):
            note("a subquery in an aggregating SELECT")
        if any(_is_subquery_expression(n) and _touches(n, stream, touching) for n in select.walk()):
            note("a subquery over the stream")
    if len(_stream_reads(select, stream, touching)) > 1:
        note("the stream read more than once")
    stateless = _stateless(select, stream, touching)
    distinct = (
        isinstance(select, exp.Select)
        and select.args.get("distinct") is not None
        and not select.args["distinct"].args.get("on")
        and _stateless(_without_distinct(select), stream, touching)
    )
    names = frozenset(c.name.lower() for c in select.find_all(exp.Column))
    return Constructs(general=tuple(found), stateless=stateless, distinct=distinct, references=names)


def meeting(select: exp.Expression, streams: list[str]) -> bool:
    """Whether rows of two of ``streams`` meet in one SELECT (a join, directly or through CTEs
    and subqueries in FROM)."""
    touching = {s: _touching_ctes(select, s) for s in streams}
    for node in select.walk():
        if isinstance(node, exp.Select):
            read = {s for src in _sources(node) for s in streams if _touches(src, s, touching[s])}
            if len(read) > 1:
                return True
    return False


def _set_operation_name(node: exp.SetOperation) -> str:
    word = {exp.Union: "UNION", exp.Intersect: "INTERSECT", exp.Except: "EXCEPT"}.get(type(node), "UNION")
    return f"{word}{'' if node.args.get('distinct') else ' ALL'}"


def _is_subquery_expression(node: exp.Expression) -> bool:
    """A subquery used as a value (scalar, IN, EXISTS), not as a relation in FROM."""
    if isinstance(node, exp.Exists):
        return True
    return isinstance(node, exp.Subquery) and not isinstance(node.parent, (exp.From, exp.Join))


def aggregating(select: exp.Expression) -> bool:
    """Whether ``select`` is one SELECT that groups or aggregates its rows."""
    if not isinstance(select, exp.Select):
        return False
    return select.args.get("group") is not None or any(
        is_any_aggregate(n) for item in select.expressions for n in item.walk()
    )


def inline_aliases(select: exp.Expression) -> exp.Expression:
    """``select`` with each select item's use of an earlier item's alias (DuckDB's lateral
    aliases, ``sum(x) AS s, s * 2 AS s2``) replaced by that item's expression, in a SELECT that
    aggregates: the aggregate operators rewrite every aggregate they find in an item.

    DuckDB reads such a name as the source's column when the source has one; in an aggregating
    SELECT that column would be an error there (it is neither grouped nor aggregated)."""
    if not aggregating(select):
        return select
    earlier: dict[str, exp.Expression] = {}

    def inline(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Column) and not node.table and node.name.lower() in earlier:
            return earlier[node.name.lower()].copy()
        return node

    items = []
    for item in select.expressions:
        inner = item.unalias().copy().transform(inline) if earlier else item.unalias()
        items.append(exp.alias_(inner, item.alias, quoted=True) if item.alias else inner)
        if item.alias and not (isinstance(inner, exp.Column) and inner.name.lower() == item.alias.lower()):
            earlier[item.alias.lower()] = inner
    select = select.copy()
    select.set("expressions", items)
    return select


def _touching_ctes(select: exp.Expression, stream: str) -> set[str]:
    """The CTEs whose rows come (directly or through other CTEs) from the stream."""
    defined = ctes(select)
    touching: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, body in defined.items():
            if name not in touching and _touches(body, stream, touching):
                touching.add(name)
                changed = True
    return touching


def _touches(node: exp.Expression, stream: str, touching: set[str]) -> bool:
    return any(t.name.lower() == stream or t.name.lower() in touching for t in node.find_all(exp.Table))


def _sources(select: exp.Select) -> list[exp.Expression]:
    from_ = select.args.get("from_")
    out = [from_.this] if from_ is not None else []
    return out + [j.this for j in select.args.get("joins") or []]


def _stream_reads(select: exp.Expression, stream: str, touching: set[str]) -> list[exp.Expression]:
    """The relations of the outermost SELECT(s) that read the stream (a UNION's branches each
    count for themselves: their rows do not meet)."""
    if isinstance(select, exp.SetOperation):
        return max(
            _stream_reads(select.this, stream, touching),
            _stream_reads(select.expression, stream, touching),
            key=len,
        )
    if isinstance(select, exp.Subquery):
        return _stream_reads(select.this, stream, touching)
    if not isinstance(select, exp.Select):
        return []
    return [s for s in _sources(select) if _touches(s, stream, touching)]


def _stateless(select: exp.Expression, stream: str, touching: set[str]) -> bool:
    """Whether every SELECT the stream's rows pass through works row by row (see Constructs)."""
    for node in select.walk():
        if isinstance(node, exp.SetOperation) and (
            not isinstance(node, exp.Union) or node.args.get("distinct")
        ):
            if _touches(node, stream, touching):
                return False
        if _is_subquery_expression(node) and _touches(node, stream, touching):
            return False
        if not isinstance(node, exp.Select):
            continue
        reads = [s for s in _sources(node) if _touches(s, stream, touching)]
        if not reads:
            continue
        if len(reads) > 1 or not _row_by_row(node):
            return False
    return True


def _row_by_row(select: exp.Select) -> bool:
    """Whether one SELECT maps each input row to output rows on its own."""
    if select.args.get("distinct") is not None or select.args.get("group") is not None:
        return False
    if select.args.get("qualify") is not None or select.args.get("having") is not None:
        return False
    if select.args.get("offset") is not None:
        return False
    if select.args.get("limit") is not None and select.parent is not None:
        return False  # a LIMIT inside: its rows depend on every row before them
    for node in select.walk():
        if node is not select and isinstance(node, exp.Select):
            continue
        if isinstance(node, exp.Window) or is_any_aggregate(node):
            if node.find_ancestor(exp.Select) is select:
                return False
    return True


def _without_distinct(select: exp.Select) -> exp.Select:
    copy = select.copy()
    copy.set("distinct", None)
    return copy
