"""dbdl's own operator graph, built from ONNX: typed per-row shapes, FLOPs and parameter bytes
per operator, a numpy evaluator, and what rules SQL compilation out."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from math import prod
from typing import Any

import numpy as np

from .ops import Op, Shape


@dataclass
class Node:
    op: Op
    inputs: list[str]  # runtime inputs ("" where the input is a constant held by the op)
    outputs: list[str]
    shape: Shape = ()
    #: per-row shape of each output, for an operator with several (``Op.n_outputs`` > 1)
    out_shapes: list[Shape] = field(default_factory=list)


@dataclass
class Graph:
    inputs: list[tuple[str, Shape]]
    outputs: list[str]
    nodes: list[Node]
    #: (op type, reason) of each operator that the IR cannot evaluate or compile
    unsupported: list[tuple[str, str]] = field(default_factory=list)
    #: bytes of every constant in the ONNX file (what loading the whole model costs, read or not)
    initializer_bytes: int = 0
    #: (op type, what it is) of operators relation-centric execution refuses by design: recurrent
    #: layers and attention (a product of two activations); named before any other refusal
    refused: list[tuple[str, str]] = field(default_factory=list)

    # -- facts -------------------------------------------------------------------------------

    @property
    def flops_per_row(self) -> int:
        shapes = {name: shape for name, shape in self.inputs}
        total = 0
        for node in self.nodes:
            in_shapes = [shapes.get(i) for i in node.inputs]
            total += node.op.flops(in_shapes, node.shape)
            shapes.update(zip(node.outputs, node.out_shapes or [node.shape]))
        return total

    @property
    def param_bytes(self) -> int:
        return sum(node.op.param_bytes() for node in self.nodes)

    @property
    def relational(self) -> tuple[bool, str]:
        """(True, "") when every operator compiles to SQL, else (False, the reason)."""
        if self.refused:
            op, what = self.refused[0]
            return False, f"operator {op} ({what}) has no SQL form, by design; use strategy='udf'"
        if self.unsupported:
            op, why = self.unsupported[0]
            return False, f"operator {op} is not supported by dbdl's IR ({why}); use strategy='udf'"
        if len(self.inputs) != 1:
            return False, "the SQL compiler takes models with one input; use strategy='udf'"
        for node in self.nodes:
            if not node.op.relational:
                return False, f"operator {node.op.op_type} has no SQL form; use strategy='udf'"
        return True, ""

    def output_problem(self, index: int = 0) -> str:
        """Why output number ``index`` has no SQL form though every operator has one (an operator's
        output that does not compile, such as a string label), or ""."""
        missing: dict[str, str] = {}
        for node in self.nodes:
            lacking = [i for i in node.inputs if i in missing]
            for k, name in enumerate(node.outputs):
                why = missing[lacking[0]] if lacking else node.op.output_problem(k)
                if why:
                    missing[name] = why
        return missing.get(self.outputs[index], "")

    def output_shape(self, index: int = 0) -> Shape:
        for node in self.nodes:
            if self.outputs[index] in node.outputs:
                return (node.out_shapes or [node.shape])[node.outputs.index(self.outputs[index])]
        return dict(self.inputs)[self.outputs[index]]

    def prefix(self, k: int) -> "Graph":
        """Nodes 0..k alone, as a graph whose output is node k's (a hybrid plan's SQL part)."""
        return Graph(list(self.inputs), [self.nodes[k].outputs[0]], self.nodes[:k + 1])

    # -- evaluation ----------------------------------------------------------------------------

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Evaluate on batched numpy arrays (tests compare this with onnxruntime)."""
        if self.unsupported:
            op, why = self.unsupported[0]
            raise NotImplementedError(f"cannot evaluate {op}: {why}")
        values: dict[str, Any] = dict(feeds)
        for node in self.nodes:
            args = tuple(values[i] if i else None for i in node.inputs)
            result = node.op.run(*args)
            if node.op.n_outputs > 1:  # a tuple, one array per output
                values.update(zip(node.outputs, result))
            else:
                values[node.outputs[0]] = result
        return [values[o] for o in self.outputs]


