"""DuckDB's Python UDFs: how a planned predict call becomes a function DuckDB calls on Arrow chunks.

``predict_call`` / ``predict_call_args`` register one UDF per (kind, model version, output, argument
types) with the model's onnxruntime session bound in its closure; ``on_connect`` defines the generic
macros (a model named by a column, resolved once per statement); ``cache_key`` the result cache's
key digest. DuckDB keeps UDFs in the database instance, which every connection to the same file in
this process shares: each backend names its UDFs with a token of its own.
"""

from __future__ import annotations

import hashlib
import re
import weakref
from typing import Any, Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot.expressions as exp

from dbdl_udf.kinds import KINDS
from dbdl_udf.runtime import (SESSIONS, Signature, check_features, dense_runner, feed_mode, feed_options, run_batch,
                              shape_outputs, valid_rows)

from ...errors import DTypeMismatch, Error, QueryError
from ...names import ResolvedModel
from ...query import argument_probe
from dbdl_udf.arrowio import (OUT_TYPES, arrow_column, as_text, assemble, combined, dense_matrix, dense_result,
                              feature_matrix, udf_result)


class DuckDBFunctions:
    """The UDF half of ``DuckDBBackend`` (a mixin: it uses the connection ``self.con``)."""

    def on_connect(self) -> None:
        self.con.execute(
            "CREATE OR REPLACE TEMP MACRO dbdl_numeric_features(x, message) AS "
            "CASE WHEN regexp_matches(typeof(x), 'VARCHAR|BLOB|JSON|BIT|BOOL') "
            "THEN error('dbdl.DTypeMismatch: ' || message || typeof(x)) ELSE x END"
        )
        # Generic forms, for SQL that names the model with a column: any numeric list, the model
        # resolved once per statement (see _model_for).
        for kind, sql_name in ((k.name, k.function) for k in KINDS.values()):
            udf = f"dbdl_{sql_name}_{self._token}"
            self._register_udf(udf, kind)
            message = exp.Literal.string(
                f"{sql_name}() takes numeric features (FLOAT[n], DOUBLE[n] or a list of numbers); got "
            ).sql(dialect=self.dialect)
            self.con.execute(
                f"CREATE OR REPLACE TEMP MACRO {sql_name}(model, feats) AS "
                f"{udf}(model, CAST(dbdl_numeric_features(feats, {message}) AS FLOAT[]))"
            )

    def invalidate(self) -> None:
        self._statement_models.clear()
        self._statement_options.clear()

    def _register_udf(self, udf: str, kind: str) -> None:
        with self._lock:
            if udf in self._udfs:
                return
            self.con.create_function(
                udf,
                self._make_udf(kind),
                [duckdb.sqltype("VARCHAR"), duckdb.list_type(duckdb.sqltype("FLOAT"))],
                _RETURN_TYPES[kind],
                type="arrow",
                null_handling="special",
                side_effects=False,
            )
            self._udfs.add(udf)

    def predict_call(self, kind: str, model: ResolvedModel, features: exp.Expression) -> exp.Expression:
        width = model.signature.n_features
        # one UDF per (kind, model version, output): the model is bound in the closure, so a chunk
        # carries only its features and the UDF does no lookups; the content hash in the name keeps a
        # dropped-and-re-registered 'm@1' from ever reaching a stale closure
        if kind == "scalar" and model.output_spec.is_text:
            kind = "text"  # predict() of class names: VARCHAR
        udf = f"dbdl_{kind}_{model.name}_{model.version}_{model.output_index}_{model.sha256[:12]}_{self._token}"
        with self._lock:
            if udf not in self._udfs:
                session, signature = SESSIONS.get(
                    model.sha256, lambda: self.model_bytes(model.sha256), self.udf_threads, model=model.ref
                )
                outputs = model.output_spec.per_row
                if kind == "scalar" and model.output_spec.is_text:
                    kind = "text"  # predict() of class names: VARCHAR
                return_type = _RETURN_TYPES[kind]
                if kind == "array" and outputs is not None:
                    # the output width is known: FLOAT[k] moves as one flat buffer, no offsets
                    return_type = duckdb.array_type(duckdb.sqltype("FLOAT"), outputs)
                self.con.create_function(
                    udf,
                    self._make_model_udf(kind, model, session, signature, outputs),
                    [duckdb.array_type(duckdb.sqltype("FLOAT"), width)],
                    return_type,
                    type="arrow",
                    null_handling="special",
                    side_effects=False,
                )
                self._udfs.add(udf)
        # NULL stays NULL; a wrong length, a scalar or a nested list fails the cast, which
        # _translate turns into ShapeMismatch / DTypeMismatch naming the model. DuckDB would also
        # parse text such as '1.5' into numbers: dbdl_numeric_features refuses text outright (its
        # typeof test is folded to a constant when the query is bound, so it costs nothing per row;
        # being a macro, it takes the features once, so a ``?`` among them stays one parameter).
        message = exp.Literal.string(
            f"model {model.ref!r} takes numeric features (FLOAT[{width}], DOUBLE[{width}] or a list of numbers); "
            f"convert the column, e.g. CAST(col AS FLOAT[{width}]) — got "
        )
        checked = exp.Anonymous(this="dbdl_numeric_features", expressions=[features, message])
        cast = exp.Cast(this=checked, to=exp.DataType.build(f"FLOAT[{width}]", dialect="duckdb"))
        return exp.Anonymous(this=udf, expressions=[cast])

    def sample_value(self, sql: str):
        try:
            rows = self.con.sql(sql).fetchall()
        except (duckdb.Error, Error, ValueError):
            return None
        return rows[0][0] if rows else None

    def argument_types(self, args: Sequence[exp.Expression]) -> list | None:
        """The DuckDB types of a predict call's feature arguments (bound, not run), or None where
        they cannot be known before the statement runs (bound parameters, outer references)."""
        probe = argument_probe(args)
        if probe is None:
            return None
        probe.set("limit", None)
        try:
            return list(self.con.sql(probe.sql(dialect=self.dialect)).types)
        except (duckdb.Error, Error, ValueError):
            return None

    def argument_forms(self, args: Sequence[exp.Expression]) -> list[tuple[str, str]] | None:
        types = self.argument_types(args)
        if types is None:
            return None
        forms = []
        for t in types:
            text = str(t)
            form = _form(text)
            upper = text.upper()
            forms.append(({"scalar": "number", "flat": "array", "nested": "array", "blob": "bytes"}.get(form)
                          or ("array" if upper.endswith("]") else "text" if upper in ("VARCHAR", "JSON") else
                              "other"), text))
            if upper == "BOOLEAN":  # _NUMERIC admits BOOLEAN (a feeding form), but it is not a feature
                forms[-1] = ("boolean", text)
            elif upper == '"NULL"':  # a literal NULL: no number, so a NULL prediction
                forms[-1] = ("number", text)
        return forms

    def relation_feature_problem(self, model: ResolvedModel, args: Sequence[exp.Expression]) -> str | None:
        if model.signature.n_features > ARRAY_MAX and len(args) == 1:
            return (f"the model takes {model.signature.n_features} values per row, more than the {ARRAY_MAX} a DuckDB "
                    "array holds")
        if not _classic_model(model.signature) or len(args) != 1:
            return None  # the planner names these reasons itself
        types = self.argument_types(args)
        form = _form(str(types[0])) if types else "unknown"
        if form in ("nested", "blob", "scalar"):
            what = {"nested": "a nested array", "blob": "BLOB bytes", "scalar": "one number per row"}[form]
            return f"the features are {what} ({types[0]}), not a flat list of numbers"
        return None

    def predict_call_args(self, kind: str, model: ResolvedModel, args: Sequence[exp.Expression]) -> exp.Expression:
        """The UDF-centric expression for a call with any number of feature arguments in any form.

        The classic form — one flat numeric vector for a model of fixed-width float32 inputs — is
        cast to FLOAT[n] (DuckDB hands it over as one flat buffer); every other one gets a UDF
        typed with the arguments' own types (read when the statement is bound), decoded into
        ``Column``s and fed by ``dbdl_udf.runtime.build_feeds``."""
        types = self.argument_types(args)
        if len(args) == 1 and _classic_model(model.signature) and (
                types is None or _form(str(types[0])) in ("flat", "other")):
            return self.predict_call(kind, model, args[0].copy())
        signature = model.signature
        if kind == "scalar" and model.output_spec.is_text:
            kind = "text"  # predict() of class names: VARCHAR
        options = _feed_options(self, model.name)
        mode = feed_mode(signature, len(args), options)
        typed, cast_to = [], []
        for i, a in enumerate(args):
            t = types[i] if types is not None else None
            form = _form(str(t)) if t is not None else "unknown"
            if form == "other" and str(t) != '"NULL"':
                raise DTypeMismatch(
                    f"model {model.ref!r} argument {i + 1} ({a.sql(dialect=self.dialect)[:60]}) has type {t}; predict "
                    f"takes numbers, lists or arrays of numbers, or BLOB bytes — "
                    f"the model takes {_inputs_text(signature)}")
            if form in ("unknown", "other"):
                sql_type = _fallback_type(signature, mode, i)
                typed.append(duckdb.sqltype(sql_type))
                cast_to.append(sql_type)
            else:
                typed.append(t)
                cast_to.append(None)
        udf_types = "_".join(str(t) for t in typed)
        digest = hashlib.blake2b(udf_types.encode(), digest_size=6).hexdigest()
        udf = (f"dbdl_{kind}_{model.name}_{model.version}_{model.output_index}_{model.sha256[:12]}_n{digest}_"
               f"{self._token}")
        self._feed_options[udf] = options
        with self._lock:
            if udf not in self._udfs:
                session, _sig = SESSIONS.get(
                    model.sha256, lambda: self.model_bytes(model.sha256), self.udf_threads, model=model.ref)
                outputs = model.output_spec.per_row
                return_type = _RETURN_TYPES[kind]
                if kind == "array" and outputs is not None:
                    return_type = duckdb.array_type(duckdb.sqltype("FLOAT"), outputs)
                self.con.create_function(udf, _with_arity(self._make_native_udf(kind, model, session, signature,
                                                                                 outputs, udf), len(typed)),
                                         typed, return_type, type="arrow", null_handling="special",
                                         side_effects=False)
                self._udfs.add(udf)
        call_args = []
        for a, to in zip(args, cast_to):
            a = a.copy()
            call_args.append(exp.Cast(this=a, to=exp.DataType.build(to, dialect="duckdb")) if to else a)
        return exp.Anonymous(this=udf, expressions=call_args)

    def unpinned_call_args(self, kind: str, call: exp.Anonymous) -> exp.Expression | None:
        """A call whose model is a column, with feature arguments in any form: a generic UDF typed
        with the arguments' types (the model resolved per statement). None: the backend's macros
        (one FLOAT[] argument) take it."""
        model_arg, *args = call.expressions
        types = self.argument_types(args)
        if types is None:
            if len(args) == 1:
                return None
            raise QueryError(f"{call.this}() with a model named by a column and several feature arguments needs the "
                             "arguments' types when the query is planned; write the model name as a literal, or "
                             "avoid bound parameters in the arguments")
        forms = [_form(str(t)) for t in types]
        if len(args) == 1 and forms[0] == "other":
            return None  # the classic macro: it refuses text and booleans, and passes NULL
        for i, (t, form) in enumerate(zip(types, forms)):
            if form == "other":
                raise DTypeMismatch(f"{call.this}() argument {i + 2} has type {t}; predict takes numbers, lists or "
                                    "arrays of numbers, or BLOB bytes")
        digest = hashlib.blake2b("_".join(map(str, types)).encode(), digest_size=6).hexdigest()
        udf = f"dbdl_{KINDS[kind].function}_g{digest}_{self._token}"
        with self._lock:
            if udf not in self._udfs:
                backend = weakref.proxy(self)

                def generic(refs, *feats):
                    try:
                        return backend._score_chunk_columns(kind, refs, feats)
                    except BaseException as exc:
                        backend._udf_error = exc
                        raise

                self.con.create_function(udf, _with_arity(generic, 1 + len(types)), [duckdb.sqltype("VARCHAR"), *types],
                                         _RETURN_TYPES[kind],
                                         type="arrow", null_handling="special", side_effects=False)
                self._udfs.add(udf)
        return exp.Anonymous(this=udf, expressions=[a.copy() for a in call.expressions])

    def _make_native_udf(self, kind: str, model: ResolvedModel, session: Any, signature: Any, outputs: int | None,
                         udf_name: str):
        fixed = kind == "array" and outputs is not None
        out_type = pa.list_(pa.float32(), outputs) if fixed else OUT_TYPES[kind]
        output, ref, output_name = model.output_index, model.ref, model.output_spec.name
        backend = weakref.proxy(self)

        def udf(*arrays):
            try:
                columns = [arrow_column(a, f"model {ref!r} features") for a in arrays]
                n = len(columns[0])
                valid = valid_rows(columns)
                if not valid.any():
                    return pa.nulls(n, out_type)
                y = run_batch(session, signature, columns, output, ref, backend._feed_options.get(udf_name))
                return udf_result(kind, n, valid, y, fixed, out_type, ref, output_name, signature)
            except BaseException as exc:
                backend._udf_error = exc
                raise

        return udf

    def _score_chunk_columns(self, kind: str, refs: Any, feats: Sequence[Any]) -> pa.Array:
        refs = combined(refs)
        columns = [arrow_column(f) for f in feats]
        n = len(refs)
        out_type = OUT_TYPES[kind]
        if refs.null_count == n:
            return pa.nulls(n, out_type)
        valid = valid_rows(columns) & refs.is_valid().to_numpy(zero_copy_only=False)
        distinct = refs.unique().drop_null().to_pylist()
        results: list[tuple[np.ndarray, np.ndarray]] = []
        for ref in distinct:
            rows = valid & pc.equal(refs, ref).fill_null(False).to_numpy(zero_copy_only=False)
            model = self._model_for(ref)
            session, signature = SESSIONS.get(
                model.sha256, lambda m=model: self.cursor_view().model_bytes(m.sha256), self.udf_threads,
                model=model.ref)
            if not rows.any():
                continue
            options = self._statement_options.get(model.name)
            if options is None:
                options = self._statement_options[model.name] = _feed_options(self.cursor_view(), model.name)
            spec = model.output_spec
            if kind == "scalar" and spec.is_text:
                raise DTypeMismatch(f"model {model.ref!r} output {spec.name!r} holds text (class names) and this "
                                    f"predict() returns FLOAT; call predict_text(model, ...) for the class name")
            y = run_batch(session, signature, [c.take(rows) for c in columns], model.output_index, model.ref, options)
            y = shape_outputs(y, "scalar" if kind == "text" else kind, model.ref, spec.name, signature)
            results.append((rows, as_text(y) if kind == "text" else y))
        return assemble(kind, n, results, out_type)

    def cache_key(self, model: ResolvedModel, features: exp.Expression) -> exp.Expression:
        """BLAKE2b-128 of the float32 bytes the model would be fed (the features cast to FLOAT[n])."""
        width = model.signature.n_features
        udf = f"dbdl_cache_key_{width}_{self._token}"
        with self._lock:
            if udf not in self._udfs:
                self.con.create_function(udf, _cache_key_udf, [duckdb.array_type(duckdb.sqltype("FLOAT"), width)],
                                         duckdb.sqltype("BLOB"), type="arrow", null_handling="special",
                                         side_effects=False)
                self._udfs.add(udf)
        return exp.Anonymous(this=udf, expressions=[self.cache_input(model, features)])

    def cache_input(self, model: ResolvedModel, features: exp.Expression) -> exp.Expression:
        """The features as the cache key digests them: checked numeric, cast to FLOAT[n]."""
        width = model.signature.n_features
        message = exp.Literal.string(
            f"model {model.ref!r} takes numeric features (FLOAT[{width}], DOUBLE[{width}] or a list of numbers); "
            f"convert the column, e.g. CAST(col AS FLOAT[{width}]) — got ")
        checked = exp.Anonymous(this="dbdl_numeric_features", expressions=[features, message])
        return exp.Cast(this=checked, to=exp.DataType.build(f"FLOAT[{width}]", dialect="duckdb"))

    def cache_digests(self, matrix: np.ndarray) -> pa.Array:
        """The cache keys of a (rows × n) float32 matrix: what the key UDF gives for its rows."""
        return _digests(np.ascontiguousarray(matrix, dtype="<f4"))

    def cache_lookup(self, cache_id: int) -> Any:
        """``lookup(keys)``: for each of ``keys`` (a binary Arrow array) that entry ``cache_id``
        holds, its position ``i`` and the row's ``key``, ``output`` and ``gen``; read through a
        cursor of its own, so that it runs while a statement's rows stream out of this connection.
        ``lookup.close()`` when done."""
        cursor = self.con.cursor()
        sql = (f"SELECT b.i, c.key, c.output, c.gen FROM dbdl_lookup_keys AS b JOIN dbdl.result_cache AS c "
               f"ON c.key = b.k WHERE c.cache_id = {int(cache_id):d}")

        def lookup(keys: pa.Array) -> pa.Table:
            cursor.register("dbdl_lookup_keys", pa.table({"k": keys, "i": pa.array(np.arange(len(keys)))}))
            try:
                return cursor.sql(sql).to_arrow_table()
            except duckdb.Error as exc:
                raise self._translate(exc) from exc
            finally:
                cursor.unregister("dbdl_lookup_keys")

        lookup.close = cursor.close
        return lookup

    def _make_model_udf(self, kind: str, model: ResolvedModel, session: Any, signature: Any, outputs: int | None):
        fixed = kind == "array" and outputs is not None
        out_type = pa.list_(pa.float32(), outputs) if fixed else OUT_TYPES[kind]
        output, ref, output_name = model.output_index, model.ref, model.output_spec.name
        backend = weakref.proxy(self)  # the connection holds the UDF: no cycle back to it
        # the common case (no NULLs, one float32 input, a numeric output of known width) takes a
        # lean path: a chunk is ~2 ms of onnxruntime that evicts the CPU caches, after which every
        # Python call of the general path costs tens of µs (docs/architecture.md, "The lean chunk path")
        # (an output whose width the kind refuses keeps the general path, and shape_outputs' error)
        width = model.output_spec.per_row
        lean = width is not None and (kind == "array" or kind == "class" and width >= 2 or kind == "scalar" and width == 1)
        run = dense_runner(session, signature, output, ref) if lean else None

        def udf(feats):
            try:
                if run is not None:
                    matrix = dense_matrix(feats)
                    if matrix is not None:
                        return dense_result(kind, run(matrix), out_type)
                feats = combined(feats)
                matrix, valid = feature_matrix(feats)
                n = len(feats)
                if not valid.any():
                    return pa.nulls(n, out_type)
                x = matrix if valid.all() else matrix[valid]
                y = run_batch(session, signature, x, output, ref)
                return udf_result(kind, n, valid, y, fixed, out_type, ref, output_name, signature)
            except BaseException as exc:
                backend._udf_error = exc
                raise

        return udf

    def _make_udf(self, kind: str):
        backend = weakref.proxy(self)

        def udf(refs, feats):
            try:
                return backend._score_chunk(kind, refs, feats)
            except BaseException as exc:
                backend._udf_error = exc
                raise

        return udf

    def _model_for(self, ref: str) -> ResolvedModel:
        # A model named by a column value: resolved on first sight in a statement and kept until the
        # statement ends, so one statement sees one version. The registry is read through a cursor
        # (the query's own connection is busy running us).
        model = self._statement_models.get(ref)
        if model is None:
            model = self._statement_models[ref] = self.cursor_view().resolve(ref)
        return model

    def _score_chunk(self, kind: str, refs: Any, feats: Any) -> pa.Array:
        refs = combined(refs)
        feats = combined(feats)
        n = len(feats)
        out_type = OUT_TYPES[kind]
        if refs.null_count == n:
            return pa.nulls(n, out_type)
        matrix, valid = feature_matrix(feats)
        valid &= refs.is_valid().to_numpy(zero_copy_only=False)
        distinct = refs.unique().drop_null().to_pylist() if refs.null_count or not _is_constant(refs) else [refs[0].as_py()]
        results: list[tuple[np.ndarray, np.ndarray]] = []
        for ref in distinct:
            rows = valid if len(distinct) == 1 else valid & pc.equal(refs, ref).fill_null(False).to_numpy(zero_copy_only=False)
            model = self._model_for(ref)
            session, signature = SESSIONS.get(
                model.sha256, lambda m=model: self.cursor_view().model_bytes(m.sha256), self.udf_threads,
                model=model.ref,
            )
            if not rows.any():
                continue
            check_features(signature, matrix.shape[1], model.ref)
            x = matrix if rows.all() else matrix[rows]
            spec = model.output_spec
            if kind == "scalar" and spec.is_text:
                raise DTypeMismatch(f"model {model.ref!r} output {spec.name!r} holds text (class names) and this "
                                    f"predict() returns FLOAT; call predict_text(model, feats) for the class name "
                                    f"(a literal model name, predict({model.name!r}, feats), is planned into that "
                                    "form itself)")
            y = run_batch(session, signature, x, model.output_index, model.ref)
            y = shape_outputs(y, "scalar" if kind == "text" else kind, model.ref, spec.name, signature)
            results.append((rows, as_text(y) if kind == "text" else y))
        return assemble(kind, n, results, out_type)


