"""Classical ML (ai.onnx.ml) operators in the IR: real converter models (skl2onnx, onnxmltools),
evaluated in numpy and compiled to SQL (relation-centric, both backends), against onnxruntime."""

from __future__ import annotations

import functools
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, load_linnerud

from dbdl.ir import from_onnx
from dbdl_udf.adapt import adapt

ROWS = 24


def _session(data: bytes):
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _data(name):
    X, y = {"iris": load_iris, "cancer": load_breast_cancer, "diabetes": load_diabetes,
            "linnerud": load_linnerud}[name](return_X_y=True)
    return X.astype(np.float32), y


def _skl(est, data, **options):
    from skl2onnx import to_onnx

    X, y = _data(data)
    est.fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return to_onnx(est, X[:1], target_opset={"": 17, "ai.onnx.ml": 3}, **options).SerializeToString(), X


def _lgbm(kind, data, n=10, leaves=8):
    import lightgbm
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    X, y = _data(data)
    est = (lightgbm.LGBMClassifier if kind == "clf" else lightgbm.LGBMRegressor)(
        n_estimators=n, num_leaves=leaves, verbose=-1, random_state=0).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = onnxmltools.convert_lightgbm(est, initial_types=[("input", FloatTensorType([None, X.shape[1]]))])
    return proto.SerializeToString(), X


def _xgb(kind, data, n=8):
    import onnxmltools
    import xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    X, y = _data(data)
    est = (xgboost.XGBClassifier if kind == "clf" else xgboost.XGBRegressor)(
        n_estimators=n, max_depth=3, random_state=0).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = onnxmltools.convert_xgboost(est, initial_types=[("input", FloatTensorType([None, X.shape[1]]))])
    return proto.SerializeToString(), X


def _models():
    from sklearn.ensemble import (GradientBoostingClassifier, GradientBoostingRegressor, RandomForestClassifier,
                                  RandomForestRegressor)
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    models = {
        "linear_regression": (lambda: _skl(LinearRegression(), "diabetes"), "reg"),
        "logistic_binary": (lambda: _skl(make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
                                         "cancer"), "clf"),
        "logistic_multiclass": (lambda: _skl(LogisticRegression(max_iter=1000), "iris"), "clf"),
        "scaler_logistic_pipeline": (lambda: _skl(make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
                                                  "iris"), "clf"),
        "normalizer_l2_logistic": (lambda: _skl(make_pipeline(Normalizer("l2"), LogisticRegression(max_iter=500)),
                                                "iris"), "clf"),
        "normalizer_l1_linear": (lambda: _skl(make_pipeline(Normalizer("l1"), LinearRegression()), "diabetes"), "reg"),
        "normalizer_max_linear": (lambda: _skl(make_pipeline(Normalizer("max"), LinearRegression()), "diabetes"),
                                  "reg"),
        "imputer_linear": (lambda: _skl(make_pipeline(SimpleImputer(), LinearRegression()), "diabetes"), "reg"),
        "decision_tree_regressor": (lambda: _skl(DecisionTreeRegressor(max_depth=5, random_state=0), "diabetes"),
                                    "reg"),
        "decision_tree_classifier": (lambda: _skl(DecisionTreeClassifier(max_depth=4, random_state=0), "iris"), "clf"),
        "decision_tree_binary": (lambda: _skl(DecisionTreeClassifier(max_depth=4, random_state=0), "cancer"), "clf"),
        "random_forest_regressor": (lambda: _skl(RandomForestRegressor(5, max_depth=4, random_state=0), "diabetes"),
                                    "reg"),
        "random_forest_classifier": (lambda: _skl(RandomForestClassifier(5, max_depth=4, random_state=0), "iris"),
                                     "clf"),
        "gradient_boosting_regressor": (lambda: _skl(GradientBoostingRegressor(n_estimators=5, random_state=0),
                                                     "diabetes"), "reg"),
        "gradient_boosting_binary": (lambda: _skl(GradientBoostingClassifier(n_estimators=5, random_state=0),
                                                  "cancer"), "clf"),
        "gradient_boosting_multiclass": (lambda: _skl(GradientBoostingClassifier(n_estimators=5, random_state=0),
                                                      "iris"), "clf"),
        "linear_regression_3_targets": (lambda: _skl(LinearRegression(), "linnerud"), "reg"),
        "lightgbm_regressor": (lambda: _lgbm("reg", "diabetes"), "reg"),
        "lightgbm_binary": (lambda: _lgbm("clf", "cancer"), "clf"),
        "lightgbm_multiclass": (lambda: _lgbm("clf", "iris"), "clf"),
    }
    try:
        import xgboost  # noqa: F401

        models["xgboost_regressor"] = (lambda: _xgb("reg", "diabetes"), "reg")
        models["xgboost_binary"] = (lambda: _xgb("clf", "cancer"), "clf")
        models["xgboost_multiclass"] = (lambda: _xgb("clf", "iris"), "clf")
    except ImportError:
        pass
    return models


