"""Relation-centric execution: replace a predict call by a join with the model compiled to SQL.

For the SELECT that holds the call, the distinct non-NULL feature vectors of its FROM/WHERE become
the input relation (rows with equal features are scored once), the compiled model turns them into
one prediction each, and the SELECT LEFT JOINs the predictions on the features. No Python runs in
the database, and no step needs the whole model in memory.

    element layout  setup + rows × (Σ layer weights × join cost per weight + Σ activations × cost per value)
    blocked layout  setup + rows × (Σ output units × (dot-product cost + inputs × cost per element)
                                    + Σ activations × cost per value)
    (the cheaper layout the backend's SQL can run is taken)
    a Conv's multiply-adds and a pool's window taps count as layer weights (joined rows); in the
    blocked layout a Conv's output values are dot products over its patch, plus its im2col values
    × join cost per weight ("patches")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import pyarrow as pa
import sqlglot
import sqlglot.expressions as exp

from ..errors import StrategyUnavailable
from ..ir.ops.base import per_row_size
from ..ir.sql import SQLBuilder, compile_graph, feature_columns
from ..names import ResolvedModel, weight_table
from ..query import distinct_features, enclosing_select, scorable, source_rows
from .base import Estimate, PredictCall, StatementPlan, Strategy, model_graph

if TYPE_CHECKING:
    from ..backends.base import Backend

def graph_problem(graph, model: ResolvedModel) -> str:
    """Why the SQL compiler cannot compute this model, or ""."""
    ok, why = graph.relational
    if ok and graph.output_problem(model.output_index):
        return graph.output_problem(model.output_index)
    if ok and model.signature.batch not in (None, 1):  # batch 1: one row at a time, per-row by definition
        # a fixed batch size dbdl could not make symbolic: the graph's shapes hold it, per-row SQL would not
        return (f"the model has a fixed batch size of {model.signature.batch} (scored in slices of that many "
                "rows), and the SQL compiler takes models that run on each row alone")
    return "" if ok else why


_DENSE = ("Gemm", "MatMul", "LinearRegressor", "LinearClassifier")
_TREES = ("TreeEnsembleRegressor", "TreeEnsembleClassifier")
#: seconds per tree node to parse, plan and bind a forest compiled as CASE text (measured on DuckDB: a
#: 20-tree depth-8 random forest, 7,500 nodes, about 1.5 s before the first row; larger forests are
#: compiled as a walk over a node table, whose statement does not grow with the nodes)
_TREE_NODE_S = 3.0e-4


def _dense_weight(node) -> np.ndarray:
    """The (in x out) weights of a node compiled as a dense layer."""
    # MatMul holds (in x out) as it is; Gemm's weight() applies transB (torch exports (out x in))
    return node.op.params[1] if node.op.op_type == "MatMul" else node.op.weight()


def _compare_s(c: dict[str, float]) -> float:
    """Seconds per comparison of a forest's CASE text, per row (measured on DuckDB: ~6 ns, some 15x
    less than a value through a scalar step, ``rel_value_s``)."""
    return c.get("rel_compare_s", c["rel_value_s"] / 15)


def _walk_rows(node) -> int:
    """Join rows per input row of a forest compiled as a walk: one per tree and level, plus its leaves'."""
    forest = node.op.forest()
    return len(forest.trees) * (forest.depth + 2)


def forest_form(node, rows: int, c: dict[str, float]) -> str:
    """How the forest of a TreeEnsemble node compiles for ``rows`` rows: "case" (CASE text: a setup
    that grows with the nodes, a cheap comparison per row and level) or "walk" (a node table: one
    join row per row, tree and level), whichever the cost terms price lower; "case" for forests
    under ``_trees.CASE_NODES`` nodes, or that the walk cannot hold (a NaN threshold)."""
    forest = node.op.forest()
    if forest.form == "case":
        return "case"
    case = forest.n_nodes * c.get("rel_tree_node_s", _TREE_NODE_S) + rows * node.op.flops([], node.shape) * _compare_s(c)
    walk = rows * _walk_rows(node) * c["rel_weight_s"]
    return "walk" if walk < case else "case"


