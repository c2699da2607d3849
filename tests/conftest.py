"""Fixtures: real databases, real models.

Every behavioural test takes ``db`` (or ``url``), parametrized over the backends in BACKENDS; a
backend that cannot run here is skipped with its reason, never silently dropped.

Gaps are data (tests/README.md): a test that a backend or a strategy cannot run says so in a
marker, never with ``if db.backend.name == ...`` or ``pytest.skip`` in its body::

    @pytest.mark.notimpl(["duckdb"], reason="predict_into is PostgreSQL's procedure")
    @pytest.mark.notimpl(strategies=["relation"], raises=dbdl.StrategyUnavailable, reason="...")
    @pytest.mark.never(["duckdb"], reason="DuckDB has no roles")

What differs between the backends by design (a type's spelling, a trait such as "dbdl's functions
run inside the server") is data here too: ``per_backend(db, duckdb=..., postgres=...)`` and
``has(db, trait)`` (TRAITS).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import dbdl
import dbdl.strategies

import dm8server
import pgserver

# Under pytest-xdist (make test) each worker process gets its share of the cores for torch's
# intra-op threads: two workers of two threads each on two cores lose more to contention than
# they gain.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

# backend name -> factory(tmp_path, request) -> fresh, empty database URL
BACKENDS: dict[str, Callable[[Path, pytest.FixtureRequest], str]] = {}


def _duckdb_url(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return f"duckdb:///{tmp_path / 'test.duckdb'}"


_database_counter = iter(range(1_000_000))


def _postgres_url(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    server = request.getfixturevalue("pg_server")
    name = f"dbdl_test_{next(_database_counter)}"
    url = server.create_database(name)
    request.addfinalizer(lambda: server.drop_database(name))
    return url


def _spark_url(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    # one SparkContext per test process (spark_context); each test its own Spark databases (its
    # tables, dbdl's weight and dataset tables) and its own catalog file (the registry)
    request.getfixturevalue("spark_context")
    name = f"t{next(_database_counter)}_{os.getpid()}"
    return f"spark://local[2]?database={name}&data_database={name}_data&catalog=duckdb:///{tmp_path / 'catalog.duckdb'}"


BACKENDS["duckdb"] = _duckdb_url
BACKENDS["postgres"] = _postgres_url
BACKENDS["spark"] = _spark_url


def _dm8_url(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    # DBDL_DM8_URL's server (tests/dm8server.py): dbdl's schemas and the test user's own tables are
    # dropped before each test, through a fresh connection; refused unless the user is a dedicated
    # one and DBDL_DM8_RESET=1
    live = request.getfixturevalue("dm8_server")
    request.addfinalizer(live.hold())  # one DM8 case at a time, across xdist's processes too
    live.reset()
    return live.url


# DM8's cases exist only where a server is given (DBDL_DM8_URL): none can be had here, and without
# one the test ids, `url`'s params and per_backend stay as they are (tests/test_dm8_live.py shows
# the gap, skipped with dm8server.SKIP_REASON)
if dm8server.configured():
    BACKENDS["dm8"] = _dm8_url

#: every backend markers, per_backend and TRAITS may name: BACKENDS', and DM8's, whose cases are
#: collected only when DBDL_DM8_URL is set
KNOWN_BACKENDS = frozenset(BACKENDS) | {"dm8"}

#: Spark settings of the test runs: small shuffles, no UI, Arrow batches of the default size
SPARK_TEST_CONF = {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "2",
                   "spark.default.parallelism": "2", "spark.driver.memory": "2g",
                   "spark.sql.adaptive.enabled": "true"}


@pytest.fixture(scope="session")
def spark_context(tmp_path_factory):
    """One local-mode SparkContext for the whole run of this process (a JVM takes ~5-9 s to start);
    every Spark connection of the tests is a new session of it. Skipped where Spark cannot run
    (no pyspark, no Java); CI sets DBDL_REQUIRE_SPARK=1, which makes that a failure."""
    why = None
    try:
        import pyspark  # noqa: F401
    except ImportError as exc:
        why = f"pyspark is not installed ({exc}); make test installs it (pip install 'dbdl[spark]')"
    if why is None and shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        why = "no Java (java on PATH or JAVA_HOME); make test installs default-jre-headless"
    if why is not None:
        if os.environ.get("DBDL_REQUIRE_SPARK") == "1":
            pytest.fail(f"Spark is required (DBDL_REQUIRE_SPARK=1) but cannot run here: {why}")
        pytest.skip(f"Spark cannot run here: {why}")
    from dbdl.backends.spark.session import SparkOptions, open_session

    warehouse = tmp_path_factory.mktemp("spark-warehouse")
    session = open_session(SparkOptions(master="local[2]", warehouse=str(warehouse), conf=dict(SPARK_TEST_CONF)))
    yield session
    session.sparkContext.stop()


@pytest.fixture(scope="session")
def dm8_server() -> "dm8server.LiveServer":
    """The DM8 server DBDL_DM8_URL names. The URL was given on purpose: a server the suite may not
    reset, or no dmPython, is a failure, never a skip."""
    try:
        live = dm8server.server(dm8server.configured() or "")
    except dm8server.RefusedServer as exc:
        pytest.fail(f"DM8 live suite refused: {exc}")
    try:
        import dmPython  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"DBDL_DM8_URL is set but dmPython cannot be imported ({exc}); pip install 'dbdl[dm8]'")
    return live


def _unavailable(reason: str):
    # CI sets DBDL_REQUIRE_POSTGRES=1: there a missing server is a failure, not a skip
    if os.environ.get("DBDL_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL is required (DBDL_REQUIRE_POSTGRES=1) but cannot run here: {reason}")
    pytest.skip(f"PostgreSQL cannot run here: {reason}")


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """One real PostgreSQL server for the whole run (initdb + pg_ctl as the postgres user).

    The server's Python imports dbdl_udf, numpy and onnxruntime from this checkout and this
    environment; where the postgres OS user cannot read them (a checkout under /root, say), the
    few packages it needs are copied to a readable folder and given to `dbdl migrate`."""
    ok, why = pgserver.available()
    if not ok:
        _unavailable(why)
    from dbdl.backends.postgres import default_python_path

    blocked = [p for p in default_python_path() if not pgserver.postgres_can_read(p)[0]]
    copied = None
    if blocked:
        copied = Path(tempfile.mkdtemp(prefix="dbdl-server-python-"))
        copied.chmod(0o755)
        site = Path(np.__file__).resolve().parent.parent
        for name in ("numpy", "numpy.libs", "onnxruntime", "onnx"):
            if (site / name).exists():
                shutil.copytree(site / name, copied / name)
        shutil.copytree(Path(__file__).resolve().parent.parent / "udf" / "dbdl_udf", copied / "dbdl_udf")
        subprocess.run(["chmod", "-R", "a+rX", str(copied)], check=True)
        readable, blocker = pgserver.postgres_can_read(copied)
        if not readable:
            _unavailable(f"the server cannot read {copied} either: {blocker}")
        os.environ["DBDL_SERVER_PYTHON_PATH"] = json.dumps([str(copied)])
    try:
        with pgserver.PostgresServer() as server:
            yield server
    finally:
        if copied is not None:
            os.environ.pop("DBDL_SERVER_PYTHON_PATH", None)
            shutil.rmtree(copied, ignore_errors=True)


@pytest.fixture(params=sorted(BACKENDS))
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return BACKENDS[request.param](tmp_path, request)


#: the execution strategies' names, from dbdl's registry: the one list that tests parametrize over.
#: Hybrid plans (a prefix as SQL, the rest a sub-model) are left out: each runs the relation and the
#: DL-centric machinery this list already covers, so the behavioural suite under hybrid would double
#: its time for little; tests/test_hybrid.py tests them (``HYBRID``)
HYBRID = "hybrid"
STRATEGIES = [s for s in dbdl.strategies.STRATEGIES if s != HYBRID]


@pytest.fixture(params=STRATEGIES)
def strategy(request) -> str:
    """How predict runs: the in-database function, the model compiled to SQL joins, or the rows
    streamed out to the DL runtime."""
    return request.param


# -- gaps as data: the notimpl / never markers --------------------------------------------------

#: the fixtures (and direct parametrizations) whose param is a backend name, a key of BACKENDS
BACKEND_PARAMS = ("url", "zoo_db", "hybrid_db")
#: the param that names an execution strategy (the ``strategy`` fixture, or a test's own parametrize)
STRATEGY_PARAM = "strategy"
#: marker name -> how its skip reason begins
GAP_MARKERS = {"notimpl": "not implemented", "never": "does not apply"}


def _gap_usage(item: pytest.Item, mark: pytest.Mark, problem: str) -> pytest.UsageError:
    return pytest.UsageError(f"{item.nodeid}: @pytest.mark.{mark.name}{mark.args or ''} {problem}")


def _gap_applies(item: pytest.Item, mark: pytest.Mark) -> str | None:
    """Where the marker's gap lies for this test ("postgres", "strategy relation", ...), or None
    where this test's backend and strategy are outside it."""
    if len(mark.args) > 1 or set(mark.kwargs) - {"backends", "strategies", "raises", "reason"}:
        raise _gap_usage(item, mark, "takes (backends, *, strategies=, raises=, reason=)")
    backends = mark.args[0] if mark.args else mark.kwargs.get("backends")
    strategies = mark.kwargs.get("strategies")
    if not mark.kwargs.get("reason"):
        raise _gap_usage(item, mark, "needs reason=: every gap is explained")
    if backends is None and strategies is None:
        raise _gap_usage(item, mark, "names no backends and no strategies")
    params = getattr(item, "callspec", None)
    params = params.params if params is not None else {}
    where = []
    if backends is not None:
        if isinstance(backends, str) or not set(backends) <= KNOWN_BACKENDS:
            raise _gap_usage(item, mark, f"backends must be a list of {sorted(KNOWN_BACKENDS)}")
        backend = next((params[p] for p in BACKEND_PARAMS if p in params), None)
        if backend is None:
            raise _gap_usage(item, mark, f"names backends, but the test takes none of {BACKEND_PARAMS}")
        if backend not in backends:
            return None
        where.append(backend)
    if strategies is not None:
        if isinstance(strategies, str) or not set(strategies) <= set(STRATEGIES):
            raise _gap_usage(item, mark, f"strategies must be a list of {STRATEGIES}")
        if STRATEGY_PARAM not in params:
            raise _gap_usage(item, mark, "names strategies, but the test is not parametrized by strategy")
        if params[STRATEGY_PARAM] not in strategies:
            return None
        where.append(f"strategy {params[STRATEGY_PARAM]}")
    return ", ".join(where)


