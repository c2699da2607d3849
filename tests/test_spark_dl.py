"""DL-centric execution on Spark (backends/spark/dl.py, dbdl_udf/sparkdl.py): every partition of the
source is scored on an executor (mapInArrow), the predictions are materialized once as a temporary
view, and the values equal onnxruntime's — or torch's, for a model registered from torch when torch
runs on the executors."""

from __future__ import annotations

import os

import dbdl
import numpy as np
import pytest
import torch
from conftest import run_onnx
from dbdl.backends.spark.dl import RUNTIME_CONF, last_run
from dbdl.strategies.dl import scorer

pytestmark = pytest.mark.parametrize("url", ["spark"], indirect=True)

ROWS = 240
ATOL = 1e-5


@pytest.fixture
def sdb(db, features, mlp):
    """A Spark database with t(id, feats array<float>, grp) of 240 rows and model ``m`` registered
    from torch (the stored torch program and its ONNX export)."""
    db.create_table("t", {"id": np.arange(ROWS), "feats": features[:ROWS], "grp": np.arange(ROWS) % 3})
    db.models.register("m", mlp, example=torch.randn(1, 8))
    yield db
    db.backend.spark.conf.unset(RUNTIME_CONF)


def test_partitions_are_scored_on_executors_once_and_equal_onnxruntime(sdb, features):
    """The predictions come from a MapInArrow job whose tasks ran in Python workers, not the driver:
    both partitions, every row once, in Arrow batches of ``batch_rows``; reading the view twice
    scores nothing more (the executors' report is the job's accumulator, which a rescoring would
    add to); dropping the view releases the stored predictions."""
    backend = sdb.backend
    model = backend.resolve("m")
    # two partitions of the source (REPARTITION(2)), kept as two tasks: AQE would coalesce them
    backend.spark.conf.set("spark.sql.adaptive.coalescePartitions.enabled", "false")
    source = "SELECT /*+ REPARTITION(2) */ id AS dbdl_k, feats AS dbdl_f FROM t"
    backend.score_into_temp_table(source, scorer(backend, model, "array"), "array", "dbdl_dl_test", keyed=True,
                                  batch_rows=50)
    run = last_run(backend)
    assert "MapInArrow" in run.plan
    first = run.stats
    assert first["rows"] == first["scored"] == ROWS and first["partitions"] == 2
    assert first["batches"] >= ROWS // 50
    assert first["pids"] and os.getpid() not in first["pids"]
    assert set(first["runtimes"]) == {"onnxruntime-cpu"}
    for _ in range(2):
        got = dict(backend.fetchall("SELECT dbdl_k, dbdl_prediction FROM dbdl_dl_test"))
    assert run.stats == first
    expected = run_onnx(backend.model_bytes(model.sha256), {model.signature.inputs[0].name: features[:ROWS]})
    np.testing.assert_allclose(np.array([got[i] for i in range(ROWS)]), expected, atol=ATOL)
    assert run.frame.storageLevel.useMemory
    backend.drop_temp_table("dbdl_dl_test")  # the view and its stored predictions go
    assert not backend.spark.catalog.tableExists("dbdl_dl_test") and not run.frame.storageLevel.useMemory


def test_sql_under_dl_equals_onnxruntime_with_nulls_and_every_kind(sdb, features):
    """db.sql(strategy="dl"): the distinct feature vectors scored on the executors, joined back; a
    NULL row and a row with a NULL element give NULL; predict_class is the arg-max."""
    sdb.sql("INSERT INTO t VALUES (1000, NULL, 0), (1001, array(1, 2, NULL, 4, 5, 6, 7, 8), 1)")
    model = sdb.backend.resolve("m")
    expected = run_onnx(sdb.backend.model_bytes(model.sha256), {model.signature.inputs[0].name: features[:ROWS]})
    got = dict(sdb.sql("SELECT id, predict_array('m', feats) FROM t", strategy="dl").fetchall())
    assert got[1000] is None and got[1001] is None
    np.testing.assert_allclose(np.array([got[i] for i in range(ROWS)]), expected, atol=ATOL)
    stats = last_run(sdb.backend).stats  # the statement's join read the stored predictions: scored once
    assert stats["rows"] == ROWS + 1 and stats["scored"] == ROWS and os.getpid() not in stats["pids"]
    classes = dict(sdb.sql("SELECT id, predict_class('m', feats) FROM t WHERE grp = 1", strategy="dl").fetchall())
    assert classes == {**{i: int(expected[i].argmax()) for i in range(ROWS) if i % 3 == 1}, 1001: None}


