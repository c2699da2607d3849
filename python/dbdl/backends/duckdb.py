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

from dbdl_udf.runtime import SESSIONS, check_features, run_batch, shape_outputs

from ..errors import ConcurrentChange, ConnectionError, DTypeMismatch, Error, QueryError, ShapeMismatch, error_class
from ..names import ModelRef
from ..planner.dialects import DbdlDuckDB
from ..registry import ResolvedModel, load_model_bytes, resolve
from .base import Backend

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
                columns.append(exp.alias_(exp.Cast(this=col, to=exp.DataType.build(
                    f"FLOAT[{field.type.list_size}]", dialect="duckdb")), field.name, quoted=True))
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
        """DL-centric: Arrow record batches out, ``score`` on each, an Arrow table back in."""
        from ..strategies.dl import BATCH_ROWS

        reader = None
        try:
            reader = self.con.sql(source_sql).to_arrow_reader(BATCH_ROWS)
            keys, outputs = [], []
            for batch in reader:
                feats = _combined(batch.column(0))
                if not (pa.types.is_fixed_size_list(feats.type) or pa.types.is_list(feats.type)) or not (
                        pa.types.is_floating(feats.type.value_type) or pa.types.is_integer(feats.type.value_type)):
                    raise DTypeMismatch(f"predict's features must be a list or array of numbers, got {feats.type}; "
                                        "cast the column, e.g. CAST(col AS FLOAT[])")
                matrix, valid = _feature_matrix(feats)
                y = score(matrix[valid] if not valid.all() else matrix)
                keys.append(feats)
                outputs.append(_fixed_size(len(feats), valid, y) if kind == "array" else
                               pa.array(_scatter(len(feats), valid, y), mask=~valid))
        except duckdb.Error as exc:
            raise self._translate(exc) from exc
        finally:
            if reader is not None:  # a failed batch must not leave the connection's result open
                reader.close()
        data = pa.table({"dbdl_f": pa.concat_arrays(keys) if keys else pa.array([], pa.list_(pa.float32())),
                         "dbdl_prediction": pa.concat_arrays(outputs) if outputs else pa.array([], pa.float32())})
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
                y = shape_outputs(run_batch(session, signature, x, output, ref), "scalar" if kind == "text" else kind,
                                  ref, output_name, signature)
                if kind == "text":
                    y = _as_text(y)
                if fixed:
                    return _fixed_size(n, valid, y)
                return _assemble(kind, n, [(valid, y)], out_type)
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
            names = [m.ref for m in models if m.signature.n_features == width] or ["the model"]
            return ShapeMismatch(
                f"model {names[0]!r} takes {width} features per row; pass a vector of exactly {width} numbers — "
                f"got a row with {got}"
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
