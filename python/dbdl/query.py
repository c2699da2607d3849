"""The user's query as sqlglot trees: parsing it, finding its predict calls, and the rows a call reads.

Every layer above reads queries through these helpers (the planner finds and rewrites calls, the
strategies build their side queries from ``source_rows``, a backend binds ``argument_probe`` to
read the features' types), so they know nothing of registries, strategies or backends.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Callable, Sequence

import sqlglot
import sqlglot.expressions as exp

from dbdl_udf.kinds import PREDICT_FUNCTIONS

from .errors import StrategyUnavailable

__all__ = ["FUNCTION_SCHEMA", "PREDICT_FUNCTIONS", "argument_probe", "call_node", "distinct_features",
           "enclosing_select", "find_predict_calls", "parse", "row_identity", "scorable", "source_rows",
           "strategy_hint", "without_predict"]

#: the schema dbdl's functions live in: ``dbdl.predict(...)`` is planned like ``predict(...)``
FUNCTION_SCHEMA = "dbdl"


def without_predict(functions: dict) -> dict:
    """A dialect's parser functions without ``PREDICT``: sqlglot reads it as BigQuery's
    ``ML.PREDICT(MODEL m, ...)``, which would mangle ``predict('m', feats)``."""
    return {name: fn for name, fn in functions.items() if name != "PREDICT"}


def parse(sql: str, dialect: Any) -> list[exp.Expression] | None:
    """The statements of ``sql``, or None when sqlglot cannot parse it (the database then decides)."""
    logger = logging.getLogger("sqlglot")
    level = logger.level
    logger.setLevel(logging.ERROR)  # sqlglot warns when it keeps a statement as an opaque command
    try:
        trees = sqlglot.parse(sql, read=dialect)
    except sqlglot.errors.SqlglotError:
        return None
    finally:
        logger.setLevel(level)
    return [t for t in trees if t is not None]


def find_predict_calls(tree: exp.Expression) -> list[exp.Anonymous]:
    """Every ``predict(...)``, ``predict_array(...)``, ``predict_class(...)``, unqualified or
    qualified with dbdl's schema; a function of that name in another schema is someone else's."""
    calls = []
    for node in tree.find_all(exp.Anonymous):
        if not (isinstance(node.this, str) and node.this.lower() in PREDICT_FUNCTIONS):
            continue
        qualifier = _qualifier(node)
        if qualifier is None or qualifier.lower() == FUNCTION_SCHEMA:
            calls.append(node)
    return calls


def _qualifier(call: exp.Anonymous) -> str | None:
    parent = call.parent
    if isinstance(parent, exp.Dot) and parent.expression is call:
        return parent.this.name if isinstance(parent.this, exp.Identifier) else parent.this.sql()
    return None


def call_node(call: exp.Anonymous) -> exp.Expression:
    """The node a call's rewrite replaces: the call, or the ``dbdl.`` qualified name around it."""
    return call.parent if _qualifier(call) is not None else call


HINT_RE = re.compile(r"/\*\+\s*dbdl\s+strategy\s*=\s*(\w+(?::[\w./:-]+)?)\s*\*/", re.I)


def strategy_hint(sql: str, dialect: Any = None) -> str | None:
    """The strategy named by a ``/*+ dbdl strategy=relation */`` comment in the SQL (with a variant:
    ``strategy=relation:blocked``), if any (a comment: the same text inside a string literal is
    data, not a hint)."""
    if "dbdl" not in sql or "/*" not in sql:
        return None
    from sqlglot.dialects.dialect import Dialect

    try:
        tokens = Dialect.get_or_raise(dialect).tokenize(sql)
    except sqlglot.errors.SqlglotError:  # unparsable text has no hint dbdl can trust
        return None
    for token in tokens:
        # Spark's tokenizer reads /*+ … */ as an optimizer hint token (its comment without the +)
        texts = [token.text] if token.token_type == sqlglot.tokens.TokenType.HINT else []
        for text in [*texts, *(f"/*{comment}*/" for comment in token.comments)]:
            found = HINT_RE.search(text)
            if found:
                return found[1].lower()
    return None


# -- the rows a predict call reads ------------------------------------------------------------


def has_from(select: exp.Expression | None) -> bool:
    """A SELECT that reads rows (``SELECT … FROM …``), not one of constants."""
    return select is not None and (select.args.get("from_") is not None or select.args.get("from") is not None)


def enclosing_select(call: exp.Expression) -> exp.Select:
    select = call.find_ancestor(exp.Select)
    if not has_from(select):
        raise StrategyUnavailable("this strategy needs predict inside a SELECT … FROM …; use strategy='udf'")
    return select