def relation_terms(call: PredictCall, graph_nodes) -> dict[str, dict[str, float]]:
    """The relation-centric cost terms of running ``graph_nodes`` (the whole graph's, or a hybrid
    plan's prefix) for the call's rows, per weight layout the backend can run."""
    c, rows = call.costs, call.rows
    dense = [n for n in graph_nodes if n.op.op_type in _DENSE]
    # the element layout joins only nonzero activations: over a sparse input, a share of the first layer's
    inputs = {name for name, _ in call.graph.inputs}
    weights = sum(int(np.count_nonzero(_dense_weight(n)) * (call.density if n.inputs[0] in inputs else 1.0))
                  for n in dense)
    # a convolution joins each row's values with its patch map and kernel (one row per multiply-add),
    # a pool with its patch map (one per window tap)
    windows = [n.op for n in graph_nodes if hasattr(n.op, "join_rows")]
    weights += sum(op.join_rows("element") for op in windows)
    values = sum(int(max(1, per_row_size(n.shape))) for n in graph_nodes)
    # a tree ensemble as CASE text: each row steps down every tree (its FLOPs: the comparisons), and
    # the text is parsed by sqlglot and the database once per statement (its size costs); as a walk
    # over a node table (ir/ops/_trees.py): one join row per row, tree and level
    forests = [n for n in graph_nodes if n.op.op_type in _TREES]
    case = [n for n in forests if forest_form(n, rows, c) == "case"]
    comparisons = sum(n.op.flops([], n.shape) for n in case) * _compare_s(c) / c["rel_value_s"]
    values += int(comparisons)
    walk = sum(_walk_rows(n) for n in forests if n not in case)
    setup = c.get("rel_setup_s", 0.0) + sum(n.op.forest().n_nodes for n in case) * c.get("rel_tree_node_s", _TREE_NODE_S)
    options = {"element": {"setup": setup, "joins": rows * (weights + walk) * c["rel_weight_s"],
                           "values": rows * values * c["rel_value_s"]}}
    if "blocked" in call.backend.relational.layouts and "rel_dot_s" in c:
        dots = sum(per_row_size(n.shape) * (c["rel_dot_s"] + int(_dense_weight(n).shape[0]) * c["rel_dot_elem_s"])
                   for n in dense)
        # a convolution: one dot product per output value over its patch (input channels per group × kernel)
        dots += sum(per_row_size(n.shape) * (c["rel_dot_s"] + int(np.prod(n.op.weight().shape[1:])) * c["rel_dot_elem_s"])
                    for n in graph_nodes if n.op.op_type == "Conv")
        options["blocked"] = {"setup": setup, "dot products": rows * dots,
                              "values": rows * values * c["rel_value_s"]}
        if windows:  # the patches packed for a convolution's dot products, a pool's taps
            options["blocked"]["patches"] = rows * sum(op.join_rows("blocked") for op in windows) * c["rel_weight_s"]
        if walk:
            options["blocked"]["joins"] = rows * walk * c["rel_weight_s"]
    return options


class RelationCentric(Strategy):
    name = "relation"
    joins = True

    def variants(self, backend: "Backend") -> tuple[str, ...]:
        return backend.relational.layouts

    def feasible(self, call: PredictCall) -> str | None:
        backend = call.backend
        reason = call.relation_problem or graph_problem(call.graph, call.model)
        if not reason and not call.joinable:
            reason = "predict is not inside a SELECT … FROM …"
        if not reason and call.parameters:
            reason = "the features hold bound parameters, which only the in-database form takes"
        if not reason and not backend.can_create_tables(backend.data_schema) and missing_weight_tables(
                backend, call.model, call.variant or self._layout(call)):
            reason = ("its weight tables do not exist yet and this role may not create them in schema "
                      f"{backend.data_schema}: run the query once as dbdl_admin")
        return reason or None

    def _options(self, call: PredictCall) -> dict[str, dict[str, float]]:
        return relation_terms(call, call.graph.nodes)

    def _layout(self, call: PredictCall) -> str:
        options = self._options(call)
        return min(options, key=lambda k: sum(options[k].values()))

    def estimate(self, call: PredictCall) -> Estimate:
        options = self._options(call)
        layout = min(options, key=lambda k: sum(options[k].values()))
        return Estimate(self.name, sum(options[layout].values()), terms=options[layout], layout=layout)

    def rewrite(self, call: PredictCall, statement: StatementPlan, estimate: Estimate) -> exp.Expression:
        layout = call.variant or estimate.layout or "element"
        column, ctes = relation_call(call.backend, call.kind, call.model, call.call, call.feature_source,
                                     statement.counter, layout, rows=call.rows, costs=call.costs)
        statement.ctes.extend(ctes)
        return column