MODELS = _models()


@functools.lru_cache(maxsize=None)
def model(name):
    """(the registered form of the ONNX bytes: ZipMap unwrapped, as adapt leaves it; a few rows)."""
    build, kind = MODELS[name]
    data, X = build()
    adapted = adapt(data, _session).onnx_bytes
    rows = X[np.random.default_rng(3).choice(len(X), size=min(ROWS, len(X)), replace=False)]
    return data, adapted, rows, kind


def _expected(adapted, rows):
    session = _session(adapted)
    return {o.name: np.asarray(v) for o, v in zip(session.get_outputs(), session.run(None, {session.get_inputs()[0].name: rows}))}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_numpy_evaluation_matches_onnxruntime(name):
    _, adapted, rows, kind = model(name)
    graph = from_onnx(onnx.load_from_string(adapted))
    assert graph.unsupported == [] and graph.relational == (True, "")
    expected = _expected(adapted, rows)
    got = graph.run({graph.inputs[0][0]: rows})
    for (out, want), value in zip(expected.items(), got):
        np.testing.assert_allclose(np.asarray(value, np.float64).reshape(want.shape), want, rtol=1e-4, atol=1e-4,
                                   err_msg=f"{name}: output {out}")


def _table(db, rows):
    db.create_table("t", {"id": np.arange(len(rows)), "feats": rows}, replace=True)


def _nulls(db, n=ROWS):
    typ = "REAL[]" if db.backend.dialect != "duckdb" and "postgres" in type(db.backend).__module__ else "FLOAT[]"
    return f"SELECT id, feats FROM t UNION ALL SELECT {n} AS id, CAST(NULL AS {typ}) AS feats"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sql_matches_onnxruntime(db, name):
    _, adapted, rows, kind = model(name)
    expected = _expected(adapted, rows)
    outputs = list(expected)
    db.models.register("m", adapted)
    _table(db, rows)
    src = _nulls(db, len(rows))
    if kind == "reg":
        got = db.sql(f"SELECT s.id, predict_array('m', s.feats) FROM ({src}) AS s ORDER BY s.id",
                     strategy="relation").fetchall()
        assert got[-1] == (len(rows), None)
        values = np.array([r[1] for r in got[:-1]], np.float64)
        np.testing.assert_allclose(values.reshape(expected[outputs[0]].shape), expected[outputs[0]], rtol=1e-4, atol=1e-3)
        return
    probs = expected["probabilities"]
    got = db.sql(f"SELECT s.id, predict_array('m:probabilities', s.feats), predict_class('m:probabilities', s.feats), "
                 f"predict('m', s.feats) FROM ({src}) AS s ORDER BY s.id", strategy="relation").fetchall()
    assert got[-1] == (len(rows), None, None, None)
    np.testing.assert_allclose(np.array([r[1] for r in got[:-1]], np.float64), probs, rtol=1e-4, atol=1e-5)
    assert [r[2] for r in got[:-1]] == np.argmax(probs, axis=1).tolist()
    assert [r[3] for r in got[:-1]] == expected[outputs[0]].ravel().astype(float).tolist()


def test_a_100_tree_lightgbm_compiles_and_runs(db):
    data, X = _lgbm("clf", "cancer", n=100, leaves=31)
    adapted = adapt(data, _session).onnx_bytes
    rows = X[:50]
    probs = _expected(adapted, rows)["probabilities"]
    db.models.register("big", adapted)
    _table(db, rows)
    start = time.perf_counter()
    got = db.sql("SELECT id, predict_array('big:probabilities', feats) FROM t ORDER BY id", strategy="relation").fetchall()
    elapsed = time.perf_counter() - start
    np.testing.assert_allclose(np.array([r[1] for r in got], np.float64), probs, rtol=1e-4, atol=1e-5)
    print(f"100-tree LightGBM: {elapsed:.2f} s")


def test_nan_features_follow_onnxruntime():
    """A NaN feature goes where onnxruntime sends it, in every node mode."""
    from onnx import TensorProto, helper

    modes = ["BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ"]
    for mode in modes:
        for missing in (0, 1):
            node = helper.make_node(
                "TreeEnsembleRegressor", ["x"], ["y"], domain="ai.onnx.ml", n_targets=1,
                nodes_treeids=[0, 0, 0], nodes_nodeids=[0, 1, 2], nodes_featureids=[0, 0, 0],
                nodes_modes=[mode, "LEAF", "LEAF"], nodes_values=[0.5, 0, 0], nodes_truenodeids=[1, 0, 0],
                nodes_falsenodeids=[2, 0, 0], nodes_missing_value_tracks_true=[missing, 0, 0],
                target_treeids=[0, 0], target_nodeids=[1, 2], target_ids=[0, 0], target_weights=[1.0, 2.0])
            graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1])],
                                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])])
            proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                            helper.make_opsetid("ai.onnx.ml", 3)])
            proto.ir_version = 8
            x = np.array([[np.nan], [0.5], [0.0], [1.0]], np.float32)
            want = _session(proto.SerializeToString()).run(None, {"x": x})[0]
            np.testing.assert_array_equal(from_onnx(proto).run({"x": x})[0], want, err_msg=f"{mode} {missing}")


