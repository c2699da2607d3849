"""Element-wise IR operators (issue 13): each checked in numpy against onnxruntime, compiled to SQL
on both backends (strategy='relation') against onnxruntime, NULL in -> NULL out, and the shapes the
SQL form cannot take refused with a dbdl error naming the operator and the fix."""

from __future__ import annotations

import math
import warnings

import numpy as np
import onnx
import pytest
import sqlglot
import torch
from conftest import export_onnx, per_backend, run_onnx
from onnx import TensorProto, helper, numpy_helper

import dbdl
from dbdl.backends.duckdb.dialect import DbdlDuckDB
from dbdl.ir import from_onnx

W = 4  # features per row


def model(nodes, inits=None, opset=17, width=W):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width])
    graph = helper.make_graph(nodes, "g", [x], [y],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8 if opset < 19 else 9
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def unary(op, opset=17, **attrs):
    return model([helper.make_node(op, ["x"], ["y"], **attrs)], opset=opset)


def f32(*values):
    return np.array(values, np.float32)


def torch_onnx(module, width=W, **options):
    return export_onnx(module.eval(), width, **options)


class BufferAffine(torch.nn.Module):
    """A module with (1, n) buffers, as a user writes a normalisation."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([[0.5, -1.0, 2.0, 0.0]]))
        self.register_buffer("scale", torch.tensor([[2.0, 0.5, 1.0, 3.0]]))
        self.linear = torch.nn.Linear(W, W)

    def forward(self, x):
        return self.linear((x - self.shift) / self.scale) * self.scale


def sklearn_mlp():
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPRegressor

    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, W)).astype(np.float32)
    reg = MLPRegressor(hidden_layer_sizes=(5,), max_iter=50, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg.fit(x, x @ np.arange(W, dtype=np.float32))
    return to_onnx(reg, x[:1], target_opset=17).SerializeToString()


def cases():
    torch.manual_seed(0)
    rng = np.random.default_rng(3)
    cases = {
        "exp": unary("Exp"), "log": unary("Log"), "sqrt": unary("Sqrt"), "abs": unary("Abs"), "neg": unary("Neg"),
        "softplus": unary("Softplus"), "erf": unary("Erf"),
        "gelu": unary("Gelu", opset=20), "gelu_tanh": unary("Gelu", opset=20, approximate="tanh"),
        "pow_square": model([helper.make_node("Pow", ["x", "E"], ["y"])], {"E": f32(2.0)}),
        "pow_cube": model([helper.make_node("Pow", ["x", "E"], ["y"])], {"E": np.array(3, np.int64)}),
        "pow_half": model([helper.make_node("Pow", ["x", "E"], ["y"])], {"E": f32(0.5)}),
        "pow_minus_one": model([helper.make_node("Pow", ["x", "E"], ["y"])], {"E": np.float32(-1.0)}),
        "clip_inputs": model([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])],
                             {"lo": np.float32(-0.5), "hi": np.float32(1.0)}),
        "clip_max_only": model([helper.make_node("Clip", ["x", "", "hi"], ["y"])], {"hi": np.float32(0.25)}),
        "clip_attrs": model([helper.make_node("Clip", ["x"], ["y"], min=-1.0, max=0.5)], opset=6),
        "max_const": model([helper.make_node("Max", ["x", "C"], ["y"])], {"C": f32(0.0, 1.0, -1.0, 0.5)}),
        "min_scalar": model([helper.make_node("Min", ["x", "C"], ["y"])], {"C": np.float32(0.3)}),
        "max_tensors": model([helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Max", ["x", "n", "C"], ["y"])],
                             {"C": np.float32(0.2)}),
        "min_tensors": model([helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Min", ["x", "a"], ["y"])]),
        "where_const_cond": model([helper.make_node("Neg", ["x"], ["n"]),
                                   helper.make_node("Where", ["C", "x", "n"], ["y"])],
                                  {"C": np.array([True, False, True, False])}),
        "where_const_branch": model([helper.make_node("Where", ["C", "x", "Z"], ["y"])],
                                    {"C": np.array([[False, True, True, False]]), "Z": np.float32(7.0)}),
        "bias_1n": model([helper.make_node("Add", ["x", "B"], ["a"]), helper.make_node("Mul", ["a", "S"], ["b"]),
                          helper.make_node("Sub", ["B", "b"], ["c"]), helper.make_node("Div", ["c", "S"], ["d"]),
                          helper.make_node("Mul", ["d", "K"], ["y"])],
                         {"B": rng.standard_normal((1, W)).astype(np.float32),
                          "S": rng.uniform(1, 2, W).astype(np.float32), "K": np.full((1, 1), 1.5, np.float32)}),
        "div_by_zero": model([helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Div", ["x", "a"], ["d"]),
                              helper.make_node("Div", ["d", "Z"], ["y"])], {"Z": f32(0.0, 1.0, 0.0, 2.0)}),
        "torch_gelu_erf": torch_onnx(torch.nn.Sequential(torch.nn.Linear(W, W), torch.nn.GELU(), torch.nn.Linear(W, W))),
        # before opset 20 torch spells GELU as x * 0.5 * (1 + erf(x / sqrt(2))): Div, Erf, Add, Mul, Mul
        "torch_gelu_opset17": torch_onnx(torch.nn.Sequential(torch.nn.Linear(W, W), torch.nn.GELU()), opset_version=17),
        "torch_gelu_tanh": torch_onnx(torch.nn.Sequential(torch.nn.GELU(approximate="tanh"))),
        "torch_softplus_clip": torch_onnx(torch.nn.Sequential(torch.nn.Linear(W, W), torch.nn.Softplus(),
                                                              torch.nn.Hardtanh(-0.5, 0.5))),
        "torch_buffers": torch_onnx(BufferAffine()),
        "sklearn_mlp": sklearn_mlp(),
    }
    return cases


CASES = cases()


def features(n=24) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((n, W)) * 2).astype(np.float32)
    x[0] = [0.0, -0.0, 1e-3, -1e-3]
    x[1] = [3.5, -3.5, 6.0, -6.0]
    x[2] = [100.0, -100.0, 30.0, -800.0]  # Exp overflows float32 and underflows; erf saturates
    return x


def input_name(name) -> str:
    return onnx.load_from_string(CASES[name]).graph.input[0].name


def expected(name, x):
    out = run_onnx(CASES[name], {input_name(name): x})
    return out.reshape(len(x), -1)


@pytest.mark.parametrize("name", sorted(CASES))
def test_numpy_evaluation_matches_onnxruntime(name):
    graph = from_onnx(onnx.load_from_string(CASES[name]))
    assert graph.unsupported == []
    assert graph.relational == (True, "")
    x = features()
    with np.errstate(all="ignore"):
        got = graph.run({input_name(name): x})[0]
    np.testing.assert_allclose(got.reshape(len(x), -1), expected(name, x), rtol=1e-5, atol=1e-5)


def test_torch_gelu_before_opset_20_is_the_erf_pattern():
    ops = [n.op_type for n in onnx.load_from_string(CASES["torch_gelu_opset17"]).graph.node]
    assert "Gelu" not in ops and {"Div", "Erf", "Add", "Mul"} <= set(ops)


def test_flops_per_value():
    per_value = {"exp": 1, "log": 1, "abs": 1, "softplus": 4, "erf": 12, "gelu": 14, "where_const_cond": 2}
    for name, flops in per_value.items():
        assert from_onnx(onnx.load_from_string(CASES[name])).flops_per_row == flops * W, name


def test_erf_approximation_is_accurate():
    # the SQL form of Erf, evaluated as a double precision expression in Python
    from dbdl.ir.ops.erf import erf_sql

    text = erf_sql("v").replace("ABS", "abs").replace("EXP", "math.exp").replace("LEAST", "min")
    case = text[len("(CASE WHEN v < 0 THEN -"):text.index(" ELSE ")]
    for v in np.linspace(-6, 6, 2001):
        got = eval(case.replace("v", repr(abs(float(v)))).replace("abs", "abs"), {"math": math})  # noqa: S307
        assert abs(got - math.erf(abs(v))) <= 1.5e-7


#: the element-wise operators keep onnxruntime's NaN and ±inf semantics (models with dense layers are
#: left out: the element layout skips zero weights, so inf * 0 is not NaN there)
NON_FINITE = sorted(name for name in CASES if not name.startswith(("torch", "sklearn")))
NAN_INF = f32(np.nan, np.inf, -np.inf, 1.0).reshape(1, W)


def q(db, sql: str) -> str:
    return sqlglot.transpile(sql, read=DbdlDuckDB, write=db.backend.dialect)[0]


def _table(db):
    x = features()
    db.create_table("t", {"id": np.arange(len(x)), "feats": x})
    typ = per_backend(db, duckdb="FLOAT[4]", postgres="FLOAT[4]", spark="FLOAT[]")  # Spark's arrays have no size
    db.sql(q(db, f"INSERT INTO t VALUES (100, NULL), (101, CAST([1.0, NULL, 3.0, 4.0] AS {typ}))"))
    db.create_table("nonfinite", {"id": np.arange(1), "feats": NAN_INF})
    return x


@pytest.fixture
def scored_db(db):
    _table(db)
    return db


def _rows(db, name, strategy, table="t"):
    got = db.sql(f"SELECT id, predict_array('{name}', feats) FROM {table} ORDER BY id", strategy=strategy).fetchall()
    return {r[0]: r[1] for r in got}


@pytest.mark.parametrize("name", sorted(CASES))
def test_sql_matches_onnxruntime_and_null_gives_null(scored_db, name):
    db = scored_db
    x = features()
    db.models.register(name, CASES[name])
    rows = _rows(db, name, "relation")
    assert rows[100] is None and rows[101] is None
    got = np.array([rows[i] for i in range(len(x))], dtype=np.float32)
    want = expected(name, x)
    if name == "pow_minus_one":
        # the one documented difference: SQL cannot tell -0.0 from 0.0, so -0.0 ** -1 is +inf, not -inf
        assert want[0, 1] == -np.inf and got[0, 1] == np.inf
        want[0, 1] = np.inf
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if name in NON_FINITE:  # NaN and ±inf as onnxruntime, in numpy and in SQL
        with np.errstate(all="ignore"):
            want = expected(name, NAN_INF)
            np.testing.assert_allclose(from_onnx(onnx.load_from_string(CASES[name])).run({"x": NAN_INF})[0], want)
        got = np.array([_rows(db, name, "relation", "nonfinite")[0]], dtype=np.float32)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def shaped_model(nodes, inits, in_shape, out_shape):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *in_shape])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", *out_shape])
    graph = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return proto.SerializeToString()


#: models that register and run under onnxruntime but whose shapes the SQL form does not take
REFUSED = {
    "Pow": (shaped_model([helper.make_node("Pow", ["x", "x"], ["y"])], {}, (W,), (W,)), "exponent"),
    "Add": (shaped_model([helper.make_node("Add", ["x", "C"], ["y"])], {"C": np.ones((3, W), np.float32)}, (1, W), (3, W)),
            "change the per-row shape"),
    "Where": (shaped_model([helper.make_node("Where", ["C", "x", "Z"], ["y"])],
                           {"C": np.ones((3, 1), bool), "Z": np.float32(0)}, (1, W), (3, W)), "change the per-row shape"),
}


def test_unbroadcastable_constants_and_runtime_bounds_are_refused_in_the_ir():
    mul = model([helper.make_node("Mul", ["x", "C"], ["y"])], {"C": np.ones((2, W), np.float32)})
    clip = model([helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Clip", ["x", "n"], ["y"])])
    gelu = unary("Gelu", opset=20, approximate="bogus")
    for model_bytes, op, why in [(mul, "Mul", "leading axes are not 1"), (clip, "Clip", "computed at run time"),
                                 (gelu, "Gelu", "approximate='bogus'")]:
        graph = from_onnx(onnx.load_from_string(model_bytes))
        ok, reason = graph.relational
        assert not ok and f"operator {op} " in reason and why in reason and "strategy='udf'" in reason


@pytest.mark.parametrize("op", sorted(REFUSED))
def test_refusal_names_the_operator_and_the_fix(scored_db, op):
    db = scored_db
    model_bytes, why = REFUSED[op]
    db.models.register("bad", model_bytes)
    with pytest.raises(dbdl.StrategyUnavailable, match=rf"operator {op}\b.*{why}.*strategy='udf'"):
        db.sql("SELECT predict_array('bad', feats) FROM t", strategy="relation")


@pytest.mark.parametrize("name", ["sklearn_mlp", "torch_buffers", "torch_gelu_opset17"])
def test_every_layout_gives_the_same_values(scored_db, name):
    db = scored_db
    x = features()
    db.models.register(name, CASES[name])
    for layout in db.backend.relational.layouts:
        rows = _rows(db, name, f"relation:{layout}")
        assert rows[100] is None and rows[101] is None
        got = np.array([rows[i] for i in range(len(x))], dtype=np.float32)
        np.testing.assert_allclose(got, expected(name, x), rtol=1e-5, atol=1e-5, err_msg=layout)
