"""Cost facts the registry keeps for every model version (the planner's IR refines them).

Needs the ``onnx`` package; on a database server without it, callers record zeros.
"""

from __future__ import annotations

from math import prod

from .flops import count


def estimate_cost(proto) -> tuple[int, int]:
    """(parameter count, FLOPs per row) of an ONNX graph, from its initializers and inferred shapes;
    each node's FLOPs by its operator's rule (dbdl_udf.flops)."""
    import onnx
    from onnx import helper

    n_params = 0
    init_shapes: dict[str, tuple[int, ...]] = {}
    for init in proto.graph.initializer:
        shape = tuple(int(d) for d in init.dims)
        init_shapes[init.name] = shape
        if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                              onnx.TensorProto.BFLOAT16):
            n_params += int(prod(shape)) if shape else 1
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:
        inferred = proto
    shapes: dict[str, tuple[int | None, ...]] = dict(init_shapes)
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)

    def shape_of(name: str) -> tuple[int | None, ...] | None:
        """A constant's whole shape, a tensor's per-row shape (batch axis left out); None if unknown."""
        shape = shapes.get(name)
        if shape is None:
            return None
        return tuple(shape) if name in init_shapes else tuple(shape[1:])

    flops = 0
    for node in proto.graph.node:
        if not node.output:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        inputs = [shape_of(name) if name else None for name in node.input]
        flops += count(node.op_type, inputs, shape_of(node.output[0]) or (), attrs)
    return n_params, int(flops)
