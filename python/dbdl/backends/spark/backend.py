"""Spark SQL, the scale-out backend.

User statements, planning probes and the tables dbdl creates for them (relation-centric weights,
datasets, DL-centric results) run in Spark; dbdl's own tables (the registry, migrations,
calibration, the datasets' catalog) live in a *catalog database* — an embedded DuckDB file in the
warehouse by default, or a PostgreSQL database a team shares (``catalog=`` in the URL). Spark SQL
has no transactions, and plain parquet tables take no UPDATE or DELETE: a registry kept there
could not promote a version atomically, nor stop two registrations from taking one version
number. Executors never read the catalog: a statement's models are pinned on the driver and their
bytes broadcast (udf.py), so the catalog need only be reachable from the driver. See docs/spark.md.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Sequence

import pyarrow as pa
import sqlglot
import sqlglot.expressions as exp

from ...errors import ConnectionError, DatasetNotFound, DTypeMismatch, Error, QueryError, error_class
from ...names import ResolvedModel
from ...query import FUNCTION_SCHEMA, HINT_RE, parse
from ..base import Backend
from .costs import COSTS
from .dialect import RELATIONAL, DbdlSpark
from .session import default_catalog, open_session, parse_url, ship_udf_package
from .udf import SparkFunctions

#: a dbdl error raised on an executor (or by raise_error in relation-centric SQL), as Spark reports it
_DBDL_ERROR = re.compile(r"(?:dbdl_udf\.errors\.|dbdl\.errors\.|dbdl\.)(\w+): ([^\n]*)")
#: text that may name a table of schema dbdl (dbdl.x, `dbdl`.x); dbdl_… names do not match
_NAMES_DBDL_TABLE = re.compile(r"(?<![\w`])`?dbdl`?\s*\.\s*`?[A-Za-z_]", re.I)
_SPARK_CLASS = re.compile(r"^\[([A-Z_.]+)\]\s*")


class SparkBackend(SparkFunctions, Backend):
    name = "spark"
    schemes = ("spark",)
    dialect = DbdlSpark
    relational = RELATIONAL
    cost_defaults = COSTS
    #: DL-centric scoring runs on the executors, from the scorer's recipe (dl.py)
    dl_scores_in_client = False

    def __init__(self, url: str, *, spark: Any = None, create: bool = True, **options: Any) -> None:
        super().__init__(url)
        options.pop("read_only", None)
        catalog_url = options.pop("catalog", None)
        self.options = parse_url(url, catalog=catalog_url, **options)
        self.spark = open_session(self.options, spark)
        ship_udf_package(self.spark)
        self.data_schema = self.options.data_database
        catalog_url = self.options.catalog or default_catalog(self.spark.conf.get("spark.sql.warehouse.dir"))
        if Backend.class_for(catalog_url) is SparkBackend:
            raise ConnectionError(f"the catalog of a Spark connection must be a DuckDB or PostgreSQL database, "
                                  f"not {catalog_url!r}")
        self._catalog = Backend.open(catalog_url, create=create)
        self._lock = threading.RLock()
        self._udfs: set[str] = set()
        self._broadcasts: dict[str, Any] = {}
        try:
            for database in {self.options.database, self.data_schema}:
                if database != "default":
                    self.spark.sql(f"CREATE DATABASE IF NOT EXISTS {_quoted(database)}")
            self.spark.catalog.setCurrentDatabase(self.options.database)
        except Exception as exc:  # noqa: BLE001
            self._catalog.close()
            raise ConnectionError(f"cannot use the Spark database {self.options.database!r}: {_first(exc)}") from exc

    @property
    def catalog(self) -> Backend:
        return self._catalog

    # -- primitives: Spark SQL -----------------------------------------------------------------

    def _sql(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if "/*+" in sql:
            sql = _without_dbdl_hints(sql)
        try:
            return self.spark.sql(sql, args=list(params) or None)
        except Exception as exc:  # noqa: BLE001 - pyspark's errors, translated
            raise self._translate(exc) from exc

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._sql(sql, params)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        frame = self._sql(sql, params)
        try:
            return [tuple(row) for row in frame.collect()]
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc) from exc

    def executescript(self, sql: str) -> None:
        for statement in sqlglot.parse(sql, read=self.dialect):
            if statement is not None:
                self.execute(statement.sql(dialect=self.dialect))

    # Spark SQL has no transactions: each statement stands alone (dbdl's own writes that must be all
    # or nothing go to the catalog database, or write a new table and swap it in)
    def begin(self) -> None:
        pass

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        # the SparkContext is the process's, shared by its connections: only this one's state goes
        for payload in self._broadcasts.values():
            try:
                payload.destroy()
            except Exception:  # noqa: BLE001 - the context may be gone already
                pass
        self._broadcasts.clear()
        self._udfs.clear()
        self._catalog.close()

    def table_exists(self, schema: str, table: str) -> bool:
        try:
            return bool(self.spark.catalog.tableExists(table, schema))
        except Exception:  # noqa: BLE001 - no such database
            return False

    def tables_in(self, schema: str) -> list[str]:
        if not self.spark.catalog.databaseExists(schema):
            return []
        return [t.name for t in self.spark.catalog.listTables(schema) if not t.isTemporary]

    def write_arrow(self, table: str, data: pa.Table, *, replace: bool = False) -> None:
        """A managed table of the warehouse (parquet) holding ``data``, its row count in the catalog;
        fixed-size float lists become array<float> (Spark has no fixed-size arrays)."""
        columns = []
        for column, field in zip(data.columns, data.schema):
            if pa.types.is_fixed_size_list(field.type):
                column = column.cast(pa.list_(field.type.value_type))
            columns.append(column)
        data = pa.table(columns, names=data.column_names)
        try:
            if data.num_rows:
                frame = self.spark.createDataFrame(data)
            else:  # pyspark takes the types of an empty table from its schema only
                from pyspark.sql.pandas.types import from_arrow_schema

                frame = self.spark.createDataFrame([], from_arrow_schema(data.schema))
            frame.write.mode("overwrite" if replace else "errorifexists").saveAsTable(_quoted_table(table))
            # the row count in the catalog (one job reading the parquet footers): the planner's
            # estimates of statements over the table then need no count of their own (estimate_rows),
            # and Spark keeps it right through INSERTs
            self.spark.sql(f"ANALYZE TABLE {_quoted_table(table)} COMPUTE STATISTICS")
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc) from exc

    # -- planning hooks ------------------------------------------------------------------------

    def estimate_rows(self, sql: str) -> int:
        """Spark's own estimate where it has one (analyzed tables, files it can size); else a count."""
        frame = self._sql(sql)
        try:
            plan = frame._jdf.queryExecution().optimizedPlan()
            # a projection keeps its input's rows, though Spark (without CBO) drops their count
            while plan.nodeName() == "Project":
                plan = plan.child()
            stats = plan.stats()
            if stats.rowCount().isDefined():
                return _count(stats.rowCount().get())
            if plan.nodeName() == "LogicalRelation" and plan.catalogTable().isDefined():
                # ANALYZE TABLE's count, which the plan shows only under CBO (spark.sql.cbo.enabled)
                table_stats = plan.catalogTable().get().stats()
                if table_stats.isDefined() and table_stats.get().rowCount().isDefined():
                    return _count(table_stats.get().rowCount().get())
        except Exception:  # noqa: BLE001 - an internal API: fall back to counting
            pass
        return super().estimate_rows(sql)

    def sample_value(self, sql: str) -> Any:
        try:
            rows = self.spark.sql(sql).collect()
        except Exception:  # noqa: BLE001 - a planning probe that fails says nothing
            return None
        return rows[0][0] if rows else None

    def array_result(self, values: exp.Expression, width: int | None) -> exp.Expression:
        return exp.Cast(this=values, to=exp.DataType.build("ARRAY<FLOAT>", dialect="spark"))

    # -- DL-centric execution (dl.py) ------------------------------------------------------------

    def score_into_temp_table(self, source_sql: str, score: Any, kind: str, table: str, *, signature: Any = None,
                              keyed: bool = False, batch_rows: int = 65536) -> None:
        from .dl import score_into_temp_view

        score_into_temp_view(self, source_sql, score, kind, table, signature=signature, keyed=keyed,
                             batch_rows=batch_rows)

    def drop_temp_table(self, table: str) -> None:
        try:
            self.spark.catalog.dropTempView(table)
        except Exception:  # noqa: BLE001 - already gone
            pass

    # -- training data -------------------------------------------------------------------------

    def train_export(self, spec: Any, progress: Any = None) -> Any:
        from .export import train_export

        return train_export(self, spec, progress)

    def drop_dataset(self, name: str) -> Any:
        from .export import drop_dataset

        return drop_dataset(self, name)

    @classmethod
    def open_range_reader(cls, url: str, owner: Any = None) -> Any:
        from .reader import SparkRangeReader

        return SparkRangeReader(url, owner)

    @classmethod
    def database_key(cls, url: str) -> str:
        """The URL without its query (options such as conf.* do not change which tables it reads),
        but with the database it names."""
        head, _, query = url.partition("?")
        from urllib.parse import parse_qsl

        keep = [f"{k}={v}" for k, v in parse_qsl(query) if k in ("warehouse", "database", "data_database", "catalog")]
        return head + ("?" + "&".join(sorted(keep)) if keep else "")

    # -- user statements -----------------------------------------------------------------------

    def run_query(self, sql: str, params: Sequence[Any] = (), models: Sequence[ResolvedModel] = ()) -> pa.Table | None:
        routed = self._catalog_statement(sql)
        if routed is not None:
            return self._catalog.run_query(routed, params, models)
        frame = self._sql(sql, params)
        if not frame.columns:
            return None  # DDL and writes ran when Spark read the statement
        try:
            return frame.toArrow()
        except pa.ArrowInvalid as exc:
            if "empty vector" not in str(exc):
                raise self._translate(exc, models) from exc
            # no rows: pyspark cannot build the table without a batch to take the types from
            from pyspark.sql.pandas.types import to_arrow_schema

            return to_arrow_schema(frame.schema).empty_table()
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, models) from exc

    def _catalog_statement(self, sql: str) -> str | None:
        """A statement that reads (or writes) only dbdl's own tables (``dbdl.blobs``,
        ``dbdl.model_versions``, …), transpiled from Spark SQL to the catalog database's dialect,
        where those tables live; None for a statement of Spark's. A statement mixing both is refused:
        Spark cannot read the catalog's tables, nor the catalog Spark's."""
        if not _NAMES_DBDL_TABLE.search(sql):
            return None  # the common case, without parsing: no "dbdl." in the text
        trees = parse(sql, self.dialect)
        if not trees or len(trees) != 1 or isinstance(trees[0], exp.Command):
            return None
        tree = trees[0]
        ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
        ours, theirs = [], []
        for table in tree.find_all(exp.Table):
            if not table.name or (not table.db and table.name.lower() in ctes):
                continue
            in_catalog = table.db.lower() == FUNCTION_SCHEMA and table.catalog.lower() in ("", "spark_catalog")
            (ours if in_catalog else theirs).append(table)
        if not ours:
            return None
        if theirs:
            raise QueryError(
                f"this statement reads dbdl's own tables ({', '.join(sorted({t.sql(dialect='spark') for t in ours}))}) "
                f"and Spark's ({', '.join(sorted({t.sql(dialect='spark') for t in theirs}))}); on Spark dbdl's tables live "
                "in the catalog database (backend.catalog), which Spark cannot read in the same statement — read the "
                "registry through db.models (db.models.list(), db.models.get(name)) or in a statement of its own, "
                "and pass what it returns to the Spark statement as parameters")
        for table in ours:
            table.set("catalog", None)
        return tree.sql(dialect=self._catalog.dialect)

    def _translate(self, exc: BaseException, models: Sequence[ResolvedModel] = ()) -> Error:
        if isinstance(exc, Error):
            return exc
        message = str(exc)
        found = None
        # a dbdl error is raised while rows run (on an executor, or by raise_error); a statement Spark
        # refuses to parse or analyze echoes its text, whose raise_error messages are no such error
        if not _is_analysis_error(exc):
            for found in _DBDL_ERROR.finditer(message):
                pass  # the last one: the innermost raise, after Spark's own wrapping
        if found:
            return error_class(found[1])(found[2].strip())
        first = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
        spark_class = _SPARK_CLASS.match(first)
        kind = spark_class[1] if spark_class else ""
        if kind.startswith(("PARSE_SYNTAX_ERROR", "PARSE_")):
            return QueryError(f"the query does not parse: {first}")
        if kind.startswith(("TABLE_OR_VIEW_NOT_FOUND",)):
            return QueryError(f"{first} — create it with db.create_table(...) or name a table Spark knows")
        if kind.startswith("DATATYPE_MISMATCH") or "CAST_INVALID_INPUT" in kind or "cannot resolve" in first.lower():
            names = ", ".join(repr(m.ref) for m in models) or "the model"
            if any(w in first for w in ("ARRAY<FLOAT>", "\"ARRAY<FLOAT>\"")):
                return DTypeMismatch(f"{names} takes an array of numbers (array<float>, array<double>); convert the "
                                     f"features, e.g. CAST(col AS ARRAY<FLOAT>) — Spark said: {first}")
        if kind.startswith("PATH_NOT_FOUND") or "FileNotFoundException" in message:
            return DatasetNotFound(f"a table's files are gone: {first}")
        return QueryError(first)

    # -- DL-centric (sparkdl)

    def create_temp_table_as(self, table: str, select_sql: str) -> None:
        """A cached temporary view, computed once now (Spark has no temporary tables; a view alone
        would run its query again on each read — a ROW_NUMBER() numbering differently each time).
        Dropping it (drop_temp_table) uncaches it."""
        from .dl import cached_temp_view

        cached_temp_view(self, table, select_sql)

    # -- relation-centric (sparkrel) -----------------------------------------------------------
    # The model compiled to SQL (ir/sql.py, with the spellings of dialect.py) runs as Spark SQL, no
    # Python worker in the plan; its weight tables (written by write_arrow into data_database) are
    # joined by broadcast where small: a BROADCAST hint in each SELECT that joins one (docs/spark.md).

    #: weight tables at most this large (Spark's estimate: the size of their parquet files) get a
    #: BROADCAST hint; larger ones are left to Spark's own choice (spark.sql.autoBroadcastJoinThreshold)
    weight_broadcast_bytes = 32 << 20

    def own_sql(self, sql: Any) -> Any:
        """dbdl's SQL, each SELECT that joins a small weight table with a BROADCAST hint naming it:
        the weights go to every executor once, and the activations (the large side) never shuffle
        to meet them — whatever Spark estimates for the activations, and whatever the session's
        autoBroadcastJoinThreshold. The user's part of a tree (``meta["dbdl_user"]``) is left alone."""
        if not isinstance(sql, exp.Expression):
            return sql
        selects = [n for n in sql.walk(bfs=False, prune=lambda n: bool(n.meta.get("dbdl_user")))
                   if isinstance(n, exp.Select) and not n.meta.get("dbdl_user")]
        for select in selects:
            names = [t.alias_or_name for t in _joined_tables(select) if self._small_weight_table(t)]
            if not names:
                continue
            hint = select.args.get("hint") or exp.Hint(expressions=[])
            hint.append("expressions", exp.JoinHint(this="BROADCAST", expressions=[exp.to_table(n) for n in names]))
            select.set("hint", hint)
        return sql

    def _small_weight_table(self, table: exp.Table) -> bool:
        """Whether ``table`` is a relation-centric weight table (``rel_…`` in data_database) small
        enough to broadcast; its size is read from Spark's estimate once per connection."""
        if table.db.lower() != self.data_schema.lower() or not table.name.lower().startswith("rel_"):
            return False
        sizes = self.__dict__.setdefault("_weight_sizes", {})
        key = f"{table.db}.{table.name}".lower()
        if key not in sizes:
            try:
                stats = self.spark.table(_quoted_table(key))._jdf.queryExecution().optimizedPlan().stats()
                sizes[key] = int(str(stats.sizeInBytes()))  # a Scala BigInt: py4j gives an int
            except Exception:  # noqa: BLE001 - not written yet, or an internal API gone: Spark decides
                return False
        return sizes[key] <= self.weight_broadcast_bytes


