"""The interface every backend implements.

A backend is a thin adapter: it runs SQL with bound parameters, moves batches as Arrow or COPY,
opens transactions, and declares what differs per database as data (its sqlglot dialect, the
relation-centric spellings, the cost model's defaults, the result cache's key width, its row
identity) and as the hooks below. It knows nothing of the planner, the strategies or the registry's
API: what it needs (a model's bytes, a batch size) comes through this interface. Every hook a caller
uses is declared here: abstract where every backend must have it, a default otherwise.

A backend is a folder (``backends/duckdb/``, ``backends/postgres/``) that registers its class by URL
scheme when imported (``Backend.__init_subclass__``; ``BACKEND_MODULES`` says which folder opens a
scheme). See docs/architecture.md, "Adding a backend".
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Sequence
from urllib.parse import urlsplit

from ..errors import ConcurrentChange, ConnectionError, DatasetNotFound, ModelNotFound, PermissionDenied, QueryError
from ..names import ModelRef, ResolvedModel

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    import sqlglot.expressions as exp

    from dbdl_udf.datasets import DatasetInfo, ExportSpec
    from dbdl_udf.runtime import Signature

    from ..ir.sql import RelationalSQL

# scheme -> the folder that defines its backend; imported lazily so that a missing driver (psycopg)
# only matters to the users of that backend.
BACKEND_MODULES = {
    "duckdb": "dbdl.backends.duckdb",
    "postgresql": "dbdl.backends.postgres",
    "postgres": "dbdl.backends.postgres",
    "spark": "dbdl.backends.spark",
    "dm": "dbdl.backends.dm8",
}
#: scheme -> the pip extra that installs its driver
_EXTRAS = {"postgresql": "postgres", "postgres": "postgres", "spark": "spark", "dm": "dm8"}

DEFAULT_URL = "duckdb:///dbdl_data.duckdb"

_DUPLICATE_KEY = re.compile(r"duplicate key|violates (primary key|unique) constraint", re.I)


class Backend(ABC):
    """One open database connection, as dbdl needs it."""

    #: short name used in migrations/<name>/ and in test ids
    name: ClassVar[str]
    #: URL schemes this backend opens
    schemes: ClassVar[tuple[str, ...]] = ()
    #: sqlglot dialect used to parse user queries and render generated SQL
    dialect: ClassVar[str]
    #: the database runs dbdl's Python inside it (UDF-centric execution is possible)
    has_python_udfs: ClassVar[bool] = True
    #: why UDF-centric execution is ruled out where ``has_python_udfs`` is False (the planner's and
    #: EXPLAIN's reason)
    udf_unavailable: ClassVar[str] = "the database runs no Python"
    #: the in-database function is a closure of this process, so it can score a model that is not
    #: in the registry (a hybrid plan's sub-model, its session cached in dbdl_udf.runtime.SESSIONS
    #: under ``udf_threads``); a server's function looks models up by their stored reference
    scores_unregistered_models: ClassVar[bool] = False
    #: connect() may apply pending migrations to an existing database (embedded files only)
    auto_upgrade: ClassVar[bool] = False
    #: the database has stored procedures of dbdl's (CALL train_export runs in the server);
    #: without them, db.sql carries out such CALLs in the client
    has_procedures: ClassVar[bool] = False
    #: how the driver spells bound parameters: "qmark" (?) or "format" (%s)
    paramstyle: ClassVar[str] = "qmark"
    #: the spellings of relation-centric SQL here (ir.sql.RelationalSQL)
    relational: ClassVar["RelationalSQL"]
    #: the cost model's constants until `dbdl calibrate` measures them (strategies/*.py name them)
    cost_defaults: ClassVar[dict[str, float]] = {}
    #: bytes of a result cache key (the digest of an input's tensor bytes); None: no result cache
    cache_key_bytes: ClassVar[int | None] = None
    #: roles that do not trust each other share the result cache: only the server's own code
    #: (dbdl.cache_fill) writes it, so the misses are scored in the server
    cache_filled_in_server: ClassVar[bool] = False
    #: the client digests and looks up a cached call's keys itself while the rows stream out, and
    #: scores the misses from the same stream (``cache_input``, ``cache_digests``, ``cache_lookup``:
    #: DuckDB's udf.py; ``arrow_temp_table``; planner/cachejoin.py)
    cache_streams: ClassVar[bool] = False
    #: a pseudo-column that identifies a base table's rows across the statements of one query
    #: (DuckDB's rowid, PostgreSQL's ctid): DL-centric results and cache keys are joined back by it
    row_identity: ClassVar[str | None] = None
    #: the connection may not write (a DuckDB file opened read-only)
    read_only: bool = False
    #: the database has array columns: a call of one column per feature (``predict('m', c0, c1, c2)``
    #: for a model of one input of width 3) is packed into one array (``pack_features``) where a path
    #: takes one vector (UDF-centric, the result cache). DM8 has none: relation- and DL-centric
    #: execution take the columns as they are, and the cache is not used
    array_features: ClassVar[bool] = True
    #: DL-centric's ``score`` closure runs in this process; False where the backend builds the scorer
    #: again elsewhere from ``score.recipe`` (Spark's executors), which feeds each source column to
    #: the model as it is: a call of one column per feature then streams them packed into one array
    dl_scores_in_client: ClassVar[bool] = True

    _by_scheme: ClassVar[dict[str, type["Backend"]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for scheme in cls.schemes:
            Backend._by_scheme[scheme] = cls

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def catalog(self) -> "Backend":
        """The database that holds dbdl's own tables (the registry, migrations, calibration, the
        datasets' catalog): this one, except where the data lives in an engine without transactions
        (Spark: an embedded DuckDB file or a PostgreSQL database, ``catalog=`` in its URL). The
        registry's reads and writes, `dbdl migrate` and the datasets' catalog rows go here; user
        statements, planning probes and the tables dbdl creates for them go to ``self``."""
        return self

    # -- opening ------------------------------------------------------------------------------

    @staticmethod
    def open(url: str | None = None, **options: Any) -> "Backend":
        url = url or os.environ.get("DBDL_URL") or DEFAULT_URL
        scheme = url_scheme(url)
        if not scheme:
            # a bare path means an embedded DuckDB file
            url, scheme = f"duckdb:///{url}", "duckdb"
        return Backend.class_for(url)(url, **options)

    @staticmethod
    def class_for(url: str) -> type["Backend"]:
        """The backend class that opens ``url`` (its folder imported), without connecting."""
        scheme = (url_scheme(url) or "duckdb").split("+", 1)[0]
        module = BACKEND_MODULES.get(scheme)
        if module is None:
            known = ", ".join(sorted({k + "://" for k in BACKEND_MODULES}))
            raise ConnectionError(f"unknown database URL scheme {scheme!r} in {url!r}; dbdl opens {known}")
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConnectionError(
                f"the {scheme} backend needs a driver that is not installed ({exc}); "
                f"install it with: pip install 'dbdl[{_EXTRAS.get(scheme, scheme)}]'"
            ) from exc
        return Backend._by_scheme[scheme]

    # -- SQL primitives -----------------------------------------------------------------------

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one statement with ``?`` placeholders bound to ``params``."""

    @abstractmethod
    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Run one query and return its rows."""


    @abstractmethod
    def executescript(self, sql: str) -> None:
        """Run a script of several statements (migrations; no parameters)."""

    @abstractmethod
    def begin(self) -> None: ...

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def rollback(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        rows = self.fetchall(sql, params)
        return rows[0] if rows else None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """All-or-nothing: a failure inside leaves no rows behind."""
        self.begin()
        try:
            yield
        except BaseException:
            self.rollback()
            raise
        else:
            self.commit()

    #: attempts of a registry write that met a concurrent writer (DuckDB's optimistic transactions)
    WRITE_ATTEMPTS = 6

    def write(self, change: Callable[[], Any]) -> Any:
        """Run ``change()`` in one transaction; run it again (after a short, growing, jittered
        pause) when a concurrent writer of the same model made it fail, and raise ConcurrentChange
        after WRITE_ATTEMPTS. (PostgreSQL's writers wait on the model's row lock instead.)"""
        import random
        import time

        for attempt in range(self.WRITE_ATTEMPTS):
            try:
                with self.transaction():
                    return change()
            except (ConcurrentChange, QueryError) as exc:
                # DuckDB does not see another connection's uncommitted rows: two first registrations
                # of a name both insert it, and one fails on the key. The registry's writes check for
                # every row they add, so a duplicate key in them is always such a race.
                if isinstance(exc, QueryError) and not _DUPLICATE_KEY.search(str(exc)):
                    raise
                if attempt == self.WRITE_ATTEMPTS - 1:
                    raise ConcurrentChange(f"other sessions kept changing the same model at the same moment "
                                           f"({exc}); run it again") from exc
                time.sleep(random.uniform(0.005, 0.02) * 2 ** attempt)

    #: the script that makes schema dbdl and its record of applied migrations where they are missing
    #: (run by `dbdl migrate` before each migration, in the backend's script convention)
    migrations_table_script: ClassVar[str] = (
        "CREATE SCHEMA IF NOT EXISTS dbdl;\n"
        "CREATE TABLE IF NOT EXISTS dbdl.schema_migrations (id INTEGER PRIMARY KEY, name VARCHAR(200) "
        "NOT NULL, checksum VARCHAR(64) NOT NULL, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)")

    @contextlib.contextmanager
    def migration_lock(self) -> Iterator[None]:
        """Held while migrations run, against two concurrent `dbdl migrate` (default: nothing)."""
        yield

    def table_exists(self, schema: str, table: str) -> bool:
        row = self.fetchone(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
            (schema, table),
        )
        return bool(row and row[0])

    @abstractmethod
    def write_arrow(self, table: str, data: "pa.Table", *, replace: bool = False) -> None:
        """Create ``table`` (a validated, unquoted name) holding ``data``; fixed-size float lists
        become the backend's tensor column type."""

    # -- hooks used by the client ------------------------------------------------------------

    #: one row, one column: the ONNX bytes of a content hash
    model_bytes_sql: ClassVar[str] = "SELECT bytes FROM dbdl.blobs WHERE sha256 = ?"

    def pin_model(self, name: str, version: int | None) -> Any:
        """The stored version a reference means (dbdl_udf.catalog.Pinned)."""
        from dbdl_udf import catalog

        return catalog.resolve(self.catalog, name, version)

    def resolve(self, ref: "ModelRef | str") -> ResolvedModel:
        """Pin ``ref`` to a stored version (the serving one when no version is given)."""
        ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
        pinned = self.pin_model(ref.name, ref.version)
        resolved = ResolvedModel(ref.name, pinned.version, pinned.sha256, pinned.signature, ref.output)
        resolved.output_index  # raises ShapeMismatch naming the outputs when ``ref.output`` is unknown
        return resolved

    def model_bytes(self, sha256: str) -> bytes:
        """The stored ONNX bytes of a content hash."""
        row = self.catalog.fetchone(self.model_bytes_sql, (sha256,))
        if row is None or row[0] is None:
            raise ModelNotFound(f"the model bytes {sha256[:12]}… are missing from dbdl.blobs; re-register the model")
        return bytes(row[0])

    def version_options(self, name: str, version: int) -> Any:
        """A stored version's options as the catalog holds them (JSON text or a dict; None if none),
        read through dbdl.model_catalog, which every role that may predict may read."""
        row = self.catalog.fetchone("SELECT options FROM dbdl.model_catalog WHERE name = ? AND version = ?",
                                    (name, version))
        return row[0] if row else None

    def torch_program(self, name: str, version: int) -> bytes | None:
        """The torch program stored with a version registered from torch (None for others, and
        where this role may not read it: it then scores with onnxruntime)."""
        row = self.catalog.fetchone("SELECT source FROM dbdl.model_catalog WHERE name = ? AND version = ?",
                                    (name, version))
        if not row or row[0] != "torch":
            return None
        try:
            program = self.catalog.fetchone("SELECT torch_program FROM dbdl.model_versions WHERE name = ? AND version = ?",
                                    (name, version))
        except PermissionDenied:
            return None
        return None if not program or program[0] is None else bytes(program[0])

    def tables_in(self, schema: str) -> list[str]:
        """The names of the tables in ``schema`` (relation-centric weights the registry drops)."""
        return [r[0] for r in self.fetchall(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ?", (schema,))]

    def can_create_tables(self, schema: str) -> bool:
        """Whether this connection may create tables in ``schema`` (relation-centric weights)."""
        return not self.read_only

    def share_table(self, table: str) -> None:
        """Let every dbdl user read a table dbdl created (PostgreSQL grants SELECT to dbdl_user)."""

    #: the schema of the tables the client creates (relation-centric weights, dataset tables):
    #: PostgreSQL's dbdl_data, where dbdl_admin may create and dbdl's own functions never look
    data_schema: ClassVar[str] = "dbdl"
    #: the schema planned predict calls are qualified with (None: called unqualified)
    function_schema: ClassVar[str | None] = None

    # -- registry writes ------------------------------------------------------------------------
    # Where the client may write the registry tables itself (DuckDB: whoever holds the file), these
    # apply dbdl_udf.catalog's rules directly; PostgreSQL calls its SECURITY DEFINER functions, which
    # apply the same rules as the owner and compute every fact about the bytes themselves.

    def store_version(self, name: str, prepared: Any, *, description: str | None, promote: bool) -> int:
        from dbdl_udf import catalog

        return self.catalog.write(lambda: catalog.store_version(
            self.catalog, name, sha256=prepared.sha256, onnx_bytes=prepared.onnx_bytes, source=prepared.source,
            signature=prepared.signature, n_params=prepared.n_params, flops_per_row=prepared.flops_per_row,
            opset=prepared.opset, torch_program=prepared.torch_program, description=description,
            promote=promote, original_bytes=getattr(prepared, "original_bytes", None),
            rewrites=getattr(prepared, "rewrites", ())))

    def promote_version(self, name: str, version: int) -> None:
        from dbdl_udf import catalog

        self.catalog.write(lambda: catalog.promote(self.catalog, name, version))

    def rollback_version(self, name: str) -> int:
        from dbdl_udf import catalog

        return self.catalog.write(lambda: catalog.rollback(self.catalog, name))

    def drop_versions(self, name: str, version: int | None) -> int:
        from dbdl_udf import catalog

        return self.catalog.write(lambda: catalog.drop(self.catalog, name, version))

    def set_model_options(self, name: str, options: dict[str, Any]) -> dict[str, Any]:
        from dbdl_udf import catalog

        return self.catalog.write(lambda: catalog.set_options(self.catalog, name, options))

    def clear_model_cache(self, name: str) -> None:
        from dbdl_udf import catalog

        self.catalog.write(lambda: catalog.clear_cache(self.catalog, name))

    def calibration(self) -> dict[str, float]:
        """The constants `dbdl calibrate` stored (empty before it ran)."""
        store = self.catalog
        if not store.table_exists("dbdl", "calibration"):
            return {}
        return {key: float(value) for key, value in store.fetchall("SELECT key, value FROM dbdl.calibration")}

    def set_calibration(self, values: dict[str, float]) -> None:
        store = self.catalog
        with store.transaction():
            for key, value in values.items():
                store.execute("DELETE FROM dbdl.calibration WHERE key = ?", (key,))
                store.execute("INSERT INTO dbdl.calibration (key, value) VALUES (?, ?)", (key, float(value)))

    def drop_dataset(self, name: str) -> "DatasetInfo":
        """Drop a dataset's view and table and delete its catalog row (inside the caller's
        transaction on ``catalog``); what was dropped."""
        from dbdl_udf import datasets

        return datasets.drop(self, name, forget_row=self.forget_dataset)

    def forget_dataset(self, name: str) -> None:
        """Delete a dataset's catalog row (inside the caller's transaction)."""
        from dbdl_udf import datasets

        datasets.forget(self.catalog, name)

    def estimate_rows(self, sql: str) -> int:
        """Rows ``sql`` returns, cheaply (an exact count where counting is cheap)."""
        row = self.fetchone(f"SELECT count(*) FROM ({sql}) AS dbdl_count")
        return int(row[0]) if row else 0

    def after_migrate(self) -> None:
        """Called after every `dbdl migrate` (PostgreSQL records where the server finds dbdl_udf)."""

    def doctor(self) -> dict:
        """What the database's own Python can import (empty where the database runs none)."""
        return {}

    def recorded_python_path(self) -> list[str] | None:
        """Where the server's Python imports dbdl_udf from, as `dbdl migrate` recorded it (None
        where the database runs no Python of its own)."""
        return None

    def on_connect(self) -> None:
        """Called once the schema is current (DuckDB registers its UDFs here)."""

    def invalidate(self) -> None:
        """Called after the registry changed (drop caches keyed by model name)."""

    # -- DL-centric execution ------------------------------------------------------------------

    @abstractmethod
    def score_into_temp_table(self, source_sql: str, score: Callable[..., "np.ndarray"], kind: str, table: str, *,
                              signature: "Signature | None" = None, keyed: bool = False,
                              batch_rows: int = 65536) -> None:
        """Stream the rows of ``source_sql`` out in batches of ``batch_rows``, score each with
        ``score(columns)`` (a list of runtime ``Column``s, one per feature column ``dbdl_f``,
        ``dbdl_f1`` …; it returns the predictions of the rows valid in all of them), and stream
        the predictions back into temporary table ``table``: the key columns and
        ``dbdl_prediction`` (NULL for a row not scored) of the kind's type (``kind``: scalar,
        array, class, or text for predict() of class names). ``signature``: the model's, whose
        input widths tell the decoders what bytes mean (a PostgreSQL bytea: float32 or uint8).
        ``keyed``: the source's first column ``dbdl_k`` (the row identity) is the key; otherwise
        the features themselves are."""

    @abstractmethod
    def drop_temp_table(self, table: str) -> None: ...

    def create_temp_table_as(self, table: str, select_sql: str) -> None:
        """Temporary table ``table`` (dbdl's own name) holding the rows of ``select_sql``, computed
        once: every later read sees the same rows (a hybrid plan's numbered feature vectors). Spark,
        which has no temporary tables, caches a temporary view."""
        self.execute(f"CREATE TEMP TABLE {table} AS {select_sql}")

    # -- result cache (planner/cachejoin.py) ---------------------------------------------------

    def cache_key(self, model: "ResolvedModel", features: "exp.Expression") -> "exp.Expression":
        """The expression computing an input's cache key (a digest of its tensor bytes) in SQL."""
        raise NotImplementedError(f"the {self.name} backend has no result cache yet")

    def argmax_sql(self, values: str) -> str:
        """SQL for the 0-based arg-max of an output row (numpy's rules)."""
        raise NotImplementedError(f"the {self.name} backend has no result cache yet")

    def is_base_table(self, name: str) -> bool:
        return False

    def execute_count(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a data-changing statement; the number of rows it changed."""
        raise NotImplementedError

    def analyze(self, table: str, columns: Sequence[str] = ()) -> None:
        """Give the query planner statistics of a table just filled (where it needs them); of
        ``columns`` only, where given (the join keys: an array column's statistics cost most)."""

    def own_sql(self, sql: Any) -> Any:
        """SQL that dbdl wrote (text, or a sqlglot tree, returned in the same form), ready to be
        run with the caller's rights: PostgreSQL names every built-in function and operator in it
        with its schema. Parts of a tree marked ``meta["dbdl_user"]`` (the user's own query) are
        left as they are. Elsewhere: unchanged."""
        return sql

    def equals(self, left: "exp.Expression", right: "exp.Expression") -> "exp.Expression":
        """``left = right`` for the joins dbdl adds to a statement (PostgreSQL names its operator)."""
        import sqlglot.expressions as exp

        return exp.EQ(this=left, expression=right)

    def array_result(self, values: "exp.Expression", width: int | None) -> "exp.Expression":
        """A predict_array result read from a table (relation-centric SQL, the result cache) typed as
        the in-database function types it (DuckDB: FLOAT[width]). Default: unchanged."""
        return values

    def numeric_features(self, features: "exp.Expression", message: str) -> "exp.Expression":
        """``features``, refused with DTypeMismatch(message + their type) where they are not numbers
        (text, booleans) — for SQL that would otherwise cast them silently. Default: unchanged."""
        return features

    def feature_density(self, args: "Sequence[exp.Expression]", width: int) -> float:
        """The share of nonzero values in a sample of a call's feature vectors (its first argument,
        over the rows it is computed from: up to 256 of them), or 1.0 where it cannot be known
        (bound parameters, no ``RelationalSQL.nonzeros``, a failing sample)."""
        sql = self.density_probe(args, width)
        value = None if sql is None else self.sample_value(sql)
        return 1.0 if value is None else min(1.0, max(0.0, float(value) / width))

    def density_probe(self, args: "Sequence[exp.Expression]", width: int) -> str | None:
        """The query ``feature_density`` samples with (the mean count of nonzero values of up to 256
        feature vectors), or None where there is none to run."""
        import sqlglot.expressions as exp

        from ..query import argument_probe

        nonzeros = self.relational.nonzeros
        probe = argument_probe(args[:1]) if nonzeros and width > 0 else None
        if probe is None:
            return None
        probe.set("limit", exp.Limit(expression=exp.Literal.number(256)))
        return (f"SELECT {self.relational.avg}({nonzeros.format(a='dbdl_s.a0')}) "
                f"FROM ({probe.sql(dialect=self.dialect)}) AS dbdl_s")

    def sample_value(self, sql: str) -> Any:
        """The one value a planning probe ``sql`` returns (read-only; run so that a failure leaves the
        caller's transaction as it was), or None where it fails."""
        return None

    def argument_types(self, args: "Sequence[exp.Expression]") -> list | None:
        """The database's types of a predict call's feature arguments (bound, not run), or None where
        they cannot be known before the statement runs."""
        return None

    def argument_forms(self, args: "Sequence[exp.Expression]") -> "list[tuple[str, str]] | None":
        """Per feature argument, what it is and its type as the database names it: ("number", "DOUBLE")
        for one number per row, else "array", "bytes", "text", "boolean" or "other" — read from
        ``argument_types``, bound, not run; None where the types cannot be known before the statement
        runs (bound parameters). A call of one column per feature takes numbers only (planner/rewrite.py)."""
        return None

    def pack_features(self, args: "Sequence[exp.Expression]", width: int) -> "exp.Expression":
        """The ``width`` scalar arguments of a call of one column per feature as one array of float32
        values (``relational.real``), NULL where any of them is NULL (its prediction is NULL, as under
        every strategy): what the in-database functions and the result cache take. The array is
        rendered in the backend's dialect (DuckDB ``[a, b]``, PostgreSQL ``ARRAY[a, b]``, Spark
        ``ARRAY(a, b)``). Only where ``array_features``."""
        import sqlglot.expressions as exp

        real = exp.DataType.build(self.relational.real, dialect=self.dialect)
        values = exp.Array(expressions=[exp.Cast(this=a.copy(), to=real.copy()) for a in args])
        if any(a.find(exp.Placeholder, exp.Parameter) is not None for a in args):
            # a ``?`` written twice would take two parameters: the array alone (a NULL element gives
            # NULL in the in-database functions too; the result cache is not used with parameters)
            return values
        missing = exp.or_(*[exp.Is(this=a.copy(), expression=exp.Null()) for a in args])
        return exp.Case(ifs=[exp.If(this=missing, true=exp.Null())], default=values)

    def predict_call(self, kind: str, model: "ResolvedModel", features: "exp.Expression") -> "exp.Expression":
        """The SQL expression that computes predict/predict_array/predict_class for a resolved model
        in the database (UDF-centric). A backend without in-database Python (``has_python_udfs``
        False) never gets here: the udf strategy is ruled out for it."""
        from ..errors import StrategyUnavailable

        raise StrategyUnavailable(f"the {self.name} backend runs no Python inside the database; use strategy='dl' "
                                  "or 'relation'")

    def predict_call_args(self, kind: str, model: "ResolvedModel", args: "Sequence[exp.Expression]"
                          ) -> "exp.Expression":
        """The UDF-centric expression for a call with one or more feature arguments (``predict('m',
        a, b)``: one per model input, or one vector of them all). ``args`` are the call's own nodes
        (still in the statement, so a backend may read their types); copy what goes into the result.
        The default takes one argument, through ``predict_call``."""
        if len(args) != 1:
            from ..errors import QueryError

            raise QueryError(f"the {self.name} backend takes one features argument per predict call; pass one "
                             "vector of all the model's inputs, concatenated in input order")
        return self.predict_call(kind, model, args[0].copy())

    def unpinned_call_args(self, kind: str, call: "exp.Anonymous") -> "exp.Expression | None":
        """The rewrite of a call whose model is named by a column, or None to spell it as the
        backend's in-database function (planner.rewrite.unpinned_call)."""
        return None

    def relation_feature_problem(self, model: "ResolvedModel", args: "Sequence[exp.Expression]") -> str | None:
        """Why relation-centric SQL cannot take these feature arguments (a nested array, bytes), or None."""
        return None

    @abstractmethod
    def run_query(
        self, sql: str, params: Sequence[Any] = (), models: Sequence["ResolvedModel"] = ()
    ) -> "pa.Table | None":
        """Run a user's statement; dbdl errors raised inside the database come back as themselves.

        ``models`` are the versions the statement was planned with, so that errors can name them."""

    # -- training data ------------------------------------------------------------------------

    @abstractmethod
    def train_export(self, spec: "ExportSpec", progress: bool | None = None) -> "DatasetInfo":
        """Materialize a checked train_export request (``dbdl_udf.datasets.check_spec``) as a dataset
        table and its catalog row, all or nothing; the new dataset's catalog entry."""

    @classmethod
    @abstractmethod
    def open_range_reader(cls, url: str, owner: "Backend | None" = None) -> "RangeReader":
        """A reader of dataset row ranges for the training readers, which run in DataLoader worker
        processes that have no ``Backend``: opened from the URL (``owner``: this process's open
        backend of that URL, whose connection may be shared)."""

    @classmethod
    def database_key(cls, url: str) -> str:
        """A stable text naming the database ``url`` opens, for local caches (the URL without its
        password and query)."""
        from urllib.parse import urlunsplit

        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)
        user = netloc[0].split(":", 1)[0] + "@" if len(netloc) == 2 else ""
        return urlunsplit((parts.scheme, user + netloc[-1], parts.path, "", ""))


def url_scheme(url: str) -> str:
    """A database URL's scheme, lower-cased ("" for a bare path). Read without urlsplit, which refuses
    what is not a host name where one would be (Spark's ``spark://local[2]``)."""
    head, sep, _ = url.partition("://")
    return head.lower() if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", head) else ""


def export_query(spec: "ExportSpec", dialect: Any, statements: int | None = None) -> "exp.Query":
    """train_export's source query, read: one SELECT statement (WITH, joins and UNION allowed), else
    QueryError — the same rule and words on every backend (``statements``: how many statements the
    database's own parser counts, where it can tell)."""
    import sqlglot.expressions as exp

    from dbdl_udf.sqltext import one_statement

    from ..query import parse

    one_statement(spec.query, "train_export")  # the same rule and message as PostgreSQL's server
    trees = parse(spec.query, dialect)
    if trees is None or len(trees) != 1 or statements not in (None, 1) or not isinstance(trees[0], exp.Query):
        raise QueryError("train_export's source query must be one SELECT statement (it may use WITH, joins and "
                         "UNION); check the SQL")
    return trees[0]


def packed_block(info: "DatasetInfo", rows: int) -> tuple["np.ndarray", "np.ndarray", "np.ndarray"]:
    """An empty block of ``rows`` samples: (buffer, features [rows x elements] and labels viewing it)."""
    import math

    import numpy as np

    elements = math.prod(info.shape)
    dtype = np.dtype(info.dtype).newbyteorder("<")
    label_dtype = np.dtype(info.label_dtype).newbyteorder("<")
    split = rows * elements * dtype.itemsize
    buf = np.empty(split + rows * label_dtype.itemsize, dtype=np.uint8)  # not zeroed: every byte is written
    x = np.frombuffer(buf, dtype=dtype, count=rows * elements).reshape(rows, elements)
    y = np.frombuffer(buf, dtype=label_dtype, offset=split, count=rows)
    return buf, x, y


class RangeReader(ABC):
    """Rows of a dataset table by row-id range (the training readers' one query)."""

    @abstractmethod
    def read(self, info: "DatasetInfo", start: int, stop: int) -> tuple["np.ndarray", "np.ndarray"]:
        """Rows [start, stop) in row-id order: (rows x elements) features and the labels. Raises
        DatasetNotFound when the dataset's table is gone (re-exported or dropped meanwhile)."""

    def read_blocks(self, info: "DatasetInfo", bounds: Sequence[tuple[int, int]]
                    ) -> list[tuple["np.ndarray", "np.ndarray", "np.ndarray"]]:
        """Consecutive row ranges ``bounds`` ([(a, b), (b, c), …]) of a dataset of one shape, with
        one query: per range one buffer laid out as the LMDB cache stores a block — the features'
        bytes, then the labels' — and the two arrays viewing it (``packed_block``). A reader that
        can fill the buffers straight from what the database sends overrides this."""
        start, stop = bounds[0][0], bounds[-1][1]
        features, labels = self.read(info, start, stop)
        out = []
        for lo, hi in bounds:
            buf, x, y = packed_block(info, hi - lo)
            x[...] = features[lo - start:hi - start]
            y[...] = labels[lo - start:hi - start]
            out.append((buf, x, y))
        return out

    def close(self) -> None:
        """Release the connection (the reader may be opened again)."""

    @staticmethod
    def gone(info: "DatasetInfo") -> DatasetNotFound:
        """The error for a dataset whose table went away while it was being read."""
        return DatasetNotFound(f"dataset {info.name!r} version {info.version} is gone (re-exported or dropped while "
                               f"it was being read); open it again with db.training_set({info.name!r})")