def _attrs(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def from_onnx(proto) -> Graph:
    """Build the IR from an ONNX ModelProto (BatchNormalization folded into the layer before it)."""
    from onnx import numpy_helper

    from .embedding_bag import embedding_bags

    proto = embedding_bags(proto)  # torch's fixed-size EmbeddingBag loop: a Gather and a reduction
    constants: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    graph_inputs = []
    shapes: dict[str, Shape] = {}
    for value in proto.graph.input:
        if value.name in constants:
            continue
        dims = value.type.tensor_type.shape.dim
        shape = tuple(int(d.dim_value) for d in dims[1:])
        graph_inputs.append((value.name, shape))
        shapes[value.name] = shape
    graph = Graph(graph_inputs, [o.name for o in proto.graph.output], [],
                  initializer_bytes=int(sum(c.nbytes for c in constants.values())))
    uses = Counter([name for n in proto.graph.node for name in n.input] + [o.name for o in proto.graph.output])
    batch_one = bool(graph_inputs) and all(_fixed_first_axis(v) == 1 for v in proto.graph.input
                                           if v.name not in constants)
    opset = next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    for onnx_node, extra in _one_output_each(proto.graph.node):
        attrs = _attrs(onnx_node)
        if onnx_node.op_type == "Constant":
            value = attrs.get("value")
            if value is not None:
                constants[onnx_node.output[0]] = numpy_helper.to_array(value)
                continue
        if onnx_node.op_type == "BatchNormalization" and uses[onnx_node.input[0]] == 1 and \
                _fold_batchnorm(graph, onnx_node, attrs, constants):  # only a value nothing else reads
            shapes[onnx_node.output[0]] = graph.nodes[-1].shape
            continue
        cls = Op.registry.get(onnx_node.op_type)
        params = {i: constants[name] for i, name in enumerate(onnx_node.input) if name in constants}
        runtime = [name if name and name not in constants else "" for name in onnx_node.input]
        if cls is None:
            graph.unsupported.append((onnx_node.op_type, "no IR operator implements it"))
            continue
        try:
            op = cls(onnx_node.op_type, attrs, params)
        except Exception as exc:  # a malformed attribute or constant: refused, never a raw error
            graph.unsupported.append((onnx_node.op_type, f"cannot build it: {exc}"))
            continue
        op.opset = opset  # the model's ai.onnx opset: some operators' meaning changed with it
        op.batch_one = batch_one  # the inputs fix the batch at 1: a leading 1 in a shape constant is the row
        for key, value in extra.items():
            setattr(op, key, value)
        if all(not r for r in runtime):  # constant folding (e.g. a shape computed from constants)
            try:
                constants[onnx_node.output[0]] = op.run(*[params.get(i) for i in range(len(onnx_node.input))])
                continue
            except Exception as exc:
                graph.unsupported.append((onnx_node.op_type, f"constant folding failed: {exc}"))
                continue
        if any(r and r not in shapes for r in runtime):
            graph.unsupported.append((onnx_node.op_type, "an input comes from an operator the IR does not support"))
            continue
        try:
            shape = op.infer([shapes.get(r) if r else None for r in runtime])
        except NotImplementedError as exc:
            graph.unsupported.append((onnx_node.op_type, str(exc)))
            continue
        except Exception as exc:  # numpy/KeyError from an op's shape rule: a refusal, not a crash
            graph.unsupported.append((onnx_node.op_type, f"its shapes cannot be inferred: {exc}"))
            continue
        if op.n_outputs > 1:  # e.g. a classifier's label and probabilities
            outputs = [o for o in onnx_node.output[:op.n_outputs]]
            try:
                out_shapes = op.infer_outputs([shapes.get(r) if r else None for r in runtime])[:len(outputs)]
            except Exception as exc:  # a refusal, not a crash
                graph.unsupported.append((onnx_node.op_type, f"its shapes cannot be inferred: {exc}"))
                continue
            shapes.update(zip(outputs, out_shapes))
            graph.nodes.append(Node(op, runtime, outputs, shape, list(out_shapes)))
            continue
        shapes[onnx_node.output[0]] = shape
        graph.nodes.append(Node(op, runtime, list(onnx_node.output[:1]), shape))
    activations = {name for name, _ in graph_inputs}  # values that depend on a row
    for onnx_node in proto.graph.node:
        if onnx_node.op_type in ("LSTM", "GRU", "RNN"):
            graph.refused.append((onnx_node.op_type, "a recurrent layer"))
        elif onnx_node.op_type in ("Attention", "MultiHeadAttention") or (
                onnx_node.op_type == "MatMul" and all(name in activations for name in onnx_node.input[:2])):
            graph.refused.append((onnx_node.op_type, "attention: a product of two activations"))
        if any(name in activations for name in onnx_node.input):
            activations.update(onnx_node.output)
    return graph


def _fixed_first_axis(value) -> int | None:
    dims = value.type.tensor_type.shape.dim
    return int(dims[0].dim_value) if dims and dims[0].HasField("dim_value") else None


def _one_output_each(nodes):
    """(node, extra attributes of its op) in order, where a node of an operator with several outputs
    (Split: ``per_output``) becomes one copy per output, its op told which (``output_index``)."""
    for node in nodes:
        if len(node.output) < 2 or not getattr(Op.registry.get(node.op_type), "per_output", False):
            yield node, {}
            continue
        for k, name in enumerate(node.output):
            single = type(node)()
            single.CopyFrom(node)
            del single.output[:]
            single.output.append(name)
            yield single, {"output_index": k, "split_count": len(node.output)}


def _fold_batchnorm(graph: Graph, node, attrs, constants) -> bool:
    """Fold y = (x - mean) / sqrt(var + eps) * scale + bias into the Gemm (or Conv) that produced x."""
    from .ops.gemm import Gemm

    if _fold_batchnorm_conv(graph, node, attrs, constants):
        return True
    if not graph.nodes or graph.nodes[-1].outputs[0] != node.input[0] or not isinstance(graph.nodes[-1].op, Gemm):
        return False
    if not all(name in constants for name in node.input[1:5]):
        return False
    scale, bias, mean, var = (constants[name].astype(np.float64) for name in node.input[1:5])
    factor = scale / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
    gemm = graph.nodes[-1].op
    weight = gemm.weight().astype(np.float64) * factor
    old_bias = gemm.bias()
    b = ((old_bias.astype(np.float64) if old_bias is not None else 0.0) - mean) * factor + bias
    gemm.params = {1: weight.astype(np.float32), 2: b.astype(np.float32)}
    gemm.attrs = {k: v for k, v in gemm.attrs.items() if k not in ("transB", "alpha", "beta")}
    graph.nodes[-1].outputs = [node.output[0]]
    return True


def _fold_batchnorm_conv(graph: Graph, node, attrs, constants) -> bool:
    """Fold a BatchNormalization into the Conv that produced its input: each output channel's
    weights × s, its bias (b - mean) × s + bias, s = scale / sqrt(var + eps)."""
    from .ops.conv import Conv

    if not graph.nodes or graph.nodes[-1].outputs[0] != node.input[0] or not isinstance(graph.nodes[-1].op, Conv):
        return False
    conv = graph.nodes[-1].op
    if not all(name in constants for name in node.input[1:5]) or 1 not in conv.params or attrs.get("training_mode", 0):
        return False
    scale, bias, mean, var = (constants[name].astype(np.float64).reshape(-1) for name in node.input[1:5])
    w = conv.params[1].astype(np.float64)
    if len(scale) != w.shape[0]:
        return False
    factor = scale / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
    old_bias = conv.params.get(2)
    b = ((old_bias.astype(np.float64).reshape(-1) if old_bias is not None else 0.0) - mean) * factor + bias
    conv.params = {1: (w * factor.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32), 2: b.astype(np.float32)}
    graph.nodes[-1].outputs = [node.output[0]]
    return True


def per_row(shape: Shape) -> int:
    return int(prod(shape)) if shape else 1
