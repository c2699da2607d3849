"""DuckDB, the embedded default.

predict runs as vectorized Arrow UDFs: DuckDB hands each call a whole chunk (up to 2048 rows), the
features arrive as one fixed-size list, and one onnxruntime run scores the chunk. After planning,
a call is typed for the model's exact feature width (``FLOAT[n]``): DuckDB then passes the
features to Python as a flat buffer, about three times cheaper than a variable-length list.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import weakref
from typing import Any, Sequence
from urllib.parse import unquote, urlsplit

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot.expressions as exp

from dbdl_udf.runtime import SESSIONS, Column, Signature, check_features, feed_mode, feed_options, run_batch, shape_outputs, valid_rows

from ..errors import ConcurrentChange, ConnectionError, DTypeMismatch, Error, QueryError, ShapeMismatch, error_class
from ..names import ModelRef
from ..planner.dialects import DbdlDuckDB
from ..registry import ResolvedModel, load_model_bytes, resolve
from .base import Backend, argument_probe

_RETURN_TYPES = {
    "scalar": duckdb.sqltype("FLOAT"),
    "array": duckdb.list_type(duckdb.sqltype("FLOAT")),
    "class": duckdb.sqltype("BIGINT"),
    "text": duckdb.sqltype("VARCHAR"),
}
_OUT_TYPES = {"scalar": pa.float32(), "array": pa.list_(pa.float32()), "class": pa.int64(), "text": pa.string()}
# "text": predict() of an output that holds text (class names); the planner picks it for a pinned
# predict() on such an output, and predict_text(model, feats) is the generic form
_SQL_NAMES = {"scalar": "predict", "array": "predict_array", "class": "predict_class", "text": "predict_text"}
_CAST_LENGTH = re.compile(
    r"Cannot cast (?:list with length|array of size) (\d+) to array (?:with length|of size) (\d+)")
_TOKENS = itertools.count(1)
_DBDL_ERROR = re.compile(r"^[^\n]*?Error: dbdl\.(\w+): ([^\n]*)")


def _path_from_url(url: str) -> str:
    parts = urlsplit(url)
    path = unquote(parts.netloc + parts.path)
    if path.startswith("/"):
        path = path[1:]  # duckdb:///rel.db -> rel.db ; duckdb:////abs.db -> /abs.db
    return path or ":memory:"


class DuckDBBackend(Backend):
    name = "duckdb"
    schemes = ("duckdb",)
    dialect = DbdlDuckDB
    auto_upgrade = True  # an embedded file belongs to its user: connect() applies pending migrations

    def __init__(self, url: str, *, read_only: bool = False, create: bool = True, connection: Any = None,
                 **_: Any) -> None:
        super().__init__(url)
        self.path = _path_from_url(url)
        if connection is not None:
            self.con = connection
        else:
            if self.path != ":memory:":
                if os.path.basename(self.path).split(".")[0].lower() == "dbdl":
                    # DuckDB names the database after the file, and a catalog called "dbdl" makes every
                    # reference to the schema dbdl.models ambiguous
                    raise ConnectionError(
                        f"DuckDB names a database after its file, so {self.path!r} would clash with dbdl's own "
                        "schema 'dbdl'; choose another file name, e.g. dbdl_data.duckdb")
                parent = os.path.dirname(os.path.abspath(self.path))
                if not os.path.isdir(parent):
                    raise ConnectionError(f"cannot create {self.path!r}: the folder {parent!r} does not exist")
                if not create and not os.path.exists(self.path):
                    raise ConnectionError(
                        f"there is no DuckDB database at {self.path!r}; create it with: dbdl migrate {url}")
            try:
                self.con = duckdb.connect(self.path, read_only=read_only)
            except duckdb.Error as exc:
                raise ConnectionError(f"cannot open DuckDB database {self.path!r}: {exc}") from exc
        self.read_only = read_only
        # ONNX Runtime threads per UDF call. DuckDB already runs chunks on several threads, so each
        # call uses one unless told otherwise (DBDL_UDF_THREADS); see docs/reference.md.
        self.udf_threads = int(os.environ.get("DBDL_UDF_THREADS", "1"))
        self._token = f"{next(_TOKENS):x}"
        self._udfs: set[str] = set()
        self._statement_models: dict[str, ResolvedModel] = {}
        self._statement_options: dict[str, dict] = {}
        self._feed_options: dict[str, dict] = {}  # native UDF name -> the model's feeding options
        self._udf_error: BaseException | None = None
        self._lock = threading.Lock()

    # -- primitives ------------------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        try:
            self.con.execute(sql, list(params))
        except duckdb.Error as exc:
            raise self._translate(exc) from exc

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        try:
            return self.con.execute(sql, list(params)).fetchall()
        except duckdb.Error as exc:
            raise self._translate(exc) from exc

    def fetch_arrow(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        try:
            return self.con.execute(sql, list(params)).to_arrow_table()
        except duckdb.Error as exc:
            raise self._translate(exc) from exc

    def executescript(self, sql: str) -> None:
        self.con.execute(sql)

    def begin(self) -> None:
        self.con.begin()

    def commit(self) -> None:
        try:
            self.con.commit()
        except duckdb.Error as exc:  # a write-write conflict surfaces here too
            raise self._translate(exc) from exc

    def rollback(self) -> None:
        self.con.rollback()

    def close(self) -> None:
        self._udfs.clear()
        try:
            self.con.close()
        except duckdb.Error:
            pass

    def write_arrow(self, table: str, data: pa.Table, *, replace: bool = False) -> None:
        view = f"dbdl_load_{id(data):x}"
        columns = []
        for field in data.schema:
            col = exp.column(field.name, quoted=True)
            if pa.types.is_fixed_size_list(field.type):
                # Arrow's fixed-size list arrives as DuckDB's ARRAY type; store FLOAT[n] explicitly
                # (nested: FLOAT[c][b][a] for rows of shape [a, b, c] — DuckDB writes the innermost
                # size first; a row wider than a DuckDB ARRAY holds is stored as a FLOAT[] list)
                dims, inner = [], field.type
                while pa.types.is_fixed_size_list(inner):
                    dims.append(inner.list_size)
                    inner = inner.value_type
                sql_type = "FLOAT" + "".join(f"[{d}]" for d in reversed(dims))
                if len(dims) == 1 and dims[0] > ARRAY_MAX:
                    sql_type = "FLOAT[]"
                columns.append(exp.alias_(exp.Cast(this=col, to=exp.DataType.build(sql_type, dialect="duckdb")),
                                          field.name, quoted=True))
            else:
                columns.append(col)
        select = exp.select(*columns).from_(exp.to_identifier(view))
        create = exp.Create(this=exp.to_table(table), kind="TABLE", expression=select, replace=replace)
        self.con.register(view, data)
        try:
            self.con.execute(create.sql(dialect=self.dialect))
        except duckdb.Error as exc:
            raise self._translate(exc) from exc
        finally:
            self.con.unregister(view)

    def score_into_temp_table(self, source_sql: str, score: Any, kind: str, table: str, keyed: bool = False) -> None:
        """DL-centric: Arrow record batches out, ``score`` on each, an Arrow table back in.

        The source's columns are the features (``dbdl_f``, then ``dbdl_f1``, ``dbdl_f2`` … for a
        call with several feature arguments), in their own SQL types; each batch is decoded into
        ``Column``s and ``score(columns)`` returns the predictions of the rows valid in all of them."""
        from ..strategies.dl import BATCH_ROWS

        reader = None
        names: list[str] = []
        types: list[pa.DataType] = []
        try:
            reader = self.con.sql(source_sql).to_arrow_reader(BATCH_ROWS)
            names = [f.name for f in reader.schema]
            types = [f.type for f in reader.schema]
            keys: list[list[pa.Array]] = [[] for _ in names]
            outputs = []
            for batch in reader:
                arrays = [_combined(batch.column(i)) for i in range(len(names))]
                columns = [arrow_column(a) for a in arrays]
                n = len(arrays[0])
                valid = valid_rows(columns)
                y = score(columns) if valid.any() else None
                for i, a in enumerate(arrays):
                    keys[i].append(a)
                if y is None:
                    outputs.append(pa.nulls(n, _OUT_TYPES[kind]))
                    continue
                outputs.append(_fixed_size(n, valid, y) if kind == "array" else
                               pa.array(_scatter(n, valid, y), mask=~valid))
        except duckdb.Error as exc:
            raise self._translate(exc) from exc
        finally:
            if reader is not None:  # a failed batch must not leave the connection's result open
                reader.close()
        if outputs and kind == "array":
            widths = {o.type.list_size for o in outputs if pa.types.is_fixed_size_list(o.type)}
            if len(widths) == 1:  # batches of NULLs only match the others' width
                w = widths.pop()
                outputs = [o if pa.types.is_fixed_size_list(o.type) else pa.nulls(len(o), pa.list_(pa.float32(), w))
                           for o in outputs]
            else:
                outputs = [o.cast(pa.list_(pa.float32())) for o in outputs]
        if reader is None or not names:
            names, types, keys = ["dbdl_f"], [pa.list_(pa.float32())], [[]]
        data = {name: pa.concat_arrays(parts) if parts else pa.array([], type)
                for name, type, parts in zip(names, types, keys)}
        data["dbdl_prediction"] = pa.concat_arrays(outputs) if outputs else pa.array([], pa.float32())
        data = pa.table(data)
        view = f"{table}_arrow"
        self.con.register(view, data)
        try:
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT * FROM {view}")
        except duckdb.Error as exc:
            raise self._translate(exc) from exc
        finally:
            self.con.unregister(view)

    def drop_temp_table(self, table: str) -> None:
        self.con.execute(f"DROP TABLE IF EXISTS {table}")

    def cursor_view(self) -> "DuckDBBackend":
        """A backend over a new cursor of the same database (for code running inside a query)."""
        view = DuckDBBackend.__new__(DuckDBBackend)
        view.url, view.path, view.con, view.read_only = self.url, self.path, self.con.cursor(), self.read_only
        view._udf_error = None
        return view

    # -- functions -------------------------------------------------------------------------
    # DuckDB keeps Python UDFs in the database instance, which every connection to the same file
    # in this process shares; each backend therefore names its UDFs with a token of its own.

    def on_connect(self, db: Any) -> None:
        self.con.execute(
            "CREATE OR REPLACE TEMP MACRO dbdl_numeric_features(x, message) AS "
            "CASE WHEN regexp_matches(typeof(x), 'VARCHAR|BLOB|JSON|BIT|BOOL') "
            "THEN error('dbdl.DTypeMismatch: ' || message || typeof(x)) ELSE x END"
        )
        # Generic forms, for SQL that names the model with a column: any numeric list, the model
        # resolved once per statement (see _model_for).
        for kind, sql_name in _SQL_NAMES.items():
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
                    model.sha256, lambda: load_model_bytes(self, model.sha256), self.udf_threads, model=model.ref
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

    # -- the feeding layer: calls in any input form ------------------------------------------

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
        import hashlib

        digest = hashlib.blake2b(udf_types.encode(), digest_size=6).hexdigest()
        udf = (f"dbdl_{kind}_{model.name}_{model.version}_{model.output_index}_{model.sha256[:12]}_n{digest}_"
               f"{self._token}")
        self._feed_options[udf] = options
        with self._lock:
            if udf not in self._udfs:
                session, _sig = SESSIONS.get(
                    model.sha256, lambda: load_model_bytes(self, model.sha256), self.udf_threads, model=model.ref)
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
        import hashlib

        digest = hashlib.blake2b("_".join(map(str, types)).encode(), digest_size=6).hexdigest()
        udf = f"dbdl_{_SQL_NAMES[kind]}_g{digest}_{self._token}"
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
        out_type = pa.list_(pa.float32(), outputs) if fixed else _OUT_TYPES[kind]
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
                return _udf_result(kind, n, valid, y, fixed, out_type, ref, output_name, signature)
            except BaseException as exc:
                backend._udf_error = exc
                raise

        return udf

    def _score_chunk_columns(self, kind: str, refs: Any, feats: Sequence[Any]) -> pa.Array:
        refs = _combined(refs)
        columns = [arrow_column(f) for f in feats]
        n = len(refs)
        out_type = _OUT_TYPES[kind]
        if refs.null_count == n:
            return pa.nulls(n, out_type)
        valid = valid_rows(columns) & refs.is_valid().to_numpy(zero_copy_only=False)
        distinct = refs.unique().drop_null().to_pylist()
        results: list[tuple[np.ndarray, np.ndarray]] = []
        for ref in distinct:
            rows = valid & pc.equal(refs, ref).fill_null(False).to_numpy(zero_copy_only=False)
            model = self._model_for(ref)
            session, signature = SESSIONS.get(
                model.sha256, lambda m=model: load_model_bytes(self.cursor_view(), m.sha256), self.udf_threads,
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
            results.append((rows, _as_text(y) if kind == "text" else y))
        return _assemble(kind, n, results, out_type)

    # -- result cache hooks (see dbdl.cache) -------------------------------------------------

    #: the column that identifies a base table's rows within one connection
    cache_identity = "rowid"

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
        message = exp.Literal.string(
            f"model {model.ref!r} takes numeric features (FLOAT[{width}], DOUBLE[{width}] or a list of numbers); "
            f"convert the column, e.g. CAST(col AS FLOAT[{width}]) — got ")
        checked = exp.Anonymous(this="dbdl_numeric_features", expressions=[features, message])
        cast = exp.Cast(this=checked, to=exp.DataType.build(f"FLOAT[{width}]", dialect="duckdb"))
        return exp.Anonymous(this=udf, expressions=[cast])

    def argmax_sql(self, values: str) -> str:
        # numpy's arg-max: the first maximum, NaN counting as the largest (as DuckDB orders it)
        return f"list_position({values}, list_max({values})) - 1"

    def is_base_table(self, name: str) -> bool:
        """A table (not a view): its rowid identifies rows for the length of a statement sequence."""
        try:
            if self.fetchone("SELECT count(*) FROM duckdb_views() WHERE view_name = ?",
                             (exp.to_table(name).name,))[0]:
                return False
            self.con.execute(f"SELECT rowid FROM {name} LIMIT 0")
            return True
        except (duckdb.Error, Error):
            return False

    def execute_count(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            row = self.con.execute(sql, list(params)).fetchone()
        except duckdb.Error as exc:
            raise self._translate(exc) from exc
        return int(row[0]) if row else 0

    def _make_model_udf(self, kind: str, model: ResolvedModel, session: Any, signature: Any, outputs: int | None):
        fixed = kind == "array" and outputs is not None
        out_type = pa.list_(pa.float32(), outputs) if fixed else _OUT_TYPES[kind]
        output, ref, output_name = model.output_index, model.ref, model.output_spec.name
        backend = weakref.proxy(self)  # the connection holds the UDF: no cycle back to it

        def udf(feats):
            try:
                feats = _combined(feats)
                matrix, valid = _feature_matrix(feats)
                n = len(feats)
                if not valid.any():
                    return pa.nulls(n, out_type)
                x = matrix if valid.all() else matrix[valid]
                y = run_batch(session, signature, x, output, ref)
                return _udf_result(kind, n, valid, y, fixed, out_type, ref, output_name, signature)
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
            model = self._statement_models[ref] = resolve(self.cursor_view(), ModelRef.parse(ref))
        return model

    def _score_chunk(self, kind: str, refs: Any, feats: Any) -> pa.Array:
        refs = _combined(refs)
        feats = _combined(feats)
        n = len(feats)
        out_type = _OUT_TYPES[kind]
        if refs.null_count == n:
            return pa.nulls(n, out_type)
        matrix, valid = _feature_matrix(feats)
        valid &= refs.is_valid().to_numpy(zero_copy_only=False)
        distinct = refs.unique().drop_null().to_pylist() if refs.null_count or not _is_constant(refs) else [refs[0].as_py()]
        results: list[tuple[np.ndarray, np.ndarray]] = []
        for ref in distinct:
            rows = valid if len(distinct) == 1 else valid & pc.equal(refs, ref).fill_null(False).to_numpy(zero_copy_only=False)
            model = self._model_for(ref)
            session, signature = SESSIONS.get(
                model.sha256, lambda m=model: load_model_bytes(self.cursor_view(), m.sha256), self.udf_threads,
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
            results.append((rows, _as_text(y) if kind == "text" else y))
        return _assemble(kind, n, results, out_type)

    # -- user statements -------------------------------------------------------------------

    def run_query(self, sql: str, params: Sequence[Any] = (), models: Sequence[ResolvedModel] = ()) -> pa.Table | None:
        self._udf_error = None
        self._statement_models.clear()
        self._statement_options.clear()
        try:
            relation = self.con.sql(sql, params=list(params) if params else None)
            return None if relation is None else relation.to_arrow_table()
        except duckdb.Error as exc:
            raise self._translate(exc, models) from exc

    def _translate(self, exc: duckdb.Error, models: Sequence[ResolvedModel] = ()) -> Error:
        raised, self._udf_error = self._udf_error, None
        if isinstance(raised, Error):
            return raised
        message = str(exc)
        first = message.splitlines()[0] if message else ""
        found = _DBDL_ERROR.search(message)
        if found:
            return error_class(found[1])(found[2].strip())
        if isinstance(exc, duckdb.ParserException):
            return QueryError(f"the query does not parse: {message}")
        if isinstance(exc, duckdb.TransactionException) or "write-write conflict" in first or "Conflict on" in first:
            return ConcurrentChange(f"another connection changed the same rows at the same moment; run it again "
                                    f"(DuckDB said: {first})")
        length = _CAST_LENGTH.search(first)
        if length:
            got, width = int(length[1]), int(length[2])
            matching = [m for m in models if m.signature.n_features == width]
            names = [m.ref for m in matching] or ["the model"]
            shaped = ""
            if matching and len(matching[0].signature.inputs) == 1 and len(matching[0].signature.inputs[0].shape) > 1:
                spec = matching[0].signature.inputs[0]
                shaped = f" (input {spec.name!r} of shape {list(spec.shape)}, reshaped from a flat row)"
            return ShapeMismatch(
                f"model {names[0]!r} takes {width} features per row{shaped}; pass a vector of exactly {width} "
                f"numbers — got a row with {got}"
            )
        if "FLOAT[" in first and ("cast" in first.lower() or "convert" in first.lower()) or "Could not convert" in first:
            names = ", ".join(repr(m.ref) for m in models) or "the model"
            return DTypeMismatch(
                f"{names} takes a list or array of numbers (FLOAT[n], DOUBLE[n], INTEGER[]…); convert the "
                f"features, e.g. CAST(col AS FLOAT[]) — DuckDB said: {first}"
            )
        return QueryError(message)


def _as_text(values: np.ndarray) -> np.ndarray:
    """predict_text of any one-value output: text as it is, numbers as text (whole ones without '.0')."""
    if values.dtype == object:
        return values
    return np.array([str(int(v)) if float(v).is_integer() else repr(float(v)) for v in values.tolist()], dtype=object)


def _udf_result(kind: str, n: int, valid: np.ndarray, y: np.ndarray, fixed: bool, out_type: pa.DataType, ref: str,
                output_name: str, signature: Any) -> pa.Array:
    """A model UDF's answer for a chunk of ``n`` rows: the scored rows' (``valid``) outputs ``y``
    shaped for the kind (text for class names), NULL for the others."""
    y = shape_outputs(y, "scalar" if kind == "text" else kind, ref, output_name, signature)
    if kind == "text":
        y = _as_text(y)
    if fixed:
        return _fixed_size(n, valid, y)
    return _assemble(kind, n, [(valid, y)], out_type)


def _combined(arr: Any) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        return arr.chunk(0) if arr.num_chunks == 1 else arr.combine_chunks()
    return arr


def _is_constant(refs: pa.Array) -> bool:
    return len(refs) <= 1 or bool(pc.all(pc.equal(refs, refs[0])).as_py())


def _cache_key_udf(feats: Any) -> pa.Array:
    import hashlib

    feats = _combined(feats)
    width = feats.type.list_size
    valid = np.ones(len(feats), dtype=bool) if feats.null_count == 0 else feats.is_valid().to_numpy(
        zero_copy_only=False)
    values = feats.values.slice(feats.offset * width, len(feats) * width)
    if values.null_count:
        holes = ~values.is_valid().to_numpy(zero_copy_only=False).reshape(-1, width)
        valid &= ~holes.any(axis=1)
    matrix = np.ascontiguousarray(values.to_numpy(zero_copy_only=False).astype("<f4", copy=False).reshape(-1, width))
    digest = hashlib.blake2b
    keys = [digest(row, digest_size=16).digest() if ok else None for row, ok in zip(matrix, valid)]
    return pa.array(keys, pa.binary())


def _feature_matrix(feats: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(rows x width) float32 features and a mask of the rows that can be scored."""
    n = len(feats)
    valid = np.ones(n, dtype=bool) if feats.null_count == 0 else feats.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_fixed_size_list(feats.type):
        width = feats.type.list_size
        values = feats.values.slice(feats.offset * width, n * width)
    else:
        if not valid.any():
            return np.zeros((n, 0), dtype=np.float32), valid
        lengths = pc.list_value_length(feats).to_numpy(zero_copy_only=False)
        widths = np.unique(lengths[valid])
        if len(widths) > 1:
            raise ShapeMismatch(
                f"feature vectors in one query must all have the same length; found lengths {widths.tolist()[:5]} — "
                "filter or pad the rows so that every vector has the model's width"
            )
        width = int(widths[0])
        if not valid.all():
            feats = feats.filter(pa.array(valid))
        values = pc.list_flatten(feats)
        if not valid.all():
            flat = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
            matrix = np.zeros((n, width), dtype=np.float32)
            matrix[valid] = flat.reshape(-1, width)
            if values.null_count:
                holes = np.zeros((n, width), dtype=bool)
                holes[valid] = ~values.is_valid().to_numpy(zero_copy_only=False).reshape(-1, width)
                valid &= ~holes.any(axis=1)
            return matrix, valid
    if values.null_count:
        valid &= values.is_valid().to_numpy(zero_copy_only=False).reshape(n, width).all(axis=1)
    matrix = values.to_numpy(zero_copy_only=False)
    if matrix.dtype != np.float32:
        matrix = matrix.astype(np.float32)
    return matrix.reshape(n, width), valid


