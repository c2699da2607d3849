"""The shape and reduction operators of the IR (Transpose, Concat, Split, Slice, Squeeze/Unsqueeze,
Reshape, Softmax/LogSoftmax over any axis, LayerNormalization, ReduceMean/Sum/Max/Min): each in a
tiny model built with onnx.helper and in plain torch modules exported as a user writes them; the
IR's numpy evaluation and its SQL (relation-centric, on every backend) against onnxruntime, and a
row of NULL features gives NULL."""

from __future__ import annotations


import numpy as np
import onnx
import pytest
import torch
from conftest import check_ir_against_onnxruntime, export_onnx, relation_sql_mismatches
from onnx import TensorProto, helper, numpy_helper

import dbdl
from dbdl.ir import from_onnx

ROWS = 5


def _model(nodes, shape, out_shape, inits=None, opset=18) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *shape])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", *out_shape])
    inits = {k: numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()}
    graph = helper.make_graph(nodes, "g", [x], [y], list(inits.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def N(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, **attrs)


def _i64(*v):
    return np.array(v, np.int64)


def handmade() -> dict[str, tuple[bytes, tuple[int, ...]]]:
    rng = np.random.default_rng(5)
    g8, b8 = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    g34 = rng.standard_normal((3, 4)).astype(np.float32)
    return {
        "transpose_3d": (_model([N("Transpose", ["x"], ["y"], perm=[0, 3, 1, 2])], (2, 3, 4), (4, 2, 3)), (2, 3, 4)),
        "transpose_2d": (_model([N("Transpose", ["x"], ["t"], perm=[0, 2, 1]), N("Relu", ["t"], ["y"])], (3, 5),
                                (5, 3)), (3, 5)),
        "concat_last_axis": (_model([N("Relu", ["x"], ["r"]), N("Concat", ["x", "r"], ["y"], axis=-1)], (2, 3), (2, 6)),
                             (2, 3)),
        "concat_first_axis": (_model([N("Relu", ["x"], ["r"]), N("Concat", ["r", "x", "r"], ["y"], axis=1)], (2, 3),
                                     (6, 3)), (2, 3)),
        "concat_middle_axis_uneven": (_model([N("Slice", ["x", "S", "E", "A"], ["a"]), N("Relu", ["x"], ["r"]),
                                              N("Concat", ["a", "r", "a"], ["y"], axis=2)], (2, 3, 4), (2, 5, 4),
                                             {"S": _i64(1), "E": _i64(2), "A": _i64(2)}), (2, 3, 4)),
        "transpose_then_reduce_keepdims": (_model([N("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
                                                   N("ReduceSum", ["t", "A"], ["y"], keepdims=1)], (2, 3, 4),
                                                  (3, 1, 2), {"A": _i64(2)}), (2, 3, 4)),
        "split_sizes_input": (_model([N("Split", ["x", "S"], ["a", "b"], axis=1), N("Relu", ["a"], ["r"]),
                                      N("Concat", ["b", "r"], ["y"], axis=1)], (6,), (6,), {"S": _i64(2, 4)},
                                     opset=13), (6,)),
        "split_num_outputs": (_model([N("Split", ["x"], ["a", "b", "c"], axis=2, num_outputs=3),
                                      N("Concat", ["c", "a", "b"], ["y"], axis=2)], (2, 7), (2, 7)), (2, 7)),
        "split_attribute": (_model([N("Split", ["x"], ["a", "b"], axis=1, split=[1, 2]),
                                    N("Concat", ["b", "a"], ["y"], axis=1)], (3, 2), (3, 2), opset=11), (3, 2)),
        "slice_steps": (_model([N("Slice", ["x", "S", "E", "A", "T"], ["y"])], (4, 10), (3, 3),
                               {"S": _i64(1, 2), "E": _i64(4, 9), "A": _i64(1, 2), "T": _i64(1, 3)}), (4, 10)),
        "slice_negative_step": (_model([N("Slice", ["x", "S", "E", "A", "T"], ["y"])], (3, 7), (2, 4),
                                       {"S": _i64(-1, -1), "E": _i64(-100, 0), "A": _i64(-1, 1), "T": _i64(-2, -1)}),
                                (3, 7)),
        "slice_attributes": (_model([N("Slice", ["x"], ["y"], starts=[0, 1], ends=[2**62, 3], axes=[0, 1])], (5,),
                                    (2,), opset=9), (5,)),
        "unsqueeze_softmax_squeeze": (_model([N("Unsqueeze", ["x", "A"], ["u"]), N("Softmax", ["u"], ["s"], axis=-1),
                                              N("Squeeze", ["s", "A"], ["y"])], (3,), (3,), {"A": _i64(1)}), (3,)),
        "squeeze_attribute": (_model([N("Unsqueeze", ["x"], ["u"], axes=[1, 3]), N("Squeeze", ["u"], ["y"], axes=[3])],
                                     (2,), (1, 2), opset=11), (2,)),
        "reshape_zero_minus_one": (_model([N("Reshape", ["x", "S"], ["r"]),
                                           N("ReduceSum", ["r", "A"], ["y"], keepdims=0)], (2, 6), (2, 3),
                                          {"S": _i64(0, 0, -1, 2), "A": _i64(3)}), (2, 6)),
        "softmax_middle_axis": (_model([N("Softmax", ["x"], ["y"], axis=1)], (3, 4), (3, 4)), (3, 4)),
        "softmax_opset11_flattens": (_model([N("Softmax", ["x"], ["y"], axis=1)], (3, 4), (3, 4), opset=11), (3, 4)),
        "log_softmax_last_of_two": (_model([N("LogSoftmax", ["x"], ["y"], axis=-1)], (3, 4), (3, 4)), (3, 4)),
        "log_softmax_middle_axis": (_model([N("LogSoftmax", ["x"], ["y"], axis=2)], (2, 3, 4), (2, 3, 4)), (2, 3, 4)),
        "layer_norm_last_axis": (_model([N("LayerNormalization", ["x", "G", "B"], ["y"], axis=-1, epsilon=1e-3)],
                                        (3, 4), (3, 4), {"G": g8, "B": b8}), (3, 4)),
        "layer_norm_two_axes": (_model([N("LayerNormalization", ["x", "G"], ["y"], axis=2)], (2, 3, 4), (2, 3, 4),
                                       {"G": g34}), (2, 3, 4)),
        "reduce_mean_middle_keepdims": (_model([N("ReduceMean", ["x"], ["y"], axes=[2])], (3, 4, 2), (3, 1, 2),
                                               opset=13), (3, 4, 2)),
        "reduce_max_two_axes": (_model([N("ReduceMax", ["x", "A"], ["y"], keepdims=0)], (3, 4, 2), (4,),
                                       {"A": _i64(1, -1)}), (3, 4, 2)),
        "reduce_min_first_axis": (_model([N("ReduceMin", ["x", "A"], ["y"], keepdims=0)], (3, 4), (4,),
                                         {"A": _i64(1)}), (3, 4)),
        "reduce_sum_whole_row": (_model([N("ReduceSum", ["x", "A"], ["y"], keepdims=1)], (3, 4), (1, 1),
                                        {"A": _i64(1, 2)}, opset=13), (3, 4)),
    }


class PermuteLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(12, 5)

    def forward(self, x):  # x: (n, 3, 4)
        return self.fc(x.permute(0, 2, 1).flatten(1))


class TwoBranches(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = torch.nn.Linear(6, 4), torch.nn.Linear(6, 3), torch.nn.Linear(7, 2)

    def forward(self, x):
        return self.out(torch.cat([self.a(x), torch.relu(self.b(x))], dim=1))


class Window(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(x[:, 2:10])


class Normed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm, self.fc = torch.nn.LayerNorm(6), torch.nn.Linear(6, 3)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 2.0)
            self.norm.bias.uniform_(-1, 1)

    def forward(self, x):
        return self.fc(self.norm(x))


class MeanOverAxis(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x):  # x: (n, 4, 6): the mean over the 4 steps
        return self.fc(x.mean(1))


class LogProbabilities(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 4)

    def forward(self, x):
        return torch.log_softmax(self.fc(x), dim=1)


def exported(module, shape) -> bytes:
    """torch.onnx.export as a user writes it (TorchScript exporter, dynamic batch axis)."""
    return export_onnx(module.eval(), tuple(shape))


def torch_made() -> dict[str, tuple[bytes, tuple[int, ...]]]:
    torch.manual_seed(4)
    modules = {"torch_permute_linear": (PermuteLinear(), (3, 4)), "torch_cat_branches": (TwoBranches(), (6,)),
               "torch_slice_window": (Window(), (12,)), "torch_layer_norm": (Normed(), (6,)),
               "torch_mean_over_axis": (MeanOverAxis(), (4, 6)), "torch_log_softmax": (LogProbabilities(), (6,))}
    return {name: (exported(m, shape), shape) for name, (m, shape) in modules.items()}


MODELS = {**handmade(), **torch_made()}


def _rows(shape) -> np.ndarray:
    return np.random.default_rng(11).standard_normal((ROWS, *shape)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_numpy_evaluation_matches_onnxruntime(name):
    model_bytes, shape = MODELS[name]
    check_ir_against_onnxruntime(model_bytes, _rows(shape))


def test_torch_exports_use_the_new_operators():
    ops = {name: {n.op.op_type for n in from_onnx(onnx.load_from_string(MODELS[name][0])).nodes}
           for name in MODELS if name.startswith("torch_")}
    assert "Transpose" in ops["torch_permute_linear"]
    assert "Concat" in ops["torch_cat_branches"]
    assert "Slice" in ops["torch_slice_window"]
    assert "LayerNormalization" in ops["torch_layer_norm"]
    assert "ReduceMean" in ops["torch_mean_over_axis"]
    assert "LogSoftmax" in ops["torch_log_softmax"]


def test_shape_operators_cost_no_flops():
    graph = from_onnx(onnx.load_from_string(MODELS["split_sizes_input"][0]))
    assert [n.op.op_type for n in graph.nodes] == ["Split", "Split", "Relu", "Concat"]
    assert graph.flops_per_row == 2  # the Relu's two values; Split and Concat move values only


def test_every_model_through_sql_matches_onnxruntime(db):
    """All of them in one database (registration is the slow part): per model, predict_array with
    strategy='relation' over a table whose last row has NULL features."""
    failures = relation_sql_mismatches(db, MODELS, _rows)
    assert not failures, "\n".join(failures)


class Recurrent(torch.nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.rnn, self.fc = cell(4, 5, batch_first=True), torch.nn.Linear(5, 2)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])


class SelfAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn, self.fc = torch.nn.MultiheadAttention(4, 1, batch_first=True), torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.attn(x, x, x, need_weights=False)[0].mean(1))


@pytest.mark.parametrize("module, operator", [(lambda: Recurrent(torch.nn.LSTM), "LSTM"),
                                              (lambda: Recurrent(torch.nn.GRU), "GRU"),
                                              (SelfAttention, "MatMul")], ids=["lstm", "gru", "attention"])
def test_recurrent_layers_and_attention_are_refused_by_name(module, operator):
    torch.manual_seed(0)
    graph = from_onnx(onnx.load_from_string(exported(module(), (3, 4))))
    ok, why = graph.relational
    assert not ok and f"operator {operator} (" in why and "by design" in why


def test_refusal_through_sql_names_the_operator_and_the_fix(db):
    torch.manual_seed(0)
    db.models.register("lstm", exported(Recurrent(torch.nn.LSTM), (3, 4)))
    db.create_table("s", {"id": np.arange(2), "x": _rows((12,))[:2]})
    with pytest.raises(dbdl.StrategyUnavailable, match=r"operator LSTM \(a recurrent layer\).*use strategy='udf'"):
        db.sql("SELECT predict_array('lstm', x) FROM s", strategy="relation")
    got = db.sql("SELECT id, predict_array('lstm', x) FROM s ORDER BY id", strategy="udf").fetchall()
    assert len(got) == 2 and all(len(r[1]) == 2 for r in got)


def test_operators_are_discovered():
    from dbdl.ir import Op

    assert {"Transpose", "Concat", "Split", "Slice", "Squeeze", "Unsqueeze", "LogSoftmax", "LayerNormalization",
            "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"} <= set(Op.registry)


def test_a_matmul_by_a_weight_the_ir_cannot_fold_is_not_called_attention():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])
    shape = numpy_helper.from_array(_i64(3, 2), "S")
    nodes = [N("ConstantOfShape", ["S"], ["W"], value=numpy_helper.from_array(np.ones(1, np.float32))),
             N("MatMul", ["x", "W"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [shape]),
                              opset_imports=[helper.make_opsetid("", 18)])
    ok, why = from_onnx(model).relational
    assert not ok and "operator ConstantOfShape is not supported" in why