#: the test modules whose Spark cases `make test` runs: the behavioural suite and the suites of
#: what differs on Spark (registry, bad input, planner, training data, the compiled SQL). Each Spark
#: case costs about a second of Spark jobs, so the other modules' Spark cases — the same code paths
#: over more models — run with DBDL_SPARK_ALL=1 (`make test-spark-all`), and are skipped, with this
#: reason, in make test.
SPARK_MODULES = {"test_behaviour", "test_errors", "test_registration", "test_training", "test_planner", "test_spark",
                 "test_spark_data", "test_spark_dl", "test_spark_relation"}

#: Spark cases of SPARK_MODULES that only make test-spark-all runs, each for its cost in make test's
#: time budget (test id -> why): the code they cover runs in make test on DuckDB and PostgreSQL
SPARK_ALL_ONLY = {
    "test_planner.py::test_calibrate_stores_constants_the_planner_reads[spark]":
        "dbdl calibrate times every strategy on Spark (about 45 s of Spark jobs); DuckDB's and PostgreSQL's "
        "calibration run in make test",
}


def _spark_case(item: pytest.Item) -> bool:
    params = getattr(item, "callspec", None)
    params = params.params if params is not None else {}
    return any(params.get(p) == "spark" for p in BACKEND_PARAMS)