def _scatter(n: int, valid: np.ndarray, values: np.ndarray) -> np.ndarray:
    if valid.all():
        return values
    full = np.full(n, "", dtype=object) if values.dtype == object else np.zeros(n, dtype=values.dtype)
    full[valid] = values
    return full


def _fixed_size(n: int, valid: np.ndarray, values: np.ndarray) -> pa.Array:
    """(rows x k) outputs as a FixedSizeList (DuckDB FLOAT[k]); rows not valid are NULL."""
    k = values.shape[1]
    if valid.all():
        return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), k)
    full = np.zeros((n, k), dtype=np.float32)
    full[valid] = values
    return pa.FixedSizeListArray.from_arrays(pa.array(full.ravel()), k, mask=pa.array(~valid))


def _assemble(kind: str, n: int, results: list[tuple[np.ndarray, np.ndarray]], out_type: pa.DataType) -> pa.Array:
    covered = np.zeros(n, dtype=bool)
    for rows, _ in results:
        covered |= rows
    if kind == "text":
        full = np.full(n, None, dtype=object)
        for rows, values in results:
            full[rows] = values
        return pa.array(full.tolist(), type=out_type)
    if kind != "array":
        full = np.zeros(n, dtype=np.int64 if kind == "class" else np.float32)
        for rows, values in results:
            full[rows] = values
        return pa.array(full, type=out_type, mask=~covered if not covered.all() else None)
    if len(results) == 1 and results[0][0].all():
        values = results[0][1]
        k = values.shape[1]
        offsets = np.arange(0, (n + 1) * k, k, dtype=np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.ravel()))
    widths = {values.shape[1] for _, values in results}
    k = widths.pop() if len(widths) == 1 else None
    if k is None:
        rows_out: list[Any] = [None] * n
        for rows, values in results:
            for i, v in zip(np.flatnonzero(rows), values):
                rows_out[i] = v.tolist()
        return pa.array(rows_out, type=out_type)
    full = np.zeros((n, k), dtype=np.float32)
    for rows, values in results:
        full[rows] = values
    counts = np.where(covered, k, 0)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(full[covered].ravel()), mask=pa.array(~covered))


