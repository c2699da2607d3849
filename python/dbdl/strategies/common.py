"""What the join-based strategies share: the distinct feature vectors a SELECT needs scored."""

from __future__ import annotations

import sqlglot.expressions as exp

from ..errors import StrategyUnavailable


def enclosing_select(call: exp.Expression) -> exp.Select:
    select = call.find_ancestor(exp.Select)
    if select is None or (select.args.get("from_") is None and select.args.get("from") is None):
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


def distinct_features(select: exp.Select, features: exp.Expression, dialect: str | None = None) -> exp.Select:
    """SELECT DISTINCT <features> AS dbdl_f over source_rows(select), NULL features left out (they
    give NULL): each feature vector the SELECT needs scored, once. With ``dialect``, arrays holding
    a NULL element are left out too (they give NULL as well, under every strategy)."""
    rows = source_rows(select)
    rows.set("expressions", [exp.alias_(features.copy(), "dbdl_f")])
    rows.set("distinct", exp.Distinct())
    return rows.where(scorable(features, dialect), copy=False)


def scorable(features: exp.Expression, dialect: str | None = None) -> exp.Expression:
    """The condition for a row to be scored: features not NULL and (with ``dialect``) no NULL
    element — otherwise its prediction is NULL, as the in-database functions return."""
    from ..ir.sql import no_null_elements

    present = exp.Not(this=exp.Is(this=features.copy(), expression=exp.Null()))
    return present if dialect is None else exp.and_(present, no_null_elements(dialect, features.copy()))


def _has_prediction_or_parameter(node: exp.Expression) -> bool:
    from ..planner.rewrite import PREDICT_FUNCTIONS

    if node.find(exp.Placeholder, exp.Parameter) is not None:
        return True
    return any(isinstance(a.this, str) and a.this.lower() in PREDICT_FUNCTIONS for a in node.find_all(exp.Anonymous))
