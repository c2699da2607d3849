"""The element-wise operators' shared logic: operands are tensors of the op's per-row shape or
constants that broadcast to it (numpy's rules, with any leading axes of size 1 read as the batch
axis: a scalar, a trailing-axis vector, a ``(1, n)`` bias). A constant that would change the
per-row shape, or tensors of different per-row shapes, are refused at build time (the reason goes
into the graph's ``unsupported`` list, so relation-centric execution refuses before any SQL)."""

from __future__ import annotations

import numpy as np

from .base import Op, Shape

_NUMPY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}
_SQL = {"Add": "+", "Sub": "-", "Mul": "*", "Div": "/"}


def per_row_constant(op_type: str, constant: np.ndarray, shape: Shape) -> np.ndarray:
    """``constant`` as an array of the per-row ``shape`` (NotImplementedError where it does not
    broadcast to it without changing it)."""
    c = np.asarray(constant)
    given = tuple(c.shape)
    if c.ndim > len(shape):
        lead = c.shape[:c.ndim - len(shape)]
        if any(d != 1 for d in lead):
            raise NotImplementedError(f"{op_type} with a constant of shape {given}: its leading axes are not 1, so "
                                      f"it does not broadcast over rows of shape {shape}")
        c = c.reshape(c.shape[c.ndim - len(shape):])
    try:
        out = np.broadcast_shapes(c.shape, shape)
    except ValueError:
        raise NotImplementedError(f"{op_type} with a constant of shape {given} that does not broadcast to the "
                                  f"per-row shape {shape}") from None
    if tuple(out) != tuple(shape):
        raise NotImplementedError(f"{op_type} with a constant of shape {given} that would change the per-row shape "
                                  f"{shape} to {tuple(out)}")
    return np.broadcast_to(c, shape)


def elementwise_infer(op: Op, shapes: list[Shape | None]) -> Shape:
    """The per-row shape of an element-wise op over its inputs (constants held in ``op.params``)."""
    known = [s for s in shapes if s is not None]
    if not known:
        raise NotImplementedError(f"{op.op_type} of constants only")
    if any(s != known[0] for s in known):
        raise NotImplementedError(f"{op.op_type} of tensors with different per-row shapes {sorted(set(known))}")
    for constant in op.params.values():
        per_row_constant(op.op_type, constant, known[0])
    return known[0]


def operands(op: Op, inputs, out_shape: Shape, positions) -> list:
    """The SQL operands at ``positions``: the input relation, or the constant flattened over the row."""
    out = []
    for k in positions:
        if k in op.params:
            c = np.asarray(op.params[k], dtype=np.float64)
            out.append(c.reshape(-1)[:1] if c.size == 1 else per_row_constant(op.op_type, c, out_shape).reshape(-1))
        else:
            out.append(inputs[k])
    return out


def width_of(shape: Shape) -> int:
    return int(np.prod(shape)) if shape else 1


class Binary(Op):
    """Shared by Add, Sub, Mul and Div (each in its own file)."""

    def infer(self, shapes: list[Shape | None]) -> Shape:
        return elementwise_infer(self, shapes)

    def run(self, *inputs: np.ndarray) -> np.ndarray:
        return _NUMPY[self.op_type](self.arg(inputs, 0), self.arg(inputs, 1))

    def to_sql(self, sql, inputs, out_shape):
        args = operands(self, inputs, out_shape, (0, 1))
        template = f"({{0}} {_SQL[self.op_type]} {{1}})"
        if self.op_type == "Div" and not (1 in self.params and np.all(np.asarray(self.params[1]) != 0)):
            # onnxruntime's float division by zero: ±inf, NaN for 0 / 0 (PostgreSQL raises, DuckDB gives NULL)
            # (both databases order NaN above +Infinity: the first test finds a NaN dividend)
            template = ("CASE WHEN {1} = 0 THEN CASE WHEN {0} > CAST('Infinity' AS DOUBLE) THEN CAST('NaN' AS DOUBLE) "
                        "WHEN {0} > 0 THEN CAST('Infinity' AS DOUBLE) WHEN {0} < 0 "
                        "THEN CAST('-Infinity' AS DOUBLE) ELSE CAST('NaN' AS DOUBLE) END ELSE {0} / {1} END")
        return sql.elementwise(args, template, width_of(out_shape))
