"""Max: the element-wise largest of its inputs (tensors of one per-row shape and constants that
broadcast to it), GREATEST in SQL."""

from __future__ import annotations

import numpy as np

from .base import Op
from .binary import elementwise_infer, operands, width_of


class Max(Op):
    op_types = ("Max",)
    _numpy = staticmethod(np.maximum)
    _sql = "GREATEST"

    def infer(self, shapes):
        return elementwise_infer(self, shapes)

    def run(self, *inputs):
        n = max(len(inputs), max(self.params, default=-1) + 1)
        values = [self.arg(inputs, k) for k in range(n)]
        out = values[0]
        for value in values[1:]:
            out = self._numpy(out, value)
        return out

    def to_sql(self, sql, inputs, out_shape):
        n = max(len(inputs), max(self.params, default=-1) + 1)
        if n == 1:
            return sql.scalar(inputs[0], "{v}")
        args = ", ".join(f"{{{k}}}" for k in range(n))
        # onnxruntime propagates NaN; SQL orders NaN above every number, so GREATEST keeps it and
        # LEAST would drop it: a NaN operand is found as a GREATEST above +Infinity
        template = (f"{self._sql}({args})" if self._sql == "GREATEST" else
                    f"CASE WHEN GREATEST({args}) > CAST('Infinity' AS DOUBLE) THEN CAST('NaN' AS DOUBLE) "
                    f"ELSE {self._sql}({args}) END")
        return sql.elementwise(operands(self, inputs, out_shape, range(n)), template, width_of(out_shape))