#: the test modules whose DM8 cases run when DBDL_DM8_URL is set: the behavioural suite and the
#: suites of registration, bad input, training data, the planner and the migrations (docs/dm8.md,
#: "Running the live suite"); the other modules' DM8 cases are skipped with the reason below
DM8_MODULES = {"test_behaviour", "test_errors", "test_registration", "test_training", "test_planner", "test_wide",
               "test_migrations"}


def _dm8_case(item: pytest.Item) -> bool:
    params = getattr(item, "callspec", None)
    params = params.params if params is not None else {}
    return any(params.get(p) == "dm8" for p in BACKEND_PARAMS)


#: DM8's gaps by design that hold for whole groups of cases, as data (each applies like a
#: never(["dm8"]) marker on every test it covers; tests/README.md):
#: the fixtures that store FLOAT[] feature columns — DM8 has no array columns (a feature vector there
#: is one column per feature: the wide call form) — fixture -> what it stores
DM8_ARRAY_FIXTURES = {"table": "t(id, feats FLOAT[8], grp)", "odd": "o(id, feats FLOAT[8])",
                      "scored": "t(id, feats FLOAT[8])"}
#: the strategy DM8 cannot run: its external functions are C or Java only (and off by default)
DM8_NO_STRATEGIES = {"udf": "UDF-centric execution is unavailable on DM8: its external functions are C or Java only, "
                            "off by default (the planner says so)"}
