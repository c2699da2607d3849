"""Where: X where the condition holds, else Y — a constant condition (broadcast over the row) or
tensors of one per-row shape; other shapes are refused."""

from __future__ import annotations

import numpy as np

from .base import Op
from .binary import elementwise_infer, operands, width_of


class Where(Op):
    op_types = ("Where",)

    def infer(self, shapes):
        return elementwise_infer(self, shapes)

    def run(self, *inputs):
        return np.where(self.arg(inputs, 0), self.arg(inputs, 1), self.arg(inputs, 2))

    def to_sql(self, sql, inputs, out_shape):
        return sql.elementwise(operands(self, inputs, out_shape, range(3)),
                               "CASE WHEN {0} <> 0 THEN {1} ELSE {2} END", width_of(out_shape))
