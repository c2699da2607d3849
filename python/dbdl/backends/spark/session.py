"""A ``spark://`` URL and its options → the SparkSession dbdl runs on, and the catalog database.

::

    spark://local[2]                      local mode, two cores (what the tests use)
    spark://local                         local mode, every core
    spark://host:7077                     a standalone cluster's master
    spark://yarn   spark://k8s://host:443 other cluster managers, as Spark's --master names them
    spark://local[2]?warehouse=/data/wh&catalog=postgresql://dbdl@db/registry&database=sales

Query parameters (and the same names as keyword arguments of ``dbdl.connect``, which win):
``warehouse`` (spark.sql.warehouse.dir), ``catalog`` (the URL of the database that holds dbdl's
registry; default an embedded DuckDB file in the warehouse), ``database`` (the Spark database user
statements run in; default ``default``), ``data_database`` (where dbdl's own tables go: relation-
centric weights, datasets; default ``dbdl_data``), ``app_name``, and ``conf.<spark key>`` for any
Spark setting (``conf.spark.executor.memory=4g``; keyword: ``conf={...}``).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

from ...errors import ConfigurationError, ConnectionError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_OPTIONS = ("warehouse", "catalog", "database", "data_database", "app_name")
_LOCK = threading.Lock()
_SHIPPED: set[int] = set()  # SparkContexts dbdl_udf was added to (id of the JVM context)


@dataclass
class SparkOptions:
    master: str
    warehouse: str | None = None
    catalog: str | None = None
    database: str = "default"
    data_database: str = "dbdl_data"
    app_name: str = "dbdl"
    conf: dict[str, str] = field(default_factory=dict)

    @property
    def local(self) -> bool:
        return self.master.startswith("local")


def parse_url(url: str, **kwargs: Any) -> SparkOptions:
    """The master and options a ``spark://`` URL names (keyword arguments override the query)."""
    rest = url.split("://", 1)[1] if "://" in url else ""
    where, _, query = rest.partition("?")
    where = unquote(where.rstrip("/"))
    if not where or where == "local":
        master = "local[*]" if where else ""
    elif where.startswith(("local[", "local-cluster[")) or where in ("yarn",) or where.startswith(("k8s://", "mesos://")):
        master = where
    elif re.fullmatch(r"[A-Za-z0-9_.\-]+(:\d+)?(,[A-Za-z0-9_.\-]+(:\d+)?)*", where):
        master = "spark://" + where
    else:
        raise ConnectionError(f"cannot read the Spark master in {url!r}; write spark://local[N], spark://host:7077, "
                              "spark://yarn or spark://k8s://host:port")
    options: dict[str, Any] = {}
    conf: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key.startswith("conf."):
            conf[key[5:]] = value
        elif key in _OPTIONS:
            options[key] = value
        else:
            raise ConfigurationError(f"unknown option {key!r} in the Spark URL {url!r}; dbdl reads "
                                     f"{', '.join(_OPTIONS)} and conf.<spark setting>")
    conf.update({str(k): str(v) for k, v in (kwargs.pop("conf", None) or {}).items()})
    for key in _OPTIONS:
        if kwargs.get(key) is not None:
            options[key] = str(kwargs[key])
    parsed = SparkOptions(master=master, conf=conf, **options)
    for key in ("database", "data_database"):
        if not _NAME.fullmatch(getattr(parsed, key)):
            raise ConfigurationError(f"the Spark {key} {getattr(parsed, key)!r} must be a plain name "
                                     "(letters, digits, underscores)")
    return parsed