#: the markers of the other DM8 gaps by design, for the tests of DM8_MODULES
DM8_NO_ARRAYS = pytest.mark.never(["dm8"], reason="DM8 has no array columns: the test stores FLOAT[] (or list) "
                                                  "features; a DM8 feature vector is one column per feature")
DM8_NO_CACHE = pytest.mark.never(["dm8"], reason="DM8 has no result cache (no dbdl.cache_stats): docs/dm8.md")


def _dm8_gap(item: pytest.Item) -> str | None:
    """The reason a DM8 case is skipped by the groups above, or None."""
    params = item.callspec.params
    arrays = sorted(set(item.fixturenames) & set(DM8_ARRAY_FIXTURES))
    if arrays:
        return (f"does not apply for dm8: DM8 has no array columns, and fixture {arrays[0]} stores "
                f"{DM8_ARRAY_FIXTURES[arrays[0]]} (a DM8 feature vector is one column per feature)")
    if params.get(STRATEGY_PARAM) in DM8_NO_STRATEGIES:
        return f"does not apply for dm8, strategy {params[STRATEGY_PARAM]}: {DM8_NO_STRATEGIES[params[STRATEGY_PARAM]]}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Turn each applicable notimpl / never marker into a skip (no raises=) or a strict xfail that
    must raise that error (raises=): once the gap is closed the test passes, and fails as XPASS."""
    everything = os.environ.get("DBDL_SPARK_ALL") == "1"
    for item in items:
        if not everything and _spark_case(item) and item.module.__name__.rsplit(".", 1)[-1] not in SPARK_MODULES:
            item.add_marker(pytest.mark.skip(reason="Spark runs the behavioural suite and its own suites in make test; "
                                                    "this module's Spark cases run with DBDL_SPARK_ALL=1 "
                                                    "(make test-spark-all), for the time budget"))
            continue
        if not everything and item.nodeid.rsplit("/", 1)[-1] in SPARK_ALL_ONLY:
            item.add_marker(pytest.mark.skip(reason="runs with DBDL_SPARK_ALL=1 (make test-spark-all): "
                                                    + SPARK_ALL_ONLY[item.nodeid.rsplit("/", 1)[-1]]))
            continue
        if _dm8_case(item) and item.module.__name__.rsplit(".", 1)[-1] not in DM8_MODULES:
            item.add_marker(pytest.mark.skip(reason="DM8's live suite runs the modules of conftest's DM8_MODULES; "
                                                    "this module's DM8 cases are not wired yet (docs/dm8.md)"))
            continue
        if _dm8_case(item) and _dm8_gap(item) is not None:
            item.add_marker(pytest.mark.skip(reason=_dm8_gap(item)))
            continue
        for name, label in GAP_MARKERS.items():
            for mark in item.iter_markers(name):
                where = _gap_applies(item, mark)
                if where is None:
                    continue
                reason = f"{label} for {where}: {mark.kwargs['reason']}"
                raises = mark.kwargs.get("raises")
                if raises is None:
                    item.add_marker(pytest.mark.skip(reason=reason))
                else:
                    item.add_marker(pytest.mark.xfail(strict=True, raises=raises, reason=reason))


def skip_model_gap(strategy: str, model: str, reason: str) -> None:
    """A gap that depends on the model, not on the backend or strategy alone (the IR cannot compile
    this zoo model, say): known only once the test has the model, so skipped from the body, always
    with the same words and the planner's own reason."""
    # reported at the test, not here (what a skip marker does)
    raise pytest.skip.Exception(f"{strategy}-centric execution cannot run {model}: {reason}",
                                _use_item_location=True)


# -- what differs between the backends by design -------------------------------------------------