# -- Arrow values -> dbdl_udf.runtime.Column (the feeding layer) -------------------------------

def _is_listlike(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _row_of(offsets: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The row each element index belongs to, for rows spanning offsets[i]..offsets[i+1]."""
    return np.searchsorted(offsets, index, side="right") - 1


def arrow_column(arr: Any, what: str = "predict's features") -> Column:
    """One SQL argument of a batch, as DuckDB hands it to a UDF, decoded into a Column.

    Numbers (one per row), lists and arrays of numbers (FLOAT[n], BIGINT[], UTINYINT[]),
    nested ones (FLOAT[3][32][32], DOUBLE[][]) and BLOB (each byte a uint8 value). A NULL row, a
    NULL element or a NULL inner list makes its row not valid (its prediction is NULL)."""
    arr = _combined(arr)
    n = len(arr)
    valid = np.ones(n, dtype=bool) if arr.null_count == 0 else arr.is_valid().to_numpy(zero_copy_only=False)
    t = arr.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        bufs = arr.buffers()
        off_type = np.int64 if pa.types.is_large_binary(t) else np.int32
        offsets = np.frombuffer(bufs[1], dtype=off_type)[arr.offset:arr.offset + n + 1].astype(np.int64)
        data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
        values = data[offsets[0]:offsets[-1]]
        return Column(values, valid, offsets=offsets - offsets[0])
    if not _is_listlike(t):
        _check_leaf(t, what)
        values = (pc.fill_null(arr, False if pa.types.is_boolean(t) else 0) if arr.null_count else arr)
        return Column(values.to_numpy(zero_copy_only=False), valid, width=1, shape=())
    offsets: np.ndarray | None = None  # row offsets into the current level's elements (None: 1:1)
    width: int | None = None  # while every level so far is fixed-size: values per row
    shape: list[int] | None = []
    cur = arr
    top = True
    while _is_listlike(cur.type):
        m = len(cur)
        if not top and cur.null_count:  # a NULL inner list: its row gives NULL
            holes = np.flatnonzero(~cur.is_valid().to_numpy(zero_copy_only=False))
            valid[holes // (width or 1) if offsets is None else _row_of(offsets, holes)] = False
        if pa.types.is_fixed_size_list(cur.type):
            k = cur.type.list_size
            child = cur.values.slice(cur.offset * k, m * k)
            if offsets is None:
                width = k if width is None else width * k
            else:
                offsets = offsets * k
            if shape is not None:
                shape.append(k)
        else:
            level = cur.offsets.to_numpy(zero_copy_only=False).astype(np.int64)  # m + 1, into cur.values
            child = cur.values
            lengths = np.diff(level)
            if offsets is None:
                if width is not None:  # a variable list inside fixed-size levels: map rows through them
                    offsets = level[np.arange(n + 1, dtype=np.int64) * width]
                else:
                    offsets = level
                rows_lengths = np.diff(offsets)[valid]
                if shape is not None:
                    if len(rows_lengths) and (rows_lengths == rows_lengths[0]).all():
                        shape.append(int(rows_lengths[0]) if width is None else int(lengths[0]) if len(lengths) else 0)
                    else:
                        shape = None
                width = None
            else:
                inner = lengths
                owners = _row_of(offsets, np.arange(m)) if m else np.zeros(0, np.int64)
                live = inner[valid[owners]] if m else inner
                if len(live) and not (live == live[0]).all():
                    raise ShapeMismatch(
                        f"{what} hold nested lists of different inner lengths ({sorted(set(live.tolist()))[:5]}); "
                        "a tensor needs every inner list of one length — pass rows of one nested shape")
                if shape is not None:
                    shape.append(int(live[0]) if len(live) else 0)
                offsets = level[offsets]
        cur = child
        top = False
    _check_leaf(cur.type, what)
    if offsets is None:
        leaf = cur
        if leaf.null_count:
            holes = np.flatnonzero(~leaf.is_valid().to_numpy(zero_copy_only=False))
            valid[holes // max(width or 1, 1)] = False
    else:
        leaf = cur.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
        if leaf.null_count:
            holes = np.flatnonzero(~leaf.is_valid().to_numpy(zero_copy_only=False))
            valid[_row_of(offsets - offsets[0], holes)] = False
        offsets = offsets - offsets[0]
    if leaf.null_count:
        leaf = pc.fill_null(leaf, False if pa.types.is_boolean(leaf.type) else 0)
    values = leaf.to_numpy(zero_copy_only=False)
    nested = tuple(shape) if shape is not None and len(shape) > 1 else None
    if offsets is None:
        return Column(values, valid, width=width or 0, shape=nested)
    return Column(values, valid, offsets=offsets, shape=nested)


def _check_leaf(t: pa.DataType, what: str) -> None:
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)):
        raise DTypeMismatch(f"{what} must be numbers, lists or arrays of numbers, or BLOB bytes; got values of type "
                            f"{t} — cast the column, e.g. CAST(col AS FLOAT[])")


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
