"""Query rewrite: every ``predict(...)`` call becomes what its chosen strategy runs, for a pinned model version.

Pinning at plan time means one statement sees one version from its first row to its last even if
someone promotes another version meanwhile, that an unknown model or a wrong output kind fails
before any row is read, and that the in-database code looks models up by a key that never goes stale.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import sqlglot.expressions as exp

from dbdl_udf.kinds import PREDICT_FUNCTIONS

from .. import cachestore
from ..errors import DTypeMismatch, InvalidName, QueryError, ShapeMismatch, StrategyUnavailable
from ..names import ResolvedModel
from ..query import (call_node, find_predict_calls, has_from, movable_limit, parse, push_limit, source_rows,
                     strategy_hint)
from ..strategies import STRATEGIES, PredictCall, StatementPlan
from ..strategies.base import memory_budget, model_graph
from . import cachejoin
from .cost import CallPlan, Explain, cheapest, with_cache

if TYPE_CHECKING:
    import pyarrow as pa

    from ..backends.base import Backend


@dataclass
class PlannedStatement:
    sql: str
    models: list[ResolvedModel] = field(default_factory=list)
    #: temporary tables the statement reads (DL-centric predictions), dropped after it ran
    cleanup: list[str] = field(default_factory=list)
    #: per predict call: every strategy's estimate and the choice (what EXPLAIN prints)
    plans: list = field(default_factory=list)


def unpinned_call(backend: "Backend", call: exp.Anonymous) -> exp.Expression:
    """A call whose model is a column, spelled as the backend's in-database function (PostgreSQL:
    ``dbdl.predict``, which no function of someone else's in another schema can shadow)."""
    bare = exp.Anonymous(this=call.this.lower(), expressions=[a.copy() for a in call.expressions])
    if backend.function_schema is None:
        return bare
    return exp.Dot(this=exp.to_identifier(backend.function_schema), expression=bare)


def _check_strategy(backend: "Backend", forced: str | None) -> tuple[str | None, str]:
    """(strategy, variant) of what the caller forced ("relation:blocked"), checked."""
    strategy, _, variant = (forced or "").partition(":")
    strategy = strategy or None
    known = STRATEGIES.get(strategy) if strategy else None
    if strategy is not None and (known is None or variant and not known.model_variants
                                 and variant not in known.variants(backend)):
        layouts = STRATEGIES["relation"].variants(backend)
        raise StrategyUnavailable(
            f"unknown strategy {strategy if not variant else f'{strategy}:{variant}'!r}; choose one of "
            f"{', '.join(STRATEGIES)} (relation-centric layouts here: {', '.join(layouts)})")
    return strategy, variant