@pytest.fixture(params=["case", "walk"])
def form(request, monkeypatch):
    """How forests compile: nested CASE text, or a walk over a node table (ir/ops/_trees.py)."""
    from dbdl.ir.ops import _trees

    monkeypatch.setattr(_trees, "CASE_NODES", 10**9 if request.param == "case" else 0)
    return request.param


@pytest.mark.parametrize("name", ["imputer_linear", "decision_tree_regressor", "lightgbm_regressor", "lightgbm_binary",
                                  "random_forest_classifier"])
def test_nan_features_through_sql(db, name, form):
    """NaN features (SQL orders NaN above every number) take onnxruntime's branches and imputations."""
    _, adapted, rows, kind = model(name)
    rows = rows[:8].copy()
    rows[np.arange(8), np.arange(8) % rows.shape[1]] = np.nan
    rows[0, :] = np.nan
    expected = _expected(adapted, rows)
    want = expected["probabilities"] if kind == "clf" else expected[list(expected)[0]]
    db.models.register("m", adapted)
    _table(db, rows)
    output = "m:probabilities" if kind == "clf" else "m"
    got = db.sql(f"SELECT id, predict_array('{output}', feats) FROM t ORDER BY id", strategy="relation").fetchall()
    np.testing.assert_allclose(np.array([r[1] for r in got], np.float64).reshape(want.shape), want, rtol=1e-4, atol=1e-3)


def test_string_labels_compile_the_probabilities_and_refuse_the_label(db):
    from sklearn.linear_model import LogisticRegression
    from skl2onnx import to_onnx

    X, y = _data("iris")
    est = LogisticRegression(max_iter=500).fit(X, np.array(["setosa", "versicolor", "virginica"])[y])
    adapted = adapt(to_onnx(est, X[:1]).SerializeToString(), _session).onnx_bytes
    rows = X[::15]
    db.models.register("s", adapted)
    _table(db, rows)
    got = db.sql("SELECT id, predict_array('s:probabilities', feats) FROM t ORDER BY id", strategy="relation").fetchall()
    np.testing.assert_allclose(np.array([r[1] for r in got]), _expected(adapted, rows)["probabilities"], atol=1e-5)
    graph = from_onnx(onnx.load_from_string(adapted))
    assert "string labels has no SQL form" in graph.output_problem(0)
    assert graph.output_problem(1) == ""


def _ml_model(node, width, outputs):
    from onnx import TensorProto, helper

    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
                              [helper.make_tensor_value_info(name, elem, ["n", *shape]) for name, elem, shape in outputs])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    proto.ir_version = 8
    return proto.SerializeToString()


def _mode_forest():
    """12 one-split trees on feature k % 3, tree k → target k: every node mode, with and without
    missing_value_tracks_true."""
    from onnx import TensorProto, helper

    modes = ["BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ"]
    a = {k: [] for k in ["nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_modes", "nodes_values",
                         "nodes_truenodeids", "nodes_falsenodeids", "nodes_missing_value_tracks_true",
                         "target_treeids", "target_nodeids", "target_ids", "target_weights"]}
    for t in range(12):
        mode, missing = modes[t % 6], t // 6
        a["nodes_treeids"] += [t, t, t]
        a["nodes_nodeids"] += [0, 1, 2]
        a["nodes_featureids"] += [t % 3, 0, 0]
        a["nodes_modes"] += [mode, "LEAF", "LEAF"]
        a["nodes_values"] += [0.5, 0.0, 0.0]
        a["nodes_truenodeids"] += [1, 0, 0]
        a["nodes_falsenodeids"] += [2, 0, 0]
        a["nodes_missing_value_tracks_true"] += [missing, 0, 0]
        a["target_treeids"] += [t, t]
        a["target_nodeids"] += [1, 2]
        a["target_ids"] += [t, t]
        a["target_weights"] += [1.0, 2.0]
    node = helper.make_node("TreeEnsembleRegressor", ["x"], ["y"], domain="ai.onnx.ml", n_targets=12,
                            base_values=[0.25] * 12, **a)
    return _ml_model(node, 3, [("y", TensorProto.FLOAT, [12])])