_SQL_TYPES = {"float32": "FLOAT", "int64": "BIGINT", "str": "VARCHAR"}
#: kind -> the DuckDB type a UDF returns (a vector kind: a list of its element type)
_RETURN_TYPES = {k.name: duckdb.list_type(duckdb.sqltype(_SQL_TYPES[k.dtype])) if k.vector
                 else duckdb.sqltype(_SQL_TYPES[k.dtype]) for k in KINDS.values()}




def _is_constant(refs: pa.Array) -> bool:
    return len(refs) <= 1 or bool(pc.all(pc.equal(refs, refs[0])).as_py())


def _cache_key_udf(feats: Any) -> pa.Array:
    """BLAKE2b-128 of each row's little-endian float32 bytes, NULL for a NULL row or one with a
    NULL element: one pass over the chunk's contiguous buffer (slices of one memoryview, no numpy
    row objects) and the answer built from two buffers, not from a list of Python objects."""
    feats = combined(feats)
    width = feats.type.list_size
    n = len(feats)
    valid = None if feats.null_count == 0 else feats.is_valid().to_numpy(zero_copy_only=False)
    values = feats.values.slice(feats.offset * width, n * width)
    if values.null_count:
        holes = ~values.is_valid().to_numpy(zero_copy_only=False).reshape(-1, width)
        valid = (np.ones(n, dtype=bool) if valid is None else valid) & ~holes.any(axis=1)
    keys = _digests(np.ascontiguousarray(values.to_numpy(zero_copy_only=False).astype("<f4", copy=False)
                                         .reshape(-1, width)))
    if valid is None or valid.all():
        return keys
    return pc.if_else(pa.array(valid), keys, pa.scalar(None, pa.binary()))


