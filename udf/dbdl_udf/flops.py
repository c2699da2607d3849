"""FLOPs per row, one rule per ONNX operator: the one count the registry (``cost.estimate_cost``,
on the ONNX graph at registration) and the IR (``dbdl.ir`` operators' ``flops()``, for EXPLAIN and
the planner) both use.

A rule is ``rule(inputs, output, attrs) -> int``: ``inputs`` holds one shape per operator input —
per row (batch axis left out) for a tensor that flows by row, whole for a constant (a weight) —
or None where it is unknown; ``output`` is the first output's per-row shape; ``attrs`` the
operator's attributes. Unknown sizes count as 1. An operator without a rule of its own costs one
FLOP per output value (element-wise arithmetic, activations).
"""

from __future__ import annotations

from math import prod
from typing import Any, Callable, Mapping, Sequence

Shape = Sequence[int | None]
Rule = Callable[[Sequence[Shape | None], Shape, Mapping[str, Any]], int]


def _size(shape: Shape | None) -> int:
    return int(prod(d or 1 for d in shape)) if shape else 1


def _matmul(inputs: Sequence[Shape | None], output: Shape, attrs: Mapping[str, Any]) -> int:
    """2 · output values · the inner dimension K (the right-hand side's rows; its columns for a
    Gemm with transB)."""
    b = (inputs[1] if len(inputs) > 1 else None) or (1,)
    k = b[-1] if attrs.get("transB") else (b[-2] if len(b) >= 2 else b[0])
    return 2 * _size(output) * int(k or 1)


def _conv(inputs: Sequence[Shape | None], output: Shape, attrs: Mapping[str, Any]) -> int:
    """2 · output values · the weight's values per output channel (input channels per group ·
    kernel size)."""
    w = (inputs[1] if len(inputs) > 1 else None) or (1, 1)
    return 2 * _size(output) * _size(w[1:])


def _pool(inputs: Sequence[Shape | None], output: Shape, attrs: Mapping[str, Any]) -> int:
    """MaxPool / AveragePool: one per window tap (output values · kernel size)."""
    return _size(output) * _size(tuple(attrs.get("kernel_shape") or ()))


def _per_value(factor: int) -> Rule:
    def rule(inputs, output, attrs) -> int:
        return factor * _size(output)

    rule.__doc__ = f"{factor} per output value"
    return rule


def _free(inputs, output, attrs) -> int:
    """Nothing: the values are the same, only how they are addressed changes."""
    return 0


def _per_input_value(inputs, output, attrs) -> int:
    """1 per value of the first input: a reduction reads each value once."""
    return _size(inputs[0] if inputs else output)


def _linear_ml(inputs, output, attrs) -> int:
    """2 · coefficients (LinearRegressor / LinearClassifier: one multiply-add per coefficient)."""
    return 2 * max(1, len(attrs.get("coefficients") or ()))


def _trees(inputs, output, attrs) -> int:
    """TreeEnsemble*: the comparisons on each tree's path (taken as a balanced tree's depth for
    its number of nodes), plus one addition per tree and output value."""
    from math import ceil, log2

    sizes: dict[Any, int] = {}
    for t in attrs.get("nodes_treeids") or ():
        sizes[t] = sizes.get(t, 0) + 1
    return int(sum(max(1, ceil(log2(n + 1))) for n in sizes.values()) + len(sizes) * _size(output))


#: ONNX op type -> its rule
RULES: dict[str, Rule] = {
    "Gemm": _matmul, "MatMul": _matmul, "MatMulInteger": _matmul, "FusedMatMul": _matmul,
    "Conv": _conv, "ConvTranspose": _conv,
    "Sigmoid": _per_value(4), "Tanh": _per_value(4),  # an exp, an add, a division (and a negation)
    "Softmax": _per_value(5),  # max, subtract, exp, sum, divide
    "Softplus": _per_value(4),  # an abs, an exp, an add and a log (and a max)
    "Erf": _per_value(12), "Gelu": _per_value(14),  # a degree-5 polynomial, an exp, a division (Gelu: 2 more)
    "LinearRegressor": _linear_ml, "LinearClassifier": _linear_ml,
    "TreeEnsembleRegressor": _trees, "TreeEnsembleClassifier": _trees,
    "ZipMap": _free,
    "Identity": _free, "Dropout": _free, "Flatten": _free, "Reshape": _free, "Cast": _free,
    "Transpose": _free, "Concat": _free, "Split": _free, "Slice": _free, "Squeeze": _free, "Unsqueeze": _free,
    "LogSoftmax": _per_value(5),  # max, subtract, exp, sum, log and subtract
    "LayerNormalization": _per_value(7),  # mean, subtract, square, mean, divide by the root, scale, bias
    "ReduceMean": _per_input_value, "ReduceSum": _per_input_value, "ReduceMax": _per_input_value,
    "ReduceMin": _per_input_value,
    "MaxPool": _pool, "AveragePool": _pool, "GlobalAveragePool": _per_input_value, "GlobalMaxPool": _per_input_value,
    "BatchNormalization": _per_value(2),  # a scale and a shift (inference form)
}
default_rule: Rule = _per_value(1)


def count(op_type: str, inputs: Sequence[Shape | None], output: Shape, attrs: Mapping[str, Any] | None = None) -> int:
    """FLOPs per row of one operator (see the module's docstring for the arguments)."""
    return int(RULES.get(op_type, default_rule)(inputs, output, attrs or {}))