def _count(value: Any) -> int:
    """A Scala BigInt through py4j: a Python int, or a JVM object."""
    return int(value if isinstance(value, int) else value.toString())


def _without_dbdl_hints(sql: str) -> str:
    """The statement without dbdl's ``/*+ dbdl strategy=… */`` comments: Spark reads ``/*+ … */`` as
    its own optimizer hints, and refuses that one (Spark's own hints, such as BROADCAST, stay)."""
    try:
        tokens = DbdlSpark().tokenize(sql)
    except sqlglot.errors.SqlglotError:
        return sql
    cuts = [(t.start, t.end + 1) for t in tokens if t.token_type == sqlglot.tokens.TokenType.HINT
            and HINT_RE.search(t.text)]
    for start, end in reversed(cuts):
        sql = sql[:start] + sql[end:]
    return sql


def _joined_tables(select: exp.Select) -> list[exp.Table]:
    """The tables a SELECT reads directly: its FROM and its joins (not those of its subqueries)."""
    source = select.args.get("from_") or select.args.get("from")
    items = ([source.this] if source is not None else []) + [j.this for j in select.args.get("joins") or []]
    return [t for t in items if isinstance(t, exp.Table)]


def _is_analysis_error(exc: BaseException) -> bool:
    try:
        from pyspark.errors import AnalysisException
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, AnalysisException)


def _quoted(name: str) -> str:
    return exp.to_identifier(name, quoted=True).sql(dialect="spark")


def _quoted_table(name: str) -> str:
    return exp.to_table(name).sql(dialect="spark")


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