def _digests(matrix: np.ndarray) -> pa.Array:
    """BLAKE2b-128 of each row of a contiguous little-endian float32 matrix, as a binary array."""
    n = len(matrix)
    step = matrix.shape[1] * 4 if matrix.ndim == 2 else 0
    buf = memoryview(matrix).cast("B")
    digest = hashlib.blake2b
    data = b"".join([digest(buf[i:i + step], digest_size=16).digest() for i in range(0, n * step, step)]) if step \
        else digest(b"", digest_size=16).digest() * n
    offsets = pa.py_buffer(np.arange(0, 16 * n + 1, 16, dtype=np.int32))
    return pa.Array.from_buffers(pa.binary(), n, [None, offsets, pa.py_buffer(data)])


_NUMERIC = r"(?:FLOAT|DOUBLE|REAL|DECIMAL\(\d+,\d+\)|U?(?:TINY|SMALL|BIG|HUGE)?INT(?:EGER)?|U?HUGEINT|BOOLEAN)"


_FLAT = re.compile(rf"^{_NUMERIC}\[\d*\]$")


_NESTED = re.compile(rf"^{_NUMERIC}(?:\[\d*\]){{2,}}$")


_SCALAR = re.compile(rf"^{_NUMERIC}$")


def _form(type_text: str) -> str:
    """What a DuckDB type is to the feeding layer: flat, nested, blob, scalar or other."""
    t = type_text.upper()
    if _FLAT.match(t):
        return "flat"
    if _NESTED.match(t):
        return "nested"
    if t == "BLOB":
        return "blob"
    if _SCALAR.match(t):
        return "scalar"
    return "other"


