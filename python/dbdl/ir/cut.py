"""Cutting an ONNX model at one tensor: the sub-model that computes an output from that tensor
alone (a hybrid plan's part that runs outside SQL, strategies/hybrid.py).

A cut is valid when every value the output needs is the cut tensor, a constant, or computed from
those: walking back from the output, the walk stops at the cut tensor and never reaches one of the
model's inputs (a residual connection around the cut, or a shape read from the input, makes the
cut more than one tensor). The sub-model keeps the model's opset, functions and the constants its
nodes read; its one input is the cut tensor with a symbolic batch axis and its per-row shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Cut:
    #: the tensor the sub-model takes
    tensor: str
    #: indices (in graph order) of the ONNX nodes the sub-model keeps
    nodes: tuple[int, ...]
    #: bytes of the constants those nodes read (what holding the sub-model costs)
    param_bytes: int


def _subgraph_free(node) -> bool:
    """No graph-valued attribute (If / Loop / Scan bodies may read outer values by name)."""
    from onnx import AttributeProto

    return all(a.type not in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute)


def _tensor_bytes(tensor) -> int:
    from onnx import helper

    count = 1
    for d in tensor.dims:
        count *= int(d)
    try:
        size = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        size = 4
    return count * size


class Cutter:
    """The cuts of one ONNX model (its graph indexed once)."""

    def __init__(self, proto: Any) -> None:
        graph = proto.graph
        self.proto = proto
        self.producer = {name: k for k, node in enumerate(graph.node) for name in node.output if name}
        self.constants = {i.name: _tensor_bytes(i) for i in graph.initializer}
        self.inputs = {i.name for i in graph.input} - set(self.constants)

    def cut(self, tensor: str, output: str) -> Cut | None:
        """The sub-model computing ``output`` from ``tensor``, or None where it also needs a model
        input (or a node dbdl does not cut through: a subgraph)."""
        if tensor == output or tensor not in self.producer:
            return None
        nodes: set[int] = set()
        seen: set[str] = set()
        stack = [output]
        while stack:
            name = stack.pop()
            if not name or name == tensor or name in seen or name in self.constants:
                continue
            seen.add(name)
            k = self.producer.get(name)
            if k is None:  # a model input, or a value nothing produces
                return None
            node = self.proto.graph.node[k]
            if not _subgraph_free(node):
                return None
            nodes.add(k)
            stack.extend(node.input)
        read = {name for k in nodes for name in self.proto.graph.node[k].input}
        return Cut(tensor, tuple(sorted(nodes)), sum(b for name, b in self.constants.items() if name in read))

    def sub_model(self, cut: Cut, shape: tuple[int, ...], output: str) -> bytes:
        """The sub-model's ONNX bytes: input ``cut.tensor`` of float32 values, (batch, *shape)."""
        from onnx import TensorProto, helper

        graph = self.proto.graph
        nodes = [graph.node[k] for k in cut.nodes]
        read = {name for node in nodes for name in node.input}
        constants = [i for i in graph.initializer if i.name in read]
        out = next((o for o in graph.output if o.name == output), None)
        if out is None:
            out = helper.make_tensor_value_info(output, TensorProto.FLOAT, None)
        source = helper.make_tensor_value_info(cut.tensor, TensorProto.FLOAT, ["dbdl_batch", *[int(d) for d in shape]])
        sub = helper.make_graph(nodes, "dbdl_suffix", [source], [out], initializer=constants)
        model = helper.make_model(sub, opset_imports=list(self.proto.opset_import), ir_version=self.proto.ir_version)
        model.functions.extend(self.proto.functions)
        return model.SerializeToString()
