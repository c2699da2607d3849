"""PostgreSQL (15+) with PL/Python: the real server.

dbdl's functions live in the database (migrations/postgres/), so any client can call them; this
backend is what the Python client needs on top: psycopg 3, binary COPY to load tables, the
migration lock, and pointing the server's Python at dbdl's in-database code.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sysconfig
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import sqlglot.expressions as exp

from dbdl_udf.kinds import KINDS

from ...errors import (ConnectionError, DTypeMismatch, Error, PermissionDenied, QueryError, error_class,
                       error_for_sqlstate)
from ...names import ResolvedModel
from ...query import argument_probe
from ...resources import udf_dir
from ..base import Backend
from .copy import (HEADER, PG_TYPES, REAL_ARRAY, binary_copy, fixed_float4_rows, innermost, prediction_fields,
                   prediction_rows_fixed, split_binary_copy)
from .costs import COSTS
from .dialect import RELATIONAL, DbdlPostgres, qmark_to_format, qualify_builtins, qualify_dbdl_calls

try:
    import psycopg
except ImportError as _exc:  # pragma: no cover - reported by Backend.open
    raise ImportError("psycopg (pip install 'dbdl[postgres]')") from _exc

_SQL_TYPES = {"float32": "real", "int64": "bigint", "str": "text"}
#: kind -> the SQL type of its results (a vector kind: an array of its element type)
_RESULT_TYPES = {k.name: _SQL_TYPES[k.dtype] + ("[]" if k.vector else "") for k in KINDS.values()}
_DBDL_ERROR = re.compile(r"dbdl\.(\w+): (.*)", re.S)
_LOCK_KEY = 0x6462646C  # 'dbdl'


def default_python_path() -> list[str]:
    """What the server's Python needs: dbdl_udf, and numpy/onnxruntime from this environment."""
    paths = [str(udf_dir())]
    for key in ("purelib", "platlib"):
        path = sysconfig.get_paths()[key]
        if path not in paths:
            paths.append(path)
    return paths