def plan_statement(backend: "Backend", tree: exp.Expression, strategy: str | None = None, *,
                   execute: bool = True, memory_budget: int | None = None,
                   cleanup: list[str] | None = None, use_cache: bool = True) -> PlannedStatement:
    """Rewrite the predict calls of one parsed statement for ``backend``.

    ``strategy`` forces one of ``STRATEGIES`` (udf, relation, dl; "relation:blocked" also a
    variant); None lets the cost model choose per call. With ``execute=False`` nothing is run or
    created: only the estimates are made (EXPLAIN). Calls of models whose result cache is on read
    and fill it (planner/cachejoin.py) unless ``use_cache`` is off.
    """
    strategy, variant = _check_strategy(backend, strategy)
    budget = _budget(memory_budget)
    planned = PlannedStatement(sql="")
    statement = StatementPlan()
    if cleanup is not None:
        statement.cleanup = cleanup  # the caller drops these even if planning fails half way
    planned.cleanup = statement.cleanup
    joined: dict[tuple, Any] = {}
    for call in find_predict_calls(tree):
        kind = PREDICT_FUNCTIONS[call.this.lower()]
        args = call.expressions
        if len(args) < 2:
            raise QueryError(
                f"{call.this}() takes two arguments, a model reference and the features, as in "
                f"{call.this}('fraud', feats) — or one features argument per model input, "
                f"{call.this}('m', a, b), or one column per feature, {call.this}('m', c0, c1, c2); got {len(args)}"
            )
        model_arg, *feature_args = args
        if isinstance(model_arg, (exp.Literal, exp.Boolean)) and not getattr(model_arg, "is_string", False):
            raise InvalidName(f"{call.this}() takes the model reference as text, as in {call.this}('fraud', feats) "
                              f"or {call.this}('fraud@3', feats); got {model_arg.sql()}")
        if not (isinstance(model_arg, exp.Literal) and model_arg.is_string):
            if strategy not in (None, "udf"):
                raise StrategyUnavailable(
                    f"strategy {strategy!r} plans one known model; a model named by a column runs with "
                    "strategy='udf'")
            # a model named by a column: resolved row by row inside the database
            call_node(call).replace(backend.unpinned_call_args(kind, call) or unpinned_call(backend, call))
            continue
        resolved = backend.resolve(model_arg.this)
        check_output_kind(kind, resolved)
        wide = wide_call(call, resolved, feature_args)
        if wide:
            check_wide_arguments(backend, call, resolved, feature_args)
        planned.models.append(resolved)

        graph = model_graph(backend, resolved)
        select = call.find_ancestor(exp.Select)
        joinable = has_from(select)
        rows = _estimate_rows(backend, select) if joinable else 1
        limited = movable_limit(select, backend.row_identity, backend.is_base_table, backend.dialect) if joinable else None
        if limited is not None:  # SELECT … LIMIT n: n rows are scored, whichever strategy runs
            rows = min(rows, limited)
        predict = PredictCall(backend, kind, resolved, graph, call, list(feature_args), select, joinable, rows,
                              budget, variant, wide)

        options = cachestore.enabled(backend, resolved) if use_cache else None
        cache_note, hit_rate = "", None
        if options is not None:
            if predict.plain_problem:
                cache_note = f"result cache not used: {predict.plain_problem} (the cache keys one float32 vector)"
                options = None
            elif not joinable:
                cache_note, options = "result cache not used: predict is not inside a SELECT … FROM …", None
            elif tree.find(exp.Placeholder, exp.Parameter) is not None:
                cache_note, options = "result cache not used: the statement has bound parameters", None
            else:
                hit_rate = cachestore.expected_hit_rate(backend, resolved, options)
                cache_note = f"result cache: expected hit rate {hit_rate:.0%} (the entry's hits so far)"
        if hit_rate is not None:
            # only the misses are scored; every row pays the look-up, every miss the insert
            predict.rows = max(1, round(rows * (1.0 - hit_rate)))
            candidates = with_cache(predict.costs, [s.candidate(predict) for s in STRATEGIES.values()], rows,
                                    predict.rows)
        else:
            candidates = [s.candidate(predict) for s in STRATEGIES.values()]

        chosen = strategy
        if chosen is None:
            best = cheapest(candidates)
            if best is None:
                reasons = "; ".join(f"{e.strategy}: {e.reason}" for e in candidates)
                raise StrategyUnavailable(f"no strategy can run {call.sql(dialect=backend.dialect)} ({reasons}); raise "
                                          "the memory budget (DBDL_MEMORY_BUDGET, db.memory_budget) or use a model the "
                                          "IR supports")
            chosen = best.strategy
            in_server = options is not None and backend.cache_filled_in_server
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
        estimate = next(e for e in candidates if e.strategy == chosen)
        planned.plans.append(CallPlan(call.sql(dialect=backend.dialect), resolved.ref, rows, predict.flops,
                                      graph.param_bytes, candidates, chosen, forced=strategy is not None,
                                      cache=cache_note))
        if not execute:
            continue
        # the cache keys one vector: a call of one column per feature has them packed into one array
        features = predict.packed() if wide and options is not None else feature_args[0]
        if limited is not None and (options is not None or STRATEGIES[chosen].joins):
            # a strategy that scores the source rows up front scores only the LIMIT's rows
            push_limit(select, backend.row_identity, backend.is_base_table, backend.dialect)
        if options is not None:
            # one look-up per (model, features) in a SELECT, whichever kinds read it
            key = (id(select), resolved.ref, features.sql(), "cache")
            if key not in joined:
                # a strategy the caller forced scores the misses too; otherwise the misses are planned
                # on their own, now that their number is known rather than expected
                how = chosen if strategy or chosen != "udf" and backend.cache_filled_in_server else None
                if strategy == "relation":
                    how += ":" + (variant or estimate.layout or "element")
                elif variant:  # a hybrid plan's split point
                    how += ":" + variant

                def compute(sql: str, how: str | None) -> None:
                    for inner in parse(sql, backend.dialect) or []:
                        step = plan_statement(backend, inner, how, memory_budget=budget,
                                              cleanup=planned.cleanup, use_cache=False)
                        backend.run_query(step.sql, (), step.models)

                joined[key] = cachejoin.cached_call(backend, resolved, call, features, how, options,
                                                    planned.cleanup, compute, chosen=chosen)
            replacement = cachejoin.output_expression(backend, kind, resolved, joined[key])
        elif STRATEGIES[chosen].joins:
            # the same call twice in one SELECT (select list and GROUP BY) must be the same column
            key = (id(select), resolved.ref, kind, tuple(f.sql() for f in feature_args))
            if key not in joined:
                joined[key] = STRATEGIES[chosen].rewrite(predict, statement, estimate)
            replacement = joined[key].copy()
        else:
            replacement = STRATEGIES[chosen].rewrite(predict, statement, estimate)
        node = call_node(call)
        if isinstance(node.parent, exp.Select) and node.arg_key == "expressions":
            # an unaliased select-list call keeps the name users expect (as PostgreSQL names it)
            replacement = exp.alias_(replacement, call.this.lower())
        node.replace(replacement)
    if statement.ctes:
        # CREATE TABLE … AS / INSERT … SELECT: the CTEs belong to the query inside
        query = tree if isinstance(tree, exp.Query) else tree.find(exp.Query)
        with_ = query.args.get("with_") or query.args.get("with")
        defined = {(c.alias, c.this.sql()) for c in with_.expressions} if with_ is not None else set()
        for cte in statement.ctes:
            # a side query took copies of the user's own CTEs (query.source_rows), which the statement
            # defines already: drop them, as Spark's SQL would hoist them next to the originals and
            # then refuse a name defined twice
            for inner in list(cte.this.find_all(exp.With)):
                for copy in [c for c in inner.expressions if (c.alias, c.this.sql()) in defined]:
                    copy.pop()
                if not inner.expressions:
                    inner.pop()
            query.with_(cte.alias, as_=cte.this, copy=False)
    planned.sql = tree.sql(dialect=backend.dialect)
    return planned