def test_torch_on_the_executors_equals_torch(sdb, features, mlp):
    """spark.dbdl.dl.runtime=torch: the executors run the stored torch program (CPU here, the task's
    GPU where an executor has one) and give torch's own output."""
    sdb.backend.spark.conf.set(RUNTIME_CONF, "torch")
    got = dict(sdb.sql("SELECT id, predict_array('m', feats) FROM t", strategy="dl").fetchall())
    assert set(last_run(sdb.backend).stats["runtimes"]) in ({"torch-cpu"}, {"torch-cuda:0"})
    with torch.no_grad():
        expected = mlp(torch.from_numpy(features[:ROWS])).numpy()
    np.testing.assert_allclose(np.array([got[i] for i in range(ROWS)]), expected, rtol=1e-6, atol=1e-6)
    sdb.backend.spark.conf.set(RUNTIME_CONF, "gpu-please")
    with pytest.raises(dbdl.ConfigurationError, match="spark.dbdl.dl.runtime='gpu-please' is not one of auto, torch"):
        sdb.sql("SELECT id, predict_array('m', feats) FROM t", strategy="dl")


def test_bad_input_is_the_dbdl_error_and_leaves_no_view(sdb):
    """An executor's dbdl error reaches the caller as the same dbdl error class and message as on
    DuckDB (ShapeMismatch for a wrong width, DTypeMismatch for booleans, ModelRuntimeError for a
    model that mixes rows or fails in onnxruntime), and no temporary view is left behind."""
    from test_errors import ODD_BATCH_FAILS, ROW_MIXERS

    sdb.models.register("mix", ROW_MIXERS["concat_rows"])
    sdb.models.register("frail", ODD_BATCH_FAILS)
    with pytest.raises(dbdl.ModelRuntimeError, match=r"'mix@1' returned output 'y' of shape \[\d+, 8\] for a batch"):
        sdb.sql("SELECT id, predict_array('mix', feats) FROM t", strategy="dl")
    with pytest.raises(dbdl.ModelRuntimeError, match="model 'frail@1' failed in onnxruntime"):
        sdb.sql("SELECT id, predict_array('frail', feats) FROM t WHERE id < 5", strategy="dl")
    with pytest.raises(dbdl.ShapeMismatch, match="'m@1' takes 8 features per row"):
        sdb.sql("SELECT id, predict_array('m', slice(feats, 1, 5)) FROM t", strategy="dl")
    with pytest.raises(dbdl.DTypeMismatch, match="booleans"):
        sdb.sql("SELECT id, predict_array('m', transform(feats, v -> v > 0)) FROM t", strategy="dl")
    assert [t.name for t in sdb.backend.spark.catalog.listTables() if t.isTemporary] == []


def test_a_temporary_table_is_computed_once(sdb):
    """create_temp_table_as (a hybrid plan's numbered feature vectors): a cached view whose rows do
    not change between reads, even for a query whose values would (rand()); dropped, it is gone."""
    sdb.backend.create_temp_table_as("dbdl_hyb_test_src", "SELECT id, rand() AS r FROM t")
    first = sorted(sdb.backend.fetchall("SELECT id, r FROM dbdl_hyb_test_src"))
    assert len(first) == ROWS and sorted(sdb.backend.fetchall("SELECT id, r FROM dbdl_hyb_test_src")) == first
    sdb.backend.drop_temp_table("dbdl_hyb_test_src")
    assert not sdb.backend.spark.catalog.tableExists("dbdl_hyb_test_src")
