"""Query rewrite: every ``predict(...)`` call becomes the backend's call for a pinned model version.

Pinning at plan time means one statement sees one version from its first row to its last even if
someone promotes another version meanwhile, that an unknown model or a wrong output kind fails
before any row is read, and that the in-database code looks models up by a key that never goes stale.
"""

from __future__ import annotations

import itertools
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import sqlglot
import sqlglot.expressions as exp

from ..errors import InvalidName, QueryError, ShapeMismatch, StrategyUnavailable
from ..registry import ResolvedModel, resolve

if TYPE_CHECKING:
    from ..backends.base import Backend

#: SQL function name -> what it returns (see docs/reference.md)
PREDICT_FUNCTIONS = {"predict": "scalar", "predict_array": "array", "predict_class": "class"}


@dataclass
class PlannedStatement:
    sql: str
    models: list[ResolvedModel] = field(default_factory=list)
    #: temporary tables the statement reads (DL-centric predictions), dropped after it ran
    cleanup: list[str] = field(default_factory=list)
    #: per predict call: every strategy's estimate and the choice (what EXPLAIN prints)
    plans: list = field(default_factory=list)


#: the schema dbdl's functions live in: ``dbdl.predict(...)`` is planned like ``predict(...)``
FUNCTION_SCHEMA = "dbdl"


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


def unpinned_call(backend: "Backend", call: exp.Anonymous) -> exp.Expression:
    """A call whose model is a column, spelled as the backend's in-database function (PostgreSQL:
    ``dbdl.predict``, which no function of someone else's in another schema can shadow)."""
    bare = exp.Anonymous(this=call.this.lower(), expressions=[a.copy() for a in call.expressions])
    if backend.function_schema is None:
        return bare
    return exp.Dot(this=exp.to_identifier(backend.function_schema), expression=bare)


HINT_RE = re.compile(r"/\*\+\s*dbdl\s+strategy\s*=\s*(\w+)\s*\*/", re.I)


def strategy_hint(sql: str, dialect=None) -> str | None:
    """The strategy named by a ``/*+ dbdl strategy=relation */`` comment in the SQL, if any (a
    comment: the same text inside a string literal is data, not a hint)."""
    if "dbdl" not in sql or "/*" not in sql:
        return None
    from sqlglot.dialects.dialect import Dialect

    try:
        tokens = Dialect.get_or_raise(dialect).tokenize(sql)
    except Exception:  # noqa: BLE001 - unparsable text has no hint dbdl can trust
        return None
    for token in tokens:
        for comment in token.comments:
            found = HINT_RE.search(f"/*{comment}*/")
            if found:
                return found[1].lower()
    return None