def backend_name(db_or_name) -> str:
    """The BACKENDS key of a database, a backend name, or a URL (postgresql://... is "postgres")."""
    if not isinstance(db_or_name, str):
        return db_or_name.backend.name
    if db_or_name in BACKENDS:
        return db_or_name
    if db_or_name.startswith("dm://"):  # DM8's URL scheme is not its name
        return "dm8"
    name = next((name for name in BACKENDS if db_or_name.startswith(name)), None)
    if name is None:
        raise ValueError(f"{db_or_name!r} is none of the backends {sorted(BACKENDS)} nor one of their URLs")
    return name


#: the backends every per_backend call names; the others (Spark, whose cases run in some modules
#: only: SPARK_MODULES) are named where their cases run, and a case of a backend left out fails
CORE_BACKENDS = frozenset({"duckdb", "postgres"})


def per_backend(db_or_name, **values):
    """This backend's one of several spellings or expected values, named for every backend:
    ``per_backend(db, duckdb="FLOAT[8]", postgres="real[]", spark="array<float>")``."""
    name = backend_name(db_or_name)
    if not CORE_BACKENDS <= set(values) <= KNOWN_BACKENDS or name not in values:
        raise TypeError(f"per_backend needs a value for each of {sorted(CORE_BACKENDS | {name})} "
                        f"(of {sorted(KNOWN_BACKENDS)}), got {sorted(values)}")
    return values[name]


#: trait -> the backends that have it: design differences a test reads with ``has(db, trait)``
TRAITS: dict[str, frozenset[str]] = {
    # dbdl's functions and procedures run inside the database server (PL/Python): callable without
    # dbdl's client in between, registration rewrites recorded by the server, the cache filled by
    # the server's own scoring only (docs/security.md)
    "in_server": frozenset({"postgres"}),
    # the udf strategy scores one row per call (PostgreSQL's predict() is a scalar function)
    "udf_row_at_a_time": frozenset({"postgres"}),
    # one process holds the database file for writing: DataLoader workers open it read-only, so
    # the client's connection is closed before they start
    "single_writer_file": frozenset({"duckdb"}),
    # train_export writes rows of one shape as blocks of many samples (dataset format 2)
    "blocked_datasets": frozenset({"postgres"}),
    # CALL dbdl.train_export returns its result row (DuckDB's CALL is a table function; DM8 has no
    # procedures of dbdl's, and db.sql carries out the CALL in the client, as on DuckDB)
    "call_returns_rows": frozenset({"duckdb", "dm8"}),
    # no array columns (a feature vector is one column per feature): no in-database function, no
    # hybrid plan (its SQL prefix hands an array on), predict_array's values as JSON text
    "no_arrays": frozenset({"dm8"}),
}
assert all(set(backends) <= KNOWN_BACKENDS for backends in TRAITS.values())


def has(db_or_name, trait: str) -> bool:
    return backend_name(db_or_name) in TRAITS[trait]


def array_values(value) -> list | None:
    """A predict_array value as a list: a list or array as it is, DM8's JSON text read (TRAITS
    "no_arrays": docs/dm8.md)."""
    if value is None:
        return None
    return json.loads(value) if isinstance(value, str) else list(value)


def release_for_workers(db) -> None:
    """Before DataLoader workers read a dataset: DuckDB's file takes one writer and the workers open
    it read-only, so the client's connection is closed; PostgreSQL's stays open."""
    if has(db, "single_writer_file"):
        db.close()


@pytest.fixture
def db(url: str) -> Iterator[dbdl.Database]:
    database = dbdl.connect(url)
    yield database
    database.close()


# -- models ------------------------------------------------------------------------------------


def make_mlp(sizes=(8, 16, 3), seed: int = 0, final=None) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    layers = layers[:-1]
    if final is not None:
        layers.append(final)
    return torch.nn.Sequential(*layers).eval()


def export_onnx(module: torch.nn.Module, width: "int | tuple[int, ...]", dtype=torch.float32, **options) -> bytes:
    """What a user's own torch.onnx.export writes (TorchScript exporter, dynamic batch axis), for
    rows of ``width`` values or of a per-row ``shape`` tuple (of ``dtype``: torch.int64 for the
    token ids of an embedding); ``options`` go to torch.onnx.export (opset_version=…)."""
    shape = tuple(width) if isinstance(width, (tuple, list)) else (width,)
    example = torch.randn(2, *shape) if dtype.is_floating_point else torch.zeros(2, *shape, dtype=dtype)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buf, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, **options)
    return buf.getvalue()


