"""The convolution operators of the IR (Conv 1-D and 2-D with strides, pads, auto_pad, dilations
and groups; MaxPool, AveragePool, GlobalAveragePool / GlobalMaxPool; BatchNormalization folded
into the Conv before it or on its own; residual Add): each in a tiny model built with onnx.helper
and in torch modules exported as a user writes them; the IR's numpy evaluation and its SQL
(relation-centric, on every backend) against onnxruntime, and a CIFAR ResNet-20 on DuckDB."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from cnn_models import resnet20, small_resnet
from conftest import check_ir_against_onnxruntime, export_onnx, relation_sql_mismatches, run_onnx
from onnx import TensorProto, helper, numpy_helper

import dbdl
from dbdl.ir import from_onnx

ROWS = 3


def _model(nodes, shape, inits=None, opset=18) -> bytes:
    """A one-input graph; the output's shape as ONNX's shape inference gives it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *shape])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = {k: numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()}
    graph = helper.make_graph(nodes, "g", [x], [y], list(inits.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    out = next(v for v in [*inferred.graph.value_info, *inferred.graph.output] if v.name == "y" and
               v.type.tensor_type.HasField("shape"))
    model.graph.output[0].CopyFrom(out)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def N(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, **attrs)


def _w(*shape, seed=0):
    return np.random.default_rng(seed + len(shape) + sum(shape)).standard_normal(shape).astype(np.float32)


def _conv(shape, weight, bias=True, **attrs):
    inits = {"W": weight}
    inputs = ["x", "W"]
    if bias:
        inits["B"] = _w(weight.shape[0], seed=9)
        inputs.append("B")
    return _model([N("Conv", inputs, ["y"], **attrs)], shape, inits), shape


def _pool(op, shape, **attrs):
    return _model([N(op, ["x"], ["y"], **attrs)], shape), shape


def handmade() -> dict[str, tuple[bytes, tuple[int, ...]]]:
    bn = {"S": _w(3, seed=1) + 1.5, "Bb": _w(3, seed=2), "M": _w(3, seed=3), "V": np.abs(_w(3, seed=4)) + 0.5}
    return {
        "conv2d_pads": _conv((2, 5, 5), _w(3, 2, 3, 3), pads=[1, 1, 1, 1]),
        "conv2d_strides_asymmetric_pads": _conv((2, 6, 5), _w(3, 2, 3, 2), strides=[2, 2],
                                                pads=[0, 1, 1, 0]),
        "conv2d_dilations": _conv((2, 7, 7), _w(2, 2, 2, 3), dilations=[2, 2], pads=[1, 0, 0, 0]),
        "conv2d_groups": _conv((4, 5, 5), _w(4, 2, 3, 3), group=2),
        "conv2d_depthwise": _conv((3, 5, 5), _w(6, 1, 3, 3), group=3, pads=[1, 1, 1, 1], bias=False),
        "conv2d_same_upper": _conv((2, 5, 5), _w(2, 2, 2, 2), strides=[2, 2], auto_pad="SAME_UPPER"),
        "conv2d_same_lower": _conv((2, 5, 5), _w(2, 2, 2, 2), strides=[2, 2], auto_pad="SAME_LOWER"),
        "conv3d_strides": _conv((2, 4, 4, 4), _w(2, 2, 2, 2, 2), strides=[2, 1, 2], pads=[1, 0, 0, 0, 1, 1]),
        "conv2d_valid": _conv((2, 5, 4), _w(3, 2, 3, 2), auto_pad="VALID", bias=False),
        "conv2d_pad_beyond_kernel": _conv((2, 3, 3), _w(2, 2, 1, 1), pads=[1, 1, 1, 1]),
        "conv2d_pad_beyond_kernel_no_bias": _conv((2, 3, 3), _w(2, 2, 1, 1), pads=[1, 1, 1, 1],
                                                  bias=False),
        "conv1d_strides_pads": _conv((3, 9), _w(4, 3, 3), strides=[2], pads=[1, 1]),
        "conv1d_dilations_groups": _conv((4, 9), _w(2, 2, 3), dilations=[2], group=2),
        "maxpool2d_pads_strides": _pool("MaxPool", (2, 5, 5), kernel_shape=[3, 3], strides=[2, 2],
                                        pads=[1, 1, 1, 1]),
        "maxpool2d_ceil_mode": _pool("MaxPool", (2, 5, 5), kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
        "maxpool2d_dilations": _pool("MaxPool", (1, 6, 6), kernel_shape=[2, 2], strides=[2, 2], dilations=[2, 2],
                                     pads=[1, 0, 0, 1]),
        "maxpool1d": _pool("MaxPool", (3, 8), kernel_shape=[2], strides=[2]),
        "avgpool2d_exclude_pad": _pool("AveragePool", (2, 5, 5), kernel_shape=[3, 3], strides=[2, 2],
                                       pads=[1, 1, 1, 1]),
        "avgpool2d_include_pad": _pool("AveragePool", (2, 5, 5), kernel_shape=[3, 3], strides=[2, 2],
                                       pads=[1, 1, 1, 1], count_include_pad=1),
        "avgpool2d_ceil_include_pad": _pool("AveragePool", (2, 6, 6), kernel_shape=[3, 3], strides=[2, 2],
                                            pads=[1, 1, 0, 0], ceil_mode=1, count_include_pad=1),
        "avgpool2d_ceil_exclude_pad": _pool("AveragePool", (2, 6, 6), kernel_shape=[3, 3], strides=[2, 2],
                                            ceil_mode=1),
        "avgpool1d_same_lower": _pool("AveragePool", (2, 7), kernel_shape=[2], strides=[2],
                                      auto_pad="SAME_LOWER"),
        "global_avgpool": _pool("GlobalAveragePool", (3, 4, 5)),
        "global_maxpool_1d": _pool("GlobalMaxPool", (3, 6)),
        "batchnorm_alone": (_model([N("BatchNormalization", ["x", "S", "Bb", "M", "V"], ["y"], epsilon=1e-3)],
                                   (3, 4, 4), bn), (3, 4, 4)),
        "conv_batchnorm_relu": (_model([N("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
                                        N("BatchNormalization", ["c", "S", "Bb", "M", "V"], ["b"]),
                                        N("Relu", ["b"], ["y"])], (2, 4, 4),
                                       {"W": _w(3, 2, 3, 3), **bn}), (2, 4, 4)),
        "conv_read_by_batchnorm_and_add": (_model([N("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
                                                   N("BatchNormalization", ["c", "S", "Bb", "M", "V"], ["b"]),
                                                   N("Add", ["b", "c"], ["y"])], (2, 4, 4),
                                                  {"W": _w(3, 2, 3, 3), **bn}), (2, 4, 4)),
        "residual_block": (_model([N("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]), N("Relu", ["c1"], ["r1"]),
                                   N("Conv", ["r1", "W2"], ["c2"], pads=[1, 1, 1, 1]), N("Add", ["c2", "x"], ["s"]),
                                   N("Relu", ["s"], ["y"])], (2, 4, 4),
                                  {"W1": _w(2, 2, 3, 3, seed=5), "B1": _w(2, seed=6), "W2": _w(2, 2, 3, 3, seed=7)}),
                           (2, 4, 4)),
    }


class Conv1dNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv1d(2, 4, 3, padding=1), torch.nn.BatchNorm1d(4), torch.nn.ReLU(), torch.nn.MaxPool1d(2),
            torch.nn.Conv1d(4, 4, 3, groups=2, dilation=2), torch.nn.AvgPool1d(2, ceil_mode=True), torch.nn.Flatten(),
            torch.nn.Linear(4, 3))

    def forward(self, x):
        return self.net(x)


def torch_made() -> dict[str, tuple[bytes, tuple[int, ...]]]:
    torch.manual_seed(4)
    return {"torch_conv1d": (export_onnx(Conv1dNet().eval(), (2, 12)), (2, 12)),
            "torch_small_resnet": (export_onnx(small_resnet(), (3, 8, 8)), (3, 8, 8))}


MODELS = {**handmade(), **torch_made()}


def _rows(shape, n=ROWS) -> np.ndarray:
    return np.random.default_rng(11).standard_normal((n, *shape)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_numpy_evaluation_matches_onnxruntime(name):
    model_bytes, shape = MODELS[name]
    check_ir_against_onnxruntime(model_bytes, _rows(shape))


def test_operators_are_discovered():
    from dbdl.ir import Op

    assert {"Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization"} <= set(
        Op.registry)


def test_batchnorm_is_folded_into_the_conv_before_it():
    def ops(name):
        return [n.op.op_type for n in from_onnx(onnx.load_from_string(MODELS[name][0])).nodes]

    assert ops("conv_batchnorm_relu") == ["Conv", "Relu"]
    assert ops("batchnorm_alone") == ["BatchNormalization"]
    # the Conv's output is read by the Add too: folding would change what the Add reads
    assert ops("conv_read_by_batchnorm_and_add") == ["Conv", "BatchNormalization", "Add"]
    assert "BatchNormalization" not in ops("torch_small_resnet") and "Add" in ops("torch_small_resnet")


def test_every_model_through_sql_matches_onnxruntime(db):
    """All of them in one database: per model, predict_array with strategy='relation' over a
    table whose last row has NULL features."""
    failures = relation_sql_mismatches(db, MODELS, _rows)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("layout", ["element", "blocked"])
def test_both_duckdb_layouts_match_onnxruntime(layout):
    """DuckDB runs either weight layout: the blocked one packs each patch into an array and takes
    one dot product per output value."""
    with dbdl.connect("duckdb://:memory:") as db:
        failures = relation_sql_mismatches(db, MODELS, _rows, strategy=f"relation:{layout}")
    assert not failures, "\n".join(failures)


def test_dilations_with_auto_pad_same_are_refused():
    """onnxruntime refuses a dilated Conv with auto_pad SAME and pools one another way than ONNX's
    shape rule: the IR refuses both, so such a model runs UDF-centric."""
    for op, inits, attrs in [("Conv", {"W": _w(2, 2, 3, 3)}, {}), ("MaxPool", {}, {"kernel_shape": [2, 2]})]:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 6, 6])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        node = N(op, ["x", *inits], ["y"], dilations=[2, 2], auto_pad="SAME_UPPER", **attrs)
        graph = helper.make_graph([node], "g", [x], [y], [numpy_helper.from_array(v, k) for k, v in inits.items()])
        ok, why = from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])).relational
        assert not ok and f"operator {op}" in why and "dilations and auto_pad SAME_UPPER" in why, why


def test_conv_transpose_is_refused_by_name(db):
    w = _w(2, 3, 3, 3)
    model = _model([N("ConvTranspose", ["x", "W"], ["y"])], (2, 4, 4), {"W": w})
    ok, why = from_onnx(onnx.load_from_string(model)).relational
    assert not ok and "operator ConvTranspose" in why and "use strategy='udf'" in why
    db.models.register("deconv", model)
    db.create_table("s", {"id": np.arange(2), "x": _rows((32,), 2)})
    with pytest.raises(dbdl.StrategyUnavailable, match=r"operator ConvTranspose.*use strategy='udf'"):
        db.sql("SELECT predict_array('deconv', x) FROM s", strategy="relation")


def test_cnn_flops_count_the_pools():
    from dbdl_udf.flops import count

    assert count("MaxPool", [(2, 5, 5)], (2, 3, 3), {"kernel_shape": [3, 3]}) == 2 * 9 * 9
    assert count("GlobalAveragePool", [(3, 4, 5)], (3, 1, 1), {}) == 60


def test_cifar_resnet20_relation_centric_on_duckdb():
    """A CIFAR ResNet-20 as a user exports it, over two images, relation-centric on DuckDB."""
    model_bytes = export_onnx(resnet20(), (3, 32, 32))
    graph = from_onnx(onnx.load_from_string(model_bytes))
    assert graph.relational == (True, "")
    assert sum(n.op.op_type == "Conv" for n in graph.nodes) == 21
    x = np.random.default_rng(3).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    expected = run_onnx(model_bytes, {"x": x})
    np.testing.assert_allclose(graph.run({"x": x})[0], expected, rtol=1e-4, atol=1e-4)
    with dbdl.connect("duckdb://:memory:") as db:
        db.models.register("resnet20", model_bytes)
        db.create_table("images", {"id": np.arange(2), "x": x.reshape(2, -1)})
        rows = db.sql("SELECT id, predict_array('resnet20', x) FROM images ORDER BY id", strategy="relation").fetchall()
    np.testing.assert_allclose(np.array([r[1] for r in rows]), expected, rtol=1e-4, atol=1e-4)


def test_a_model_exported_with_batch_one_is_per_row():
    """torch.onnx.export with a (1, 3, 8, 8) example and no dynamic axes: the Reshape/Flatten
    constants hold the 1, which the IR reads as the row itself."""
    import io

    buf = io.BytesIO()
    torch.onnx.export(small_resnet(), (torch.randn(1, 3, 8, 8),), buf, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    proto.graph.node.append(N("Reshape", [proto.graph.output[0].name, "dbdl_shape"], ["flat"]))
    proto.graph.initializer.append(numpy_helper.from_array(np.array([1, -1], np.int64), "dbdl_shape"))
    proto.graph.output[0].name = "flat"
    graph = from_onnx(proto)
    assert graph.relational == (True, "") and graph.output_shape() == (5,)
    x = _rows((3, 8, 8), 1)
    np.testing.assert_allclose(graph.run({graph.inputs[0][0]: x})[0],
                               run_onnx(proto.SerializeToString(), {graph.inputs[0][0]: x}), rtol=1e-5, atol=1e-5)
    # scored in slices of one row (where registration cannot make the batch symbolic): per-row SQL
    # takes it; a fixed batch of 2 it does not
    import dataclasses

    import onnxruntime as ort
    from dbdl_udf.runtime import signature_of

    from dbdl.names import ResolvedModel
    from dbdl.strategies.relation import graph_problem

    signature = signature_of(ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]))
    one = ResolvedModel("m", 1, "0" * 64, dataclasses.replace(signature, batch=1))
    assert graph_problem(graph, one) == ""
    two = ResolvedModel("m", 1, "0" * 64, dataclasses.replace(signature, batch=2))
    assert "fixed batch size of 2" in graph_problem(graph, two)
