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

from ...errors import DTypeMismatch, InvalidName, QueryError
from ...names import ResolvedModel
from ...query import argument_probe, has_from, has_parameters, source_rows

#: kind -> the Spark SQL type the UDF returns
RETURN_TYPES = {"scalar": "float", "array": "array<float>", "class": "bigint", "text": "string"}
#: the most distinct models one call may name by a column (each is pinned, registered and broadcast)
MAX_MODELS_PER_CALL = 64
_NUMERIC = ("float", "double", "int", "bigint", "smallint", "tinyint", "decimal")


class SparkFunctions:
    """The UDF half of ``SparkBackend`` (a mixin: it uses ``self.spark``)."""

    #: a folder every executor can write: each task of a predict UDF registered from now on logs
    #: there which Python worker ran it and how many sessions it built (diagnostics, the tests)
    build_log: str | None = None

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
        fn = arrow_udf_function(kind, model.sha256, payload, model.output_index, model.ref, model.output_spec.name,
                                self.build_log)
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

    def argument_forms(self, args: Sequence[exp.Expression]) -> list[tuple[str, str]] | None:
        types = self.argument_types(args)
        if types is None:
            return None
        return [("number" if t.split("(")[0] in _NUMERIC else "array" if t.startswith("array<") else
                 "text" if t == "string" or t.startswith(("varchar", "char")) else "boolean" if t == "boolean" else
                 "bytes" if t == "binary" else "other", t) for t in types]

    def predict_call_args(self, kind: str, model: ResolvedModel, args: Sequence[exp.Expression]) -> exp.Expression:
        types = self.argument_types(args)
        if types is not None:
            for i, type_text in enumerate(types):
                self._check_numeric(model, type_text, i + 2 if len(types) > 1 else None)
        return self._predict_one(kind, model, args)

    def _predict_one(self, kind: str, model: ResolvedModel, args: Sequence[exp.Expression]) -> exp.Expression:
        """Several numeric array arguments are one vector, concatenated in order (the model's inputs
        flattened one after another, as one argument would hold them)."""
        if len(args) == 1:
            return self.predict_call(kind, model, args[0].copy())
        inputs = model.signature.inputs
        if len(args) != len(inputs):
            raise QueryError(f"model {model.ref!r} has {len(inputs)} input(s) ({', '.join(i.name for i in inputs)}) and "
                             f"this call passes {len(args)} feature arguments; pass one per input, in order, or one "
                             "vector of them all")
        cast = [exp.Cast(this=a.copy(), to=exp.DataType.build("ARRAY<FLOAT>", dialect="spark")) for a in args]
        return self.predict_call(kind, model, exp.Anonymous(this="concat", expressions=cast))

    def unpinned_call_args(self, kind: str, call: exp.Anonymous) -> exp.Expression:
        """A call whose model is named by a column or an expression: Spark's executors cannot read
        the registry, so the statement's distinct references are read when it is planned (one Spark
        job), each pinned like a literal one, and the call becomes ``CASE <ref> WHEN 'a' THEN
        <a's UDF> WHEN 'b@2' THEN <b@2's UDF> END`` (a NULL reference gives NULL). An unknown or
        invalid reference fails before a row is scored."""
        model_arg, *args = call.expressions
        if has_parameters(model_arg):
            raise QueryError(f"{call.this}() names its model with a bound parameter; on Spark bind it as the literal "
                             "text of the statement's model (predict('fraud', feats)) or read it from a column")
        select = call.find_ancestor(exp.Select)
        probe = source_rows(select) if has_from(select) else exp.select(exp.Literal.number(1))
        probe.set("expressions", [exp.alias_(model_arg.copy(), "dbdl_ref")])
        probe.set("distinct", exp.Distinct())
        probe.limit(MAX_MODELS_PER_CALL + 1, copy=False)
        refs = [r[0] for r in self.fetchall(probe.sql(dialect=self.dialect))]
        if len(refs) > MAX_MODELS_PER_CALL:
            raise QueryError(f"{call.this}() names more than {MAX_MODELS_PER_CALL} different models in one statement; "
                             "on Spark each is pinned and broadcast when the statement is planned — split the statement")
        refs = [r for r in refs if r is not None]
        if not refs:
            return exp.Null()
        for ref in refs:
            if not isinstance(ref, str):
                raise InvalidName(f"{call.this}() takes the model reference as text, as in {call.this}('fraud', feats); "
                                  f"got {ref!r}")
        types = self.argument_types(args)
        ifs = []
        for ref in sorted(refs):
            model = self.resolve(ref)
            if types is not None:
                self._check_numeric(model, types[0])
            ifs.append(exp.If(this=exp.Literal.string(ref), true=self._predict_one(kind, model, args)))
        return exp.Case(this=model_arg.copy(), ifs=ifs)

    def relation_feature_problem(self, model: ResolvedModel, args: Sequence[exp.Expression]) -> str | None:
        # features that are not numbers are bad input under every strategy (DTypeMismatch, as the
        # UDF path raises it), not a reason to choose another strategy
        for i, type_text in enumerate(self.argument_types(args) or ()):
            self._check_numeric(model, type_text, i if len(args) > 1 else None)
        return None

    def _check_numeric(self, model: ResolvedModel, type_text: str, argument: int | None = None) -> None:
        if not _numeric_array(type_text):
            width = model.signature.n_features
            which = f" argument {argument}" if argument is not None else ""
            raise DTypeMismatch(
                f"model {model.ref!r} takes numeric features (array<float> or array<double> of {width} numbers); "
                f"got{which} {type_text} — convert the column, e.g. CAST(col AS ARRAY<FLOAT>); booleans, text and "
                "binary are not features")


def _numeric_array(type_text: str) -> bool:
    inner = type_text[len("array<"):-1] if type_text.startswith("array<") and type_text.endswith(">") else None
    return inner is not None and inner.split("(")[0] in _NUMERIC
