"""Every failure a user can cause is a clear dbdl error, under every strategy and on every backend,
and leaves nothing half-written: models that mix rows or fail inside onnxruntime, bad model
references, bad predict_into arguments, out-of-range options, boolean features, stacked statements."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import has, per_backend, run_onnx
from conftest import DM8_NO_ARRAYS, DM8_NO_CACHE
from onnx import TensorProto as T
from onnx import helper
from onnx import numpy_helper as nh

import dbdl


def _model(nodes, out_shape, inits=(), out_type=T.FLOAT, opset: int = 17) -> bytes:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("y", out_type, out_shape)], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _ints(name, values):
    return nh.from_array(np.array(values, np.int64), name)


def _runtime_ints(name: str, values) -> list:
    """Nodes computing the int64 vector ``values`` from x (x's max * 0 + values), so that shape
    inference cannot know it and the declared output shape stands."""
    return [helper.make_node("ReduceMax", ["x"], [f"{name}_m"], keepdims=0),
            helper.make_node("Mul", [f"{name}_m", "zero"], [f"{name}_z"]),
            helper.make_node("Add", [f"{name}_z", f"{name}_c"], [f"{name}_f"]),
            helper.make_node("Cast", [f"{name}_f"], [name], to=T.INT64)]


def _runtime_consts(name: str, values) -> list:
    return [nh.from_array(np.array(values, np.float32), f"{name}_c")]


ZERO = nh.from_array(np.array(0, np.float32), "zero")

#: models whose output does not have one row per input row, though they declare it
ROW_MIXERS = {
    # 2N rows for N
    "concat_rows": _model([helper.make_node("Concat", ["x", "x"], ["y"], axis=0)], ["n", 8]),
    "tile_rows": _model([helper.make_node("Tile", ["x", "r"], ["y"])], ["n", 8], [_ints("r", [2, 1])]),
    # every row flattened into one long vector: [8N] for N rows
    "reshape_flat": _model([helper.make_node("Reshape", ["x", "s"], ["y"])], ["m"], [_ints("s", [-1])]),
    # one row for any N, declared as if it followed the batch (onnxruntime's shape inference sees
    # through it: refused at registration)
    "mean_over_rows": _model([helper.make_node("ReduceMean", ["x"], ["y"], axes=[0], keepdims=1)], ["n", 8]),
    # the same, out of sight of shape inference: axes computed at run time
    "mean_over_rows_runtime": _model([*_runtime_ints("a", [0]), helper.make_node("ReduceMean", ["x", "a"], ["y"])],
                                     ["n", 8], [ZERO, *_runtime_consts("a", [0])], opset=18),
}

#: declares 3 values per row, returns 8 (a Tile whose repeats shape inference cannot see)
WRONG_WIDTH = _model([*_runtime_ints("r", [1, 1]), helper.make_node("Tile", ["x", "r"], ["y"])], ["n", 3],
                     [ZERO, *_runtime_consts("r", [1, 1])])

#: fails inside onnxruntime on odd batch sizes (8N values into rows of 16)
ODD_BATCH_FAILS = _model([helper.make_node("Reshape", ["x", "s16"], ["h"]), helper.make_node("Reshape", ["h", "s8"], ["y"])],
                         ["n", 8], [_ints("s16", [-1, 16]), _ints("s8", [-1, 8])])

#: asks for 2^40 floats per row at run time
HUGE_ALLOCATION = _model([helper.make_node("Slice", ["x", "st", "en", "ax"], ["h"]), *_runtime_ints("big", [1, 1 << 40]),
                          helper.make_node("Expand", ["h", "big"], ["y"])], ["n", "k"],
                         [_ints("st", [0]), _ints("en", [1]), _ints("ax", [1]), ZERO,
                          *_runtime_consts("big", [1, 1 << 40])])


def temp_tables(db) -> list[str]:
    names = per_backend(
        db, duckdb=lambda: db.backend.fetchall("SELECT table_name FROM duckdb_tables() WHERE temporary"),
        postgres=lambda: db.backend.fetchall("SELECT relname::text FROM pg_class WHERE relnamespace = "
                                             "pg_my_temp_schema() AND relkind = 'r'"),
        spark=lambda: [(t.name,) for t in db.backend.spark.catalog.listTables() if t.isTemporary])
    return [r[0] for r in names()]


def call(db, sql: str, params=()):
    """A CALL statement with ? parameters (dbdl runs DuckDB's itself; PostgreSQL's are the server's)."""
    if has(db, "in_server"):
        return db.backend.execute(sql, params)
    return db.sql(sql, list(params))


def registry_counts(db) -> tuple[int, int, int]:
    # dbdl's own tables are the catalog database's (Spark's is DuckDB or PostgreSQL; elsewhere the database itself)
    return tuple(db.backend.catalog.fetchone(f"SELECT count(*) FROM dbdl.{t}")[0]
                 for t in ("models", "model_versions", "blobs"))


@pytest.fixture
def odd(db, features):
    """Table o: 5 rows (an odd batch under every strategy)."""
    db.create_table("o", {"id": np.arange(5), "feats": features[:5]})
    return "o"


# -- a model's output per batch ------------------------------------------------------------------


@pytest.mark.parametrize("mixer", sorted(ROW_MIXERS))
def test_a_model_that_mixes_rows_is_an_error_naming_model_and_shapes(db, table, features, strategy, mixer):
    if mixer == "mean_over_rows":
        with pytest.raises(dbdl.InvalidModel, match="fixed batch size of 1.*one output row per input row"):
            db.models.register("mix", ROW_MIXERS[mixer])
        assert registry_counts(db) == (0, 0, 0)
        return
    db.models.register("mix", ROW_MIXERS[mixer])
    if strategy == "udf" and mixer == "mean_over_rows_runtime" and has(db, "udf_row_at_a_time"):
        # PostgreSQL's predict() scores one row per call, a batch of one, and the mean over a
        # batch of one row is that row: exactly what onnxruntime returns for it
        rows = db.sql("SELECT id, predict_array('mix', feats) FROM t ORDER BY id LIMIT 3", strategy=strategy)
        for i, value in rows.fetchall():
            np.testing.assert_allclose(value, run_onnx(ROW_MIXERS[mixer], {"x": features[i:i + 1]})[0], atol=1e-6)
        return
    before = temp_tables(db)
    with pytest.raises((dbdl.ModelRuntimeError, dbdl.StrategyUnavailable)) as caught:
        db.sql("SELECT id, predict_array('mix', feats) FROM t", strategy=strategy).fetchall()
    message = str(caught.value)
    if isinstance(caught.value, dbdl.StrategyUnavailable):  # relation-centric compiles per-row operators only
        assert strategy == "relation" and "not supported" in message
    else:
        assert "'mix@1'" in message and "rows" in message and "shape [" in message
    assert temp_tables(db) == before


def test_output_with_a_fixed_batch_axis_is_refused_at_registration(db):
    fixed = _model([helper.make_node("ReduceMean", ["x"], ["y"], axes=[0], keepdims=1)], [1, 8])
    with pytest.raises(dbdl.InvalidModel, match=r"output 'y' has shape \[1, 8\].*one output row per input row"):
        db.models.register("fixed", fixed)
    assert registry_counts(db) == (0, 0, 0)


def test_an_output_wider_than_declared_is_an_error(db, table, strategy):
    db.models.register("wide", WRONG_WIDTH)
    with pytest.raises((dbdl.ModelRuntimeError, dbdl.StrategyUnavailable)) as caught:
        db.sql("SELECT id, predict_array('wide', feats) FROM t", strategy=strategy).fetchall()
    if isinstance(caught.value, dbdl.ModelRuntimeError):
        assert "'wide@1' returned 8 values per row" in str(caught.value) and "declares 3" in str(caught.value)
    else:
        assert strategy == "relation"


@pytest.mark.notimpl(["duckdb"], raises=dbdl.QueryError, reason="predict_into is PostgreSQL's procedure")
@pytest.mark.notimpl(["spark"], raises=dbdl.QueryError, reason="predict_into is PostgreSQL's procedure")
def test_predict_into_checks_the_output_per_batch(db, table):
    db.models.register("mix", ROW_MIXERS["concat_rows"])
    with pytest.raises(dbdl.ModelRuntimeError, match=r"'mix@1' returned output 'y' of shape \[600, 8\] for a batch "
                                                     r"of 300 rows"):
        db.backend.execute("CALL dbdl.predict_into('mix', 'SELECT id, feats FROM t', 'scores')")
    assert db.backend.fetchone("SELECT to_regclass('scores')")[0] is None


# -- onnxruntime failures at run time ---------------------------------------------------------------


@pytest.mark.parametrize("model", ["odd_batch", "huge_allocation"])
def test_onnxruntime_failures_are_model_runtime_errors(db, odd, strategy, model):
    data = {"odd_batch": ODD_BATCH_FAILS, "huge_allocation": HUGE_ALLOCATION}[model]
    db.models.register("frail", data)
    before = temp_tables(db)
    with pytest.raises((dbdl.ModelRuntimeError, dbdl.StrategyUnavailable)) as caught:
        db.sql("SELECT id, predict_array('frail', feats) FROM o", strategy=strategy).fetchall()
    if isinstance(caught.value, dbdl.ModelRuntimeError):
        assert "model 'frail@1' failed in onnxruntime" in str(caught.value)
    else:
        assert strategy == "relation"
    assert temp_tables(db) == before
    # the class crosses the SQL boundary on PostgreSQL with its dbdl. prefix
    if has(db, "in_server"):
        with pytest.raises(dbdl.ModelRuntimeError, match="frail@1"):
            db.backend.fetchall("SELECT dbdl.predict_array('frail', feats) FROM o")


@DM8_NO_ARRAYS
@pytest.mark.never(["spark"], reason="Spark splits the rows over partitions (4 rows as 1 + 3, as it may), and a DL-centric "
                                     "batch is a partition's share: no even batch is asked for")
def test_odd_batch_model_still_scores_even_batches(db, features):
    """The failure is the batch's, not the model's: the same model runs on an even batch."""
    db.create_table("e", {"id": np.arange(4), "feats": features[:4]})
    db.models.register("frail", ODD_BATCH_FAILS)
    got = np.array([r[1] for r in sorted(db.sql("SELECT id, predict_array('frail', feats) FROM e",
                                                strategy="dl").fetchall())], np.float32)
    np.testing.assert_allclose(got, run_onnx(ODD_BATCH_FAILS, {"x": features[:4]}), atol=1e-6)


# -- bad arguments -----------------------------------------------------------------------------------


@pytest.mark.never(["spark"], strategies=["relation", "dl"],
                   reason="names.py refuses the reference before a strategy is chosen, the same code on every "
                          "strategy: Spark, whose cases cost a Spark table each, runs the udf case of every reference")
@pytest.mark.parametrize("ref", ["m:", "m@1:", "", "@", "m@", "m@0", "m@x", "m@-1", "m@1.5", "m@١", "m@99999999999",
                                 "m" * 70, "m:" + "o" * 600, " ", "m@1@2"])
def test_bad_model_references(db, table, mlp_onnx, strategy, ref):
    db.models.register("m", mlp_onnx)
    with pytest.raises(dbdl.InvalidName, match="not valid|version|empty output|characters|no model"):
        db.sql("SELECT id, predict_array(?, feats) FROM t".replace("?", "'" + ref.replace("'", "''") + "'"),
               strategy=strategy)
    assert db.sql("SELECT count(*) FROM t").scalar() == 300


@pytest.mark.parametrize("ref", ["m:", "m@0", "m@x", "m" * 70, "m@99999999999"])
def test_bad_references_reach_the_server_functions_as_invalid_name(db, table, mlp_onnx, ref):
    """The same refusal when the reference is a value the planner never sees."""
    db.models.register("m", mlp_onnx)
    db.create_table("refs", {"r": [ref]})
    with pytest.raises(dbdl.InvalidName):
        db.sql("SELECT predict_array(r, feats) FROM t, refs")


def test_non_text_references(db, table, mlp_onnx):
    db.models.register("m", mlp_onnx)
    for literal in ("42", "1.5", "TRUE"):
        with pytest.raises(dbdl.InvalidName, match="model reference as text"):
            db.sql(f"SELECT predict_array({literal}, feats) FROM t")
    from dbdl_udf.catalog import parse_ref

    for bad in (None, 42, b"m", ["m"]):
        with pytest.raises(dbdl.InvalidName, match="must be text"):
            parse_ref(bad)


@pytest.mark.notimpl(["duckdb"], raises=dbdl.QueryError, reason="predict_into is PostgreSQL's procedure")
@pytest.mark.notimpl(["spark"], raises=dbdl.QueryError, reason="predict_into is PostgreSQL's procedure")
@pytest.mark.parametrize("batch_rows", [0, -1])
def test_predict_into_refuses_a_batch_of_no_rows(db, table, mlp_onnx, batch_rows):
    db.models.register("m", mlp_onnx)
    with pytest.raises(dbdl.InvalidArgument, match=f"batch_rows must be .* from 1 .* got {batch_rows}"):
        db.backend.execute(f"CALL dbdl.predict_into('m', 'SELECT id, feats FROM t', 'scores', batch_rows => {batch_rows})")
    with pytest.raises(dbdl.InvalidArgument, match="kind must be one of 'scalar', 'array', 'class'"):
        db.backend.execute("CALL dbdl.predict_into('m', 'SELECT id, feats FROM t', 'scores', kind => 'probabilities')")
    assert db.backend.fetchone("SELECT to_regclass('scores')")[0] is None
    # and a valid batch size scores every row
    db.backend.execute("CALL dbdl.predict_into('m', 'SELECT id, feats FROM t', 'scores', batch_rows => 7)")
    assert db.sql("SELECT count(*), count(prediction) FROM scores").fetchall() == [(300, 300)]


@DM8_NO_CACHE
@pytest.mark.parametrize("value", [10**23, 2**63, 0, -5, 1.5, "1GB", True])
def test_cache_max_bytes_out_of_range(db, mlp_onnx, value):
    db.models.register("m", mlp_onnx)
    with pytest.raises(dbdl.ConfigurationError, match="cache_max_bytes"):
        db.models.set_options("m", cache_max_bytes=value)
    import json

    with pytest.raises(dbdl.ConfigurationError, match="cache_max_bytes"):
        db.sql(f"CALL dbdl.set_model_options('m', '{json.dumps({'cache_max_bytes': value})}')")
    assert db.models.options("m")["cache_max_bytes"] == 512 << 20  # unchanged
    # the statistics view everyone reads still works
    assert db.sql("SELECT count(*) FROM dbdl.cache_stats").scalar() >= 0
    assert db.models.set_options("m", cache_max_bytes=1 << 50)["cache_max_bytes"] == 1 << 50


@pytest.mark.parametrize("text", ['[' * 100_000 + ']' * 100_000, '{"cache": ' + '[' * 3000 + ']' * 3000 + '}',
                                  '{"cache": true, "pad": "' + 'x' * 10_000 + '"}', "null", "[1]", "{"])
def test_options_json_that_is_too_deep_long_or_not_an_object(db, mlp_onnx, text):
    db.models.register("m", mlp_onnx)
    with pytest.raises(dbdl.ConfigurationError, match="model options"):
        call(db, "CALL dbdl.set_model_options('m', ?)", [text])
    assert db.models.options("m") == {"cache": False, "cache_max_bytes": 512 << 20, "pad_id": None, "feed": "auto"}


def test_boolean_features_are_refused_everywhere(db, table, mlp_onnx, strategy):
    """One rule: booleans are not features (cast them to numbers), under every strategy and backend."""
    db.models.register("m", mlp_onnx)
    bools = per_backend(db, duckdb="CAST(list_transform(CAST(feats AS FLOAT[]), lambda v: v > 0) AS BOOLEAN[])",
                        postgres="ARRAY(SELECT v > 0 FROM unnest(feats) AS v)", spark="transform(feats, v -> v > 0)")
    before = temp_tables(db)
    with pytest.raises(dbdl.DTypeMismatch, match="numeric features|numbers|boolean"):
        db.sql(f"SELECT id, predict_array('m', {bools}) FROM t", strategy=strategy).fetchall()
    assert temp_tables(db) == before


def test_stacked_statements_in_train_export(db, table):
    for query in ("SELECT feats, grp AS label FROM t; DROP TABLE t",
                  "SELECT feats, grp AS label FROM t; CREATE TABLE pwned AS SELECT 1 AS x"):
        with pytest.raises(dbdl.QueryError):
            db.train_export(query, "ds")
        with pytest.raises(dbdl.QueryError):
            call(db, "CALL dbdl.train_export(?, 'ds')", [query])
    assert db.sql("SELECT count(*) FROM t").scalar() == 300
    assert db.sql("SELECT count(*) FROM dbdl.datasets").scalar() == 0
    with pytest.raises(dbdl.Error):
        db.sql("SELECT count(*) FROM pwned")