#: DuckDB's fixed-size ARRAY holds at most this many values: wider rows (an ImageNet-sized 3x224x224
#: image) are FLOAT[] lists, and go through the typed UDF path instead of FLOAT[n]
ARRAY_MAX = 100_000


def _classic_model(signature: Signature) -> bool:
    """Fixed-width float32 inputs: one flat FLOAT[n] vector feeds them (the fast path)."""
    return 0 < signature.n_features <= ARRAY_MAX and all(s.dtype == "float32" and s.per_row is not None and s.per_row > 0 and len(s.shape) >= 1
               for s in signature.inputs) and not (len(signature.inputs) == 2 and all(
                   s.shape == () for s in signature.inputs))


_SQL_OF_DTYPE = {"float32": "FLOAT", "float64": "DOUBLE", "float16": "FLOAT", "int64": "BIGINT", "int32": "INTEGER",
                 "int16": "SMALLINT", "int8": "TINYINT", "uint8": "UTINYINT", "bool": "BOOLEAN"}


def _fallback_type(signature: Signature, mode: str, i: int) -> str:
    """The type a feature argument is cast to where its own is not known when planning."""
    if mode == "offsets":
        return "BIGINT[]"
    if mode == "concat" and len(signature.inputs) > 1:
        kinds = {s.dtype for s in signature.inputs}
        return f"{_SQL_OF_DTYPE[kinds.pop()]}[]" if len(kinds) == 1 else "DOUBLE[]"
    return f"{_SQL_OF_DTYPE.get(signature.inputs[i].dtype, 'DOUBLE')}[]"


def _inputs_text(signature: Signature) -> str:
    return ", ".join(f"{s.name}: {s.dtype}[{', '.join('?' if d is None else str(d) for d in s.shape)}]"
                     for s in signature.inputs)


def _feed_options(backend: Any, name: str) -> dict:
    """The model options the feeding layer reads (pad_id, feed)."""
    row = backend.fetchone("SELECT options FROM dbdl.model_catalog WHERE name = ? LIMIT 1", (name,))
    return feed_options(row[0] if row else None)


def _with_arity(fn: Any, n: int) -> Any:
    """``fn(*args)`` as a function of exactly ``n`` named parameters (DuckDB checks a UDF's arity)."""
    names = ", ".join(f"a{i}" for i in range(n))
    scope = {"fn": fn}
    exec(f"def udf({names}):\n    return fn({names})", scope)  # noqa: S102 - generated from a count only
    return scope["udf"]