def _budget(budget: int | None) -> int:
    return memory_budget() if budget is None else budget


def _estimate_rows(backend: "Backend", select: exp.Select) -> int:
    # the rows the SELECT reads (an upper bound of the distinct feature vectors), without the
    # features themselves, which may hold bound parameters
    return backend.estimate_rows(source_rows(select).sql(dialect=backend.dialect))


def wide_call(call: exp.Anonymous, model: ResolvedModel, feature_args: Sequence[exp.Expression]) -> bool:
    """Whether the call passes one column per feature: ``predict('m', c0, c1, c2, c3)`` for a model of
    one input of 4 values per row (DM8 has no arrays: a feature vector there is one column per
    feature). The rule: the model has exactly one input, of a fixed per-row width n > 1, and the call
    passes n feature arguments (so one argument per input, and one vector, keep their meaning).
    Several arguments of another number for such a model: ShapeMismatch naming both forms."""
    inputs = model.signature.inputs
    n = len(feature_args)
    if len(inputs) != 1 or n < 2 or inputs[0].per_row is None:
        return False
    width = inputs[0].per_row
    if n != width:
        raise ShapeMismatch(
            f"model {model.ref!r} takes {width} feature{'s' if width != 1 else ''} per row: pass {width} "
            f"column{'s' if width != 1 else ''}, or one array of {width} — {call.this}() got {n} feature arguments")
    return True


def check_wide_arguments(backend: "Backend", call: exp.Anonymous, model: ResolvedModel,
                         feature_args: Sequence[exp.Expression]) -> None:
    """Each argument of a call of one column per feature is one number per row (where the database
    can tell the types before the statement runs): an array is refused naming the two forms, text,
    booleans and bytes as DTypeMismatch, as the one-vector form refuses them."""
    forms = backend.argument_forms(feature_args)
    if forms is None:
        return
    n = len(feature_args)
    for i, (arg, (form, type_text)) in enumerate(zip(feature_args, forms)):
        if form == "number":
            continue
        what = arg.sql(dialect=backend.dialect)[:60]
        if form == "array":
            raise ShapeMismatch(
                f"{call.this}() passes {n} feature arguments, one number per feature of model {model.ref!r}, and "
                f"argument {i + 2} ({what}) is an array ({type_text}); pass one number per column, or the whole "
                f"vector as the one features argument, as in {call.this}('{model.name}', feats)")
        raise DTypeMismatch(
            f"model {model.ref!r} takes numeric features, here one number per column ({n} columns); convert "
            f"argument {i + 2} ({what}), e.g. CAST(col AS DOUBLE) — got {type_text}")


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


# -- the statements of one db.sql / db.explain ----------------------------------------------------


