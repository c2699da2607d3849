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
import struct
import sysconfig
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import sqlglot.expressions as exp

from ..errors import ConnectionError, DTypeMismatch, Error, PermissionDenied, QueryError, error_class
from ..planner.dialects import DbdlPostgres
from ..registry import ResolvedModel
from ..resources import udf_dir
from .base import Backend, argument_probe

try:
    import psycopg
except ImportError as _exc:  # pragma: no cover - reported by Backend.open
    raise ImportError("psycopg (pip install 'dbdl[postgres]')") from _exc

_SQL_NAMES = {"scalar": "predict", "array": "predict_array", "class": "predict_class"}
_DBDL_ERROR = re.compile(r"dbdl\.(\w+): (.*)", re.S)
_LOCK_KEY = 0x6462646C  # 'dbdl'

# Arrow -> PostgreSQL column types for create_table / write_arrow
_PG_TYPES = {
    pa.int8(): "smallint", pa.int16(): "smallint", pa.int32(): "integer", pa.int64(): "bigint",
    pa.uint8(): "smallint", pa.uint16(): "integer", pa.uint32(): "bigint",
    pa.float32(): "real", pa.float64(): "double precision", pa.bool_(): "boolean",
    pa.string(): "text", pa.large_string(): "text", pa.binary(): "bytea", pa.large_binary(): "bytea",
}


_DBDL_ROUTINES = {"predict", "predict_array", "predict_class", "predict_text", "predict_into", "train_export"}
_LEADING_CALL = re.compile(r"\s*CALL\s+(predict_into|train_export)\s*\(", re.I)
_UNQUALIFIED_CALL = re.compile(r"(?<![.\w\"])(predict(_array|_class|_text|_into)?|train_export)\s*\(", re.I)


