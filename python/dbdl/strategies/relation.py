"""Relation-centric execution: replace a predict call by a join with the model compiled to SQL.

For the SELECT that holds the call, the distinct non-NULL feature vectors of its FROM/WHERE become
the input relation (rows with equal features are scored once), the compiled model turns them into
one prediction each, and the SELECT LEFT JOINs the predictions on the features. No Python runs in
the database, and no step needs the whole model in memory.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import sqlglot
import sqlglot.expressions as exp

from ..errors import StrategyUnavailable
from ..ir import from_onnx
from .common import distinct_features, enclosing_select
from ..ir.sql import SQLBuilder, compile_graph, exact_constants
from ..registry import ResolvedModel, load_model_bytes

if TYPE_CHECKING:
    from ..backends.base import Backend

_graphs: dict[str, object] = {}


def model_graph(backend: "Backend", model: ResolvedModel):
    graph = _graphs.get(model.sha256)
    if graph is None:
        import onnx

        from dbdl_udf.modelcheck import check_model_bytes

        data = load_model_bytes(backend, model.sha256)
        check_model_bytes(data, f"model {model.ref!r}")  # from_onnx decodes tensors: never from a file
        graph = _graphs[model.sha256] = from_onnx(onnx.load_from_string(data))
    return graph


def relation_call(backend: "Backend", kind: str, model: ResolvedModel, call: exp.Anonymous,
                  features: exp.Expression, counter: itertools.count, layout: str = "element"
                  ) -> tuple[exp.Expression, list[exp.CTE]]:
    """The expression replacing ``call`` and the CTEs it needs (added to the statement)."""
    graph = model_graph(backend, model)
    ok, why = graph.relational
    if ok and getattr(model.signature, "batch", None) is not None:
        ok, why = False, f"the model has a fixed batch size of {model.signature.batch} (scored in slices)"
    if not ok:
        raise StrategyUnavailable(f"relation-centric execution cannot run model {model.ref!r}: {why}; "
                                  "use strategy='udf'")
    if model.output_index != 0:
        raise StrategyUnavailable("relation-centric execution computes a model's first output only; use strategy='udf'")
    select = enclosing_select(call)
    k = next(counter)
    src, pred = f"dbdl_src{k}", f"dbdl_pred{k}"
    dialect = backend.name
    rows = distinct_features(select, features, backend.name)
    rows.meta["dbdl_user"] = True  # the user's FROM/WHERE: resolved as the user wrote it
    numbered = (
        exp.select(exp.alias_(_length_checked(backend, model, exp.column("dbdl_f")), "dbdl_f"),
                   exp.alias_(exp.Window(this=exp.RowNumber()), "rid"))
        .from_(exp.alias_(exp.Subquery(this=rows), "dbdl_d", table=True))
    )
    builder = SQLBuilder(dialect, lambda kind_, cols: _weights_table(backend, model, kind_, cols),
                         prefix=f"dbdl_{k}_r", layout=layout)
    builder.ctes.append((src, ""))  # the expression itself below (the user's part keeps its mark)
    out = compile_graph(graph, builder, src)
    builder.ctes.append((f"{pred}_out", builder.output(out, kind)))
    builder.ctes.append((pred, f"SELECT s.dbdl_f, p.prediction AS dbdl_prediction FROM {src} AS s "
                               f"JOIN {pred}_out AS p ON p.rid = s.rid"))
    ctes = [exp.CTE(this=backend.own_sql(exact_constants(backend.name, numbered if name == src else
                                                          sqlglot.parse_one(sql, read=backend.dialect))),
                    alias=exp.TableAlias(this=exp.to_identifier(name)))
            for name, sql in builder.ctes]
    select.join(exp.to_table(pred), on=backend.equals(exp.column("dbdl_f", table=pred), features.copy()),
                join_type="left", copy=False)
    select.args["joins"][-1].meta["dbdl_added"] = True  # not a join of the user's rows
    column = exp.column("dbdl_prediction", table=pred)
    width = model.output_spec.per_row
    if kind == "array" and backend.name == "duckdb" and width is not None:
        # the same FLOAT[k] type the other strategies return
        column = exp.Cast(this=column, to=exp.DataType.build(f"FLOAT[{width}]", dialect="duckdb"))
    return column, ctes


def missing_weight_tables(backend: "Backend", model: ResolvedModel, layout: str) -> list[str]:
    """The weight tables relation-centric execution of ``model`` needs that do not exist yet."""
    names: list[str] = []
    builder = SQLBuilder(backend.name, lambda kind_, cols: names.append(f"rel_{model.sha256[:16]}_{kind_}") or "x",
                         layout=layout)
    compile_graph(model_graph(backend, model), builder, "src")
    return [n for n in names if not backend.table_exists(backend.data_schema, n)]


def _length_checked(backend: "Backend", model: ResolvedModel, features: exp.Expression) -> exp.Expression:
    """The features, or a ShapeMismatch raised in SQL for a row of the wrong length: joins would
    otherwise silently drop (or miss) the positions the weights do not cover."""
    from ..ir.sql import DIALECT_SQL

    width = model.signature.n_features
    length = exp.Anonymous(this=DIALECT_SQL[backend.name]["length"], expressions=[features.copy()])
    message = exp.DPipe(
        this=exp.Literal.string(f"dbdl.ShapeMismatch: model {model.ref!r} takes {width} features per row; pass a "
                                f"vector of exactly {width} numbers — got a row with "),
        expression=exp.Cast(this=length.copy(), to=exp.DataType.build("TEXT")))
    fail = (exp.Anonymous(this="error", expressions=[message]) if backend.name == "duckdb"
            else exp.Anonymous(this="dbdl.fail", expressions=[message, features.copy()]))
    checked = exp.Case(ifs=[exp.If(this=exp.NEQ(this=length, expression=exp.Literal.number(width)), true=fail)],
                       default=features)
    if backend.name == "duckdb":
        # the same refusal of text and booleans as the UDF path (dbdl_numeric_features is DuckDB's
        # macro, folded away when the types are numeric); PostgreSQL cannot cast them at all
        message = exp.Literal.string(
            f"model {model.ref!r} takes numeric features (FLOAT[{width}], DOUBLE[{width}] or a list of numbers); "
            f"convert the column, e.g. CAST(col AS FLOAT[{width}]) — got ")
        checked = exp.Anonymous(this="dbdl_numeric_features", expressions=[checked, message])
    return checked


def _weights_table(backend: "Backend", model: ResolvedModel, kind: str, columns: dict[str, np.ndarray]) -> str:
    schema, name = backend.data_schema, f"rel_{model.sha256[:16]}_{kind}"
    if not backend.table_exists(schema, name):
        backend.write_arrow(f"{schema}.{name}", pa.table(
            {c: v if isinstance(v, pa.Array) else pa.array(v) for c, v in columns.items()}))
        backend.share_table(f"{schema}.{name}")
    return f"{schema}.{name}"
