"""One FLOP count per operator (dbdl_udf.flops): the registry's estimate_cost and the IR's
flops_per_row agree with a hand count on models from real converters."""

from __future__ import annotations


import onnx
import torch
from conftest import export_onnx, make_mlp

from dbdl.ir import from_onnx
from dbdl_udf import flops
from dbdl_udf.cost import estimate_cost


def test_rules_per_operator():
    assert flops.count("Gemm", [(8,), (8, 3), (3,)], (3,)) == 2 * 8 * 3
    assert flops.count("Gemm", [(8,), (3, 8), (3,)], (3,), {"transB": 1}) == 2 * 8 * 3
    assert flops.count("MatMul", [(5, 8), (8, 3)], (5, 3)) == 2 * 5 * 3 * 8
    assert flops.count("Conv", [(1, 8, 8), (4, 1, 3, 3), (4,)], (4, 8, 8)) == 2 * 4 * 8 * 8 * 9
    assert flops.count("Sigmoid", [(6,)], (6,)) == 24 and flops.count("Softmax", [(3,)], (3,)) == 15
    assert flops.count("Reshape", [(2, 3), (2,)], (6,)) == 0
    assert flops.count("Relu", [(6,)], (6,)) == 6 and flops.count("SomeNewOp", [None], (2, None)) == 2


def test_mlp_counts_by_hand():
    """8 -> 16 -> 3 with a ReLU and a Softmax, exported by torch.onnx.export (TorchScript)."""
    model = make_mlp((8, 16, 3), seed=0, final=torch.nn.Softmax(dim=1))
    proto = onnx.load_from_string(export_onnx(model, 8))
    hand = 2 * 8 * 16 + 16 + 2 * 16 * 3 + 5 * 3  # Gemm, Relu, Gemm, Softmax
    n_params, registry = estimate_cost(proto)
    assert n_params == 8 * 16 + 16 + 16 * 3 + 3
    assert registry == hand
    assert from_onnx(proto).flops_per_row == hand


def test_conv_net_counts_by_hand():
    """Conv(1 -> 4, 3x3, padding 1) on 8x8, ReLU, MaxPool 2x2, Flatten, Linear(64 -> 3), Sigmoid."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(64, 3), torch.nn.Sigmoid()).eval()
    proto = onnx.load_from_string(export_onnx(net, (1, 8, 8)))
    assert [n.op_type for n in proto.graph.node] == ["Conv", "Relu", "MaxPool", "Flatten", "Gemm", "Sigmoid"]
    conv = 2 * (4 * 8 * 8) * (1 * 3 * 3)  # 2 x output values x (input channels x kernel)
    pool = 4 * 4 * 4 * (2 * 2)  # one per window tap: output values x kernel
    hand = conv + 4 * 8 * 8 + pool + 0 + 2 * 64 * 3 + 4 * 3  # Conv, Relu, MaxPool, Flatten, Gemm, Sigmoid
    n_params, registry = estimate_cost(proto)
    assert n_params == 4 * 9 + 4 + 64 * 3 + 3
    assert registry == hand
    # the IR holds every operator and counts by the same rules
    graph = from_onnx(proto)
    assert graph.unsupported == [] and graph.flops_per_row == hand
