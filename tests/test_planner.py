"""The planner: estimates, choices, hints, ruling out, EXPLAIN and calibration."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import export_onnx, make_mlp, per_backend, run_onnx
from conftest import DM8_NO_ARRAYS

import dbdl


@pytest.fixture
def scored(db, features):
    model = export_onnx(make_mlp((8, 16, 3)), 8)
    db.models.register("m", model)
    db.create_table("t", {"id": np.arange(len(features)), "feats": features})
    return model


def test_explain_lists_every_candidate_and_the_choice(db, scored):
    plan = db.explain("SELECT id, predict_array('m', feats) FROM t WHERE id < 100")
    assert len(plan) == 1
    call = plan[0]
    assert call.model == "m@1" and call.flops_per_row > 0 and call.param_bytes == 4 * (8 * 16 + 16 + 16 * 3 + 3)
    assert [e.strategy for e in call.candidates] == ["udf", "relation", "dl", "hybrid"]
    assert all(e.feasible for e in call.candidates)
    best = min(call.candidates, key=lambda e: e.seconds)
    assert call.choice == best.strategy and not call.forced
    text = str(plan)
    assert "chosen:" in text and "relation" in text and "dl" in text


def test_sql_explain_gives_the_choice_then_the_databases_plan_of_the_pinned_statement(db, scored):
    rows = db.sql("EXPLAIN SELECT id, predict_class('m', feats) FROM t", strategy="udf").fetchall()
    assert "model m@1, ~300 rows" in rows[0][-1] and "chosen: udf (forced by the caller)" in rows[0][-1]
    assert len(rows) > 1 and "m@1" not in "".join(str(v) for r in rows[1:] for v in r)  # the database's own plan
    assert [p.describe() for p in db.explain("EXPLAIN SELECT predict_class('m', feats) FROM t")] == \
        [p.describe() for p in db.explain("SELECT predict_class('m', feats) FROM t")]


def test_choice_follows_the_estimates_as_rows_grow(db, scored):
    small = db.explain("SELECT predict_class('m', feats) FROM t WHERE id < 3")[0]
    large = db.explain("SELECT predict_class('m', feats) FROM t")[0]
    assert small.rows < 20 and large.rows == pytest.approx(300, rel=0.1)
    costs = {e.strategy: e.seconds for e in small.candidates}
    # each strategy's estimate grows with the rows it has to score
    assert all(e.seconds > costs[e.strategy] for e in large.candidates)


def test_relation_layouts_can_be_forced(db, scored, features):
    expected = run_onnx(scored, {"x": features})
    layouts = per_backend(db, duckdb=("element", "blocked"), postgres=("element",), spark=("element", "blocked"))
    for layout in layouts:
        got = db.sql("SELECT id, predict_array('m', feats) FROM t ORDER BY id", strategy=f"relation:{layout}").fetchall()
        np.testing.assert_allclose(np.array([r[1] for r in got]), expected, rtol=1e-4, atol=1e-5)
    for layout in [lay for lay in ("element", "blocked") if lay not in layouts]:  # and the others are refused
        with pytest.raises(dbdl.StrategyUnavailable, match=f"layouts here: {', '.join(layouts)}"):
            db.sql("SELECT predict_array('m', feats) FROM t", strategy=f"relation:{layout}")


def test_hint_and_argument_force_a_strategy(db, scored, features):
    hinted = db.explain("SELECT /*+ dbdl strategy=relation */ predict_array('m', feats) FROM t")
    assert hinted.choices() == ["relation"] and hinted[0].forced
    assert db.explain("SELECT predict_array('m', feats) FROM t", strategy="dl").choices() == ["dl"]
    got = db.sql("SELECT /*+ dbdl strategy=relation */ id, predict_array('m', feats) FROM t ORDER BY id").fetchall()
    np.testing.assert_allclose(np.array([r[1] for r in got]), run_onnx(scored, {"x": features}), atol=1e-5)


@DM8_NO_ARRAYS
def test_model_over_the_memory_budget_runs_relation_centric(db, features):
    features = features[:60]  # few rows: the relation-centric join has rows x 128 x 128 terms
    big = make_mlp((8, 128, 128, 3), seed=4)
    db.models.register("big", big, example=torch.randn(1, 8))
    db.create_table("t", {"id": np.arange(len(features)), "feats": features})
    db.memory_budget = 50_000  # below the model's 4 * 18k parameter bytes
    plan = db.explain("SELECT predict_array('big', feats) FROM t")[0]
    # the model stays in tables: whole (relation) or its first layers (hybrid: the small last layer's
    # sub-model fits the budget), whichever the estimates say
    feasible = [e for e in plan.candidates if e.feasible]
    assert plan.choice in ("relation", "hybrid") and plan.choice == min(feasible, key=lambda e: e.seconds).strategy
    reasons = {e.strategy: e.reason for e in plan.candidates if not e.feasible}
    assert set(reasons) == {"udf", "dl"} and all("over the memory budget of 50,000" in r for r in reasons.values())
    for setting in per_backend(db, duckdb=["SET memory_limit = '256MB'"], postgres=[], spark=[]):
        db.sql(setting)
    got = np.array([r[1] for r in db.sql("SELECT id, predict_array('big', feats) FROM t ORDER BY id").fetchall()])
    np.testing.assert_allclose(got, big(torch.from_numpy(features)).detach().numpy(), rtol=1e-4, atol=1e-4)
    for forced in ("udf", "dl"):
        with pytest.raises(dbdl.StrategyUnavailable, match="over the memory budget"):
            db.sql("SELECT predict_array('big', feats) FROM t", strategy=forced)


def test_predict_without_from_can_only_run_in_the_database(db, scored):
    plan = db.explain(per_backend(db, duckdb="SELECT predict_class('m', [1, 2, 3, 4, 5, 6, 7, 8])",
                                  postgres="SELECT predict_class('m', ARRAY[1, 2, 3, 4, 5, 6, 7, 8]::real[])",
                                  spark="SELECT predict_class('m', array(1, 2, 3, 4, 5, 6, 7, 8))"))[0]
    assert plan.choice == "udf"
    assert {e.strategy: e.feasible for e in plan.candidates} == {"udf": True, "relation": False, "dl": False,
                                                                    "hybrid": False}


@pytest.mark.notimpl(["dm8"], reason="dbdl calibrate measures over a table of FLOAT[8] features (calibrate.py), "
                                       "which DM8 cannot store")
def test_calibrate_stores_constants_the_planner_reads(db):
    measured = db.calibrate(rows=2000, progress=False)
    expected = {"udf_row_s", "udf_flops_per_s", "dl_setup_s", "dl_byte_s", "dl_flops_per_s", "rel_setup_s",
                "rel_weight_s", "rel_value_s"}
    assert set(measured) == expected | per_backend(db, duckdb={"rel_dot_s"}, postgres=set(), spark={"rel_dot_s"})
    assert all(v >= 0 for v in measured.values()) and measured["udf_flops_per_s"] > 0
    stored = dict(db.sql("SELECT key, value FROM dbdl.calibration").fetchall())
    assert stored == pytest.approx(measured)
    from dbdl.strategies.base import constants

    assert constants(db.backend)["udf_row_s"] == pytest.approx(measured["udf_row_s"])
    assert db.models.list() == []  # the calibration models are gone


@DM8_NO_ARRAYS
@pytest.mark.notimpl(["spark"], reason="Spark's default session catalog is in memory, the process's own: the CLI's "
                                        "process does not see the table this one created (a Hive metastore would "
                                        "share it; docs/spark.md)")
def test_explain_cli(url, mlp_onnx):
    with dbdl.connect(url) as db:
        db.models.register("m", mlp_onnx)
        db.create_table("t", {"id": np.arange(5), "feats": np.ones((5, 8), np.float32)})
    out = subprocess.run([sys.executable, "-m", "dbdl.cli", "explain", url, "SELECT predict_class('m', feats) FROM t"],
                         capture_output=True, text=True, check=True).stdout
    assert "model m@1" in out and "chosen:" in out


def test_ctes_parameters_and_create_table_as_under_every_strategy(db, scored, features, strategy):
    expected = run_onnx(scored, {"x": features}).argmax(axis=1)
    got = db.sql("WITH u AS (SELECT * FROM t WHERE id < 100) SELECT sum(predict_class('m', feats)) FROM u",
                 strategy=strategy).scalar()
    assert got == int(expected[:100].sum())
    db.sql("CREATE TABLE scored AS SELECT id, predict_class('m', feats) AS c FROM t", strategy=strategy)
    assert [r[1] for r in db.sql("SELECT id, c FROM scored ORDER BY id").fetchall()] == expected.tolist()
    row = [float(v) for v in features[0]]
    placeholders = ", ".join("?" * 8)
    array = per_backend(db, duckdb="[{}]", postgres="ARRAY[{}]", spark="array({})").format(placeholders)
    one = db.sql(f"SELECT predict_class('m', {array}) FROM t WHERE id = 0", row).scalar()
    assert one == expected[0]


def test_dropping_a_model_drops_its_weight_tables(db, scored):
    db.sql("SELECT predict_class('m', feats) FROM t", strategy="relation")
    def weight_tables():  # the backend's own listing (Spark has no information_schema)
        return sum(t.startswith("rel_") for t in db.backend.tables_in(db.backend.data_schema))
    assert weight_tables() > 0
    db.models.drop("m")
    assert weight_tables() == 0


@DM8_NO_ARRAYS
def test_no_feasible_strategy_is_an_error_naming_each_reason(db, multi_io_onnx):
    db.models.register("multi", multi_io_onnx)
    db.create_table("ab", {"id": np.arange(3), "feats": np.ones((3, 5), np.float32)})
    db.memory_budget = 10
    with pytest.raises(dbdl.StrategyUnavailable,
                       match="udf: model needs.*relation: the SQL compiler takes models with one input.*dl: model needs"):
        db.sql("SELECT predict_array('multi', feats) FROM ab")


def test_hint_inside_a_string_is_data_and_dl_cleans_up_after_a_failed_plan(db, scored):
    got = db.sql("SELECT '/*+ dbdl strategy=bogus */' AS s, predict_class('m', feats) AS c FROM t WHERE id = 0")
    assert got.fetchall()[0][0] == "/*+ dbdl strategy=bogus */"
    with pytest.raises(dbdl.ModelNotFound):
        db.sql("SELECT predict_class('m', feats) AS a, predict_class('nope', feats) AS b FROM t", strategy="dl")
    temp = per_backend(db, duckdb="SELECT count(*) FROM duckdb_tables() WHERE temporary",
                       postgres="SELECT count(*) FROM pg_tables WHERE tablename LIKE 'dbdl_dl_%'",
                       spark="SHOW VIEWS LIKE 'dbdl_*'")  # Spark: the views themselves, none left
    assert db.sql(temp).fetchall() in ([(0,)], [])


@pytest.mark.never(["postgres"], reason="DuckDB's row-group parallelism")
@pytest.mark.never(["spark"], reason="DuckDB's row-group parallelism")
def test_duckdb_udf_estimate_counts_the_cores_a_small_table_leaves_idle(db, scored):
    """DuckDB scans a table on one thread per 122,880-row group: a 300-row table runs the UDF on
    one core, so its compute term is the whole-machine one divided by that share."""
    import os

    plan = db.explain("SELECT predict_class('m', feats) FROM t")[0]
    udf = next(e for e in plan.candidates if e.strategy == "udf")
    whole = plan.rows * plan.flops_per_row / db.backend.cost_defaults["udf_flops_per_s"]
    assert udf.terms["compute"] == pytest.approx(whole * (os.cpu_count() or 1))