def source_rows(select: exp.Select) -> exp.Select:
    """SELECT 1 FROM <the select's FROM, joins and prediction-free filters>, with the WITH clause
    of the statement it sits in: the rows whose features the SELECT scores (a superset)."""
    rows = exp.select(exp.Literal.number(1))
    for key in ("from", "from_"):
        if select.args.get(key) is not None:
            rows.set(key, select.args[key].copy())
    joins = [j.copy() for j in select.args.get("joins") or [] if not j.meta.get("dbdl_added")]
    if joins:
        rows.set("joins", joins)
    where = select.args.get("where")
    if where is not None:
        conjuncts = list(where.this.flatten()) if isinstance(where.this, exp.And) else [where.this]
        kept = [c.copy() for c in conjuncts if not _has_prediction_or_parameter(c)]
        if kept:
            rows.where(exp.and_(*kept), copy=False)
    _add_enclosing_ctes(select, rows)
    return rows


def _add_enclosing_ctes(select: exp.Expression, query: exp.Select) -> None:
    """Give a side query the CTEs the statement around ``select`` defines (its own come first)."""
    node: exp.Expression | None = select
    while node is not None:
        with_ = node.args.get("with_") or node.args.get("with")
        if with_ is not None:
            for cte in with_.expressions:
                if not cte.alias.startswith("dbdl_"):
                    query.with_(cte.alias, as_=cte.this.copy(), copy=False)
        node = node.parent


def distinct_features(select: exp.Select, features: exp.Expression,
                      no_null_elements: Callable[[exp.Expression], exp.Expression] | None = None) -> exp.Select:
    """SELECT DISTINCT <features> AS dbdl_f over source_rows(select), NULL features left out (they
    give NULL): each feature vector the SELECT needs scored, once. With ``no_null_elements`` (the
    backend's test that an array holds no NULL element), such arrays are left out too (they give
    NULL as well, under every strategy)."""
    rows = source_rows(select)
    rows.set("expressions", [exp.alias_(features.copy(), "dbdl_f")])
    rows.set("distinct", exp.Distinct())
    return rows.where(scorable(features, no_null_elements), copy=False)


def scorable(features: exp.Expression,
             no_null_elements: Callable[[exp.Expression], exp.Expression] | None = None) -> exp.Expression:
    """The condition for a row to be scored: features not NULL and (with ``no_null_elements``) no
    NULL element — otherwise its prediction is NULL, as the in-database functions return."""
    present = exp.Not(this=exp.Is(this=features.copy(), expression=exp.Null()))
    return present if no_null_elements is None else exp.and_(present, no_null_elements(features.copy()))


def has_parameters(node: exp.Expression) -> bool:
    """Whether ``node`` holds a bound parameter (``?``, ``$1``)."""
    return node.find(exp.Placeholder, exp.Parameter) is not None


def _has_prediction_or_parameter(node: exp.Expression) -> bool:
    if has_parameters(node):
        return True
    return any(isinstance(a.this, str) and a.this.lower() in PREDICT_FUNCTIONS for a in node.find_all(exp.Anonymous))


def argument_probe(args: Sequence[exp.Expression]) -> exp.Select | None:
    """A SELECT of a predict call's feature arguments over the rows they are computed from (the
    call's own FROM/WHERE), for a backend to bind and read their types from; None where the types
    cannot be known before the statement runs (bound parameters)."""
    if any(has_parameters(a) for a in args):
        return None
    select = args[0].find_ancestor(exp.Select)
    probe = source_rows(select) if has_from(select) else exp.select(exp.Literal.number(1))
    probe.set("expressions", [exp.alias_(a.copy(), f"a{i}") for i, a in enumerate(args)])
    return probe


def row_identity(select: exp.Select, column: str | None, is_base_table: Callable[[str], bool],
                 dialect: Any = None) -> exp.Expression | None:
    """``<table>.<column>`` (the backend's row identity: PostgreSQL's ctid, DuckDB's rowid) when
    the SELECT reads exactly one base table (not a CTE, view or partitioned table: ``is_base_table``
    says) and joins nothing else; otherwise None."""
    source = select.args.get("from_") or select.args.get("from")
    joins = [j for j in select.args.get("joins") or [] if not j.meta.get("dbdl_added")]
    if column is None or source is None or joins or not isinstance(source.this, exp.Table):
        return None
    table = source.this
    node, ctes = select, set()
    while node is not None:
        with_ = node.args.get("with_") or node.args.get("with")
        if with_ is not None:
            ctes.update(cte.alias for cte in with_.expressions)
        node = node.parent
    if not table.db and table.name in ctes:
        return None
    plain = exp.Table(this=table.this.copy(), db=table.args.get("db").copy() if table.args.get("db") else None)
    if not is_base_table(plain.sql(dialect=dialect)):
        return None
    return exp.column(column, table=table.alias_or_name)