def test_every_node_mode_through_sql(db, form):
    data = _mode_forest()
    rows = np.array([[np.nan, 0.5, 0.0], [1.0, np.nan, 0.5], [0.25, 0.75, np.nan], [0.5, 0.5, 0.5]], np.float32)
    want = _session(data).run(None, {"x": rows})[0]
    np.testing.assert_array_equal(from_onnx(onnx.load_from_string(data)).run({"x": rows})[0], want)
    db.models.register("modes", data)
    _table(db, rows)
    got = db.sql("SELECT id, predict_array('modes', feats) FROM t ORDER BY id", strategy="relation").fetchall()
    np.testing.assert_array_equal(np.array([r[1] for r in got], np.float32), want)


@pytest.mark.parametrize("transform", ["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO"])
def test_classifier_post_transforms(db, transform):
    """A 3-class forest and a 3-class linear classifier under each post-transform: numpy and SQL."""
    from onnx import TensorProto, helper

    tree = helper.make_node(
        "TreeEnsembleClassifier", ["x"], ["label", "probabilities"], domain="ai.onnx.ml",
        classlabels_int64s=[4, 5, 6], post_transform=transform, base_values=[0.1, 0.0, -0.2],
        nodes_treeids=[0, 0, 0, 1, 1, 1], nodes_nodeids=[0, 1, 2, 0, 1, 2], nodes_featureids=[0, 0, 0, 1, 0, 0],
        nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF", "BRANCH_GT", "LEAF", "LEAF"],
        nodes_values=[0.0, 0, 0, 0.3, 0, 0], nodes_truenodeids=[1, 0, 0, 1, 0, 0], nodes_falsenodeids=[2, 0, 0, 2, 0, 0],
        class_treeids=[0, 0, 0, 1, 1], class_nodeids=[1, 1, 2, 1, 2], class_ids=[0, 2, 1, 1, 2],
        class_weights=[1.5, 0.0, 2.0, -0.5, 0.7])
    linear = helper.make_node(
        "LinearClassifier", ["x"], ["label", "probabilities"], domain="ai.onnx.ml", classlabels_ints=[4, 5, 6],
        post_transform=transform, coefficients=[0.5, -1.0, 1.0, 0.2, -0.3, 0.0], intercepts=[0.1, 0.0, -0.4])
    rows = np.array([[-1.0, 0.0], [0.5, 0.9], [0.2, -0.4], [2.0, 0.3]], np.float32)
    for k, node in enumerate([tree, linear]):
        data = _ml_model(node, 2, [("label", TensorProto.INT64, []), ("probabilities", TensorProto.FLOAT, [3])])
        label, probs = _session(data).run(None, {"x": rows})
        got = from_onnx(onnx.load_from_string(data)).run({"x": rows})
        np.testing.assert_array_equal(got[0], label)
        np.testing.assert_allclose(got[1], probs, rtol=1e-5, atol=1e-6)
        db.models.register(f"c{k}", data)
        _table(db, rows)
        out = db.sql(f"SELECT id, predict_array('c{k}:probabilities', feats), predict('c{k}', feats) FROM t ORDER BY id",
                     strategy="relation").fetchall()
        np.testing.assert_allclose(np.array([r[1] for r in out]), probs, rtol=1e-5, atol=1e-6)
        assert [r[2] for r in out] == label.astype(float).tolist()


@pytest.mark.parametrize("transform", ["NONE", "LOGISTIC"])
def test_binary_linear_classifier_with_one_coefficient_row(db, transform):
    from onnx import TensorProto, helper

    node = helper.make_node("LinearClassifier", ["x"], ["label", "probabilities"], domain="ai.onnx.ml",
                            classlabels_ints=[0, 1], post_transform=transform, coefficients=[0.5, -1.0],
                            intercepts=[0.1])
    data = _ml_model(node, 2, [("label", TensorProto.INT64, []), ("probabilities", TensorProto.FLOAT, [2])])
    rows = np.array([[-1.0, 0.0], [0.5, 0.9], [0.2, -0.4], [2.0, 0.3], [0.4, 0.0], [-0.4, 0.0]], np.float32)
    label, probs = _session(data).run(None, {"x": rows})
    got = from_onnx(onnx.load_from_string(data)).run({"x": rows})
    np.testing.assert_array_equal(got[0], label)
    np.testing.assert_allclose(got[1], probs, rtol=1e-5, atol=1e-6)
    db.models.register("b", data)
    _table(db, rows)
    out = db.sql("SELECT id, predict_array('b:probabilities', feats), predict('b', feats) FROM t ORDER BY id",
                 strategy="relation").fetchall()
    np.testing.assert_allclose(np.array([r[1] for r in out]), probs, rtol=1e-5, atol=1e-6)
    assert [r[2] for r in out] == label.astype(float).tolist()
