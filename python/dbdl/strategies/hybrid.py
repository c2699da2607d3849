"""Hybrid execution: the model split at one operator boundary. Its first operators (the prefix,
nodes 0..k of the IR) run relation-centric inside the database — a wide first dense layer or a
large embedding keeps its weights in tables — and the rest (the suffix: a sub-model cut out of the
ONNX graph at the prefix's output tensor, ir/cut.py) runs on onnxruntime, in one of two ways:

- ``dl`` (every backend): the distinct feature vectors are numbered into a temporary table, the
  prefix's SQL turns them into one cut vector each, those stream out with the backend's DL-centric
  machinery (keyed by their number), the sub-model scores them, and the SELECT joins the
  predictions back on the features;
- ``udf`` (where the in-database function is a closure of this process: DuckDB): one statement,
  the prefix's SQL ending in the in-database function of the sub-model.

A split point is a node whose output alone (with constants) determines the model's output, whose
per-row shape is fixed, and before which every node has an SQL form. For each one and runtime:

    dl   = relation-centric terms of the prefix (strategies/relation.py: relation_terms)
           + dl_setup_s + rows × (4 × cut width + 8 + 4 × output width) × dl_byte_s
           + rows × suffix FLOPs / dl_flops_per_s
    udf  = relation-centric terms of the prefix + udf_setup_s + rows × udf_row_s
           + rows × suffix FLOPs / (udf_flops_per_s × core share)
    (a split whose sub-model's constants exceed the memory budget is ruled out)

and the cheapest is taken. ``strategy="hybrid:<k>"`` (or ``hybrid:<tensor name>``) forces a split,
``hybrid:<k>:<udf|dl>`` (or ``hybrid:<udf|dl>``) the runtime too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import sqlglot
import sqlglot.expressions as exp

from ..ir.cut import Cut, Cutter
from ..ir.ops.base import per_row_size
from ..ir.sql import compile_graph
from ..names import ResolvedModel
from ..query import enclosing_select
from .base import Estimate, PredictCall, StatementPlan, Strategy, udf_core_share
from .dl import BATCH_ROWS, scorer
from .relation import (_DENSE, _dense_weight, builder_ctes, feature_join, key_columns, missing_weight_tables,
                       numbered_features, relation_call, relation_terms, weights_builder)

if TYPE_CHECKING:
    from ..backends.base import Backend

_tables = itertools.count()
#: where the sub-model may run: inside the statement (the in-database function) or streamed out
SUFFIX_RUNTIMES = ("udf", "dl")
_UDF_LIMIT = ("the database's own function looks models up in the registry, where a sub-model is not "
              "stored (DuckDB's functions are closures of this process, which can hold one)")


@dataclass(frozen=True)
class Split:
    #: the last IR node of the SQL prefix
    k: int
    #: the tensor cut (node k's output), its per-row shape
    tensor: str
    shape: tuple[int, ...]
    cut: Cut
    #: FLOPs per row of the prefix
    prefix_flops: int

    @property
    def width(self) -> int:
        return per_row_size(self.shape)


#: (model sha256, output index) -> its split points
_splits: dict[tuple[str, int], list[Split]] = {}
#: (model sha256, output index, k) -> the sub-model's (sha256, bytes)
_sub_models: dict[tuple[str, int, int], tuple[str, bytes]] = {}


def _sql_node(node) -> bool:
    """The node has an SQL form (attention, a product of two activations, has none by design)."""
    return node.op.relational and not (node.op.op_type == "MatMul" and all(node.inputs[:2]))


def split_points(backend: "Backend", model: ResolvedModel, graph) -> list[Split]:
    """Where ``model`` may be split, in graph order (computed once per model and process)."""
    key = (model.sha256, model.output_index)
    if key in _splits:
        return _splits[key]
    splits: list[Split] = []
    if len(graph.inputs) == 1 and graph.nodes:
        import onnx

        cutter = Cutter(onnx.load_from_string(backend.model_bytes(model.sha256)))
        output = graph.outputs[model.output_index]
        for k, node in enumerate(graph.nodes):
            if not _sql_node(node):
                break  # every node of a prefix has an SQL form
            shape = tuple(node.shape)
            if node.op.n_outputs > 1 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
                continue
            cut = cutter.cut(node.outputs[0], output)
            if cut is None or not cut.nodes:
                continue
            prefix = graph.prefix(k)
            if prefix.output_problem(0):
                continue
            splits.append(Split(k, node.outputs[0], tuple(int(d) for d in shape), cut, prefix.flops_per_row))
    _splits[key] = splits
    return splits


def _label(node) -> str:
    if node.op.op_type in _DENSE:
        weight = node.op.weight() if hasattr(node.op, "weight") else _dense_weight(node)  # (in x out)
        n_in, n_out = weight.shape
        return f"{node.op.op_type} {int(n_in):,}×{int(n_out):,}"
    return f"{node.op.op_type} ({per_row_size(node.shape):,} values)"


def _describe(split: Split, k: int) -> str:
    return f"{k} (after {split.tensor!r}, {split.width:,} values per row)"


class Hybrid(Strategy):
    name = "hybrid"
    joins = True
    model_variants = True

    def feasible(self, call: PredictCall) -> str | None:
        chosen = self._choose(call)
        return chosen if isinstance(chosen, str) else None

    def estimate(self, call: PredictCall) -> Estimate:
        chosen = self._choose(call)
        assert not isinstance(chosen, str), chosen
        return chosen[1]

    def candidate(self, call: PredictCall) -> Estimate:
        chosen = self._choose(call)  # once: feasibility and the estimate are the same search
        return Estimate(self.name, None, chosen) if isinstance(chosen, str) else chosen[1]

    # -- choosing the split ------------------------------------------------------------------

    def _choose(self, call: PredictCall) -> tuple[Split, Estimate] | str:
        """The cheapest (split, suffix runtime) that can run (the forced one, with ``hybrid:<k>`` or
        ``hybrid:<k>:<udf|dl>``), or why none can."""
        reason = call.relation_problem
        if not reason and not call.joinable:
            reason = "predict is not inside a SELECT … FROM …"
        if not reason and call.parameters:
            reason = "the features hold bound parameters, which only the in-database form takes"
        if not reason and call.model.signature.batch is not None:
            reason = (f"the model has a fixed batch size of {call.model.signature.batch}, and the SQL prefix runs "
                      "on each row alone")
        if not reason and len(call.graph.inputs) != 1:
            reason = "the SQL compiler takes models with one input"
        if not reason and not call.backend.array_features:
            reason = "the SQL prefix hands its activations to the rest of the model as one array, and the database has no arrays"
        if reason:
            return reason
        splits = split_points(call.backend, call.model, call.graph)
        if not splits:
            return ("the model has no split point: no operator with an SQL form outputs one tensor of fixed "
                    "per-row shape from which the rest of the model computes its output")
        runtimes = self.runtimes(call.backend)
        variant = call.variant
        if variant:
            point, _, runtime = variant.rpartition(":")
            if runtime.lower() in SUFFIX_RUNTIMES:  # hybrid:<k>:<runtime>, or hybrid:<runtime>
                if runtime.lower() not in runtimes:
                    return (f"the sub-model cannot run {runtime.lower()}-centric on {call.backend.name}: "
                            + _UDF_LIMIT + f"; use strategy='hybrid{':' + point if point else ''}:dl'")
                variant, runtimes = point, (runtime.lower(),)
        if variant:
            split = self._forced(call, splits, variant)
            if isinstance(split, str):
                return split
            splits = [split]
        fitting = [s for s in splits if s.cut.param_bytes <= call.budget]
        if not fitting:
            smallest = min(splits, key=lambda s: s.cut.param_bytes)
            return (f"the sub-model after node {smallest.k} needs {smallest.cut.param_bytes:,} bytes, over the memory "
                    f"budget of {call.budget:,}" + (" (the smallest of the split points)" if len(splits) > 1 else ""))
        problems = []
        options = [(self._estimate(call, s, r), s) for s in fitting for r in runtimes]
        for estimate, split in sorted(options, key=lambda e: e[0].seconds):
            problem = self._prefix_problem(call, split, estimate.layout)
            if not problem:
                estimate.placement = self._placement(call, split, estimate.split.partition(":")[2])
                return split, estimate
            problems.append(f"after node {split.k}: {problem}")
        return "no split point can run: " + "; ".join(problems)

    @staticmethod
    def runtimes(backend: "Backend") -> tuple[str, ...]:
        """Where the sub-model can run here: streamed out (dl), and on DuckDB inside the query (udf)."""
        udf = backend.has_python_udfs and backend.scores_unregistered_models
        return ("udf", "dl") if udf else ("dl",)

    def _forced(self, call: PredictCall, splits: list[Split], variant: str) -> Split | str:
        # a number is a node index first (some exporters name tensors "5", "6" …), then a tensor name
        exact = [s for s in splits if variant == str(s.k)] or [s for s in splits if variant == s.tensor]
        if exact:
            return exact[0]
        folded = [s for s in splits if s.tensor.lower() == variant.lower()]  # hints are lower-cased
        if len(folded) == 1:
            return folded[0]
        return (f"no split point {variant!r} in model {call.model.ref!r}; the valid split points are "
                + ", ".join(_describe(s, s.k) for s in splits)
                + " — force one with strategy='hybrid:<k>' (the sub-model's runtime too: 'hybrid:<k>:"
                + "|".join(self.runtimes(call.backend)) + "'), or let the cost model choose with strategy='hybrid'")

    def _estimate(self, call: PredictCall, split: Split, runtime: str) -> Estimate:
        c, rows, graph = call.costs, call.rows, call.graph
        options = relation_terms(call, graph.nodes[:split.k + 1])
        layout = min(options, key=lambda k: sum(options[k].values()))
        prefix = options[layout]
        suffix_flops = max(0, call.flops - split.prefix_flops)
        terms = {"prefix": sum(v for name, v in prefix.items() if name != "setup")}
        if runtime == "udf":  # the in-database function on each cut vector, inside the statement
            terms = {"setup": prefix["setup"] + c.get("udf_setup_s", 0.0), **terms,
                     "per-row": rows * c["udf_row_s"],
                     "suffix": rows * suffix_flops / (c["udf_flops_per_s"] * udf_core_share(c, rows))
                     + rows * split.cut.param_bytes * c.get("udf_param_byte_s", 0.0)}
        else:  # the cut vectors out with their row number, the predictions back
            out = call.model.output_spec.per_row or 1
            terms = {"setup": prefix["setup"] + c["dl_setup_s"], **terms,
                     "transfer": rows * (4 * split.width + 8 + 4 * out) * c["dl_byte_s"],
                     "suffix": rows * suffix_flops / c["dl_flops_per_s"]}
        return Estimate(self.name, sum(terms.values()), terms=terms, layout=layout, split=f"{split.k}:{runtime}")

    def _placement(self, call: PredictCall, split: Split, runtime: str) -> list[str]:
        """EXPLAIN's lines: the split, then per operator where it runs and why."""
        graph = call.graph
        whole = (f"the whole model's {call.param_bytes:,} bytes are over it" if call.too_big
                 else f"the whole model's {call.param_bytes:,} bytes fit it too")
        how = "in the statement (udf)" if runtime == "udf" else "streamed out (dl)"
        lines = [f"split after node {_describe(split, split.k)}: nodes 0–{split.k} run as SQL, the sub-model of "
                 f"{len(split.cut.nodes)} ONNX node(s) on onnxruntime {how} ({split.cut.param_bytes:,} bytes, within "
                 f"the memory budget of {call.budget:,}; {whole})"]
        for i, node in enumerate(graph.nodes):
            dense = node.op.op_type in _DENSE
            if i <= split.k:
                why = (f"{int(np.count_nonzero(_dense_weight(node))):,} weights stay in tables" if dense
                       else "SQL over (row, position, value)")
                lines.append(f"{i:>3} {_label(node)}: relation — {why}")
            else:
                why = f"{node.op.param_bytes():,} bytes of weights in the sub-model" if dense else "in the sub-model"
                lines.append(f"{i:>3} {_label(node)}: {runtime} — {why}")
        if graph.unsupported:
            lines.append(f"  … the sub-model's other operators ({', '.join(sorted({o for o, _ in graph.unsupported}))}"
                         f"): {runtime} — dbdl's IR does not hold them")
        return lines

    def _prefix_problem(self, call: PredictCall, split: Split, layout: str) -> str:
        """Why the prefix cannot run as SQL for this role (its weight tables are missing and it may
        not create them), or "" — as relation-centric execution checks it (prefix nodes each have
        an SQL form: split_points; a compile failure is raised by ``rewrite``, naming the operator)."""
        backend = call.backend
        if not backend.can_create_tables(backend.data_schema) and missing_weight_tables(
                backend, call.model, layout, call.graph.prefix(split.k)):
            return ("its weight tables do not exist yet and this role may not create them in schema "
                    f"{backend.data_schema}: run the query once as dbdl_admin")
        return ""

    # -- running it --------------------------------------------------------------------------

    def rewrite(self, call: PredictCall, statement: StatementPlan, estimate: Estimate) -> exp.Expression:
        backend, model, kind = call.backend, call.model, call.kind
        point, _, runtime = estimate.split.partition(":")
        split = next(s for s in split_points(backend, model, call.graph) if str(s.k) == point)
        prefix = call.graph.prefix(split.k)
        if runtime == "udf":
            # one statement: the prefix's CTEs, then the in-database function on each cut vector
            sub, _ = self._sub_model(backend, model, split, backend.udf_threads)
            column, ctes = relation_call(backend, kind, model, call.call, call.feature_source, statement.counter,
                                         estimate.layout or "element", prefix,
                                         lambda cut: backend.predict_call(kind, sub, cut), rows=call.rows,
                                         costs=call.costs)
            statement.ctes.extend(ctes)
            return column
        select = enclosing_select(call.call)
        k, n = next(statement.counter), next(_tables)
        source, scored, pred = f"dbdl_hyb_{n}_src", f"dbdl_hyb_{n}", f"dbdl_pred{k}"
        statement.cleanup.extend([source, scored])  # dropped after the statement, even if it fails
        features = call.feature_source  # one array, or a call's columns, one per feature
        numbered = numbered_features(backend, model, select, features)
        # the distinct feature vectors, numbered once: the prefix reads them, the join maps them back
        backend.create_temp_table_as(
            source, backend.own_sql(backend.relational.exact_constants(numbered)).sql(dialect=backend.dialect))
        backend.analyze(source)
        builder = weights_builder(backend, model, k, estimate.layout or "element", call.rows, call.costs,
                                  columns=len(call.args) if call.wide else 0)
        out = compile_graph(prefix, builder, source)
        builder.ctes.append((f"{pred}_cut", builder.output(out, "array")))
        query = exp.select(exp.alias_(exp.column("rid"), "dbdl_k"), exp.alias_(exp.column("prediction"), "dbdl_f")) \
            .from_(f"{pred}_cut")
        for cte in builder_ctes(backend, builder, {}):
            query.with_(cte.alias, as_=cte.this, copy=False)
        sub, data = self._sub_model(backend, model, split)
        table_kind = "text" if kind == "scalar" and model.output_spec.is_text else kind
        backend.score_into_temp_table(query.sql(dialect=backend.dialect), scorer(backend, sub, kind, lambda: data),
                                      table_kind, scored, signature=sub.signature, keyed=True, batch_rows=BATCH_ROWS)
        backend.analyze(scored)
        keys = ", ".join(f"s.{name}" for name in key_columns(features))
        joined = sqlglot.parse_one(f"SELECT {keys}, p.dbdl_prediction FROM {source} AS s JOIN {scored} AS p "
                                   "ON p.dbdl_k = s.rid", read=backend.dialect)
        statement.ctes.append(exp.CTE(this=backend.own_sql(joined), alias=exp.TableAlias(this=exp.to_identifier(pred))))
        select.join(exp.to_table(pred), on=feature_join(backend, pred, features), join_type="left", copy=False)
        select.args["joins"][-1].meta["dbdl_added"] = True  # not a join of the user's rows
        column = exp.column("dbdl_prediction", table=pred)
        if kind == "array":
            column = backend.array_result(column, model.output_spec.per_row)  # the type the other strategies return
        return column

    def _sub_model(self, backend: "Backend", model: ResolvedModel, split: Split,
                   threads: int = 0) -> tuple[ResolvedModel, bytes]:
        """The sub-model after ``split`` as a model of its own (its hash and signature), and its bytes;
        its session cached for ``threads`` (where the in-database function finds it by hash)."""
        from dbdl_udf.runtime import SESSIONS

        key = (model.sha256, model.output_index, split.k)
        if key not in _sub_models:
            import onnx

            cutter = Cutter(onnx.load_from_string(backend.model_bytes(model.sha256)))
            data = cutter.sub_model(split.cut, split.shape, model.output_spec.name)
            _sub_models[key] = (hashlib.sha256(data).hexdigest(), data)
        sha, data = _sub_models[key]
        _, signature = SESSIONS.get(sha, lambda: data, threads, model=model.ref)
        return dataclasses.replace(model, sha256=sha, signature=signature), data
