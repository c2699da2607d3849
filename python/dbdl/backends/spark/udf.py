"""UDF-centric execution on Spark: ``predict(...)`` calls planned into Arrow UDFs.

A call is pinned to one model version when the statement is planned: the driver broadcasts that
version's ONNX bytes once per connection, registers a temporary function named after the kind, the
version and the content hash (``dbdl_array_fraud_3_0_1f2e…``), and the statement calls it. Spark
sends each task's rows to a Python worker in Arrow batches (``spark.sql.execution.arrow.
maxRecordsPerBatch``, 10,000 by default); the worker builds the session on its first batch and
keeps it for the worker's life (``dbdl_udf/sparkudf.py``). A version promoted while the statement
runs does not reach it: the broadcast bytes are the pinned version's.
"""

from __future__ import annotations

from typing import Any, Sequence

import sqlglot.expressions as exp

from ...errors import DTypeMismatch, QueryError
from ...names import ResolvedModel
from ...query import argument_probe

#: kind -> the Spark SQL type the UDF returns
RETURN_TYPES = {"scalar": "float", "array": "array<float>", "class": "bigint", "text": "string"}
_NUMERIC = ("float", "double", "int", "bigint", "smallint", "tinyint", "decimal")


class SparkFunctions:
    """The UDF half of ``SparkBackend`` (a mixin: it uses ``self.spark``)."""

    def predict_call(self, kind: str, model: ResolvedModel, features: exp.Expression) -> exp.Expression:
        if kind == "scalar" and model.output_spec.is_text:
            kind = "text"  # predict() of class names: STRING
        name = f"dbdl_{kind}_{model.name}_{model.version}_{model.output_index}_{model.sha256[:12]}"
        with self._lock:
            if name not in self._udfs:
                self._register(name, kind, model)
        # array<double> (Spark's usual) and integer arrays become the float32 the model takes; the row's
        # width is checked by the UDF, which names the model (ShapeMismatch)
        cast = exp.Cast(this=features, to=exp.DataType.build("ARRAY<FLOAT>", dialect="spark"))
        return exp.Anonymous(this=name, expressions=[cast])

    def _register(self, name: str, kind: str, model: ResolvedModel) -> None:
        from pyspark.sql.functions import arrow_udf

        from dbdl_udf.sparkudf import arrow_udf_function

        payload = self._broadcast(model.sha256)
        fn = arrow_udf_function(kind, model.sha256, payload, model.output_index, model.ref, model.output_spec.name)
        udf = arrow_udf(fn, returnType=RETURN_TYPES[kind])  # the iterator form, from its type hints
        self.spark.udf.register(name, udf)
        self._udfs.add(name)

    def _broadcast(self, sha256: str) -> Any:
        """The model bytes of a content hash as a Spark broadcast (once per connection and hash)."""
        payload = self._broadcasts.get(sha256)
        if payload is None:
            payload = self._broadcasts[sha256] = self.spark.sparkContext.broadcast(self.model_bytes(sha256))
        return payload

    def argument_types(self, args: Sequence[exp.Expression]) -> list | None:
        probe = argument_probe(args)
        if probe is None:
            return None
        try:
            schema = self.spark.sql(probe.sql(dialect=self.dialect)).schema
        except Exception:  # noqa: BLE001 - the statement itself will say what is wrong
            return None
        return [field.dataType.simpleString() for field in schema.fields]

    def predict_call_args(self, kind: str, model: ResolvedModel, args: Sequence[exp.Expression]) -> exp.Expression:
        if len(args) != 1:
            raise QueryError(f"the spark backend takes one features argument per predict call; pass one vector of "
                             f"all the inputs of model {model.ref!r}, concatenated in input order")
        types = self.argument_types(args)
        if types is not None:
            self._check_numeric(model, types[0])
        return self.predict_call(kind, model, args[0].copy())

    def relation_feature_problem(self, model: ResolvedModel, args: Sequence[exp.Expression]) -> str | None:
        types = self.argument_types(args)
        if types is not None and not _numeric_array(types[0]):
            return f"the features are {types[0]}, not an array of numbers"
        return None

    def _check_numeric(self, model: ResolvedModel, type_text: str) -> None:
        if not _numeric_array(type_text):
            width = model.signature.n_features
            raise DTypeMismatch(
                f"model {model.ref!r} takes numeric features (array<float> or array<double> of {width} numbers); "
                f"got {type_text} — convert the column, e.g. CAST(col AS ARRAY<FLOAT>)")


def _numeric_array(type_text: str) -> bool:
    inner = type_text[len("array<"):-1] if type_text.startswith("array<") and type_text.endswith(">") else None
    return inner is not None and inner.split("(")[0] in _NUMERIC
