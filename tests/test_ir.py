"""The unified IR: built from ONNX, evaluated in numpy, compared with onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import export_onnx, run_onnx
from onnx import TensorProto, helper, numpy_helper

from dbdl.ir import Op, from_onnx


def torch_models():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm1d(16)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2.0)
    return {
        "mlp_bn_leaky_tanh_softmax": (torch.nn.Sequential(
            torch.nn.Linear(8, 16), bn, torch.nn.LeakyReLU(0.1), torch.nn.Linear(16, 8), torch.nn.Tanh(),
            torch.nn.Linear(8, 4), torch.nn.Softmax(dim=1)), (8,)),
        "sigmoid_scorer": (torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1),
                                               torch.nn.Sigmoid()), (8,)),
        "flatten_image": (torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)), (1, 4, 4)),
    }


def graph_model(nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def handmade_models():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 3)).astype(np.float32)
    c = rng.standard_normal(3).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])
    matmul_ops = graph_model(
        [helper.make_node("MatMul", ["x", "W"], ["a"]), helper.make_node("Add", ["a", "C"], ["b"]),
         helper.make_node("Mul", ["b", "C"], ["m"]), helper.make_node("Sub", ["m", "C"], ["s"]),
         helper.make_node("Div", ["s", "D"], ["d"]), helper.make_node("Cast", ["d"], ["e"], to=TensorProto.FLOAT),
         helper.make_node("Identity", ["e"], ["y"])],
        [x], [y], {"W": w, "C": c, "D": np.full(3, 2.0, np.float32)})
    r = helper.make_tensor_value_info("r", TensorProto.FLOAT, ["n", 2, 3])
    reshape = graph_model(
        [helper.make_node("Reshape", ["x", "S"], ["r"])], [x], [r], {"S": np.array([-1, 2, 3], np.int64)})
    return {"matmul_add_mul_sub_div_cast_identity": (matmul_ops, (6,)), "reshape": (reshape, (6,))}


def all_models():
    models = {name: (export_onnx_shaped(m, shape), shape) for name, (m, shape) in torch_models().items()}
    models.update(handmade_models())
    return models


def export_onnx_shaped(module, shape):
    return export_onnx(module.eval(), tuple(shape))


MODELS = all_models()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_numpy_evaluation_matches_onnxruntime(name):
    model_bytes, shape = MODELS[name]
    graph = from_onnx(onnx.load_from_string(model_bytes))
    assert graph.unsupported == []
    x = np.random.default_rng(0).standard_normal((7, *shape)).astype(np.float32)
    np.testing.assert_allclose(graph.run({"x": x})[0], run_onnx(model_bytes, {"x": x}), rtol=1e-5, atol=1e-5)


def test_batchnorm_is_folded_and_facts_are_counted():
    model_bytes, _ = MODELS["mlp_bn_leaky_tanh_softmax"]
    graph = from_onnx(onnx.load_from_string(model_bytes))
    assert [n.op.op_type for n in graph.nodes] == ["Gemm", "LeakyRelu", "Gemm", "Tanh", "Gemm", "Softmax"]
    weights = 8 * 16 + 16 + 16 * 8 + 8 + 8 * 4 + 4
    assert graph.param_bytes == 4 * weights
    dense = 2 * (8 * 16 + 16 * 8 + 8 * 4)
    assert graph.flops_per_row == dense + 16 + 4 * 8 + 5 * 4
    assert graph.relational == (True, "")
    assert graph.output_shape() == (4,)


def test_unsupported_operator_is_named():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, 5, 5])
    conv = graph_model([helper.make_node("ConvTranspose", ["x", "K"], ["y"])], [x], [y],
                       {"K": np.ones((1, 1, 2, 2), np.float32)})
    graph = from_onnx(onnx.load_from_string(conv))
    ok, why = graph.relational
    assert not ok and "operator ConvTranspose" in why
    with pytest.raises(NotImplementedError, match="ConvTranspose"):
        graph.run({"x": np.zeros((1, 1, 4, 4), np.float32)})


def test_operators_are_discovered():
    expected = {"Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Softmax",
                "Flatten", "Reshape", "Cast", "Identity"}
    assert expected <= set(Op.registry)


def test_an_output_no_weight_reaches_still_has_its_value(db):
    """A bias-free dense layer whose weight column is all zero: its output is 0, not a missing
    position (the element layout joins only the nonzero weights)."""
    from conftest import export_onnx, run_onnx

    layer = torch.nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        layer.weight[1] = 0
    data = export_onnx(layer, 4)
    x = np.random.default_rng(3).random((5, 4)).astype(np.float32)
    db.models.register("z", data)
    db.create_table("t", {"id": np.arange(5), "feats": x})
    for strategy in ["relation:" + layout for layout in db.backend.relational.layouts]:
        got = db.sql("SELECT id, predict_array('z', feats) FROM t ORDER BY id", strategy=strategy).fetchall()
        np.testing.assert_allclose(np.array([v for _, v in got]), run_onnx(data, {"x": x}), atol=1e-6)
