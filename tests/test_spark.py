"""What is Spark's own in the Spark backend: its URL and options, a session the user already has,
dbdl's tables read from the catalog database, models loaded once per executor Python worker and
pinned for the whole statement, EXPLAIN, and names that cannot reach Spark SQL as text.

The behavioural suite (test_behaviour.py and the others in conftest.SPARK_MODULES) runs over Spark
too; these are the cases that only Spark has."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import sqlglot
from conftest import BACKENDS, make_mlp, export_onnx, run_onnx

import dbdl
from dbdl.backends.spark.session import SparkOptions, parse_url
from dbdl.planner import plan_statement

ATOL = 1e-5


@pytest.fixture
def sdb(tmp_path: Path, request: pytest.FixtureRequest):
    database = dbdl.connect(BACKENDS["spark"](tmp_path, request))
    yield database
    database.close()


@pytest.fixture
def t(sdb, features) -> str:
    sdb.create_table("t", {"id": np.arange(len(features)), "feats": features})
    return "t"


# -- the URL and its options (no Spark needed) ----------------------------------------------------


@pytest.mark.parametrize("url, master", [
    ("spark://local[2]", "local[2]"), ("spark://local", "local[*]"), ("spark://", ""),
    ("spark://host:7077", "spark://host:7077"), ("spark://a:7077,b:7077", "spark://a:7077,b:7077"),
    ("spark://yarn", "yarn"), ("spark://k8s://https://api:443", "k8s://https://api:443"),
    ("spark://local-cluster[2,1,1024]", "local-cluster[2,1,1024]"),
])
def test_parse_url_reads_the_master(url, master):
    assert parse_url(url).master == master


def test_parse_url_reads_options_and_keywords_win():
    options = parse_url("spark://local[2]?warehouse=/w&catalog=postgresql%3A%2F%2Fu%40h%2Fdb&database=sales"
                        "&data_database=sales_dbdl&app_name=x&conf.spark.executor.memory=4g",
                        database="other", conf={"spark.sql.shuffle.partitions": 8})
    assert options == SparkOptions(master="local[2]", warehouse="/w", catalog="postgresql://u@h/db", database="other",
                                   data_database="sales_dbdl", app_name="x",
                                   conf={"spark.executor.memory": "4g", "spark.sql.shuffle.partitions": "8"})
    assert parse_url("spark://local[2]") == SparkOptions(master="local[2]")  # the defaults


@pytest.mark.parametrize("url, error, match", [
    ("spark://local[2]?warehose=/w", dbdl.ConfigurationError, "unknown option 'warehose'"),
    ("spark://local[2]?database=a;DROP", dbdl.ConfigurationError, "plain name"),
    ("spark://local[2]?data_database=x%60y", dbdl.ConfigurationError, "plain name"),
    ("spark://bad host!", dbdl.ConnectionError, "cannot read the Spark master"),
])
def test_parse_url_refuses_what_it_cannot_read(url, error, match):
    with pytest.raises(error, match=match):
        parse_url(url)


# -- a session the user has ---------------------------------------------------------------------


def test_connect_with_an_existing_session_shares_its_views_and_tables(spark_context, tmp_path, mlp_onnx, features):
    session = spark_context.newSession()
    session.createDataFrame([(i, [float(v) for v in features[i]]) for i in range(5)], "id long, feats array<float>") \
        .createOrReplaceTempView("mine")
    db = dbdl.connect(spark=session, catalog=f"duckdb:///{tmp_path / 'cat.duckdb'}", database="own_session_db")
    try:
        assert db.backend.spark is session
        db.models.register("m", mlp_onnx)
        # the user's temporary view, scored by dbdl in the same session
        got = sorted(db.sql("SELECT id, predict_array('m', feats) FROM mine").fetchall())
        np.testing.assert_allclose(np.array([r[1] for r in got]), run_onnx(mlp_onnx, {"x": features[:5]}), atol=ATOL)
        # dbdl's table, in the user's session's current database
        db.create_table("made", {"id": np.arange(3)})
        assert session.sql("SELECT sum(id) FROM own_session_db.made").collect()[0][0] == 3
    finally:
        db.close()
    # closing dbdl's connection leaves the user's session working
    assert session.sql("SELECT count(*) FROM mine").collect()[0][0] == 5


# -- dbdl's own tables live in the catalog database -----------------------------------------------


def test_statements_on_dbdl_tables_run_on_the_catalog(sdb, t, mlp_onnx, mlp2_onnx):
    sdb.models.register("m", mlp_onnx)
    sdb.models.register("m", mlp2_onnx)
    assert sdb.sql("SELECT count(*) FROM dbdl.blobs").scalar() == 2
    # Spark's spelling, transpiled to the catalog's: backticks, a CTE, a bound parameter
    got = sdb.sql("WITH v AS (SELECT `name`, version FROM dbdl.model_versions WHERE version >= ?) "
                  "SELECT name, max(version) FROM v GROUP BY name", [1]).fetchall()
    assert got == [("m", 2)]
    assert sdb.sql("SELECT count(*) FROM spark_catalog.dbdl.model_versions").scalar() == 2
    # none of it reached Spark: there is no Spark database named dbdl
    assert not sdb.backend.spark.catalog.databaseExists("dbdl")


def test_a_statement_mixing_dbdl_and_spark_tables_says_how_to_split_it(sdb, t, mlp_onnx):
    sdb.models.register("m", mlp_onnx)
    with pytest.raises(dbdl.QueryError, match=r"catalog database.*db\.models"):
        sdb.sql("SELECT t.id FROM t JOIN dbdl.model_versions AS v ON v.version = t.id")
    with pytest.raises(dbdl.QueryError, match="dbdl.model_catalog"):
        sdb.sql("SELECT count(*) FROM t WHERE id IN (SELECT version FROM dbdl.model_catalog)")


# -- models on the executors ------------------------------------------------------------------------


def test_the_model_is_loaded_once_per_python_worker(sdb, t, features, tmp_path):
    """Six tasks of ten-row Arrow batches on local[2]: every Python worker that ran one of them built
    the model's session exactly once, for all its tasks and batches, over two statements."""
    model = export_onnx(make_mlp((8, 5, 2), seed=11), 8)  # bytes no worker has seen
    sdb.models.register("once", model)
    log = tmp_path / "builds"
    log.mkdir()
    sdb.backend.build_log = str(log)
    sdb.backend.spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "10")
    sql = "SELECT id, predict_array('once', feats) FROM (SELECT /*+ REPARTITION(6) */ * FROM t) AS s"
    expected = run_onnx(model, {"x": features})
    for _ in range(2):
        got = sorted(sdb.sql(sql).fetchall())
        np.testing.assert_allclose(np.array([r[1] for r in got]), expected, atol=ATOL)
    tasks = [tuple(map(int, line.split())) for f in log.iterdir() for line in f.read_text().splitlines()]
    assert len(tasks) == 12 and sum(batches for _, _, batches in tasks) >= 2 * 30  # 300 rows in 10-row batches
    built: dict[int, int] = {}
    for pid, builds, _ in tasks:
        built[pid] = built.get(pid, 0) + builds
    assert set(built.values()) == {1}, built