def run_sql(backend: "Backend", query: str, params: Sequence[Any] = (), *, strategy: str | None = None,
            memory_budget: int | None = None) -> "pa.Table | None":
    """Run SQL (one statement, or several separated by ``;`` — the last one's rows are returned),
    its predict calls planned first (``db.sql``)."""
    params = tuple(params or ())
    needs_rewrite = bool(params) and backend.paramstyle != "qmark"
    if "predict" not in query.lower() and not needs_rewrite and strategy is None:
        return backend.run_query(query, params)
    trees = parse(query, backend.dialect)
    if trees is not None:
        # a trailing comment parses as a statement of its own: it has nothing to run
        trees = [t for t in trees if t.sql(dialect=backend.dialect).strip()] or trees
    if trees is None:
        if needs_rewrite:
            raise QueryError("the query does not parse, so its ? placeholders cannot be bound; check the SQL")
        return backend.run_query(query, params)
    if params and len(trees) > 1:
        raise QueryError(
            f"parameters bind to one statement, and this text has {len(trees)}; run the statements one by one")
    table = None
    strategy = strategy or strategy_hint(query, backend.dialect)
    for tree in trees:
        explained = explained_statement(tree, backend.dialect)
        if explained is not None:
            table = _run_explain(backend, *explained, params, strategy, memory_budget)
            continue
        cleanup: list[str] = []  # DL-centric temp tables, created while planning
        try:
            planned = plan_statement(backend, tree, strategy, memory_budget=memory_budget, cleanup=cleanup)
            table = backend.run_query(planned.sql, params, planned.models)
        finally:
            for temp in cleanup:
                with contextlib.suppress(Exception):  # never hide the statement's own error
                    backend.drop_temp_table(temp)
    return table


#: the words an EXPLAIN may take before its statement (Spark: EXTENDED, CODEGEN, COST, FORMATTED;
#: DuckDB and PostgreSQL: ANALYZE, VERBOSE)
EXPLAIN_OPTIONS = ("ANALYZE", "VERBOSE", "EXTENDED", "CODEGEN", "COST", "FORMATTED")


def explained_statement(tree: exp.Expression, dialect: Any) -> tuple[str, exp.Expression] | None:
    """(``EXPLAIN [options]``, the statement) when ``tree`` is an EXPLAIN of a statement with
    predict calls (which sqlglot keeps as an opaque command), else None."""
    if not (isinstance(tree, exp.Command) and str(tree.this).upper() == "EXPLAIN"):
        return None
    text = tree.expression.this if isinstance(tree.expression, exp.Literal) else str(tree.expression or "")
    words = text.split(None, 1)
    head = ["EXPLAIN"]
    while len(words) == 2 and words[0].upper() in EXPLAIN_OPTIONS:
        head.append(words[0].upper())
        words = words[1].split(None, 1)
    inner = parse(" ".join(words), dialect)
    if not inner or len(inner) != 1 or not find_predict_calls(inner[0]):
        return None
    return " ".join(head), inner[0]


def _run_explain(backend: "Backend", head: str, tree: exp.Expression, params: Sequence[Any], strategy: str | None,
                 memory_budget: int | None) -> "pa.Table | None":
    """``EXPLAIN <statement with predict calls>``: dbdl's plan (each call's candidates, the choice
    and why), then the database's EXPLAIN of the statement as planned — pinned versions, the chosen
    strategies' SQL. A DL-centric or hybrid call scores its rows while it is planned, so where one
    is chosen (or under EXPLAIN ANALYZE) the statement is not planned for running: only dbdl's plan."""
    import pyarrow as pa

    plans = plan_statement(backend, tree.copy(), strategy, execute=False, memory_budget=memory_budget).plans
    lines = [str(Explain(plans))]
    table = None
    if "ANALYZE" in head or any(p.choice not in ("udf", "relation") for p in plans):
        lines.append("(the database's plan is not shown: the chosen strategy scores the rows while the statement "
                     "is planned; db.explain(sql) gives the estimates)")
    else:
        cleanup: list[str] = []
        try:
            planned = plan_statement(backend, tree, strategy, memory_budget=memory_budget, cleanup=cleanup)
            table = backend.run_query(f"{head} {planned.sql}", params, planned.models)
        finally:
            for temp in cleanup:
                with contextlib.suppress(Exception):
                    backend.drop_temp_table(temp)
    if table is None or table.num_columns == 0 or not all(pa.types.is_string(t) for t in table.schema.types):
        return pa.table({"plan": lines})
    # dbdl's rows first, in the database's own columns (its label columns read "dbdl")
    ours = {name: (lines if i == table.num_columns - 1 else ["dbdl"] * len(lines))
            for i, name in enumerate(table.column_names)}
    return pa.concat_tables([pa.table(ours, schema=table.schema), table])


def explain(backend: "Backend", query: str, *, strategy: str | None = None,
            memory_budget: int | None = None) -> Explain:
    """Every predict call's candidates (estimated time, or why ruled out) and the choice, without
    running the query (``db.explain``; an ``EXPLAIN …`` of the statement is explained as it)."""
    trees = parse(query, backend.dialect)
    if trees is None:
        raise QueryError("the query does not parse; EXPLAIN needs SQL that sqlglot reads")
    trees = [explained[1] if (explained := explained_statement(t, backend.dialect)) else t for t in trees]
    plans = []
    for tree in trees:
        plans.extend(plan_statement(backend, tree, strategy or strategy_hint(query, backend.dialect),
                                    execute=False, memory_budget=memory_budget).plans)
    return Explain(plans)
