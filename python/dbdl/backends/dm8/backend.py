"""DM8 (Dameng) through dmPython: a server that runs no Python.

Relation-centric SQL runs in DM8 itself; DL-centric reads the rows with dmPython's array fetch
(``cursor.arraysize`` rows per round trip), scores them in the client and writes the predictions
back into a global temporary table with ``executemany`` over a *list* of tuples (dmPython binds a
list as one array; an iterator row by row); UDF-centric is unavailable (:attr:`DM8Backend.udf_unavailable`).
Every statement sent is rendered through the DM8 dialect (``dialect.render``, cached). See
docs/dm8.md, which says what has run against a live server.

DM8 commits DDL implicitly (ini DDL_AUTO_COMMIT=1, its default): a CREATE or DROP inside a
transaction commits what came before it. dbdl's own writes are DML inside one transaction; where
it must create tables (train_export, write_arrow, DL-centric's temporary table) it drops what it
created when a later step fails.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import sqlglot
import sqlglot.expressions as exp
from sqlglot.tokens import TokenType

from ...errors import DTypeMismatch, Error, QueryError
from ...names import ResolvedModel
from ...query import argument_probe
from ..base import Backend
from . import driver
from .costs import COSTS
from .dialect import RELATIONAL, DbdlDM8, render, split_script

#: rows a round trip of the array fetch (cursor.arraysize, set before execute: dmPython sizes each
#: column's buffers for that many rows then) and at most per executemany list
FETCH_ROWS = 10_000
#: the array fetch of dbdl's own reads (a few catalog rows) and of a user's statement: dmPython
#: allocates arraysize × a column's declared width for each column (a VARCHAR(4000) column of a
#: 10,000-row fetch is 40 MB), before it knows how many rows there are
OWN_FETCH_ROWS = 256
QUERY_FETCH_ROWS = 2_000
#: about the bytes of text and binary values one executemany list binds
BIND_BYTES = 32 << 20
#: the most bytes of one VARCHAR/VARBINARY column dbdl creates; longer values go into CLOB/BLOB
#: (1,900 bytes fit a row on every DM8 page size, 4 KiB included)
INLINE_BYTES = 1900
#: dbdl's own names, which it writes in lower case, quoted or not: unquoted in what DM8 is sent
_OWN_NAME = re.compile(r"[a-z_][a-z0-9_]*")
#: statements of a migration file sent as written: DMSQL blocks, which sqlglot does not parse
_PLSQL = re.compile(r"^\s*(BEGIN|DECLARE|CREATE\s+(OR\s+REPLACE\s+)?(PROCEDURE|FUNCTION|TRIGGER|PACKAGE|TYPE|CLASS))\b",
                    re.I)

#: kind -> the SQL type of dbdl_prediction (predict REAL — the model's float32, as relation-centric
#: SQL's RELATIONAL.real and the other backends give it —, predict_class BIGINT, predict_array the
#: text of a JSON array, predict() of class names text)
PREDICTION_TYPES = {"scalar": "REAL", "class": "BIGINT", "array": "VARCHAR", "text": "VARCHAR"}

# the statements this module writes itself, rendered like all others (tests/test_dm8_driver.py
# renders and parses back each one)
SQL = {
    "table_exists": "SELECT count(*) FROM ALL_OBJECTS WHERE OWNER = ? AND OBJECT_NAME = ? "
                    "AND OBJECT_TYPE IN ('TABLE', 'VIEW')",
    "is_base_table": "SELECT count(*) FROM ALL_TABLES WHERE OWNER = ? AND TABLE_NAME = ?",
    "tables_in": "SELECT TABLE_NAME FROM ALL_TABLES WHERE OWNER = ?",
    "migration_lock": "SELECT id FROM dbdl.schema_migrations WHERE id = (SELECT min(id) FROM dbdl.schema_migrations) "
                      "FOR UPDATE",
    "describe": "SELECT * FROM ({query}) dbdl_s WHERE 1 = 0",
    "temp_table": "CREATE GLOBAL TEMPORARY TABLE {table} ({columns}) ON COMMIT PRESERVE ROWS",
    "insert": "INSERT INTO {table} ({columns}) VALUES ({marks})",
    "insert_select": "INSERT INTO {table} {query}",
    "drop": "DROP TABLE IF EXISTS {table}",
    "truncate": "TRUNCATE TABLE {table}",
    "share": "GRANT SELECT ON {table} TO DBDL_USER",
}


@functools.lru_cache(maxsize=4096)
def own(sql: str) -> str:
    """One of dbdl's own statements as DM8 takes it: quoted lower-case names of dbdl's
    (``quote_qualified``'s ``"dbdl_data"."ds_x_v1"``) unquoted — DM8 folds unquoted names to upper
    case and keeps quoted ones as written, so a quoted lower-case name would be another object —
    then rendered through the dialect."""
    return render(unquote_own_names(sql))


def unquote_own_names(sql: str) -> str:
    """``sql`` with every quoted identifier that is all lower-case letters, digits and ``_`` written
    unquoted (string literals and other names untouched)."""
    if '"' not in sql:
        return sql
    try:
        tokens = DbdlDM8().tokenize(sql)
    except sqlglot.errors.SqlglotError:
        return sql
    out, pos = [], 0
    for t in tokens:
        if t.token_type == TokenType.IDENTIFIER and _OWN_NAME.fullmatch(t.text) and sql[t.start] == '"':
            out.append(sql[pos:t.start])
            out.append(t.text)
            pos = t.end + 1
    out.append(sql[pos:])
    return "".join(out)


def script_statement(statement: str) -> str:
    """A migration file's statement as sent: a DMSQL block (BEGIN …, CREATE FUNCTION …) as written,
    anything else rendered — or as written where sqlglot cannot parse DM8's own DDL (a migration
    file is DM8's SQL already; tests/golden/dm8 parse what they can)."""
    if _PLSQL.match(statement):
        return statement
    try:
        return own(statement)
    except sqlglot.errors.SqlglotError:
        return statement


def _guarded(ddl: str) -> str:
    """A DMSQL block running ``ddl`` (a DMSQL text expression) that ignores only DM8's "object
    already exists" (-2124, as migrations/dm8 guard their CREATEs), in split_script's convention."""
    return ("DECLARE\n    already_exists EXCEPTION;\n    PRAGMA EXCEPTION_INIT(already_exists, -2124);\nBEGIN\n"
            f"    EXECUTE IMMEDIATE {ddl};\nEXCEPTION\n    WHEN already_exists THEN\n        NULL;\nEND;\n/")


class DM8Backend(Backend):
    name = "dm8"
    schemes = ("dm",)
    dialect = DbdlDM8
    relational = RELATIONAL
    cost_defaults = COSTS
    has_python_udfs = False
    udf_unavailable = ("DM8 runs no Python inside the database: its external functions are C or Java only, and off "
                       "unless the server sets ENABLE_EXTERNAL_CALL=1; use strategy='dl' or 'relation'")
    #: no stored procedures of dbdl's: db.sql carries out CALL train_export(...) in the client
    has_procedures = False
    paramstyle = "qmark"
    data_schema = "dbdl_data"
    #: DM8's ROWID pseudo-column names a base table's rows (DL-centric results are joined back by it)
    row_identity = "ROWID"
    #: no result cache on DM8: its keys are digests of a row's tensor bytes computed in SQL, which
    #: needs a byte-string hash over one array value — DM8 has no array values (a feature vector
    #: is one column per feature), so the key would be computed in the client only, and the cache
    #: would not be shared with other clients as it is on PostgreSQL
    cache_key_bytes = None
    #: DM8 has no array columns: a feature vector is one column per feature (predict('m', c0, c1, …))
    array_features = False
    #: schema dbdl and its record of migrations, each CREATE in a block that ignores only "already
    #: exists" (the guard of migrations/dm8; whether DM8 takes CREATE … IF NOT EXISTS is unconfirmed)
    migrations_table_script = "\n".join(_guarded(ddl) for ddl in (
        "'CREATE SCHEMA dbdl AUTHORIZATION ' || USER",
        "'CREATE TABLE dbdl.schema_migrations (id BIGINT PRIMARY KEY, name VARCHAR(200) NOT NULL, checksum "
        "VARCHAR(64) NOT NULL, applied_at TIMESTAMP DEFAULT SYSDATE NOT NULL)'"))

    def __init__(self, url: str, *, read_only: bool = False, **_: Any) -> None:
        super().__init__(url)
        self.read_only = bool(read_only)
        self.con = driver.connect(url, read_only=self.read_only)
        self._depth = 0  # transaction() nesting; 0: each statement commits on its own

    # -- primitives ------------------------------------------------------------------------

    def _cursor(self, rows: int | None = None) -> Any:
        cur = self.con.cursor()
        if rows:
            cur.arraysize = rows  # before execute: dmPython sizes the defined buffers then
        return cur

    def _run(self, sql: str, params: Sequence[Any] = (), *, rows: int | None = None) -> Any:
        """Execute one rendered statement; the cursor. Outside a transaction it commits (or rolls
        back) at once, as autocommit would."""
        cur = self._cursor(rows)
        try:
            cur.execute(sql, tuple(params)) if params else cur.execute(sql)
        except driver.dmPython.Error as exc:
            cur.close()
            self._statement_failed()
            raise driver.translate(exc) from exc
        return cur

    def _statement_failed(self) -> None:
        if self._depth == 0:
            with contextlib.suppress(driver.dmPython.Error):
                self.con.rollback()

    def _done(self) -> None:
        if self._depth == 0:
            try:
                self.con.commit()
            except driver.dmPython.Error as exc:
                raise driver.translate(exc) from exc

    @staticmethod
    def _own(sql: str) -> str:
        try:
            return own(sql)
        except sqlglot.errors.SqlglotError as exc:
            raise QueryError(f"dbdl cannot write this statement in DM8's SQL ({exc}): {sql[:200]}") from exc

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._run(self._own(sql), params).close()
        self._done()

    def execute_count(self, sql: str, params: Sequence[Any] = ()) -> int:
        cur = self._run(self._own(sql), params)
        count = max(int(cur.rowcount or 0), 0)
        cur.close()
        self._done()
        return count

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        cur = self._run(self._own(sql), params, rows=OWN_FETCH_ROWS)
        try:
            rows = [tuple(driver.plain(v) for v in r) for r in _fetch_all(cur)]
        except driver.dmPython.Error as exc:
            self._statement_failed()
            raise driver.translate(exc) from exc
        finally:
            cur.close()
        self._done()
        return rows

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        """``sql`` for each of ``rows``, sent as lists of up to FETCH_ROWS rows and about
        BIND_BYTES of text and bytes (``chunk_rows``): dmPython binds a list as one parameter
        array, while an iterator it binds and sends a row at a time (its Cursor.c). Each column's
        bind type is set first (``bind_types``, through setinputsizes): dmPython otherwise takes
        it from the first row, so a NULL there, or a short value before a long one, fails the rest."""
        statement = self._own(sql)
        types, rows = bind_types(rows)
        cur = self._cursor()
        step = chunk_rows(rows)
        try:
            for start in range(0, len(rows), step):
                if types:
                    cur.setinputsizes(*types)
                cur.executemany(statement, rows[start:start + step])
        except driver.dmPython.Error as exc:
            self._statement_failed()
            raise driver.translate(exc) from exc
        finally:
            cur.close()
        self._done()

    def executescript(self, sql: str) -> None:
        for statement in split_script(sql):
            self._run(script_statement(statement)).close()
        self._done()

    def begin(self) -> None:
        self._depth += 1  # DM8 opens a transaction with the first statement (autocommit is off)

    def commit(self) -> None:
        self._depth = max(0, self._depth - 1)
        if self._depth == 0:
            try:
                self.con.commit()
            except driver.dmPython.Error as exc:
                raise driver.translate(exc) from exc

    def rollback(self) -> None:
        self._depth = 0
        with contextlib.suppress(driver.dmPython.Error):
            self.con.rollback()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.con.rollback()
        with contextlib.suppress(Exception):
            self.con.close()

    @contextlib.contextmanager
    def migration_lock(self) -> Iterator[None]:
        """Another connection holds the row of dbdl.schema_migrations's first migration FOR UPDATE
        while migrations run: a second `dbdl migrate` waits on it. A table lock would not do — this
        connection's DDL commits, and a LOCK TABLE held here would end with the first CREATE, while
        one held on the other connection would block this one's INSERT of what it applied. A
        database without any applied migration has no such row: its first two migrations may race
        (each statement of a DM8 migration is guarded, so the loser fails and a rerun completes)."""
        if not self.table_exists("dbdl", "schema_migrations"):
            yield
            return
        holder = driver.connect(self.url)
        try:
            cur = holder.cursor()
            cur.execute(own(SQL["migration_lock"]))
            cur.fetchall()
            yield
        except driver.dmPython.Error as exc:
            raise driver.translate(exc) from exc
        finally:
            with contextlib.suppress(Exception):
                holder.rollback()
            with contextlib.suppress(Exception):
                holder.close()

    # -- catalog views: identifiers as DM8 stores them (unquoted names are upper case) ----------

    def table_exists(self, schema: str, table: str) -> bool:
        row = self.fetchone(SQL["table_exists"], (_stored(schema), _stored(table)))
        return bool(row and row[0])

    def is_base_table(self, name: str) -> bool:
        """A plain table (not a view, CTE or temporary table of ours): ROWID identifies its rows."""
        try:
            target = exp.to_table(name, dialect=self.dialect)
        except sqlglot.errors.SqlglotError:
            return False
        if not target.name or target.catalog:
            return False
        schema = target.db or self.current_schema()
        if not schema:
            return False
        table = target.args["this"]
        stored = table.name if table.quoted else table.name.upper()
        db = target.args.get("db")
        owner = schema if db is None else (db.name if db.quoted else db.name.upper())
        try:
            row = self.fetchone(SQL["is_base_table"], (owner, stored))
        except Error:
            return False
        return bool(row and row[0])

    def current_schema(self) -> str | None:
        try:
            return self.con.current_schema
        except Exception:  # noqa: BLE001 - an attribute dmPython reads from the session
            return None

    def tables_in(self, schema: str) -> list[str]:
        return [_reported(r[0]) for r in self.fetchall(SQL["tables_in"], (_stored(schema),))]

    def share_table(self, table: str) -> None:
        self.execute(SQL["share"].format(table=_table_sql(table)))

    # -- tables ----------------------------------------------------------------------------

    def write_arrow(self, table: str, data: pa.Table, *, replace: bool = False) -> None:
        """``CREATE TABLE`` from the Arrow schema (``create_table_sql``), then the rows with
        executemany over lists of tuples. The CREATE commits (DM8's DDL); a failed load drops the
        table again."""
        create = create_table_sql(table, data)
        if replace:
            self.execute(SQL["drop"].format(table=_table_sql(table)))
        self.execute(create)
        try:
            self._load(table, data)
        except BaseException:
            with contextlib.suppress(Error):
                self.execute(SQL["drop"].format(table=_table_sql(table)))
            raise
        self.analyze(table)

    def _load(self, table: str, data: pa.Table) -> None:
        if not data.num_rows:
            return
        columns = [python_values(data.column(i), data.schema.field(i).type) for i in range(data.num_columns)]
        insert = SQL["insert"].format(table=_table_sql(table), columns=", ".join(data.column_names),
                                      marks=", ".join("?" * data.num_columns))
        self.executemany(insert, list(zip(*columns)))

    def drop_temp_table(self, table: str) -> None:
        """Drop a global temporary table of ours: its rows first (TRUNCATE), since under Oracle's
        rule a session that still holds rows in one cannot drop it (whether DM8 has that rule too
        was not checked: docs/dm8.md)."""
        schema = self.current_schema()
        if schema and not self.table_exists(schema, table):
            return
        for statement in ("truncate", "drop"):
            with contextlib.suppress(Error):
                self.execute(SQL[statement].format(table=_table_sql(table)))

    def create_temp_table_as(self, table: str, select_sql: str) -> None:
        """A session's global temporary table (ON COMMIT PRESERVE ROWS) holding ``select_sql``'s
        rows, computed once: its columns from the query's description, then INSERT … SELECT."""
        cur = self._run(render(SQL["describe"].format(query=select_sql)), rows=1)
        description = cur.description
        cur.close()
        columns = [f"{n} {sql_type_of(d)}" for n, d in zip(driver.column_names(description), description)]
        self._temp_table(table, columns)
        try:
            self._run(render(SQL["insert_select"].format(table=table, query=select_sql))).close()
            self._done()
        except BaseException:
            self.drop_temp_table(table)
            raise

    def _temp_table(self, table: str, columns: list[str]) -> None:
        self.drop_temp_table(table)
        self.execute(SQL["temp_table"].format(table=table, columns=", ".join(columns)))

    # -- DL-centric --------------------------------------------------------------------------

    def score_into_temp_table(self, source_sql: str, score: Callable[..., np.ndarray], kind: str, table: str, *,
                              signature: Any = None, keyed: bool = False, batch_rows: int = 65536) -> None:
        """The source's rows by array fetch (``batch_rows`` a round trip), ``score`` on each batch,
        the predictions into a global temporary table (ON COMMIT PRESERVE ROWS: private to this
        session, kept across its commits) with executemany over lists. Columns: the key
        (``dbdl_k``, the ROWID, when ``keyed``; else the feature columns themselves) and
        ``dbdl_prediction`` (REAL, BIGINT, or the text of a JSON array for predict_array)."""
        batch_rows = max(1, int(batch_rows))
        cur = self._run(render(source_sql), rows=min(batch_rows, FETCH_ROWS))
        try:
            description = cur.description
            names = driver.column_names(description)
            if not all(re.fullmatch(r"dbdl_\w+", n) for n in names):
                raise QueryError(f"DL-centric source columns must be dbdl_k / dbdl_f…, got {names}")
            n_keys = 1 if keyed else len(names)
            scored: list[tuple] = []  # (key…, prediction), as the temporary table takes them
            while True:
                rows = cur.fetchmany(batch_rows)
                if not rows:
                    break
                scored.extend(score_batch(description, rows, signature, keyed, score, kind))
        except driver.dmPython.Error as exc:
            self._statement_failed()
            raise driver.translate(exc) from exc
        finally:
            cur.close()
        out_type = prediction_type(kind, [r[-1] for r in scored])
        key_types = [sql_type_of(d) for d in description[:n_keys]]
        key_names = names[:n_keys]
        self._temp_table(table, [f"{n} {t}" for n, t in zip(key_names, key_types)] + [f"dbdl_prediction {out_type}"])
        try:
            if scored:
                insert = SQL["insert"].format(table=table, columns=", ".join(key_names + ["dbdl_prediction"]),
                                              marks=", ".join("?" * (n_keys + 1)))
                self.executemany(insert, scored)
        except BaseException:
            self.drop_temp_table(table)
            raise

    # -- planning hooks --------------------------------------------------------------------

    def sample_value(self, sql: str) -> Any:
        # a failed statement rolls back only itself in DM8: the caller's transaction stays as it was
        cur = self._cursor(1)
        try:
            cur.execute(render(sql))
            row = cur.fetchone()
        except (driver.dmPython.Error, sqlglot.errors.SqlglotError):
            return None
        finally:
            cur.close()
        return driver.plain(row[0]) if row else None

    def relation_feature_problem(self, model: ResolvedModel, args: Sequence[exp.Expression]) -> str | None:
        # asked only of a call that is not one column per feature: DM8 has no arrays to unnest
        return ("DM8 has no array columns: relation-centric SQL takes the features as one column per feature, "
                "predict('m', c0, c1, …); one BLOB of float32 values per row is scored DL-centric")

    def argument_forms(self, args: Sequence[exp.Expression]) -> list[tuple[str, str]] | None:
        """The types of a call's feature arguments from the description of their probe (the call's
        own FROM/WHERE, no row read: ``WHERE 1 = 0`` around it); None where they hold parameters."""
        probe = argument_probe(args)
        if probe is None:
            return None
        empty = exp.select("*").from_(exp.alias_(exp.Subquery(this=probe), "dbdl_p", table=True)).where(
            exp.EQ(this=exp.Literal.number(1), expression=exp.Literal.number(0)))
        cur = self._cursor(1)
        try:
            cur.execute(render(empty.sql(dialect=self.dialect)))
            description = cur.description
        except (driver.dmPython.Error, sqlglot.errors.SqlglotError):
            return None  # the statement itself will say what is wrong with it
        finally:
            cur.close()
        return [driver.form(d) for d in description or ()] or None

    def analyze(self, table: str, columns: Sequence[str] = ()) -> None:
        """Statistics of a table just filled, where this user may gather them (DBMS_STATS); a
        refusal is no error: the planner then estimates without."""
        schema, _, name = table.rpartition(".")
        try:
            self._run("BEGIN DBMS_STATS.GATHER_TABLE_STATS(?, ?); END;",
                      (_stored(schema) if schema else self.current_schema(), _stored(name))).close()
            self._done()
        except Error:
            pass

    # -- training data ---------------------------------------------------------------------

    def train_export(self, spec: Any, progress: Any = None) -> Any:
        from .export import train_export

        return train_export(self, spec, progress)

    @classmethod
    def open_range_reader(cls, url: str, owner: Any = None) -> Any:
        from .reader import DM8RangeReader

        return DM8RangeReader(url, owner)

    # -- user statements -------------------------------------------------------------------

    def run_query(self, sql: str, params: Sequence[Any] = (), models: Sequence[ResolvedModel] = ()) -> pa.Table | None:
        try:
            statement = render(sql)
        except sqlglot.errors.SqlglotError as exc:
            raise QueryError(f"the query does not parse as DM8 SQL: {exc}") from exc
        cur = self._run(statement, params, rows=QUERY_FETCH_ROWS)
        try:
            description = cur.description
            if not description:
                self._done()
                return None
            rows: list[tuple] = []
            while True:
                block = cur.fetchmany(QUERY_FETCH_ROWS)
                if not block:
                    break
                rows.extend(tuple(driver.plain(v) for v in r) for r in block)  # LOBs read before the next fetch
        except driver.dmPython.Error as exc:
            self._statement_failed()
            raise driver.translate(exc) from exc
        finally:
            cur.close()
        self._done()
        return driver.rows_to_arrow(description, rows)


# -- helpers (tests/test_dm8_driver.py calls them directly) ------------------------------------------


def bind_types(rows: list[tuple]) -> tuple[list, list[tuple]]:
    """Each column's bind type for setinputsizes, read from all its values, and the rows with a
    float column's ints made floats: ``int`` (dmPython's BIGINT variable), ``float``, ``bool``,
    ``str`` (up to 4,094 characters; LONG_STRING beyond), ``bytes`` (up to 8,188 bytes;
    LONG_BINARY beyond — dmPython's MAX_STRING_CHARS and MAX_BINARY_BYTES); a column of NULLs
    only is ``str``."""
    if not rows:
        return [], rows
    dm = driver.dmPython
    types: list = []
    floats = []
    for j in range(len(rows[0])):
        kinds, longest = set(), 0
        for r in rows:
            v = r[j]
            if v is None:
                continue
            kinds.add(type(v))
            if isinstance(v, (str, bytes)):
                longest = max(longest, len(v))
        if kinds <= {bool} and kinds:
            types.append(bool)
        elif kinds and kinds <= {int, bool}:
            types.append(int)
        elif kinds and kinds <= {int, float, bool}:
            types.append(float)
            floats.append(j)
        elif kinds and kinds <= {bytes, bytearray, memoryview}:
            types.append(bytes if longest <= 8188 else dm.LONG_BINARY)
        elif kinds and kinds <= {str}:
            types.append(str if longest <= 4094 else dm.LONG_STRING)
        elif not kinds:
            types.append(str)
        else:  # dates, decimals: dmPython's own choice per value
            types.append(None)
    if floats:
        rows = [tuple(float(v) if j in floats and v is not None else v for j, v in enumerate(r)) for r in rows]
    if any(t is None for t in types):
        return [], rows  # no setinputsizes for a row of mixed kinds dmPython types itself
    return types, rows


def chunk_rows(rows: Sequence[tuple]) -> int:
    """Rows per executemany list: FETCH_ROWS, fewer where the first rows' text and bytes are large
    (so that one list binds about BIND_BYTES)."""
    sample = rows[:16]
    if not sample:
        return FETCH_ROWS
    size = sum(len(v) for r in sample for v in r if isinstance(v, (bytes, str))) / len(sample)
    return max(1, min(FETCH_ROWS, int(BIND_BYTES // max(size, 1.0))))


def _fetch_all(cur: Any) -> list:
    out: list = []
    while True:
        block = cur.fetchmany(cur.arraysize)
        if not block:
            return out
        out.extend(block)


def _stored(name: str) -> str:
    """A name as DM8's catalog views hold it: dbdl's unquoted lower-case names folded to upper case."""
    return name.upper() if _OWN_NAME.fullmatch(name or "") else name


def _reported(name: str) -> str:
    """A catalog view's name as dbdl spells it: an all-upper-case one lower-cased."""
    return name.lower() if name == name.upper() else name


def _table_sql(table: str) -> str:
    """A validated table name (schema.table, dbdl's own) as SQL: unquoted, so that DM8 folds it."""
    return exp.to_table(table).sql(dialect=DbdlDM8)


def arrow_sql_type(field: pa.Field, column: pa.ChunkedArray | pa.Array | None = None) -> str:
    """The DM8 column type of an Arrow field: BIGINT/INT/SMALLINT for integers (uint8 SMALLINT:
    DM8's TINYINT is signed), REAL float32, DOUBLE float64, BIT bool, VARCHAR(n) text up to
    INLINE_BYTES (CLOB beyond), BLOB for binary and for tensors (fixed-size float lists: each row's
    little-endian float32 bytes, the form DL-centric reads), DATE, TIMESTAMP."""
    t = field.type
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        return "BLOB"
    if t in (pa.int64(), pa.uint32(), pa.uint64()):
        return "BIGINT"
    if t in (pa.int32(), pa.uint16()):
        return "INT"
    if t in (pa.int16(), pa.int8(), pa.uint8()):
        return "SMALLINT"
    if t == pa.float32() or t == pa.float16():
        return "REAL"
    if t == pa.float64():
        return "DOUBLE"
    if pa.types.is_boolean(t):
        return "BIT"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        longest = _longest(column)
        return f"VARCHAR({max(1, longest)})" if longest <= INLINE_BYTES else "CLOB"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "BLOB"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP"
    if pa.types.is_decimal(t):
        return f"DECIMAL({t.precision}, {t.scale})"
    raise DTypeMismatch(f"column {field.name!r} has type {t}, which dbdl cannot store in DM8 yet; convert it to "
                        "numbers, text, bytes or a fixed-size float list")


def _longest(column: Any) -> int:
    if column is None or not len(column):
        return 1
    import pyarrow.compute as pc

    value = pc.max(pc.binary_length(column)).as_py()
    return int(value or 1)


def create_table_sql(table: str, data: pa.Table) -> str:
    """The CREATE TABLE of write_arrow (unquoted names: DM8 folds them as every reference does)."""
    columns = []
    for i, field in enumerate(data.schema):
        if not _OWN_NAME.fullmatch(field.name.lower()):
            raise DTypeMismatch(f"column name {field.name!r} is not a plain SQL name; DM8 tables dbdl writes take "
                                "letters, digits and underscores")
        columns.append(f"{field.name} {arrow_sql_type(field, data.column(i))}")
    return f"CREATE TABLE {_table_sql(table)} ({', '.join(columns)})"


def python_values(column: pa.ChunkedArray, t: pa.DataType) -> list:
    """A column's values as dmPython binds them: numbers, str, bytes; a tensor row as its
    little-endian float32 bytes."""
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        out = []
        for row in column.to_pylist():
            out.append(None if row is None else np.asarray(row, dtype="<f4").tobytes())
        return out
    if t in (pa.float16(),):
        column = column.cast(pa.float32())
    return column.to_pylist()


def sql_type_of(description: Sequence[Any]) -> str:
    """The DM8 column type that holds what a cursor description's column holds (a temporary
    table's key columns)."""
    code = description[1]
    dm = driver.dmPython
    size = max(1, int(description[2] or description[3] or 1)) if len(description) > 3 else 1
    if code is dm.BIGINT or code is dm.NUMBER or code is getattr(dm, "ROWID", None):
        return "BIGINT"
    if code is dm.REAL:
        return "REAL"
    if code is dm.DOUBLE:
        return "DOUBLE"
    if code is dm.DECIMAL:
        precision, scale = int(description[4] or 0), int(description[5] or 0)
        return f"DECIMAL({precision}, {scale})" if 0 < precision <= 38 else "DOUBLE"
    if code is dm.BOOLEAN:
        return "BIT"
    if code in (dm.STRING, dm.FIXED_STRING):
        return f"VARCHAR({min(size, 8188)})"
    if code in (dm.BINARY, dm.FIXED_BINARY):
        return f"VARBINARY({min(size, 8188)})"
    if code is dm.CLOB or code is dm.LONG_STRING:
        return "CLOB"
    if code is dm.BLOB or code is dm.LONG_BINARY:
        return "BLOB"
    if code is dm.DATE:
        return "DATE"
    if code is dm.TIMESTAMP:
        return "TIMESTAMP"
    return "VARCHAR(4000)"


def feature_column(description: Sequence[Any], values: list, signature: Any, k: int) -> Any:
    """One feature argument of a batch as a runtime Column: numbers one per row; bytes (a BLOB or
    VARBINARY) as little-endian float32 where each row holds 4 × the input's width bytes, else
    uint8 values (images); a NULL makes its row not valid."""
    from dbdl_udf.runtime import Column

    n = len(values)
    if driver.kind(description) in ("int", "float") and None not in values:  # no NULL: straight to numpy
        numbers = np.array(values, dtype=np.int64 if driver.kind(description) == "int" else np.float64)
        if driver.arrow_type(description) == pa.float32():
            numbers = numbers.astype(np.float32)
        return Column(numbers, np.ones(n, dtype=bool), width=1, shape=())
    valid = np.array([v is not None for v in values], dtype=bool)
    if driver.kind(description) == "bytes":
        width = None
        if signature is not None:
            inputs = signature.inputs
            width = signature.n_features if len(inputs) == 1 or k >= len(inputs) else inputs[k].per_row
        present = [bytes(v) if v is not None else b"" for v in values]
        lengths = {len(b) for b, ok in zip(present, valid) if ok}
        if width and lengths == {4 * width}:
            data = b"".join(b if ok else b"\0" * 4 * width for b, ok in zip(present, valid))
            return Column.from_matrix(np.frombuffer(data, dtype="<f4").reshape(n, width), valid)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([len(b) for b in present], out=offsets[1:])
        return Column(np.frombuffer(b"".join(present), dtype=np.uint8), valid, offsets=offsets)
    if driver.kind(description) not in ("int", "float"):
        raise DTypeMismatch(f"predict's features must be numbers (one column per feature) or bytes; column "
                            f"{description[0]} is {driver.type_name(description)}")
    dtype = np.int64 if driver.kind(description) == "int" else np.float64
    numbers = np.array([v if v is not None else 0 for v in values], dtype=dtype)
    if driver.arrow_type(description) == pa.float32():
        numbers = numbers.astype(np.float32)
    return Column(numbers, valid, width=1, shape=())


def score_batch(description: Sequence[Any], rows: list, signature: Any, keyed: bool,
                score: Callable[..., np.ndarray], kind: str) -> list[tuple]:
    """One fetched batch of DL-centric's source (``rows`` as dmPython's fetchmany gives them) scored:
    the temporary table's rows, (key…, prediction) — the key the ROWID, or the feature values
    themselves. Only the columns that need it (LOBs, decimals) are turned into plain values: the
    rest go to numpy as fetched (bench/bench_dm8.py times this against raw onnxruntime)."""
    from dbdl_udf.runtime import valid_rows

    from dbdl_udf.runtime import Column

    first = 1 if keyed else 0
    n_keys = 1 if keyed else len(description)
    features = description[first:]
    if (all(driver.kind(d) in ("int", "float") and not driver.is_lob(d) and d[1] is not driver.dmPython.DECIMAL
            for d in features) and not any(None in r for r in rows)):
        # numbers only and no NULL (the common batch): one conversion of the whole batch, in C
        matrix = np.array(rows, dtype=np.float64)[:, first:]
        valid = np.ones(len(rows), dtype=bool)
        columns = [Column(matrix[:, k] if driver.arrow_type(d) != pa.float32() else matrix[:, k].astype(np.float32),
                          valid, width=1, shape=()) for k, d in enumerate(features)]
        keys = [[r[0] for r in rows]] if keyed else list(zip(*rows))
        y = score(columns)
        return list(zip(*keys, prediction_values(kind, valid, y)))
    columns, keys = [], []
    for j, values in enumerate(zip(*rows)):  # the batch's columns, transposed at C speed
        if driver.is_lob(description[j]) or description[j][1] is driver.dmPython.DECIMAL:
            values = [driver.plain(v) for v in values]  # LOBs read before the next fetch
        if j < n_keys:
            keys.append(values)
        if j >= first:
            columns.append(feature_column(description[j], values, signature, j - first))
    valid = valid_rows(columns)
    y = score(columns) if valid.any() else None
    return list(zip(*keys, prediction_values(kind, valid, y)))


def prediction_values(kind: str, valid: np.ndarray, y: np.ndarray | None) -> list:
    """A batch's predictions as the temporary table's values: None for a row not scored;
    predict_array's as the text of a JSON array ('[0.5,-1.25]')."""
    n = len(valid)
    out: list = [None] * n
    if y is None:
        return out
    rows = np.flatnonzero(valid)
    if kind == "array":
        matrix = np.asarray(y, dtype=np.float32).reshape(len(rows), -1)
        finite = np.isfinite(matrix).all(axis=1)
        digits = "{:.9g}".format  # 9 significant digits give each float32 back exactly
        for i, row, ok in zip(rows, matrix.astype(np.float64).tolist(), finite.tolist()):
            # NaN and infinities as json.dumps writes them (NaN, Infinity: json.loads reads them)
            out[i] = "[" + ",".join(map(digits, row)) + "]" if ok else json.dumps(row, separators=(",", ":"))
    elif kind == "class":
        for i, v in zip(rows, np.asarray(y).reshape(-1)):
            out[i] = int(v)
    elif kind == "text":
        for i, v in zip(rows, np.asarray(y, dtype=object).reshape(-1)):
            out[i] = str(v)
    else:
        for i, v in zip(rows, np.asarray(y, dtype=np.float64).reshape(-1)):
            out[i] = float(v)
    return out


def prediction_type(kind: str, values: list) -> str:
    """The SQL type of dbdl_prediction: REAL, BIGINT, or text (VARCHAR up to INLINE_BYTES, CLOB
    beyond) for predict_array's JSON and class names."""
    base = PREDICTION_TYPES[kind]
    if base != "VARCHAR":
        return base
    longest = max((len(v.encode()) for v in values if v is not None), default=1)
    return f"VARCHAR({max(1, longest)})" if longest <= INLINE_BYTES else "CLOB"