def test_a_version_promoted_after_planning_does_not_reach_the_statement(sdb, t, mlp_onnx, mlp2_onnx, features):
    sdb.models.register("m", mlp_onnx)
    tree = sqlglot.parse_one("SELECT id, predict_array('m', feats) FROM t", read=sdb.backend.dialect)
    planned = plan_statement(sdb.backend, tree)
    assert [m.version for m in planned.models] == [1]
    sdb.models.register("m", mlp2_onnx)  # version 2, now the serving one
    assert sdb.models.get("m").version == 2
    got = sorted(sdb.backend.run_query(planned.sql).to_pylist(), key=lambda r: r["id"])
    np.testing.assert_allclose(np.array([r["predict_array"] for r in got]), run_onnx(mlp_onnx, {"x": features}),
                               atol=ATOL)
    # the next statement is planned with version 2
    got = sorted(sdb.sql("SELECT id, predict_array('m', feats) FROM t").fetchall())
    np.testing.assert_allclose(np.array([r[1] for r in got]), run_onnx(mlp2_onnx, {"x": features}), atol=ATOL)


def test_a_model_named_by_a_column_is_pinned_per_reference(sdb, t, mlp_onnx, mlp2_onnx, features):
    sdb.models.register("a", mlp_onnx)
    sdb.models.register("b", mlp2_onnx)
    rows = sorted(sdb.sql("SELECT id, predict_class(CASE WHEN id < 10 THEN 'a' WHEN id < 20 THEN 'b@1' END, feats) "
                          "FROM t WHERE id < 30").fetchall())
    a, b = (run_onnx(m, {"x": features[:30]}).argmax(axis=1) for m in (mlp_onnx, mlp2_onnx))
    assert rows == [(i, int(a[i]) if i < 10 else int(b[i]) if i < 20 else None) for i in range(30)]


