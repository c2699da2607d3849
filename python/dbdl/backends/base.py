"""The interface every backend implements.

A backend is a thin adapter: it runs SQL with bound parameters, moves batches as Arrow, opens
transactions, and knows the few dialect differences (placeholders, types, how predict is spelled
after planning). It knows nothing of the registry's rules or of the planner. Backends register
themselves by URL scheme when their module is imported (see ``Backend.__init_subclass__``).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Sequence
from urllib.parse import urlsplit

from ..errors import ConcurrentChange, ConnectionError, QueryError

if TYPE_CHECKING:
    import pyarrow as pa
    import sqlglot.expressions as exp

    from ..registry import ResolvedModel

# scheme -> module that defines the backend; imported lazily so that a missing driver (psycopg,
# dmPython) only matters to the users of that backend.
BACKEND_MODULES = {
    "duckdb": "dbdl.backends.duckdb",
    "postgresql": "dbdl.backends.postgres",
    "postgres": "dbdl.backends.postgres",
    "dm": "dbdl.backends.dm8",
    "dm8": "dbdl.backends.dm8",
}

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
    #: connect() may apply pending migrations to an existing database (embedded files only)
    auto_upgrade: ClassVar[bool] = False
    #: the database has stored procedures of dbdl's (CALL train_export runs in the server);
    #: without them, db.sql carries out such CALLs in the client
    has_procedures: ClassVar[bool] = False
    #: how the driver spells bound parameters: "qmark" (?) or "format" (%s)
    paramstyle: ClassVar[str] = "qmark"

    _by_scheme: ClassVar[dict[str, type["Backend"]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for scheme in cls.schemes:
            Backend._by_scheme[scheme] = cls

    def __init__(self, url: str) -> None:
        self.url = url

    # -- opening ------------------------------------------------------------------------------

    @staticmethod
    def open(url: str | None = None, **options: Any) -> "Backend":
        url = url or os.environ.get("DBDL_URL") or DEFAULT_URL
        scheme = urlsplit(url).scheme.lower() if "://" in url else ""
        if not scheme:
            # a bare path means an embedded DuckDB file
            url, scheme = f"duckdb:///{url}", "duckdb"
        scheme = scheme.split("+", 1)[0]
        module = BACKEND_MODULES.get(scheme)
        if module is None:
            known = ", ".join(sorted({k + "://" for k in BACKEND_MODULES}))
            raise ConnectionError(f"unknown database URL scheme {scheme!r} in {url!r}; dbdl opens {known}")
        try:
            importlib.import_module(module)
        except ImportError as exc:
            extra = {"postgresql": "postgres", "dm8": "dm", "dm": "dm"}.get(scheme, scheme)
            raise ConnectionError(
                f"the {scheme} backend needs a driver that is not installed ({exc}); "
                f"install it with: pip install 'dbdl[{extra}]'"
            ) from exc
        return Backend._by_scheme[scheme](url, **options)

    # -- SQL primitives -----------------------------------------------------------------------

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one statement with ``?`` placeholders bound to ``params``."""

    @abstractmethod
    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Run one query and return its rows."""

    @abstractmethod
    def fetch_arrow(self, sql: str, params: Sequence[Any] = ()) -> "pa.Table":
        """Run one query and return its result as an Arrow table."""

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

        return catalog.resolve(self, name, version)

    def can_create_tables(self, schema: str) -> bool:
        """Whether this connection may create tables in ``schema`` (relation-centric weights)."""
        return not getattr(self, "read_only", False)

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

        return self.write(lambda: catalog.store_version(
            self, name, sha256=prepared.sha256, onnx_bytes=prepared.onnx_bytes, source=prepared.source,
            signature=prepared.signature, n_params=prepared.n_params, flops_per_row=prepared.flops_per_row,
            opset=prepared.opset, torch_program=prepared.torch_program, description=description,
            promote=promote, original_bytes=getattr(prepared, "original_bytes", None),
            rewrites=getattr(prepared, "rewrites", ())))

    def promote_version(self, name: str, version: int) -> None:
        from dbdl_udf import catalog

        self.write(lambda: catalog.promote(self, name, version))

    def rollback_version(self, name: str) -> int:
        from dbdl_udf import catalog

        return self.write(lambda: catalog.rollback(self, name))

    def drop_versions(self, name: str, version: int | None) -> int:
        from dbdl_udf import catalog

        return self.write(lambda: catalog.drop(self, name, version))

    def set_model_options(self, name: str, options: dict[str, Any]) -> dict[str, Any]:
        from dbdl_udf import catalog

        return self.write(lambda: catalog.set_options(self, name, options))

    def clear_model_cache(self, name: str) -> None:
        from dbdl_udf import catalog

        self.write(lambda: catalog.clear_cache(self, name))

    def set_calibration(self, values: dict[str, float]) -> None:
        with self.transaction():
            for key, value in values.items():
                self.execute("DELETE FROM dbdl.calibration WHERE key = ?", (key,))
                self.execute("INSERT INTO dbdl.calibration (key, value) VALUES (?, ?)", (key, float(value)))

    def forget_dataset(self, name: str) -> None:
        """Delete a dataset's catalog row (inside the caller's transaction)."""
        from dbdl_udf import datasets

        datasets.forget(self, name)

    def estimate_rows(self, sql: str) -> int:
        """Rows ``sql`` returns, cheaply (an exact count where counting is cheap)."""
        row = self.fetchone(f"SELECT count(*) FROM ({sql}) AS dbdl_count")
        return int(row[0]) if row else 0

    def after_migrate(self) -> None:
        """Called after every `dbdl migrate` (PostgreSQL records where the server finds dbdl_udf)."""

    def doctor(self) -> dict:
        """What the database's own Python can import (empty where the database runs none)."""
        return {}

    def on_connect(self, db: Any) -> None:
        """Called once the schema is current (DuckDB registers its UDFs here)."""

    def invalidate(self) -> None:
        """Called after the registry changed (drop caches keyed by model name)."""

    # -- result cache (dbdl.cache) ------------------------------------------------------------

    #: a pseudo-column identifying a base table's rows across the statements of one query, or None
    cache_identity: ClassVar[str | None] = None

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

    def analyze(self, table: str) -> None:
        """Give the query planner statistics of a table just filled (where it needs them)."""

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

    @abstractmethod
    def predict_call(self, kind: str, model: "ResolvedModel", features: "exp.Expression") -> "exp.Expression":
        """The SQL expression that computes predict/predict_array/predict_class for a resolved model."""

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