def relation_call(backend: "Backend", kind: str, model: ResolvedModel, call: exp.Anonymous,
                  features: exp.Expression | list[exp.Expression], counter, layout: str = "element", prefix=None,
                  suffix: Callable[[exp.Expression], exp.Expression] | None = None, rows: int | None = None,
                  costs: dict[str, float] | None = None) -> tuple[exp.Expression, list[exp.CTE]]:
    """The expression replacing ``call`` and the CTEs it needs (added to the statement).

    ``features``: the call's one features argument, or the list of a call of one column per feature
    (``predict('m', c0, c1, c2)``: the source CTE then has one column per feature, and the SELECT
    joins the predictions back on all of them). A hybrid plan passes ``prefix`` (the graph of the
    model's first nodes: ``Graph.prefix``) and ``suffix``, which turns the prefix's output (an array
    column) into the prediction in SQL."""
    graph = model_graph(backend, model) if prefix is None else prefix
    why = graph_problem(graph, model) if prefix is None else ""
    if why:
        raise StrategyUnavailable(f"relation-centric execution cannot run model {model.ref!r}: {why}"
                                  + ("" if "strategy='udf'" in why else "; use strategy='udf'"))
    select = enclosing_select(call)
    k = next(counter)
    src, pred = f"dbdl_src{k}", f"dbdl_pred{k}"
    numbered = numbered_features(backend, model, select, features)
    builder = weights_builder(backend, model, k, layout, rows, costs, columns=_width(features))
    builder.ctes.append((src, ""))  # the expression itself below (the user's part keeps its mark)
    try:
        out = compile_graph(graph, builder, src, model.output_index if prefix is None else 0)  # the output the call names
    except NotImplementedError as exc:
        raise StrategyUnavailable(f"relation-centric execution cannot run model {model.ref!r}: {exc}; "
                                  "use strategy='udf'") from None
    builder.ctes.append((f"{pred}_out", builder.output(out, kind if suffix is None else "array")))
    prediction = exp.column("prediction", table="p")
    if suffix is not None:
        prediction = suffix(prediction)
    keys = ", ".join(f"s.{name}" for name in key_columns(features))
    builder.ctes.append((pred, f"SELECT {keys}, {prediction.sql(dialect=backend.dialect)} AS dbdl_prediction "
                               f"FROM {src} AS s JOIN {pred}_out AS p ON p.rid = s.rid"))
    ctes = builder_ctes(backend, builder, {src: numbered})
    select.join(exp.to_table(pred), on=feature_join(backend, pred, features), join_type="left", copy=False)
    select.args["joins"][-1].meta["dbdl_added"] = True  # not a join of the user's rows
    column = exp.column("dbdl_prediction", table=pred)
    if kind == "array":
        column = backend.array_result(column, model.output_spec.per_row)  # the type the other strategies return
    return column, ctes


def key_columns(features: exp.Expression | list[exp.Expression]) -> list[str]:
    """The columns of a numbered source that hold the features: dbdl_f, or one per feature of a call
    of one column per feature (dbdl_f0 … dbdl_f{n-1})."""
    return feature_columns(len(features)) if isinstance(features, list) else ["dbdl_f"]


def feature_join(backend: "Backend", table: str, features: exp.Expression | list[exp.Expression]) -> exp.Expression:
    """The join of ``table``'s feature columns (``key_columns``) with the call's features."""
    args = features if isinstance(features, list) else [features]
    return exp.and_(*[backend.equals(exp.column(name, table=table), a.copy())
                      for name, a in zip(key_columns(features), args)])


def _width(features: exp.Expression | list[exp.Expression]) -> int:
    return len(features) if isinstance(features, list) else 0


def numbered_features(backend: "Backend", model: ResolvedModel, select: exp.Select,
                      features: exp.Expression | list[exp.Expression]) -> exp.Select:
    """(dbdl_f, rid): the distinct non-NULL feature vectors of the SELECT's rows, numbered, each
    checked for the model's width (a ShapeMismatch raised in SQL). For a call of one column per
    feature (``features`` a list): (dbdl_f0 … dbdl_f{n-1}, rid), the distinct rows with no NULL
    among them (a row with one gives NULL, as under every strategy), numbered in their order
    (``RelationalSQL.number_columns``); their width is the call's, known when planning."""
    if isinstance(features, list):
        names = feature_columns(len(features))
        rows = source_rows(select)
        rows.set("expressions", [exp.alias_(a.copy(), name) for a, name in zip(features, names)])
        rows.set("distinct", exp.Distinct())
        rows.where(exp.and_(*[scorable(a) for a in features]), copy=False)
        rows.meta["dbdl_user"] = True  # the user's FROM/WHERE: resolved as the user wrote it
        number = sqlglot.parse_one(backend.relational.number_columns.format(columns=", ".join(names)),
                                   read=backend.dialect)
        return (exp.select(*[exp.column(name) for name in names], exp.alias_(number, "rid"))
                .from_(exp.alias_(exp.Subquery(this=rows), "dbdl_d", table=True)))
    rows = distinct_features(select, features, backend.relational.no_null_elements)
    rows.meta["dbdl_user"] = True  # the user's FROM/WHERE: resolved as the user wrote it
    return (
        exp.select(exp.alias_(_length_checked(backend, model, exp.column("dbdl_f")), "dbdl_f"),
                   exp.alias_(_number(backend), "rid"))
        .from_(exp.alias_(exp.Subquery(this=rows), "dbdl_d", table=True))
    )


