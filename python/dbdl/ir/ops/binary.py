"""The element-wise binary operators' shared logic: with a constant (broadcast over the row) or
another tensor of the same per-row shape."""

from __future__ import annotations

import numpy as np

from .base import Op, Shape

_NUMPY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}
_SQL = {"Add": "+", "Sub": "-", "Mul": "*", "Div": "/"}


class Binary(Op):
    """Shared by Add, Sub, Mul and Div (each in its own file)."""

    def infer(self, shapes: list[Shape | None]) -> Shape:
        known = [s for s in shapes if s is not None]
        if not known:
            raise NotImplementedError(f"{self.op_type} of two constants")
        if len(known) == 2 and known[0] != known[1]:
            raise NotImplementedError(f"{self.op_type} of tensors with different per-row shapes")
        return known[0]

    def run(self, *inputs: np.ndarray) -> np.ndarray:
        return _NUMPY[self.op_type](self.arg(inputs, 0), self.arg(inputs, 1))

    def to_sql(self, sql, inputs, out_shape):
        width = int(np.prod(out_shape)) if out_shape else 1
        if 0 in self.params or 1 in self.params:
            position = 0 if 0 in self.params else 1
            constant = np.broadcast_to(self.params[position], out_shape).reshape(-1).astype(np.float32)
            return sql.with_constant(inputs[1 - position], constant, _SQL[self.op_type], constant_first=position == 0,
                                     width=width)
        return sql.combine(inputs[0], inputs[1], _SQL[self.op_type])