def plan_statement(backend: "Backend", tree: exp.Expression, strategy: str | None = None, *,
                   execute: bool = True, memory_budget: int | None = None,
                   cleanup: list[str] | None = None, use_cache: bool = True) -> PlannedStatement:
    """Rewrite the predict calls of one parsed statement for ``backend``.

    ``strategy`` forces "udf", "relation" or "dl"; None lets the cost model choose per call.
    With ``execute=False`` nothing is run or created: only the estimates are made (EXPLAIN).
    Calls of models whose result cache is on read and fill it (dbdl.cache) unless ``use_cache`` is off.
    """
    from .. import cache as result_cache
    from ..strategies import STRATEGIES
    from ..strategies.dl import dl_call
    from ..strategies.relation import model_graph, relation_call
    from .cost import CallPlan, estimate, with_cache

    from ..ir.sql import layouts

    # "relation:element" / "relation:blocked" also force the weight layout (calibration uses them)
    strategy, _, forced_layout = (strategy or "").partition(":")
    strategy = strategy or None
    if strategy not in (None, *STRATEGIES) or (forced_layout and (
            strategy != "relation" or forced_layout not in layouts(backend.name))):
        raise StrategyUnavailable(
            f"unknown strategy {strategy if not forced_layout else f'{strategy}:{forced_layout}'!r}; choose one of "
            f"{', '.join(STRATEGIES)} (relation-centric layouts here: {', '.join(layouts(backend.name))})")
    planned = PlannedStatement(sql="")
    if cleanup is not None:
        planned.cleanup = cleanup  # the caller drops these even if planning fails half way
    counter = itertools.count()
    ctes: list[exp.CTE] = []
    joined: dict[tuple, exp.Expression] = {}
    for call in find_predict_calls(tree):
        kind = PREDICT_FUNCTIONS[call.this.lower()]
        args = call.expressions
        if len(args) < 2:
            raise QueryError(
                f"{call.this}() takes two arguments, a model reference and the features, as in "
                f"{call.this}('fraud', feats) — or one features argument per model input, "
                f"{call.this}('m', a, b); got {len(args)}"
            )
        model_arg, *feature_args = args
        features = feature_args[0]
        if isinstance(model_arg, (exp.Literal, exp.Boolean)) and not getattr(model_arg, "is_string", False):
            raise InvalidName(f"{call.this}() takes the model reference as text, as in {call.this}('fraud', feats) "
                              f"or {call.this}('fraud@3', feats); got {model_arg.sql()}")
        if not (isinstance(model_arg, exp.Literal) and model_arg.is_string):
            if strategy in ("relation", "dl"):
                raise StrategyUnavailable(
                    f"strategy {strategy!r} plans one known model; a model named by a column runs with "
                    "strategy='udf'")
            # a model named by a column: resolved row by row inside the database
            call_node(call).replace(backend.unpinned_call_args(kind, call) or unpinned_call(backend, call))
            continue
        resolved = resolve(backend, model_arg.this)
        check_output_kind(kind, resolved)
        planned.models.append(resolved)

        graph = model_graph(backend, resolved)
        select = call.find_ancestor(exp.Select)
        joinable = select is not None and (select.args.get("from") or select.args.get("from_")) is not None
        rows = _estimate_rows(backend, select, features) if joinable else 1
        parameters = any(f.find(exp.Placeholder, exp.Parameter) is not None for f in feature_args)
        options = result_cache.enabled(backend, resolved) if use_cache else None
        cache_note, hit_rate = "", None
        # relation-centric SQL and the result cache take one flat float32 vector per row
        relation_problem = plain_features(resolved, feature_args) or (
            backend.relation_feature_problem(resolved, feature_args) if joinable else None)
        if options is not None:
            if relation_problem:
                cache_note = f"result cache not used: {relation_problem} (the cache keys one float32 vector)"
                options = None
            elif not joinable:
                cache_note, options = "result cache not used: predict is not inside a SELECT … FROM …", None
            elif tree.find(exp.Placeholder, exp.Parameter) is not None:
                cache_note, options = "result cache not used: the statement has bound parameters", None
            else:
                hit_rate = result_cache.expected_hit_rate(backend, resolved, options)
                cache_note = f"result cache: expected hit rate {hit_rate:.0%} (the entry's hits so far)"
        if hit_rate is not None:
            # only the misses are scored; every row pays the look-up, every miss the insert
            computed = max(1, round(rows * (1.0 - hit_rate)))
            candidates = with_cache(backend, estimate(backend, resolved, graph, computed, memory_budget), rows,
                                    computed)
        else:
            candidates = estimate(backend, resolved, graph, rows, memory_budget)
        for e in candidates:
            if e.strategy != "udf" and e.feasible and not joinable:
                e.seconds, e.reason = None, "predict is not inside a SELECT … FROM …"
            if e.strategy == "relation" and relation_problem:
                e.seconds, e.reason = None, relation_problem
            if e.strategy != "udf" and e.feasible and parameters:
                e.seconds, e.reason = None, "the features hold bound parameters, which only the in-database form takes"
            if e.strategy == "relation" and e.feasible and not backend.can_create_tables(backend.data_schema):
                from ..strategies.relation import missing_weight_tables

                if missing_weight_tables(backend, resolved, e.layout or "element"):
                    e.seconds, e.reason = None, ("its weight tables do not exist yet and this role may not create "
                                                 f"them in schema {backend.data_schema}: run the query once as "
                                                 "dbdl_admin")
        chosen = strategy
        if chosen is None:
            feasible = [e for e in candidates if e.feasible]
            if not feasible:
                reasons = "; ".join(f"{e.strategy}: {e.reason}" for e in candidates)
                raise StrategyUnavailable(f"no strategy can run {call.sql(dialect=backend.dialect)} ({reasons}); raise "
                                          "the memory budget (DBDL_MEMORY_BUDGET, db.memory_budget) or use a model the "
                                          "IR supports")
            chosen = min(feasible, key=lambda e: e.seconds).strategy
            in_server = options is not None and getattr(backend, "cache_filled_in_server", False)
            if in_server and any(e.strategy == "udf" and e.feasible for e in candidates):
                # only dbdl's own code writes a cache that roles share: its misses are scored in the
                # server (dbdl.cache_fill), whichever strategy would have been cheaper
                chosen = "udf"
                cache_note += "; the misses are scored in the server by dbdl.cache_fill"
            elif in_server:
                cache_note += f"; the server cannot score this model, so {chosen} scores the misses, uncached"
        else:
            forced = next(e for e in candidates if e.strategy == chosen)
            if not forced.feasible:
                raise StrategyUnavailable(f"strategy {chosen!r} cannot run {call.sql(dialect=backend.dialect)}: "
                                          f"{forced.reason}")
        planned.plans.append(CallPlan(call.sql(dialect=backend.dialect), resolved.ref, rows, graph.flops_per_row,
                                      graph.param_bytes, candidates, chosen, forced=strategy is not None,
                                      cache=cache_note))
        if not execute:
            continue
        if options is not None:
            # one look-up per (model, features) in a SELECT, whichever kinds read it
            key = (id(select), resolved.ref, features.sql(), "cache")
            if key not in joined:
                # a strategy the caller forced scores the misses too; otherwise the misses are planned
                # on their own, now that their number is known rather than expected
                how = chosen if strategy or chosen != "udf" and getattr(backend, "cache_filled_in_server", False) \
                    else None
                if strategy == "relation":
                    how += ":" + (forced_layout or next(e.layout for e in candidates if e.strategy == "relation")
                                  or "element")

                def compute(sql: str, how: str | None) -> None:
                    for inner in parse(sql, backend.dialect) or []:
                        step = plan_statement(backend, inner, how, memory_budget=memory_budget,
                                              cleanup=planned.cleanup, use_cache=False)
                        backend.run_query(step.sql, (), step.models)

                joined[key] = result_cache.cached_call(backend, resolved, call, features, how, options,
                                                       planned.cleanup, compute)
            replacement = result_cache.output_expression(backend, kind, resolved, joined[key])
        elif chosen in ("relation", "dl"):
            # the same call twice in one SELECT (select list and GROUP BY) must be the same column
            key = (id(select), resolved.ref, kind, tuple(f.sql() for f in feature_args))
            if key not in joined:
                if chosen == "relation":
                    layout = forced_layout or next(e.layout for e in candidates if e.strategy == "relation") or "element"
                    joined[key], new_ctes = relation_call(backend, kind, resolved, call, features, counter, layout)
                    ctes.extend(new_ctes)
                else:
                    joined[key] = dl_call(backend, kind, resolved, call,
                                          features if len(feature_args) == 1 else feature_args, planned.cleanup)
            replacement = joined[key].copy()
        else:
            replacement = backend.predict_call_args(kind, resolved, feature_args)
        node = call_node(call)
        if isinstance(node.parent, exp.Select) and node.arg_key == "expressions":
            # an unaliased select-list call keeps the name users expect (as PostgreSQL names it)
            replacement = exp.alias_(replacement, call.this.lower())
        node.replace(replacement)
    if ctes:
        # CREATE TABLE … AS / INSERT … SELECT: the CTEs belong to the query inside
        query = tree if isinstance(tree, exp.Query) else tree.find(exp.Query)
        for cte in ctes:
            query.with_(cte.alias, as_=cte.this, copy=False)
    planned.sql = tree.sql(dialect=backend.dialect)
    return planned


