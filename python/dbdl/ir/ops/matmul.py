"""MatMul with a constant right-hand side: a dense layer without bias."""

from __future__ import annotations

import numpy as np

from .base import Op, Shape


class MatMul(Op):
    op_types = ("MatMul",)

    def infer(self, shapes: list[Shape | None]) -> Shape:
        if 1 not in self.params or self.params[1].ndim != 2 or shapes[0] is None or len(shapes[0]) != 1:
            raise NotImplementedError("MatMul of a per-row vector by a constant matrix only")
        return (self.params[1].shape[1],)

    def run(self, *inputs: np.ndarray) -> np.ndarray:
        return inputs[0] @ self.arg(inputs, 1)

    def to_sql(self, sql, inputs, out_shape):
        return sql.dense(inputs[0], self.params[1].astype(np.float32), None)