def test_several_array_arguments_are_one_vector_per_input(sdb, multi_io_onnx):
    sdb.models.register("multi", multi_io_onnx)
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((4, 2)).astype(np.float32)
    sdb.create_table("ab", {"id": np.arange(4), "a": a, "b": b})
    got = sorted(sdb.sql("SELECT id, predict_array('multi', a, b) FROM ab").fetchall())
    np.testing.assert_allclose(np.array([r[1] for r in got]), run_onnx(multi_io_onnx, {"a": a, "b": b}), atol=ATOL)
    with pytest.raises(dbdl.QueryError, match="2 input.*3 feature arguments"):
        sdb.sql("SELECT predict_array('multi', a, b, b) FROM ab")


# -- EXPLAIN ----------------------------------------------------------------------------------------


def test_explain_gives_dbdls_choice_and_sparks_plan_of_the_pinned_statement(sdb, t, mlp_onnx):
    sdb.models.register("m", mlp_onnx)
    rows = sdb.sql("EXPLAIN SELECT id, predict_array('m', feats) FROM t", strategy="udf").fetchall()
    ours, spark = rows[0][0], "\n".join(r[0] for r in rows[1:])
    assert "model m@1, ~300 rows" in ours and "chosen: udf (forced by the caller)" in ours
    assert re.search(r"dbdl_array_m_1_0_[0-9a-f]{12}", spark) and "Physical Plan" in spark
    # db.explain of the EXPLAIN statement is db.explain of the statement; ~300: Spark's own statistics
    assert [p.describe() for p in sdb.explain("EXPLAIN SELECT predict_array('m', feats) FROM t")] == \
        [p.describe() for p in sdb.explain("SELECT predict_array('m', feats) FROM t")]
    assert sdb.backend.estimate_rows("SELECT 1 FROM t WHERE id < 1000") == 300  # a WHERE: counted


def test_row_estimates_come_from_sparks_statistics_without_a_job(sdb, t):
    context = sdb.backend.spark.sparkContext
    sdb.sql("ANALYZE TABLE t COMPUTE STATISTICS")
    context.setJobGroup("dbdl_estimate", "the planner's row estimate")
    try:
        assert sdb.backend.estimate_rows("SELECT 1 FROM t") == 300
    finally:
        context.setJobGroup(None, None)
    assert list(context.statusTracker().getJobIdsForGroup("dbdl_estimate")) == []  # read from the catalog


# -- names never reach Spark SQL as text ---------------------------------------------------------


@pytest.mark.parametrize("ref", ["m`; DROP TABLE t; --", "m') OR 1=1 --", "m@1:y`)", "m\\'", "dbdl_array_m_1"])
def test_hostile_references_are_refused_before_spark_reads_them(sdb, t, mlp_onnx, ref):
    sdb.models.register("m", mlp_onnx)
    quoted = "'" + ref.replace("\\", "\\\\").replace("'", "\\'") + "'"  # a Spark string literal of ref
    with pytest.raises((dbdl.InvalidName, dbdl.ModelNotFound, dbdl.ShapeMismatch)):
        sdb.sql(f"SELECT predict_array({quoted}, feats) FROM t")
    sdb.create_table("refs", {"r": [ref]})
    with pytest.raises((dbdl.InvalidName, dbdl.ModelNotFound, dbdl.ShapeMismatch)):
        sdb.sql("SELECT predict_array(r, feats) FROM t, refs")
    assert sdb.sql("SELECT count(*) FROM t").scalar() == 300
    # every function dbdl registered is dbdl_<kind>_<valid model name>_<version>_<output>_<hash>
    for name in sdb.backend._udfs:
        assert re.fullmatch(r"dbdl_(scalar|array|class|text)_[A-Za-z_][A-Za-z0-9_]*_\d+_\d+_[0-9a-f]{12}", name), name