def qualify_dbdl_calls(sql: str) -> str:
    """``dbdl.`` before each unqualified call of dbdl's functions and procedures, for statements
    db.sql sends as written (text sqlglot cannot parse, ``CALL predict_into(...)``): since 0007
    they live in schema dbdl, and the qualified name is the one no other schema can answer. Only
    the fixed prefix is inserted, at token positions; string literals and quoted names are left."""
    if not _UNQUALIFIED_CALL.search(sql):
        return sql
    # sqlglot's tokenizer keeps what follows CALL as one opaque token: the procedure name comes first
    call = _LEADING_CALL.match(sql)
    if call:
        return sql[:call.start(1)] + "dbdl." + sql[call.start(1):]
    from sqlglot.dialects.dialect import Dialect
    from sqlglot.tokens import TokenType

    try:
        tokens = Dialect.get_or_raise(DbdlPostgres).tokenize(sql)
    except Exception:  # noqa: BLE001 - text that does not even tokenize goes as written
        return sql
    out, last = [], 0
    for i, token in enumerate(tokens):
        if (token.token_type == TokenType.VAR and token.text.lower() in _DBDL_ROUTINES
                and i + 1 < len(tokens) and tokens[i + 1].token_type == TokenType.L_PAREN
                and (i == 0 or tokens[i - 1].token_type != TokenType.DOT)):
            out += [sql[last:token.start], "dbdl."]
            last = token.start
    return "".join(out) + sql[last:]


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
    paramstyle = "format"
    has_procedures = True
    # dbdl_admin creates relation-centric weight tables and dataset tables in dbdl_data; schema
    # dbdl, on every definer function's search_path, is the owner's alone (docs/security.md)
    data_schema = "dbdl_data"
    function_schema = "dbdl"
    #: DL-centric execution keys predictions of one-table queries by this column
    row_identity = "ctid"

    def __init__(self, url: str, *, python_path: Sequence[str] | None = None, **_: Any) -> None:
        super().__init__(url)
        self.python_path = list(python_path) if python_path else None
        try:
            self.con = psycopg.connect(url, autocommit=True)
        except psycopg.Error as exc:
            raise ConnectionError(f"cannot connect to {url!r}: {str(exc).strip()}") from exc
        self._in_transaction = False

    # -- primitives ------------------------------------------------------------------------

    @staticmethod
    def _pg(sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        try:
            self.con.execute(self._pg(sql), tuple(params))
        except psycopg.Error as exc:
            raise self.translate(exc) from exc

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        try:
            return self.con.execute(self._pg(sql), tuple(params)).fetchall()
        except psycopg.Error as exc:
            raise self.translate(exc) from exc

    def fetch_arrow(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        try:
            return _rows_to_arrow(self.con.execute(self._pg(sql), tuple(params)))
        except psycopg.Error as exc:
            raise self.translate(exc) from exc

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
                value = _innermost(field.type)[0]
                element = "double precision" if value == pa.float64() else ("integer" if pa.types.is_integer(value)
                                                                            else "real")
                pg_type = f"{element}[]"
            else:
                pg_type = _PG_TYPES.get(field.type)
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
                sink.write(_binary_copy(data))
            # statistics now, so that the planner's row estimates (EXPLAIN) are right at once
            self.con.execute(f"ANALYZE {target.sql(dialect='postgres')}")

    def score_into_temp_table(self, source_sql: str, score: Any, kind: str, table: str, keyed: bool = False) -> None:
        """DL-centric: binary COPY out, ``score`` in batches, binary COPY of the predictions back in.

        The source returns the features — ``dbdl_f``, then ``dbdl_f1``, ``dbdl_f2`` … for a call
        with several feature arguments — and, ``keyed``, first a row identity ``dbdl_k``; without
        one the features themselves are the key. Each batch is decoded into runtime ``Column``s
        (in their own SQL types: bigint[] stays int64, bytea is float32 or uint8 by length) and
        ``score(columns)`` returns the predictions of the rows valid in all of them."""
        from dbdl_udf.postgres import decode_column
        from dbdl_udf.runtime import Column, valid_rows

        from ..strategies.dl import BATCH_ROWS

        text = bool(getattr(score, "text", False))  # predict() of class names (strategies.dl.scorer)
        out_type = "text" if text else {"scalar": "real", "array": "real[]", "class": "bigint"}[kind]
        signature = _score_signature(score)
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
                fixed = (_fixed_float4_rows(payload, key_len=6 if keyed else None)
                         if n_features == 1 and oids[first] == _REAL_ARRAY else None)
                if fixed is not None:  # every row a real[] of one length without NULLs: all numpy
                    keys_raw, matrix = fixed
                    chunks = []
                    for i in range(0, len(keys_raw), BATCH_ROWS):
                        part = matrix[i:i + BATCH_ROWS]
                        y = score([Column.from_matrix(part)])
                        if text:
                            chunks.append(_prediction_fields([(bytes(k),) for k in keys_raw[i:i + BATCH_ROWS]],
                                                             np.ones(len(part), dtype=bool), y, "text"))
                        else:
                            chunks.append(_prediction_rows_fixed(keys_raw[i:i + BATCH_ROWS], y, kind))
                else:
                    rows = _split_binary_copy(payload, len(names))
                    chunks = []
                    for start in range(0, len(rows), BATCH_ROWS):
                        batch = rows[start:start + BATCH_ROWS]
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
                        chunks.append(_prediction_fields([r[:1] if keyed else r for r in batch], valid, y,
                                                      "text" if text else kind))
                with self.con.cursor().copy(f"COPY {table} FROM STDIN (FORMAT BINARY)") as sink:
                    sink.write(_HEADER)
                    for chunk in chunks:
                        sink.write(chunk)
                    sink.write(b"\xff\xff")
        except psycopg.Error as exc:
            raise self.translate(exc) from exc

    # -- result cache hooks (see dbdl.cache) -------------------------------------------------

    cache_identity = "ctid"
    #: roles that do not trust each other share the cache: only dbdl.cache_fill (the server's own
    #: scoring, keyed by the server) writes it
    cache_filled_in_server = True

    def cache_key(self, model: ResolvedModel, features: exp.Expression) -> exp.Expression:
        return exp.Dot.build([exp.to_identifier("dbdl"), exp.Anonymous(this="cache_key", expressions=[features])])

    def argmax_sql(self, values: str) -> str:
        return f"dbdl.argmax({values})"

    def analyze(self, table: str) -> None:
        # temporary tables get no statistics from autovacuum, and without them the planner joins
        # 10^6 keys by nested index look-ups (7x slower than the hash join it picks with them);
        # a role that does not own the table only gets a warning, never an error
        try:
            self.con.execute(f"ANALYZE {exp.to_table(table).sql(dialect='postgres')}")
        except psycopg.Error as exc:
            raise self.translate(exc) from exc

    def execute_count(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            cur = self.con.execute(self._pg(sql), tuple(params))
        except psycopg.Error as exc:
            raise self.translate(exc) from exc
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
            raise self.translate(exc) from exc
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
        name = _SQL_NAMES[kind]
        if kind == "scalar" and model.output_spec.is_text:
            name = "predict_text"  # class names: dbdl.predict returns real, dbdl.predict_text text
        call = exp.Anonymous(this=name, expressions=[exp.Literal.string(model.ref), features])
        return exp.Dot(this=exp.to_identifier(self.function_schema), expression=call)

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
        name = _SQL_NAMES[kind]
        row = exp.Anonymous(this="ROW", expressions=[a.copy() for a in args])
        return exp.Dot(this=exp.to_identifier(self.function_schema),
                       expression=exp.Anonymous(this=name, expressions=[model_arg.copy(), row]))

    def run_query(self, sql: str, params: Sequence[Any] = (), models: Sequence[ResolvedModel] = ()) -> pa.Table | None:
        sql = qualify_dbdl_calls(sql)
        try:
            if params:
                sql = qmark_to_format(sql)
            cur = self.con.execute(sql, tuple(params) if params else None)
            if cur.description is None:
                return None
            return _rows_to_arrow(cur)
        except psycopg.Error as exc:
            raise self.translate(exc) from exc

    def translate(self, exc: Exception) -> Error:
        diag = getattr(exc, "diag", None)
        primary = (diag.message_primary if diag is not None else None) or str(exc)
        found = _DBDL_ERROR.search(primary)
        if found:
            return error_class(found[1])(found[2].strip())
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


# -- built-ins named with their schema (PostgreSQL's own rule for code run as someone else) ----------

_OPERATORS = {exp.Add: "+", exp.Sub: "-", exp.Mul: "*", exp.Div: "/", exp.Mod: "%", exp.EQ: "=", exp.NEQ: "<>",
              exp.LT: "<", exp.LTE: "<=", exp.GT: ">", exp.GTE: ">=", exp.DPipe: "||"}
#: functions rendered as a plain call, safe to prefix with pg_catalog.
_CALLS = (exp.Sum, exp.Max, exp.Min, exp.Count, exp.Avg, exp.Exp, exp.Ln, exp.Sqrt, exp.Abs, exp.Pow, exp.RowNumber,
          exp.ArrayAgg, exp.Floor, exp.Ceil)
#: built-ins dbdl's SQL calls by name (sqlglot keeps them as anonymous calls)
_NAMED = frozenset({"cardinality", "array_position", "array_send", "sha256", "unnest", "generate_subscripts",
                    "array_length", "format_type", "to_regclass"})
_DOUBLE = "DOUBLE PRECISION"


def _operand(e: exp.Expression) -> exp.Expression:
    return e if isinstance(e, (exp.Column, exp.Literal, exp.Paren, exp.Cast, exp.Dot, exp.Null)) else exp.Paren(this=e)


def _minus_one() -> exp.Expression:
    return exp.Cast(this=exp.Literal.string("-1"), to=exp.DataType.build(_DOUBLE))


def qualify_builtins(tree: exp.Expression) -> exp.Expression:
    """Name every built-in function, operator and non-keyword type of ``tree`` with pg_catalog,
    in place: ``a * b`` becomes ``a OPERATOR(pg_catalog.*) b``, ``sum(x)`` ``pg_catalog.sum(x)``,
    ``x IN (SELECT …)`` ``x OPERATOR(pg_catalog.=) ANY (SELECT …)``. Subtrees marked
    ``meta["dbdl_user"]`` (the user's own query, to be resolved as the user wrote it) are skipped."""
    nodes = list(tree.walk(bfs=False, prune=lambda n: bool(n.meta.get("dbdl_user"))))
    for node in reversed(nodes):  # children first: a replaced child is already in its parent
        if node.meta.get("dbdl_user"):
            continue
        operator = _OPERATORS.get(type(node))
        if operator is not None:
            node.replace(exp.Paren(this=exp.Operator(this=_operand(node.this), operator=f"pg_catalog.{operator}",
                                                     expression=_operand(node.expression))))
        elif isinstance(node, exp.Neg):
            if isinstance(node.this, exp.Literal) and not node.this.is_string:
                node.replace(exp.Cast(this=exp.Literal.string("-" + node.this.this), to=exp.DataType.build(_DOUBLE)))
            else:
                node.replace(exp.Paren(this=exp.Operator(this=_operand(node.this), operator="pg_catalog.*",
                                                         expression=_minus_one())))
        elif isinstance(node, exp.In) and node.args.get("query") is not None:
            node.replace(exp.Operator(this=_operand(node.this), operator="pg_catalog.=",
                                      expression=exp.Any(this=node.args["query"])))
        elif isinstance(node, _CALLS) and not isinstance(node.parent, exp.Dot):
            node.replace(exp.Dot(this=exp.to_identifier("pg_catalog"), expression=node.copy()))
        elif isinstance(node, exp.Anonymous) and isinstance(node.this, str) and node.this.lower() in _NAMED:
            node.set("this", f"pg_catalog.{node.this}")
        elif isinstance(node, exp.DataType) and node.this in (exp.DataType.Type.TEXT, exp.DataType.Type.VARBINARY):
            node.replace(exp.DataType.build(f"pg_catalog.{'text' if node.this == exp.DataType.Type.TEXT else 'bytea'}",
                                            udt=True))
    return tree


def qmark_to_format(sql: str) -> str:
    """``?`` placeholders to psycopg's ``%s``, with every other ``%`` doubled (found by sqlglot's
    tokenizer, so a ``?`` or ``%`` inside a string literal or comment is left as text)."""
    from sqlglot.tokens import TokenType

    out, position = [], 0
    for token in DbdlPostgres().tokenize(sql):
        out.append(sql[position:token.start].replace("%", "%%"))
        text = sql[token.start:token.end + 1]
        if token.token_type == TokenType.COMMAND:
            # sqlglot keeps what follows a command (CALL) as one raw string: its arguments are
            # tokens like any others, so convert them the same way
            rest = qmark_to_format("SELECT " + sql[token.end + 1:])
            return "".join(out) + text + rest[len("SELECT "):]
        out.append("%s" if token.token_type == TokenType.PLACEHOLDER and text == "?" else text.replace("%", "%%"))
        position = token.end + 1
    out.append(sql[position:].replace("%", "%%"))
    return "".join(out)


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


# -- binary COPY -----------------------------------------------------------------------------
# PostgreSQL's binary COPY format, built with numpy for whole columns at a time.

_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_SCALAR_DTYPES = {"smallint": ">i2", "integer": ">i4", "bigint": ">i8", "real": ">f4", "double precision": ">f8",
                  "boolean": "?"}
_ELEMENT_OIDS = {">f4": 700, ">f8": 701, ">i4": 23}


def _binary_copy(data: pa.Table) -> bytes:
    """The whole table as one binary COPY payload (NULLs supported, per field)."""
    fast = _binary_copy_fixed(data)
    if fast is not None:
        return fast
    n = data.num_rows
    fields: list[tuple[np.ndarray, np.ndarray]] = []  # (per-row bytes as an object array, null mask)
    for column, field in zip(data.columns, data.schema):
        col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        fields.append(_encode_column(col, field.type))
    parts = [_HEADER]
    count = struct.pack(">h", len(fields))
    encoded_rows = []
    for i in range(n):
        row = [count]
        for blobs, nulls in fields:
            if nulls[i]:
                row.append(b"\xff\xff\xff\xff")
            else:
                b = blobs[i]
                row.append(struct.pack(">i", len(b)) + b)
        encoded_rows.append(b"".join(row))
    parts.extend(encoded_rows)
    parts.append(b"\xff\xff")
    return b"".join(parts)


def _binary_copy_fixed(data: pa.Table) -> bytes | None:
    """Vectorized payload for tables of fixed-width columns without NULLs (numbers and float
    tensors): every row has the same layout, so the rows are one numpy structured array."""
    n = data.num_rows
    layout: list[tuple[str, Any]] = [("count", ">i2")]
    fill: list[tuple[str, np.ndarray, int | None]] = []
    for i, (column, field) in enumerate(zip(data.columns, data.schema)):
        col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        if col.null_count:
            return None
        if pa.types.is_fixed_size_list(field.type) and field.type.value_type in (pa.float32(), pa.float64()):
            width = field.type.list_size
            values = col.values.slice(col.offset * width, n * width)
            if values.null_count:
                return None
            flat = values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(n, width)
            item = np.dtype([("len", ">i4"), ("v", ">f4")])
            layout += [(f"l{i}", ">i4"), (f"h{i}", ">i4", (5,)), (f"a{i}", item, (width,))]
            fill.append((f"t{i}", flat, width))
        elif _PG_TYPES.get(field.type) in _SCALAR_DTYPES:
            dtype = _SCALAR_DTYPES[_PG_TYPES[field.type]]
            layout += [(f"l{i}", ">i4"), (f"v{i}", dtype)]
            fill.append((f"s{i}", col.to_numpy(zero_copy_only=False), None))
        else:
            return None
    rows = np.zeros(n, dtype=np.dtype(layout))
    rows["count"] = data.num_columns
    for i, (kind, values, width) in enumerate(fill):
        if width is None:
            rows[f"l{i}"] = np.dtype(rows.dtype[f"v{i}"]).itemsize
            rows[f"v{i}"] = values
        else:
            rows[f"l{i}"] = 20 + 8 * width
            rows[f"h{i}"] = (1, 0, 700, width, 1)
            rows[f"a{i}"]["len"] = 4
            rows[f"a{i}"]["v"] = values
    return _HEADER + rows.tobytes() + b"\xff\xff"


def _fixed_float4_rows(payload: bytes, key_len: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """(key field bytes, float32 features) when every row of a binary COPY is — after a key field
    of ``key_len`` bytes, if given — a 1-D real[] of one length without NULLs (without a key
    field, the array's own bytes are the key); None otherwise (the general parser takes over)."""
    start = 19 + struct.unpack_from(">i", payload, 15)[0]
    count = 1 if key_len is None else 2
    lead = 0 if key_len is None else 4 + key_len  # the key field: its length word and its bytes
    if len(payload) < start + 2 + lead + 6 or struct.unpack_from(">h", payload, start)[0] != count:
        return None
    length = struct.unpack_from(">i", payload, start + 2 + lead)[0]
    if length < 20:
        return None
    row = 2 + lead + 4 + length
    body = len(payload) - start - 2
    if body % row:
        return None
    n = body // row
    raw = np.frombuffer(payload, dtype=np.uint8, count=n * row, offset=start).reshape(n, row)
    counts = raw[:, :2].copy().view(">i2")[:, 0]
    lengths = raw[:, 2 + lead:6 + lead].copy().view(">i4")[:, 0]
    fields = raw[:, 6 + lead:]
    header = fields[:, :20].copy().view(">i4")  # ndim, has-null, element type, length, lower bound
    if not ((counts == count).all() and (lengths == length).all() and (header[:, 0] == 1).all()
            and (header[:, 1] == 0).all() and (header[:, 2] == 700).all()):
        return None
    if key_len is not None and not (raw[:, 2:6].copy().view(">i4")[:, 0] == key_len).all():
        return None
    width = int(header[0, 3])
    if length != 20 + 8 * width:
        return None
    values = fields[:, 20:].copy().view(np.dtype([("len", ">i4"), ("v", ">f4")]))["v"]
    keys = fields if key_len is None else raw[:, 6:6 + key_len]
    return keys, values.astype(np.float32)


def _prediction_rows_fixed(keys: np.ndarray, y: np.ndarray, kind: str) -> bytes:
    """Binary COPY rows (key, prediction) for fixed-size keys (raw field bytes) and predictions."""
    n, key_len = keys.shape
    if kind == "array":
        k = y.shape[1]
        pred = [("plen", ">i4"), ("phead", ">i4", (5,)), ("items", [("len", ">i4"), ("v", ">f4")], (k,))]
    else:
        pred = [("plen", ">i4"), ("p", ">f4" if kind == "scalar" else ">i8")]
    rows = np.zeros(n, dtype=np.dtype([("count", ">i2"), ("klen", ">i4"), ("key", np.uint8, (key_len,)), *pred]))
    rows["count"], rows["klen"], rows["key"] = 2, key_len, keys
    if kind == "array":
        rows["plen"] = 20 + 8 * y.shape[1]
        rows["phead"] = (1, 0, 700, y.shape[1], 1)
        rows["items"]["len"] = 4
        rows["items"]["v"] = y
    else:
        rows["plen"] = 4 if kind == "scalar" else 8
        rows["p"] = y
    return rows.tobytes()


def _split_binary_copy(payload: bytes, fields: int = 1) -> list[tuple[bytes | None, ...]]:
    """The fields of each row of a binary COPY payload."""
    view = memoryview(payload)
    pos = 11 + 4
    pos += 4 + struct.unpack_from(">i", view, pos)[0]  # header extension area
    out: list[tuple[bytes | None, ...]] = []
    while True:
        count = struct.unpack_from(">h", view, pos)[0]
        pos += 2
        if count == -1:
            return out
        row = []
        for _ in range(count):
            length = struct.unpack_from(">i", view, pos)[0]
            pos += 4
            if length < 0:
                row.append(None)
            else:
                row.append(bytes(view[pos:pos + length]))
                pos += length
        out.append(tuple(row))


def _array_width(blob: bytes | None) -> int:
    """Element count of a 1-D array_send() value."""
    if not blob or len(blob) < 20:
        return 0
    return struct.unpack_from(">i", blob, 12)[0]


def _prediction_fields(keys: list[tuple[bytes | None, ...]], valid: np.ndarray, y: np.ndarray | None, kind: str) -> bytes:
    """Binary COPY rows (key fields…, prediction), the key fields sent back exactly as they came out."""
    parts = []
    rows = iter(y if y is not None else ())
    for key, ok in zip(keys, valid):
        parts.append(struct.pack(">h", len(key) + 1))
        for field in key:
            parts.append(b"\xff\xff\xff\xff" if field is None else struct.pack(">i", len(field)) + field)
        if not ok:
            parts.append(b"\xff\xff\xff\xff")
            continue
        value = next(rows)
        if kind == "array":
            items = np.empty(len(value), dtype=[("len", ">i4"), ("v", ">f4")])
            items["len"], items["v"] = 4, value
            body = struct.pack(">iiiii", 1, 0, 700, len(value), 1) + items.tobytes()
        elif kind == "class":
            body = struct.pack(">q", int(value))
        elif kind == "text":
            body = str(value).encode()
        else:
            body = struct.pack(">f", float(value))
        parts.append(struct.pack(">i", len(body)) + body)
    return b"".join(parts)


_REAL_ARRAY = 1021


def _score_signature(score: Any):
    """The model signature a DL-centric scorer feeds (strategies.dl sets ``score.model``): the
    widths that tell a float32 bytea from a uint8 one. None for a scorer without it."""
    model = getattr(score, "model", None)
    return getattr(model, "signature", None) if model is not None else getattr(score, "signature", None)


def _innermost(arrow_type: pa.DataType) -> tuple[pa.DataType, list[int]]:
    """The element type under nested lists, and the sizes of the fixed-size levels (outer first)."""
    dims = []
    while pa.types.is_fixed_size_list(arrow_type) or pa.types.is_list(arrow_type):
        if pa.types.is_fixed_size_list(arrow_type):
            dims.append(arrow_type.list_size)
        arrow_type = arrow_type.value_type
    return arrow_type, dims


def _encode_nested(col: pa.Array, arrow_type: pa.DataType) -> list[bytes]:
    """Nested fixed-size lists (an image [3, 32, 32] per row) as multi-dimensional arrays
    (array_send's layout: ndim, NULL flag, element oid, (size, lower bound) per axis, elements)."""
    value_type, dims = _innermost(arrow_type)
    dtype = ">f8" if value_type == pa.float64() else (">i4" if pa.types.is_integer(value_type) else ">f4")
    width = int(np.prod(dims))
    values = col
    for _ in dims:
        values = values.flatten()
    if values.null_count:
        raise DTypeMismatch("a nested array column holds NULL elements; PostgreSQL stores them, but dbdl writes "
                            "nested arrays without NULLs — fill or drop those rows first")
    flat = values.to_numpy(zero_copy_only=False).reshape(len(col), width)
    header = struct.pack(f">iii{2 * len(dims)}i", len(dims), 0, _ELEMENT_OIDS[dtype],
                         *[x for d in dims for x in (d, 1)])
    items = np.empty((len(col), width), dtype=[("len", ">i4"), ("v", dtype)])
    items["len"] = np.dtype(dtype).itemsize
    items["v"] = flat
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    return [header + items[i].tobytes() if valid[i] else b"" for i in range(len(col))]


def _encode_column(col: pa.Array, arrow_type: pa.DataType) -> tuple[list[bytes], np.ndarray]:
    n = len(col)
    nulls = ~col.is_valid().to_numpy(zero_copy_only=False) if col.null_count else np.zeros(n, dtype=bool)
    if pa.types.is_fixed_size_list(arrow_type) and pa.types.is_fixed_size_list(arrow_type.value_type):
        return _encode_nested(col, arrow_type), nulls
    if pa.types.is_fixed_size_list(arrow_type) or pa.types.is_list(arrow_type):
        value_type = arrow_type.value_type
        dtype = ">f8" if value_type == pa.float64() else (">i4" if pa.types.is_integer(value_type) else ">f4")
        blobs = []
        for value in col.to_pylist():
            if value is None:
                blobs.append(b"")
                continue
            arr = np.asarray(value, dtype=object)
            has_null = any(v is None for v in value)
            header = struct.pack(">iiiii", 1, 1 if has_null else 0, _ELEMENT_OIDS[dtype], len(value), 1)
            body = bytearray()
            size = np.dtype(dtype).itemsize
            if not has_null:
                items = np.empty(len(value), dtype=[("len", ">i4"), ("v", dtype)])
                items["len"] = size
                items["v"] = np.asarray(value, dtype=np.float64 if dtype != ">i4" else np.int64)
                body = items.tobytes()
            else:
                for v in arr:
                    body += b"\xff\xff\xff\xff" if v is None else struct.pack(">i", size) + np.array(v, dtype=dtype).tobytes()
            blobs.append(header + bytes(body))
        return blobs, nulls
    pg_type = _PG_TYPES.get(arrow_type)
    if pg_type in _SCALAR_DTYPES:
        values = col.fill_null(0).to_numpy(zero_copy_only=False).astype(_SCALAR_DTYPES[pg_type])
        size = values.dtype.itemsize
        raw = values.tobytes()  # numpy scalars are native-endian: slice the big-endian buffer instead
        return [raw[i * size:(i + 1) * size] for i in range(len(values))], nulls
    if pg_type == "text":
        return [b"" if v is None else v.encode() for v in col.to_pylist()], nulls
    if pg_type == "bytea":
        return [b"" if v is None else bytes(v) for v in col.to_pylist()], nulls
    raise DTypeMismatch(f"cannot store Arrow type {arrow_type} in PostgreSQL")
