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
from typing import Any, Sequence

import duckdb
import pyarrow as pa
import sqlglot.expressions as exp

from dbdl_udf.runtime import valid_rows

from ...errors import ConcurrentChange, ConnectionError, DTypeMismatch, Error, QueryError, ShapeMismatch, error_class
from ...names import ResolvedModel
from ..base import Backend
from dbdl_udf.arrowio import OUT_TYPES, arrow_column, combined, fixed_size, scatter
from .costs import COSTS
from .dialect import RELATIONAL, DbdlDuckDB
from .files import path_from_url
from .udf import ARRAY_MAX, DuckDBFunctions

_CAST_LENGTH = re.compile(
    r"Cannot cast (?:list with length|array of size) (\d+) to array (?:with length|of size) (\d+)")
_TOKENS = itertools.count(1)
_DBDL_ERROR = re.compile(r"^[^\n]*?Error: dbdl\.(\w+): ([^\n]*)")



class DuckDBBackend(DuckDBFunctions, Backend):
    name = "duckdb"
    schemes = ("duckdb",)
    dialect = DbdlDuckDB
    relational = RELATIONAL
    cost_defaults = COSTS
    scores_unregistered_models = True  # UDFs are closures over a session (backends/duckdb/udf.py)
    auto_upgrade = True  # an embedded file belongs to its user: connect() applies pending migrations
    #: result cache keys: BLAKE2b-128 of the float32 bytes (udf.py: cache_key)
    cache_key_bytes = 16
    cache_streams = True  # keys digested and looked up while the rows stream out (udf.py)
    #: identifies a base table's rows within one connection
    row_identity = "rowid"

    def __init__(self, url: str, *, read_only: bool = False, create: bool = True, connection: Any = None,
                 **_: Any) -> None:
        super().__init__(url)
        self.path = path_from_url(url)
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

    def score_into_temp_table(self, source_sql: str, score: Any, kind: str, table: str, *, signature: Any = None,
                              keyed: bool = False, batch_rows: int = 65536) -> None:
        """DL-centric: Arrow record batches out, ``score`` on each, an Arrow table back in.

        The source's columns are the features (``dbdl_f``, then ``dbdl_f1``, ``dbdl_f2`` … for a
        call with several feature arguments), in their own SQL types; each batch is decoded into
        ``Column``s and ``score(columns)`` returns the predictions of the rows valid in all of them.
        ``keyed``: the first column, ``dbdl_k``, is the row identity, kept as the key and not scored."""
        reader = None
        names: list[str] = []
        types: list[pa.DataType] = []
        try:
            reader = self.con.sql(source_sql).to_arrow_reader(batch_rows)
            # the key columns the table keeps: the row identity, or the features themselves
            names = [f.name for f in reader.schema][:1 if keyed else None]
            types = [f.type for f in reader.schema][:len(names)]
            keys: list[list[pa.Array]] = [[] for _ in names]
            outputs = []
            for batch in reader:
                arrays = [combined(batch.column(i)) for i in range(batch.num_columns)]
                columns = [arrow_column(a) for a in arrays[1 if keyed else 0:]]
                n = len(arrays[0])
                valid = valid_rows(columns)
                y = score(columns) if valid.any() else None
                for i in range(len(names)):
                    keys[i].append(arrays[i])
                if y is None:
                    outputs.append(pa.nulls(n, OUT_TYPES[kind]))
                    continue
                outputs.append(fixed_size(n, valid, y) if kind == "array" else
                               pa.array(scatter(n, valid, y), mask=~valid))
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
            names, types, keys = (["dbdl_k"], [pa.int64()], [[]]) if keyed else (["dbdl_f"], [pa.list_(pa.float32())], [[]])
        data = {name: pa.concat_arrays(parts) if parts else pa.array([], type)
                for name, type, parts in zip(names, types, keys)}
        data["dbdl_prediction"] = pa.concat_arrays(outputs) if outputs else pa.array([], pa.float32())
        self.arrow_temp_table(table, pa.table(data))

    def arrow_temp_table(self, table: str, data: pa.Table) -> None:
        """(Re)create the temporary table ``table`` (dbdl's own name) holding ``data``."""
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


    # -- result cache and planning hooks ---------------------------------------------------


    def array_result(self, values: exp.Expression, width: int | None) -> exp.Expression:
        # the same FLOAT[k] type the UDF returns
        if width is None:
            return values
        return exp.Cast(this=values, to=exp.DataType.build(f"FLOAT[{width}]", dialect="duckdb"))

    def numeric_features(self, features: exp.Expression, message: str) -> exp.Expression:
        # the same refusal of text and booleans as the UDF path (dbdl_numeric_features, on_connect's
        # macro, is folded away when the types are numeric)
        return exp.Anonymous(this="dbdl_numeric_features", expressions=[features, exp.Literal.string(message)])

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


    # -- training data ---------------------------------------------------------------------

    def train_export(self, spec: Any, progress: Any = None) -> Any:
        from .export import train_export

        return train_export(self, spec, progress)

    @classmethod
    def open_range_reader(cls, url: str, owner: Any = None) -> Any:
        from .reader import DuckDBRangeReader

        return DuckDBRangeReader(url, owner)

    @classmethod
    def database_key(cls, url: str) -> str:
        path = path_from_url(url)
        return "duckdb:" + (path if path == ":memory:" else os.path.abspath(path))

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



# -- Arrow values -> dbdl_udf.runtime.Column (the feeding layer) -------------------------------