# -- LIMIT: score only the rows the query returns ------------------------------------------------


def _literal_int(node: exp.Expression | None) -> int | None:
    value = node.args.get("expression") if node is not None else None
    if isinstance(value, exp.Literal) and not value.is_string and value.this.isdigit():
        return int(value.this)
    return None


def limited_rows(select: exp.Select | None) -> int | None:
    """LIMIT + OFFSET where the SELECT returns (at most) that many of its source rows unchanged:
    one table, no grouping, DISTINCT, aggregate or window, a WHERE and ORDER BY free of predictions
    and parameters, literal counts. Then only that many rows need scoring (``push_limit``); None
    when the query needs more (a top-k *over a prediction* must score every row)."""
    if not has_from(select) or select.args.get("limit") is None:
        return None
    if any(not j.meta.get("dbdl_added") for j in select.args.get("joins") or []):
        return None
    limit, offset = _literal_int(select.args.get("limit")), select.args.get("offset")
    skip = _literal_int(offset) if offset is not None else 0
    if limit is None or skip is None:
        return None
    if any(select.args.get(k) for k in ("group", "having", "distinct", "qualify", "windows")):
        return None
    if select.find(exp.AggFunc, exp.Window, exp.Placeholder, exp.Parameter, exp.Subquery) is not None:
        return None  # computed over every row before the LIMIT, or a parameter whose place would move
    source = (select.args.get("from_") or select.args.get("from")).this
    if not isinstance(source, exp.Table) or source.args.get("joins"):
        return None
    where, order = select.args.get("where"), select.args.get("order")
    if where is not None and _has_prediction_or_parameter(where):
        return None
    if order is not None:
        aliases = {e.alias for e in select.expressions if isinstance(e, exp.Alias)}
        for ordered in order.expressions:
            key = ordered.this
            if _has_prediction_or_parameter(key) or isinstance(key, exp.Literal):
                return None  # a top-k over a prediction, or ORDER BY 1 (a select-list position)
            if any(c.name in aliases and not c.table for c in key.find_all(exp.Column)):
                return None  # a select-list alias: not a column of the table
    if any(c.args.get("db") for c in select.find_all(exp.Column)):
        return None  # schema.table.column would not name the subquery
    return limit + skip


def movable_limit(select: exp.Select, identity_column: str | None, is_base_table: Callable[[str], bool],
                  dialect: Any = None) -> int | None:
    """The rows a ``SELECT … LIMIT n`` needs scored where ``push_limit`` can move the LIMIT below
    the model (``limited_rows``, and one base table with a row identity the query does not name
    itself), else None."""
    if select.meta.get("dbdl_limited"):
        return select.meta["dbdl_limited"]
    bound = limited_rows(select)
    if bound is None or row_identity(select, identity_column, is_base_table, dialect) is None:
        return None
    if any(c.name.lower() == identity_column for c in select.find_all(exp.Column)):
        return None  # SELECT rowid: the subquery's * would not carry it
    return bound


def push_limit(select: exp.Select, identity_column: str | None, is_base_table: Callable[[str], bool],
               dialect: Any = None) -> bool:
    """Move the SELECT's WHERE, ORDER BY and LIMIT/OFFSET into its FROM, as ``(SELECT * FROM t
    WHERE … ORDER BY …, <row identity> LIMIT …) AS t``, so that a strategy scoring the source rows
    up front (relation, DL, the result cache) scores only the rows returned. The row identity
    breaks ties, so every reading of the subquery (the statement, a DL scorer's side query) gets the
    same rows. True if moved (where ``limited_rows`` allows it and the table has a row identity)."""
    if select.meta.get("dbdl_limited"):
        return True
    bound = movable_limit(select, identity_column, is_base_table, dialect)
    if bound is None:
        return False
    identity = row_identity(select, identity_column, is_base_table, dialect)
    source = select.args.get("from_") or select.args.get("from")
    table = source.this
    name = table.alias_or_name
    inner = exp.select(exp.Star()).from_(table.copy())
    where = select.args.get("where")
    if where is not None:
        inner.set("where", where.copy())
    order = select.args.get("order")
    keys = [o.copy() for o in order.expressions] if order is not None else []
    inner.set("order", exp.Order(expressions=[*keys, exp.Ordered(this=identity.copy())]))
    inner.set("limit", select.args["limit"].copy())
    if select.args.get("offset") is not None:
        inner.set("offset", select.args["offset"].copy())
    source.set("this", exp.Subquery(this=inner, alias=exp.TableAlias(this=exp.to_identifier(name))))
    select.set("where", None)
    select.set("offset", None)  # applied inside; the outer LIMIT and ORDER BY stay (the output's order)
    select.meta["dbdl_limited"] = bound  # what later calls of the same SELECT read (it is moved now)
    return True