def _number(backend: "Backend") -> exp.Expression:
    spelled = backend.relational.number
    return exp.Window(this=exp.RowNumber()) if spelled is None else sqlglot.parse_one(spelled, read=backend.dialect)


def weights_builder(backend: "Backend", model: ResolvedModel, k: int, layout: str, rows: int | None = None,
                    costs: dict[str, float] | None = None, columns: int = 0) -> SQLBuilder:
    """The SQL builder of call number ``k`` of a statement, writing ``model``'s weight tables on first
    use; forests take the form ``forest_form`` prices lower for ``rows`` rows (with ``costs``).
    ``columns``: the source holds that many feature columns (a call of one column per feature)."""
    def tree_form(forest) -> str:
        node = next((n for n in model_graph(backend, model).nodes if getattr(n.op, "_forest", None) is forest), None)
        return forest.form if node is None else forest_form(node, rows, costs)

    return SQLBuilder(backend.relational, lambda kind_, cols: _weights_table(backend, model, kind_, cols),
                      prefix=f"dbdl_{k}_r", layout=layout, whole_numbers=_whole_numbers(model),
                      tree_form=None if rows is None or costs is None else tree_form, wide_columns=columns)


def builder_ctes(backend: "Backend", builder: SQLBuilder, given: dict[str, exp.Expression]) -> list[exp.CTE]:
    """The builder's CTEs as sqlglot nodes ready to run (``given``: those whose expression is a tree
    already, the user's part keeping its mark), the built-ins they name qualified where the backend asks."""
    spell = backend.relational
    return [exp.CTE(this=backend.own_sql(spell.exact_constants(given[name] if name in given else
                                                               sqlglot.parse_one(sql, read=backend.dialect))),
                    alias=exp.TableAlias(this=exp.to_identifier(name)))
            for name, sql in builder.ctes]


def missing_weight_tables(backend: "Backend", model: ResolvedModel, layout: str, graph=None) -> list[str]:
    """The weight tables relation-centric execution of ``model`` (or of ``graph``, a part of it:
    a hybrid plan's prefix) needs that do not exist yet."""
    names: list[str] = []
    builder = SQLBuilder(backend.relational,
                         lambda kind_, cols: names.append(weight_table(model.sha256, kind_)) or "x", layout=layout)
    try:
        if graph is None:
            compile_graph(model_graph(backend, model), builder, "src", model.output_index)
        else:
            compile_graph(graph, builder, "src")
    except NotImplementedError:
        return []  # relation_call refuses it, naming why
    return [n for n in names if not backend.table_exists(backend.data_schema, n)]


def _whole_numbers(model: ResolvedModel) -> str:
    """The refusal of a value that is not a whole number, for a model of an integer input (the
    UDF path's words: dbdl_udf.runtime), else ""."""
    spec = model.signature.inputs[0]
    if spec.dtype not in ("int32", "int64"):
        return ""
    return (f"model {model.ref!r} input {spec.name!r} takes whole numbers ({spec.dtype}); got fractional, NaN or "
            "infinite values — pass an integer column (BIGINT[] / INTEGER[])")


def _length_checked(backend: "Backend", model: ResolvedModel, features: exp.Expression) -> exp.Expression:
    """The features, or a ShapeMismatch raised in SQL for a row of the wrong length: joins would
    otherwise silently drop (or miss) the positions the weights do not cover."""
    spell = backend.relational
    width = model.signature.n_features
    length = exp.Anonymous(this=spell.length, expressions=[features.copy()])
    message = exp.DPipe(
        this=exp.Literal.string(f"dbdl.ShapeMismatch: model {model.ref!r} takes {width} features per row; pass a "
                                f"vector of exactly {width} numbers — got a row with "),
        expression=exp.Cast(this=length.copy(), to=exp.DataType.build("TEXT")))
    checked = exp.Case(ifs=[exp.If(this=exp.NEQ(this=length, expression=exp.Literal.number(width)),
                                   true=spell.fail(message, features))],
                       default=features)
    # the same refusal of text and booleans as the UDF path, where the database would cast them
    return backend.numeric_features(checked, (
        f"model {model.ref!r} takes numeric features (FLOAT[{width}], DOUBLE[{width}] or a list of numbers); "
        f"convert the column, e.g. CAST(col AS FLOAT[{width}]) — got "))


def _weights_table(backend: "Backend", model: ResolvedModel, kind: str, columns: dict[str, np.ndarray]) -> str:
    schema, name = backend.data_schema, weight_table(model.sha256, kind)
    if not backend.table_exists(schema, name):
        backend.write_arrow(f"{schema}.{name}", pa.table(
            {c: v if isinstance(v, pa.Array) else pa.array(v) for c, v in columns.items()}))
        backend.share_table(f"{schema}.{name}")
    return f"{schema}.{name}"

