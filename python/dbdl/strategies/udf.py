"""UDF-centric execution: the predict call stays in the statement as the backend's in-database
function (DuckDB's Arrow UDFs, PostgreSQL's PL/Python functions), which runs onnxruntime inside
the database on each chunk of rows. A call of one column per feature (``predict('m', c0, c1, c2)``)
gets them packed into one array (``Backend.pack_features``).

    estimate = setup + rows × (per-row overhead + FLOPs / in-database FLOP/s × core share
                               + parameter bytes × re-read cost where rows go one at a time)
"""

from __future__ import annotations

import sqlglot.expressions as exp

from .base import Estimate, PredictCall, StatementPlan, Strategy, udf_core_share


class UDFCentric(Strategy):
    name = "udf"

    def feasible(self, call: PredictCall) -> str | None:
        if not call.backend.has_python_udfs:
            return call.backend.udf_unavailable
        if call.wide and not call.backend.array_features:
            return "the in-database function takes one array of the features, and the database has no arrays"
        return call.too_big or None

    def estimate(self, call: PredictCall) -> Estimate:
        c, rows = call.costs, call.rows
        share = udf_core_share(c, rows)
        terms = {"setup": c.get("udf_setup_s", 0.0), "per-row": rows * c["udf_row_s"],
                 "compute": rows * call.flops / (c["udf_flops_per_s"] * share),
                 "weights": rows * call.param_bytes * c.get("udf_param_byte_s", 0.0)}
        return Estimate(self.name, sum(terms.values()), terms=terms)

    def rewrite(self, call: PredictCall, statement: StatementPlan, estimate: Estimate) -> exp.Expression:
        if call.wide:
            # one column per feature: packed into the one array the in-database function takes, put in
            # the call's place in the statement first (where a backend reads the argument's type from)
            packed = call.packed()
            call.call.set("expressions", [call.call.expressions[0], packed])
            return call.backend.predict_call_args(call.kind, call.model, [packed])
        return call.backend.predict_call_args(call.kind, call.model, call.args)