def plain_features(model: ResolvedModel, feature_args: list[exp.Expression]) -> str:
    """Why a call is not the plain form — one vector of float32 values for a model of fixed-width
    float32 inputs — which relation-centric SQL and the result cache take; "" when it is."""
    if len(feature_args) > 1:
        return f"the call passes {len(feature_args)} feature arguments"
    for spec in model.signature.inputs:
        if spec.dtype != "float32":
            return f"input {spec.name!r} takes {spec.dtype} values, not float32"
        if spec.per_row is None or not spec.shape:
            return f"input {spec.name!r} has no fixed width per row (shape {list(spec.shape)})"
    return ""


def _estimate_rows(backend: "Backend", select: exp.Select, features: exp.Expression) -> int:
    from ..strategies.common import source_rows

    # the rows the SELECT reads (an upper bound of the distinct feature vectors), without the
    # features themselves, which may hold bound parameters
    return backend.estimate_rows(source_rows(select).sql(dialect=backend.dialect))


def check_output_kind(kind: str, model: ResolvedModel) -> None:
    from dbdl_udf.runtime import label_class_error, text_output_error

    spec = model.output_spec
    if spec.is_text and kind == "array" or spec.is_text and kind == "class" and spec.per_row != 1:
        raise text_output_error(model.ref, spec.name, kind)
    width = spec.per_row
    if width is None:
        return  # symbolic trailing axes: checked on the first batch
    if kind == "scalar" and width != 1:
        raise ShapeMismatch(
            f"model {model.ref!r} output {spec.name!r} has {width} values per row but predict() "
            f"returns one; use predict_array() for the whole vector or predict_class() for the arg-max"
        )
    if kind == "class" and width < 2:
        scores = model.signature.scores_output()
        raise label_class_error(model.ref, spec.name, scores.name if scores is not None else None)


def parse(sql: str, dialect: str) -> list[exp.Expression] | None:
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
