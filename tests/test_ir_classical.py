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


@pytest.mark.parametrize("name", ["imputer_linear", "decision_tree_regressor", "lightgbm_regressor", "lightgbm_binary"])
def test_nan_features_through_sql(db, name):
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