class PostgresBackend(Backend):
    name = "postgres"
    schemes = ("postgresql", "postgres")
    dialect = DbdlPostgres
    relational = RELATIONAL
    cost_defaults = COSTS
    paramstyle = "format"
    has_procedures = True
    # dbdl_admin creates relation-centric weight tables and dataset tables in dbdl_data; schema
    # dbdl, on every definer function's search_path, is the owner's alone (docs/security.md)
    data_schema = "dbdl_data"
    function_schema = "dbdl"
    #: identifies a base table's rows (DL-centric results and cache keys are joined back by it)
    row_identity = "ctid"
    #: result cache keys: SHA-256 of the input's own bytes, computed by the server (dbdl.cache_key)
    cache_key_bytes = 32
    #: roles that do not trust each other share the cache: only dbdl.cache_fill (the server's own
    #: scoring, keyed by the server) writes it
    cache_filled_in_server = True

    def __init__(self, url: str, *, python_path: Sequence[str] | None = None, **_: Any) -> None:
        super().__init__(url)
        self.python_path = list(python_path) if python_path else None
        try:
            self.con = psycopg.connect(url, autocommit=True)
        except psycopg.Error as exc:
            raise ConnectionError(f"cannot connect to {url!r}: {str(exc).strip()}") from exc

    # -- primitives ------------------------------------------------------------------------

    @staticmethod
    def _pg(sql: str, params: Sequence[Any]) -> tuple[str, tuple | None]:
        """The statement and parameters for psycopg. Without parameters the text goes as written
        (psycopg then reads no placeholder in it: a ``?`` in a literal or jsonb's ``?`` operator is
        SQL); with them, the one ?-to-%s converter (qmark_to_format: a ``?`` or ``%`` inside a
        string literal, a quoted name or a comment stays text)."""
        return (qmark_to_format(sql), tuple(params)) if params else (sql, None)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        try:
            self.con.execute(*self._pg(sql, params))
        except psycopg.Error as exc:
            raise self._translate(exc) from exc

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        try:
            return self.con.execute(*self._pg(sql, params)).fetchall()
        except psycopg.Error as exc:
            raise self._translate(exc) from exc


    def executescript(self, sql: str) -> None:
        self.con.execute(sql)

    def begin(self) -> None:
        self.con.execute("BEGIN")

    def commit(self) -> None:
        self.con.execute("COMMIT")

    def rollback(self) -> None:
        self.con.execute("ROLLBACK")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.con.close()

    @contextlib.contextmanager
    def migration_lock(self) -> Iterator[None]:
        self.con.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            yield
        finally:
            self.con.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))

    def after_migrate(self) -> None:
        # An explicit --python-path (or DBDL_SERVER_PYTHON_PATH) wins; otherwise a path already
        # recorded is kept, so re-running `dbdl migrate` from another machine changes nothing.
        from . import native

        native.install(self.con)  # the C helper of predict_into, where a superuser can create it
        explicit = self.python_path or json.loads(os.environ.get("DBDL_SERVER_PYTHON_PATH", "null") or "null")
        if not explicit and self.recorded_python_path():
            return
        paths = explicit or default_python_path()
        self.con.execute(
            "INSERT INTO dbdl.settings (key, value) VALUES ('python_path', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (json.dumps(paths),))

    # Ordinary roles (dbdl_user) cannot read dbdl's tables: planning reads the registry through the
    # SECURITY DEFINER functions that the in-database code uses too.
    model_bytes_sql = "SELECT dbdl.model_bytes(?)"

    def pin_model(self, name: str, version: int | None) -> Any:
        from dbdl_udf.catalog import Pinned
        from dbdl_udf.runtime import Signature

        ref = name if version is None else f"{name}@{version}"
        row = self.fetchone("SELECT name, version, sha256, signature FROM dbdl.resolve_model(?)", (ref,))
        return Pinned(row[0], int(row[1]), row[2], Signature.from_json(row[3]))

    # -- registry writes: dbdl's SECURITY DEFINER functions, never the tables ------------------
    # dbdl_admin has no INSERT/UPDATE/DELETE on the registry (migration 0007): the functions run
    # dbdl_udf.catalog's rules as the owner and compute sha256, signature and costs from the bytes.

    def store_version(self, name: str, prepared: Any, *, description: str | None, promote: bool) -> int:
        row = self.fetchone("SELECT dbdl.register_model(?, ?, ?, ?, ?, ?)",
                            (name, getattr(prepared, "original_bytes", None) or prepared.onnx_bytes, description,
                             bool(promote), prepared.source, prepared.torch_program))
        return int(row[0])

    def promote_version(self, name: str, version: int) -> None:
        self.execute("SELECT dbdl.promote_model(?, ?)", (name, int(version)))

    def rollback_version(self, name: str) -> int:
        return int(self.fetchone("SELECT dbdl.rollback_model(?)", (name,))[0])

    def drop_versions(self, name: str, version: int | None) -> int:
        return int(self.fetchone("SELECT dbdl.drop_model(?, ?)", (name, version))[0])

    def set_model_options(self, name: str, options: dict[str, Any]) -> dict[str, Any]:
        from dbdl_udf import catalog

        self.execute("CALL dbdl.set_model_options(?, ?)", (name, json.dumps(options)))
        return catalog.model_options(self, name)

    def clear_model_cache(self, name: str) -> None:
        self.execute("CALL dbdl.clear_cache(?)", (name,))

    def set_calibration(self, values: dict[str, float]) -> None:
        with self.transaction():
            for key, value in values.items():
                self.execute("SELECT dbdl.set_calibration(?, ?)", (key, float(value)))

    def forget_dataset(self, name: str) -> None:
        self.execute("SELECT dbdl.forget_dataset(?)", (name,))

    def recorded_python_path(self) -> list[str] | None:
        row = self.fetchone("SELECT value FROM dbdl.settings WHERE key = 'python_path'")
        return json.loads(row[0]) if row else None

    def doctor(self) -> dict:
        try:
            return json.loads(self.con.execute("SELECT dbdl.doctor()").fetchone()[0])
        except psycopg.Error as exc:
            return {"error": str(exc).strip()}

    # -- tables ----------------------------------------------------------------------------

    def write_arrow(self, table: str, data: pa.Table, *, replace: bool = False) -> None:
        columns = []
        for field in data.schema:
            if pa.types.is_fixed_size_list(field.type) or pa.types.is_list(field.type):
                value = innermost(field.type)[0]
                element = "double precision" if value == pa.float64() else ("integer" if pa.types.is_integer(value)
                                                                            else "real")
                pg_type = f"{element}[]"
            else:
                pg_type = PG_TYPES.get(field.type)
                if pg_type is None:
                    raise DTypeMismatch(f"column {field.name!r} has type {field.type}, which dbdl cannot store in "
                                        f"PostgreSQL yet; convert it to numbers, text or a 2-D float array")
            columns.append(exp.ColumnDef(this=exp.to_identifier(field.name, quoted=True),
                                         kind=exp.DataType.build(pg_type, dialect="postgres")))
        target = exp.to_table(table)
        create = exp.Create(this=exp.Schema(this=target, expressions=columns), kind="TABLE")
        with self.transaction():
            if replace:
                self.con.execute(exp.Drop(tables=[target.copy()], kind="TABLE", exists=True).sql(dialect="postgres"))
            self.con.execute(create.sql(dialect="postgres"))
            copy = f"COPY {target.sql(dialect='postgres')} FROM STDIN (FORMAT BINARY)"
            with self.con.cursor().copy(copy) as sink:
                sink.write(binary_copy(data))
            # statistics now, so that the planner's row estimates (EXPLAIN) are right at once
            self.con.execute(f"ANALYZE {target.sql(dialect='postgres')}")

    def score_into_temp_table(self, source_sql: str, score: Any, kind: str, table: str, *, signature: Any = None,
                              keyed: bool = False, batch_rows: int = 65536) -> None:
        """DL-centric: binary COPY out, ``score`` in batches, binary COPY of the predictions back in.

        The source returns the features — ``dbdl_f``, then ``dbdl_f1``, ``dbdl_f2`` … for a call
        with several feature arguments — and, ``keyed``, first a row identity ``dbdl_k``; without
        one the features themselves are the key. Each batch is decoded into runtime ``Column``s
        (in their own SQL types: bigint[] stays int64, bytea is float32 or uint8 by length) and
        ``score(columns)`` returns the predictions of the rows valid in all of them."""
        from dbdl_udf.postgres import decode_column
        from dbdl_udf.runtime import Column, valid_rows

        text = kind == "text"  # predict() of class names
        out_type = _RESULT_TYPES[kind]
        try:
            with self.transaction():
                described = self.con.execute(f"SELECT * FROM ({source_sql}) AS s LIMIT 0").description
                names = [d.name for d in described]
                oids = [d.type_code for d in described]
                first = 1 if keyed else 0
                keys = names[:1] if keyed else names
                if not all(re.fullmatch(r"dbdl_\w+", k) for k in names):
                    raise QueryError(f"DL-centric source columns must be dbdl_k / dbdl_f…, got {names}")
                key_sql = ", ".join(f"s.{k}" for k in keys)
                self.con.execute(f"CREATE TEMP TABLE {table} AS SELECT {key_sql}, NULL::{out_type} AS dbdl_prediction "
                                 f"FROM ({source_sql}) AS s WITH NO DATA")
                with self.con.cursor().copy(f"COPY ({source_sql}) TO STDOUT (FORMAT BINARY)") as out:
                    payload = b"".join(bytes(chunk) for chunk in out)
                n_features = len(names) - first
                fixed = (fixed_float4_rows(payload, key_len=6 if keyed else None)
                         if n_features == 1 and oids[first] == REAL_ARRAY else None)
                if fixed is not None:  # every row a real[] of one length without NULLs: all numpy
                    keys_raw, matrix = fixed
                    chunks = []
                    for i in range(0, len(keys_raw), batch_rows):
                        part = matrix[i:i + batch_rows]
                        y = score([Column.from_matrix(part)])
                        if text:
                            chunks.append(prediction_fields([(bytes(k),) for k in keys_raw[i:i + batch_rows]],
                                                             np.ones(len(part), dtype=bool), y, "text"))
                        else:
                            chunks.append(prediction_rows_fixed(keys_raw[i:i + batch_rows], y, kind))
                else:
                    rows = split_binary_copy(payload, len(names))
                    chunks = []
                    for start in range(0, len(rows), batch_rows):
                        batch = rows[start:start + batch_rows]
                        columns = []
                        for j in range(first, len(names)):
                            k = j - first
                            width = None
                            if signature is not None:
                                width = (signature.n_features if n_features == 1 or k >= len(signature.inputs)
                                         else signature.inputs[k].per_row)
                            columns.append(decode_column(oids[j], [r[j] for r in batch], width,
                                                         what="features" if n_features == 1 else f"argument {k + 1}",
                                                         legacy_bytea=signature is None))
                        valid = valid_rows(columns)
                        y = score(columns) if valid.any() else None
                        chunks.append(prediction_fields([r[:1] if keyed else r for r in batch], valid, y,
                                                      "text" if text else kind))
                with self.con.cursor().copy(f"COPY {table} FROM STDIN (FORMAT BINARY)") as sink:
                    sink.write(HEADER)
                    for chunk in chunks:
                        sink.write(chunk)
                    sink.write(b"\xff\xff")
        except psycopg.Error as exc:
            raise self._translate(exc) from exc

    # -- result cache hooks (planner/cachejoin.py) -------------------------------------------

    def cache_key(self, model: ResolvedModel, features: exp.Expression) -> exp.Expression:
        return exp.Dot.build([exp.to_identifier("dbdl"), exp.Anonymous(this="cache_key", expressions=[features])])

    def argmax_sql(self, values: str) -> str:
        return f"dbdl.argmax({values})"

    def analyze(self, table: str, columns: Sequence[str] = ()) -> None:
        # temporary tables get no statistics from autovacuum, and without them the planner joins
        # 10^6 keys by nested index look-ups (7x slower than the hash join it picks with them);
        # a role that does not own the table only gets a warning, never an error
        try:
            named = f" ({', '.join(exp.to_identifier(c, quoted=True).sql(dialect='postgres') for c in columns)})" \
                if columns else ""
            self.con.execute(f"ANALYZE {exp.to_table(table).sql(dialect='postgres')}{named}")
        except psycopg.Error as exc:
            raise self._translate(exc) from exc

    def execute_count(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            cur = self.con.execute(*self._pg(sql, params))
        except psycopg.Error as exc:
            raise self._translate(exc) from exc
        return max(cur.rowcount, 0)

    def is_base_table(self, name: str) -> bool:
        """A plain table (not a view, CTE or partitioned table): ctid identifies its rows."""
        row = self.fetchone("SELECT relkind FROM pg_class WHERE oid = to_regclass(?)", (name,))
        return bool(row) and row[0] == "r"

    def table_exists(self, schema: str, table: str) -> bool:
        row = self.fetchone("SELECT c.relkind, c.relrowsecurity FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                            "ON n.oid OPERATOR(pg_catalog.=) c.relnamespace WHERE n.nspname OPERATOR(pg_catalog.=) ? "
                            "AND c.relname OPERATOR(pg_catalog.=) ?", (schema, table))
        if row is None:
            return False
        # dbdl_data's tables belong to whichever dbdl_admin made them, and every dbdl_user's plan
        # reads them: a view or a row-security policy there would run its owner's expressions as
        # the reader, so only a plain table without row security is used
        if schema == self.data_schema and (row[0] != "r" or row[1]):
            raise QueryError(f"{schema}.{table} is not a plain table without row security, so dbdl will not read it; "
                             f"an administrator should DROP it (dbdl creates it again on the next query)")
        return True

    def can_create_tables(self, schema: str) -> bool:
        row = self.fetchone("SELECT has_schema_privilege(current_user, ?, 'CREATE')", (schema,))
        return bool(row and row[0])

    def share_table(self, table: str) -> None:
        self.execute(f"GRANT SELECT ON {exp.to_table(table).sql(dialect='postgres')} TO dbdl_user")

    def estimate_rows(self, sql: str) -> int:
        """The planner's estimate (statistics, no scan)."""
        try:
            plan = self.con.execute(f"EXPLAIN (FORMAT JSON) {sql}").fetchone()[0]
        except psycopg.Error as exc:
            raise self._translate(exc) from exc
        return int(plan[0]["Plan"]["Plan Rows"])

    def drop_temp_table(self, table: str) -> None:
        self.con.execute(f"DROP TABLE IF EXISTS {table}")

    # -- planning hooks --------------------------------------------------------------------

    def own_sql(self, sql: Any) -> Any:
        # the SQL dbdl adds runs with the caller's rights and through the caller's search_path, on
        # which anyone with CREATE on a schema may have put a better-matching public.exp(real) or
        # a public.=(real[], real[]): every built-in it names carries its schema
        import sqlglot

        if isinstance(sql, str):
            return qualify_builtins(sqlglot.parse_one(sql, read=self.dialect)).sql(dialect=self.dialect)
        return qualify_builtins(sql)

    def equals(self, left: exp.Expression, right: exp.Expression) -> exp.Expression:
        # array = array resolves to the polymorphic pg_catalog.array_eq, which an exact
        # public.=(real[], real[]) would beat even with pg_catalog first: name the operator
        return exp.Operator(this=left, operator="pg_catalog.=", expression=right)

    def predict_call(self, kind: str, model: ResolvedModel, features: exp.Expression) -> exp.Expression:
        # the functions live in the server; planning pins the version in the reference. Always
        # qualified: an unqualified name would be looked up on the caller's search_path, where a
        # function of the same name in another schema could be a better match
        if kind == "scalar" and model.output_spec.is_text:
            kind = "text"  # class names: dbdl.predict returns real, dbdl.predict_text text
        name = KINDS[kind].function
        call = exp.Anonymous(this=name, expressions=[exp.Literal.string(model.ref), features])
        return exp.Dot(this=exp.to_identifier(self.function_schema), expression=call)

    def sample_value(self, sql: str):
        try:
            with self.con.transaction():  # a savepoint inside the caller's transaction
                row = self.con.execute(sql).fetchone()
        except psycopg.Error:
            return None
        return row[0] if row else None

    def argument_types(self, args: Sequence[exp.Expression]) -> list[int] | None:
        """The type oids of a predict call's feature arguments (planned, not run: LIMIT 0), or
        None where they cannot be known before the statement runs (bound parameters)."""
        probe = argument_probe(args)
        if probe is None:
            return None
        probe.set("limit", exp.Limit(expression=exp.Literal.number(0)))
        try:
            with self.con.transaction():  # a savepoint inside the caller's transaction
                cur = self.con.execute(probe.sql(dialect=self.dialect))
                return [d.type_code for d in cur.description]
        except psycopg.Error:
            return None

    def argument_forms(self, args: Sequence[exp.Expression]) -> list[tuple[str, str]] | None:
        oids = self.argument_types(args)
        if oids is None:
            return None
        # the type's category: N numeric, A array, S string, B boolean (bytea is a user type, U)
        rows = {r[0]: (r[1], r[2]) for r in self.fetchall(
            "SELECT CAST(oid AS bigint), CAST(typcategory AS text), pg_catalog.format_type(oid, NULL) "
            "FROM pg_catalog.pg_type WHERE CAST(oid AS bigint) OPERATOR(pg_catalog.=) ANY(CAST(? AS bigint[]))",
            ([int(o) for o in oids],))}
        forms = []
        for oid in oids:
            category, name = rows.get(oid, ("X", str(oid)))
            # 705 is the type of a literal NULL ("unknown"): no number, so a NULL prediction
            forms.append(("bytes" if oid == 17 else "number" if oid == 705 else {
                "N": "number", "A": "array", "S": "text", "B": "boolean"}.get(category, "other"), name))
        return forms

    def relation_feature_problem(self, model: ResolvedModel, args: Sequence[exp.Expression]) -> str | None:
        # relation-centric SQL unnests a numeric array; a bytea (float32 or uint8 bytes) or a
        # scalar column is not one (booleans are left to the SQL's own DTypeMismatch)
        if len(args) != 1:
            return None
        types = self.argument_types(args)
        if not types:
            return None
        if types[0] == 17:
            return "relation-centric SQL takes a numeric array; this argument is bytea bytes"
        if types[0] in (20, 21, 23, 700, 701, 1700):
            return "relation-centric SQL takes a numeric array; this argument is one number per row"
        return None

    def predict_call_args(self, kind: str, model: ResolvedModel, args: Sequence[exp.Expression]) -> exp.Expression:
        """One feature argument: ``dbdl.predict('m@1', feats)``, an exact overload per array type
        (the bytes of any array or a bytea go to the definer function). Several (``predict('m', a,
        b)``, one per model input in input order): ``dbdl.predict('m@1', ROW(a, b))``, whose
        record_send() bytes carry each argument in its own type — PostgreSQL's polymorphic
        families cannot type more than two different arguments of one function (migration 0010_inputs)."""
        if len(args) == 1:
            return self.predict_call(kind, model, args[0].copy())
        row = exp.Anonymous(this="ROW", expressions=[a.copy() for a in args])
        return self.predict_call(kind, model, row)

    def unpinned_call_args(self, kind: str, call: exp.Anonymous) -> exp.Expression | None:
        """A call whose model is a column: the server resolves it row by row; several feature
        arguments go as one ROW(a, b, …), as for a pinned model."""
        model_arg, *args = call.expressions
        if len(args) < 2:
            return None
        name = KINDS[kind].function
        row = exp.Anonymous(this="ROW", expressions=[a.copy() for a in args])
        return exp.Dot(this=exp.to_identifier(self.function_schema),
                       expression=exp.Anonymous(this=name, expressions=[model_arg.copy(), row]))

    # -- training data ---------------------------------------------------------------------

    def train_export(self, spec: Any, progress: Any = None) -> Any:
        from .export import train_export

        return train_export(self, spec)

    @classmethod
    def open_range_reader(cls, url: str, owner: Any = None) -> Any:
        from .reader import PostgresRangeReader

        return PostgresRangeReader(url, owner)

    def run_query(self, sql: str, params: Sequence[Any] = (), models: Sequence[ResolvedModel] = ()) -> pa.Table | None:
        sql = qualify_dbdl_calls(sql)
        try:
            cur = self.con.execute(*self._pg(sql, params))
            if cur.description is None:
                return None
            return _rows_to_arrow(cur)
        except psycopg.Error as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: Exception) -> Error:
        diag = getattr(exc, "diag", None)
        primary = (diag.message_primary if diag is not None else None) or str(exc)
        found = _DBDL_ERROR.search(primary)
        # a dbdl error raised in the server: the SQLSTATE its class declares names the class (the
        # DB… codes are dbdl's alone; a standard code only with the "dbdl.<Class>: " prefix)
        sqlstate = getattr(exc, "sqlstate", None) or ""
        cls = error_for_sqlstate(sqlstate) if sqlstate.startswith("DB") else None
        if found or cls is not None:
            cls = cls or error_class(found[1])
            return cls(found[2].strip() if found else primary)
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            return PermissionDenied(
                f"{primary}; ask an administrator for GRANT dbdl_user TO <role> (predict, read the catalog) or "
                "GRANT dbdl_admin TO <role> (also register and drop models)")
        if isinstance(exc, psycopg.errors.CannotCoerce) and "boolean" in primary:
            # relation-centric SQL casts the features to numbers: booleans are refused as the
            # server's predict functions refuse them
            return DTypeMismatch(
                f"{primary}: predict's features must be numbers, not booleans; cast them, e.g. col::int[]::real[]")
        if isinstance(exc, psycopg.errors.SyntaxError):
            return QueryError(f"the query does not parse: {primary}")
        if isinstance(exc, (psycopg.errors.AmbiguousFunction, psycopg.errors.UndefinedFunction)) and re.match(
                r"function (dbdl\.)?predict(_array|_class)?\(", primary):
            args = primary.split("(", 1)[1].rsplit(")", 1)[0].count(",") if "(" in primary else 1
            if args >= 3:  # three or more feature arguments of different types
                return DTypeMismatch(
                    f"{primary}: several feature columns of different types go in one ROW, one field per model "
                    "input in input order: dbdl.predict('m', ROW(a, b, c)); dbdl.predict('m', a, b) takes any two, "
                    "and three or four of one type")
            return DTypeMismatch(
                f"{primary}: predict's features must be numbers, as a typed numeric array (real[], "
                "double precision[], integer[], bigint[], boolean[]) or bytea (float32 or uint8); add a cast, "
                "e.g. '{1,2,3}'::real[]")
        return QueryError(str(exc).strip())


def _rows_to_arrow(cur) -> pa.Table:
    names = [d.name for d in cur.description]
    rows = cur.fetchall()
    columns = list(zip(*rows)) if rows else [[] for _ in names]
    arrays = []
    for values in columns:
        try:
            arrays.append(pa.array(list(values)))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays.append(pa.array([None if v is None else str(v) for v in values]))
    return pa.table(dict(zip(_unique(names), arrays)))


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(n if k == 0 else f"{n}_{k}")
    return out

