"""Cost facts the registry keeps for every model version (the planner's IR refines them).

Needs the ``onnx`` package; on a database server without it, callers record zeros.
"""

from __future__ import annotations

from math import prod


def estimate_cost(proto) -> tuple[int, int]:
    """(parameter count, FLOPs per row) of an ONNX graph, from its initializers and inferred shapes."""
    import onnx

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

    def per_row(name: str) -> int:
        shape = shapes.get(name)
        if not shape:
            return 1
        rest = [d for d in shape[1:]] if name not in init_shapes else list(shape)
        return int(prod(d or 1 for d in rest))

    flops = 0
    for node in proto.graph.node:
        out = per_row(node.output[0]) if node.output else 0
        op = node.op_type
        if op in ("Gemm", "MatMul", "MatMulInteger", "FusedMatMul"):
            b = shapes.get(node.input[1]) or (1,)
            trans_b = op == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
            k = b[-1] if trans_b else (b[-2] if len(b) >= 2 else b[0])
            flops += 2 * out * int(k or 1)
        elif op in ("Conv", "ConvTranspose"):
            w = shapes.get(node.input[1]) or (1, 1)
            flops += 2 * out * int(prod(d or 1 for d in w[1:]))
        else:
            flops += out
    return n_params, int(flops)