def open_session(options: SparkOptions, spark: Any = None) -> Any:
    """The SparkSession for these options: the user's own (``spark``), else a new session of the
    process's SparkContext (started here if none runs yet) — each dbdl connection gets its own
    temporary views, functions and current database, as separate database connections would."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:  # pragma: no cover - the extra is missing
        raise ConnectionError(f"the Spark backend needs pyspark ({exc}); install it with: pip install 'dbdl[spark]'") from exc
    _quiet_logging()
    if spark is not None:
        return spark
    with _LOCK:
        active = SparkSession.getActiveSession() or _default_session(SparkSession)
        if active is not None:
            running = active.sparkContext.master
            if options.master and running != options.master:
                raise ConnectionError(
                    f"this process already runs Spark with master {running!r}; a process has one SparkContext, so "
                    f"it cannot also open {options.master!r} — connect with spark://{running} or pass spark=session")
            if options.warehouse and _same_path(active.conf.get("spark.sql.warehouse.dir"), options.warehouse) is False:
                raise ConnectionError(
                    f"this process's Spark already uses the warehouse {active.conf.get('spark.sql.warehouse.dir')!r}; "
                    f"the warehouse ({options.warehouse!r}) is fixed when Spark starts — leave warehouse= out")
            return active.newSession()
        if not options.master:
            raise ConnectionError("spark:// needs a master: spark://local[2], spark://host:7077, …")
        # executors in local mode (and the driver's own Python UDF workers) run this interpreter,
        # which has dbdl_udf, numpy and onnxruntime; a cluster's executors name theirs in its config
        if options.local:
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        builder = SparkSession.builder.master(options.master).appName(options.app_name)
        settings = {"spark.sql.execution.arrow.pyspark.enabled": "true",
                    "spark.ui.showConsoleProgress": "false",  # dbdl shows its own progress
                    "spark.sql.session.timeZone": "UTC",
                    **options.conf}
        if options.warehouse:
            settings["spark.sql.warehouse.dir"] = options.warehouse
        for key, value in settings.items():
            builder = builder.config(key, value)
        try:
            session = builder.getOrCreate()
        except Exception as exc:  # the JVM did not start: no Java, a bad master
            raise ConnectionError(f"cannot start Spark with master {options.master!r}: {_first_line(exc)} — Spark needs "
                                  "Java 17 or newer (JAVA_HOME or java on PATH)") from exc
        session.sparkContext.setLogLevel(os.environ.get("DBDL_SPARK_LOG_LEVEL", "ERROR"))
        return session.newSession()


def ship_udf_package(spark: Any) -> None:
    """Give a cluster's executors dbdl_udf, the package the UDFs and mapInArrow functions run
    (local mode imports it from this environment). numpy, pyarrow and onnxruntime must be
    installed on the executors (docs/spark.md)."""
    context = spark.sparkContext
    if context.master.startswith("local"):
        return
    key = id(context._jsc)
    with _LOCK:
        if key in _SHIPPED:
            return
        import dbdl_udf

        root = Path(dbdl_udf.__file__).resolve().parent
        path = Path(tempfile.mkdtemp(prefix="dbdl-udf-")) / "dbdl_udf.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(root.rglob("*.py")):
                archive.write(file, Path("dbdl_udf") / file.relative_to(root))
        context.addPyFile(str(path))
        _SHIPPED.add(key)


def default_catalog(warehouse: str) -> str:
    """The catalog database when none is given: an embedded DuckDB file in a local warehouse."""
    path = warehouse[len("file:"):] if warehouse.startswith("file:") else warehouse
    if "://" in path:
        raise ConfigurationError(
            f"the Spark warehouse {warehouse!r} is not a local folder, so dbdl cannot keep its registry beside it; "
            "name a catalog database: spark://…?catalog=postgresql://user@host/db")
    path = re.sub(r"^/+", "/", path)
    os.makedirs(path, exist_ok=True)
    return "duckdb:///" + os.path.join(os.path.abspath(path), "dbdl_catalog.duckdb")


def _default_session(cls: Any) -> Any:
    try:
        return cls._instantiatedSession  # the process's session, when not active on this thread
    except AttributeError:  # pragma: no cover - older pyspark
        return None


def _same_path(a: str | None, b: str) -> bool | None:
    if a is None:
        return None
    norm = lambda p: os.path.abspath(p[5:] if p.startswith("file:") else p).rstrip("/")  # noqa: E731
    return norm(a) == norm(b)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _quiet_logging() -> None:
    # pyspark logs every failed statement as a JSON record at ERROR (SQLQueryContextLogger); dbdl
    # raises its own error for it instead
    logging.getLogger("SQLQueryContextLogger").setLevel(logging.CRITICAL)
    logging.getLogger("py4j").setLevel(logging.WARNING)
