"""The behavioural suite: registry and SQL predict, run unchanged over every backend."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
import sqlglot
import torch
from conftest import STRATEGIES, make_mlp, run_onnx
from conftest import DM8_NO_ARRAYS

import dbdl
from dbdl.backends.duckdb.dialect import DbdlDuckDB
from dbdl_udf.runtime import SESSIONS

ATOL = 1e-5


def q(db, sql: str) -> str:
    """A test query written in DuckDB's dialect, in the backend's dialect."""
    return sqlglot.transpile(sql, read=DbdlDuckDB, write=db.backend.dialect)[0]


def column(db, sql: str, col: int = 1, strategy: str | None = None) -> np.ndarray:
    rows = sorted(db.sql(q(db, sql), strategy=strategy).fetchall())
    return np.array([r[col] for r in rows], dtype=object)


def stack(values) -> np.ndarray:
    return np.array([np.asarray(v, dtype=np.float32) for v in values])


def registry_counts(db) -> tuple[int, int, int]:
    return tuple(db.sql(f"SELECT count(*) FROM dbdl.{t}").scalar() for t in ("models", "model_versions", "blobs"))


# -- the registry -----------------------------------------------------------------------------


def test_register_torch_module_stores_bytes_and_metadata(db, mlp, features):
    version = db.models.register("fraud", mlp, example=torch.randn(1, 8), description="first")
    assert version == 1
    info = db.models.get("fraud")
    assert (info.name, info.version, info.serving, info.source, info.description) == ("fraud", 1, True, "torch", "first")
    assert info.n_features == 8 and info.outputs[0].shape == (3,)
    assert info.n_params == 8 * 16 + 16 + 16 * 3 + 3
    assert info.flops_per_row >= 2 * (8 * 16 + 16 * 3)
    stored = db.models.model_bytes("fraud")
    assert info.sha256 == hashlib.sha256(stored).hexdigest() and info.size_bytes == len(stored)
    onnx.checker.check_model(onnx.load_from_string(stored))
    expected = mlp(torch.from_numpy(features)).detach().numpy()
    np.testing.assert_allclose(run_onnx(stored, {info.inputs[0].name: features}), expected, atol=ATOL)


def test_register_onnx_bytes_proto_and_path_agree(db, mlp_onnx, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(mlp_onnx)
    assert db.models.register("a", mlp_onnx) == 1
    assert db.models.register("b", onnx.load_from_string(mlp_onnx)) == 1
    assert db.models.register("c", str(path)) == 1
    shas = {db.models.get(n).sha256 for n in "abc"}
    assert len(shas) == 1
    assert db.sql("SELECT count(*) FROM dbdl.blobs").scalar() == 1  # the bytes are stored once
    assert [m.source for m in db.models.list()] == ["onnx", "onnx", "onnx"]


def test_same_bytes_twice_is_the_same_version(db, mlp_onnx, mlp2_onnx):
    assert db.models.register("m", mlp_onnx) == 1
    assert db.models.register("m", mlp2_onnx) == 2
    assert db.models.register("m", mlp_onnx) == 1  # not a third version...
    assert registry_counts(db) == (1, 2, 2)
    assert db.models.get("m").version == 1  # ...but promoted again, as asked


def test_versions_promote_rollback(db, mlp_onnx, mlp2_onnx):
    db.models.register("m", mlp_onnx)
    db.models.register("m", mlp2_onnx, promote=False)
    assert db.models.get("m").version == 1
    db.models.promote("m", 2)
    assert db.models.get("m").version == 2
    assert [(i.version, i.serving) for i in db.models.list("m")] == [(1, False), (2, True)]
    assert db.models.rollback("m") == 1
    assert db.models.get("m").version == 1
    with pytest.raises(dbdl.ModelNotFound, match="no earlier promoted version"):
        db.models.rollback("m")


def test_drop_version_and_model(db, mlp_onnx, mlp2_onnx, scorer_onnx):
    db.models.register("m", mlp_onnx)
    db.models.register("m", mlp2_onnx)
    db.models.register("s", scorer_onnx)
    assert db.models.drop("m", 2) == 1
    assert db.models.get("m").version == 1  # serving fell back to the previous promotion
    assert [i.version for i in db.models.list("m")] == [1]
    assert db.models.drop("m") == 1
    assert db.models.names() == ["s"]
    assert registry_counts(db) == (1, 1, 1)  # unreferenced bytes are gone too
    with pytest.raises(dbdl.ModelNotFound, match="no model named 'm'"):
        db.models.get("m")
    with pytest.raises(dbdl.ModelNotFound, match="no version 9"):
        db.models.drop("s", 9)


def test_load_gives_session_and_torch_module(db, mlp, features):
    db.models.register("m", mlp, example=torch.randn(4, 8))
    loaded = db.models.load("m")
    expected = mlp(torch.from_numpy(features)).detach().numpy()
    np.testing.assert_allclose(loaded(features), expected, atol=ATOL)
    assert loaded.torch is not None
    np.testing.assert_allclose(loaded.torch(torch.from_numpy(features)).detach().numpy(), expected, atol=ATOL)


def test_versions_are_never_reused_while_the_model_exists(db, mlp_onnx, mlp2_onnx, scorer_onnx):
    db.models.register("m", mlp_onnx)
    db.models.register("m", mlp2_onnx)
    db.models.drop("m", 2)
    assert db.models.register("m", scorer_onnx) == 3


# -- SQL predict --------------------------------------------------------------------------------


def test_predict_array_matches_onnxruntime(db, table, mlp_onnx, features, strategy):
    db.models.register("m", mlp_onnx)
    got = stack(column(db, "SELECT id, predict_array('m', feats) FROM t", strategy=strategy))
    np.testing.assert_allclose(got, run_onnx(mlp_onnx, {"x": features}), atol=ATOL)


def test_predict_from_registered_torch_module_matches_torch(db, table, mlp, features):
    db.models.register("m", mlp, example=torch.randn(1, 8))
    got = stack(column(db, "SELECT id, predict_array('m', feats) FROM t"))
    np.testing.assert_allclose(got, mlp(torch.from_numpy(features)).detach().numpy(), atol=ATOL)


@pytest.mark.parametrize("cast", [pytest.param("DOUBLE[8]", marks=pytest.mark.notimpl(
    ["spark"], reason="Spark SQL has no fixed-size array type (sqlglot writes ARRAY<DOUBLE>[8], which Spark cannot "
                      "parse); array<double> and array<float> are the cases here")), "DOUBLE[]", "FLOAT[]"])
def test_feature_types(db, table, mlp_onnx, features, cast):
    db.models.register("m", mlp_onnx)
    got = stack(column(db, f"SELECT id, predict_array('m', CAST(feats AS {cast})) FROM t"))
    np.testing.assert_allclose(got, run_onnx(mlp_onnx, {"x": features}), atol=ATOL)


@DM8_NO_ARRAYS
def test_integer_features(db, mlp_onnx):
    ints = np.arange(24).reshape(3, 8) % 5
    db.create_table("ti", {"id": np.arange(3), "feats": ints.astype(np.float32)})
    got = stack(column(db, "SELECT id, predict_array('m', CAST(feats AS INTEGER[])) FROM ti")) if db.models.register(
        "m", mlp_onnx) else None
    np.testing.assert_allclose(got, run_onnx(mlp_onnx, {"x": ints.astype(np.float32)}), atol=ATOL)


def test_predict_scalar_and_class(db, table, mlp_onnx, scorer_onnx, features, strategy):
    db.models.register("clf", mlp_onnx)
    db.models.register("score", scorer_onnx)
    rows = sorted(db.sql("SELECT id, predict('score', feats), predict_class('clf', feats) FROM t",
                         strategy=strategy).fetchall())
    scores = np.array([r[1] for r in rows], dtype=np.float32)
    classes = np.array([r[2] for r in rows])
    np.testing.assert_allclose(scores, run_onnx(scorer_onnx, {"x": features})[:, 0], atol=ATOL)
    np.testing.assert_array_equal(classes, run_onnx(mlp_onnx, {"x": features}).argmax(axis=1))


def test_pinned_and_current_versions(db, table, mlp_onnx, mlp2_onnx, features, strategy):
    db.models.register("m", mlp_onnx)
    first = stack(column(db, "SELECT id, predict_array('m', feats) FROM t", strategy=strategy))
    db.models.register("m", mlp2_onnx)  # picked up without reconnecting
    current = stack(column(db, "SELECT id, predict_array('m', feats) FROM t", strategy=strategy))
    pinned = stack(column(db, "SELECT id, predict_array('m@1', feats) FROM t", strategy=strategy))
    np.testing.assert_allclose(first, run_onnx(mlp_onnx, {"x": features}), atol=ATOL)
    np.testing.assert_allclose(current, run_onnx(mlp2_onnx, {"x": features}), atol=ATOL)
    np.testing.assert_allclose(pinned, first, atol=ATOL)
    db.models.promote("m", 1)
    np.testing.assert_allclose(stack(column(db, "SELECT id, predict_array('m', feats) FROM t", strategy=strategy)),
                               first, atol=ATOL)


def test_predict_in_where_join_group_by_and_subquery(db, table, mlp_onnx, scorer_onnx, features, strategy):
    db.models.register("clf", mlp_onnx)
    db.models.register("score", scorer_onnx)
    logits = run_onnx(mlp_onnx, {"x": features})
    score = run_onnx(scorer_onnx, {"x": features})[:, 0]
    cls = logits.argmax(axis=1)
    ids = np.arange(len(features))

    where = column(db, "SELECT id, id FROM t WHERE predict('score', feats) > 0.5", col=0, strategy=strategy)
    np.testing.assert_array_equal(where.astype(int), ids[score > 0.5])

    grouped = dict(db.sql("SELECT predict_class('clf', feats) AS c, count(*) FROM t GROUP BY 1",
                          strategy=strategy).fetchall())
    assert grouped == {int(c): int((cls == c).sum()) for c in np.unique(cls)}

    db.create_table("labels", {"id": ids, "label": (ids * 7) % 3})
    joined = db.sql(q(db, "SELECT t.id, predict_class('clf', t.feats) = l.label FROM t JOIN labels l ON l.id = t.id "
                          "WHERE l.label = 1 ORDER BY t.id"), strategy=strategy).fetchall()
    mask = (ids * 7) % 3 == 1
    assert [r[0] for r in joined] == ids[mask].tolist()
    assert [bool(r[1]) for r in joined] == (cls[mask] == 1).tolist()

    sub = db.sql("SELECT avg(s) FROM (SELECT predict('score', feats) AS s FROM t WHERE grp = 0) AS x",
                 strategy=strategy).scalar()
    np.testing.assert_allclose(sub, score[ids % 3 == 0].mean(), rtol=1e-5)

    in_sub = db.sql("SELECT count(*) FROM t WHERE id IN (SELECT id FROM t WHERE predict_class('clf', feats) = 2)",
                    strategy=strategy).scalar()
    assert in_sub == int((cls == 2).sum())


@DM8_NO_ARRAYS
def test_several_inputs_and_outputs(db, multi_io_onnx):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((50, 3), dtype=np.float32), rng.standard_normal((50, 2), dtype=np.float32)
    db.create_table("ab", {"id": np.arange(50), "feats": np.hstack([a, b])})
    db.models.register("multi", multi_io_onnx)
    logits = run_onnx(multi_io_onnx, {"a": a, "b": b}, 0)
    score = run_onnx(multi_io_onnx, {"a": a, "b": b}, 1)[:, 0]
    np.testing.assert_allclose(stack(column(db, "SELECT id, predict_array('multi', feats) FROM ab")), logits, atol=ATOL)
    np.testing.assert_allclose(stack(column(db, "SELECT id, predict_array('multi:logits', feats) FROM ab")), logits,
                               atol=ATOL)
    got = column(db, "SELECT id, predict('multi@1:score', feats) FROM ab").astype(np.float32)
    np.testing.assert_allclose(got, score, atol=ATOL)
    info = db.models.get("multi")
    assert [(s.name, s.shape) for s in info.inputs] == [("a", (3,)), ("b", (2,))]
    assert info.n_features == 5
    with pytest.raises(dbdl.ShapeMismatch, match="no output 'nope'.*'logits', 'score'"):
        db.sql("SELECT predict('multi:nope', feats) FROM ab")


def test_null_features_give_null(db, table, mlp_onnx, features, strategy):
    db.models.register("m", mlp_onnx)
    rows = sorted(db.sql(q(db, "SELECT id, predict_array('m', CASE WHEN id % 10 = 0 THEN NULL ELSE feats END) "
                               "FROM t"), strategy=strategy).fetchall())
    expected = run_onnx(mlp_onnx, {"x": features})
    for i, value in rows:
        if i % 10 == 0:
            assert value is None
        else:
            np.testing.assert_allclose(value, expected[i], atol=ATOL)
    assert db.sql(q(db, "SELECT predict_class('m', CAST(NULL AS FLOAT[]))")).scalar() is None


@DM8_NO_ARRAYS
def test_null_element_gives_null(db, mlp_onnx):
    db.models.register("m", mlp_onnx)
    got = db.sql(q(db, "SELECT predict_array('m', [1, 2, 3, 4, 5, 6, 7, NULL]), "
                       "predict_array('m', [1, 2, 3, 4, 5, 6, 7, 8])")).fetchall()[0]
    assert got[0] is None
    np.testing.assert_allclose(got[1], run_onnx(mlp_onnx, {"x": np.arange(1, 9, dtype=np.float32)[None]})[0], atol=ATOL)


def test_model_named_by_a_column(db, table, mlp_onnx, mlp2_onnx, features):
    db.models.register("one", mlp_onnx)
    db.models.register("two", mlp2_onnx)
    rows = sorted(db.sql(q(db, "SELECT id, predict_array(CASE WHEN id % 2 = 0 THEN 'one' ELSE 'two@1' END, feats) "
                               "FROM t")).fetchall())
    e1, e2 = run_onnx(mlp_onnx, {"x": features}), run_onnx(mlp2_onnx, {"x": features})
    for i, value in rows:
        np.testing.assert_allclose(value, (e1 if i % 2 == 0 else e2)[i], atol=ATOL)


def test_bound_parameters(db, table, scorer_onnx, features, strategy):
    db.models.register("s", scorer_onnx)
    got = db.sql("SELECT count(*) FROM t WHERE predict('s', feats) > ? AND grp = ?", [0.5, 1], strategy=strategy).scalar()
    score = run_onnx(scorer_onnx, {"x": features})[:, 0]
    assert got == int(((score > 0.5) & (np.arange(len(features)) % 3 == 1)).sum())


def test_result_conversions(db, table, mlp_onnx, features):
    db.models.register("m", mlp_onnx)
    result = db.sql("SELECT id, predict_array('m', feats) AS y FROM t ORDER BY id")
    expected = run_onnx(mlp_onnx, {"x": features})
    assert result.columns == ["id", "y"] and len(result) == len(features)
    np.testing.assert_allclose(np.stack(result.numpy()["y"]), expected, atol=ATOL)
    np.testing.assert_allclose(np.stack(result.df()["y"].to_list()), expected, atol=ATOL)
    np.testing.assert_allclose(np.array(result.arrow().column("y").to_pylist()), expected, atol=ATOL)
    assert [r[0] for r in result.fetchall()] == list(range(len(features)))


def test_session_is_built_once_per_version(db, table, mlp_onnx):
    db.models.register("m", mlp_onnx)
    db.sql("SELECT predict_array('m', feats) FROM t")
    builds = SESSIONS.builds
    for _ in range(3):
        db.sql("SELECT predict_array('m', feats) FROM t")
    assert SESSIONS.builds == builds


# -- errors ------------------------------------------------------------------------------------


def test_unknown_model_and_version(db, table, mlp_onnx):
    db.models.register("m", mlp_onnx)
    with pytest.raises(dbdl.ModelNotFound, match=r"no model named 'nope' \(registered models: 'm'\).*register"):
        db.sql("SELECT predict_array('nope', feats) FROM t")
    with pytest.raises(dbdl.ModelNotFound, match=r"no version 4 \(its versions: 1\)"):
        db.sql("SELECT predict_array('m@4', feats) FROM t")
    with pytest.raises(dbdl.ModelNotFound):
        db.sql(q(db, "SELECT predict_array(CASE WHEN id = 5 THEN 'ghost' ELSE 'm' END, feats) FROM t"))


def test_wrong_feature_length(db, table, mlp_onnx):
    db.models.register("m", mlp_onnx)
    with pytest.raises(dbdl.ShapeMismatch, match=r"'m@1' takes 8 features per row.*got.*\b3\b"):
        db.sql(q(db, "SELECT predict_array('m', [1.0, 2.0, 3.0])"))
    with pytest.raises(dbdl.ShapeMismatch, match="takes 8 features"):
        db.sql(q(db, "SELECT predict_array('m', CAST(feats AS FLOAT[]) || [1.0]) FROM t"))


def test_wrong_dtype(db, table, mlp_onnx):
    db.models.register("m", mlp_onnx)
    for bad in ("['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h']", "['1', '2', '3', '4', '5', '6', '7', '8']", "'text'", "42"):
        with pytest.raises(dbdl.DTypeMismatch, match="numeric features|numbers"):
            db.sql(q(db, f"SELECT predict_array('m', {bad})"))


def test_predict_on_a_vector_output_names_the_fix(db, table, mlp_onnx, scorer_onnx):
    db.models.register("m", mlp_onnx)
    db.models.register("s", scorer_onnx)
    with pytest.raises(dbdl.ShapeMismatch, match="3 values per row.*predict_array"):
        db.sql("SELECT predict('m', feats) FROM t")
    with pytest.raises(dbdl.ShapeMismatch, match="no arg-max"):
        db.sql("SELECT predict_class('s', feats) FROM t")


@pytest.mark.parametrize("bad", [b"", b"not an onnx model", b"\x08\x07" + b"\xff" * 40])
def test_malformed_model_bytes_leave_nothing(db, bad):
    with pytest.raises(dbdl.InvalidModel, match="ONNX|onnx"):
        db.models.register("m", bad)
    assert registry_counts(db) == (0, 0, 0)


def test_checker_failure_and_fixed_batch_leave_nothing(db, mlp_onnx, tmp_path):
    model = onnx.load_from_string(mlp_onnx)
    model.graph.node[0].input[0] = "does_not_exist"
    with pytest.raises(dbdl.InvalidModel, match="checker"):
        db.models.register("m", model)
    # a fixed batch size is accepted now (tests/test_registration.py); an output whose first axis
    # does not follow the rows is not
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 8])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8])
    fixed = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("ReduceMean", ["x"], ["y"], axes=[0], keepdims=1)], "mean", [x], [y]),
        opset_imports=[onnx.helper.make_opsetid("", 13)])
    fixed.ir_version = 8
    with pytest.raises(dbdl.InvalidModel, match="fixed batch size of 1.*one output row per input row"):
        db.models.register("m", fixed)
    with pytest.raises(dbdl.InvalidModel, match="no ONNX file"):
        db.models.register("m", str(tmp_path / "missing.onnx"))
    with pytest.raises(dbdl.InvalidModel, match="example="):
        db.models.register("m", make_mlp())
    with pytest.raises(dbdl.InvalidModel, match="cannot register a dict"):
        db.models.register("m", {"weights": 1})
    assert registry_counts(db) == (0, 0, 0)


@pytest.mark.parametrize("name", ["", "1abc", "has space", "x'; DROP TABLE t; --", "a" * 64, "dé", None, "m@1"])
def test_invalid_names(db, table, mlp_onnx, name):
    with pytest.raises(dbdl.InvalidName, match="not valid"):
        db.models.register(name, mlp_onnx)
    assert registry_counts(db) == (0, 0, 0)
    assert db.sql("SELECT count(*) FROM t").scalar() == 300


def test_hostile_reference_in_sql(db, table, mlp_onnx):
    db.models.register("m", mlp_onnx)
    with pytest.raises(dbdl.InvalidName):
        db.sql("SELECT predict_array('m''; DROP TABLE t; --', feats) FROM t")
    with pytest.raises(dbdl.InvalidName, match="version"):
        db.sql("SELECT predict_array('m@0', feats) FROM t")
    assert db.sql("SELECT count(*) FROM t").scalar() == 300


def test_wrong_arity_and_unparsable_sql(db, table, mlp_onnx):
    db.models.register("m", mlp_onnx)
    with pytest.raises(dbdl.QueryError, match="two arguments"):
        db.sql("SELECT predict_array('m') FROM t")
    with pytest.raises(dbdl.QueryError):
        db.sql("SELEC predict_array('m', feats) FROM t")


@DM8_NO_ARRAYS
def test_create_table_round_trips_numbers_text_bytes_and_tensors(db):
    blobs = [b"\x00\x01", b"ab\x00", b"\x00\x00\x00", b""]  # trailing NUL bytes must survive
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    assert db.create_table("mixed", {"id": np.arange(4), "name": ["a", "b", "c", "d"], "blob": blobs,
                                     "score": np.array([0.5, 1.5, 2.5, 3.5]), "feats": x}) == 4
    rows = db.sql("SELECT id, name, blob, score, feats FROM mixed ORDER BY id").fetchall()
    assert [r[0] for r in rows] == [0, 1, 2, 3]
    assert [r[1] for r in rows] == ["a", "b", "c", "d"]
    assert [bytes(r[2]) for r in rows] == blobs
    assert [r[3] for r in rows] == [0.5, 1.5, 2.5, 3.5]
    np.testing.assert_array_equal(np.array([r[4] for r in rows], dtype=np.float32), x)


@DM8_NO_ARRAYS
def test_model_column_with_all_null_features(db, mlp_onnx):
    db.models.register("m", mlp_onnx)
    got = db.sql(q(db, "SELECT predict_class(m, f) FROM (SELECT 'm' AS m, CAST(NULL AS FLOAT[]) AS f) AS s")).fetchall()
    assert got == [(None,)]


def test_relation_strategy_needs_a_known_model_and_supported_operators(db, table, mlp_onnx, multi_io_onnx):
    db.models.register("m", mlp_onnx)
    db.models.register("multi", multi_io_onnx)
    with pytest.raises(dbdl.StrategyUnavailable, match="model named by a column"):
        db.sql(q(db, "SELECT predict_array(CASE WHEN id > 0 THEN 'm' END, feats) FROM t"), strategy="relation")
    with pytest.raises(dbdl.StrategyUnavailable, match="takes models with one input"):
        db.sql("SELECT predict_array('multi', feats) FROM t", strategy="relation")
    with pytest.raises(dbdl.StrategyUnavailable, match="unknown strategy"):
        db.sql("SELECT predict_array('m', feats) FROM t", strategy="gpu")


# -- NULL semantics and empty inputs: one rule for every strategy and backend ---------------------


def _with_holes(db, features: np.ndarray) -> None:
    """Table h: row i has its features, except i % 5 == 1 (a NULL array) and i % 5 == 2 (an array
    whose element i % 8 is NULL)."""
    rows = []
    for i, f in enumerate(features[:40]):
        if i % 5 == 1:
            rows.append(None)
        elif i % 5 == 2:
            values = f.tolist()
            values[i % 8] = None
            rows.append(values)
        else:
            rows.append(f.tolist())
    import pyarrow as pa

    db.create_table("h", {"id": np.arange(len(rows)), "feats": pa.array(rows, pa.list_(pa.float32()))})


@DM8_NO_ARRAYS
@pytest.mark.parametrize("fn", ["predict_array", "predict", "predict_class"])
def test_null_array_and_null_element_give_null(db, features, mlp_onnx, scorer_onnx, strategy, fn):
    db.models.register("m", scorer_onnx if fn == "predict" else mlp_onnx)
    _with_holes(db, features)
    rows = sorted(db.sql(f"SELECT id, {fn}('m', feats) FROM h", strategy=strategy).fetchall())
    expected = run_onnx(scorer_onnx if fn == "predict" else mlp_onnx, {"x": features[:40]})
    assert [i for i, _ in rows] == list(range(40))
    for i, value in rows:
        if i % 5 in (1, 2):
            assert value is None, (i, value)
        elif fn == "predict_array":
            np.testing.assert_allclose(value, expected[i], atol=ATOL)
        elif fn == "predict":
            np.testing.assert_allclose(value, expected[i, 0], atol=ATOL)
        else:
            assert value == int(expected[i].argmax())


@DM8_NO_ARRAYS
def test_all_null_and_empty_inputs(db, features, mlp_onnx, strategy):
    db.models.register("m", mlp_onnx)
    _with_holes(db, features)
    holes = sorted(db.sql("SELECT id, predict_array('m', feats) FROM h WHERE id % 5 IN (1, 2)",
                          strategy=strategy).fetchall())
    assert holes == [(i, None) for i in range(40) if i % 5 in (1, 2)]
    assert db.sql("SELECT id, predict_array('m', feats) FROM h WHERE id < 0", strategy=strategy).fetchall() == []
    db.create_table("empty", {"id": np.arange(0), "feats": np.zeros((0, 8), np.float32)})
    assert db.sql("SELECT id, predict_class('m', feats) FROM empty", strategy=strategy).fetchall() == []
    assert db.sql("SELECT count(*), max(predict_class('m@1:y', feats)) FROM empty",
                  strategy=strategy).fetchall() == [(0, None)]


# -- a WHERE and a LIMIT run before the model -------------------------------------------------------


def _with_bad_tail(db, features: np.ndarray, good: int, rows: int) -> None:
    """Table b: rows 0..good-1 have their 8 features, every later row has 5 — scoring one of those
    fails with ShapeMismatch, so a query that succeeds did not score them."""
    import pyarrow as pa

    values = [features[i % len(features)].tolist() if i < good else [1.0] * 5 for i in range(rows)]
    db.create_table("b", {"id": np.arange(rows), "feats": pa.array(values, pa.list_(pa.float32()))})


@DM8_NO_ARRAYS
@pytest.mark.notimpl(["spark"], strategies=["dl"], raises=dbdl.ShapeMismatch,
                     reason="Spark has no row identity, so a LIMIT cannot move below the model (query.push_limit): "
                            "DL-centric scores every row the WHERE keeps, the bad tail included")
@pytest.mark.notimpl(["spark"], strategies=["relation"],
                     reason="Spark tables have no row identity, so a LIMIT without a unique ORDER BY cannot move below "
                            "the model: relation-centric SQL scores every row of the FROM/WHERE, the bad ones too")
def test_where_and_limit_run_before_the_model(db, features, mlp_onnx, strategy):
    # DuckDB's in-database function sees whole 2,048-row vectors: the bad rows lie beyond the first
    db.models.register("m", mlp_onnx)
    _with_bad_tail(db, features, good=2100, rows=2400)
    expected = run_onnx(mlp_onnx, {"x": features})
    with pytest.raises(dbdl.ShapeMismatch):  # the control: scoring every row meets the bad ones
        db.sql("SELECT id, predict_array('m', feats) FROM b", strategy=strategy)
    got = db.sql("SELECT id, predict_array('m', feats) FROM b WHERE id % 7 = 3 AND id < 2100",
                 strategy=strategy).fetchall()
    assert sorted(i for i, _ in got) == [i for i in range(2100) if i % 7 == 3]
    # a LIMIT without ORDER BY: any 4 rows, each scored right, and no bad row scored
    got = db.sql("SELECT id, predict_array('m', feats) FROM b LIMIT 4", strategy=strategy).fetchall()
    assert len(got) == 4 and all(i < 2100 for i, _ in got)
    for i, value in got:
        np.testing.assert_allclose(value, expected[i % len(features)], atol=ATOL)
    # ORDER BY another column with LIMIT and OFFSET: exactly those rows
    got = db.sql(q(db, "SELECT id, predict_class('m', feats) AS c FROM b AS x WHERE x.id < 2100 "
                       "ORDER BY x.id % 10, id DESC LIMIT 5 OFFSET 2"), strategy=strategy).fetchall()
    ids = sorted(range(2100), key=lambda i: (i % 10, -i))[2:7]
    assert got == [(i, int(expected[i % len(features)].argmax())) for i in ids]


@pytest.mark.notimpl(["spark"], reason="Spark has no row identity, so a LIMIT cannot be moved below a strategy that "
                                        "scores the source rows up front: the plan counts every row of t")
def test_limit_bounds_the_planned_rows_and_top_k_scores_all(db, table, features, mlp_onnx, scorer_onnx):
    db.models.register("m", mlp_onnx)
    db.models.register("s", scorer_onnx)
    plan, = db.explain("SELECT id, predict_array('m', feats) FROM t WHERE id > 10 LIMIT 7")
    assert plan.rows == 7
    # a top-k over the prediction needs every row scored: the LIMIT stays above the model
    sql = "SELECT id FROM t ORDER BY predict('s', feats) DESC, id LIMIT 3"
    plan, = db.explain(sql)
    assert plan.rows > 7
    scores = run_onnx(scorer_onnx, {"x": features})[:, 0]
    for strategy in STRATEGIES:
        assert [r[0] for r in db.sql(sql, strategy=strategy).fetchall()] == list(np.argsort(-scores, kind="stable")[:3])