@pytest.fixture(scope="session")
def mlp() -> torch.nn.Module:
    return make_mlp((8, 16, 3), seed=0)


@pytest.fixture(scope="session")
def mlp_onnx(mlp) -> bytes:
    return export_onnx(mlp, 8)


@pytest.fixture(scope="session")
def mlp2_onnx() -> bytes:
    """A second version of the same architecture, other weights."""
    return export_onnx(make_mlp((8, 16, 3), seed=1), 8)


@pytest.fixture(scope="session")
def scorer_onnx() -> bytes:
    """One value per row (a probability)."""
    return export_onnx(make_mlp((8, 4, 1), seed=2, final=torch.nn.Sigmoid()), 8)


@pytest.fixture(scope="session")
def multi_io_onnx() -> bytes:
    """Two inputs (a: 3, b: 2 features) and two outputs (logits: 4 values, score: 1 value)."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((5, 4)).astype(np.float32)
    v = rng.standard_normal((4, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Concat", ["a", "b"], ["ab"], axis=1),
        helper.make_node("MatMul", ["ab", "W"], ["logits"]),
        helper.make_node("MatMul", ["logits", "V"], ["s"]),
        helper.make_node("Sigmoid", ["s"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes, "multi_io",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4]),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n", 1])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(v, "V")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def run_onnx(model_bytes: bytes, feeds: dict[str, np.ndarray], output: int = 0) -> np.ndarray:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[output]


def check_ir_against_onnxruntime(model_bytes: bytes, x: np.ndarray) -> None:
    """The IR of a one-input model ("x") holds every operator, compiles to SQL, and its numpy
    evaluation of rows ``x`` matches onnxruntime (values, shape, per-row output shape)."""
    import onnx

    from dbdl.ir import from_onnx

    graph = from_onnx(onnx.load_from_string(model_bytes))
    assert graph.unsupported == []
    assert graph.relational == (True, "")
    expected = run_onnx(model_bytes, {"x": x})
    got = graph.run({"x": x})[0]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert graph.output_shape() == expected.shape[1:]


def relation_sql_mismatches(db, models: dict[str, tuple[bytes, tuple[int, ...]]], rows_for,
                            strategy: str = "relation", column_for=None, table_prefix: str = "t") -> list[str]:
    """Each one-input model of ``models`` (name -> (ONNX bytes, per-row shape)) registered in
    ``db`` and run with predict_array and ``strategy`` (relation-centric, or one of its layouts)
    over rows ``rows_for(shape)`` plus a last row of NULL features: what differs from onnxruntime
    (NULL features must give NULL). ``column_for(rows)`` makes the table's column (default: the
    rows flattened, a FLOAT[n] column; e.g. a BIGINT[] column of token ids), in tables named
    ``table_prefix`` and a number."""
    failures = []
    for k, (name, (model_bytes, shape)) in enumerate(sorted(models.items())):
        x = rows_for(shape)
        n = len(x)
        expected = run_onnx(model_bytes, {"x": x}).reshape(n, -1)
        table = f"{table_prefix}{k}"
        db.create_table(table, {"id": np.arange(n), "x": x.reshape(n, -1) if column_for is None else column_for(x)})
        db.sql(f"INSERT INTO {table} (id) VALUES ({n})")
        db.models.register(name, model_bytes)
        rows = sorted(db.sql(f"SELECT id, predict_array('{name}', x) FROM {table}", strategy=strategy).fetchall())
        assert [r[0] for r in rows] == list(range(n + 1))
        if rows[-1][1] is not None:
            failures.append(f"{name}: NULL features gave {rows[-1][1]!r}")
        got = np.array([list(r[1]) for r in rows[:-1]], dtype=np.float64)
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
            failures.append(f"{name}: got {got.tolist()}, onnxruntime {expected.tolist()}")
    return failures


@pytest.fixture(scope="session")
def features() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((300, 8)).astype(np.float32)


@pytest.fixture
def table(db, features) -> str:
    """Table t(id, feats FLOAT[8] / real[], grp) with 300 rows."""
    db.create_table("t", {"id": np.arange(len(features)), "feats": features, "grp": np.arange(len(features)) % 3})
    return "t"
